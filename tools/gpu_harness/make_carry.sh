#!/usr/bin/env bash
# Here, before a device call: stripped copies of the CUDA build small enough to carry
# (build/carry: moeq, moeq_tests, the plugins; .devbuild: the harness and its JIT cache,
# precompiled for sm_90a so the device spends no time in NVRTC; .devpack: that cache packed).
# All three are git-ignored; name build/carry and .devpack in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p build/carry/bin build/carry/plugins build/carry/lib .devbuild
# Shared libraries the plugins need that a GPU machine may lack (compressed_tensors links RE2,
# whose Debian static library is not position-independent): device_env.sh puts them on the path.
for lib in $(ldd build/plugins/*.so | awk '/libre2/ {print $3}' | sort -u); do cp -L "$lib" build/carry/lib/; done
for b in moeq moeq_tests; do strip -o "build/carry/bin/$b" "build/bin/$b"; done
# The commit the binaries were built from (the device's copy of the tree has no later history).
git describe --always --dirty --abbrev=7 > build/carry/COMMIT
for p in build/plugins/*.so; do strip -o "build/carry/plugins/$(basename "$p")" "$p"; done
strip -o .devbuild/moeq_gpu_harness build/bin/moeq_gpu_harness
rm -rf .devbuild/jitcache
MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache build/bin/moeq_gpu_harness --compile-only "${ARCH:-sm_90a}"
# The kernel sets of bench/geo_dims.txt's geometries (the device round's `geo` step).
geo=(); for d in $(grep -v '^#' bench/geo_dims.txt); do geo+=(--dims "$d"); done
MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache build/bin/moeq_gpu_harness --compile-only "${ARCH:-sm_90a}" --m 1,300 "${geo[@]}"
# The same sets under measuring knobs too: EXTRA_KNOBS, ';'-separated sets of "VAR=VALUE ..."
# (e.g. "MOEQ_CT_WS_BN224=1;MOEQ_CT_A_PREFETCH=1"), each set compiled on its own.
IFS=';' read -ra knob_sets <<< "${EXTRA_KNOBS:-}"
for ks in "${knob_sets[@]}"; do
  # shellcheck disable=SC2086  # one word a variable
  [ -n "${ks// /}" ] && env $ks MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache build/bin/moeq_gpu_harness --compile-only "${ARCH:-sm_90a}"
done
# Every tile candidate of `moeq bench tune` too (TUNE=0 skips), then the cache packed: the carry
# (64 MiB with the tracked tree) holds .devpack/jit.tar.xz where .devbuild/jitcache would not fit.
[ "${TUNE:-1}" = 1 ] && MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache build/bin/moeq bench tune --compile-only "${ARCH:-sm_90a}"
# An earlier commit's kernels (make_carry_prev.sh), packed into the same cache: their keys differ.
if [ -d .devbuild/jitcache_prev/jit ]; then cp -rn .devbuild/jitcache_prev/jit/. .devbuild/jitcache/jit/; fi
mkdir -p .devpack && tar cf - -C .devbuild jitcache | xz -T0 -6 > .devpack/jit.tar.xz
du -sh build/carry .devbuild .devpack
# The Python package as a wheel (libmoeq_c.so and the plugins inside) for the device's Python:
# bench/device_python.sh installs it there.
if [ -x build/pyvenv/bin/python ]; then
  rm -rf build/carry/dist build/carry/stripped
  mkdir -p build/carry/stripped/lib build/carry/stripped/plugins
  for f in build/lib/libmoeq*.so; do strip -o "build/carry/stripped/lib/$(basename "$f")" "$f"; done
  cp build/carry/plugins/*.so build/carry/stripped/plugins/
  MOEQ_BUILD_DIR=$PWD/build/carry/stripped build/pyvenv/bin/python -m pip wheel -q --no-deps --no-build-isolation \
    -w build/carry/dist ./python
  rm -rf build/carry/stripped
  du -sh build/carry/dist
fi
# examples/triton_plugin built from an install prefix, for bench/device_triton_example.sh.
tmp=$(mktemp -d)
cmake --install build --prefix "$tmp/prefix" >/dev/null
cmake -S examples/triton_plugin -B "$tmp/triton" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/triton" -j "$(nproc)" >/dev/null
mkdir -p build/carry/example_plugins
strip -o build/carry/example_plugins/libmoeq_example_triton.so "$tmp/triton/libmoeq_example_triton.so"
rm -rf "$tmp"
