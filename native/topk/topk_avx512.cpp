// Top-k / DGC kernels, AVX-512 path (F/BW/VL/DQ; reached only after the run-time cpuid check).
// Same structure as topk_avx2.cpp, 16 keys per vector with mask registers. Emission does not use
// a compress-store to memory (slow on Zen 4): hits are rare after the first pass and are
// written one by one from the mask. This machine has no AVX-512: this file is compiled in CI
// but has not been run here.
// GCC 12 warns inside its own AVX-512 intrinsic headers (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <string.h>

#include "common/topk.h"
#include "topk/topk_cpu.h"

namespace qk::topk {
namespace {

template <int ORDER>
inline __m512i keys16(__m512i b) {
  if (ORDER == kMagnitude) return _mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff));
  const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
  b = _mm512_maskz_mov_epi32(_mm512_cmpneq_epi32_mask(b, sign), b);  // -0.0 -> +0.0
  __m512i k = _mm512_xor_si512(b, _mm512_or_si512(_mm512_srai_epi32(b, 31), sign));
  if (ORDER == kSmallest) k = _mm512_xor_si512(k, _mm512_set1_epi32(-1));
  return k;
}

inline __m512i load16(const uint32_t* p) { return _mm512_loadu_si512(p); }

struct SubHist {
  alignas(64) uint32_t h[4][kBins + 16];
  SubHist() { memset(h, 0, sizeof h); }
  inline void add16(__m512i digits) {
    alignas(64) uint32_t d[16];
    _mm512_store_si512(d, digits);
    for (int j = 0; j < 16; j += 4) {
      h[0][d[j]]++; h[1][d[j + 1]]++; h[2][d[j + 2]]++; h[3][d[j + 3]]++;
    }
  }
  void flush(uint32_t* hist) const {
    for (int b = 0; b < kBins; b++) hist[b] += h[0][b] + h[1][b] + h[2][b] + h[3][b];
  }
};

template <int ORDER, bool FILTER>
int64_t histogram_t(const uint32_t* bits, int64_t begin, int64_t end, uint32_t lo, uint32_t hi, int shift,
                    uint32_t* hist) {
  SubHist* sub = new SubHist();
  const __m128i vshift = _mm_cvtsi32_si128(shift);
  const __m512i vlo = _mm512_set1_epi32((int)lo), vhi = _mm512_set1_epi32((int)hi);
  const __m512i vspan = _mm512_set1_epi32((int)(hi - lo)), dmask = _mm512_set1_epi32(kBins - 1);
  const __m512i dummy = _mm512_set1_epi32(kBins);
  int64_t above = 0, i = begin;
  for (; i + 16 <= end; i += 16) {
    __m512i key = keys16<ORDER>(load16(bits + i));
    __m512i digit = _mm512_and_si512(_mm512_srl_epi32(key, vshift), dmask);
    if (FILTER) {
      __mmask16 in = _mm512_cmple_epu32_mask(_mm512_sub_epi32(key, vlo), vspan);
      above += __builtin_popcount((unsigned)_mm512_cmpgt_epu32_mask(key, vhi));
      digit = _mm512_mask_mov_epi32(dummy, in, digit);
    }
    sub->add16(digit);
  }
  sub->flush(hist);
  delete sub;
  return above + histogram_scalar(bits, i, end, ORDER, lo, hi, shift, hist);
}

int64_t histogram(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo, uint32_t hi, int shift,
                  uint32_t* hist) {
  const bool all = lo == 0 && hi == 0xffffffffu;
  switch (order) {
    case kMagnitude:
      return all ? histogram_t<kMagnitude, false>(bits, begin, end, lo, hi, shift, hist)
                 : histogram_t<kMagnitude, true>(bits, begin, end, lo, hi, shift, hist);
    case kLargest:
      return all ? histogram_t<kLargest, false>(bits, begin, end, lo, hi, shift, hist)
                 : histogram_t<kLargest, true>(bits, begin, end, lo, hi, shift, hist);
    default:
      return all ? histogram_t<kSmallest, false>(bits, begin, end, lo, hi, shift, hist)
                 : histogram_t<kSmallest, true>(bits, begin, end, lo, hi, shift, hist);
  }
}

template <int ORDER>
int64_t emit_t(const uint32_t* bits, const int64_t* src_index, int64_t begin, int64_t end, uint32_t lo, uint32_t hi,
               int64_t quota, uint32_t* out_bits, int64_t* out_index) {
  const __m512i vlo = _mm512_set1_epi32((int)lo);
  int64_t w = 0, i = begin;
  for (; i + 32 <= end; i += 32) {
    unsigned m0 = _mm512_cmpge_epu32_mask(keys16<ORDER>(load16(bits + i)), vlo);
    unsigned m1 = _mm512_cmpge_epu32_mask(keys16<ORDER>(load16(bits + i + 16)), vlo);
    unsigned m = m0 | (m1 << 16);
    while (m) {
      int64_t j = i + __builtin_ctz(m);
      m &= m - 1;
      uint32_t key = key_of(bits[j], ORDER);
      if (key <= hi) {
        if (quota <= 0) continue;
        quota--;
      }
      out_bits[w] = bits[j];
      out_index[w] = src_index ? src_index[j] : j;
      w++;
    }
  }
  return w + emit_one_range_scalar(bits, src_index, i, end, ORDER, lo, hi, &quota, out_bits + w, out_index + w);
}

int64_t emit(const uint32_t* bits, const int64_t* src_index, int64_t begin, int64_t end, int order, uint32_t lo,
             uint32_t hi, int64_t quota, uint32_t* out_bits, int64_t* out_index) {
  switch (order) {
    case kMagnitude: return emit_t<kMagnitude>(bits, src_index, begin, end, lo, hi, quota, out_bits, out_index);
    case kLargest: return emit_t<kLargest>(bits, src_index, begin, end, lo, hi, quota, out_bits, out_index);
    default: return emit_t<kSmallest>(bits, src_index, begin, end, lo, hi, quota, out_bits, out_index);
  }
}

template <int ORDER>
int64_t count_t(const uint32_t* bits, int64_t begin, int64_t end, uint32_t lo) {
  const __m512i vlo = _mm512_set1_epi32((int)lo);
  int64_t c = 0, i = begin;
  for (; i + 16 <= end; i += 16) c += __builtin_popcount((unsigned)_mm512_cmpge_epu32_mask(keys16<ORDER>(load16(bits + i)), vlo));
  return c + count_at_least_scalar(bits, i, end, ORDER, lo);
}

int64_t count_at_least(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo) {
  switch (order) {
    case kMagnitude: return count_t<kMagnitude>(bits, begin, end, lo);
    case kLargest: return count_t<kLargest>(bits, begin, end, lo);
    default: return count_t<kSmallest>(bits, begin, end, lo);
  }
}

// Same summation order as sum_squares_scalar (eight lanes, the same final tree).
double sum_squares(const float* g, int64_t begin, int64_t end, int64_t* first_nonfinite) {
  *first_nonfinite = -1;
  __m512d acc = _mm512_setzero_pd();
  const __m256i expo = _mm256_set1_epi32(0x7f800000);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    __m256 x = _mm256_loadu_ps(g + i);
    if (_mm256_cmpeq_epi32_mask(_mm256_and_si256(_mm256_castps_si256(x), expo), expo)) {
      for (int64_t j = i; j < i + 8; j++) {
        uint32_t b;
        memcpy(&b, &g[j], 4);
        if (is_nonfinite_bits(b)) {
          *first_nonfinite = j;
          return 0.0;
        }
      }
    }
    __m512d d = _mm512_cvtps_pd(x);
    acc = _mm512_add_pd(acc, _mm512_mul_pd(d, d));
  }
  alignas(64) double l[8];
  _mm512_store_pd(l, acc);
  for (int64_t j = i; j < end; j++) {
    uint32_t b;
    memcpy(&b, &g[j], 4);
    if (is_nonfinite_bits(b)) {
      *first_nonfinite = j;
      return 0.0;
    }
    double d = (double)g[j];
    l[(j - begin) % 8] += d * d;
  }
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

template <int FEEDBACK, bool NESTEROV, bool SCALED, bool HIST = true>
void dgc_update_t(const float* g, float* u, float* v, int64_t begin, int64_t end, float momentum, float scale,
                  uint32_t* hist) {
  SubHist* sub = HIST ? new SubHist() : nullptr;
  const __m512 vm = _mm512_set1_ps(momentum), vs = _mm512_set1_ps(scale);
  const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    __m512 gi = _mm512_loadu_ps(g + i);
    if (SCALED) gi = _mm512_mul_ps(gi, vs);
    __m512 vi;
    if (FEEDBACK == 0) {
      vi = gi;
    } else if (FEEDBACK == 1) {
      vi = _mm512_add_ps(_mm512_loadu_ps(v + i), gi);
    } else {
      __m512 ui = _mm512_loadu_ps(u + i);
      vi = _mm512_loadu_ps(v + i);
      if (!NESTEROV) {
        ui = _mm512_add_ps(_mm512_mul_ps(vm, ui), gi);
        vi = _mm512_add_ps(vi, ui);
      } else {
        ui = _mm512_mul_ps(_mm512_add_ps(ui, gi), vm);
        vi = _mm512_add_ps(_mm512_add_ps(vi, ui), gi);
      }
      _mm512_storeu_ps(u + i, ui);
    }
    _mm512_storeu_ps(v + i, vi);
    if (HIST) sub->add16(_mm512_srli_epi32(_mm512_and_si512(_mm512_castps_si512(vi), absmask), 21));
  }
  if (HIST) sub->flush(hist);
  delete sub;
  dgc_update_scalar(g, u, v, i, end, FEEDBACK, NESTEROV, momentum, SCALED, scale, hist);
}

void dgc_update(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback, bool nesterov,
                float momentum, bool scaled, float scale, uint32_t* hist) {
  if (!hist && feedback == 2 && !nesterov && !scaled) {  // the benchmark's plain momentum pass
    dgc_update_t<2, false, false, false>(g, u, v, begin, end, momentum, scale, hist);
    return;
  }
#define QK_DGC_CASE(FB, NE)                                                               \
  if (feedback == FB && nesterov == NE) {                                                 \
    if (scaled) dgc_update_t<FB, NE, true>(g, u, v, begin, end, momentum, scale, hist);   \
    else dgc_update_t<FB, NE, false>(g, u, v, begin, end, momentum, scale, hist);         \
    return;                                                                               \
  }
  QK_DGC_CASE(0, false)
  QK_DGC_CASE(1, false)
  QK_DGC_CASE(2, false)
  QK_DGC_CASE(2, true)
#undef QK_DGC_CASE
  dgc_update_scalar(g, u, v, begin, end, feedback, nesterov, momentum, scaled, scale, hist);
}

}  // namespace

// The sampled-bound kernels (collect, dgc_update_collect, find_nonfinite) are the AVX2 ones:
// those passes are bound by memory bandwidth, and the AVX2 code is the one tested on this machine.
const CpuKernels& avx512_kernels() {
  static const CpuKernels k = {histogram,
                               emit,
                               count_at_least,
                               sum_squares,
                               dgc_update,
                               avx2_kernels().collect,
                               avx2_kernels().dgc_update_collect,
                               avx2_kernels().find_nonfinite};
  return k;
}

}  // namespace qk::topk
