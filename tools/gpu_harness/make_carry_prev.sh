#!/usr/bin/env bash
# Here, before a device call that times these kernels against an earlier commit's (the `abprev`
# step of bench/device_kernels_round.sh with PREV_CACHE): build/carry_prev (moeq and the plugins,
# stripped) built from COMMIT's kernel sources (plugins/compressed_tensors/kernels and its GPU
# host code), and those kernels compiled for sm_90a into .devbuild/jitcache_prev, which
# make_carry.sh then packs beside the current ones. The tree's own sources are restored and
# rebuilt at the end. Run it before make_carry.sh, on a clean tree.
#   tools/gpu_harness/make_carry_prev.sh COMMIT
set -euo pipefail
cd "$(dirname "$0")/../.."
commit=${1:?usage: make_carry_prev.sh COMMIT}
paths=(plugins/compressed_tensors/kernels plugins/compressed_tensors/gpu)
if ! git diff --quiet HEAD -- "${paths[@]}"; then
  echo "make_carry_prev.sh: ${paths[*]} have uncommitted changes; commit them first" >&2
  exit 2
fi
restore() { git checkout HEAD -- "${paths[@]}" && cmake --build build -j "$(nproc)" > /dev/null; }
trap restore EXIT
git checkout "$commit" -- "${paths[@]}"
cmake --build build -j "$(nproc)" > /dev/null
rm -rf build/carry_prev .devbuild/jitcache_prev
mkdir -p build/carry_prev/bin build/carry_prev/plugins build/carry_prev/lib
for lib in $(ldd build/plugins/*.so | awk '/libre2/ {print $3}' | sort -u); do cp -L "$lib" build/carry_prev/lib/; done
strip -o build/carry_prev/bin/moeq build/bin/moeq
for p in build/plugins/*.so; do strip -o "build/carry_prev/plugins/$(basename "$p")" "$p"; done
git rev-parse --short=7 "$commit" > build/carry_prev/COMMIT
MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache_prev build/bin/moeq_gpu_harness --compile-only "${ARCH:-sm_90a}"
du -sh build/carry_prev .devbuild/jitcache_prev
