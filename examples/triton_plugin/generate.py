"""Compiles kernels/moe_triton.py ahead of time to the PTX + metadata the plugin embeds.

    python3 examples/triton_plugin/generate.py      # writes kernels/moe_gate_up.{ptx,json}, moe_down.{ptx,json}

Needs Triton (3.5 or newer) and no GPU: the target is given (sm_80: the PTX runs on every arch
from Ampere on; the host's JIT compiles it for the device's exact arch). The committed files were
made with the versions written into each .json ("triton_version").
"""
import json
import os
import sys

import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels"))
import moe_triton  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
TARGET = GPUTarget("cuda", 80, 32)
BLOCKS = {"BLOCK_N": 32, "BLOCK_K": 64}
SIGNATURES = {
    "moe_gate_up": {"x_ptr": "*fp32", "ids_ptr": "*i32", "w13_ptr": "*u8", "s13_ptr": "*fp32", "h_ptr": "*fp32",
                    "H": "i32", "It": "i32", "top_k": "i32", "first_expert": "i32", "num_local": "i32",
                    "x_stride": "i64", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"},
    "moe_down": {"h_ptr": "*fp32", "ids_ptr": "*i32", "weights_ptr": "*fp32", "w2_ptr": "*u8", "s2_ptr": "*fp32",
                 "out_ptr": "*fp32", "H": "i32", "It": "i32", "top_k": "i32", "first_expert": "i32",
                 "num_local": "i32", "out_stride": "i64", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"},
}


def plain(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return str(v)


def main():
    for name, signature in SIGNATURES.items():
        src = triton.compiler.ASTSource(fn=getattr(moe_triton, name), signature=signature, constexprs=BLOCKS)
        k = triton.compile(src, target=TARGET, options={"num_warps": 4, "num_stages": 1})
        meta = {key: plain(v) for key, v in k.metadata._asdict().items() if key not in ("extern_libs", "hash")}
        meta["signature"] = {a: t for a, t in signature.items() if t != "constexpr"}
        meta["constexprs"] = BLOCKS
        with open(os.path.join(HERE, name + ".ptx"), "w") as f:
            f.write(k.asm["ptx"])
        with open(os.path.join(HERE, name + ".json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"{name}: {len(k.asm['ptx'])} bytes of PTX, {meta['num_warps']} warps, {meta['shared']} bytes shared")


if __name__ == "__main__":
    main()
