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

// The exact code product of one segment of `len` columns from the unsigned-code product
// uprod = sum u_a*u_w and the segment's code sums sa = sum u_a, sw = sum u_w:
// sum (alpha_a u_a + beta_a)(alpha_w u_w + beta_w).
QK_HD int64_t segment_product(int32_t a_format, int32_t a_bits, int32_t w_format, int32_t w_bits, int64_t uprod,
                              int64_t sa, int64_t sw, int64_t len) {
  const int64_t aa = alpha(a_format), ba = beta(a_format, a_bits), aw = alpha(w_format), bw = beta(w_format, w_bits);
  return aa * aw * uprod + aa * bw * sa + ba * aw * sw + len * ba * bw;
}

// The same segment with zero points za, zw: sum (x_a - za)(x_w - zw), exact.
QK_HD int64_t segment_centered(int32_t a_format, int32_t a_bits, int32_t w_format, int32_t w_bits, int64_t d,
                               int64_t sa, int64_t sw, int64_t len, int64_t za, int64_t zw) {
  const int64_t va = alpha(a_format) * sa + beta(a_format, a_bits) * len;  // sum of x_a
  const int64_t vw = alpha(w_format) * sw + beta(w_format, w_bits) * len;
  return d - zw * va - za * vw + len * za * zw;
}

// float64 -> float32 rounded to odd: a following round-to-nearest-even to binary16 or
// bfloat16 then equals a direct rounding of the float64 (float32 keeps > 2 extra bits).
QK_HD float round_to_odd_f32(double y) {
  float f = (float)y;
  if ((double)f == y || f != f || f == 0.0f) return f;  // exact, NaN, or below every 16-bit subnormal
  uint32_t bits = f32_bits(f);
  if ((bits & 1u) == 0) {  // the nearest float is even: take its neighbour on the other side of y
    const bool away = ((double)f > y) == (f > 0.0f);  // |f| > |y|
    bits = away ? bits - 1 : bits + 1;
    if ((bits & 0x7f800000u) == 0x7f800000u) bits -= 1;
    f = bits_f32(bits);
  }
  return f;
}

}  // namespace qk::apmm
