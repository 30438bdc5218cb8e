"""ctypes mirror of moeq/moeq.h and the DLPack structs it takes; finds and opens libmoeq_c.so."""

import ctypes
import os
import threading
from pathlib import Path

# ------------------------------------------------------------------------------ DLPack ----

kDLCPU, kDLCUDA, kDLCUDAHost = 1, 2, 3
kDLInt, kDLUInt, kDLFloat, kDLBfloat = 0, 1, 2, 4


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


# ------------------------------------------------------------------------------ moeq.h ----

STATUS_NAMES = {
    0: "OK",
    1: "INVALID_ARGUMENT",
    2: "NOT_FOUND",
    3: "UNIMPLEMENTED",
    4: "FAILED_PRECONDITION",
    5: "OUT_OF_MEMORY",
    6: "UNAVAILABLE",
    7: "INTERNAL",
}

REGISTRY_ALLOW_UNTRUSTED = 1
REGISTRY_NO_DEFAULT_PATH = 2
WORKSPACE_SHARED = 0
WORKSPACE_PER_LAYER = 1
DTYPE_BIT_F32, DTYPE_BIT_BF16, DTYPE_BIT_F16 = 1, 2, 4
SCORING_NAMES = {0: "softmax", 1: "sigmoid", 2: "sparsemixer", 3: "sqrtsoftplus"}


class LayerGeometry(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("num_experts", ctypes.c_int64),
        ("num_local_experts", ctypes.c_int64),
        ("first_local_expert", ctypes.c_int64),
        ("hidden_size", ctypes.c_int64),
        ("intermediate_size", ctypes.c_int64),
        ("intermediate_size_per_partition", ctypes.c_int64),
        ("tp_rank", ctypes.c_int32),
        ("tp_size", ctypes.c_int32),
        ("ep_rank", ctypes.c_int32),
        ("ep_size", ctypes.c_int32),
        ("top_k", ctypes.c_int32),
        ("activation", ctypes.c_int32),
    ]


class LoadOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("tp_rank", ctypes.c_int32),
        ("tp_size", ctypes.c_int32),
        ("ep_rank", ctypes.c_int32),
        ("ep_size", ctypes.c_int32),
        ("device", DLDevice),
        ("online_scheme", ctypes.c_char_p),
        ("plugin", ctypes.c_char_p),
        ("strict", ctypes.c_int32),
        ("threads", ctypes.c_uint32),
        ("max_tokens", ctypes.c_int64),
        ("workspace", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
    ]


class LayerInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("layer", ctypes.c_int64),
        ("prefix", ctypes.c_char_p),
        ("model_type", ctypes.c_char_p),
        ("plugin", ctypes.c_char_p),
        ("describe_json", ctypes.c_char_p),
        ("routing_json", ctypes.c_char_p),
        ("geometry", LayerGeometry),
        ("device", DLDevice),
        ("x_dtypes", ctypes.c_uint32),
        ("out_dtypes", ctypes.c_uint32),
        ("workspace_bytes", ctypes.c_size_t),
        ("tokens_per_pass", ctypes.c_int64),
        ("scoring", ctypes.c_int32),
        ("renormalize", ctypes.c_int32),
        ("routed_scaling_factor", ctypes.c_float),
        ("weight_on_input", ctypes.c_int32),
    ]


# The LP64 layout core/src/shared/moeq_c_layout.c pins with static asserts.
assert ctypes.sizeof(LayerGeometry) == 80
assert ctypes.sizeof(LoadOptions) == 72 and LoadOptions.max_tokens.offset == 56
assert ctypes.sizeof(LayerInfo) == 184 and LayerInfo.device.offset == 136
assert LayerInfo.routed_scaling_factor.offset == 176 and LayerInfo.weight_on_input.offset == 180

_P = ctypes.c_void_p
_SIGNATURES = {
    "moeq_version": (ctypes.c_char_p, []),
    "moeq_abi_version": (None, [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)]),
    "moeq_last_error_message": (ctypes.c_char_p, []),
    "moeq_last_error_code": (ctypes.c_int, []),
    "moeq_registry_open": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(_P)]),
    "moeq_registry_free": (None, [_P]),
    "moeq_registry_num_plugins": (ctypes.c_size_t, [_P]),
    "moeq_registry_plugin_name": (ctypes.c_char_p, [_P, ctypes.c_size_t]),
    "moeq_registry_refused": (ctypes.c_char_p, [_P]),
    "moeq_load_options_init": (None, [ctypes.POINTER(LoadOptions)]),
    "moeq_model_load": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.POINTER(LoadOptions), ctypes.POINTER(_P)]),
    "moeq_model_free": (None, [_P]),
    "moeq_model_num_layers": (ctypes.c_size_t, [_P]),
    "moeq_model_layer_info": (ctypes.c_int, [_P, ctypes.c_size_t, ctypes.POINTER(LayerInfo)]),
    "moeq_model_report_json": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "moeq_model_route": (ctypes.c_int, [_P, ctypes.c_size_t, _P, _P, _P]),
    "moeq_model_apply": (ctypes.c_int, [_P, ctypes.c_size_t, _P, _P, _P, _P, _P]),
    "moeq_model_dequantize_expert": (
        ctypes.c_int,
        [_P, ctypes.c_size_t, ctypes.c_int64, _P, ctypes.c_size_t, _P, ctypes.c_size_t],
    ),
}

_lock = threading.Lock()
_lib = None
_lib_path = None


def _candidates():
    env = os.environ.get("MOEQ_LIBRARY")
    if env:
        return [("MOEQ_LIBRARY", env)]
    shipped = Path(__file__).resolve().parent / "_lib" / "libmoeq_c.so"
    if shipped.exists():
        return [("the copy shipped in the package", str(shipped))]
    return [("the system loader", "libmoeq_c.so")]


def lib():
    """libmoeq_c.so with every C API function typed; opened on first use."""
    global _lib, _lib_path
    with _lock:
        if _lib is not None:
            return _lib
        (where, path), = _candidates()
        try:
            handle = ctypes.CDLL(path)
        except OSError as e:
            from . import Error

            raise Error(6, f"cannot open libmoeq_c.so from {where} ({path}): {e}") from None
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib, _lib_path = handle, path
        return _lib


def library_path():
    """The path libmoeq_c.so was opened from (opening it if needed)."""
    lib()
    return _lib_path
