# Calls per function and per date partition of a p11trace dataset in S3, read in place by
# pyarrow (the README's recipe; tests/tests/engines.rs runs it against moto_server).
# python3 pyarrow_s3_counts.py BUCKET/PREFIX   (endpoint and credentials: AWS_* variables)
import json, os, sys
import pyarrow.dataset as ds, pyarrow.fs as fs

s3 = fs.S3FileSystem(
    endpoint_override=os.environ["AWS_ENDPOINT_URL"], scheme="http",
    access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    region=os.environ["AWS_REGION"],
)
calls = ds.dataset(f"{sys.argv[1]}/calls", filesystem=s3, format="parquet", partitioning="hive")
table = calls.to_table(columns=["func", "date"])


def count(column):
    rows = table.group_by(column).aggregate([([], "count_all")]).to_pylist()
    return {str(r[column]): r["count_all"] for r in rows}


answer = {"functions": count("func"), "dates": count("date"), "columns": calls.schema.names}
print(json.dumps(answer, sort_keys=True))
