"""The moeq package with torch tensors: the moeq::apply ops (eager, torch.compile, CUDA graphs).

Skipped where torch is absent; the CUDA cases skip without a CUDA device."""

import unittest

import numpy as np

import moeq
from moeq_testutil import demo_checkpoints, rel_l2

try:
    import torch
except ImportError:  # the package imports and runs without torch
    torch = None

H, E, K = 256, 8, 2


@unittest.skipIf(torch is None, "torch is not installed")
class TorchCpuTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = moeq.load(demo_checkpoints() / "qwen3moe-fp8-dynamic")
        cls.layer = cls.model.layers[0]

    def routed(self, m, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(m, H, generator=g)
        ids, w = self.layer.route(x.numpy())
        return x, torch.from_numpy(ids), torch.from_numpy(w)

    def test_float32_tensors_give_the_numpy_result(self):
        x, ids, w = self.routed(13, 1)
        out = self.layer.apply(x, ids, w)
        self.assertEqual((out.dtype, tuple(out.shape)), (torch.float32, (13, H)))
        np.testing.assert_array_equal(out.numpy(), self.layer.apply(x.numpy(), ids.numpy(), w.numpy()))
        given = torch.full((13, H), 5.0)
        self.assertIs(self.layer.apply(x, ids, w, out=given), given)
        self.assertTrue(torch.equal(given, out))

    def test_bfloat16_x_is_the_float32_apply_of_its_values(self):
        if "bfloat16" not in self.layer.x_dtypes:
            self.skipTest(f"{self.layer.plugin} takes x as {self.layer.x_dtypes} on the CPU")
        x, ids, w = self.routed(7, 2)
        xb = x.to(torch.bfloat16)
        out = self.layer.apply(xb, ids, w)
        self.assertEqual(out.dtype, torch.bfloat16 if "bfloat16" in self.layer.out_dtypes else torch.float32)
        want = self.layer.apply(xb.float(), ids, w)
        self.assertLessEqual(rel_l2(out.float().numpy(), want.numpy()), 5e-3)

    def test_the_op_traces_under_torch_compile(self):
        x, ids, w = self.routed(9, 3)
        handle, index = self.model.handle, self.layer.index

        def f(x, ids, w):
            return torch.ops.moeq.apply(handle, index, x * 2, ids, w, None) + 1

        moeq.torch_ops()
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        self.assertTrue(torch.equal(compiled(x, ids, w), f(x, ids, w)))
        with torch._subclasses.fake_tensor.FakeTensorMode():
            fake = torch.ops.moeq.apply(handle, index, torch.empty(4, H), torch.empty(4, K, dtype=torch.int32),
                                        torch.empty(4, K), None)
            self.assertEqual((tuple(fake.shape), fake.dtype), ((4, H), torch.float32))

    def test_errors_raise_moeq_error(self):
        x, ids, w = self.routed(3, 4)
        with self.assertRaises(moeq.Error) as ctx:
            self.layer.apply(x, ids.long(), w)
        self.assertEqual(ctx.exception.code_name, "INVALID_ARGUMENT")
        self.assertIn("topk_ids", ctx.exception.message)
        with self.assertRaises(moeq.Error):
            torch.ops.moeq.apply(0x1234, 0, x, ids, w, None)


@unittest.skipIf(torch is None or not torch.cuda.is_available(), "needs torch with a CUDA device")
class TorchCudaTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = demo_checkpoints() / "qwen3moe-fp8-dynamic"
        cls.gpu = moeq.load(d, device="cuda:0", max_tokens=256)
        cls.cpu = moeq.load(d)

    def inputs(self, m, seed, layer=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(m, H, generator=g).to(torch.bfloat16)
        ids, w = self.cpu.layers[layer].route(x.float().numpy())
        return x, torch.from_numpy(ids), torch.from_numpy(w)

    def test_device_apply_on_the_current_stream_matches_the_cpu(self):
        for li, layer in enumerate(self.gpu.layers):
            self.assertEqual(layer.device, "cuda:0")
            x, ids, w = self.inputs(64, 10 + li, li)
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                out = layer.apply(x.cuda(), ids.cuda(), w.cuda())
            stream.synchronize()
            self.assertEqual(out.device.type, "cuda")
            want = self.cpu.layers[li].apply(x.float().numpy(), ids.numpy(), w.numpy())
            self.assertLessEqual(rel_l2(out.float().cpu().numpy(), want), 1e-2)

    def test_a_captured_cuda_graph_replays_as_eager(self):
        layer = self.gpu.layers[1]
        x, ids, w = (t.cuda() for t in self.inputs(48, 20, 1))
        out = torch.empty(48, H, dtype=torch.float32, device="cuda")
        layer.apply(x, ids, w, out=out)  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            layer.apply(x, ids, w, out=out)
        for seed in (21, 22):
            nx, nids, nw = self.inputs(48, seed, 1)
            x.copy_(nx)
            ids.copy_(nids)
            w.copy_(nw)
            graph.replay()
            torch.cuda.synchronize()
            replayed = out.clone()
            eager = layer.apply(x, ids, w, out=torch.empty_like(out))
            torch.cuda.synchronize()
            self.assertTrue(torch.equal(replayed, eager), f"replay {seed} differs from the eager apply")

    def test_torch_compile_with_cuda_graphs(self):
        layer = self.gpu.layers[0]
        handle, index = self.gpu.handle, layer.index
        moeq.torch_ops()

        def f(x, ids, w):
            return torch.ops.moeq.apply(handle, index, x, ids, w, torch.float32) * 0.5

        compiled = torch.compile(f, mode="reduce-overhead", fullgraph=True)
        x, ids, w = (t.cuda() for t in self.inputs(32, 30))
        for _ in range(3):  # recorded, then replayed
            got = compiled(x, ids, w).clone()
        self.assertTrue(torch.equal(got, f(x, ids, w)))


if __name__ == "__main__":
    unittest.main()
