#!/usr/bin/env bash
# One device call: floors, then correctness and timing per scheme in separate processes (a
# crash in one scheme's kernels cannot take the others' results with it). Expects the
# harness and its precompiled JIT cache in .devbuild/ (MOEQ_CACHE_DIR); writes logs to $OUT.
# LOAD=1 (with CHECK=0 TIME=0 for a load-only call): synthesizes Qwen3-30B-A3B checkpoints in
# $LOAD_DIR (default /tmp/moeq_load; ~4.3 GB fp8-channel, ~2.4 GB bf16), runs `moeq bench load`
# on each (the bf16 one with --online each of $ONLINE, default int8 and fp8-channel) and `moeq bench jit` (JIT=0 skips
# it), with the `moeq` of $MOEQ_BIN (default: the first of build/carry/bin/moeq, build/bin/moeq,
# .devbuild/moeq; build/carry holds stripped copies of moeq and the plugins, small enough to carry).
set -u
OUT=${OUT:-/tmp/moeq_out}
mkdir -p "$OUT"
. "$(dirname "$0")/device_env.sh"
export MOEQ_CACHE_DIR=${MOEQ_CACHE_DIR:-$PWD/.devbuild/jitcache}
H=./.devbuild/moeq_gpu_harness
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
SCHEMES=${SCHEMES:-bf16 fp8-channel fp8-block fp8-tensor w8a16}
EXTRA=${EXTRA:-}
FL=
if [ -x "$H" ] && { [ "${CHECK:-1}" = 1 ] || [ "${TIME:-1}" = 1 ]; }; then
  FL=$($H --floors-only 2>&1 | tee "$OUT/floors.txt" | sed -n 's/^FLOORS //p')
  cat "$OUT/floors.txt"
fi
[ -n "$FL" ] || FL=3000,1300,700
if [ "${TESTS:-0}" = 1 ] && [ -x ./.devbuild/moeq_tests ]; then
  timeout 240 ./.devbuild/moeq_tests -tc='gpu*' > "$OUT/tests.txt" 2>&1
  echo "moeq_tests gpu*: rc=$?"; tail -4 "$OUT/tests.txt"
fi
if [ "${CLI:-0}" = 1 ] && [ -x ./.devbuild/moeq ]; then
  timeout 120 ./.devbuild/moeq bench apply --shape Granite-3B-A800M --scheme fp8-channel --m 1,16 --seconds 0.05 \
    > "$OUT/cli.txt" 2>&1
  echo "moeq bench apply: rc=$?"; grep -E "ALL CHECKS|FAILED|^\| Granite" "$OUT/cli.txt" | head -5
fi
if [ "${CHECK:-1}" = 1 ]; then
  $H --no-time --no-check --scheme bf16 2>&1 | tee "$OUT/routing.txt"
  for s in $SCHEMES; do
    timeout ${CHECK_TIMEOUT:-100} $H --no-time --no-routing --scheme $s $EXTRA > "$OUT/check_$s.txt" 2>&1
    rc=$?
    echo "check $s rc=$rc pass=$(grep -c PASS "$OUT/check_$s.txt")"; grep -E "FAIL|error|SKIP" "$OUT/check_$s.txt" | head -4
    [ $rc -le 1 ] || BROKEN="${BROKEN:-} $s"
  done
fi
if [ "${TIME:-1}" = 1 ]; then
  for s in $SCHEMES; do
    case " ${BROKEN:-} " in *" $s "*) echo "time $s skipped: its check crashed"; continue;; esac
    timeout ${TIME_TIMEOUT:-120} $H --no-check --no-routing --scheme $s --floors $FL --seconds ${SECONDS_PER_CASE:-0.2} $EXTRA \
      > "$OUT/time_$s.txt" 2>&1
    echo "time $s rc=$?"; grep -E "error|FAIL" "$OUT/time_$s.txt" | head -3
  done
  cat "$OUT"/time_*.txt | grep '^ROW' > "$OUT/rows.csv"
  grep -h "ratio" "$OUT"/time_*.txt | sed 's/ |.*//' | tail -120
fi
if [ "${LOAD:-0}" = 1 ]; then
  M=${MOEQ_BIN:-}
  for c in ./build/carry/bin/moeq ./build/bin/moeq ./.devbuild/moeq; do [ -z "$M" ] && [ -x "$c" ] && M=$c; done
  # NOTE: the carried tree's plugin files may come out group-writable on the device box; the
  # override loads them anyway and logs each (the entry symbol is still checked).
  export MOEQ_ALLOW_UNTRUSTED_PLUGINS=${MOEQ_ALLOW_UNTRUSTED_PLUGINS:-1}
  LD=${LOAD_DIR:-/tmp/moeq_load}
  mkdir -p "$LD"
  FP8="$LD/qwen3-30b-a3b-fp8-channel-l${FP8_LAYERS:-7}"
  BF="$LD/qwen3-30b-a3b-bf16-l${BF16_LAYERS:-2}"
  df -h "$LD" | tail -1; free -g | head -2
  timeout 90 $M bench load --synthesize Qwen3-30B-A3B --scheme fp8-channel --layers ${FP8_LAYERS:-7} --write-only "$FP8" \
    2>&1 | tee "$OUT/load_synth.txt"
  timeout 90 $M bench load --synthesize Qwen3-30B-A3B --scheme bf16 --layers ${BF16_LAYERS:-2} --write-only "$BF" \
    2>&1 | tee -a "$OUT/load_synth.txt"
  timeout ${LOAD_TIMEOUT:-100} $M bench load ${LOAD_ARGS:-} "$FP8" > "$OUT/load_fp8_channel.txt" 2>&1
  echo "bench load fp8-channel rc=$?"; cat "$OUT/load_fp8_channel.txt"
  for s in ${ONLINE:-int8 fp8-channel}; do
    timeout ${LOAD_TIMEOUT:-100} $M bench load ${LOAD_ARGS:-} --online $s "$BF" > "$OUT/load_bf16_online_$s.txt" 2>&1
    echo "bench load bf16 --online $s rc=$?"; grep -E "^\||MISMATCH|error|ALL|DIFFER" "$OUT/load_bf16_online_$s.txt"
  done
  if [ "${JIT:-1}" = 1 ]; then
    timeout ${JIT_TIMEOUT:-150} $M bench jit ${JIT_ARGS:-} > "$OUT/jit.txt" 2>&1
    echo "bench jit rc=$?"; cat "$OUT/jit.txt"
  fi
fi
# Only a few files come back: bundle the logs.
(cd "$OUT" && tar czf logs.tgz *.txt *.csv 2>/dev/null && rm -f check_*.txt time_*.txt)
