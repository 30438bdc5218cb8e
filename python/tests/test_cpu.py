"""The moeq package on the CPU against the moeq tool and float math done here in numpy."""

import tempfile
import threading
import unittest
from pathlib import Path

import numpy as np

import moeq
from moeq_testutil import (cli_json, demo_checkpoints, fp8_per_token, moe_forward, read_safetensors, rel_l2,
                           route_softmax)

H, I, E, K = 256, 128, 8, 2


class CpuTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = demo_checkpoints()
        cls.fp8_dir = cls.root / "qwen3moe-fp8-dynamic"
        cls.bf16_dir = cls.root / "qwen3moe-bf16"
        cls.fp8 = moeq.load(cls.fp8_dir)
        cls.bf16 = moeq.load(cls.bf16_dir)
        cls.rng = np.random.default_rng(7)

    def tokens(self, m):
        return self.rng.standard_normal((m, H)).astype(np.float32)

    def test_library_and_plugins_come_from_the_package(self):
        path = Path(moeq.library_path())
        self.assertEqual(path.name, "libmoeq_c.so")
        self.assertEqual(path.parent.name, "_lib")
        self.assertEqual(path.parent.parent, Path(moeq.__file__).parent)
        reg = moeq.Registry()  # no plugin_dir: the plugins shipped beside libmoeq_c.so
        self.assertIn("compressed_tensors", reg.plugins)
        self.assertEqual(moeq.abi_version()[0], 1)
        self.assertRegex(moeq.version(), r"^\d+\.\d+\.\d+$")

    def test_layers_describe_what_moeq_inspect_prints(self):
        inspect = cli_json("inspect", str(self.fp8_dir))
        self.assertEqual(len(self.fp8.layers), 2)
        for layer, want in zip(self.fp8.layers, inspect["layers"]):
            self.assertEqual(layer.prefix, want["layer"])
            self.assertEqual(layer.layer, want["index"])
            self.assertEqual(layer.plugin, "compressed_tensors")
            self.assertEqual(layer.describe, want["method"])
            self.assertEqual(layer.model_type, "qwen3_moe")
            g = layer.geometry
            self.assertEqual((g["num_experts"], g["hidden_size"], g["intermediate_size"], g["top_k"]), (E, H, I, K))
            self.assertEqual((g["num_local_experts"], g["first_local_expert"], g["tp_size"], g["ep_size"]), (E, 0, 1, 1))
            self.assertEqual(layer.device, "cpu")
            self.assertIn("float32", layer.x_dtypes)
            self.assertIn("float32", layer.out_dtypes)
            self.assertEqual(layer.scoring, "softmax")
            self.assertTrue(layer.renormalize)  # the writer sets norm_topk_prob
            self.assertFalse(layer.weight_on_input)
            self.assertEqual(layer.routing["summary"], inspect["routing"]["summary"])
            self.assertEqual(layer.routing["family"], "qwen3_moe")
            self.assertEqual(layer.routing["top_k"], K)
            self.assertTrue(layer.routing["renormalize"])

    def test_report_is_what_moeq_load_prints(self):
        self.assertEqual(self.fp8.report, cli_json("load", str(self.fp8_dir)))

    def test_route_equals_numpy_softmax_top_k_of_the_router(self):
        tensors = read_safetensors(self.fp8_dir / "model.safetensors")
        x = self.tokens(33)
        for layer in self.fp8.layers:
            ids, weights = layer.route(x)
            self.assertEqual((ids.dtype, weights.dtype, ids.shape), (np.int32, np.float32, (33, K)))
            want_ids, want_w = route_softmax(x, tensors[layer.prefix + ".gate.weight"], K, True)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-6)

    def test_apply_of_unquantized_experts_equals_float_math(self):
        tensors = read_safetensors(self.bf16_dir / "model.safetensors")
        layer = self.bf16.layers[0]
        p = layer.prefix + ".experts."
        experts = {
            e: (np.concatenate([tensors[f"{p}{e}.gate_proj.weight"], tensors[f"{p}{e}.up_proj.weight"]]),
                tensors[f"{p}{e}.down_proj.weight"]) for e in range(E)}
        x = self.tokens(9)
        ids, w = layer.route(x)
        out = layer.apply(x, ids, w)
        self.assertEqual((out.dtype, out.shape), (np.float32, (9, H)))
        self.assertLessEqual(rel_l2(out, moe_forward(x, ids, w, experts)), 1e-5)

    def test_apply_of_fp8_experts_equals_the_per_token_fp8_forward_on_dequantized_weights(self):
        x = self.tokens(17)
        for layer in self.fp8.layers:
            experts = {e: layer.dequantize_expert(e) for e in range(E)}
            ids, w = layer.route(x)
            out = layer.apply(x, ids, w)
            # The scheme quantizes x and the intermediate per token to FP8 (emulated here).
            self.assertLessEqual(rel_l2(out, moe_forward(x, ids, w, experts, fp8_per_token)), 1e-3)
            # ... and is the scheme's own error away from plain float math.
            err = rel_l2(out, moe_forward(x, ids, w, experts))
            self.assertTrue(1e-3 < err < 8e-2, err)

    def test_dequantize_expert_equals_the_checkpoint_codes_times_scales(self):
        tensors = read_safetensors(self.fp8_dir / "model.safetensors")
        layer = self.fp8.layers[1]
        w13, w2 = layer.dequantize_expert(5)
        self.assertEqual((w13.shape, w2.shape), ((2 * I, H), (H, I)))
        p = f"{layer.prefix}.experts.5."
        down = tensors[p + "down_proj.weight"] * tensors[p + "down_proj.weight_scale"].reshape(H, 1)
        np.testing.assert_array_equal(w2, down.astype(np.float32))

    def test_out_is_written_in_place_and_returned(self):
        layer = self.bf16.layers[0]
        x = self.tokens(5)
        ids, w = layer.route(x)
        out = np.full((5, H), 7.0, np.float32)
        self.assertIs(layer.apply(x, ids, w, out=out), out)
        np.testing.assert_array_equal(out, layer.apply(x, ids, w))

    def test_expert_parallel_ranks_add_up_to_the_whole_layer(self):
        x = self.tokens(12)
        whole = self.bf16.layers[0]
        ids, w = whole.route(x)
        parts = []
        for rank in (0, 1):
            m = moeq.load(self.bf16_dir, ep=(rank, 2))
            lay = m.layers[0]
            self.assertEqual((lay.geometry["num_local_experts"], lay.geometry["first_local_expert"]), (4, 4 * rank))
            parts.append(lay.apply(x, ids, w))
            m.close()
        np.testing.assert_allclose(parts[0] + parts[1], whole.apply(x, ids, w), rtol=1e-5, atol=1e-6)
        self.assertGreater(np.abs(parts[0]).max(), 0)
        self.assertGreater(np.abs(parts[1]).max(), 0)

    def test_online_int8_and_tp(self):
        m = moeq.load(self.bf16_dir, online="int8", tp=(1, 2), strict=True, max_tokens=32)
        lay = m.layers[0]
        self.assertEqual(lay.geometry["intermediate_size_per_partition"], I // 2)
        self.assertEqual(lay.geometry["tp_rank"], 1)
        self.assertIn("int", str(lay.describe).lower())
        w13, w2 = lay.dequantize_expert(0)
        self.assertEqual((w13.shape, w2.shape), ((I, H), (H, I // 2)))

    def test_layers_apply_from_threads_as_serially(self):
        x = self.tokens(64)
        serial = []
        for layer in self.fp8.layers:
            ids, w = layer.route(x)
            serial.append((ids, w, layer.apply(x, ids, w)))
        results = [None] * 8

        def run(t):
            layer = self.fp8.layers[t % 2]
            ids, w, _ = serial[t % 2]
            results[t] = layer.apply(x, ids, w)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for t, r in enumerate(results):
            np.testing.assert_array_equal(r, serial[t % 2][2])


class ErrorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = demo_checkpoints() / "qwen3moe-fp8-dynamic"
        cls.model = moeq.load(cls.dir)
        cls.layer = cls.model.layers[0]

    def assertError(self, code, *parts):
        ctx = self.assertRaises(moeq.Error)

        class Check:
            def __enter__(_):
                return ctx.__enter__()

            def __exit__(_, *exc):
                handled = ctx.__exit__(*exc)
                self.assertEqual(ctx.exception.code_name, code, str(ctx.exception))
                for p in parts:
                    self.assertIn(p, ctx.exception.message)
                return handled

        return Check()

    def test_load_errors(self):
        with self.assertError("NOT_FOUND", "/nonexistent/ckpt"):
            moeq.load("/nonexistent/ckpt")
        with self.assertError("INVALID_ARGUMENT", "options->tp_rank must be in [0, 2), found 2"):
            moeq.load(self.dir, tp=(2, 2))
        with self.assertError("INVALID_ARGUMENT", "options->online_scheme 'int4'"):
            moeq.load(self.dir, online="int4")
        with self.assertError("INVALID_ARGUMENT", "device must be 'cpu', 'cuda' or 'cuda:N', found 'tpu'"):
            moeq.load(self.dir, device="tpu")
        with self.assertError("NOT_FOUND", "plugin_dir '/nonexistent/plugins': no such directory"):
            moeq.load(self.dir, plugin_dir="/nonexistent/plugins")
        with tempfile.TemporaryDirectory() as empty:
            with self.assertError("NOT_FOUND", "no plugin loaded"):
                moeq.Registry(empty, only_plugin_dir=True)

    def test_route_and_apply_errors_name_the_tensor(self):
        x = np.zeros((4, H), np.float32)
        ids, w = self.layer.route(x)
        with self.assertError("INVALID_ARGUMENT", "hidden must be [M, 256] F32/BF16/F16 on the host, found [4, 256]",
                              "bits 64"):
            self.layer.route(np.zeros((4, H), np.float64))
        with self.assertError("INVALID_ARGUMENT", "hidden must be [M, 256]", "found [4, 128] F32 on cpu"):
            self.layer.route(np.zeros((4, 128), np.float32))
        with self.assertError("INVALID_ARGUMENT", "topk_ids", "I64"):
            self.layer.apply(x, ids.astype(np.int64), w)
        with self.assertError("INVALID_ARGUMENT", "x", "128"):
            self.layer.apply(np.zeros((4, 128), np.float32), ids, w, out=np.zeros((4, H), np.float32))
        with self.assertError("INVALID_ARGUMENT", "x must be an array with DLPack", "list"):
            self.layer.apply([[0.0] * H] * 4, ids, w, out=np.zeros((4, H), np.float32))
        with self.assertError("INVALID_ARGUMENT", "local_expert must be in [0, 8), found 8"):
            self.layer.dequantize_expert(8)

    def test_a_closed_model_is_refused_by_the_torch_op_lookup(self):
        m = moeq.load(self.dir)
        handle = m.handle
        m.close()
        with self.assertError("INVALID_ARGUMENT", "is not loaded"):
            moeq._model_of(handle)


if __name__ == "__main__":
    unittest.main()
