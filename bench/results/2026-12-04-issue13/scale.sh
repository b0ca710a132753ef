#!/usr/bin/env bash
# Issue 13, target 4 (a first look): wall time and peak RSS per dataset size, 3 runs each.
set -u
out=$1; : > $out
T() { local label=$1; shift; /usr/bin/time -f "$label\t%e\t%U\t%S\t%M" -a -o $out "$@" > /dev/null 2>/tmp/err.txt || echo "FAIL $label" >> $out; }
Q=/work/scratch/nolto/p11trace-query
for size in 1 10 30; do
  DS=/work/scratch/ds${size}m
  [ -d $DS ] || /work/scratch/new/p11trace-bench synth --out $DS --rows ${size}000000 > /dev/null
  for rep in 1 2 3; do
    T "analyze-${size}M" $Q analyze $DS
    T "sql-${size}M" $Q sql "SELECT func, count(*) AS calls, sum(dur_ns) AS total_ns FROM calls GROUP BY func ORDER BY calls DESC" $DS
    T "compare-${size}M" $Q compare --format json $DS $DS
    rm -rf /work/scratch/arch; T "archive-${size}M" $Q archive $DS --to /work/scratch/arch
    T "duckdb-${size}M" duckdb -c "SELECT func, count(*) AS calls, count(*) FILTER (WHERE rv <> 0) AS failed, sum(dur_ns) AS total_ns, quantile_cont(dur_ns, [0.5, 0.95, 0.99]) AS p, max(dur_ns) AS max_ns FROM read_parquet('$DS/calls/**/*.parquet', hive_partitioning = true) GROUP BY func ORDER BY total_ns DESC"
  done
done
