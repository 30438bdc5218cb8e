#!/usr/bin/env bash
# On the GPU machine (carry build/carry, made by tools/gpu_harness/make_carry.sh after
# scripts/python_test): unpacks the carried moeq wheel for the machine's Python that has torch and
# transformers, then runs python/tests with it — the torch CUDA cases (current stream, CUDA
# graph replay, torch.compile) and the transformers end-to-end generation on cuda:0, whose
# `transformers-e2e ...` lines (tokens per second of moeq and of plain torch) go to
# $OUT/python_tests.log for bench/RESULTS.md. Builds nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
. tools/gpu_harness/device_env.sh
out=${OUT:-/tmp}
# The machine's Python that has torch (the GPU machine has no package index: nothing is
# installed; the wheel, a zip, is unpacked onto PYTHONPATH).
py=""
for cand in $(which -a python3.12 python3 python 2>/dev/null) /usr/local/bin/python3* /opt/*/bin/python3 /root/*/bin/python3; do
  [ -x "$cand" ] && "$cand" -c 'import torch, numpy' 2>/dev/null && { py=$cand; break; }
done
if [ -z "$py" ]; then echo "no Python with torch and numpy found" | tee "$out/python_tests.log"; exit 1; fi
"$py" -c 'import sys, torch, numpy; print(sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__, "cuda", torch.cuda.is_available())' | tee "$out/python.txt"
"$py" -c 'import transformers; print("transformers", transformers.__version__)' 2>&1 | tail -1 | tee -a "$out/python.txt"
site=/tmp/moeq-py
rm -rf "$site" && mkdir -p "$site"
# A wheel's <name>.data/{purelib,platlib}/ trees install at the root of site-packages.
"$py" - build/carry/dist/moeq-*.whl "$site" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    parts = n.split("/")
    if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib", "platlib"):
        target = "/".join(parts[2:])
    elif parts[0].endswith(".dist-info"):
        continue
    else:
        target = n
    if not target or n.endswith("/"):
        continue
    import os
    path = os.path.join(sys.argv[2], target)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(z.read(n))
PY
chmod -R go-w "$site"  # trusted loading of the plugins inside the wheel
export PYTHONPATH=$site
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
git log -1 --format='commit %h %cd' 2>/dev/null | tee -a "$out/device.txt"
MOEQ_TEST_MOEQ_BIN=$PWD/build/carry/bin/moeq MOEQ_TEST_DEVICE=cuda:0 \
  "$py" -m unittest discover -v -s python/tests 2>&1 | tee "$out/python_tests.log"
rc=${PIPESTATUS[0]}
grep '^transformers-e2e' "$out/python_tests.log" > "$out/transformers_e2e.txt" || true
exit "$rc"
