// Top-k / DGC kernels in portable C++ (the scalar path, and the ragged tails of the SIMD paths).
#include <string.h>

#include "common/topk.h"
#include "topk/topk_cpu.h"

namespace qk::topk {

int64_t histogram_scalar(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo, uint32_t hi,
                         int shift, uint32_t* hist) {
  int64_t above = 0;
  const uint32_t span = hi - lo;
  for (int64_t i = begin; i < end; i++) {
    uint32_t key = key_of(bits[i], order);
    above += key > hi;
    if (key - lo <= span) hist[(key >> shift) & (kBins - 1)]++;  // unsigned: false below lo
  }
  return above;
}

int64_t emit_one_range_scalar(const uint32_t* bits, const int64_t* src_index, int64_t begin, int64_t end, int order,
                              uint32_t lo, uint32_t hi, int64_t* quota, uint32_t* out_bits, int64_t* out_index) {
  int64_t w = 0;
  for (int64_t i = begin; i < end; i++) {
    uint32_t key = key_of(bits[i], order);
    if (key < lo) continue;
    if (key <= hi) {
      if (*quota <= 0) continue;
      --*quota;
    }
    out_bits[w] = bits[i];
    out_index[w] = src_index ? src_index[i] : i;
    w++;
  }
  return w;
}

int64_t count_at_least_scalar(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo) {
  int64_t c = 0;
  for (int64_t i = begin; i < end; i++) c += key_of(bits[i], order) >= lo;
  return c;
}

// Eight lanes (element i goes to lane (i - begin) % 8), combined as
// ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): the SIMD paths sum in exactly this order, so the clipping
// norm (and everything after it) is the same on every path.
double sum_squares_scalar(const float* g, int64_t begin, int64_t end, int64_t* first_nonfinite) {
  double l[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  *first_nonfinite = -1;
  for (int64_t i = begin; i < end; i++) {
    uint32_t b;
    memcpy(&b, &g[i], 4);
    if (is_nonfinite_bits(b)) {
      *first_nonfinite = i;
      return 0.0;
    }
    double d = (double)g[i];
    l[(i - begin) % 8] += d * d;
  }
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

namespace {
// One element of the DGC update: u[i] and v[i] written, the new v returned.
inline float update_one(const float* g, float* u, float* v, int64_t i, int feedback, bool nesterov, float momentum,
                        bool scaled, float scale) {
  float gi = scaled ? g[i] * scale : g[i];
  float ui = feedback == 2 ? u[i] : 0.0f;
  float vi = v[i];
  dgc_accumulate(gi, ui, vi, feedback, nesterov, momentum);
  if (feedback == 2) u[i] = ui;
  v[i] = vi;
  return vi;
}
}  // namespace

void dgc_update_scalar(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback, bool nesterov,
                       float momentum, bool scaled, float scale, uint32_t* hist) {
  for (int64_t i = begin; i < end; i++) {
    const float vi = update_one(g, u, v, i, feedback, nesterov, momentum, scaled, scale);
    if (hist) hist[(f32_bits(vi) & 0x7fffffffu) >> 21]++;
  }
}

int64_t collect_scalar(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t t, uint32_t* out_bits,
                       int64_t* out_index, bool* nan_seen) {
  int64_t w = 0;
  bool nan = false;
  for (int64_t i = begin; i < end; i++) {
    nan |= is_nan_bits(bits[i]);
    if (key_of(bits[i], order) >= t) {
      out_bits[w] = bits[i];
      out_index[w] = i;
      w++;
    }
  }
  if (nan) *nan_seen = true;
  return w;
}

int64_t dgc_update_collect_scalar(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback,
                                  bool nesterov, float momentum, bool scaled, float scale, uint32_t t,
                                  uint32_t* out_bits, int64_t* out_index) {
  int64_t w = 0;
  for (int64_t i = begin; i < end; i++) {
    const uint32_t b = f32_bits(update_one(g, u, v, i, feedback, nesterov, momentum, scaled, scale));
    if ((b & 0x7fffffffu) >= t) {
      out_bits[w] = b;
      out_index[w] = i;
      w++;
    }
  }
  return w;
}

int64_t find_nonfinite_scalar(const uint32_t* bits, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; i++)
    if (is_nonfinite_bits(bits[i])) return i;
  return -1;
}

namespace {

int64_t histogram(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo, uint32_t hi, int shift,
                  uint32_t* hist) {
  return histogram_scalar(bits, begin, end, order, lo, hi, shift, hist);
}

int64_t emit(const uint32_t* bits, const int64_t* src_index, int64_t begin, int64_t end, int order, uint32_t lo,
             uint32_t hi, int64_t quota, uint32_t* out_bits, int64_t* out_index) {
  return emit_one_range_scalar(bits, src_index, begin, end, order, lo, hi, &quota, out_bits, out_index);
}

}  // namespace

const CpuKernels& scalar_kernels() {
  static const CpuKernels k = {histogram,         emit,
                               count_at_least_scalar, sum_squares_scalar,
                               dgc_update_scalar,     collect_scalar,
                               dgc_update_collect_scalar, find_nonfinite_scalar};
  return k;
}

}  // namespace qk::topk
