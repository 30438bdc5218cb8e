"""What the Python tests share: checkpoints written by the moeq tool, safetensors read in numpy,
and the float math the layers are held to (independent of the library)."""

import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def moeq_bin():
    """The moeq tool: MOEQ_TEST_MOEQ_BIN, else <MOEQ_BUILD_DIR or build>/bin/moeq."""
    env = os.environ.get("MOEQ_TEST_MOEQ_BIN")
    if env:
        return env
    build = Path(os.environ.get("MOEQ_BUILD_DIR", REPO / "build"))
    if not build.is_absolute():
        build = REPO / build
    return str(build / "bin" / "moeq")


_demo_dir = None


def demo_checkpoints():
    """The directory `moeq demo --keep` wrote (once per process): granitemoe-fp8-dynamic,
    qwen3moe-fp8-dynamic (2 layers each, 8 experts, H 256, I 128, top-2) and qwen3moe-bf16."""
    global _demo_dir
    if _demo_dir is None:
        d = tempfile.mkdtemp(prefix="moeq-pytest-")
        subprocess.run([moeq_bin(), "demo", "--keep", d, "--tokens", "4"], check=True, stdout=subprocess.DEVNULL)
        import atexit

        atexit.register(shutil.rmtree, d, True)
        _demo_dir = Path(d)
    return _demo_dir


def cli_json(*args):
    r = subprocess.run([moeq_bin(), *args, "--json"], check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def read_safetensors(path):
    """{name: float32 or int array} of a .safetensors file (F32, BF16, F16, F8_E4M3, I32, I64)."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        buf = data[b:e]
        dt = t["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, np.float32)
        elif dt == "F16":
            a = np.frombuffer(buf, np.float16).astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dt == "F8_E4M3":
            a = fp8_e4m3_decode(np.frombuffer(buf, np.uint8))
        elif dt in ("I32", "I64"):
            a = np.frombuffer(buf, np.int32 if dt == "I32" else np.int64)
        else:
            continue
        out[name] = a.reshape(t["shape"])
    return out


def fp8_e4m3_decode(codes):
    codes = codes.astype(np.int32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    normal = sign * (1 + man / 8.0) * np.exp2(exp - 7.0)
    sub = sign * (man / 8.0) * np.exp2(-6.0)
    return np.where(exp == 0, sub, normal).astype(np.float32)


def fp8_e4m3_round(v):
    """v rounded to the nearest e4m3fn value (ties to even), saturated at +-448."""
    v = np.clip(np.asarray(v, np.float64), -448.0, 448.0)
    a = np.abs(v)
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    e = np.maximum(e, -6.0)  # below 2^-6: the subnormal step 2^-9
    step = np.exp2(e - 3.0)
    return np.clip(np.round(v / step) * step, -448.0, 448.0)


def fp8_per_token(x):
    """Dynamic per-token FP8 quantization (MOE_SEMANTICS §5): q * s, s = max(amax / 448, 1 / (448 * 512))."""
    s = np.maximum(np.abs(x).max(axis=1, keepdims=True) / 448.0, 1.0 / (448.0 * 512.0))
    return fp8_e4m3_round(x / s) * s


def route_softmax(x, router, top_k, renormalize):
    """softmax over the experts, top-k, renormalized: (ids, weights) in float64."""
    logits = x.astype(np.float64) @ router.astype(np.float64).T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
    w = np.take_along_axis(p, ids, axis=1)
    if renormalize:
        w /= w.sum(axis=1, keepdims=True)
    return ids, w


def moe_forward(x, ids, weights, experts, act_quant=None):
    """sum_j w[m, j] * W2_e(a2(silu(W1_e a1(x_m)) * W3_e a1(x_m))) in float64; experts maps a global
    expert id to (w13 [2I, H], w2 [H, I]); ids not in it contribute nothing."""
    q = act_quant or (lambda v: v)
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for m in range(x.shape[0]):
        xq = q(x[m:m + 1])
        for j in range(ids.shape[1]):
            e = int(ids[m, j])
            if e not in experts:
                continue
            w13, w2 = experts[e]
            i = w13.shape[0] // 2
            gu = xq @ w13.astype(np.float64).T
            h = gu[:, :i] / (1 + np.exp(-gu[:, :i])) * gu[:, i:]
            out[m] += weights[m, j] * (q(h) @ w2.astype(np.float64).T)[0]
    return out


def rel_l2(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    n = np.linalg.norm(ref)
    return np.linalg.norm(a - ref) / n if n else np.linalg.norm(a)
