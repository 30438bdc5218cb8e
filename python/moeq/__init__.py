"""moeq: quantized Mixture-of-Experts expert layers loaded through moeq's plugins.

    import moeq
    model = moeq.load("/ckpt", tp=(0, 1), ep=(0, 1), device="cpu")
    layer = model.layers[0]
    ids, weights = layer.route(hidden)            # the family's routing, on the host
    out = layer.apply(hidden, ids, weights)       # numpy on the CPU, torch on CUDA; zero-copy

A thin layer over the C API of libmoeq (moeq/moeq.h) through ctypes; torch is imported only when
torch tensors are given (or moeq.torch_ops() is called). See python/README.md.
"""

import ctypes
import json
import weakref

from . import _capi
from ._dlpack import TensorArg, is_numpy, is_torch

__all__ = ["Error", "Registry", "Model", "Layer", "load", "version", "abi_version", "library_path", "torch_ops"]


class Error(Exception):
    """A failure of the C API: `code` (int, moeq_status_code), `code_name` and the message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = int(code)
        self.code_name = _capi.STATUS_NAMES.get(self.code, str(self.code))
        self.message = message

    def __str__(self):
        return f"[{self.code_name}] {self.message}"


INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, UNAVAILABLE = 1, 2, 3, 6


def _check(code):
    if code != 0:
        raise Error(code, _capi.lib().moeq_last_error_message().decode("utf-8", "replace"))


def version():
    """The library's version, e.g. "0.1.0"."""
    return _capi.lib().moeq_version().decode()


def abi_version():
    """(major, minor) of the plugin ABI the library hosts."""
    major, minor = ctypes.c_uint32(), ctypes.c_uint32()
    _capi.lib().moeq_abi_version(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


library_path = _capi.library_path


def _parse_device(device):
    if isinstance(device, str):
        if device == "cpu":
            return _capi.DLDevice(_capi.kDLCPU, 0)
        if device == "cuda":
            return _capi.DLDevice(_capi.kDLCUDA, 0)
        if device.startswith("cuda:") and device[5:].isdigit():
            return _capi.DLDevice(_capi.kDLCUDA, int(device[5:]))
    if type(device).__module__.split(".")[0] == "torch" and hasattr(device, "type"):
        return _parse_device(str(device) if device.index is not None or device.type == "cpu" else "cuda")
    raise Error(INVALID_ARGUMENT, f"device must be 'cpu', 'cuda' or 'cuda:N', found {device!r}")


def _device_str(d):
    return "cpu" if d.device_type == _capi.kDLCPU else f"cuda:{d.device_id}"


def _dtype_names(mask):
    names = []
    for bit, name in ((_capi.DTYPE_BIT_F32, "float32"), (_capi.DTYPE_BIT_BF16, "bfloat16"), (_capi.DTYPE_BIT_F16, "float16")):
        if mask & bit:
            names.append(name)
    return tuple(names)


class Registry:
    """The plugins: from `plugin_dir` (None: none), then MOEQ_PLUGIN_PATH and the directories next
    to libmoeq_c.so, under moeq's trusted-loading rules. `only_plugin_dir` skips the defaults."""

    def __init__(self, plugin_dir=None, allow_untrusted=False, only_plugin_dir=False):
        lib = _capi.lib()
        flags = (_capi.REGISTRY_ALLOW_UNTRUSTED if allow_untrusted else 0) | (
            _capi.REGISTRY_NO_DEFAULT_PATH if only_plugin_dir else 0
        )
        handle = ctypes.c_void_p()
        _check(lib.moeq_registry_open(None if plugin_dir is None else str(plugin_dir).encode(), flags, ctypes.byref(handle)))
        self._handle = handle
        self._finalizer = weakref.finalize(self, lib.moeq_registry_free, handle)

    @property
    def plugins(self):
        """Names of the loaded plugins, in load order."""
        lib = _capi.lib()
        n = lib.moeq_registry_num_plugins(self._handle)
        return [lib.moeq_registry_plugin_name(self._handle, i).decode() for i in range(n)]

    @property
    def refused(self):
        """Files that were refused, one "path: reason" line each."""
        return _capi.lib().moeq_registry_refused(self._handle).decode().splitlines()

    def load(self, path, tp=(0, 1), ep=(0, 1), device="cpu", online=None, strict=True, max_tokens=0, plugin=None,
             threads=0, workspace="shared"):
        """Loads every MoE layer of the checkpoint directory `path` (see moeq.load)."""
        return Model(self, path, tp, ep, device, online, strict, max_tokens, plugin, threads, workspace)

    def close(self):
        """Frees the handle now; models loaded through it keep the plugins loaded."""
        self._finalizer()


def _pair(value, name):
    try:
        rank, size = (int(v) for v in value)
    except (TypeError, ValueError):
        raise Error(INVALID_ARGUMENT, f"{name} must be (rank, size), found {value!r}") from None
    return rank, size


# Models alive, by handle value: what the torch ops resolve their `model` argument with.
_live_models = weakref.WeakValueDictionary()


class Model:
    """The loaded MoE layers of one checkpoint. `layers[i]` indexes the loaded MoE layers in order."""

    def __init__(self, registry, path, tp, ep, device, online, strict, max_tokens, plugin, threads, workspace):
        lib = _capi.lib()
        opt = _capi.LoadOptions()
        lib.moeq_load_options_init(ctypes.byref(opt))
        opt.tp_rank, opt.tp_size = _pair(tp, "tp")
        opt.ep_rank, opt.ep_size = _pair(ep, "ep")
        opt.device = _parse_device(device)
        opt.online_scheme = online.encode() if online else None
        opt.plugin = plugin.encode() if plugin else None
        if strict not in (True, False):
            raise Error(INVALID_ARGUMENT, f"strict must be True or False, found {strict!r}")
        opt.strict = 1 if strict else 0
        opt.threads = int(threads)
        opt.max_tokens = int(max_tokens)
        if workspace not in ("shared", "per_layer"):
            raise Error(INVALID_ARGUMENT, f"workspace must be 'shared' or 'per_layer', found {workspace!r}")
        opt.workspace = _capi.WORKSPACE_SHARED if workspace == "shared" else _capi.WORKSPACE_PER_LAYER
        handle = ctypes.c_void_p()
        _check(lib.moeq_model_load(registry._handle, str(path).encode(), ctypes.byref(opt), ctypes.byref(handle)))
        self._handle = handle
        self._finalizer = weakref.finalize(self, lib.moeq_model_free, handle)
        self.path = str(path)
        self.device = _device_str(opt.device)
        n = lib.moeq_model_num_layers(handle)
        self.layers = [Layer(self, i) for i in range(n)]
        _live_models[handle.value] = self
        self._report = None

    @property
    def handle(self):
        """The moeq_model* as an int (what the torch ops take)."""
        return self._handle.value

    @property
    def report(self):
        """The load report as a dict (what `moeq load --json` prints)."""
        if self._report is None:
            lib = _capi.lib()
            needed = ctypes.c_size_t()
            lib.moeq_model_report_json(self._handle, None, 0, ctypes.byref(needed))
            buf = ctypes.create_string_buffer(needed.value)
            _check(lib.moeq_model_report_json(self._handle, buf, needed.value, None))
            self._report = json.loads(buf.value.decode())
        return self._report

    def close(self):
        """Frees the model now (after its device work is done: synchronize your streams first)."""
        _live_models.pop(self._handle.value, None)
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"moeq.Model({self.path!r}, {len(self.layers)} MoE layers on {self.device})"


class Layer:
    """One loaded MoE layer: its geometry, the method's scheme, the family's routing, apply."""

    def __init__(self, model, index):
        self.model = model
        self.index = index
        info = _capi.LayerInfo()
        info.struct_size = ctypes.sizeof(info)
        _check(_capi.lib().moeq_model_layer_info(model._handle, index, ctypes.byref(info)))
        g = info.geometry
        self.layer = info.layer
        self.prefix = info.prefix.decode()
        self.model_type = info.model_type.decode()
        self.plugin = info.plugin.decode()
        self.describe = json.loads(info.describe_json.decode())
        self.routing = json.loads(info.routing_json.decode())
        self.geometry = {name: getattr(g, name) for name, _ in _capi.LayerGeometry._fields_ if name != "struct_size"}
        self.device = _device_str(info.device)
        self.x_dtypes = _dtype_names(info.x_dtypes)
        self.out_dtypes = _dtype_names(info.out_dtypes)
        self.workspace_bytes = info.workspace_bytes
        self.tokens_per_pass = info.tokens_per_pass
        self.scoring = _capi.SCORING_NAMES.get(info.scoring, str(info.scoring))
        self.renormalize = bool(info.renormalize)
        self.routed_scaling_factor = info.routed_scaling_factor
        self.weight_on_input = bool(info.weight_on_input)
        self.num_experts = g.num_experts
        self.hidden_size = g.hidden_size
        self.top_k = g.top_k

    def __repr__(self):
        return (f"moeq.Layer({self.prefix}, {self.plugin}, E={self.num_experts}, H={self.hidden_size}, "
                f"I/tp={self.geometry['intermediate_size_per_partition']}, top_k={self.top_k}, {self.device})")

    # ------------------------------------------------------------------ compute

    def route(self, hidden):
        """(topk_ids int32 [M, top_k], topk_weights float32 [M, top_k]) as numpy arrays: the family's
        routing of `hidden` [M, H] (float32/bfloat16/float16 on the host) with the layer's router."""
        import numpy as np

        x = TensorArg(hidden, "hidden")
        if x.dl.ndim != 2:
            raise Error(INVALID_ARGUMENT, f"route on {self.prefix}: hidden must be [M, {self.hidden_size}], found shape {x.shape}")
        m = x.shape[0]
        ids = np.empty((m, self.top_k), dtype=np.int32)
        weights = np.empty((m, self.top_k), dtype=np.float32)
        ti, tw = TensorArg(ids, "topk_ids"), TensorArg(weights, "topk_weights")
        _check(_capi.lib().moeq_model_route(self.model._handle, self.index, x.pointer, ti.pointer, tw.pointer))
        return ids, weights

    def apply(self, x, topk_ids, topk_weights, out=None, stream=None):
        """out [M, H] = the layer's experts on x [M, H] with the routing (int32 global expert ids and
        float32 weights [M, top_k]); zero-copy on any DLPack array on the layer's device. Allocates
        `out` with x's library (numpy or torch) when None, in x's dtype where the layer writes it,
        else float32. torch CUDA tensors run on torch's current stream (through the moeq::apply
        ops, so torch.compile and CUDA graphs see them); `stream` (an int) overrides it for other
        arrays. Returns out."""
        if is_torch(x):
            from . import _torch

            if out is None:
                return _torch.ops().apply(self.model.handle, self.index, x, topk_ids, topk_weights, None)
            _torch.ops().apply_out(self.model.handle, self.index, x, topk_ids, topk_weights, out)
            return out
        if out is None:
            out = self._allocate_like(x)
        self._apply_raw(x, topk_ids, topk_weights, out, stream)
        return out

    def _out_dtype(self, x_dtype_name):
        if x_dtype_name in self.out_dtypes:
            return x_dtype_name
        return "float32" if "float32" in self.out_dtypes else (self.out_dtypes[0] if self.out_dtypes else "float32")

    def _allocate_like(self, x):
        if is_numpy(x):
            import numpy as np

            if x.ndim != 2:
                raise Error(INVALID_ARGUMENT, f"apply on {self.prefix}: x must be [M, {self.hidden_size}], found shape {x.shape}")
            return np.empty((x.shape[0], self.hidden_size), dtype=np.dtype(self._out_dtype(x.dtype.name)))
        raise Error(INVALID_ARGUMENT, f"apply on {self.prefix}: out=None allocates numpy or torch arrays only; pass out= for "
                                      f"a {type(x).__module__}.{type(x).__name__}")

    def _apply_raw(self, x, topk_ids, topk_weights, out, stream):
        tx = TensorArg(x, "x", stream)
        ti = TensorArg(topk_ids, "topk_ids", stream)
        tw = TensorArg(topk_weights, "topk_weights", stream)
        to = TensorArg(out, "out", stream)
        _check(_capi.lib().moeq_model_apply(self.model._handle, self.index, tx.pointer, ti.pointer, tw.pointer, to.pointer,
                                            None if stream is None else ctypes.c_void_p(int(stream))))

    def dequantize_expert(self, local_expert):
        """(w13 [2 * I_tp, H], w2 [H, I_tp]) float32 numpy arrays: local expert `local_expert`'s
        weights as the method holds them, dequantized (gate rows, then up rows)."""
        import numpy as np

        g = self.geometry
        i_tp, h = g["intermediate_size_per_partition"], g["hidden_size"]
        w13 = np.empty((2 * i_tp, h), dtype=np.float32)
        w2 = np.empty((h, i_tp), dtype=np.float32)
        _check(_capi.lib().moeq_model_dequantize_expert(self.model._handle, self.index, int(local_expert),
                                                        w13.ctypes.data, w13.size, w2.ctypes.data, w2.size))
        return w13, w2


def load(path, tp=(0, 1), ep=(0, 1), device="cpu", online=None, strict=True, plugin_dir=None, max_tokens=0, plugin=None,
         threads=0, workspace="shared", allow_untrusted=False):
    """Loads every MoE layer of the checkpoint directory `path` (config.json + safetensors).

    tp, ep: (rank, size); device: "cpu", "cuda" or "cuda:N"; online: None or "int8", "fp8-tensor",
    "fp8-channel", "fp8-block" (quantize unquantized experts on load); strict: any ledger violation
    fails the load; plugin_dir: searched before MOEQ_PLUGIN_PATH and the plugins shipped beside
    libmoeq_c.so; max_tokens: the most tokens one apply is given (0: each method's own pass);
    plugin: use this plugin for every layer; workspace: "shared" (one per device, applies ordered)
    or "per_layer". Raises moeq.Error naming the layer, tensor or parameter.
    """
    registry = Registry(plugin_dir, allow_untrusted=allow_untrusted)
    try:
        return registry.load(path, tp, ep, device, online, strict, max_tokens, plugin, threads, workspace)
    finally:
        registry.close()  # the model holds the registry for as long as it lives


def torch_ops():
    """torch.ops.moeq with the custom ops registered (imports torch)."""
    from . import _torch

    return _torch.ops()


def _model_of(handle):
    model = _live_models.get(int(handle))
    if model is None:
        raise Error(INVALID_ARGUMENT, f"moeq model {int(handle):#x} is not loaded (freed, or not a moeq model handle)")
    return model

