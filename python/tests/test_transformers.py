"""moeq.transformers end to end: real-producer checkpoints loaded into transformers with moeq serving
the experts, greedy generation of 32 tokens, held to the same model with moeq's dequantized expert
weights in plain torch (transformers' eager experts).

Runs where torch and transformers (v5) are installed: on cuda:0 when torch sees a GPU (the device
acceptance run), else on the CPU (MOEQ_TEST_DEVICE overrides). Each case prints one line
`transformers-e2e <case> ...` with the tokens per second of both models, which bench/RESULTS.md
records from the device run.

What is held, per case:
- teacher-forced logits over the prompt and the 32 generated tokens (both models fed the moeq
  model's sequence) within the scheme's relative L2 bound: FP8 8e-2, int8 2e-2 (the bounds the
  project holds a layer to against a framework's forward, docs/ROUTING.md), here over a whole
  model of 2-3 MoE layers;
- the free-running greedy tokens identical to the reference's, up to the first step where the
  reference's own top-1/top-2 margin is within twice the largest logit difference measured there
  (a near-tie that the scheme's noise may flip: these random-init tiny models have logits of
  about 0.17 with exact bf16 ties). Given the logits bound this part can only fail if the two
  free-running generations disagree on a prefix they share, so it is a consistency check; the
  first differing token, if any, is printed with its margin.
"""

import os
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "tests" / "fixtures" / "real"

try:
    import torch
    import transformers  # noqa: F401

    _have = int(transformers.__version__.split(".")[0]) >= 5
except ImportError:
    torch = None
    _have = False

import moeq

FP8, INT8 = 8e-2, 2e-2
# (case, checkpoint folder, online scheme, relative L2 bound of the logits)
CASES = [
    ("qwen3_moe fp8 dynamic (a layer ignored: bf16)", "qwen3_moe-fp8_dynamic-oneshot-layer1_ignored", None, FP8),
    ("qwen3_moe fp8 block", "qwen3_moe-fp8_block-oneshot", None, FP8),
    ("qwen3_moe fp8 static", "qwen3_moe-fp8_static-oneshot", None, FP8),
    ("mixtral fp8 dynamic", "mixtral-fp8_dynamic-oneshot", None, FP8),
    ("mixtral fp8 block (hub names, F8 router)", "mixtral-fp8_block-model_free", None, FP8),
    ("mixtral int8 w8a16", "mixtral-int8_w8a16-oneshot", None, INT8),
    ("granitemoe fp8 dynamic", "granitemoe-fp8_dynamic-oneshot", None, FP8),
    ("deepseek_v3 fp8 block (grouped routing)", "deepseek_v3-fp8_block-oneshot", None, FP8),
    ("olmoe fp8 dynamic", "olmoe-fp8_dynamic-oneshot", None, FP8),
    ("glm4_moe bf16, online int8", "transformers/glm4_moe-bf16", "int8", INT8),
]
NEW_TOKENS = 32


def _device():
    env = os.environ.get("MOEQ_TEST_DEVICE")
    if env:
        return env
    return "cuda:0" if torch is not None and torch.cuda.is_available() else "cpu"


def _plugin_dir():
    return os.environ.get("MOEQ_TEST_PLUGIN_DIR")


@unittest.skipUnless(_have, "torch and transformers >= 5 are not installed")
class TransformersEndToEnd(unittest.TestCase):
    def run_case(self, name, folder, online, bound):
        import moeq.transformers as mt

        path = str(REAL / folder)
        device = _device()
        t0 = time.perf_counter()
        model = mt.from_pretrained(path, device=device, online=online, plugin_dir=_plugin_dir())
        load_s = time.perf_counter() - t0
        ref = mt.reference_model(path, device=device, online=online, plugin_dir=_plugin_dir())
        # Every MoE layer's experts run on moeq, and none keeps transformers' own parameters.
        served = [m for m in model.modules() if getattr(m, "_moeq_layer", None) is not None]
        self.assertEqual(len(served), len(model.moeq.layers))
        self.assertTrue(all(not list(m.parameters(recurse=False)) for m in served))
        g = torch.Generator().manual_seed(20261205)
        prompt = torch.randint(0, model.config.vocab_size, (1, 8), generator=g).to(device)
        mt.greedy_generate(model, prompt, 4)  # warm-up (JIT modules loaded, caches made)
        mt.greedy_generate(ref, prompt, 4)
        tokens, _, tps = mt.greedy_generate(model, prompt, NEW_TOKENS)
        ref_tokens, _, ref_tps = mt.greedy_generate(ref, prompt, NEW_TOKENS)
        self.assertEqual(tuple(tokens.shape), (1, NEW_TOKENS))
        seq = torch.cat([prompt, tokens], 1)
        with torch.no_grad():
            a = model(seq).logits.float()[0]
            b = ref(seq).logits.float()[0]
        self.assertTrue(bool(torch.isfinite(a).all()), f"{name}: non-finite logits")
        rel = float((a - b).norm() / b.norm())
        # Free-running agreement, up to a near-tie of the reference.
        p = prompt.shape[1]
        same = tokens[0] == ref_tokens[0]
        first = int((~same).nonzero()[0, 0]) if not bool(same.all()) else NEW_TOKENS
        tie_note = "identical"
        if first < NEW_TOKENS:
            pos = p - 1 + first  # logits that chose generated token `first`
            top2 = b[pos].topk(2).values
            margin = float(top2[0] - top2[1])
            diff = float((a[pos] - b[pos]).abs().max())
            tie_note = f"first differs at token {first} (reference margin {margin:.3g} <= 2 x diff {diff:.3g})"
            self.assertLessEqual(margin, 2 * diff, f"{name}: token {first} differs without a near-tie")
        print(f"transformers-e2e {name}: device {device}, load {load_s:.2f} s, logits rel L2 {rel:.2e} (bound {bound:g}), "
              f"tokens {tie_note}, moeq {tps:.1f} tok/s, plain torch {ref_tps:.1f} tok/s", flush=True)
        self.assertLessEqual(rel, bound, f"{name}: logits relative L2 {rel:.3e} above {bound}")

    def test_cases(self):
        for name, folder, online, bound in CASES:
            with self.subTest(case=name):
                self.run_case(name, folder, online, bound)

    def test_a_llama4_style_family_is_refused_naming_why(self):
        import moeq.transformers as mt

        with self.assertRaises(moeq.Error) as e:
            mt.from_pretrained(str(REAL / "transformers" / "llama4_text-bf16"), device=_device(), online="int8",
                               plugin_dir=_plugin_dir())
        self.assertIn("scales the experts' input", str(e.exception))

    def test_dense_weights_dequantize_per_row_and_per_block_and_a_scale_that_fits_neither_is_named(self):
        import moeq.transformers as mt

        w = torch.tensor([[16, -32], [48, 64]], dtype=torch.int8)
        out = mt._dequantize("x.weight", w, torch.tensor([[0.5], [2.0]]), None, torch.float32)
        self.assertTrue(torch.equal(out, torch.tensor([[8.0, -16.0], [96.0, 128.0]])))
        grid = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # blocks of 2 x 2 over a [3, 4] weight
        out = mt._dequantize("b.weight", torch.ones(3, 4, dtype=torch.int8), grid, {"weight_block_size": [2, 2]},
                             torch.float32)
        self.assertTrue(torch.equal(out, torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4]])))
        with self.assertRaises(moeq.Error) as e:
            mt._dequantize("c.weight", torch.ones(3, 4, dtype=torch.int8), torch.ones(5), None, torch.float32)
        self.assertIn("c.weight", str(e.exception))


if __name__ == "__main__":
    unittest.main()
