# Sourced by the device scripts, from the repository root on the GPU machine: the carried build
# (build/carry, made by make_carry.sh) put where the binaries look for their plugins, the packed
# JIT cache (.devpack/jit.tar.xz) unpacked into .devbuild/jitcache, the library path
# (device_env.sh) and the JIT cache exported. Builds nothing.
# NOTE: it copies the carried binaries over build/bin and build/plugins, which on the build
# machine would replace the freshly built ones with an older carry: without a GPU driver here
# (no nvidia-smi) it stops the sourcing script, unless MOEQ_CARRY_ANYWHERE=1.
if ! command -v nvidia-smi > /dev/null 2>&1 && [ "${MOEQ_CARRY_ANYWHERE:-0}" != 1 ]; then
  echo "device_carry.sh: no nvidia-smi here; this copies build/carry over build/bin and build/plugins and is meant for the GPU machine (MOEQ_CARRY_ANYWHERE=1 to do it anyway)" >&2
  exit 2
fi
mkdir -p build/bin build/plugins
cp build/carry/bin/* build/bin/ && cp build/carry/plugins/* build/plugins/
if [ -f .devpack/jit.tar.xz ]; then mkdir -p .devbuild && tar xJf .devpack/jit.tar.xz -C .devbuild; fi
# NOTE: carried files may come out group-writable on the device box, which the plugin trust
# rules refuse.
chmod -R go-w build .devbuild 2>/dev/null
. "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
export MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache
