#!/usr/bin/env bash
# Issue 16, not yet run (2026-12-07: the device budget was spent). Is the 1-producer
# row's slow regime (benches/results/cpu-16core-2026-12-07-h100-e/) SMT-related? Prints
# the host's topology, then runs the probe unpinned and pinned to one logical CPU per
# physical core (the same set as unpinned if the host has no SMT siblings), alternating.
# Copy this script, benches/cpu/probe_on_device.sh, benches/cpu/manycore_probe.cpp and
# the library as head.so into target-py312/<dir>/ (carried), then on the device:
#   bash target-py312/<dir>/manycore-smt.sh > $OUT/smt.txt 2>&1
D=$(cd "$(dirname "$0")" && pwd)
lscpu | grep -E "^(CPU\(s\)|Thread|Core|Socket|Model name|NUMA|L3)" 
for c in /sys/devices/system/cpu/cpu[0-9]*; do echo "$(basename $c): siblings $(cat $c/topology/thread_siblings_list 2>/dev/null) core $(cat $c/topology/core_id 2>/dev/null)"; done
ONE=$(for c in /sys/devices/system/cpu/cpu[0-9]*; do cat $c/topology/thread_siblings_list; done | sort -u | sed 's/[,-].*//' | sort -n | paste -sd, -)
echo "one CPU per core: $ONE"
{ echo "# unpinned vs pinned to $ONE, 1 producer, 16 workers"; for r in 1 2 3 4; do echo "head -- --mode std --workers 16 --reps 5"; echo "head CPUS=$ONE -- --mode std --workers 16 --reps 5"; done; } > /tmp/plan.txt
bash "$D/probe_on_device.sh" /tmp/plan.txt
