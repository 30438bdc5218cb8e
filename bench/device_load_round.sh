#!/usr/bin/env bash
# One device call for issue 19 (eighteenth session): the load marks under the staging knobs (the
# first from an empty JIT cache), the device tests, then bench/device_load.sh. Builds nothing;
# carry build/carry and .devpack.
mkdir -p /tmp/jce3 && chmod 700 /tmp/jce3; J=MOEQ_CACHE_DIR=/tmp/jce3
STEPS="loadmarks tests" MARKS_ENVS="$J $J,MOEQ_LOAD_PINNED=alloc $J $J,MOEQ_LOAD_CHUNK_MIB=4,MOEQ_LOAD_STAGING_MIB=64,MOEQ_LOAD_COPY=libc" bash bench/device_kernels_round.sh > /tmp/o.txt 2>&1
grep -E "^==|first pass's|first pass,|last warm pass,|^device path|^\| strict|^\| raw|page-locking|device tests|ERROR|FAILED|test cases|assertions" /tmp/o.txt
bash bench/device_load.sh 2>&1 | tail -30
