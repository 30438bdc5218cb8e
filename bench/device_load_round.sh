#!/usr/bin/env bash
# One device call for issue 19 (eighteenth session), most needed first: the load marks from an
# empty JIT cache (the machine's first NVRTC use), bench/device_load.sh (the acceptance figures),
# the device tests, then the marks with the staging pool from cuMemHostAlloc (the way before).
# Builds nothing; carry build/carry and .devpack.
mkdir -p /tmp/jce3 && chmod 700 /tmp/jce3; J=MOEQ_CACHE_DIR=/tmp/jce3
keep="^==|first pass's|first pass,|last warm pass,|^device path|^\| strict|^\| raw|page-locking|straight to the device|device tests|ERROR|FAILED|test cases|assertions"
STEPS=loadmarks MARKS_ENVS="$J" bash bench/device_kernels_round.sh 2>&1 | grep -E "$keep"
bash bench/device_load.sh 2>&1 | tail -22
STEPS="tests loadmarks" MARKS_ENVS="$J,MOEQ_LOAD_PINNED=alloc $J" bash bench/device_kernels_round.sh 2>&1 | grep -E "$keep"
