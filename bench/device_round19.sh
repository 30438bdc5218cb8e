#!/usr/bin/env bash
# One device call (nineteenth session). On a machine that just started: two processes in turn
# each load a checkpoint from an empty JIT cache of its own (the compiler's files now read
# through before the first compile, fded32c's parent); then the device tests (the warp-specialized
# GEMMs' wide epilogue stores against the CPU mirror); `moeq bench apply` with its checks on
# Granite-3B-A800M at M = 1024 and 8192 for the schemes whose outputs the wide stores write; then
# the A/B of build/carry_prev (f341c5d, before the wide stores) against these binaries at M = 1024
# and 8192 on four shapes and four schemes (`abprev`). Builds nothing; carry build/carry,
# build/carry_prev and .devpack.
set -u
. tools/gpu_harness/device_carry.sh
ck=/tmp/moeq_load/qwen3-30b-a3b-fp8-channel-l7; mkdir -p /tmp/moeq_load
timeout 120 build/bin/moeq bench load --synthesize Qwen3-30B-A3B --scheme fp8-channel --layers 7 --write-only "$ck" > /dev/null 2>&1; sync
for i in 1 2; do
  d=/tmp/jcr$i; mkdir -p $d; chmod 700 $d
  MOEQ_CACHE_DIR=$d timeout 90 build/bin/moeq bench load --repeat 2 "$ck" 2>&1 |
    grep -E "first pass's JIT|NVRTC's files|first pass,|^device path|^\| strict|^\| raw" | sed "s/^/process $i: /"
done
STEPS=tests bash bench/device_kernels_round.sh 2>&1 | grep -E "tests:|test cases|assertions|ERROR|FAILED" | head -20
timeout 150 build/bin/moeq bench apply --m 1024,8192 --scheme fp8-channel,fp8-tensor,bf16,w8a16 --shape Granite-3B-A800M \
  --seconds 0.02 2>&1 | grep -iE "check|fail|mismatch|error|passed" | head -30
AB_MS=1024,8192 AB_SCHEMES=fp8-channel,fp8-block,bf16,w8a16 AB_SHAPES=Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3,Granite-3B-A800M \
  STEPS=abprev bash bench/device_kernels_round.sh 2>&1 | tail -40
