// Top-k / DGC CPU kernels: one table of entry points per SIMD path. Every kernel works on a
// range [begin, end) so the driver (topk_select.cpp) can split work over the worker pool.
#pragma once
#include <stdint.h>

namespace qk::topk {

struct CpuKernels {
  // For the elements of bits[begin, end) whose key (key_of(bits, order)) lies in [lo, hi]:
  // hist[(key >> shift) & (kBins - 1)] += 1 (hist has kBins entries, added to, not cleared).
  // Returns how many keys in the range are > hi.
  int64_t (*histogram)(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo, uint32_t hi,
                       int shift, uint32_t* hist);
  // Writes, in order, every element with key > hi and the first `quota` elements with key in
  // [lo, hi] as (bits, index) to out_bits / out_index; the index is src_index[i] (or i when
  // src_index is null). Returns how many were written.
  int64_t (*emit)(const uint32_t* bits, const int64_t* src_index, int64_t begin, int64_t end, int order, uint32_t lo,
                  uint32_t hi, int64_t quota, uint32_t* out_bits, int64_t* out_index);
  // How many elements of [begin, end) have key >= lo.
  int64_t (*count_at_least)(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo);
  // Sum of squares of g[begin, end) in float64 (fixed order), and the lowest index of a NaN/Inf
  // element in the range (or -1).
  double (*sum_squares)(const float* g, int64_t begin, int64_t end, int64_t* first_nonfinite);
  // The fused DGC pass over [begin, end): g' = scaled ? g * scale : g, then dgc_accumulate
  // (common/topk.h) into u (momentum only) and v, and hist[|v_new| key >> 21] += 1 (hist may be
  // null: the plain momentum pass the benchmark compares against).
  void (*dgc_update)(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback, bool nesterov,
                     float momentum, bool scaled, float scale, uint32_t* hist);
  // Writes, in index order, every element of bits[begin, end) with key >= t as (bits, i) to
  // out_bits / out_index (room for end - begin pairs) and returns how many. Sets *nan_seen when
  // the range holds a NaN (in the largest / smallest orders a NaN key can lie below t).
  int64_t (*collect)(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t t, uint32_t* out_bits,
                     int64_t* out_index, bool* nan_seen);
  // dgc_update without the histogram, writing, in index order, every element whose new v has a
  // magnitude key >= t as (bits of v, i) to out_bits / out_index (room for end - begin pairs).
  // Returns how many.
  int64_t (*dgc_update_collect)(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback,
                                bool nesterov, float momentum, bool scaled, float scale, uint32_t t, uint32_t* out_bits,
                                int64_t* out_index);
  // The lowest index in [begin, end) of a NaN or Inf (by its bits), or -1.
  int64_t (*find_nonfinite)(const uint32_t* bits, int64_t begin, int64_t end);
};

const CpuKernels& scalar_kernels();
const CpuKernels& avx2_kernels();
const CpuKernels& avx512_kernels();

// Scalar kernels the SIMD files use for their ragged tails.
int64_t histogram_scalar(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo, uint32_t hi,
                         int shift, uint32_t* hist);
int64_t emit_one_range_scalar(const uint32_t* bits, const int64_t* src_index, int64_t begin, int64_t end, int order,
                              uint32_t lo, uint32_t hi, int64_t* quota, uint32_t* out_bits, int64_t* out_index);
int64_t count_at_least_scalar(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo);
double sum_squares_scalar(const float* g, int64_t begin, int64_t end, int64_t* first_nonfinite);
void dgc_update_scalar(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback, bool nesterov,
                       float momentum, bool scaled, float scale, uint32_t* hist);
int64_t collect_scalar(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t t, uint32_t* out_bits,
                       int64_t* out_index, bool* nan_seen);
int64_t dgc_update_collect_scalar(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback,
                                  bool nesterov, float momentum, bool scaled, float scale, uint32_t t,
                                  uint32_t* out_bits, int64_t* out_index);
int64_t find_nonfinite_scalar(const uint32_t* bits, int64_t begin, int64_t end);

}  // namespace qk::topk
