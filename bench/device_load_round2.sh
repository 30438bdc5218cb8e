#!/usr/bin/env bash
# One device call for issue 19 (nineteenth session). First, on a machine that just started and
# before anything has used NVRTC: where its files live and how long one cold sequential read of
# them takes; then the strict load's marks from an empty JIT cache (the compiler's files now
# cached), which says how much of a fresh machine's first pass (1.09 s, eighteenth session) was
# the disk under the compiler and how much the compiles. Then the staging shape swept (chunk size,
# pool size, streaming or ordinary stores, pool threads): does a small, cache-resident staging
# pool lift the strict load past 70 % of pinned. Builds nothing; carry build/carry and .devpack.
set -u
lib=$(ldd build/bin/moeq | awk '/libnvrtc\.so/ {print $3}')
real=$(readlink -f "$lib")
echo "nvrtc: $real on $(findmnt -n -o FSTYPE,SOURCE -T "$real" | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E '^(Dirty|Writeback):' /proc/meminfo | tr -s ' ' | paste -sd' '
for f in "$real" "$(dirname "$real")"/libnvrtc-builtins.so*; do
  [ -f "$f" ] && [ ! -L "$f" ] || continue
  s=$(date +%s%N); cat "$f" > /dev/null; e=$(date +%s%N)
  echo "cold read of $(basename "$f"): $(( $(stat -c %s "$f") >> 20 )) MiB in $(( (e - s) / 1000000 )) ms"
done
mkdir -p /tmp/jce4 && chmod 700 /tmp/jce4
keep="^==|first pass's|first pass,|last warm pass,|^device path|^\| strict|^\| raw"
STEPS=loadmarks MARKS_ENVS="MOEQ_CACHE_DIR=/tmp/jce4" bash bench/device_kernels_round.sh 2>&1 | grep -E "$keep"
keep="^==|last warm pass,|^device path|^\| strict|^\| raw"
STEPS=loadmarks MARKS_ENVS="- MOEQ_LOAD_CHUNK_MIB=4,MOEQ_LOAD_STAGING_MIB=64,MOEQ_LOAD_COPY=libc \
MOEQ_LOAD_CHUNK_MIB=2,MOEQ_LOAD_STAGING_MIB=32,MOEQ_LOAD_COPY=libc MOEQ_LOAD_CHUNK_MIB=2,MOEQ_LOAD_STAGING_MIB=32 \
MOEQ_LOAD_CHUNK_MIB=4,MOEQ_LOAD_STAGING_MIB=64 MOEQ_LOAD_CHUNK_MIB=8 MOEQ_LOAD_COPY=libc MOEQ_LOAD_THREADS=12 -" \
  bash bench/device_kernels_round.sh 2>&1 | grep -E "$keep"
