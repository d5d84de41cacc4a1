// The 8-lane float32 pieces both SIMD attention kernels share (exp, horizontal sums, tail
// masking, the online-softmax update). Include only from a file compiled with AVX2 + FMA (the
// AVX-512 file is too). Internal linkage on purpose: each kernel file gets its own copy, built
// with its own target flags, so the linker can never hand the AVX2 path a copy built for AVX-512.
#pragma once
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

namespace qk::attention {
namespace {

// exp(x) for float32 lanes: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r
// (relative error ~2e-7), 2^n by exponent arithmetic. Lanes below -87.3 (and -inf) give 0.
inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447505531f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(underflow, result);
}

// Lane g of the result = the sum of the 8 lanes of v[g].
inline __m256 transpose_sum8(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Lanes of tokens at or past `valid_tokens` (of a step of 8 / GT tokens) get -inf: weight exactly 0.
template <int GT>
inline __m256 mask_tail(__m256 sc, int64_t valid_tokens) {
  if (valid_tokens * GT >= 8) return sc;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i valid = _mm256_set1_epi32((int)(valid_tokens * GT));
  return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), sc, _mm256_castsi256_ps(_mm256_cmpgt_epi32(valid, lane)));
}

// Online-softmax update of GT heads over `steps` vectors of scores p (lane j: head j % GT):
// p becomes exp(score - m_new), m and l are updated, alpha[g] = exp(m_old - m_new) (0 when
// there was no old state).
template <int GT>
inline void softmax_update(float* p, int64_t steps, float* m, float* l, float* alpha) {
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  for (int64_t i = 0; i < steps; i++) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(p + 8 * i));
  alignas(32) float lane_max[8], m_lanes[8];
  _mm256_store_ps(lane_max, vmax);
  for (int g = 0; g < GT; g++) {
    float mx = lane_max[g];
    for (int j = g + GT; j < 8; j += GT) mx = fmaxf(mx, lane_max[j]);
    const float m_new = fmaxf(m[g], mx);
    alpha[g] = m[g] == -INFINITY ? 0.0f : expf(m[g] - m_new);
    m[g] = m_new;
  }
  for (int j = 0; j < 8; j++) m_lanes[j] = m[j % GT];
  const __m256 vm = _mm256_load_ps(m_lanes);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t i = 0; i < steps; i++) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + 8 * i), vm));
    _mm256_storeu_ps(p + 8 * i, e);
    sum = _mm256_add_ps(sum, e);
  }
  alignas(32) float lane_sum[8];
  _mm256_store_ps(lane_sum, sum);
  for (int g = 0; g < GT; g++) {
    float total = 0.0f;
    for (int j = g; j < 8; j += GT) total += lane_sum[j];
    l[g] = l[g] * alpha[g] + total;
  }
}

}  // namespace
}  // namespace qk::attention
