#!/usr/bin/env bash
# LTO or not, same code: analyze, sql and compare on the 10 M-call dataset, random order per round.
set -u
out=$1; : > $out
T() { local label=$1; shift; /usr/bin/time -f "$label\t%e\t%U\t%S\t%M" -a -o $out "$@" > /dev/null 2>/tmp/err.txt || echo "FAIL $label" >> $out; }
DS=/work/scratch/ds10m
for rep in $(seq ${REPS:-8}); do
  for job in $(printf '%s\n' analyze-nolto analyze-lto sql-nolto sql-lto compare-nolto compare-lto | shuf); do
    cmd=${job%-*}; v=${job#*-}; bin=/work/scratch/$v/p11trace-query
    case $cmd in
      analyze) T "$job" $bin analyze $DS ;;
      sql) T "$job" $bin sql "SELECT func, count(*) AS calls, sum(dur_ns) AS total_ns FROM calls GROUP BY func ORDER BY calls DESC" $DS ;;
      compare) T "$job" $bin compare $DS $DS ;;
    esac
    sleep 1
  done
done
