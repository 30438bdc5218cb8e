#!/usr/bin/env bash
# One device call (twenty-first session): the shorter GEMM epilogues (silu from the approximate
# ex2 and rcp, only the store predicated per column pair, the row address once a row; the fused
# per-group requantization's quotients without a branch a value) checked,
# timed against the binaries of ddc71a1 (build/carry_prev, whose kernels make_carry.sh's pack
# also holds), the device tests, the new GEMM1's warp states under ncu, then the side by side
# with vLLM where DEADLINE (seconds of this script, default 250) leaves it room. Builds nothing.
# Before it: `tools/gpu_harness/make_carry_prev.sh ddc71a1`, then `TUNE=0
# tools/gpu_harness/make_carry.sh`; carry build/carry, build/carry_prev, .devpack and .peers.
set -u
out=${OUT:-/tmp/moeq_round21b}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "binaries of $(cat build/carry/COMMIT), earlier ones of $(cat build/carry_prev/COMMIT)"
t0=$SECONDS
export DEADLINE=${DEADLINE:-250}
left() { [ $((SECONDS - t0 + $1)) -le "$DEADLINE" ]; }
timeout 90 build/bin/moeq bench apply --json --seconds 0.01 --m 1 --shape Granite-3B-A800M \
  --scheme bf16,fp8-channel,fp8-block,w8a16 > "$out/checks.json" 2> "$out/checks.log"
echo "checks: exit $?, $(grep -c '^PASS' "$out/checks.log") passed, $(grep -c '^FAIL' "$out/checks.log") failed, $((SECONDS - t0)) s"
grep -E "^FAIL|MISMATCH|differ" "$out/checks.log" | head -8
PREV_CACHE=$MOEQ_CACHE_DIR AB_MS=1,1024,8192 AB_SCHEMES=bf16,fp8-channel,fp8-block,w8a16 \
  AB_SHAPES=Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3,Granite-3B-A800M OUT="$out" STEPS=abprev \
  bash bench/device_kernels_round.sh 2>&1 | grep -E "geomean|abprev:|^[A-Z][A-Za-z0-9-]+ +[a-z0-9-]+ +M="
left 90 && { TEST_TIMEOUT=90 OUT="$out" STEPS=tests bash bench/device_kernels_round.sh 2>&1 | tail -8; }
echo "at $((SECONDS - t0)) s"
# The new GEMM1's warp states (Mixtral-8x7B fp8-channel, M = 8192, heuristic tiles, as call 1 of
# bench/device_round21a.sh): how much of the consumers' time the epilogue takes now.
if left 60; then
  MOEQ_CT_NO_TUNE=1 timeout 60 ncu --clock-control none --section WarpStateStats --section SourceCounters -k regex:moe_gemm \
    -c 1 -o /tmp/src2 -f build/bin/moeq bench apply --no-check --m 8192 --seconds 0.01 --scheme fp8-channel \
    --shape Mixtral-8x7B > "$out/src2.log" 2>&1
  echo "ncu_src: exit $?"
  ncu -i /tmp/src2.ncu-rep --page source --csv --print-source sass > /tmp/src2.csv 2>> "$out/src2.log"
  xz -c /tmp/src2.csv > "$out/ncu_src2.csv.xz"
  python3 tools/gpu_harness/stall_ledger.py /tmp/src2.csv > "$out/ledger2.txt"
  sed -n '2,5p' "$out/ledger2.txt" | cut -c1-240
  sed -n '/^by block/,$p' "$out/ledger2.txt" | head -24
fi
DEADLINE=$((DEADLINE - (SECONDS - t0))) OUT="$out" STEPS=sbs bash bench/device_kernels_round.sh 2>&1 | tail -40
echo "done at $((SECONDS - t0)) s"
