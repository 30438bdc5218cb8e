#!/usr/bin/env bash
# On the GPU machine (carry build/carry, made by tools/gpu_harness/make_carry.sh): the Triton
# example plugin (examples/triton_plugin) on the device. `moeq conform --keep-fixtures` writes
# the FP8 per-tensor weight-only fixture it takes; `moeq run --device cuda --plugin example_triton`
# JIT-compiles its PTX (nvJitLink), runs its Triton kernels and holds them to the core's float
# reference; a second run times the warm JIT cache. Output under $OUT. Builds nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
. tools/gpu_harness/device_env.sh
out=${OUT:-/tmp}
moeq=build/carry/bin/moeq
plugins=build/carry/example_plugins
chmod -R go-w "$plugins"
export MOEQ_CACHE_DIR=$(mktemp -d)
fixtures=$(mktemp -d)/fx
"$moeq" conform "$plugins/libmoeq_example_triton.so" --keep-fixtures "$fixtures" > "$out/triton_conform.txt" 2>&1
ckpt=$fixtures/ct-fp8-tensor-wo-qwen3
for pass in cold warm; do
  t0=$(date +%s%N)
  "$moeq" run "$ckpt" --device cuda --plugin example_triton --plugin-dir "$plugins" --tokens 64 --json \
    > "$out/triton_run_$pass.json" 2> "$out/triton_run_$pass.err"
  rc=$?
  echo "$pass: exit $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$out/triton_times.txt"
done
exit "$rc"
