#!/usr/bin/env bash
# One device call: the suite's cuda:/gpu cases on the carried build, then the side-by-side with
# vLLM's Triton fused-MoE (bench/device_side_by_side.sh; MS, SCHEMES, SHAPES, BUDGET as there).
# Carry build/carry, .devpack (the packed JIT cache) and .peers. Builds nothing.
set -u
out=${OUT:-/tmp/moeq_out}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
t0=$SECONDS
if [ "${TESTS:-1}" = 1 ]; then
  timeout "${TEST_TIMEOUT:-150}" build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1
  echo "device tests: exit $?, $((SECONDS - t0)) s"
  grep -E "ERROR|FAILED|test cases|assertions" "$out/device_tests.txt" | head -20
fi
OUT=$out BUDGET=$(( ${TOTAL:-570} - (SECONDS - t0) )) bash bench/device_side_by_side.sh
