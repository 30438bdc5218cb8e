#!/usr/bin/env bash
# One device call, side by side: `moeq bench apply --json` (its correctness checks first, then the
# timed cases), then the vLLM Triton fused-MoE peer (.peers/bench_moe.py) on the same cases with
# routing seeds matched to moeq's experts-hit counts, then the table (.peers/make_report.py).
# The steps of .peers/run.sh, with the carried build, --dims geometries on both sides and the
# files kept to what comes back from a device call (at most 8).
#
# Needs, in the repo root on the GPU machine (both are git-ignored, so name them in `carry`):
#   build/carry/   stripped moeq and plugins, built on the development machine:
#                    ./scripts/build.sh      # or, incremental: cmake --build build -j2 --target moeq_cli moeq_plugins
#                    rm -rf build/carry && mkdir -p build/carry/bin build/carry/plugins
#                    strip -o build/carry/bin/moeq build/bin/moeq
#                    for f in build/plugins/*.so; do strip --strip-unneeded -o "build/carry/plugins/${f##*/}" "$f"; done
#                    du -sh build/carry .peers   # what travels: 64 MiB in all
#                  (bench apply needs only bin/moeq; moeq finds plugins in <bin>/../plugins.)
#   .peers/        a copy of the peer harness with vLLM vendored (never committed; /.peers/ in
#                  .git/info/exclude):
#                    cp -r /work/shared/peers .peers && chmod -R u+w .peers
#                    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                      --platform manylinux_2_28_x86_64 vllm==0.34.0 -d /tmp/vllmwheel
#                    (cd .peers && python3 vendor_vllm.py /tmp/vllmwheel/vllm-0.34.0-*.whl); rm -rf /tmp/vllmwheel
# The device call (the `run` tool), from the repo root:
#   carry ["build/carry", ".peers"], command "bash bench/device_side_by_side.sh", timeout_s 600
#   e.g. command "SCHEMES=bf16,fp8-block MS=1,16,128 DIMS='64,6,2048,1408' bash bench/device_side_by_side.sh"
#
# Knobs (environment):
#   SCHEMES  comma list, both sides (default bf16,fp8-channel,fp8-block,w8a16: the peer runs these four)
#   MS       comma list of token counts (default 1,16,128,1024,8192)
#   SHAPES   comma list of moeq's named shapes (Mixtral-8x7B, Qwen3-30B-A3B, DeepSeek-V3,
#            Granite-3B-A800M); default: all four, unless DIMS is given (then only DIMS)
#   DIMS     space-separated geometries, each E,TOPK,H,I (case named E<E>-k<TOPK>-H<H>-I<I>, as
#            moeq names it) or NAME=E,TOPK,H,I: `moeq bench apply --dims` and the peer's
#            `--add-shape NAME=E,TOPK,H,I` under the same name, which make_report matches on
#   BUDGET   seconds for the whole call (default 560; moeq gets half, the peer the rest)
#   MOEQ     the moeq binary (default: build/carry/bin/moeq, else build/bin/moeq)
#   PEERS    the peer folder (default .peers)   PEER_JOBS  Triton precompile processes (default 14)
#   EXTRA_MOEQ / EXTRA_PEER  more options for `moeq bench apply` / bench_moe.py
# Files under $OUT (default /tmp/moeq_side_by_side): side_by_side.md (the table), moeq.json
# (every timed case with its dims, times, floor and check; every check), peer_results.jsonl,
# moeq_log.txt (bench apply's progress, checks and tables), logs.txt (nvidia-smi, this script's
# lines, the peer's output). The end of the output is the table's summary.
set -u
OUT=${OUT:-/tmp/moeq_side_by_side}
mkdir -p "$OUT"
T0=$(date +%s)
BUDGET=${BUDGET:-560}
PEERS=${PEERS:-.peers}
SCHEMES=${SCHEMES:-bf16,fp8-channel,fp8-block,w8a16}
MS=${MS:-1,16,128,1024,8192}
SHAPES=${SHAPES:-}
DIMS=${DIMS:-}
LOG="$OUT/logs.txt"
say() { echo "$*" | tee -a "$LOG"; }
# The case name moeq gives a --dims value: NAME of NAME=E,TOPK,H,I, else E<E>-k<TOPK>-H<H>-I<I>.
dims_name() {
  if [[ $1 == *=* ]]; then echo "${1%%=*}"
  elif [[ $1 =~ ^([0-9]+),([0-9]+),([0-9]+),([0-9]+)$ ]]; then
    echo "E$((10#${BASH_REMATCH[1]}))-k$((10#${BASH_REMATCH[2]}))-H$((10#${BASH_REMATCH[3]}))-I$((10#${BASH_REMATCH[4]}))"
  else echo "$1"  # malformed: moeq refuses it below
  fi
}

MOEQ=${MOEQ:-}
for c in build/carry/bin/moeq build/bin/moeq; do [ -z "$MOEQ" ] && [ -x "$c" ] && MOEQ=$c; done
if [ -z "$MOEQ" ] || [ ! -x "$MOEQ" ]; then say "no moeq binary: carry build/carry (see this script's header) or set MOEQ"; exit 2; fi
[ -f "$PEERS/vllm/vllm_fused_moe.py" ] || { say "$PEERS/vllm/ is missing: carry .peers with vLLM vendored (header)"; exit 2; }

# NVRTC (libnvrtc.so.13, which moeq links) from the toolkit or python's nvidia packages.
. "$(dirname "$0")/../tools/gpu_harness/device_env.sh"
export PYTHONUNBUFFERED=1
export MOEQ_CACHE_DIR=${MOEQ_CACHE_DIR:-/tmp/moeq_jit}
# NOTE: carried plugin files may come out group-writable on the device box (device_run.sh).
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=${MOEQ_ALLOW_UNTRUSTED_PLUGINS:-1}

# The peer quantizes fp8-block weights in whole 128x128 blocks (bench_moe.py's Layer) and stops
# on any other size; moeq takes K and N tails. Refuse such a pairing before any GPU work.
if [[ ,$SCHEMES, == *,fp8-block,* ]]; then
  for d in $DIMS; do
    IFS=, read -r _ _ h i _ <<<"${d#*=}"
    if [[ $h =~ ^[0-9]+$ && $i =~ ^[0-9]+$ ]] && (( 10#$h % 128 || 10#$i % 128 )); then
      say "DIMS '$d': the peer's fp8-block needs H and I multiples of 128; drop fp8-block from SCHEMES for it"
      exit 2
    fi
  done
fi

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv 2>&1 | tee -a "$LOG"
say "moeq: $MOEQ (binaries of $(cat build/carry/COMMIT 2>/dev/null || echo '?')); peer: $PEERS"

# The cases of both sides. The peer's keys of moeq's named shapes; DIMS under one name each.
moeq_args=(bench apply --json --scheme "$SCHEMES" --m "$MS")
peer_args=(--schemes "$SCHEMES" --ms "$MS")
peer_shapes=()
if [ -n "$SHAPES" ] || [ -z "$DIMS" ]; then
  [ -n "$SHAPES" ] && moeq_args+=(--shape "$SHAPES")
  IFS=, read -r -a named <<<"${SHAPES:-Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3,Granite-3B-A800M}"
  for s in "${named[@]}"; do
    case $s in
      Mixtral-8x7B) peer_shapes+=(mixtral) ;;
      Qwen3-30B-A3B) peer_shapes+=(qwen3) ;;
      DeepSeek-V3) peer_shapes+=(dsv3) ;;
      Granite-3B-A800M) peer_shapes+=(granite) ;;
      *) peer_shapes+=("$s") ;;  # moeq refuses it below
    esac
  done
fi
for d in $DIMS; do
  moeq_args+=(--dims "$d")
  name=$(dims_name "$d")
  peer_args+=(--add-shape "$name=${d#*=}")
  peer_shapes+=("$name")
done
peer_args+=(--shapes "$(IFS=,; echo "${peer_shapes[*]}")")

say "+ $MOEQ ${moeq_args[*]} ${EXTRA_MOEQ:-}"
# shellcheck disable=SC2086  # EXTRA_MOEQ: several words on purpose
timeout $((BUDGET / 2)) "$MOEQ" "${moeq_args[@]}" ${EXTRA_MOEQ:-} > "$OUT/moeq.json" 2> "$OUT/moeq_log.txt"
rc=$?
say "moeq bench apply rc=$rc ($(( $(date +%s) - T0 )) s)"
grep -E "^FAIL|NOT TIMED|CHECKS|error" "$OUT/moeq_log.txt" | head -20 | tee -a "$LOG"
if [ $rc -eq 2 ] || [ $rc -eq 127 ]; then
  tail -5 "$OUT/moeq_log.txt"
  say "moeq refused the cases (usage error) or did not start; no peer run"
  exit 2
fi
if ! python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["rows"]' "$OUT/moeq.json" 2>/dev/null; then
  tail -20 "$OUT/moeq_log.txt"
  say "moeq.json holds no timed case (rc=$rc): nothing to set the peer beside; no peer run"
  exit 1
fi
match=(--match-hits "$OUT/moeq.json")

left=$(( BUDGET - ($(date +%s) - T0) - 20 ))
say "+ python3 $PEERS/bench_moe.py --out $OUT --tag peer ${match[*]} ${peer_args[*]} --deadline $((left - 30)) --jobs ${PEER_JOBS:-14} ${EXTRA_PEER:-}"
# shellcheck disable=SC2086  # EXTRA_PEER: several words on purpose
timeout "$left" python3 "$PEERS/bench_moe.py" --out "$OUT" --tag peer "${match[@]}" "${peer_args[@]}" \
  --deadline $((left - 30)) --jobs "${PEER_JOBS:-14}" ${EXTRA_PEER:-} > "$OUT/peer_stdout.txt" 2>&1
rc=$?
say "peer rc=$rc ($(( $(date +%s) - T0 )) s)"
grep -E "FAILED|Error|deadline" "$OUT/peer_stdout.txt" | head -10 | tee -a "$LOG"
{ echo "==== peer stdout"; cat "$OUT/peer_stdout.txt"; } >> "$LOG"
rm -f "$OUT/peer_stdout.txt" "$OUT/peer_log.txt"  # peer_log.txt repeats the stdout; few files come back

# make_report.py orders rows by its four named models; --dims names join the end of its list.
python3 - "$PEERS" "$OUT/moeq.json" "$OUT/peer_results.jsonl" "$OUT/moeq_log.txt" > "$OUT/side_by_side.md" 2>>"$LOG" <<'EOF'
import json, sys
sys.path.insert(0, sys.argv[1])
import make_report
for r in json.load(open(sys.argv[2]))["rows"]:
    if r["shape"] not in make_report.ORDER:
        make_report.ORDER.append(r["shape"])
sys.argv = ["make_report.py"] + sys.argv[2:]
make_report.main()
EOF
rc=$?
say "report rc=$rc ($(( $(date +%s) - T0 )) s); files: $(cd "$OUT" && echo *)"
[ $rc -eq 0 ] || { tail -5 "$LOG"; exit 1; }
# The summary (what the call's reply shows): floors, per-M, per-scheme and per-model speedups,
# worst and best cases; the rows of the DIMS geometries in full.
echo
sed -n '1p' "$OUT/side_by_side.md"
if [ -n "$DIMS" ]; then
  echo
  sed -n '/^| model | scheme |/,+1p' "$OUT/side_by_side.md"
  for d in $DIMS; do  # the per-case table's rows (13 columns) of this geometry
    awk -F'|' -v n="$(dims_name "$d")" '{ c = $2; gsub(/^ +| +$/, "", c) } c == n && NF >= 15' "$OUT/side_by_side.md" | head -40
  done
  echo
fi
sed -n '/^| M | cases/,/^Stage breakdown/p' "$OUT/side_by_side.md" | sed '$d'
