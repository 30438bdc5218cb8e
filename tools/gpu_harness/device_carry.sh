# Sourced by the device scripts, from the repository root on the GPU machine: the carried build
# (build/carry, made by make_carry.sh) put where the binaries look for their plugins, the packed
# JIT cache (.devpack/jit.tar.xz) unpacked into .devbuild/jitcache, the library path
# (device_env.sh) and the JIT cache exported. Builds nothing.
mkdir -p build/bin build/plugins
cp build/carry/bin/* build/bin/ && cp build/carry/plugins/* build/plugins/
if [ -f .devpack/jit.tar.xz ]; then mkdir -p .devbuild && tar xJf .devpack/jit.tar.xz -C .devbuild; fi
# NOTE: carried files may come out group-writable on the device box, which the plugin trust
# rules refuse.
chmod -R go-w build .devbuild 2>/dev/null
. "$(dirname "${BASH_SOURCE[0]}")/device_env.sh"
export MOEQ_CACHE_DIR=$PWD/.devbuild/jitcache
