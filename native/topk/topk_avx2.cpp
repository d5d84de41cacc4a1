// Top-k / DGC kernels, AVX2 path (compiled with -mavx2 -mfma -mf16c -mbmi2; reached only after the
// run-time cpuid check). Keys are computed 8 at a time; histogram increments stay scalar (AVX2 has
// no conflict detection) but go to 4 interleaved sub-histograms so that runs of equal digits do
// not serialise on one counter. Emission tests 16 keys per step and touches memory only for hits,
// which are rare once the first pass has narrowed the candidates.
#include <immintrin.h>
#include <string.h>

#include "common/topk.h"
#include "topk/topk_cpu.h"

namespace qk::topk {
namespace {

template <int ORDER>
inline __m256i keys8(__m256i b) {
  if (ORDER == kMagnitude) return _mm256_and_si256(b, _mm256_set1_epi32(0x7fffffff));
  const __m256i sign = _mm256_set1_epi32((int)0x80000000u);
  b = _mm256_andnot_si256(_mm256_cmpeq_epi32(b, sign), b);  // -0.0 -> +0.0
  __m256i k = _mm256_xor_si256(b, _mm256_or_si256(_mm256_srai_epi32(b, 31), sign));
  if (ORDER == kSmallest) k = _mm256_xor_si256(k, _mm256_set1_epi32(-1));
  return k;
}

inline __m256i load8(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// key >= lo as a lane mask (unsigned compare)
inline __m256i at_least(__m256i key, __m256i lo) { return _mm256_cmpeq_epi32(_mm256_max_epu32(key, lo), key); }

struct SubHist {
  alignas(64) uint32_t h[4][kBins + 8];  // entry kBins: the dummy bin of filtered-out lanes
  SubHist() { memset(h, 0, sizeof h); }
  inline void add8(__m256i digits) {
    alignas(32) uint32_t d[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(d), digits);
    h[0][d[0]]++; h[1][d[1]]++; h[2][d[2]]++; h[3][d[3]]++;
    h[0][d[4]]++; h[1][d[5]]++; h[2][d[6]]++; h[3][d[7]]++;
  }
  void flush(uint32_t* hist) const {
    for (int b = 0; b < kBins; b++) hist[b] += h[0][b] + h[1][b] + h[2][b] + h[3][b];
  }
};

inline int64_t lanes_sum(__m256i acc) {  // acc holds non-negative int32 counts
  alignas(32) int32_t a[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(a), acc);
  int64_t s = 0;
  for (int j = 0; j < 8; j++) s += a[j];
  return s;
}

template <int ORDER, bool FILTER>
int64_t histogram_t(const uint32_t* bits, int64_t begin, int64_t end, uint32_t lo, uint32_t hi, int shift,
                    uint32_t* hist) {
  SubHist* sub = new SubHist();  // 32 KiB: off the (possibly small) worker stack
  const __m128i vshift = _mm_cvtsi32_si128(shift);
  const __m256i vlo = _mm256_set1_epi32((int)lo), vhi = _mm256_set1_epi32((int)hi);
  const __m256i vspan = _mm256_set1_epi32((int)(hi - lo)), dmask = _mm256_set1_epi32(kBins - 1);
  const __m256i dummy = _mm256_set1_epi32(kBins);
  int64_t above = 0, i = begin;
  while (i + 8 <= end) {
    // count in int32 lanes for at most 2^28 steps, then widen
    int64_t stop = end - (end - i) % 8;
    if (stop - i > ((int64_t)1 << 28)) stop = i + ((int64_t)1 << 28);
    __m256i acc = _mm256_setzero_si256();
    for (; i < stop; i += 8) {
      __m256i key = keys8<ORDER>(load8(bits + i));
      __m256i digit = _mm256_and_si256(_mm256_srl_epi32(key, vshift), dmask);
      if (FILTER) {
        __m256i d = _mm256_sub_epi32(key, vlo);
        __m256i in = _mm256_cmpeq_epi32(_mm256_min_epu32(d, vspan), d);
        __m256i not_above = _mm256_cmpeq_epi32(_mm256_max_epu32(key, vhi), vhi);
        acc = _mm256_sub_epi32(acc, _mm256_andnot_si256(not_above, _mm256_set1_epi32(-1)));
        digit = _mm256_blendv_epi8(dummy, digit, in);
      }
      sub->add8(digit);
    }
    above += lanes_sum(acc);
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
  const __m256i vlo = _mm256_set1_epi32((int)lo);
  int64_t w = 0, i = begin;
  for (; i + 16 <= end; i += 16) {
    unsigned m0 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(at_least(keys8<ORDER>(load8(bits + i)), vlo)));
    unsigned m1 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(at_least(keys8<ORDER>(load8(bits + i + 8)), vlo)));
    unsigned m = m0 | (m1 << 8);
    while (m) {  // hits are rare: handle them one by one
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
  const __m256i vlo = _mm256_set1_epi32((int)lo);
  int64_t c = 0, i = begin;
  while (i + 8 <= end) {
    int64_t stop = end - (end - i) % 8;
    if (stop - i > ((int64_t)1 << 28)) stop = i + ((int64_t)1 << 28);
    __m256i acc = _mm256_setzero_si256();
    for (; i < stop; i += 8) acc = _mm256_sub_epi32(acc, at_least(keys8<ORDER>(load8(bits + i)), vlo));
    c += lanes_sum(acc);
  }
  return c + count_at_least_scalar(bits, i, end, ORDER, lo);
}

int64_t count_at_least(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t lo) {
  switch (order) {
    case kMagnitude: return count_t<kMagnitude>(bits, begin, end, lo);
    case kLargest: return count_t<kLargest>(bits, begin, end, lo);
    default: return count_t<kSmallest>(bits, begin, end, lo);
  }
}

// Same summation order as sum_squares_scalar: eight lanes (element i goes to lane (i-begin) % 8),
// combined as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
double sum_squares(const float* g, int64_t begin, int64_t end, int64_t* first_nonfinite) {
  *first_nonfinite = -1;
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  const __m256i expo = _mm256_set1_epi32(0x7f800000);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    __m256 x = _mm256_loadu_ps(g + i);
    __m256i e = _mm256_and_si256(_mm256_castps_si256(x), expo);
    if (_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(e, expo)))) {
      for (int64_t j = i; j < i + 8; j++) {
        uint32_t b;
        memcpy(&b, &g[j], 4);
        if (is_nonfinite_bits(b)) {
          *first_nonfinite = j;
          return 0.0;
        }
      }
    }
    __m256d lo4 = _mm256_cvtps_pd(_mm256_castps256_ps128(x)), hi4 = _mm256_cvtps_pd(_mm256_extractf128_ps(x, 1));
    a0 = _mm256_add_pd(a0, _mm256_mul_pd(lo4, lo4));
    a1 = _mm256_add_pd(a1, _mm256_mul_pd(hi4, hi4));
  }
  alignas(32) double l[8];
  _mm256_store_pd(l, a0);
  _mm256_store_pd(l + 4, a1);
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

// One vector of the DGC update at i: u and v written, the new v returned (the pass then
// histograms or collects it).
template <int FEEDBACK, bool NESTEROV, bool SCALED>
inline __m256 update8(const float* g, float* u, float* v, int64_t i, __m256 vm, __m256 vs) {
  __m256 gi = _mm256_loadu_ps(g + i);
  if (SCALED) gi = _mm256_mul_ps(gi, vs);
  __m256 vi;
  if (FEEDBACK == 0) {
    vi = gi;
  } else if (FEEDBACK == 1) {
    vi = _mm256_add_ps(_mm256_loadu_ps(v + i), gi);
  } else {
    __m256 ui = _mm256_loadu_ps(u + i);
    vi = _mm256_loadu_ps(v + i);
    if (!NESTEROV) {
      ui = _mm256_add_ps(_mm256_mul_ps(vm, ui), gi);
      vi = _mm256_add_ps(vi, ui);
    } else {
      ui = _mm256_mul_ps(_mm256_add_ps(ui, gi), vm);
      vi = _mm256_add_ps(_mm256_add_ps(vi, ui), gi);
    }
    _mm256_storeu_ps(u + i, ui);
  }
  _mm256_storeu_ps(v + i, vi);
  return vi;
}

template <int FEEDBACK, bool NESTEROV, bool SCALED, bool HIST = true>
void dgc_update_t(const float* g, float* u, float* v, int64_t begin, int64_t end, float momentum, float scale,
                  uint32_t* hist) {
  SubHist* sub = HIST ? new SubHist() : nullptr;
  const __m256 vm = _mm256_set1_ps(momentum), vs = _mm256_set1_ps(scale);
  const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 vi = update8<FEEDBACK, NESTEROV, SCALED>(g, u, v, i, vm, vs);
    if (HIST) sub->add8(_mm256_srli_epi32(_mm256_and_si256(_mm256_castps_si256(vi), absmask), 21));
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

// One compare per key against the sampled bound; hits (a few per thousand) are written one by
// one. NaN (|bits| > Inf as signed integers) is OR-ed into a flag on the side.
template <int ORDER>
int64_t collect_t(const uint32_t* bits, int64_t begin, int64_t end, uint32_t t, uint32_t* out_bits,
                  int64_t* out_index, bool* nan_seen) {
  const __m256i vt = _mm256_set1_epi32((int)t), absmask = _mm256_set1_epi32(0x7fffffff);
  const __m256i inf = _mm256_set1_epi32(0x7f800000);
  __m256i nan = _mm256_setzero_si256();
  int64_t w = 0, i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m256i b0 = load8(bits + i), b1 = load8(bits + i + 8);
    const __m256i k0 = keys8<ORDER>(b0), k1 = keys8<ORDER>(b1);
    if (ORDER == kMagnitude) {
      nan = _mm256_or_si256(nan, _mm256_or_si256(_mm256_cmpgt_epi32(k0, inf), _mm256_cmpgt_epi32(k1, inf)));
    } else {
      nan = _mm256_or_si256(nan, _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_and_si256(b0, absmask), inf),
                                                 _mm256_cmpgt_epi32(_mm256_and_si256(b1, absmask), inf)));
    }
    unsigned m0 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(at_least(k0, vt)));
    unsigned m1 = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(at_least(k1, vt)));
    unsigned m = m0 | (m1 << 8);
    while (m) {
      const int64_t j = i + __builtin_ctz(m);
      m &= m - 1;
      out_bits[w] = bits[j];
      out_index[w] = j;
      w++;
    }
  }
  if (!_mm256_testz_si256(nan, nan)) *nan_seen = true;
  return w + collect_scalar(bits, i, end, ORDER, t, out_bits + w, out_index + w, nan_seen);
}

int64_t collect(const uint32_t* bits, int64_t begin, int64_t end, int order, uint32_t t, uint32_t* out_bits,
                int64_t* out_index, bool* nan_seen) {
  switch (order) {
    case kMagnitude: return collect_t<kMagnitude>(bits, begin, end, t, out_bits, out_index, nan_seen);
    case kLargest: return collect_t<kLargest>(bits, begin, end, t, out_bits, out_index, nan_seen);
    default: return collect_t<kSmallest>(bits, begin, end, t, out_bits, out_index, nan_seen);
  }
}

template <int FEEDBACK, bool NESTEROV, bool SCALED>
int64_t dgc_update_collect_t(const float* g, float* u, float* v, int64_t begin, int64_t end, float momentum,
                             float scale, uint32_t t, uint32_t* out_bits, int64_t* out_index) {
  const __m256 vm = _mm256_set1_ps(momentum), vs = _mm256_set1_ps(scale);
  const __m256i absmask = _mm256_set1_epi32(0x7fffffff), vt = _mm256_set1_epi32((int)t);
  int64_t w = 0, i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 vi = update8<FEEDBACK, NESTEROV, SCALED>(g, u, v, i, vm, vs);
    const __m256i key = _mm256_and_si256(_mm256_castps_si256(vi), absmask);
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(at_least(key, vt)));
    if (m) {
      alignas(32) uint32_t vb[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(vb), _mm256_castps_si256(vi));
      do {
        const int j = __builtin_ctz(m);
        m &= m - 1;
        out_bits[w] = vb[j];
        out_index[w] = i + j;
        w++;
      } while (m);
    }
  }
  return w + dgc_update_collect_scalar(g, u, v, i, end, FEEDBACK, NESTEROV, momentum, SCALED, scale, t, out_bits + w,
                                       out_index + w);
}

int64_t dgc_update_collect(const float* g, float* u, float* v, int64_t begin, int64_t end, int feedback,
                           bool nesterov, float momentum, bool scaled, float scale, uint32_t t, uint32_t* out_bits,
                           int64_t* out_index) {
#define QK_DGC_CASE(FB, NE)                                                                                   \
  if (feedback == FB && nesterov == NE)                                                                       \
    return scaled ? dgc_update_collect_t<FB, NE, true>(g, u, v, begin, end, momentum, scale, t, out_bits, out_index) \
                  : dgc_update_collect_t<FB, NE, false>(g, u, v, begin, end, momentum, scale, t, out_bits, out_index);
  QK_DGC_CASE(0, false)
  QK_DGC_CASE(1, false)
  QK_DGC_CASE(2, false)
  QK_DGC_CASE(2, true)
#undef QK_DGC_CASE
  return dgc_update_collect_scalar(g, u, v, begin, end, feedback, nesterov, momentum, scaled, scale, t, out_bits,
                                   out_index);
}

// 32 elements per step: exponent all ones <=> NaN or Inf; the block holding the first one is
// rescanned in order for its lowest index.
int64_t find_nonfinite(const uint32_t* bits, int64_t begin, int64_t end) {
  const __m256i expo = _mm256_set1_epi32(0x7f800000);
  int64_t i = begin;
  for (; i + 32 <= end; i += 32) {
    __m256i e0 = _mm256_cmpeq_epi32(_mm256_and_si256(load8(bits + i), expo), expo);
    __m256i e1 = _mm256_cmpeq_epi32(_mm256_and_si256(load8(bits + i + 8), expo), expo);
    __m256i e2 = _mm256_cmpeq_epi32(_mm256_and_si256(load8(bits + i + 16), expo), expo);
    __m256i e3 = _mm256_cmpeq_epi32(_mm256_and_si256(load8(bits + i + 24), expo), expo);
    __m256i any = _mm256_or_si256(_mm256_or_si256(e0, e1), _mm256_or_si256(e2, e3));
    if (!_mm256_testz_si256(any, any)) return find_nonfinite_scalar(bits, i, i + 32);
  }
  return find_nonfinite_scalar(bits, i, end);
}

}  // namespace

const CpuKernels& avx2_kernels() {
  static const CpuKernels k = {histogram, emit, count_at_least, sum_squares, dgc_update, collect, dgc_update_collect,
                               find_nonfinite};
  return k;
}

}  // namespace qk::topk
