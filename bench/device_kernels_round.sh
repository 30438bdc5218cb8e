#!/usr/bin/env bash
# One device call after a kernel change: the suite's cuda:/gpu cases; GEMM2's K splits timed at
# decode (MOEQ_CT_K_SPLITS=1..8 on the shapes SPLIT_SHAPES, M = 1, no checks); `moeq bench tune`
# of TUNE_SCHEMES at TUNE_MS (the table in $OUT/tuned.json, which the side by side then reads
# through MOEQ_CT_TUNE_TABLE); then the side by side with vLLM (bench/device_side_by_side.sh:
# SCHEMES, MS, SHAPES as there), its checks first. STEPS picks and orders the steps (default
# "tests splits tune sbs"; `jit` adds `moeq bench jit` of JIT_SHAPE, cold and warm). Carry
# build/carry, .devpack and .peers. Builds nothing. At most 8 files come back from $OUT: the
# tests' log, the tune table and log, and the side by side's.
set -u
out=${OUT:-/tmp/moeq_kernels_round}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
echo "binaries of $(cat build/carry/COMMIT 2>/dev/null || echo '?') (build/carry/COMMIT)"
tests() {
  local t0=$SECONDS
  timeout "${TEST_TIMEOUT:-200}" build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1
  echo "device tests: exit $?, $((SECONDS - t0)) s"
  grep -E "ERROR|FAILED|test cases|assertions" "$out/device_tests.txt" | head -20
}
splits() {
  local t0=$SECONDS
  for k in 1 2 3 4 6 8; do
    MOEQ_CT_K_SPLITS=$k timeout 60 build/bin/moeq bench apply --no-check --json --m 1 --seconds 0.05 \
      --scheme "${SPLIT_SCHEMES:-bf16,fp8-channel,fp8-block,w8a16}" --shape "${SPLIT_SHAPES:-Mixtral-8x7B}" 2>/dev/null |
      python3 -c '
import json, sys
k = sys.argv[1]
for r in json.load(sys.stdin)["rows"]:
    st = r.get("stages_us", {})
    print("K splits %s: %s %s M=%d %.1f us (gemm2 %.1f us) %s" % (k, r["shape"], r["scheme"], r["m"], r["us"], st.get("gemm2", -1), r["tiles"]))
' "$k"
  done
  echo "splits: $((SECONDS - t0)) s"
}
tune() {
  local t0=$SECONDS
  timeout "${TUNE_TIMEOUT:-240}" build/bin/moeq bench tune --out "$out/tuned.json" --seconds "${SECONDS_PER_CASE:-0.15}" \
    ${TUNE_SCHEMES:+--scheme $TUNE_SCHEMES} ${TUNE_MS:+--m $TUNE_MS} > /dev/null 2> "$out/tune_log.txt"
  echo "tune: exit $?, $((SECONDS - t0)) s, $(grep -c '"arch"' "$out/tuned.json" 2>/dev/null) entries"
  grep -E "NOT TUNED|keeping|geomean" "$out/tune_log.txt" | head -10
  grep -E " M=[0-9]+: " "$out/tune_log.txt" | sed -E 's/ candidates, [0-9]+ finalists//' | cut -c1-330
}
sbs() {
  local t0=$SECONDS
  [ -s "$out/tuned.json" ] && export MOEQ_CT_TUNE_TABLE=$out/tuned.json
  OUT=$out BUDGET=${SBS_BUDGET:-300} bash bench/device_side_by_side.sh
  rm -f "$out/peer_results.jsonl"
  echo "side by side: $((SECONDS - t0)) s"
}
jit() {
  local t0=$SECONDS
  timeout "${JIT_TIMEOUT:-120}" build/bin/moeq bench jit ${JIT_SHAPE:+--shape $JIT_SHAPE} 2>&1 | grep -vE "^\[moeq warning\]" | tail -20
  echo "jit: $((SECONDS - t0)) s"
}
for step in ${STEPS:-tests splits tune sbs}; do $step; done
