# The walk's group size, 8 (the default) against 16, alternating, fp8 at M = 1024 / 8192.
. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
echo "binaries of $(cat build/carry/COMMIT)"
for g in 8 16 8 16; do
  MOEQ_CT_GROUP_M=$g timeout 90 build/bin/moeq bench apply --no-check --json --seconds 0.12 --m 1024,8192 \
    --shape Mixtral-8x7B,DeepSeek-V3,Qwen3-30B-A3B --scheme fp8-channel,fp8-block 2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin)["rows"]:
    st = r.get("stages_us", {})
    print("g=%s %s %s M=%d %.0f us gemm1 %.0f gemm2 %.0f" % (sys.argv[1], r["shape"], r["scheme"], r["m"], r["us"], st.get("gemm1", -1), st.get("gemm2", -1)))
' $g
done | tee $OUT/groups.txt
