"""NF4 through libqkern from NumPy, zero-copy both ways. Usage: python3 numpy_example.py /path/to/libqkern.so"""
import sys

import numpy as np

from qkern_dlpack import Qkern

qk = Qkern(sys.argv[1])
weights = np.random.default_rng(0).standard_normal(4096).astype(np.float32)

# qkern writes NF4 codes and scales into memory it owns; NumPy views that memory (no copy).
packed, absmax = qk.empty((2048,), "uint8"), qk.empty((64,), "float32")
with qk.from_dlpack(weights) as w:
    qk.nf4_quantize(w, 64, packed, absmax)
codes, scales = np.from_dlpack(packed), np.from_dlpack(absmax)
print("absmax of block 0:", scales[0], "=", np.abs(weights[:64]).max())

# qkern reads NumPy's arrays and writes into a NumPy array (no copy either).
restored = np.empty_like(weights)
with qk.from_dlpack(codes) as p, qk.from_dlpack(scales) as a, qk.from_dlpack(restored, writable=True) as out:
    qk.nf4_dequantize(p, a, 64, out)
print("largest NF4 round-trip error:", np.abs(restored - weights).max())
