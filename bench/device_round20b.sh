#!/usr/bin/env bash
# One device call (twentieth session): where the warp-specialized GEMMs' time goes at M = 8192,
# against cuBLASLt's fp8 GEMM of the floor. `ncu` (real clocks) with the speed-of-light, memory
# and compute sections on GEMM1 and GEMM2 of fp8-channel Mixtral-8x7B (K = 4096 and 14,336: 66 %
# and 98 % of cuBLASLt's rate); the source-level warp states of the GEMM1; cuBLASLt's floor
# GEMMs; then the multicast knob timed (at the end). Builds nothing; carry build/carry and
# .devpack. The knob's timing writes into $OUT (/tmp/moeq_kernels_round without it).
set -u
out=${OUT:-/tmp/moeq_round20b}
mkdir -p "$out"
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
echo "binaries of $(cat build/carry/COMMIT)"
summ() { python3 tools/gpu_harness/ncu_details.py "$1" "$2"; }  # report file, label
i=0
for spec in fp8-channel:Mixtral-8x7B:0; do
  IFS=: read -r sc sh skip <<< "$spec"; i=$((i + 1))
  timeout 90 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    --section Occupancy -k regex:moe_gemm --launch-skip "$skip" -c 1 -o "/tmp/sol$i" -f \
    build/bin/moeq bench apply --no-check --m 8192 --seconds 0.01 --scheme "$sc" --shape "$sh" > "$out/sol$i.log" 2>&1
  echo "sol $spec: exit $?"
  summ "/tmp/sol$i.ncu-rep" "$sh gemm$((skip + 1))"
done
# Source-level warp states of Mixtral's fp8-channel GEMM1 (the instructions most sampled, then the
# samples along the code by block, so that mainloop and epilogue can be told apart).
timeout 100 ncu --clock-control none --section WarpStateStats --section SourceCounters -k regex:moe_gemm -c 1 -o /tmp/src1 -f \
  build/bin/moeq bench apply --no-check --m 8192 --seconds 0.01 --scheme fp8-channel --shape Mixtral-8x7B > "$out/src1.log" 2>&1
echo "ncu_src: exit $?"
ncu -i /tmp/src1.ncu-rep --page source --csv --print-source sass > /tmp/src1.csv 2>> "$out/src1.log"
xz -c /tmp/src1.csv > "$out/ncu_src1.csv.xz"
python3 tools/gpu_harness/stall_ledger.py /tmp/src1.csv | head -90
# cuBLASLt's floor GEMMs (the first GEMM kernels the floors launch, before any moe kernel).
timeout 60 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  -k regex:'gemm|xmma|cutlass' -c 2 -o /tmp/solf -f \
  build/bin/moeq bench apply --no-check --m 1 --seconds 0.01 --scheme fp8-channel --shape Granite-3B-A800M > "$out/solf.log" 2>&1
echo "sol floors: exit $?"
summ /tmp/solf.ncu-rep floors
# Last, GEMM2 (the 98 % one) for comparison, if time is left.
timeout 90 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --section Occupancy -k regex:moe_gemm --launch-skip 1 -c 1 -o /tmp/sol2 -f \
  build/bin/moeq bench apply --no-check --m 8192 --seconds 0.01 --scheme fp8-channel --shape Mixtral-8x7B > "$out/sol2.log" 2>&1
echo "sol gemm2: exit $?"
summ /tmp/sol2.ncu-rep "Mixtral gemm2"
# Then two-block clusters sharing the weight tile (MOEQ_CT_WS_MULTICAST=1; 0.87x on an H200 in the
# fourteenth session, before the wide stores) against the shipped table, with their checks.
AB_SECONDS=0.08 AB_MS=1024,8192 AB_SCHEMES=bf16,fp8-channel,fp8-block KNOBS=MOEQ_CT_WS_MULTICAST=1 \
  STEPS=knobab bash bench/device_kernels_round.sh 2>&1 | tail -32
