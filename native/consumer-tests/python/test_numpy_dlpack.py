"""Checks libqkern's DLPack exchange with NumPy through ctypes (run by DLPackPythonTest):
values, shared memory in both directions, lifetimes, and refusals that hand tensors back.
Usage: test_numpy_dlpack.py LIBQKERN [--torch-cuda]   (exit 77: the torch/CUDA part cannot run here)"""
import ctypes
import gc
import sys

import numpy as np

from qkern_dlpack import CUDA, Qkern, QkernError

NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)

qk = Qkern(sys.argv[1])
rng = np.random.default_rng()
freed = []


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def counting_free(pointer):  # counts qkern's release of qk.empty() memory (used where no exception unwinds)
    freed.append(pointer)
    qk.lib.qk_free(0, 0, pointer)


def expect_error(fn, part):
    try:
        fn()
    except QkernError as e:
        assert part in str(e), f"'{e}' lacks '{part}'"
        return
    raise AssertionError(f"expected a QkernError about '{part}'")


def numpy_to_qkern():
    # qkern reads NumPy's packed codes and scales and writes into NumPy's output: no copies.
    n, blocksize = 1000, 64
    codes = rng.integers(0, 16, size=n)
    packed = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8)
    absmax = rng.uniform(0.1, 4.0, size=-(-n // blocksize)).astype(np.float32)
    out = np.full(n, np.nan, dtype=np.float32)
    with qk.from_dlpack(packed) as p, qk.from_dlpack(absmax) as a, qk.from_dlpack(out, writable=True) as o:
        assert o.tensor.data == out.ctypes.data and p.tensor.data == packed.ctypes.data, "import copied"
        qk.nf4_dequantize(p, a, blocksize, o)
    expected = NF4[codes] * absmax[np.arange(n) // blocksize]  # float32 products, as the format defines
    assert np.array_equal(out, expected), "dequantized values differ"

    # Strides come in elements, byte offsets are honoured, and a non-contiguous import is refused on request.
    grid = np.arange(48, dtype=np.float32).reshape(6, 8)
    view = grid[1:, ::2]
    with qk.from_dlpack(view) as v:
        assert v.tensor.data == view.ctypes.data and list(v.tensor.strides[:2]) == [8, 2], "strides/offset"
        assert list(v.tensor.shape[:2]) == [5, 4]
    baseline = sys.getrefcount(grid)
    expect_error(lambda: qk.from_dlpack(grid[:, ::2], contiguous=True), "not compact row-major")
    expect_error(lambda: qk.from_dlpack(np.zeros(4, np.complex64)), "no qkern equivalent")
    frozen = np.ones(4, np.float32)
    frozen.flags.writeable = False
    with qk.from_dlpack(frozen) as f:
        assert f.read_only, "NumPy marked the array read-only; the import must say so"
    expect_error(lambda: qk.from_dlpack(frozen, writable=True), "read-only")
    gc.collect()
    assert sys.getrefcount(grid) == baseline, "a refused import must call NumPy's deleter"


def qkern_to_numpy():
    # NumPy views memory qkern owns; writes through either side show on the other.
    x = rng.standard_normal(256).astype(np.float32)
    packed, absmax = qk.empty((128,), "uint8"), qk.empty((4,), "float32")
    with qk.from_dlpack(x) as w:
        qk.nf4_quantize(w, 64, packed, absmax)
    codes, scales = np.from_dlpack(packed), np.from_dlpack(absmax)
    assert codes.ctypes.data == packed.tensor.data and scales.ctypes.data == absmax.tensor.data, "export copied"
    assert np.array_equal(scales, np.abs(x).reshape(4, 64).max(axis=1)), "absmax written by qkern, read by NumPy"
    assert packed.live_exports() == 1
    codes[:] = 0xF0                                   # NumPy writes, qkern reads: code 15 then code 0
    out = np.empty(256, np.float32)
    with qk.from_dlpack(codes) as p, qk.from_dlpack(scales) as a, qk.from_dlpack(out, writable=True) as o:
        qk.nf4_dequantize(p, a, 64, o)
    block_scale = np.repeat(scales, 64)
    assert np.array_equal(out[0::2], block_scale[0::2]) and np.array_equal(out[1::2], -block_scale[1::2])

    # Lifetime: the memory outlives the Python object that allocated it while NumPy still views it.
    qk.host_release = ctypes.cast(counting_free, ctypes.c_void_p)
    y = qk.empty((16,), "float32")
    qk.host_release = ctypes.cast(qk.lib.qk_dlpack_free_host, ctypes.c_void_p)
    view = np.from_dlpack(y)
    view[:] = 3.0
    address = y.tensor.data
    del y
    gc.collect()
    assert view.ctypes.data == address and np.all(view == 3.0), "memory vanished under NumPy"
    assert address not in freed, "freed while NumPy still views it"
    del view
    gc.collect()
    assert freed.count(address) == 1, "freed once, when the last user let go"

    # A capsule no one consumes (NumPy cannot hold bfloat16) is deleted by its destructor.
    z = qk.empty((8,), "bfloat16")
    try:
        np.from_dlpack(z)
        raise AssertionError("NumPy accepted bfloat16")
    except (BufferError, RuntimeError, TypeError, ValueError):
        pass
    gc.collect()
    assert z.live_exports() == 0, "the unconsumed capsule must delete its export"
    # Legacy (unversioned) requests are refused clearly.
    try:
        z.__dlpack__()
        raise AssertionError("an unversioned export was made")
    except BufferError as e:
        assert "1.x" in str(e)


def torch_cuda():
    try:
        import torch
    except ImportError:
        print("SKIPPED torch-cuda: PyTorch is not installed")
        sys.exit(77)
    if not torch.cuda.is_available():
        print("SKIPPED torch-cuda: torch.cuda.is_available() is False")
        sys.exit(77)
    n, blocksize = 4096, 64
    codes = torch.randint(0, 16, (n,), device="cuda")
    packed = ((codes[0::2] << 4) | codes[1::2]).to(torch.uint8)
    absmax = torch.rand(n // blocksize, device="cuda") + 0.5
    out = torch.full((n,), float("nan"), device="cuda")
    with qk.from_dlpack(packed) as p, qk.from_dlpack(absmax) as a, qk.from_dlpack(out, writable=True) as o:
        assert o.tensor.device_kind == CUDA and o.tensor.data == out.data_ptr(), "torch import copied"
        qk.nf4_dequantize(p, a, blocksize, o)
        qk.check(qk.lib.qk_device_synchronize(CUDA, o.tensor.device_index), "qk_device_synchronize")
    table = torch.tensor(NF4, device="cuda")
    assert torch.equal(out, table[codes] * absmax.repeat_interleave(blocksize)), "CUDA dequantize differs"
    # qkern's own CUDA memory seen by torch.
    from qkern_dlpack import Lent, _contiguous
    t = _contiguous(0, 0, CUDA, 0, (n,), 4)
    ptr = ctypes.c_void_p()
    qk.check(qk.lib.qk_malloc(CUDA, 0, t.nbytes, ctypes.byref(ptr)), "qk_malloc")
    t.data = ptr.value
    owner = ctypes.c_void_p()
    qk.check(qk.lib.qk_dlpack_owner_create(None, None, ctypes.byref(owner)), "qk_dlpack_owner_create")
    lent = Lent(qk, t, owner)
    view = torch.from_dlpack(lent)
    view.copy_(out)
    back = torch.empty_like(out)
    back.copy_(view)
    assert view.data_ptr() == ptr.value and torch.equal(back, out)
    del view
    torch.cuda.synchronize()
    gc.collect()
    assert lent.live_exports() == 0
    del lent
    qk.check(qk.lib.qk_free(CUDA, 0, ptr), "qk_free")
    print("torch-cuda: ok")


if "--torch-cuda" in sys.argv:
    torch_cuda()
else:
    numpy_to_qkern()
    qkern_to_numpy()
    print("numpy dlpack: ok")
