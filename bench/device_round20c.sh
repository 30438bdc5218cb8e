#!/usr/bin/env bash
# One device call (twentieth session): GEMM1's quantization tail (the decode buckets' mma.sync
# GEMM1 of fp8 with per-token or per-group activation scales requantizes h in the last block of
# each m tile; moe_quant_h is not launched there). The suite's cuda:/gpu cases; then `knobab` at
# M = 1, 16 and 128 (fp8-channel, fp8-block, every shape): the default (tail) against
# MOEQ_CT_QUANT_TAIL=0 (moe_quant_h as before), with the checks of the default (every synthetic
# check, whose decode cases compare the tail's codes and scales bit for bit with the host's
# quantization of the GPU's own h). Builds nothing; carry build/carry and .devpack.
set -u
TEST_TIMEOUT=240 AB_SECONDS=0.1 AB_MS=1,16,128 AB_SCHEMES=fp8-channel,fp8-block KNOBS=MOEQ_CT_QUANT_TAIL=0 \
  KNOB_CHECKS="MOEQ_CT_QUANT_TAIL=1" AB_CHECK_SCHEMES=fp8-channel,fp8-block,fp8-tensor \
  STEPS="tests knobab" bash bench/device_kernels_round.sh 2>&1 | tail -60
