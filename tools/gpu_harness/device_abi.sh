#!/usr/bin/env bash
# One device call for the ABI GPU path: the doctest cases that load layers onto cuda:0 through
# the host (`cuda:*`) and the kernel checks (`gpu*`), then `moeq run --device cuda` on the demo
# checkpoints. Runs the stripped copies in build/carry (bin/moeq, bin/moeq_tests, plugins/),
# placed where the build tree's compiled-in paths expect them. Logs go to $OUT.
set -u
OUT=${OUT:-/tmp/moeq_out}
mkdir -p "$OUT" build/bin build/plugins
cp build/carry/plugins/*.so build/plugins/
cp build/carry/bin/moeq build/carry/bin/moeq_tests build/bin/
. "$(dirname "$0")/device_env.sh"
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
export MOEQ_CACHE_DIR=${MOEQ_CACHE_DIR:-/tmp/moeq_jit}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout ${TEST_TIMEOUT:-300} build/bin/moeq_tests -tc="${TESTS:-cuda:*,gpu*}" > "$OUT/tests.txt" 2>&1
echo "moeq_tests rc=$?"
grep -E "GPU vs CPU|ERROR|FAILED|SKIPPED|test cases|assertions" "$OUT/tests.txt" | head -80
if [ "${DEMO:-1}" = 1 ]; then
  build/bin/moeq demo --keep /tmp/moeq_demo > "$OUT/demo.txt" 2>&1
  for d in /tmp/moeq_demo/*/; do
    build/bin/moeq run "$d" --device cuda --tokens ${TOKENS:-256} 2>&1 | tee -a "$OUT/run_cuda.txt"
    echo "moeq run --device cuda $(basename "$d"): rc=${PIPESTATUS[0]}"
  done
fi
