#!/usr/bin/env bash
# Runs every fuzz target of a MOEQ_FUZZ build for a bounded time:
#   tests/fuzz/run.sh BUILD_DIR SECONDS [JOBS] [WORKERS] [TARGET...]
# JOBS fuzzer processes run at once (default: one per core); WORKERS processes fuzz each target
# together, sharing its corpus (default 1; the long runs of RESULTS.md use more). TARGETs, when
# given, restrict the run (and the regression inputs replayed) to those targets.
# Inputs: seeds the writer makes (BUILD_DIR/fuzz/seeds) and the committed ones (corpus/).
# Outputs under BUILD_DIR/fuzz: corpus/<target> (grown, kept between runs), crashes/, logs/.
# Prints one line per target (runs summed over its workers) and exits 1 if any target crashed.
set -euo pipefail
src=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
out=$build/fuzz
secs=${2:-60}
jobs=${3:-$(nproc)}
workers=${4:-1}
targets=(fuzz_safetensors_header fuzz_shard_index fuzz_checkpoint_dir fuzz_quant_config fuzz_config_regex
         fuzz_expert_name_router fuzz_strict_load)
if [ $# -gt 4 ]; then
  shift 4
  for t in "$@"; do
    [[ " ${targets[*]} " == *" $t "* ]] || { echo "run.sh: no fuzz target $t (${targets[*]})" >&2; exit 2; }
  done
  targets=("$@")
fi
declare -A committed=([fuzz_safetensors_header]=safetensors_header [fuzz_shard_index]=shard_index
                      [fuzz_quant_config]=quant_config
                      [fuzz_expert_name_router]=expert_name_router)
declare -A max_len=([fuzz_safetensors_header]=65536 [fuzz_checkpoint_dir]=65536 [fuzz_shard_index]=16384
                    [fuzz_quant_config]=16384 [fuzz_config_regex]=4096 [fuzz_expert_name_router]=16384
                    [fuzz_strict_load]=131072)
# fuzz_quant_config, fuzz_config_regex and fuzz_strict_load load the plugins of their build; follow the build if
# it was moved.
[ -d "$build/plugins" ] && export MOEQ_FUZZ_PLUGIN_DIR=$build/plugins

rm -rf "$out/seeds" "$out/logs"
mkdir -p "$out/crashes" "$out/logs"
"$out/fuzz_make_seeds" "$out/seeds" >/dev/null

run_one() {  # TARGET WORKER
  local t=$1 w=$2 dict=$src/json.dict
  [ "$t" = fuzz_expert_name_router ] && dict=$src/names.dict
  [ "$t" = fuzz_config_regex ] && dict=$src/regex.dict
  local dirs=("$out/corpus/$t")
  [ -d "$out/seeds/$t" ] && dirs+=("$out/seeds/$t")
  [ -n "${committed[$t]:-}" ] && dirs+=("$src/corpus/${committed[$t]}")
  # The first directory receives new inputs (and is re-read by the other workers); the others
  # are read only.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$out/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len="${max_len[$t]}" \
      -dict="$dict" -artifact_prefix="$out/crashes/$t-" -print_final_stats=1 -seed=$((w + 1)) \
      "${dirs[@]}" >"$out/logs/$t.$w.log" 2>&1
}

status=0
# Every crash the fuzzers ever found (regressions/<target without fuzz_>-<what>) runs first:
# each must now pass through its target cleanly.
for f in "$src"/regressions/*; do
  [ -e "$f" ] || continue
  name=${f##*/}
  t=fuzz_${name%%-*}
  [[ " ${targets[*]} " == *" $t "* ]] || continue
  if ! "$out/$t" "$f" >"$out/logs/regression-$name.log" 2>&1; then
    echo "regression $name crashes $t again:"
    tail -30 "$out/logs/regression-$name.log"
    status=1
  fi
done

declare -A pids
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t"
  for ((w = 0; w < workers; w++)); do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_one "$t" "$w" &
    pids[$t.$w]=$!
  done
done
for t in "${targets[@]}"; do
  rc=0 runs=0 cov=""
  for ((w = 0; w < workers; w++)); do
    wait "${pids[$t.$w]}" || rc=$?
    log=$out/logs/$t.$w.log
    n=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    runs=$((runs + n))
    c=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
    [ -n "$c" ] && cov=$c
  done
  corpus=$(ls "$out/corpus/$t" | wc -l)
  crashes=$(ls "$out/crashes" | grep -c "^$t-" || true)
  printf '%-26s rc=%d seconds=%s workers=%d runs=%s %s corpus=%s crashes=%s\n' \
    "$t" "$rc" "$secs" "$workers" "$runs" "${cov:-cov: ?}" "$corpus" "$crashes"
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    status=1
    for ((w = 0; w < workers; w++)); do
      grep -m1 -A30 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|invariant broken|deadly signal' \
        "$out/logs/$t.$w.log" || true
    done
  fi
done
exit $status
