# Sourced by the device scripts: LD_LIBRARY_PATH gains the CUDA toolkit's library folders and
# python's nvidia cu13 packages, where the GPU machine keeps NVRTC (libnvrtc.so.13, which the
# moeq binaries link) and cuBLASLt. Exported.
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
for f in $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -d "$f" ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$f"
done
# Libraries carried beside the build (make_carry.sh: RE2, which the GPU machine lacks).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
[ -d "$here/build/carry/lib" ] && LD_LIBRARY_PATH="$here/build/carry/lib:${LD_LIBRARY_PATH:-}"
export LD_LIBRARY_PATH
