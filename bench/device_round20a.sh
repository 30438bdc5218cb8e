#!/usr/bin/env bash
# One device call (twentieth session): 128-row ping-pong tiles (each consumer warpgroup a whole
# 128 x 128 tile of its own, two m64n128 MMAs a K step on one B, its epilogue under the other's
# MMAs). Their checks against the CPU mirror (the `pingpong128` synthetic case of each scheme,
# Granite-3B-A800M), then `knobab` (shipped table, heuristics alone, MOEQ_CT_WS_PINGPONG128=1)
# at M = 1024 and 8192 and `adopt` (entries where they beat the shipped table by 2 % go into
# $OUT/tuned.json). Builds nothing; carry build/carry and .devpack.
# Ran on the binaries of aa84f80 (bench/RESULTS.md, twentieth session); the tiles and their knob
# were taken out in 4547359, so on later binaries the knob names nothing and its run is the shipped one.
set -u
AB_SECONDS=0.08 AB_MS=1024,8192 AB_SCHEMES=bf16,fp8-channel,fp8-block KNOBS=MOEQ_CT_WS_PINGPONG128=1 \
  STEPS="knobab adopt" bash bench/device_kernels_round.sh 2>&1 | tail -40
. tools/gpu_harness/device_carry.sh
grep -h "pingpong128" "${OUT:-/tmp/moeq_kernels_round}"/knob_checks_1.log | head -12
