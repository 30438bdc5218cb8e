#!/usr/bin/env bash
# One device call (sixteenth session, call 7): the device suite on build/carry's binaries, then
# three builds timed in turn, twice (`moeq bench apply`, fp8-block and fp8-channel at M = 1, 16,
# 128 on the four named shapes, no checks): build/carry_prev ("prev"), build/carry_f316 ("f316")
# and build/carry ("new"), each with a JIT cache of its own; the best of the two runs a case and
# the geomean of prev / each; then the side by side of build/carry (bench/device_kernels_round.sh
# sbs). Carry build/carry, build/carry_prev, build/carry_f316 (bin/moeq, plugins, lib only),
# .devpack, .peers. Builds nothing.
set -u
out=${OUT:-/tmp/moeq_ab3}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$SECONDS
timeout 200 build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1; echo "device tests: exit $?, $((SECONDS - t0)) s"
grep -E "ERROR|test cases|assertions" "$out/device_tests.txt" | head -8
chmod -R go-w build/carry_prev build/carry_f316 2>/dev/null
for r in 1 2; do for v in prev f316 new; do
  bin=build/bin/moeq; c=$MOEQ_CACHE_DIR
  [ $v = prev ] && bin=build/carry_prev/bin/moeq && c=/tmp/jc_prev
  [ $v = f316 ] && bin=build/carry_f316/bin/moeq && c=/tmp/jc_f316
  mkdir -p $c
  MOEQ_CACHE_DIR=$c timeout 150 $bin bench apply --no-check --json --seconds 0.05 --m 1,16,128 --scheme fp8-block,fp8-channel \
    2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin)["rows"]:
    st = r["stages_us"]
    print("%s %s %s M=%d %.1f us | gemm1 %.1f gemm2 %.1f" % (sys.argv[1], r["shape"], r["scheme"], r["m"], r["us"], st.get("gemm1", 0), st.get("gemm2", 0)))
' "$v" | tee -a "$out/ab3.txt"
done; done > /dev/null
echo "ab3: $((SECONDS - t0)) s"
python3 - "$out/ab3.txt" <<'PY'
import collections, math, re, sys
d = collections.defaultdict(lambda: collections.defaultdict(list))
for l in open(sys.argv[1]):
    m = re.match(r"(\w+) (\S+) (\S+) M=(\d+) ([\d.]+) us", l)
    if m: d[(m[2], m[3], int(m[4]))][m[1]].append(float(m[5]))
g = collections.defaultdict(list)
for k in sorted(d):
    b = {v: min(x) for v, x in d[k].items()}
    print("%-16s %-12s M=%-4d prev %8.1f f316 %8.1f new %8.1f" % (k + (b.get("prev", 0), b.get("f316", 0), b.get("new", 0))))
    for v in ("f316", "new"):
        if b.get(v) and b.get("prev"): g[v].append(b["prev"] / b[v])
for v, rs in g.items(): print("geomean prev/%s %.4f over %d" % (v, math.exp(sum(map(math.log, rs)) / len(rs)), len(rs)))
PY
OUT=$out STEPS="sbs" DEADLINE=$((560 - SECONDS)) bash bench/device_kernels_round.sh 2>&1 | grep -E "^\| (1|16|128|1024|8192|all) \||below|speedup 0\.|side by side" | head -24
