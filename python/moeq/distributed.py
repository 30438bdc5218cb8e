"""Tensor and expert parallelism across processes, one rank each, outputs summed with
torch.distributed (NCCL on GPUs, gloo on the CPU): the check an engine's sharded path relies on.

Each rank loads the same checkpoint with ``tp=(rank, world)`` (or ``ep=(rank, world)``) on its own
device, applies every MoE layer to the same seeded tokens and routing, and all-reduces the
outputs; rank 0 loads the checkpoint unsharded on its device and compares. What each rank read
and how long its load and applies took come back too.

    python -m moeq.distributed CHECKPOINT --mode tp --world 2 [--device cuda] [--online int8]

prints one JSON object. ``run()`` is the same from Python. NVLink multicast stays off
(``NCCL_NVLS_ENABLE=0``), as the GPU machines this runs on ask.
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import time

__all__ = ["run", "main"]

# What the load report says a rank read: the expert bytes in the checkpoint, those handed to this
# rank's plugin (under EP its own experts), and those copied into its parameters (under TP its
# shard).
_BYTES = ("expert_bytes", "expert_bytes_handed", "bytes_copied")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(layer_index, tokens, hidden, experts, top_k, seed):
    """The tokens and routing of one layer: the same on every rank (a seeded numpy generator)."""
    import numpy as np

    rng = np.random.default_rng(seed * 1000 + layer_index)
    x = rng.standard_normal((tokens, hidden), dtype=np.float32)
    ids = np.stack([rng.choice(experts, size=top_k, replace=False) for _ in range(tokens)]).astype(np.int32)
    w = rng.uniform(0.05, 1.0, size=(tokens, top_k)).astype(np.float32)
    return x, ids, w


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _apply_all(model, device, tokens, seed):
    """Every layer's output (float32 torch tensors on `device`) and the seconds of the applies."""
    import torch

    outs, seconds = [], 0.0
    for i, layer in enumerate(model.layers):
        experts = layer.geometry["num_experts"]  # global: the routing names any expert
        x, ids, w = _inputs(i, tokens, layer.hidden_size, experts, layer.top_k, seed)
        tx, ti, tw = (torch.from_numpy(a).to(device) for a in (x, ids, w))
        out = torch.empty((tokens, layer.hidden_size), dtype=torch.float32, device=device)
        _sync(device)
        t0 = time.perf_counter()
        layer.apply(tx, ti, tw, out=out)
        _sync(device)
        seconds += time.perf_counter() - t0
        outs.append(out)
    return outs, seconds


def _rel_l2(a, ref):
    import torch

    num = torch.linalg.vector_norm((a.double() - ref.double())).item()
    den = torch.linalg.vector_norm(ref.double()).item()
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def _rank_main(rank, world, port, cfg, result_path):
    import torch
    import torch.distributed as dist

    import moeq

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    device = f"cuda:{rank}" if cfg["device"] == "cuda" else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        shard = (rank, world)
        tp, ep = (shard, (0, 1)) if cfg["mode"] == "tp" else ((0, 1), shard)
        t0 = time.perf_counter()
        model = moeq.load(cfg["checkpoint"], tp=tp, ep=ep, device=device, online=cfg["online"],
                          plugin_dir=cfg["plugin_dir"])
        load_s = time.perf_counter() - t0
        report = model.report
        outs, apply_s = _apply_all(model, device, cfg["tokens"], cfg["seed"])
        for o in outs:
            dist.all_reduce(o, op=dist.ReduceOp.SUM)
        info = {"rank": rank, "device": device, "load_s": load_s, "apply_s": apply_s,
                **{k: report.get(k) for k in _BYTES}}
        gathered = [None] * world
        dist.all_gather_object(gathered, info)
        if rank == 0:
            model.close()
            t0 = time.perf_counter()
            single = moeq.load(cfg["checkpoint"], device=device, online=cfg["online"], plugin_dir=cfg["plugin_dir"])
            single_load_s = time.perf_counter() - t0
            refs, single_apply_s = _apply_all(single, device, cfg["tokens"], cfg["seed"])
            layers = [{"layer": single.layers[i].layer, "plugin": single.layers[i].plugin,
                       "scheme": single.layers[i].describe.get("scheme", single.layers[i].describe),
                       "rel_l2": _rel_l2(o, r)} for i, (o, r) in enumerate(zip(outs, refs))]
            report1 = single.report
            result = {"checkpoint": cfg["checkpoint"], "mode": cfg["mode"], "world": world, "backend": backend,
                      "online": cfg["online"], "tokens": cfg["tokens"], "ranks": gathered, "layers": layers,
                      "max_rel_l2": max((l["rel_l2"] for l in layers), default=0.0),
                      "single": {"load_s": single_load_s, "apply_s": single_apply_s,
                                 **{k: report1.get(k) for k in _BYTES}}}
            with open(result_path, "w") as f:
                json.dump(result, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(checkpoint, mode="tp", world=2, device="cuda", tokens=16, seed=0, online=None, plugin_dir=None):
    """The sharded check of one checkpoint (see the module's text); returns its result dict.
    device: "cuda" (rank r on cuda:r, NCCL; needs `world` GPUs) or "cpu" (gloo)."""
    import torch
    import torch.multiprocessing as mp

    if mode not in ("tp", "ep"):
        raise ValueError(f"mode must be 'tp' or 'ep', found {mode!r}")
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', found {device!r}")
    if world < 2:
        raise ValueError(f"world must be at least 2, found {world}")
    if device == "cuda" and torch.cuda.device_count() < world:
        raise RuntimeError(f"{world} ranks on CUDA need {world} GPUs; this machine has {torch.cuda.device_count()}")
    cfg = {"checkpoint": str(checkpoint), "mode": mode, "device": device, "tokens": int(tokens), "seed": int(seed),
           "online": online, "plugin_dir": plugin_dir}
    with tempfile.TemporaryDirectory(prefix="moeq-dist-") as tmp:
        path = os.path.join(tmp, "result.json")
        mp.spawn(_rank_main, args=(world, _free_port(), cfg, path), nprocs=world, join=True)
        with open(path) as f:
            return json.load(f)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m moeq.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--mode", choices=("tp", "ep"), default="tp")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--online", default=None)
    p.add_argument("--plugin-dir", default=None)
    a = p.parse_args(argv)
    r = run(a.checkpoint, a.mode, a.world, a.device, a.tokens, a.seed, a.online, a.plugin_dir)
    json.dump(r, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
