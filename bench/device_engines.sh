#!/usr/bin/env bash
# One device call for the engine-facing work (the carry made by tools/gpu_harness/make_carry.sh):
# the suite's cuda:/gpu cases (device apply captured in a CUDA
# graph, the C API on device memory, host workspaces and scratch), the Python package's torch
# CUDA tests and the transformers end-to-end generation on cuda:0, and the Triton example plugin.
# Carry build/carry and .devpack (or .devbuild). Builds nothing; everything lands under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
t0=$SECONDS
timeout 300 build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1
echo "device tests: exit $?, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
tail -4 "$out/device_tests.txt" | tee -a "$out/summary.txt"
t0=$SECONDS
OUT=$out timeout 300 bash bench/device_python.sh > /dev/null 2>&1
echo "python tests: exit $?, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
tail -5 "$out/python_tests.log" | tee -a "$out/summary.txt"
cat "$out/transformers_e2e.txt" 2>/dev/null | tee -a "$out/summary.txt"
t0=$SECONDS
OUT=$out timeout 150 bash bench/device_triton_example.sh > /dev/null 2>&1
echo "triton example: exit $?, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
cat "$out/triton_times.txt" 2>/dev/null | tee -a "$out/summary.txt"
tail -3 "$out/triton_run_warm.err" 2>/dev/null | tee -a "$out/summary.txt"
