"""torch custom ops over the C API, registered on first use (importing moeq never imports torch).

    torch.ops.moeq.apply(model, layer, x, topk_ids, topk_weights, out_dtype) -> Tensor
    torch.ops.moeq.apply_out(model, layer, x, topk_ids, topk_weights, out) -> ()   (writes out)

`model` is Model.handle, `layer` an index into Model.layers. Each has a fake implementation (shape
and dtype only), so torch.compile traces through them; on CUDA the work is queued on torch's
current stream and nothing is allocated by moeq or synchronized, so a torch.cuda.graph capture
holds it (moeq::apply allocates its output with torch's allocator, which capture pools).
"""

import threading
from typing import Optional

_lock = threading.Lock()
_registered = False


def _stream_of(x):
    import torch

    if x.device.type == "cuda":
        return torch.cuda.current_stream(x.device).cuda_stream
    return None


def _out_dtype(layer, x, out_dtype):
    import torch

    if out_dtype is not None:
        return out_dtype
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    chosen = layer._out_dtype(names.get(x.dtype, "float32"))
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[chosen]


def _layer(model, layer):
    from . import Error, _model_of

    m = _model_of(model)
    if not 0 <= layer < len(m.layers):
        raise Error(1, f"layer {layer} is out of range: the model has {len(m.layers)} loaded MoE layers")
    return m.layers[layer]


def _register():
    import torch

    @torch.library.custom_op("moeq::apply_out", mutates_args=("out",))
    def apply_out(model: int, layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
                  out: torch.Tensor) -> None:
        _layer(model, layer)._apply_raw(x, topk_ids, topk_weights, out, _stream_of(x))

    @apply_out.register_fake
    def _(model, layer, x, topk_ids, topk_weights, out):
        return None

    @torch.library.custom_op("moeq::apply", mutates_args=())
    def apply(model: int, layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor,
              out_dtype: Optional[torch.dtype]) -> torch.Tensor:
        lay = _layer(model, layer)
        out = torch.empty((x.shape[0], lay.hidden_size), dtype=_out_dtype(lay, x, out_dtype), device=x.device)
        lay._apply_raw(x, topk_ids, topk_weights, out, _stream_of(x))
        return out

    @apply.register_fake
    def _(model, layer, x, topk_ids, topk_weights, out_dtype):
        lay = _layer(model, layer)
        return x.new_empty((x.shape[0], lay.hidden_size), dtype=_out_dtype(lay, x, out_dtype))


def ops():
    """torch.ops.moeq, with the ops registered."""
    global _registered
    import torch

    with _lock:
        if not _registered:
            _register()
            _registered = True
    return torch.ops.moeq
