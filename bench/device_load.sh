#!/usr/bin/env bash
# One device call for the load figures (bench/RESULTS.md, "load"): a synthetic Qwen3-30B-A3B
# fp8-channel checkpoint written on the device's disk, then
#   1. the safetensors library's load_file(device="cuda:0") on it, page cache warm (median of 3)
#      and cold (files dropped from the page cache), through the device's Python;
#   2. `moeq bench load --cold` with an empty JIT cache (its first device pass compiles, the
#      second is warm; then the disk's raw read and the load from the disk);
#   3. the same at EP=2, rank 0 (bytes handed and bytes read against the checkpoint's).
# Carry build/carry and .devpack (with .devpack/wheels/safetensors-*.whl, downloaded here by
# `pip download --no-deps --only-binary=:all: --python-version 3.12 safetensors`). Builds nothing.
set -u
out=${OUT:-/tmp/moeq_load_out}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/device.txt"
ld=${LOAD_DIR:-/tmp/moeq_load}
ck="$ld/qwen3-30b-a3b-fp8-channel-l${LAYERS:-7}"
mkdir -p "$ld"
df -h "$ld" | tail -1
timeout 120 build/bin/moeq bench load --synthesize Qwen3-30B-A3B --scheme fp8-channel --layers "${LAYERS:-7}" \
  --write-only "$ck" 2>&1 | tail -1
sync

st=$(mktemp -d)
for w in .devpack/wheels/safetensors-*.whl; do [ -f "$w" ] && python3 -m zipfile -e "$w" "$st"; done
PYTHONPATH="$st" timeout 120 python3 - "$ck" <<'PY' 2>&1 | tee "$out/safetensors.json"
import glob, json, os, statistics, sys, time
import torch
from safetensors.torch import load_file
files = sorted(glob.glob(sys.argv[1] + "/*.safetensors"))
nbytes = sum(os.path.getsize(f) for f in files)
def evict():
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
def run():
    torch.cuda.synchronize()
    t = time.perf_counter()
    ts = [load_file(f, device="cuda:0") for f in files]
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    del ts
    torch.cuda.empty_cache()
    return dt
torch.zeros(1, device="cuda:0")
for f in files:
    with open(f, "rb") as fh:
        while fh.read(1 << 24):
            pass
warm = [run() for _ in range(3)]
evict()
cold = run()
print(json.dumps({"safetensors": __import__("safetensors").__version__, "torch": torch.__version__,
                  "bytes": nbytes, "warm_s": warm, "warm_gbps": nbytes / statistics.median(warm) / 1e9,
                  "cold_s": cold, "cold_gbps": nbytes / cold / 1e9}))
PY

export MOEQ_CACHE_DIR=$(mktemp -d)  # empty: the first device pass compiles
timeout 150 build/bin/moeq bench load --cold "$ck" > "$out/load.txt" 2>&1
echo "bench load --cold: rc=$?"
grep -E "^\||MISMATCH|error|ALL|DIFFER|cold:" "$out/load.txt"
timeout 120 build/bin/moeq bench load --cold --repeat 1 --ep 2 --ep-rank 0 "$ck" > "$out/load_ep2.txt" 2>&1
echo "bench load --cold --ep 2: rc=$?"
grep -E "handed|from the disk|MISMATCH|error|DIFFER" "$out/load_ep2.txt"
