// APMM format math shared by the CPU kernels and the CUDA kernels (QK_HD): code ranges, the
// unsigned code u every format is packed as, its affine map back to the code value, and the
// quantizer's rounding. The CPU tests therefore cover the arithmetic the GPU runs.
#pragma once
#include <math.h>
#include <stdint.h>

#include "common/qk_hd.h"
#include "qkern.h"

namespace qk::apmm {

constexpr int kMinBits = 1, kMaxBits = 8;
constexpr int64_t kPadBits = 256;  // K is padded to this many columns (one AVX2 vector, one b1 mma k-step)

QK_HD bool valid_format(int32_t f) { return f == QK_APMM_BIPOLAR || f == QK_APMM_SIGNED || f == QK_APMM_UNSIGNED; }
QK_HD bool valid_bits(int32_t b) { return b >= kMinBits && b <= kMaxBits; }
QK_HD bool valid_group(int64_t g) { return g == 0 || g == 32 || g == 64 || g == 128; }

QK_HD int64_t words_per_plane(int64_t k) { return (k + kPadBits - 1) / kPadBits * (kPadBits / 64); }
QK_HD int64_t segments(int64_t k, int64_t group) { return group == 0 ? 1 : (k + group - 1) / group; }

// Smallest and largest code of a format.
QK_HD int32_t code_min(int32_t format, int32_t bits) {
  return format == QK_APMM_BIPOLAR ? -((1 << bits) - 1) : format == QK_APMM_SIGNED ? -(1 << (bits - 1)) : 0;
}
QK_HD int32_t code_max(int32_t format, int32_t bits) {
  return format == QK_APMM_SIGNED ? (1 << (bits - 1)) - 1 : (1 << bits) - 1;
}
QK_HD bool code_valid(int32_t format, int32_t bits, int64_t x) {
  if (x < code_min(format, bits) || x > code_max(format, bits)) return false;
  return format != QK_APMM_BIPOLAR || (x & 1) != 0;
}
// The largest |x| of the format (bounds the exact integer result).
QK_HD int64_t code_abs_max(int32_t format, int32_t bits) {
  return format == QK_APMM_SIGNED ? ((int64_t)1 << (bits - 1)) : ((int64_t)1 << bits) - 1;
}

// x = alpha * u + beta, u in [0, 2^bits - 1] the unsigned code stored in the planes.
QK_HD int32_t alpha(int32_t format) { return format == QK_APMM_BIPOLAR ? 2 : 1; }
QK_HD int32_t beta(int32_t format, int32_t bits) {
  return format == QK_APMM_BIPOLAR ? -((1 << bits) - 1) : format == QK_APMM_SIGNED ? -(1 << (bits - 1)) : 0;
}
QK_HD uint32_t code_to_u(int32_t format, int32_t bits, int32_t x) {
  return (uint32_t)((x - beta(format, bits)) / alpha(format));  // exact: bipolar x - beta is even
}
QK_HD int32_t u_to_code(int32_t format, int32_t bits, uint32_t u) {
  return alpha(format) * (int32_t)u + beta(format, bits);
}

// The quantizer of one group with absolute maximum `amax` (symmetric formats) or range
// [lo, hi] (unsigned; lo <= 0 <= hi). Returns the scale; *zero gets the zero point.
QK_HD float group_scale(int32_t format, int32_t bits, float amax, float lo, float hi, int32_t* zero) {
  *zero = 0;
  if (format == QK_APMM_BIPOLAR) return amax / (float)((1 << bits) - 1);
  if (format == QK_APMM_SIGNED) {
    int32_t qmax = (1 << (bits - 1)) - 1;
    return amax / (float)(qmax < 1 ? 1 : qmax);
  }
  const int32_t levels = (1 << bits) - 1;
  float scale = (hi - lo) / (float)levels;
  if (scale > 0.0f) {
    float z = rintf(-lo / scale);
    *zero = z < 0.0f ? 0 : z > (float)levels ? levels : (int32_t)z;
  }
  return scale;
}

// The code of one finite element given its group's scale (0 for an all-zero group).
QK_HD int32_t quantize_value(int32_t format, int32_t bits, float x, float scale, int32_t zero) {
  const int32_t lo = code_min(format, bits), hi = code_max(format, bits);
  if (!(scale > 0.0f)) return format == QK_APMM_BIPOLAR ? 1 : zero;
  float t = x / scale;
  float c;
  if (format == QK_APMM_BIPOLAR)
    c = 2.0f * floorf(t * 0.5f) + 1.0f;  // the nearest odd integer (ties at even t round up)
  else
    c = rintf(t) + (float)zero;
  if (c < (float)lo) return lo;
  if (c > (float)hi) return hi;
  return (int32_t)c;
}

}  // namespace qk::apmm
