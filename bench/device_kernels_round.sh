#!/usr/bin/env bash
# One device call after a kernel change: the suite's cuda:/gpu cases; GEMM2's K splits timed at
# decode (MOEQ_CT_K_SPLITS over SPLIT_KS, "default" for the heuristic's, on SPLIT_SHAPES, M = 1, no
# checks); `moeq bench tune`
# of TUNE_SCHEMES at TUNE_MS (the table in $OUT/tuned.json, which the side by side then reads
# through MOEQ_CT_TUNE_TABLE); then the side by side with vLLM (bench/device_side_by_side.sh:
# SCHEMES, MS, SHAPES as there), its checks first. STEPS picks and orders the steps (default
# "tests splits tune sbs"; `jit` adds `moeq bench jit` of JIT_SHAPE, cold and warm; `jitab` the
# same cold with NVRTC's split compile (the default) and without (MOEQ_JIT_SPLIT=1); `load` runs
# `moeq bench load` on a synthetic Qwen3-30B-A3B fp8-channel checkpoint, first as before this
# round (scans ahead, MOEQ_JIT_SPLIT=1), then as now (scans while packing, split), each from an
# empty JIT cache, the second also cold from the disk; `applyab` times decode and M = 8192 with
# the kernels compiled with and without the split, .devpack/jit_nosplit.tar.xz the latter);
# `fastacc` runs the fp8 device checks with MOEQ_CT_FP8_FAST_ACCUM=0 (the default is 1, which the
# `tests` step checks) and times 0 against 1 at
# M = 128, 1024 and 8192 (fp8 channel and tensor); `ncu_decode` profiles the decode GEMMs;
# `abprev` times build/carry_prev's binaries (or each of AB_PREV's) against these; `sg`, `ncu_src`, `knobab`, `knobab2`, `adopt`, `geo` and
# `bundle` are described where they are defined. Carry
# build/carry, .devpack and .peers. Builds nothing. At most 8 files come back from $OUT: the
# tests' log, the tune table and log, and the side by side's.
set -u
out=${OUT:-/tmp/moeq_kernels_round}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
echo "binaries of $(cat build/carry/COMMIT 2>/dev/null || echo '?') (build/carry/COMMIT)"
tests() {
  local t0=$SECONDS
  timeout "${TEST_TIMEOUT:-200}" build/bin/moeq_tests -tc='cuda:*,gpu*' > "$out/device_tests.txt" 2>&1
  echo "device tests: exit $?, $((SECONDS - t0)) s"
  grep -E "ERROR|FAILED|test cases|assertions" "$out/device_tests.txt" | head -20
}
splits() {
  local t0=$SECONDS
  for k in ${SPLIT_KS:-1 2 3 4 6 8}; do
    ( [ "$k" != default ] && export MOEQ_CT_K_SPLITS=$k; timeout 60 build/bin/moeq bench apply --no-check --json --m 1 --seconds 0.05 \
      --scheme "${SPLIT_SCHEMES:-bf16,fp8-channel,fp8-block,w8a16}" --shape "${SPLIT_SHAPES:-Mixtral-8x7B}" 2>/dev/null |
      python3 -c '
import json, sys
k = sys.argv[1]
for r in json.load(sys.stdin)["rows"]:
    st = r.get("stages_us", {})
    print("K splits %s: %s %s M=%d %.1f us (gemm2 %.1f us) %s" % (k, r["shape"], r["scheme"], r["m"], r["us"], st.get("gemm2", -1), r["tiles"]))
' "$k" )
  done
  echo "splits: $((SECONDS - t0)) s"
}
# TUNE_SPECS="scheme[,scheme]:m[,m] ..." tunes each spec in turn into one table (else TUNE_SCHEMES x
# TUNE_MS); TUNE_SEED=1 starts the table from the shipped one, so that it keeps every other entry.
tune() {
  local t0=$SECONDS
  [ "${TUNE_SEED:-0}" = 1 ] && cp plugins/compressed_tensors/gpu/tuned/sm90_132.json "$out/tuned.json" && chmod u+w "$out/tuned.json"
  : > "$out/tune_log.txt"
  for spec in ${TUNE_SPECS:-${TUNE_SCHEMES:-all}:${TUNE_MS:-all}}; do
    local sch=${spec%%:*} ms=${spec#*:}
    timeout "${TUNE_TIMEOUT:-240}" build/bin/moeq bench tune --out "$out/tuned.json" --seconds "${SECONDS_PER_CASE:-0.15}" \
      $([ "$sch" != all ] && echo "--scheme $sch") $([ "$ms" != all ] && echo "--m $ms") > /dev/null 2>> "$out/tune_log.txt"
    echo "tune $spec: exit $?"
  done
  echo "tune: exit $?, $((SECONDS - t0)) s, $(grep -c '"arch"' "$out/tuned.json" 2>/dev/null) entries"
  grep -E "NOT TUNED|keeping|geomean" "$out/tune_log.txt" | head -10
  grep -E " M=[0-9]+: " "$out/tune_log.txt" | sed -E 's/ candidates, [0-9]+ finalists//' | cut -c1-330
}
sbs() {
  local t0=$SECONDS budget=${SBS_BUDGET:-300}
  # DEADLINE (seconds of this script): the side by side gets what is left before it, less 20 s
  # for the steps after it, and is skipped under 120 s.
  if [ -n "${DEADLINE:-}" ]; then
    [ $((DEADLINE - SECONDS - 20)) -lt "$budget" ] && budget=$((DEADLINE - SECONDS - 20))
    [ "$budget" -lt 120 ] && { echo "side by side skipped: ${budget} s left before DEADLINE"; return; }
  fi
  [ -s "$out/tuned.json" ] && export MOEQ_CT_TUNE_TABLE=$out/tuned.json
  # Timing only (SBS_MOEQ): the tests and knobab steps check the kernels, and the side by side's
  # own checks (~2 s a real shape) would take half its budget.
  OUT=$out BUDGET=$budget EXTRA_MOEQ="${SBS_MOEQ---no-check --seconds 0.05}" bash bench/device_side_by_side.sh
  rm -f "$out/peer_results.jsonl"
  echo "side by side: $((SECONDS - t0)) s"
}
jit() {
  local t0=$SECONDS
  timeout "${JIT_TIMEOUT:-120}" build/bin/moeq bench jit ${JIT_SHAPE:+--shape $JIT_SHAPE} 2>&1 | grep -vE "^\[moeq warning\]" | tail -20
  echo "jit: $((SECONDS - t0)) s"
}
jitab() {
  local t0=$SECONDS
  for sp in 1 default; do
    if [ $sp = default ]; then unset MOEQ_JIT_SPLIT; else export MOEQ_JIT_SPLIT=$sp; fi
    echo "MOEQ_JIT_SPLIT=$sp:"
    timeout "${JIT_TIMEOUT:-120}" build/bin/moeq bench jit --shape "${JIT_SHAPE:-Qwen3-30B-A3B}" 2>&1 | grep -E "^\| [a-z0-9-]+ \|"
  done | tee "$out/jitab.txt"
  unset MOEQ_JIT_SPLIT
  echo "jitab: $((SECONDS - t0)) s"
}
load() {
  local t0=$SECONDS ld=/tmp/moeq_load
  local ck=$ld/qwen3-30b-a3b-fp8-channel-l7
  mkdir -p $ld
  timeout 120 build/bin/moeq bench load --synthesize Qwen3-30B-A3B --scheme fp8-channel --layers 7 --write-only "$ck" 2>&1 | tail -1
  sync
  MOEQ_LOAD_SCAN=ahead MOEQ_JIT_SPLIT=1 MOEQ_CACHE_DIR=$(mktemp -d) timeout 150 build/bin/moeq bench load --repeat 3 "$ck" \
    > "$out/load_before.txt" 2>&1
  echo "bench load (scan ahead, no split): rc=$?"
  grep -E "^\||device path|scanned|phases|scan waits|MISMATCH|DIFFER" "$out/load_before.txt" | grep -vE "^\|---"
  MOEQ_CACHE_DIR=$(mktemp -d) timeout 200 build/bin/moeq bench load --repeat 3 --cold "$ck" > "$out/load.txt" 2>&1
  echo "bench load (scan while packing, split): rc=$?"
  grep -E "^\||device path|scanned|phases|scan waits|MISMATCH|DIFFER|cold:" "$out/load.txt" | grep -vE "^\|---"
  echo "load: $((SECONDS - t0)) s"
}
# The strict device load, JIT warm, a line each, under each SWEEP entry MIB:POOL:LAYERS
# (MOEQ_LOAD_STAGING_MIB, MOEQ_LOAD_THREADS, bench load --layer-threads; "-" leaves one default).
loadsweep() {
  local t0=$SECONDS ck=/tmp/moeq_load/qwen3-30b-a3b-fp8-channel-l7
  [ -d "$ck" ] || { mkdir -p /tmp/moeq_load; timeout 120 build/bin/moeq bench load --synthesize Qwen3-30B-A3B \
    --scheme fp8-channel --layers 7 --write-only "$ck" > /dev/null 2>&1; sync; }
  for e in ${SWEEP:-256:-:- 512:-:- 512:8:-}; do
    IFS=: read -r mib th lt <<< "$e"
    ( [ "$mib" != - ] && export MOEQ_LOAD_STAGING_MIB=$mib; [ "$th" != - ] && export MOEQ_LOAD_THREADS=$th
      timeout 60 build/bin/moeq bench load --repeat 5 $([ "$lt" != - ] && echo "--layer-threads $lt") "$ck" > "$out/sweep.txt" 2>&1
      echo "staging $mib MiB, pool threads $th, layer threads $lt: $(grep -E '^device path' "$out/sweep.txt" | sed -E 's/.*first pass, //')"
      grep -E "raw pipeline, page|scan waits|last warm pass" "$out/sweep.txt" | head -3 | sed 's/^/    /' )
  done | tee -a "$out/loadsweep.txt"
  echo "loadsweep: $((SECONDS - t0)) s"
}
# The strict device load's marks (when each layer's phases ended) of its first pass and its
# last warm one, under each of MARKS_ENVS (space-separated; each entry VAR=V,VAR2=V2 or "-" for
# the defaults; MOEQ_CACHE_DIR=a new folder makes the first pass compile).
loadmarks() {
  local t0=$SECONDS ck=/tmp/moeq_load/qwen3-30b-a3b-fp8-channel-l7
  [ -d "$ck" ] || { mkdir -p /tmp/moeq_load; timeout 120 build/bin/moeq bench load --synthesize Qwen3-30B-A3B \
    --scheme fp8-channel --layers 7 --write-only "$ck" > /dev/null 2>&1; sync; }
  for e in ${MARKS_ENVS:--}; do
    ( [ "$e" != - ] && for kv in ${e//,/ }; do export "$kv"; done
      timeout 90 build/bin/moeq bench load --repeat 5 "$ck" > "$out/marks.txt" 2>&1
      echo "== $e: rc=$?"
      grep -E "pinned|page-locking|straight to the device|first pass.s JIT|raw pipeline, page|^device path|scan waits|pass, ms from|marks|allocations alone|^ +model|layers\.[0-9]+" "$out/marks.txt" )
  done | tee -a "$out/loadmarks.txt"
  echo "loadmarks: $((SECONDS - t0)) s"
}
applyab() {
  local t0=$SECONDS
  mkdir -p /tmp/nosplit && tar xJf .devpack/jit_nosplit.tar.xz -C /tmp/nosplit && chmod -R go-w /tmp/nosplit
  for v in split nosplit split; do
    local dir=$MOEQ_CACHE_DIR
    [ $v = nosplit ] && dir=/tmp/nosplit/jitcache
    MOEQ_CACHE_DIR=$dir MOEQ_JIT_SPLIT=$([ $v = nosplit ] && echo 1 || echo 16) timeout 120 build/bin/moeq bench apply --no-check \
      --json --seconds 0.05 --m "${AB_MS:-1,16,8192}" --shape "${AB_SHAPES:-Mixtral-8x7B,Qwen3-30B-A3B}" 2>/dev/null |
      python3 -c '
import json, sys
for r in json.load(sys.stdin)["rows"]:
    print("%s %s %s M=%d %.1f us" % (sys.argv[1], r["shape"], r["scheme"], r["m"], r["us"]))
' $v
  done
  echo "applyab: $((SECONDS - t0)) s"
}
fastacc() {  # MOEQ_CT_FP8_FAST_ACCUM: the fp8 device checks with it off (not the default), then both timed
  local t0=$SECONDS
  MOEQ_CT_FP8_FAST_ACCUM=0 timeout "${TEST_TIMEOUT:-200}" build/bin/moeq_tests -tc='gpu*fp8*' > "$out/fastacc_tests.txt" 2>&1
  echo "device tests with the promotion (MOEQ_CT_FP8_FAST_ACCUM=0): exit $?"
  grep -E "ERROR|FAILED|rel|test cases|assertions" "$out/fastacc_tests.txt" | head -30
  for v in 0 1 0 1; do
    MOEQ_CT_FP8_FAST_ACCUM=$v timeout 150 build/bin/moeq bench apply --no-check --json --seconds 0.05 \
      --m "${FA_MS:-128,1024,8192}" --scheme fp8-channel,fp8-tensor \
      --shape "${FA_SHAPES:-Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3,Granite-3B-A800M}" 2>/dev/null |
      python3 -c '
import json, sys
for r in json.load(sys.stdin)["rows"]:
    print("fast_acc=%s %s %s M=%d %.1f us gemm1 %.1f gemm2 %.1f" % (sys.argv[1], r["shape"], r["scheme"], r["m"], r["us"],
          r["stages_us"].get("gemm1", 0), r["stages_us"].get("gemm2", 0)))
' $v
  done
  echo "fastacc: $((SECONDS - t0)) s"
}
# The binaries of build/carry_prev (the previous round's, carried beside build/carry) against
# these, alternating, at AB_MS on AB_SHAPES and AB_SCHEMES (no checks; the older ones compile
# their kernels into a cache of their own).
# AB_PREV: the earlier builds to time against build/carry (default build/carry_prev; each a
# carried folder with bin/moeq, plugins and lib), each with a JIT cache of its own, all of them in
# turn, twice; then the best of the two runs a case and the geomean of each earlier build's time
# over build/carry's.
abprev() {
  local t0=$SECONDS log="$out/abprev.txt" d
  : > "$log"
  for d in ${AB_PREV:-build/carry_prev}; do chmod -R go-w "$d" 2>/dev/null; done
  for _ in 1 2; do
    for d in ${AB_PREV:-build/carry_prev} new; do
      local bin=build/bin/moeq cache=$MOEQ_CACHE_DIR tag="new($(cat build/carry/COMMIT))"
      if [ "$d" != new ]; then
        bin=$d/bin/moeq tag="$(basename "$d")($(cat "$d/COMMIT" 2>/dev/null))"
        # PREV_CACHE: a JIT cache that already holds the earlier binaries' kernels (make_carry.sh
        # packs them beside the new ones), so that they compile nothing on the device.
        cache=${PREV_CACHE:-/tmp/jc_$(basename "$d")} && mkdir -p "$cache"
      fi
      MOEQ_CACHE_DIR=$cache timeout 150 $bin bench apply --no-check --json --seconds 0.05 --m "${AB_MS:-1,1024,8192}" \
        --scheme "${AB_SCHEMES:-fp8-channel,fp8-block,fp8-tensor}" --shape "${AB_SHAPES:-Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3}" \
        2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin)["rows"]:
    st = r["stages_us"]
    print("%s %s %s M=%d %.1f us | gemm1 %.1f quant_h %.1f gemm2 %.1f" % (sys.argv[1], r["shape"], r["scheme"], r["m"], r["us"],
          st.get("gemm1", 0), st.get("quant_h", 0), st.get("gemm2", 0)))
' "$tag" | tee -a "$log"
    done
  done
  python3 - "$log" <<'PY2'
import collections, math, re, sys
d = collections.defaultdict(dict)
for l in open(sys.argv[1]):
    m = re.match(r"(\S+) (\S+) (\S+) M=(\d+) ([\d.]+) us", l)
    if m:
        k, v = (m[2], m[3], int(m[4])), float(m[5])
        d[k][m[1]] = min(v, d[k].get(m[1], v))
new = next((t for b in d.values() for t in b if t.startswith("new(")), None)
ratios = collections.defaultdict(list)
for k, b in sorted(d.items()):
    print("%-16s %-12s M=%-5d " % k + "  ".join("%s %.1f" % (t, b[t]) for t in sorted(b)))
    for t in b:
        if t != new and new in b: ratios[t].append(b[t] / b[new])
for t, rs in ratios.items():
    print("geomean %s / %s: %.4f over %d cases" % (t, new, math.exp(sum(map(math.log, rs)) / len(rs)), len(rs)))
PY2
  echo "abprev: $((SECONDS - t0)) s"
}
# Nsight Compute on the decode GEMMs (NCU_SCHEMES at each of NCU_MS, default 1, on NCU_SHAPE):
# throughput, stalls, occupancy of the first eager run's two GEMMs of each (scheme, M) (clocks
# left alone); files ncu_SCHEME_mM.txt.
ncu_decode() {
  local t0=$SECONDS
  for sc in ${NCU_SCHEMES:-fp8-block fp8-channel}; do
    for m in ${NCU_MS:-1}; do
      timeout 150 ncu --clock-control none -k regex:moe_gemm -c 2 --section SpeedOfLight --section WarpStateStats \
        --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
        build/bin/moeq bench apply --no-check --m "$m" --seconds 0.01 --scheme "$sc" --shape "${NCU_SHAPE:-DeepSeek-V3}" \
        > "$out/ncu_${sc}_m$m.txt" 2>&1
      echo "ncu $sc M=$m: exit $?"
      grep -E "moe_gemm|DRAM Throughput|Memory Throughput|Duration|Achieved Occupancy|Registers Per|Stall|Block Limit|Waves Per|Grid Size|Block Size|L2 Hit|Mem Busy|Max Bandwidth" \
        "$out/ncu_${sc}_m$m.txt" | head -60
    done
  done
  echo "ncu: $((SECONDS - t0)) s"
}
# Nsight Compute on the large-M GEMMs of one case (NCUL_SCHEME at NCUL_M on NCUL_SHAPE), moeq's and
# the peer's (vLLM's fused_moe_kernel, GEMM1 and GEMM2 of its first run): every metric of the
# sections (--page raw), then the stall reasons, pipes, L2 and DRAM lines side by side.
ncu_large() {
  local t0=$SECONDS secs="--section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats"
  timeout 200 ncu --clock-control none --page raw -k regex:moe_gemm -c 2 $secs \
    build/bin/moeq bench apply --no-check --m "${NCUL_M:-8192}" --seconds 0.01 --scheme "${NCUL_SCHEME:-fp8-channel}" \
    --shape "${NCUL_SHAPE:-Mixtral-8x7B}" > "$out/ncu_large_moeq.txt" 2>&1
  echo "ncu moeq: exit $?"
  for f in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    [ -d "$f" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$f"
  done
  timeout 300 ncu --clock-control none --page raw -k regex:fused_moe_kernel -c 2 $secs \
    python3 .peers/bench_moe.py --out /tmp/peer_ncu --schemes "${NCUL_SCHEME:-fp8-channel}" --ms "${NCUL_M:-8192}" \
    --shapes "${NCUL_PEER_SHAPE:-mixtral}" --jobs 1 --seconds 0.01 > "$out/ncu_large_vllm.txt" 2>&1
  echo "ncu vllm: exit $?"
  for f in ncu_large_moeq ncu_large_vllm; do
    echo "== $f"
    grep -E "moe_gemm|fused_moe_kernel|gpu__time_duration.sum|sm__throughput.avg.pct|issue_stalled_.*_per_issue_active|pipe_tensor.*pct|lts__t_bytes.sum |lts__throughput.avg.pct|dram__throughput.avg.pct|launch__grid_size|launch__registers|sm__warps_active.avg.pct|smsp__issue_active.avg.pct" \
      "$out/$f.txt" | grep -vE " 0(\.0+)?$| n/a" | head -70
  done
  echo "ncu_large: $((SECONDS - t0)) s"
}
# Each kernel in place (`--stage-graphs`: graphs of growing prefixes, as the peer times its
# stages) next to the eager event times, SG_SCHEMES x SG_MS on SG_SHAPES, no checks.
sg() {
  local t0=$SECONDS
  timeout "${SG_TIMEOUT:-150}" build/bin/moeq bench apply --no-check --stage-graphs --json --seconds "${SG_SECONDS:-0.1}" \
    --m "${SG_MS:-1,8192}" --scheme "${SG_SCHEMES:-fp8-block,fp8-channel}" --shape "${SG_SHAPES:-Mixtral-8x7B,Granite-3B-A800M}" \
    2>/dev/null > "$out/sg.json"
  echo "sg: exit $?"
  python3 - "$out/sg.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    f = lambda d: " ".join("%s %.1f" % kv for kv in (d or {}).items())
    print("%s %s M=%d %.1f us\n  eager: %s\n  graph: %s" % (r["shape"], r["scheme"], r["m"], r["us"], f(r.get("stages_us")), f(r.get("stages_graph_us"))))
PY
  echo "sg: $((SECONDS - t0)) s"
}
# Where the warps of one GEMM wait, instruction by instruction: Nsight Compute's warp-state
# sampling (SourceCounters) of the NSRC_SKIP-th moe_gemm launch of NSRC_SCHEME at NSRC_M on
# NSRC_SHAPE, its SASS page as CSV, the most-sampled instructions printed.
ncu_src() {
  local t0=$SECONDS i=0
  for spec in ${NSRC_SPECS:-fp8-channel:8192:Mixtral-8x7B:0}; do
    IFS=: read -r sc m sh skip <<< "$spec"
    i=$((i + 1))
    timeout 150 ncu --clock-control none --section WarpStateStats --section SourceCounters -k regex:moe_gemm \
      --launch-skip "$skip" -c 1 -o "/tmp/src$i" -f \
      build/bin/moeq bench apply --no-check --m "$m" --seconds 0.01 --scheme "$sc" --shape "$sh" > "$out/ncu_src$i.log" 2>&1
    echo "ncu_src $spec: exit $?"
    ncu -i "/tmp/src$i.ncu-rep" --page source --csv --print-source sass > "/tmp/src$i.csv" 2>> "$out/ncu_src$i.log"
    echo "source page: exit $?, $(wc -l < /tmp/src$i.csv) lines"
    xz -c "/tmp/src$i.csv" > "$out/ncu_src$i.csv.xz"
    python3 tools/gpu_harness/stall_ledger.py "/tmp/src$i.csv" | head -45
  done
  echo "ncu_src: $((SECONDS - t0)) s"
}
# Several tile knobs against the shipped plan and the heuristics alone, one timing run each
# (AB_SCHEMES x AB_MS on every shape, no checks): KNOBS, space-separated entries of
# VAR=VALUE[,VAR=VALUE]; then checked runs (every synthetic check of AB_CHECK_SCHEMES, default
# AB_SCHEMES, and one real shape) under each set of KNOB_CHECKS (default: every entry's variables
# together). Files knob_shipped.json, knob_heur.json, knob_N.json (entry N, from 1),
# knob_checks_N.json; one line a case. KNOB_TAG=T names them knobT_... instead, so that a second
# knobab (other KNOBS, AB_MS or AB_SCHEMES: e.g. a decode knob at M = 1, 16) keeps the first's:
# STEPS="knobab knobab2" runs it with KNOB2_* in place of KNOBS, AB_MS, AB_SCHEMES, KNOB_CHECKS.
knobab() {
  local t0=$SECONDS i=0 all="" kp="knob${KNOB_TAG:-}_"
  run_one() {  # name, then VAR=VALUE words
    local name=$1; shift
    ( for kv in "$@"; do export "$kv"; done
      timeout "${AB_TIMEOUT:-200}" build/bin/moeq bench apply --no-check --json --seconds "${AB_SECONDS:-0.2}" \
        --m "${AB_MS:-1024,8192}" --scheme "${AB_SCHEMES:-bf16,fp8-channel,fp8-block}" \
        2> "$out/${kp}$name.log" > "$out/${kp}$name.json"; echo "knob ${KNOB_TAG:-} $name ($*): exit $?" )
  }
  run_one shipped
  run_one heur MOEQ_CT_NO_TUNE=1
  for k in ${KNOBS:-MOEQ_CT_WS_BN224=1}; do
    i=$((i + 1)); all="$all ${k//,/ }"
    # shellcheck disable=SC2086  # one word a variable
    run_one "$i" ${k//,/ }
  done
  # KNOB_CHECKS: ';'-separated sets of VAR=VALUE words, each checked in a run of its own
  # (knob_checks_N.json, N from 1), so that one knob's failure or hang leaves the others' checks.
  local c=0 sets
  IFS=';' read -ra sets <<< "${KNOB_CHECKS:-$all}"
  for cs in "${sets[@]}"; do
    c=$((c + 1))
    ( for kv in $cs; do export "$kv"; done
      timeout "${AB_CHECK_TIMEOUT:-150}" build/bin/moeq bench apply --json --seconds 0.01 --m 1 --shape Granite-3B-A800M \
        --scheme "${AB_CHECK_SCHEMES:-${AB_SCHEMES:-bf16,fp8-channel,fp8-block}}" 2> "$out/${kp}checks_$c.log" > "$out/${kp}checks_$c.json"
      echo "knob checks $c ($cs): exit $?, $(grep -c '^PASS' "$out/${kp}checks_$c.log") passed, $(grep -c '^FAIL' "$out/${kp}checks_$c.log") failed" )
    grep -E "^FAIL|MISMATCH|differ|note:" "$out/${kp}checks_$c.log" | head -8
  done
  python3 - "$out" "$i" "$kp" <<'PY'
import json, os, sys
out, n, kp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = ["shipped", "heur"] + [str(i) for i in range(1, n + 1)]
rows = {}
for v in names:
    try:
        for r in json.load(open(os.path.join(out, "%s%s.json" % (kp, v))))["rows"]:
            rows.setdefault((r["shape"], r["scheme"], r["m"]), {})[v] = (r["us"], r.get("tiles", ""))
    except Exception as e:
        print("knob %s: %s" % (v, e))
print("case | " + " | ".join(names) + " (us; shipped / each knob)")
for k, d in sorted(rows.items()):
    s = d.get("shipped", (0, ""))[0]
    cells = ["%.1f" % d.get(v, (0,))[0] for v in names]
    ratios = ["%.3f" % (s / d[v][0]) if v in d and d[v][0] else "-" for v in names[2:]]
    print("%-17s %-12s M=%-5d %s | %s | %s" % (k + (" ".join(cells), " ".join(ratios), d.get(names[-1], (0, ""))[1])))
PY
  echo "knobab: $((SECONDS - t0)) s"
}
knobab2() {
  KNOB_TAG=2 KNOBS="${KNOB2_KNOBS:-MOEQ_CT_SCALE_PREFETCH=1}" AB_MS="${KNOB2_MS:-1,16,128}" \
    AB_SCHEMES="${KNOB2_SCHEMES:-fp8-block}" KNOB_CHECKS="${KNOB2_CHECKS:-}" AB_CHECK_SCHEMES="${KNOB2_SCHEMES:-fp8-block}" knobab
}
# The shipped table re-chosen from knobab's timings of each case (adopt_ab.py: the fastest of
# shipped, heuristics alone and knob entry ADOPT_KNOB (default 1), where it beats shipped by
# ADOPT_MARGIN and its checks, set ADOPT_CHECKS (default 1), passed; KNOB_TAG as knobab's) into
# $out/tuned.json, which a later sbs step then reads. The ping-pong A/B of this session's call 2
# is knobab with KNOBS=MOEQ_CT_WS_PINGPONG=1.
adopt() {
  cp plugins/compressed_tensors/gpu/tuned/sm90_132.json "$out/tuned.json" && chmod u+w "$out/tuned.json"
  local kp="knob${KNOB_TAG:-}_"
  python3 tools/gpu_harness/adopt_ab.py "$out/tuned.json" --shipped "$out/${kp}shipped.json" \
    --heuristic "$out/${kp}heur.json" --candidate "$out/${kp}${ADOPT_KNOB:-1}.json" \
    --candidate-checks "$out/${kp}checks_${ADOPT_CHECKS:-1}.json" --margin "${ADOPT_MARGIN:-0.02}" --write
}
# Real models' geometries beyond the four named shapes, every scheme, checked against the CPU
# references (GEO_DIMS, NAME=E,TOPK,H,I, default bench/geo_dims.txt; GEO_MS; GEO_SCHEMES):
# geo.json, geo.log, one line a case and every failed check.
geo() {
  local t0=$SECONDS args=()
  for d in ${GEO_DIMS:-$(grep -v '^#' bench/geo_dims.txt)}; do args+=(--dims "$d"); done
  timeout "${GEO_TIMEOUT:-200}" build/bin/moeq bench apply --json --seconds "${GEO_SECONDS:-0.02}" --m "${GEO_MS:-1,300}" \
    --scheme "${GEO_SCHEMES:-bf16,fp8-channel,fp8-block,fp8-tensor,w8a16}" "${args[@]}" > "$out/geo.json" 2> "$out/geo.log"
  echo "geo: exit $?, $((SECONDS - t0)) s"
  grep -E "FAIL|MISMATCH|differ|refus|error" "$out/geo.log" | head -20
  python3 - "$out/geo.json" <<'PY'
import json, sys
try:
    doc = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit("geo.json: %s" % e)
print("checks passed: %s" % doc.get("checks_passed"))
for r in doc["rows"]:
    c = r.get("check") or {}
    print("%-20s %-12s M=%-4d %8.1f us  check %s  %s" % (r["shape"], r["scheme"], r["m"], r["us"], c.get("passed"), r.get("tiles", "")))
PY
}
# At most 8 files come back: all but the main ones into one archive.
bundle() {
  ( cd "$out" && ls | grep -vE '^(side_by_side.md|moeq.json|tuned.json|device_tests.txt|knob_shipped.json|knob_heur.json|knob_1.json|knob_checks_1.json|bundle.tar.xz)$' |
    tar cJf bundle.tar.xz --remove-files -T - 2>/dev/null; ls )
}
for step in ${STEPS:-tests splits tune sbs}; do $step; done
