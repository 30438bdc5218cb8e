"""The expert GEMMs of examples/triton_plugin, written in Triton.

FP8 (e4m3) weights with one scale per projection, float activations, gated SiLU:
  moe_gate_up:  h[p, n]   = silu(s_gate * (x[t] . W1[e, n])) * (s_up * (x[t] . W3[e, n]))   p = (token t, slot j)
  moe_down:     out[t, n] = sum_j w[t, j] * s_down * (h[p] . W2[e, n])                    (experts of this rank)
The e4m3 codes are decoded with integer arithmetic, so the kernels run on every arch from sm_80
(Triton has no e4m3 type before sm_89). One program computes BLOCK_N outputs of one row; the
reduction over K runs in BLOCK_K chunks. The sum over the top-k slots is in the down kernel, in
slot order: deterministic, no atomics, no separate combine.
"""
import triton
import triton.language as tl


@triton.jit
def e4m3_to_f32(code):
    """An e4m3fn code (int32 in [0, 255]) as float32 (NaN codes do not reach here: the host
    refuses non-finite weights)."""
    sign = (code >> 7) & 1
    exp = (code >> 3) & 15
    man = (code & 7).to(tl.float32)
    normal = (1.0 + man * 0.125) * tl.exp2((exp - 7).to(tl.float32))
    mag = tl.where(exp == 0, man * 0.001953125, normal)  # subnormal: man / 8 * 2^-6
    return tl.where(sign == 1, -mag, mag)


@triton.jit
def moe_gate_up(x_ptr, ids_ptr, w13_ptr, s13_ptr, h_ptr, H, It, top_k, first_expert, num_local, x_stride,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pair = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < It
    token = pair // top_k
    e = tl.load(ids_ptr + pair) - first_expert
    local = (e >= 0) & (e < num_local)
    e = tl.where(local, e, 0).to(tl.int64)
    gate = w13_ptr + e * 2 * It * H
    up = gate + It * H
    acc_g = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < H
        xv = tl.load(x_ptr + token.to(tl.int64) * x_stride + k, mask=k_ok, other=0.0)
        tile = n[:, None] * H + k[None, :]
        ok = n_ok[:, None] & k_ok[None, :]
        g = e4m3_to_f32(tl.load(gate + tile, mask=ok, other=0).to(tl.int32))
        u = e4m3_to_f32(tl.load(up + tile, mask=ok, other=0).to(tl.int32))
        acc_g += tl.sum(g * xv[None, :], axis=1)
        acc_u += tl.sum(u * xv[None, :], axis=1)
    g = acc_g * tl.load(s13_ptr + 2 * e)
    u = acc_u * tl.load(s13_ptr + 2 * e + 1)
    h = g / (1.0 + tl.exp(-g)) * u
    h = tl.where(local, h, 0.0)
    tl.store(h_ptr + pair.to(tl.int64) * It + n, h, mask=n_ok)


@triton.jit
def moe_down(h_ptr, ids_ptr, weights_ptr, w2_ptr, s2_ptr, out_ptr, H, It, top_k, first_expert, num_local,
             out_stride, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    token = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    y = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in range(0, top_k):
        pair = token * top_k + j
        e = tl.load(ids_ptr + pair) - first_expert
        local = (e >= 0) & (e < num_local)
        e = tl.where(local, e, 0).to(tl.int64)
        down = w2_ptr + e * H * It
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, It, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < It
            hv = tl.load(h_ptr + pair.to(tl.int64) * It + k, mask=k_ok, other=0.0)
            c = tl.load(down + n[:, None] * It + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
            acc += tl.sum(e4m3_to_f32(c.to(tl.int32)) * hv[None, :], axis=1)
        w = tl.load(weights_ptr + pair)
        y += tl.where(local, w * tl.load(s2_ptr + e) * acc, 0.0)
    tl.store(out_ptr + token.to(tl.int64) * out_stride + n, y, mask=n_ok)
