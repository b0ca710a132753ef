#!/usr/bin/env bash
set -u
out=$1; : > $out
T() { local label=$1; shift; /usr/bin/time -f "$label\t%e\t%U\t%S\t%M" -a -o $out "$@" > /dev/null 2>/tmp/err.txt || echo "FAIL $label" >> $out; }
for rep in $(seq ${REPS:-8}); do
  for v in $(printf '%s\n' ${VARIANTS:-purge new old} | shuf); do
    bin=/work/scratch/$v/p11trace-query; env=()
    [ $v = purge ] && { bin=/work/scratch/new/p11trace-query; env=(MIMALLOC_PURGE_DELAY=1000); }
    T "analyze-$v" env "${env[@]}" $bin analyze /work/scratch/ds10m
    sleep 1
  done
done
