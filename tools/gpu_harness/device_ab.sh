#!/usr/bin/env bash
# One device call for a kernel change: the device tests (`cuda:*`, `gpu*`), the harness's
# correctness checks with fp8 wgmma tiles forced 256 wide (MOEQ_CT_FP8_WGMMA_N=256, so every
# bm=128 bucket runs them), then the same cases timed with the heuristic's choice (A) and with
# every fp8 wgmma tile 128 wide (B, the previous kernels). Runs the stripped copies in
# build/carry and .devbuild (see make_carry.sh); logs under $OUT.
#   SCHEMES (fp8-channel fp8-block fp8-tensor bf16), SHAPES (all four), MS (1024,8192), TESTS=0 skips the tests,
#   VARIANTS (below).
set -u
OUT=${OUT:-/tmp/moeq_out}
mkdir -p "$OUT" build/bin build/plugins
cp build/carry/plugins/*.so build/plugins/
cp build/carry/bin/moeq build/carry/bin/moeq_tests build/bin/
. "$(dirname "$0")/device_env.sh"
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
export MOEQ_CACHE_DIR=${MOEQ_CACHE_DIR:-$PWD/.devbuild/jitcache}
H=./.devbuild/moeq_gpu_harness
SCHEMES=${SCHEMES:-fp8-channel fp8-block fp8-tensor bf16}
MS=${MS:-1024,8192}
SHAPES=${SHAPES:-Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3,Granite-3B-A800M}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${TESTS:-1}" = 1 ]; then
  timeout ${TEST_TIMEOUT:-240} build/bin/moeq_tests -tc="${TEST_FILTER:-cuda:*,gpu*}" > "$OUT/tests.txt" 2>&1
  echo "moeq_tests rc=$?"
  grep -E "ERROR|FAILED|test cases|assertions" "$OUT/tests.txt" | head -20
fi
FL=$($H --floors-only 2>&1 | tee "$OUT/floors.txt" | sed -n 's/^FLOORS //p'); [ -n "$FL" ] || FL=3000,1500,780
echo "floors $FL"
for s in ${CHECK_SCHEMES-fp8-channel fp8-block fp8-tensor}; do
  MOEQ_CT_FP8_WGMMA_N=256 timeout 150 $H --no-time --no-routing --scheme $s > "$OUT/check256_$s.txt" 2>&1
  echo "check (fp8 wgmma 256 forced) $s rc=$? pass=$(grep -c PASS "$OUT/check256_$s.txt")"
  grep -E "FAIL|error" "$OUT/check256_$s.txt" | head -4
done
# VARIANTS: name=ENV[,ENV...] per variant, timed in turn ("-" for none).
VARIANTS=${VARIANTS:-"A=- B=MOEQ_CT_FP8_WGMMA_N=128 C=MOEQ_CT_WGMMA_SERIAL=1,MOEQ_CT_FP8_WGMMA_N=128"}
names=()
for spec in $VARIANTS; do
  v=${spec%%=*}; envs=${spec#*=}; names+=("$v")
  for s in $SCHEMES; do
    ( unset MOEQ_CT_FP8_WGMMA_N MOEQ_CT_WGMMA_SERIAL
      [ "$envs" = - ] || for e in ${envs//,/ }; do export "$e"; done
      timeout 150 $H --no-check --no-routing --scheme $s --shape "$SHAPES" --m "$MS" --floors $FL \
        --seconds ${SECONDS_PER_CASE:-0.15} > "$OUT/time${v}_$s.txt" 2>&1
      echo "time $v ($envs) $s rc=$?" )
  done
  grep -h '^ROW' "$OUT"/time${v}_*.txt > "$OUT/rows$v.csv"
done
# shape,scheme,M, then the graph-replay µs of each variant in VARIANTS order
cut -d, -f2-5 "$OUT/rows${names[0]}.csv" > "$OUT/ab_cols.txt"
for v in "${names[@]:1}"; do
  cut -d, -f5 "$OUT/rows$v.csv" | paste -d' ' "$OUT/ab_cols.txt" - > "$OUT/ab_cols2.txt"
  mv "$OUT/ab_cols2.txt" "$OUT/ab_cols.txt"
done
echo "shape,scheme,M ${names[*]}"
mv "$OUT/ab_cols.txt" "$OUT/ab.txt"; cat "$OUT/ab.txt"
