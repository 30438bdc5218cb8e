#!/usr/bin/env bash
# One device call (nineteenth session). First, on a machine that just started: three processes in
# turn each load the same checkpoint from an empty JIT cache of its own (is only the machine's first
# NVRTC process slow, 1.09-1.26 s against 0.31 s before, and is it the CPU: a fixed Python loop
# timed before, between and after). Then where a layer's time goes at M = 1024 and 8192 today:
# `moeq bench apply --stage-graphs` (the `sg` step) over four schemes and four shapes.
# Builds nothing; carry build/carry and .devpack.
set -u
. tools/gpu_harness/device_carry.sh
cpu() { python3 -c "import time;t=time.perf_counter();sum(range(20000000));print('cpu probe %.0f ms' % (1e3*(time.perf_counter()-t)))"; }
echo "cores $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)"; cpu
ck=/tmp/moeq_load/qwen3-30b-a3b-fp8-channel-l7; mkdir -p /tmp/moeq_load
timeout 120 build/bin/moeq bench load --synthesize Qwen3-30B-A3B --scheme fp8-channel --layers 7 --write-only "$ck" > /dev/null 2>&1; sync
for i in 1 2 3; do
  d=/tmp/jcd$i; mkdir -p $d; chmod 700 $d; cpu
  MOEQ_CACHE_DIR=$d timeout 90 build/bin/moeq bench load --repeat 1 "$ck" 2>&1 | grep -E "first pass's JIT|^device path" | sed "s/^/process $i: /"
done
cpu
SG_TIMEOUT=330 SG_SECONDS=0.05 SG_MS=1024,8192 SG_SCHEMES=fp8-channel,fp8-block,bf16,w8a16 \
  SG_SHAPES=Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3,Granite-3B-A800M STEPS=sg bash bench/device_kernels_round.sh 2>&1 | tail -100
