#!/usr/bin/env bash
# One device call (twenty-first session). First the producer's look-ahead
# (MOEQ_CT_WS_LOOKAHEAD=1: the next tile's entry and lists taken while this tile's K tiles are
# still queued) timed against the same tiles without it (the heuristics: a knob leaves the tune
# table out), M = 1024 and 8192, four schemes, with its checks; then `ncu` (real clocks) of
# Mixtral-8x7B's fp8-channel GEMM1 at M = 8192 (66 % of cuBLASLt's rate, its GEMM2 98 %) with
# and without the knob, the GEMM1's source-level warp states, and cuBLASLt's floor GEMMs.
# Builds nothing; carry build/carry and .devpack.
set -u
out=${OUT:-/tmp/moeq_round21a}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "binaries of $(cat build/carry/COMMIT)"
t0=$SECONDS
for v in heur 1; do
  ( export MOEQ_CT_NO_TUNE=1; [ $v = 1 ] && export MOEQ_CT_WS_LOOKAHEAD=1
    timeout 110 build/bin/moeq bench apply --no-check --json --seconds 0.08 --m 1024,8192 \
      --scheme bf16,fp8-channel,fp8-block,w8a16 > "$out/knob_$v.json" 2> "$out/knob_$v.log"
    echo "timing $v: exit $?" )
done
echo "at $((SECONDS - t0)) s"
python3 - "$out" <<'PY'
import json, math, os, sys
out = sys.argv[1]
def rows(n):
    try:
        return {(r["shape"], r["scheme"], r["m"]): r["us"] for r in json.load(open(os.path.join(out, "knob_%s.json" % n)))["rows"]}
    except Exception as e:
        print(n, e); return {}
h, k = rows("heur"), rows("1")
logs = []
for key in sorted(h):
    if key in k and h[key] > 0 and k[key] > 0:
        r = h[key] / k[key]; logs.append(math.log(r))
        print("%-17s %-12s M=%-5d heur %9.1f  ahead %9.1f  x%.3f" % (key + (h[key], k[key], r)))
if logs: print("look-ahead / heuristics, geomean x%.3f over %d cases" % (math.exp(sum(logs) / len(logs)), len(logs)))
open(os.path.join(out, "geomean"), "w").write("%d" % round(1000 * math.exp(sum(logs) / len(logs))) if logs else "0")
PY
# Steps run while DEADLINE (seconds from the start; default 420) leaves them room.
left() { [ $((SECONDS - t0 + $1)) -le "${DEADLINE:-420}" ]; }
# The knob's checks (Granite-3B-A800M and every synthetic check of the four schemes, which run
# the warp-specialized tiles at M = 2000 in chunks), then heuristics and knob timed in turn.
left 100 && ( export MOEQ_CT_WS_LOOKAHEAD=1
  timeout 120 build/bin/moeq bench apply --json --seconds 0.01 --m 1 --shape Granite-3B-A800M \
    --scheme bf16,fp8-channel,fp8-block,w8a16 > "$out/knob_checks_1.json" 2> "$out/knob_checks_1.log"
  echo "checks (look-ahead): exit $?, $(grep -c '^PASS' "$out/knob_checks_1.log") passed, $(grep -c '^FAIL' "$out/knob_checks_1.log") failed" )
grep -E "^FAIL|MISMATCH|differ" "$out/knob_checks_1.log" | head -8
echo "at $((SECONDS - t0)) s"
# Where the knob won (geomean >= 1.02), the device tests under it, which it would need as the
# default; else the profiles below.
if [ "$(cat "$out/geomean" 2>/dev/null || echo 0)" -ge 1020 ] && left 150; then
  MOEQ_CT_WS_LOOKAHEAD=1 timeout 150 build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1
  echo "device tests (look-ahead): exit $?"
  grep -E "ERROR|FAILED|test cases|assertions" "$out/device_tests.txt" | head -20
fi
summ() { python3 tools/gpu_harness/ncu_details.py "$1" "$2"; }  # report file, label
for v in 0 1; do
  left 60 || break
  ( [ $v = 1 ] && export MOEQ_CT_WS_LOOKAHEAD=1; export MOEQ_CT_NO_TUNE=1
    timeout 70 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      --section Occupancy -k regex:moe_gemm -c 1 -o "/tmp/sol_a$v" -f \
      build/bin/moeq bench apply --no-check --m 8192 --seconds 0.01 --scheme fp8-channel --shape Mixtral-8x7B > "$out/sol_a$v.log" 2>&1
    echo "sol gemm1 ahead=$v: exit $?" )
  summ "/tmp/sol_a$v.ncu-rep" "Mixtral gemm1 ahead=$v"
done
echo "at $((SECONDS - t0)) s"
left 90 && MOEQ_CT_NO_TUNE=1 timeout 90 ncu --clock-control none --section WarpStateStats --section SourceCounters -k regex:moe_gemm -c 1 -o /tmp/src1 -f \
  build/bin/moeq bench apply --no-check --m 8192 --seconds 0.01 --scheme fp8-channel --shape Mixtral-8x7B > "$out/src1.log" 2>&1
echo "ncu_src: exit $?"
ncu -i /tmp/src1.ncu-rep --page source --csv --print-source sass > /tmp/src1.csv 2>> "$out/src1.log"
xz -c /tmp/src1.csv > "$out/ncu_src1.csv.xz"
python3 tools/gpu_harness/stall_ledger.py /tmp/src1.csv | head -70
echo "at $((SECONDS - t0)) s"
left 50 && timeout 50 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  -k regex:'gemm|xmma|cutlass' -c 2 -o /tmp/solf -f \
  build/bin/moeq bench apply --no-check --m 1 --seconds 0.01 --scheme fp8-channel --shape Granite-3B-A800M > "$out/solf.log" 2>&1
echo "sol floors: exit $?"
summ /tmp/solf.ncu-rep floors
echo "done at $((SECONDS - t0)) s"
