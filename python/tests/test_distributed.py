"""Two ranks, one process each, outputs summed with torch.distributed (moeq.distributed): every
rank's TP or EP share of real-producer checkpoints adds up to the unsharded layer. The CUDA cases
(NCCL, rank r on cuda:r) need two GPUs and skip otherwise; the CPU cases (gloo) run wherever
torch is installed."""

import os
import subprocess
import tempfile
import unittest
from pathlib import Path

from moeq_testutil import moeq_bin

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "tests" / "fixtures" / "real"

try:
    import torch
except ImportError:
    torch = None

# Bounds (relative L2 of the summed ranks against the unsharded load). Where a scheme quantizes the
# intermediate dynamically, a TP rank takes its amax over its own slice of I (as engines do), so
# the sum carries that activation-quantization noise (~2e-2, README "What loads today"); an EP
# rank computes whole experts, so only per-tensor activation scales differ: a static one is the
# largest of the rank's experts' input scales (as engines take it under EP), a dynamic one the
# amax over the rank's pairs.
# Elsewhere the ranks differ from the unsharded layer in summation order only.
EXACT, QUANT_NOISE = 1e-4, 6e-2
# (name, checkpoint, online scheme, TP bound, EP bound)
CASES = [
    ("bf16", REAL / "transformers" / "glm4_moe-bf16", None, EXACT, EXACT),
    ("fp8 channel, per-token dynamic", REAL / "mixtral-fp8_dynamic-oneshot", None, QUANT_NOISE, EXACT),
    ("fp8 block 128x128 (TP=2: I/tp 96, a refined 32-element grid)", REAL / "qwen3_moe-fp8_block-oneshot", None,
     QUANT_NOISE, EXACT),
    ("fp8 tensor, static activations", REAL / "qwen3_moe-fp8_static-oneshot", None, EXACT, QUANT_NOISE),
    ("int8 W8A16", REAL / "mixtral-int8_w8a16-oneshot", None, EXACT, EXACT),
    ("ModelOpt fp8 per-channel weights, per-token activations", REAL / "modelopt" / "qwen3moe-fp8-pc-pt", None,
     QUANT_NOISE, EXACT),
    ("online int8 (bf16 checkpoint)", REAL / "transformers" / "glm4_moe-bf16", "int8", EXACT, EXACT),
]
# The CPU (gloo) cases: one of each kind of bound, both modes.
CPU_CASES = [0, 2, 4, 6]


def _plugin_dir():
    return os.environ.get("MOEQ_TEST_PLUGIN_DIR")


@unittest.skipIf(torch is None, "torch is not installed")
class ShardedRanks(unittest.TestCase):
    def check(self, device, indices):
        from moeq import distributed

        for i in indices:
            name, ckpt, online, tp_bound, ep_bound = CASES[i]
            for mode, bound in (("tp", tp_bound), ("ep", ep_bound)):
                with self.subTest(case=name, mode=mode):
                    r = distributed.run(ckpt, mode=mode, world=2, device=device, tokens=16, seed=7, online=online,
                                        plugin_dir=_plugin_dir())
                    self.assertGreater(len(r["layers"]), 0)
                    self.assertLessEqual(r["max_rel_l2"], bound, f"{name} {mode}: {r['layers']}")
                    # Each rank read its share: under TP half the copied bytes, under EP at most
                    # about half the experts' bytes (linear placement).
                    single = r["single"]
                    for rank in r["ranks"]:
                        if mode == "tp":
                            self.assertLess(rank["bytes_copied"], 0.6 * single["bytes_copied"])
                        else:
                            self.assertLess(rank["expert_bytes_handed"], 0.6 * single["expert_bytes_handed"])
                    print(f"distributed {device} {mode} {name}: rel L2 {r['max_rel_l2']:.2e}; "
                          + "; ".join(f"rank {x['rank']} load {x['load_s']:.2f} s apply {x['apply_s'] * 1e3:.1f} ms "
                                      f"copied {x['bytes_copied']} handed {x['expert_bytes_handed']}" for x in r["ranks"])
                          + f"; single load {single['load_s']:.2f} s apply {single['apply_s'] * 1e3:.1f} ms")

    def test_cpu_gloo(self):
        self.check("cpu", CPU_CASES)

    def test_cuda_nccl(self):
        if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
            self.skipTest(f"needs two CUDA devices, found {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
        self.check("cuda", range(len(CASES)))

    def test_cuda_nccl_synthesized_qwen3_layer(self):
        if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
            self.skipTest("needs two CUDA devices")
        from moeq import distributed

        with tempfile.TemporaryDirectory(prefix="moeq-dist-qwen3-") as tmp:
            ckpt = Path(tmp) / "qwen3"
            subprocess.run([moeq_bin(), "bench", "load", str(ckpt), "--synthesize", "Qwen3-30B-A3B", "--scheme",
                            "fp8-channel", "--layers", "1", "--write-only"], check=True, capture_output=True)
            for mode, bound in (("tp", QUANT_NOISE), ("ep", EXACT)):
                with self.subTest(mode=mode):
                    r = distributed.run(ckpt, mode=mode, world=2, device="cuda", tokens=64, seed=3,
                                        plugin_dir=_plugin_dir())
                    self.assertLessEqual(r["max_rel_l2"], bound)
                    print(f"distributed cuda {mode} synthesized Qwen3-30B-A3B fp8-channel layer: rel L2 "
                          f"{r['max_rel_l2']:.2e}; ranks {r['ranks']}; single {r['single']}")


if __name__ == "__main__":
    unittest.main()
