#!/usr/bin/env bash
# One device call (nineteenth session, binaries of c0298c8): with the epilogues' stores now cheap,
# are ping-pong tiles (each consumer warpgroup its own 64-row tile, its epilogue under the other's
# MMAs) still slower at M = 1024 and 8192? `knobab` (shipped table, heuristics alone,
# MOEQ_CT_WS_PINGPONG=1) and `adopt` (entries where ping-pong beats the shipped table by 2 % go
# into $OUT/tuned.json), then ping-pong's checks on Granite-3B-A800M at M = 1024 and 8192.
# Builds nothing; carry build/carry and .devpack.
set -u
AB_SECONDS=0.08 AB_MS=1024,8192 AB_SCHEMES=bf16,fp8-channel,fp8-block,w8a16 KNOBS=MOEQ_CT_WS_PINGPONG=1 \
  STEPS="knobab adopt" bash bench/device_kernels_round.sh 2>&1 | tail -45
. tools/gpu_harness/device_carry.sh
MOEQ_CT_WS_PINGPONG=1 timeout 100 build/bin/moeq bench apply --m 1024,8192 --scheme bf16,fp8-channel,fp8-block,w8a16 \
  --shape Granite-3B-A800M --seconds 0.01 2>&1 | grep -iE "check|fail|mismatch|passed" | tail -8
