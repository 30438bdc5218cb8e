. tools/gpu_harness/device_carry.sh
export MOEQ_ALLOW_UNTRUSTED_PLUGINS=1
echo "binaries of $(cat build/carry/COMMIT)"
timeout 120 build/bin/moeq_tests -tc='cuda:*,gpu*' > $OUT/device_tests.txt 2>&1; echo "tests rc=$?"; grep -E "test cases|assertions|ERROR" $OUT/device_tests.txt | head -5
MOEQ_CT_GROUP_M=3 timeout 60 build/bin/moeq bench apply --seconds 0.02 --m 300,2000 --shape Qwen3-30B-A3B,Mixtral-8x7B --scheme fp8-channel,fp8-block,w8a16,bf16 > $OUT/check_g3.txt 2>&1; echo "checks with group 3: rc=$?"; grep -iE "fail|error|checks" $OUT/check_g3.txt | head -5
for g in 8 4 16 2 8; do
  MOEQ_CT_GROUP_M=$g timeout 90 build/bin/moeq bench apply --no-check --json --seconds 0.05 --m 1024,8192 \
    --shape Mixtral-8x7B,Qwen3-30B-A3B,DeepSeek-V3 --scheme fp8-channel,fp8-block,bf16 2>/dev/null | python3 -c '
import json, sys
for r in json.load(sys.stdin)["rows"]:
    st = r.get("stages_us", {})
    print("g=%s %s %s M=%d %.0f us gemm1 %.0f gemm2 %.0f" % (sys.argv[1], r["shape"], r["scheme"], r["m"], r["us"], st.get("gemm1", -1), st.get("gemm2", -1)))
' $g
done | tee $OUT/groups.txt
