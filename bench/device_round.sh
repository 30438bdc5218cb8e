#!/usr/bin/env bash
# One device call when device time is short: `moeq bench tune` over the issue's cases (the
# table in $OUT/tuned.json), programmatic dependent launches on and off at small M (moeq bench
# apply, no checks, one process each), then the suite's cuda:/gpu cases; ORDER (default
# "tune ab tests") reorders them. Carry build/carry and .devpack. Builds nothing.
set -u
out=${OUT:-/tmp/moeq_round}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$out/device.txt"
tune() {
t0=$SECONDS
timeout "${TUNE_TIMEOUT:-300}" build/bin/moeq bench tune --out "$out/tuned.json" --seconds "${SECONDS_PER_CASE:-0.15}" \
  ${SHAPES:+--shape $SHAPES} ${SCHEMES:+--scheme $SCHEMES} ${MS:+--m $MS} > /dev/null 2> "$out/tune_log.txt"
echo "tune: exit $?, $((SECONDS - t0)) s, $(grep -c '"arch"' "$out/tuned.json" 2>/dev/null) entries"
grep -E "NOT TUNED|keeping|geomean" "$out/tune_log.txt" | head -10
grep -E " M=[0-9]+: " "$out/tune_log.txt" | sed -E 's/ candidates, [0-9]+ finalists//' | cut -c1-330
}
ab() {
t1=$SECONDS
for v in pdl nopdl; do
  ( [ $v = pdl ] && export MOEQ_CT_PDL=1
    MOEQ_CT_NO_TUNE=1 timeout "${AB_TIMEOUT:-45}" build/bin/moeq bench apply --no-check --json --m 1,16 --seconds 0.03 \
      --scheme bf16,fp8-channel --shape ${AB_SHAPES:-Qwen3-30B-A3B,Granite-3B-A800M,Mixtral-8x7B} > "$out/ab_$v.json" 2> "$out/ab_$v.log"
    echo "apply $v: exit $?" )
done
python3 - "$out" <<'PY' 2>&1 | tee "$out/ab.txt"
import json, sys, math
o = sys.argv[1]
try:
    a = {(r["shape"], r["scheme"], r["m"]): r["us"] for r in json.load(open(o + "/ab_pdl.json"))["rows"]}
    b = {(r["shape"], r["scheme"], r["m"]): r["us"] for r in json.load(open(o + "/ab_nopdl.json"))["rows"]}
except Exception as e:
    print("no A/B:", e); sys.exit(0)
ks = [k for k in a if k in b]
for k in ks: print("%s %s M=%d: PDL %.1f us, plain %.1f us, %.3fx" % (k[0], k[1], k[2], a[k], b[k], b[k] / a[k]))
if ks: print("geomean plain/PDL over %d cases: %.3f" % (len(ks), math.exp(sum(math.log(b[k] / a[k]) for k in ks) / len(ks))))
PY
echo "A/B: $((SECONDS - t1)) s"
}
tests() {
t2=$SECONDS
timeout "${TEST_TIMEOUT:-150}" build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1
echo "device tests: exit $?, $((SECONDS - t2)) s"
grep -E "ERROR|FAILED|test cases|assertions" "$out/device_tests.txt" | head -20
}
for step in ${ORDER:-tune ab tests}; do $step; done
