#!/usr/bin/env bash
# One device call: floors, then correctness and timing per scheme in separate processes (a
# crash in one scheme's kernels cannot take the others' results with it). Expects the
# harness and its precompiled JIT cache in .devbuild/ (MOEQ_CACHE_DIR); writes logs to $OUT.
set -u
OUT=${OUT:-/tmp/moeq_out}
mkdir -p "$OUT"
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
for f in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -d "$f" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$f"
done
export LD_LIBRARY_PATH
export MOEQ_CACHE_DIR=${MOEQ_CACHE_DIR:-$PWD/.devbuild/jitcache}
H=./.devbuild/moeq_gpu_harness
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv | tee "$OUT/gpu.txt"
SCHEMES=${SCHEMES:-bf16 fp8-channel fp8-block fp8-tensor w8a16}
EXTRA=${EXTRA:-}
FL=$($H --floors-only 2>&1 | tee "$OUT/floors.txt" | sed -n 's/^FLOORS //p')
cat "$OUT/floors.txt"
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
# Only a few files come back: bundle the logs.
(cd "$OUT" && tar czf logs.tgz *.txt *.csv 2>/dev/null && rm -f check_*.txt time_*.txt)
