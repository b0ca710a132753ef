#!/usr/bin/env bash
# Old analyze (polars, 897355b) vs new (direct read) vs DuckDB's per-function query, the same
# 10 M-call dataset, N rounds, the three in a random order each round (on this machine a fixed
# order has a position effect). Prints one TSV line per run: round, what, wall s, CPU s, peak KiB.
# Usage: interleave.sh OLD_QUERY NEW_QUERY DATASET ROUNDS
set -euo pipefail
old=$1 new=$2 dataset=$3 rounds=${4:-6}
duck="SELECT func, count(*) AS calls, count(*) FILTER (WHERE rv <> 0) AS failed, sum(dur_ns) AS total_ns, quantile_cont(dur_ns, [0.5, 0.95, 0.99]) AS p, max(dur_ns) AS max_ns FROM read_parquet('$dataset/calls/**/*.parquet', hive_partitioning = true) GROUP BY func ORDER BY total_ns DESC"
run() {
  local round=$1 what=$2; shift 2
  /usr/bin/time -f "%e %U %S %M" -o /tmp/interleave.time "$@" > /dev/null
  read -r wall user sys rss < /tmp/interleave.time
  printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$what" "$wall" "$(echo "$user + $sys" | bc)" "$rss"
}
printf 'round\twhat\twall_s\tcpu_s\tpeak_kib\n'
for round in $(seq 1 "$rounds"); do
  for what in $(printf 'old\nnew\nduckdb\nold-json\nnew-json\n' | shuf); do
    case $what in
      old) run "$round" old "$old" analyze "$dataset" ;;
      new) run "$round" new "$new" analyze "$dataset" ;;
      old-json) run "$round" old-json "$old" analyze "$dataset" --format json ;;
      new-json) run "$round" new-json "$new" analyze "$dataset" --format json ;;
      duckdb) run "$round" duckdb duckdb -c "$duck" ;;
    esac
  done
done
