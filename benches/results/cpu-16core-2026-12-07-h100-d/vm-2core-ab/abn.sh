#!/usr/bin/env bash
# abn.sh ROUNDS ROWS REPS TAG LIBDIR... : runs the libraries in turn (order rotated each round)
cd /tmp/abbench
R=$1 ROWS=$2 REPS=$3 TAG=$4; shift 4; LIBS=("$@")
for r in $(seq $R); do
  n=${#LIBS[@]}
  for i in $(seq 0 $((n-1))); do
    L=${LIBS[$(( (i + r) % n ))]}
    LD_LIBRARY_PATH=/tmp/abbench/$L ./pyscheduler_bench --rows $ROWS --reps $REPS --json-out /tmp/abbench/$TAG-$L-r$r.json > /tmp/abbench/$TAG-$L-r$r.txt 2>&1
  done
done
echo done
