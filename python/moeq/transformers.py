"""moeq in transformers (v5): a quantized MoE checkpoint as a transformers model whose experts run
on moeq layers.

    import moeq.transformers as mt
    model = mt.from_pretrained("/ckpt", device="cuda:0")          # a transformers PreTrainedModel
    out = model.generate(input_ids, max_new_tokens=32, do_sample=False)

What goes where:
- the model is built from the checkpoint's config.json (its quantization config removed, so that
  transformers does not quantize anything itself) with `dtype` (bfloat16 by default);
- every MoE layer's experts are loaded by moeq (strictly, through its plugins) and served by it:
  transformers v5 dispatches each experts module's forward through its experts-implementation
  interface, where moeq registers the implementation "moeq" (the routing stays the model's own
  router's: moeq gets the ids and weights the model chose);
- every other tensor of the checkpoint (embeddings, attention, norms, routers, shared experts,
  the head) is loaded into the model as transformers names it (the model's own renaming rules),
  dequantized to `dtype` where the checkpoint quantized it (compressed-tensors / ModelOpt / native
  FP8 `weight` + `weight_scale[_inv]`: per tensor, per row or per block; int8 per row);
- anything left over is an error naming it: a checkpoint tensor the model has no place for, or a
  model parameter no tensor filled.

`reference_model(...)` builds the same model with moeq's own dequantized expert weights in plain
torch (transformers' eager experts): the float reference an engine compares against.
Families whose experts take the routing weight on their input (llama4) are not supported.
"""

import re
import time

import moeq

__all__ = ["from_pretrained", "reference_model", "moeq_model_of", "greedy_generate"]

_IMPL = "moeq"
_INTERNAL = 7  # moeq_status_code INTERNAL
_registered = False


def _torch():
    import torch

    return torch


def _register():
    global _registered
    if _registered:
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(_IMPL, _moeq_experts_forward)
    _registered = True


def _moeq_experts_forward(self, hidden_states, top_k_index, top_k_weights, *args, **kwargs):
    """transformers' experts forward(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k])
    on the moeq layer attached to this module."""
    torch = _torch()
    layer = getattr(self, "_moeq_layer", None)
    if layer is None:
        raise moeq.Error(moeq.INVALID_ARGUMENT,
                         f"experts module {type(self).__name__} has no moeq layer attached (load it with "
                         "moeq.transformers.from_pretrained, or set config._experts_implementation to 'eager')")
    shape = hidden_states.shape
    x = hidden_states.reshape(-1, shape[-1])
    want = torch.bfloat16 if "bfloat16" in layer.x_dtypes else torch.float32
    xin = x if x.dtype == want and x.is_contiguous() else x.to(want).contiguous()
    ids = top_k_index.reshape(x.shape[0], -1).to(torch.int32).contiguous()
    weights = top_k_weights.reshape(x.shape[0], -1).to(torch.float32).contiguous()
    out = layer.apply(xin, ids, weights)
    return out.to(hidden_states.dtype).reshape(shape)


def _strip_quantization(config):
    for c in [config] + [getattr(config, n) for n in ("text_config",) if hasattr(config, n)]:
        if hasattr(c, "quantization_config"):
            try:
                del c.quantization_config
            except AttributeError:
                c.quantization_config = None
    return config


def _experts_modules(model):
    """{model layer number: (name, module)} of every experts module transformers dispatches through
    its experts interface (the decorated classes), by the `layers.N.` in its name."""
    found = {}
    for name, module in model.named_modules():
        if not hasattr(type(module), "_apply_gate") or not hasattr(module, "gate_up_proj") and not hasattr(module, "up_proj"):
            continue
        m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        if m is None:
            continue
        n = int(m.group(1))
        if n in found:
            raise moeq.Error(moeq.INVALID_ARGUMENT, f"layer {n} has two experts modules: {found[n][0]} and {name}")
        found[n] = (name, module)
    return found


def _renamer(model):
    """The model's own checkpoint renaming rules (transformers v5 WeightRenaming), as a function."""
    rules = []
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

        for t in get_model_conversion_mapping(model):
            if isinstance(t, WeightRenaming):
                for s, d in zip(t.source_patterns, t.target_patterns):
                    rules.append((re.compile(s), d))
    except ImportError:
        pass

    def rename(name):
        for pattern, target in rules:
            name = pattern.sub(target, name)
        return name

    return rename


def _block_size(config_json, weight_shape, scale_shape):
    """(bn, bk) of a block scale grid: from the quantization config when it names one, else the
    power of two that gives the grid."""
    q = config_json or {}
    bs = q.get("weight_block_size")
    if bs is None:
        for g in (q.get("config_groups") or {}).values():
            w = (g or {}).get("weights") or {}
            if w.get("strategy") == "block" and w.get("block_structure"):
                bs = w["block_structure"]
                if isinstance(bs, str):
                    bs = [int(v) for v in bs.lower().split("x")]
                break
    if bs is not None:
        return int(bs[0]), int(bs[1])
    n, k = weight_shape
    gn, gk = scale_shape

    def fit(total, count):
        b = 1
        while -(-total // b) > count:
            b *= 2
        if -(-total // b) != count:
            raise moeq.Error(moeq.INVALID_ARGUMENT, f"a block scale grid {list(scale_shape)} does not fit a weight "
                                                    f"{list(weight_shape)}")
        return b

    return fit(n, gn), fit(k, gk)


def _dequantize(name, weight, scale, config_json, dtype):
    """A quantized dense weight [N, K] (F8_E4M3 or I8) times its scale, as `dtype`."""
    torch = _torch()
    w = weight.to(torch.float32)
    s = scale.to(torch.float32)
    if s.numel() == 1:
        out = w * s.reshape(())
    elif w.dim() == 2 and s.numel() == w.shape[0] and (s.dim() == 1 or s.shape[-1] == 1):
        out = w * s.reshape(-1, 1)
    elif w.dim() == 2 and s.dim() in (2, 4):
        grid = s.reshape(s.shape[0], s.shape[2]) if s.dim() == 4 else s  # ModelOpt [N/bn, 1, K/bk, 1]
        bn, bk = _block_size(config_json, tuple(w.shape), tuple(grid.shape))
        full = grid.repeat_interleave(bn, 0)[: w.shape[0]].repeat_interleave(bk, 1)[:, : w.shape[1]]
        if full.shape != w.shape:
            raise moeq.Error(moeq.INVALID_ARGUMENT, f"{name}: scale {list(s.shape)} does not cover the weight "
                                                    f"{list(w.shape)} in blocks of {bn} x {bk}")
        out = w * full
    else:
        raise moeq.Error(moeq.INVALID_ARGUMENT, f"{name}: expected a scale of one value, one per row or a block "
                                                f"grid for weight {list(w.shape)}, found {list(s.shape)}")
    if not torch.isfinite(out).all():
        raise moeq.Error(moeq.INVALID_ARGUMENT, f"{name}: the dequantized weight holds NaN or infinite values")
    return out.to(dtype)


def _expert_tensors(mq):
    """Checkpoint tensors moeq took as experts (every ledger entry of a MoE layer but the router's)."""
    names = set()
    for layer in mq.report.get("layers", []):
        for t in layer.get("tensors", []):
            if t.get("state") != "router":
                names.add(t["tensor"])
    return names


def _weight_files(path):
    """The shards moeq reads: those the index names, else model.safetensors, else every
    *.safetensors (a golden or other file beside model.safetensors is not a weight)."""
    import glob
    import json
    import os

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        return [os.path.join(path, "model.safetensors")]
    return sorted(glob.glob(os.path.join(path, "*.safetensors")))


def _non_expert_state(path, mq, model, dtype, device):
    """The checkpoint's non-expert tensors under the model's names, dequantized where quantized."""
    import json
    import os

    from safetensors import safe_open

    torch = _torch()
    with open(os.path.join(path, "config.json")) as f:
        qcfg = json.load(f).get("quantization_config")
    hf_quant = os.path.join(path, "hf_quant_config.json")
    if qcfg is None and os.path.exists(hf_quant):
        with open(hf_quant) as f:
            qcfg = json.load(f).get("quantization")
    experts = _expert_tensors(mq)
    rename = _renamer(model)
    files = _weight_files(path)
    tensors = {}
    for file in files:
        with safe_open(file, "pt") as st:
            for name in st.keys():
                if name not in experts:
                    tensors[name] = (file, st.get_slice(name).get_dtype())
    state, used = {}, set()

    def get(name):
        with safe_open(tensors[name][0], "pt", device="cpu") as st:
            return st.get_tensor(name)

    for name in sorted(tensors):
        if name in used:
            continue
        if name.endswith((".weight_scale", ".weight_scale_inv", ".input_scale", ".k_scale", ".v_scale")):
            continue  # taken with their weight below, or activation/KV scales (dense layers run unquantized)
        value = get(name)
        if name.endswith(".weight") and value.dtype in (torch.float8_e4m3fn, torch.int8):
            base = name[: -len(".weight")]
            scale_name = next((base + s for s in (".weight_scale", ".weight_scale_inv") if base + s in tensors), None)
            if scale_name is None:
                raise moeq.Error(moeq.NOT_FOUND, f"{name}: a {value.dtype} weight without weight_scale or "
                                                 "weight_scale_inv beside it")
            value = _dequantize(name, value, get(scale_name), qcfg, dtype)
            used.add(scale_name)
        elif value.is_floating_point():
            value = value.to(dtype)
        state[rename(name)] = value.to(device)
        used.add(name)
    leftovers = sorted(n for n in tensors if n not in used and not n.endswith((".input_scale", ".k_scale", ".v_scale")))
    if leftovers:
        raise moeq.Error(moeq.INVALID_ARGUMENT, f"{path}: scales without a quantized weight: {leftovers[:8]}")
    return state


def _build(path, dtype):
    torch = _torch()
    from transformers import AutoConfig, AutoModelForCausalLM

    config = _strip_quantization(AutoConfig.from_pretrained(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def _load_non_experts(model, path, mq, dtype, device, expert_params):
    """The checkpoint's non-expert tensors into the (materialized) model; every other parameter
    must be an expert's (`expert_params`) or tied; then buffers, eval mode."""
    state = _non_expert_state(path, mq, model, dtype, device)
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise moeq.Error(moeq.INVALID_ARGUMENT, f"{path}: checkpoint tensors the model has no place for: "
                                                f"{list(result.unexpected_keys)[:8]}")
    tied = getattr(model, "_tied_weights_keys", None) or []
    tied = set(tied.keys()) if isinstance(tied, dict) else set(tied)
    missing = [k for k in result.missing_keys if k not in expert_params and k not in tied]
    if missing:
        raise moeq.Error(moeq.NOT_FOUND, f"{path}: model parameters no checkpoint tensor filled: {missing[:8]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    _init_buffers(model)
    model.eval()
    return model


def _build_for(path, dtype, mq):
    """The model on meta, its experts modules and moeq's layers by model layer number, which must
    be the same layers."""
    model = _build(path, dtype)
    modules = _experts_modules(model)
    by_number = {layer.layer: layer for layer in mq.layers}
    if sorted(modules) != sorted(by_number):
        raise moeq.Error(moeq.INVALID_ARGUMENT, f"{path}: the model's MoE layers {sorted(modules)} are not the ones moeq "
                                                f"loaded {sorted(by_number)}")
    return model, modules, by_number


def _materialize(model, path, mq, dtype, device, expert_modules):
    """Loads the non-expert weights; the experts' own parameters are dropped (moeq holds them)."""
    expert_params = set()
    for name, module in expert_modules.values():
        for pname, _ in list(module.named_parameters(recurse=False)):
            expert_params.add(f"{name}.{pname}")
            delattr(module, pname)
    model.to_empty(device=device)
    return _load_non_experts(model, path, mq, dtype, device, expert_params)


def _init_buffers(model):
    """Non-persistent buffers (rotary tables) were made on meta and are uninitialized after
    to_empty: transformers' own initializer fills them, module by module (only modules that hold
    such buffers and no parameters, so no loaded weight is touched). Every buffer must then be
    finite."""
    torch = _torch()
    for module in model.modules():
        transient = [n for n in module._buffers if n in module._non_persistent_buffers_set]
        if transient and not list(module.parameters(recurse=False)):
            model._init_weights(module)
    bad = [n for n, b in model.named_buffers() if b.is_floating_point() and not torch.isfinite(b).all()]
    if bad:
        raise moeq.Error(_INTERNAL, f"buffers left uninitialized after loading: {bad[:8]}")


def _check_family(mq):
    for layer in mq.layers:
        if layer.weight_on_input:
            raise moeq.Error(moeq.UNIMPLEMENTED, f"{layer.prefix} ({layer.model_type}): the routing weight scales the "
                                                 "experts' input; moeq.transformers serves experts that weight their output")


def from_pretrained(path, device="cuda:0", dtype=None, online=None, tp=(0, 1), ep=(0, 1), strict=True,
                    plugin_dir=None, max_tokens=0, allow_untrusted=False):
    """The checkpoint at `path` as a transformers model on `device`, its MoE experts served by moeq
    (loaded with moeq.load(path, ...) and kept as `model.moeq`). With tp/ep other than (0, 1) the
    experts' outputs are this rank's partial sums (an engine reduces them across ranks)."""
    torch = _torch()
    dtype = dtype or torch.bfloat16
    _register()
    mq = moeq.load(path, tp=tp, ep=ep, device=str(device), online=online, strict=strict, plugin_dir=plugin_dir,
                   max_tokens=max_tokens, allow_untrusted=allow_untrusted)
    _check_family(mq)
    model, modules, by_number = _build_for(path, dtype, mq)
    _materialize(model, path, mq, dtype, torch.device(str(device)), modules)
    for n, (name, module) in modules.items():
        object.__setattr__(module, "_moeq_layer", by_number[n])
    model.config._experts_implementation = _IMPL
    for sub in ("text_config",):
        if hasattr(model.config, sub):
            getattr(model.config, sub)._experts_implementation = _IMPL
    for _, module in modules.values():
        module.config._experts_implementation = _IMPL
    model.moeq = mq
    return model


def reference_model(path, device="cuda:0", dtype=None, online=None, plugin_dir=None, allow_untrusted=False,
                    mq=None):
    """The same model with moeq's dequantized expert weights as plain torch parameters (transformers'
    eager experts): what `from_pretrained` computes, without moeq's kernels and activation
    quantization. `mq` reuses a loaded moeq model (TP = EP = 1) for the weights."""
    torch = _torch()
    dtype = dtype or torch.bfloat16
    if mq is None:
        mq = moeq.load(path, device="cpu", online=online, plugin_dir=plugin_dir, allow_untrusted=allow_untrusted)
    _check_family(mq)
    for layer in mq.layers:
        g = layer.geometry
        if g["tp_size"] != 1 or g["ep_size"] != 1:
            raise moeq.Error(moeq.INVALID_ARGUMENT, "reference_model needs a TP = EP = 1 load (every expert, whole)")
    model, modules, by_number = _build_for(path, dtype, mq)
    weights = {}
    for n, (name, module) in modules.items():
        layer = by_number[n]
        w13, w2 = [], []
        for e in range(layer.num_experts):
            a, b = layer.dequantize_expert(e)
            w13.append(torch.from_numpy(a))
            w2.append(torch.from_numpy(b))
        weights[n] = (torch.stack(w13).to(dtype), torch.stack(w2).to(dtype))
    device = torch.device(str(device))
    # Experts keep their parameters here: dropped from the "moeq holds them" set.
    _materialize_reference(model, path, mq, dtype, device, modules, weights)
    model.config._experts_implementation = "eager"
    for _, module in modules.values():
        module.config._experts_implementation = "eager"
    return model


def _materialize_reference(model, path, mq, dtype, device, modules, weights):
    torch = _torch()
    model.to_empty(device=device)
    for n, (name, module) in modules.items():
        if not hasattr(module, "gate_up_proj") or not hasattr(module, "down_proj"):
            raise moeq.Error(moeq.UNIMPLEMENTED, f"{name}: reference experts need fused gate_up_proj and down_proj")
        w13, w2 = weights[n]
        if tuple(module.gate_up_proj.shape) != tuple(w13.shape) or tuple(module.down_proj.shape) != tuple(w2.shape):
            raise moeq.Error(moeq.INVALID_ARGUMENT, f"{name}: expected experts {list(module.gate_up_proj.shape)} / "
                                                    f"{list(module.down_proj.shape)}, moeq holds {list(w13.shape)} / "
                                                    f"{list(w2.shape)}")
        module.gate_up_proj = torch.nn.Parameter(w13.to(device), requires_grad=False)
        module.down_proj = torch.nn.Parameter(w2.to(device), requires_grad=False)
    expert_params = {f"{name}.{p}" for name, _ in modules.values() for p in ("gate_up_proj", "down_proj")}
    return _load_non_experts(model, path, mq, dtype, device, expert_params)


def moeq_model_of(model):
    """The moeq.Model serving a model from from_pretrained."""
    return model.moeq


def greedy_generate(model, input_ids, new_tokens=32):
    """(tokens [B, new_tokens], logits [new_tokens, B, vocab] float32, tokens per second): greedy
    decoding with the KV cache, one token a step, timed (synchronized on CUDA)."""
    torch = _torch()
    device = input_ids.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        out = model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        sync()
        seconds = time.perf_counter() - t0
    tokens = out.sequences[:, input_ids.shape[1]:]
    logits = torch.stack([l.float() for l in out.logits])
    return tokens, logits, tokens.numel() / seconds
