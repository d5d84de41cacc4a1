// qk_tensor descriptors over test buffers: contiguous, row-major, strides in elements.
#pragma once
#include <string.h>

#include <initializer_list>

#include "qkern.h"

static inline qk_tensor tensor(void* data, int32_t dtype, int64_t esize, std::initializer_list<int64_t> shape) {
  qk_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.ndim = (int32_t)shape.size();
  int64_t n = 1;
  int d = 0;
  for (int64_t s : shape) t.shape[d++] = s;
  for (d = t.ndim - 1; d >= 0; d--) {
    t.strides[d] = n;
    n *= t.shape[d];
  }
  t.nbytes = n * esize;
  return t;
}

// A 1-D tensor of n elements of esize bytes.
static inline qk_tensor flat(void* data, int32_t dtype, int64_t n, int64_t esize) {
  return tensor(data, dtype, esize, {n});
}
