#!/usr/bin/env bash
# One device call (nineteenth session, after c0298c8): the device tests; `moeq bench apply` with
# its checks on Granite-3B-A800M at M = 1024 and 8192 for the schemes the wide epilogue stores
# touch (bf16 y2 and h, fp8-block's requantized codes); the A/B of build/carry_prev (f341c5d)
# against these binaries at M = 1024 and 8192; then the side by side with vLLM on all 80 cases.
# Builds nothing; carry build/carry, build/carry_prev, .devpack and .peers.
set -u
STEPS=tests bash bench/device_kernels_round.sh 2>&1 | grep -E "tests:|test cases|assertions|ERROR|FAILED" | head -20
. tools/gpu_harness/device_carry.sh
timeout 120 build/bin/moeq bench apply --m 1024,8192 --scheme fp8-block,bf16,w8a16 --shape Granite-3B-A800M \
  --seconds 0.02 2>&1 | grep -iE "check|fail|mismatch|error|passed" | head -30
AB_MS=1024,8192 AB_SCHEMES=fp8-channel,fp8-block,bf16,w8a16 AB_SHAPES=Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3,Granite-3B-A800M \
  STEPS=abprev bash bench/device_kernels_round.sh 2>&1 | grep -E "^[A-Z].*M=|geomean|abprev:"
DEADLINE=$((${DEADLINE:-570} - SECONDS)) STEPS="sbs bundle" bash bench/device_kernels_round.sh 2>&1 | tail -45
