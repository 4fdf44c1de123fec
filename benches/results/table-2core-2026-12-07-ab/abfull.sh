#!/usr/bin/env bash
# abfull.sh ROUNDS TAG LIB... : the whole table (default rows, 5 reps) per library in turn
cd /tmp/abbench
R=$1 TAG=$2; shift 2; LIBS=("$@")
for r in $(seq $R); do
  n=${#LIBS[@]}
  for i in $(seq 0 $((n-1))); do
    L=${LIBS[$(( (i + r) % n ))]}
    LD_LIBRARY_PATH=/tmp/abbench/$L ./pyscheduler_bench --json-out /tmp/abbench/$TAG-$L-r$r.json > /tmp/abbench/$TAG-$L-r$r.txt 2>&1
    echo "round $r $L done $(date +%T)"
  done
done
