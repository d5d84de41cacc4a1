"""libqkern from Python through ctypes, exchanging tensors with NumPy, PyTorch or any other
DLPack 1.x library without copying.

    qk = Qkern("/path/to/libqkern.so")
    with qk.from_dlpack(numpy_array) as t: ...   # a NumPy array as a qkern tensor (same memory)
    buf = qk.empty((64,), "float32")             # qkern-owned memory ...
    view = numpy.from_dlpack(buf)                # ... seen by NumPy (same memory)
"""
import ctypes

MAX_DIMS = 8
CPU, CUDA = 0, 1
DTYPES = {"float32": (0, 4), "float16": (1, 2), "bfloat16": (2, 2), "float64": (3, 8), "uint8": (4, 1),
          "int8": (5, 1), "int16": (6, 2), "int32": (7, 4), "int64": (8, 8), "bool": (9, 1)}
READ_ONLY = 1                       # DLPACK_FLAG_BITMASK_READ_ONLY
IMPORT_WRITABLE, IMPORT_CONTIGUOUS = 1, 2


class QkTensor(ctypes.Structure):   # qk_tensor in qkern.h
    _fields_ = [("data", ctypes.c_void_p), ("nbytes", ctypes.c_int64), ("dtype", ctypes.c_int32),
                ("device_kind", ctypes.c_int32), ("device_index", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("shape", ctypes.c_int64 * MAX_DIMS), ("strides", ctypes.c_int64 * MAX_DIMS)]


class QkernError(RuntimeError):
    pass


# PyCapsule calls. A capsule that no consumer takes is deleted by libqkern's C destructor
# (qk_dlpack_capsule_destructor): Python may run it with an exception pending, when Python code
# (a ctypes callback) could not run correctly.
_NAME, _USED_NAME = b"dltensor_versioned", b"used_dltensor_versioned"
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
    ("PyCapsule_New", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))
_capsule_rename = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_SetName", ctypes.pythonapi))


class Qkern:
    def __init__(self, library_path):
        lib = self.lib = ctypes.CDLL(library_path)
        P, i32, i64, u32, u64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint64
        T = ctypes.POINTER(QkTensor)
        for name, restype, argtypes in [
                ("qk_abi_version", i32, []), ("qk_last_error", ctypes.c_char_p, []),
                ("qk_malloc", i32, [i32, i32, i64, ctypes.POINTER(P)]), ("qk_free", i32, [i32, i32, P]),
                ("qk_device_synchronize", i32, [i32, i32]),
                ("qk_dlpack_owner_create", i32, [P, P, ctypes.POINTER(P)]),
                ("qk_dlpack_owner_live_exports", i64, [P]), ("qk_dlpack_owner_release", None, [P]),
                ("qk_dlpack_export", i32, [T, u64, P, ctypes.POINTER(P)]),
                ("qk_dlpack_import", i32, [P, u32, T, ctypes.POINTER(i32)]), ("qk_dlpack_release", None, [P]),
                ("qk_nf4_quantize", i32, [T, i64, T, T, ctypes.POINTER(i64), P]),
                ("qk_nf4_dequantize", i32, [T, T, i64, T, P])]:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        # C functions (never Python callbacks: deleters may run while an exception unwinds):
        # the capsule destructor, and the release that frees qk.empty() memory once no Python
        # object and no DLPack consumer uses it.
        self.capsule_destructor = ctypes.cast(lib.qk_dlpack_capsule_destructor, ctypes.c_void_p)
        self.host_release = ctypes.cast(lib.qk_dlpack_free_host, ctypes.c_void_p)

    def check(self, status, call):
        if status != 0:
            raise QkernError(f"{call}: {self.lib.qk_last_error().decode()}")

    # ---- qkern memory lent out --------------------------------------------------------------
    def empty(self, shape, dtype):
        """Uninitialized qkern-owned host memory; NumPy etc. take it with from_dlpack()."""
        code, size = DTYPES[dtype]
        t = _contiguous(0, code, CPU, 0, shape, size)
        ptr = ctypes.c_void_p()
        self.check(self.lib.qk_malloc(CPU, 0, t.nbytes, ctypes.byref(ptr)), "qk_malloc")
        t.data = ptr.value
        owner = ctypes.c_void_p()
        status = self.lib.qk_dlpack_owner_create(self.host_release, ptr, ctypes.byref(owner))
        if status != 0:
            self.lib.qk_free(CPU, 0, ptr)
            self.check(status, "qk_dlpack_owner_create")
        return Lent(self, t, owner)

    # ---- other libraries' memory taken in ----------------------------------------------------
    def from_dlpack(self, array, writable=False, contiguous=False):
        """Any object with __dlpack__ as a qkern tensor over the same memory (close() hands it back)."""
        capsule = array.__dlpack__(max_version=(1, 1))
        managed = _capsule_pointer(capsule, _NAME)
        _capsule_rename(capsule, _USED_NAME)      # ours now: the capsule must not delete it
        t, read_only = QkTensor(), ctypes.c_int32()
        flags = (IMPORT_WRITABLE if writable else 0) | (IMPORT_CONTIGUOUS if contiguous else 0)
        self.check(self.lib.qk_dlpack_import(managed, flags, ctypes.byref(t), ctypes.byref(read_only)),
                   "qk_dlpack_import")            # on failure the producer's deleter has already run
        return Borrowed(self, t, managed, bool(read_only.value))

    # ---- kernels (each takes Lent or Borrowed tensors) ----------------------------------------
    def nf4_quantize(self, x, blocksize, packed, absmax):
        self.check(self.lib.qk_nf4_quantize(x.tensor, blocksize, packed.tensor, absmax.tensor, None, None),
                   "qk_nf4_quantize")

    def nf4_dequantize(self, packed, absmax, blocksize, out):
        self.check(self.lib.qk_nf4_dequantize(packed.tensor, absmax.tensor, blocksize, out.tensor, None),
                   "qk_nf4_dequantize")


def _contiguous(data, code, kind, index, shape, size):
    t = QkTensor(data=data, dtype=code, device_kind=kind, device_index=index, ndim=len(shape))
    stride = 1
    for d in reversed(range(len(shape))):
        t.shape[d], t.strides[d] = shape[d], stride
        stride *= shape[d]
    t.nbytes = stride * size
    return t


class Lent:
    """qkern memory with __dlpack__: numpy.from_dlpack(lent) / torch.from_dlpack(lent) view it."""

    def __init__(self, qk, tensor, owner, read_only=False):
        self.qk, self.tensor, self.owner, self.read_only = qk, tensor, owner, read_only

    def live_exports(self):
        return self.qk.lib.qk_dlpack_owner_live_exports(self.owner)

    def __dlpack_device__(self):
        return (2, self.tensor.device_index) if self.tensor.device_kind == CUDA else (1, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if max_version is None or max_version[0] < 1:
            raise BufferError("qkern exports DLPack 1.x (DLManagedTensorVersioned) only")
        if copy:
            raise BufferError("qkern lends its memory; it does not export copies")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"the tensor is on {self.__dlpack_device__()}, not {tuple(dl_device)}")
        if self.tensor.device_kind == CUDA and stream != -1:
            # qkern's work runs on the default stream; make it visible to the consumer's stream.
            self.qk.check(self.qk.lib.qk_device_synchronize(CUDA, self.tensor.device_index), "qk_device_synchronize")
        managed = ctypes.c_void_p()
        self.qk.check(self.qk.lib.qk_dlpack_export(self.tensor, READ_ONLY if self.read_only else 0, self.owner,
                                                   ctypes.byref(managed)), "qk_dlpack_export")
        return _capsule_new(managed.value, _NAME, self.qk.capsule_destructor)

    def __del__(self):
        # Drops the producer's reference; the memory goes when the last consumer's deleter has run.
        if self.owner:
            self.qk.lib.qk_dlpack_owner_release(self.owner)
            self.owner = None


class Borrowed:
    """Another library's tensor seen by qkern; close() (or leaving the `with`) hands it back."""

    def __init__(self, qk, tensor, managed, read_only):
        self.qk, self.tensor, self.managed, self.read_only = qk, tensor, managed, read_only

    def close(self):
        if self.managed:
            self.qk.lib.qk_dlpack_release(self.managed)
            self.managed = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
