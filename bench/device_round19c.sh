#!/usr/bin/env bash
# One device call (nineteenth session, binaries of c0298c8): where the warp-specialized GEMMs of
# Granite-3B-A800M fp8-channel at M = 8192 still wait after the wide epilogue stores (Nsight
# Compute's warp-state sampling of GEMM1 and GEMM2: `ncu_src`), then the shipped tune table
# against the heuristics alone (and 224-wide tiles) at M = 1024 and 8192 (`knobab`): the table was
# tuned when the epilogues cost more. Builds nothing; carry build/carry and .devpack.
set -u
NSRC_SPECS="fp8-channel:8192:Granite-3B-A800M:1 fp8-channel:8192:Granite-3B-A800M:0" \
  STEPS=ncu_src bash bench/device_kernels_round.sh 2>&1 | tail -100
AB_SECONDS=0.05 AB_MS=1024,8192 AB_SCHEMES=fp8-channel,fp8-block,bf16,w8a16 KNOBS=MOEQ_CT_WS_BN224=1 \
  STEPS="knobab bundle" bash bench/device_kernels_round.sh 2>&1 | tail -30
