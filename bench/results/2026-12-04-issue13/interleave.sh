#!/usr/bin/env bash
# Interleaved old/new runs: each rep runs every variant once, in turn; /usr/bin/time per run.
set -u
cd /work/scratch
out=${1:-interleave.tsv}
: > $out
T() { local label=$1; shift; /usr/bin/time -f "$label\t%e\t%U\t%S\t%M" -a -o $out "$@" > /dev/null 2>/tmp/err.txt || echo "FAIL $label" >> $out; }
DQ="SELECT func, count(*) AS calls, count(*) FILTER (WHERE rv <> 0) AS failed, sum(dur_ns) AS total_ns, quantile_cont(dur_ns, [0.5, 0.95, 0.99]) AS p, max(dur_ns) AS max_ns FROM read_parquet('/work/scratch/ds10m/calls/**/*.parquet', hive_partitioning = true) GROUP BY func ORDER BY total_ns DESC"
for rep in 1 2 3 4 5; do
  for f in corpus threads27 p11kit; do
    fmt=spy; [ $f = p11kit ] && fmt=p11-kit
    for v in old new purge; do
      bin=/work/scratch/$v/p11trace-query; env=()
      [ $v = purge ] && { bin=/work/scratch/new/p11trace-query; env=(MIMALLOC_PURGE_DELAY=1000); }
      rm -f /work/scratch/imp.parquet
      T "import-$f-$v" env "${env[@]}" $bin import $f.log -o /work/scratch/imp.parquet --input-format $fmt --tz UTC
    done
  done
  for v in old new purge ${EXTRA:-}; do
    bin=/work/scratch/$v/p11trace-query; env=()
    [ $v = purge ] && { bin=/work/scratch/new/p11trace-query; env=(MIMALLOC_PURGE_DELAY=1000); }
    T "analyze-$v" env "${env[@]}" $bin analyze /work/scratch/ds10m
  done
  T "duckdb" duckdb -c "$DQ"
done
