#!/usr/bin/env bash
# On the GPU machine (carry build/carry, made by tools/gpu_harness/make_carry.sh after
# scripts/python_test): installs the carried moeq wheel into a venv that sees the machine's torch
# and transformers, then runs python/tests there — the torch CUDA cases (current stream, CUDA
# graph replay, torch.compile) and the transformers end-to-end generation on cuda:0, whose
# `transformers-e2e ...` lines (tokens per second of moeq and of plain torch) go to
# $OUT/python_tests.log for bench/RESULTS.md. Builds nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
. tools/gpu_harness/device_env.sh
out=${OUT:-/tmp}
venv=/tmp/moeq-pyvenv
python3 -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --no-index --no-deps --force-reinstall build/carry/dist/moeq-*.whl
chmod -R go-w "$venv"  # trusted loading of the plugins inside the wheel
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
git log -1 --format='commit %h %cd' 2>/dev/null | tee -a "$out/device.txt"
MOEQ_TEST_MOEQ_BIN=$PWD/build/carry/bin/moeq MOEQ_TEST_DEVICE=cuda:0 \
  "$venv/bin/python" -m unittest discover -v -s python/tests 2>&1 | tee "$out/python_tests.log"
rc=${PIPESTATUS[0]}
grep '^transformers-e2e' "$out/python_tests.log" > "$out/transformers_e2e.txt" || true
exit "$rc"
