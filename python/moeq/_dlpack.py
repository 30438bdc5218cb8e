"""DLTensor views of caller arrays for one C call, without copying.

numpy arrays and any other DLPack producer go through `__dlpack__` / `__dlpack_device__`: the
capsule's DLManagedTensor starts with its DLTensor, which is passed as is, and the capsule is kept
until the call returns (its destructor then releases the producer's view). torch tensors are
described from their own metadata (data_ptr, sizes, strides): torch's `__dlpack__` may record an
event on the current stream, which is not allowed while a CUDA graph is being captured.
"""

import ctypes

from . import _capi
from ._capi import DLDataType, DLDevice, DLTensor

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

# numpy dtype names and torch dtypes to DLPack (code, bits).
_NUMPY_DL = {
    "float32": (_capi.kDLFloat, 32),
    "float16": (_capi.kDLFloat, 16),
    "float64": (_capi.kDLFloat, 64),
    "bfloat16": (_capi.kDLBfloat, 16),
    "int32": (_capi.kDLInt, 32),
    "int64": (_capi.kDLInt, 64),
    "int8": (_capi.kDLInt, 8),
    "uint8": (_capi.kDLUInt, 8),
}


def is_torch(obj):
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "data_ptr")


def is_numpy(obj):
    return type(obj).__module__.split(".")[0] == "numpy"


def _compact(dl, shape, strides, data, device, code, bits):
    ndim = len(shape)
    view = DLTensor()
    view_shape = (ctypes.c_int64 * max(ndim, 1))(*shape)
    view_strides = (ctypes.c_int64 * max(ndim, 1))(*strides)
    view.data = data
    view.device = device
    view.ndim = ndim
    view.dtype = DLDataType(code, bits, 1)
    view.shape = ctypes.cast(view_shape, ctypes.POINTER(ctypes.c_int64))
    view.strides = ctypes.cast(view_strides, ctypes.POINTER(ctypes.c_int64))
    view.byte_offset = 0
    dl.extend([view, view_shape, view_strides])
    return view


class TensorArg:
    """`obj` as a DLTensor for the duration of one call (keep this object alive until then).

    `name` names the argument in errors; `stream` is the CUDA stream the work will be queued on
    (handed to a non-torch producer's __dlpack__ so that it orders its pending work before it).
    """

    def __init__(self, obj, name, stream=None):
        from . import Error

        self._keep = [obj]
        if is_torch(obj):
            import torch

            dt = {
                torch.float32: (_capi.kDLFloat, 32),
                torch.float16: (_capi.kDLFloat, 16),
                torch.bfloat16: (_capi.kDLBfloat, 16),
                torch.int32: (_capi.kDLInt, 32),
                torch.int64: (_capi.kDLInt, 64),
                torch.float64: (_capi.kDLFloat, 64),
                torch.int8: (_capi.kDLInt, 8),
                torch.uint8: (_capi.kDLUInt, 8),
            }.get(obj.dtype)
            if dt is None:
                raise Error(1, f"{name}: torch dtype {obj.dtype} has no DLPack type moeq takes")
            if obj.device.type == "cuda":
                device = DLDevice(_capi.kDLCUDA, obj.device.index or 0)
            elif obj.device.type == "cpu":
                device = DLDevice(_capi.kDLCPU, 0)
            else:
                raise Error(1, f"{name} is on torch device {obj.device}; moeq takes cpu and cuda tensors")
            self.dl = _compact(self._keep, tuple(obj.shape), tuple(obj.stride()), obj.data_ptr(), device, *dt)
            return
        if not hasattr(obj, "__dlpack__") or not hasattr(obj, "__dlpack_device__"):
            raise Error(1, f"{name} must be an array with DLPack (__dlpack__, __dlpack_device__), found {type(obj).__name__}")
        dev_type, dev_id = obj.__dlpack_device__()
        try:
            if int(dev_type) == _capi.kDLCUDA:
                capsule = obj.__dlpack__(stream=1 if stream is None else int(stream))
            else:
                capsule = obj.__dlpack__()
        except BufferError:
            if is_numpy(obj):  # numpy exports no read-only array; its metadata says it all
                self.dl = self._numpy_view(obj, name)
                return
            raise
        self._keep.append(capsule)
        self.dl = DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))

    def _numpy_view(self, a, name):
        from . import Error

        dt = _NUMPY_DL.get(a.dtype.name)
        if dt is None:
            raise Error(1, f"{name}: numpy dtype {a.dtype} has no DLPack type moeq takes")
        if any(s % a.itemsize for s in a.strides):
            raise Error(1, f"{name}: numpy strides {a.strides} are not whole elements")
        strides = tuple(s // a.itemsize for s in a.strides)
        data = a.__array_interface__["data"][0]
        return _compact(self._keep, a.shape, strides, data, DLDevice(_capi.kDLCPU, 0), *dt)

    @property
    def pointer(self):
        return ctypes.addressof(self.dl)

    @property
    def shape(self):
        return tuple(self.dl.shape[i] for i in range(self.dl.ndim))
