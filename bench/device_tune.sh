#!/usr/bin/env bash
# One device call: the suite's cuda:/gpu cases, then `moeq bench tune` over the issue's cases
# (SHAPES, SCHEMES, MS; the table lands in $OUT/tuned.json, rewritten after every shape and
# scheme). Carry build/carry and .devbuild (tools/gpu_harness/make_carry.sh, then
# `moeq bench tune --compile-only sm_90a` with MOEQ_CACHE_DIR=.devbuild/jitcache so the device
# spends no time in NVRTC). Builds nothing.
set -u
out=${OUT:-/tmp/moeq_tune}
mkdir -p "$out" build/bin build/plugins
cp build/carry/bin/* build/bin/ && cp build/carry/plugins/* build/plugins/
# The JIT cache may travel packed (.devpack/jit.tar.xz: the carry limit).
if [ -f .devpack/jit.tar.xz ]; then mkdir -p .devbuild && tar xJf .devpack/jit.tar.xz -C .devbuild; fi
chmod -R go-w build .devbuild
. tools/gpu_harness/device_env.sh
export MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
echo "commit $(git rev-parse --short HEAD 2>/dev/null)" | tee -a "$out/device.txt"
if [ "${TESTS:-1}" = 1 ]; then
  t0=$SECONDS
  timeout "${TEST_TIMEOUT:-200}" build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1
  echo "device tests: exit $?, $((SECONDS - t0)) s"
  grep -E "ERROR|FAILED|test cases|assertions" "$out/device_tests.txt" | head -20
fi
t0=$SECONDS
timeout "${TUNE_TIMEOUT:-380}" build/bin/moeq bench tune --out "$out/tuned.json" --seconds "${SECONDS_PER_CASE:-0.3}" \
  ${SHAPES:+--shape $SHAPES} ${SCHEMES:+--scheme $SCHEMES} ${MS:+--m $MS} > "$out/tune_stdout.txt" 2> "$out/tune_log.txt"
echo "tune: exit $?, $((SECONDS - t0)) s, $(grep -c '"arch"' "$out/tuned.json" 2>/dev/null) entries"
grep -E "NOT TUNED|left out|keeping|geomean" "$out/tune_log.txt" | head -20
grep -E " M=[0-9]+: " "$out/tune_log.txt" | sed -E 's/ candidates, [0-9]+ finalists//' | cut -c1-420
