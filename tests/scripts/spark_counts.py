# Calls per function and per date partition of a p11trace dataset folder, read by Apache Spark
# in local mode (the README's recipe; tests/tests/engines.rs runs it).
# python3 spark_counts.py DATASET
import json, sys
from pyspark.sql import SparkSession

spark = (SparkSession.builder.master("local[1]").appName("p11trace")
         .config("spark.driver.memory", "512m").config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.sql.session.timeZone", "UTC").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
calls = spark.read.parquet(f"{sys.argv[1]}/calls")  # finds the date=… partitions itself


def count(column):
    return {str(r[column]): r["count"] for r in calls.groupBy(column).count().collect()}


answer = {
    "functions": count("func"), "dates": count("date"),
    "columns": {f.name: f.dataType.simpleString() for f in calls.schema.fields},
    "rows": len(calls.collect()),  # every column of every row decoded
}
print(json.dumps(answer, sort_keys=True))
spark.stop()
