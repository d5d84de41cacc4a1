// Paged decode attention for AVX2 + FMA + F16C. Compiled with those flags only in this file and
// reached only after cpuid says the CPU has them.
//
// Per page and per tile of up to 8 query heads of the group: scores for every token of the
// page (the K row is widened once per 8-lane chunk and multiplied into up to 8 accumulators,
// then one transposing reduction yields the 8 heads' scores as one vector), an online-softmax
// update done 8 heads at a time, then V accumulated 8 output lanes x up to 8 heads in
// registers. Pages are the outer loop, so every K/V page comes from memory once per group.
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attention/attention_cpu.h"
#include "qkern.h"

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

template <int DT>
inline __m256 load8(const void* base, int64_t i) {
  if constexpr (DT == QK_F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)base + i)));
  } else if constexpr (DT == QK_BF16) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)base + i))), 16));
  } else {
    return _mm256_loadu_ps((const float*)base + i);
  }
}

// Lane g of the result = the sum of the 8 lanes of v[g].
inline __m256 transpose_sum8(const __m256* v) {
  const __m256 t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// Tokens of V accumulated per pass over the output lanes: their rows stay in L1 while the
// D/8 chunks are walked.
constexpr int64_t kVTile = 32;

// One page for a tile of GT (1..8) query heads. s: 8 floats per token (lane g = head g);
// m, l: 8-lane running max and sum of the tile; acc: GT x D unnormalized output.
template <int DT, int GT>
void page_tile(const void* k, const void* v, int64_t k_row0, int64_t v_row0, int64_t token_stride, int64_t tokens,
               int D, const float* q, float scale, float* s, float* m, float* l, float* acc) {
  const __m256 vscale = _mm256_set1_ps(scale);
  __m256 page_max = _mm256_set1_ps(-INFINITY);
  for (int64_t t = 0; t < tokens; t++) {
    const int64_t row = k_row0 + t * token_stride;
    __m256 dot[8];
    for (int g = 0; g < 8; g++) dot[g] = _mm256_setzero_ps();
    for (int d = 0; d < D; d += 8) {
      const __m256 kv = load8<DT>(k, row + d);
      for (int g = 0; g < GT; g++) dot[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * D + d), kv, dot[g]);
    }
    const __m256 sc = _mm256_mul_ps(transpose_sum8(dot), vscale);
    _mm256_storeu_ps(s + t * 8, sc);
    page_max = _mm256_max_ps(page_max, sc);
  }
  const __m256 m_old = _mm256_loadu_ps(m);
  const __m256 m_new = _mm256_max_ps(m_old, page_max);
  // exp8(-inf) is 0: an empty running state has weight exactly 0
  const __m256 alpha = exp8(_mm256_sub_ps(m_old, m_new));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t t = 0; t < tokens; t++) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t * 8), m_new));
    _mm256_storeu_ps(s + t * 8, e);
    sum = _mm256_add_ps(sum, e);
  }
  _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), alpha, sum));
  _mm256_storeu_ps(m, m_new);
  alignas(32) float alpha_lanes[8];
  _mm256_store_ps(alpha_lanes, alpha);

  for (int64_t t0 = 0; t0 < tokens; t0 += kVTile) {
    const int64_t t1 = tokens < t0 + kVTile ? tokens : t0 + kVTile;
    for (int d = 0; d < D; d += 8) {
      __m256 o[GT];
      for (int g = 0; g < GT; g++) {
        o[g] = _mm256_loadu_ps(acc + g * D + d);
        if (t0 == 0) o[g] = _mm256_mul_ps(o[g], _mm256_set1_ps(alpha_lanes[g]));
      }
      for (int64_t t = t0; t < t1; t++) {
        const __m256 vv = load8<DT>(v, v_row0 + t * token_stride + d);
        for (int g = 0; g < GT; g++) o[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(s + t * 8 + g), vv, o[g]);
      }
      for (int g = 0; g < GT; g++) _mm256_storeu_ps(acc + g * D + d, o[g]);
    }
  }
}

template <int DT>
void page_tiles(const CacheView& c, int64_t k_row0, int64_t v_row0, int64_t tokens, const float* q, int group,
                float scale, float* s, float* m, float* l, float* acc) {
  const int D = c.head_dim;
  for (int g0 = 0; g0 < group; g0 += 8) {
    const int gt = group - g0 < 8 ? group - g0 : 8;
    const float* qt = q + (int64_t)g0 * D;
    float* at = acc + (int64_t)g0 * D;
    float* mt = m + g0;
    float* lt = l + g0;
#define QK_TILE(N) \
  case N: page_tile<DT, N>(c.k, c.v, k_row0, v_row0, c.token_stride, tokens, D, qt, scale, s, mt, lt, at); break;
    switch (gt) {
      QK_TILE(1) QK_TILE(2) QK_TILE(3) QK_TILE(4) QK_TILE(5) QK_TILE(6) QK_TILE(7) QK_TILE(8)
    }
#undef QK_TILE
  }
}

void decode_avx2(const CacheView& c, int kv_head, const int32_t* pages, int64_t num_pages, int64_t last_page_len,
                 const float* q, int group, float scale, float* out, float* lse, float* scratch) {
  const int D = c.head_dim;
  if (D % 8 != 0) {
    decode_scalar(c, kv_head, pages, num_pages, last_page_len, q, group, scale, out, lse, scratch);
    return;
  }
  const int padded = (group + 7) / 8 * 8;
  float* acc = scratch;                  // padded x D
  float* m = acc + (int64_t)padded * D;  // padded: lanes past `group` are computed and ignored
  float* l = m + padded;
  float* s = l + padded;                 // block_size x 8
  memset(acc, 0, sizeof(float) * (size_t)group * (size_t)D);
  for (int g = 0; g < padded; g++) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  for (int64_t p = 0; p < num_pages; p++) {
    const int64_t tokens = p + 1 == num_pages ? last_page_len : c.block_size;
    if (p + 1 < num_pages) {  // the next page is at an unrelated address: start its first rows early
      const int64_t es = c.dtype == QK_F32 ? 4 : 2;
      _mm_prefetch((const char*)c.k + (pages[p + 1] * c.k_block_stride + (int64_t)kv_head * D) * es, _MM_HINT_T0);
      _mm_prefetch((const char*)c.v + (pages[p + 1] * c.v_block_stride + (int64_t)kv_head * D) * es, _MM_HINT_T0);
    }
    const int64_t k_row0 = pages[p] * c.k_block_stride + (int64_t)kv_head * D;
    const int64_t v_row0 = pages[p] * c.v_block_stride + (int64_t)kv_head * D;
    switch (c.dtype) {
      case QK_F16: page_tiles<QK_F16>(c, k_row0, v_row0, tokens, q, group, scale, s, m, l, acc); break;
      case QK_BF16: page_tiles<QK_BF16>(c, k_row0, v_row0, tokens, q, group, scale, s, m, l, acc); break;
      default: page_tiles<QK_F32>(c, k_row0, v_row0, tokens, q, group, scale, s, m, l, acc); break;
    }
  }
  for (int g = 0; g < group; g++) {
    const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    for (int d = 0; d < D; d += 8)
      _mm256_storeu_ps(out + (int64_t)g * D + d, _mm256_mul_ps(_mm256_loadu_ps(acc + (int64_t)g * D + d), vinv));
    lse[g] = l[g] > 0.0f ? m[g] + logf(l[g]) : -INFINITY;
  }
}

}  // namespace

const CpuKernels& avx2_kernels() {
  static const CpuKernels k = {decode_avx2};
  return k;
}

}  // namespace qk::attention
