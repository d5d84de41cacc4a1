// Portable NF4 kernels: the reference behaviour the SIMD paths must match bit for bit.
#include <math.h>

#include "common/nf4.h"
#include "nf4/nf4_cpu.h"
#include "qkern.h"

namespace qk::nf4 {
namespace {

const float kThresholds[15] = QK_NF4_THRESHOLDS;
const float kTable[16] = QK_NF4_TABLE;

inline float load(const void* x, int32_t dtype, int64_t i) {
  switch (dtype) {
    case QK_F16: return f16_to_f32(static_cast<const uint16_t*>(x)[i]);
    case QK_BF16: return bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
    default: return static_cast<const float*>(x)[i];
  }
}

inline void store(void* out, int32_t dtype, int64_t i, float v) {
  switch (dtype) {
    case QK_F16: static_cast<uint16_t*>(out)[i] = f32_to_f16(v); break;
    case QK_BF16: static_cast<uint16_t*>(out)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(out)[i] = v;
  }
}

int64_t quantize_scalar(const void* x, int32_t dtype, int64_t n, int64_t blocksize, int64_t b0, int64_t b1,
                        uint8_t* packed, float* absmax) {
  for (int64_t b = b0; b < b1; b++) {
    int64_t begin = b * blocksize, end = begin + blocksize < n ? begin + blocksize : n;
    int64_t bad = quantize_block_scalar(x, dtype, begin, end, packed, &absmax[b]);
    if (bad >= 0) return bad;
  }
  return -1;
}

void dequantize_scalar(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin, int64_t end,
                       void* out, int32_t dtype) {
  dequantize_range_scalar(packed, absmax, blocksize, begin, end, out, dtype);
}

}  // namespace

int64_t quantize_block_scalar(const void* x, int32_t dtype, int64_t begin, int64_t end, uint8_t* packed,
                              float* absmax_out) {
  float amax = 0.0f;
  for (int64_t i = begin; i < end; i++) {
    float v = load(x, dtype, i);
    if (!isfinite(v)) return i;
    float a = fabsf(v);
    amax = a > amax ? a : amax;
  }
  *absmax_out = amax;
  float inv = inverse_absmax(amax);
  for (int64_t i = begin; i < end; i += 2) {
    int hi = encode(load(x, dtype, i), inv, kThresholds);
    int lo = i + 1 < end ? encode(load(x, dtype, i + 1), inv, kThresholds) : 7;  // odd n: pad code 7
    packed[i >> 1] = (uint8_t)((hi << 4) | lo);
  }
  return -1;
}

void dequantize_range_scalar(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin,
                             int64_t end, void* out, int32_t dtype) {
  for (int64_t i = begin; i < end; i++) {
    uint8_t byte = packed[i >> 1];
    int code = (i & 1) ? (byte & 15) : (byte >> 4);
    store(out, dtype, i, kTable[code] * absmax[i / blocksize]);
  }
}

const CpuKernels& scalar_kernels() {
  static const CpuKernels k{quantize_scalar, dequantize_scalar};
  return k;
}

}  // namespace qk::nf4
