// Paged decode attention for AVX-512 (F, BW, VL, DQ). Compiled with those flags only in this
// file and reached only after cpuid says the CPU has them. The structure is the AVX2 kernel's
// (attention_avx2.cpp) with 16-lane chunks of head_dim; head_dim not a multiple of 16 takes the
// scalar path.
//
// The development machine has no AVX-512: this file is compiled in CI but has never run.
#include <immintrin.h>
#include <math.h>
#include <string.h>

// GCC 12 warns inside its own AVX-512 intrinsic headers (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "attention/attention_cpu.h"
#include "qkern.h"

namespace qk::attention {
namespace {

// exp(x) for 8 float32 lanes (head scores), as in the AVX2 file; lanes below -87.3 give 0.
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
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

template <int DT>
inline __m512 load16(const void* base, int64_t i) {
  if constexpr (DT == QK_F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const uint16_t*)base + i)));
  } else if constexpr (DT == QK_BF16) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)((const uint16_t*)base + i))), 16));
  } else {
    return _mm512_loadu_ps((const float*)base + i);
  }
}

// Lane g of the result = the sum of the 16 lanes of v[g].
inline __m256 transpose_sum8(const __m512* v) {
  __m256 h[8];
  for (int g = 0; g < 8; g++)
    h[g] = _mm256_add_ps(_mm512_castps512_ps256(v[g]),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[g]), 1)));
  const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

constexpr int64_t kVTile = 32;

template <int DT, int GT>
void page_tile(const void* k, const void* v, int64_t k_row0, int64_t v_row0, int64_t token_stride, int64_t tokens,
               int D, const float* q, float scale, float* s, float* m, float* l, float* acc) {
  const __m256 vscale = _mm256_set1_ps(scale);
  __m256 page_max = _mm256_set1_ps(-INFINITY);
  for (int64_t t = 0; t < tokens; t++) {
    const int64_t row = k_row0 + t * token_stride;
    __m512 dot[8];
    for (int g = 0; g < 8; g++) dot[g] = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 16) {
      const __m512 kv = load16<DT>(k, row + d);
      for (int g = 0; g < GT; g++) dot[g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * D + d), kv, dot[g]);
    }
    const __m256 sc = _mm256_mul_ps(transpose_sum8(dot), vscale);
    _mm256_storeu_ps(s + t * 8, sc);
    page_max = _mm256_max_ps(page_max, sc);
  }
  const __m256 m_old = _mm256_loadu_ps(m);
  const __m256 m_new = _mm256_max_ps(m_old, page_max);
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
    for (int d = 0; d < D; d += 16) {
      __m512 o[GT];
      for (int g = 0; g < GT; g++) {
        o[g] = _mm512_loadu_ps(acc + g * D + d);
        if (t0 == 0) o[g] = _mm512_mul_ps(o[g], _mm512_set1_ps(alpha_lanes[g]));
      }
      for (int64_t t = t0; t < t1; t++) {
        const __m512 vv = load16<DT>(v, v_row0 + t * token_stride + d);
        for (int g = 0; g < GT; g++) o[g] = _mm512_fmadd_ps(_mm512_set1_ps(s[t * 8 + g]), vv, o[g]);
      }
      for (int g = 0; g < GT; g++) _mm512_storeu_ps(acc + g * D + d, o[g]);
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
#define QK_TILE(N)                                                                                          \
  case N:                                                                                                   \
    page_tile<DT, N>(c.k, c.v, k_row0, v_row0, c.token_stride, tokens, D, qt, scale, s, m + g0, l + g0, at); \
    break;
    switch (gt) {
      QK_TILE(1) QK_TILE(2) QK_TILE(3) QK_TILE(4) QK_TILE(5) QK_TILE(6) QK_TILE(7) QK_TILE(8)
    }
#undef QK_TILE
  }
}

void decode_avx512(const CacheView& c, int kv_head, const int32_t* pages, int64_t num_pages, int64_t last_page_len,
                   const float* q, int group, float scale, float* out, float* lse, float* scratch) {
  const int D = c.head_dim;
  if (D % 16 != 0) {
    decode_scalar(c, kv_head, pages, num_pages, last_page_len, q, group, scale, out, lse, scratch);
    return;
  }
  const int padded = (group + 7) / 8 * 8;
  float* acc = scratch;
  float* m = acc + (int64_t)padded * D;
  float* l = m + padded;
  float* s = l + padded;
  memset(acc, 0, sizeof(float) * (size_t)group * (size_t)D);
  for (int g = 0; g < padded; g++) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  const int64_t es = c.dtype == QK_F32 ? 4 : 2;
  for (int64_t p = 0; p < num_pages; p++) {
    const int64_t tokens = p + 1 == num_pages ? last_page_len : c.block_size;
    if (p + 1 < num_pages) {
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
    const __m512 vinv = _mm512_set1_ps(inv);
    for (int d = 0; d < D; d += 16)
      _mm512_storeu_ps(out + (int64_t)g * D + d, _mm512_mul_ps(_mm512_loadu_ps(acc + (int64_t)g * D + d), vinv));
    lse[g] = l[g] > 0.0f ? m[g] + logf(l[g]) : -INFINITY;
  }
}

}  // namespace

const CpuKernels& avx512_kernels() {
  static const CpuKernels k = {decode_avx512};
  return k;
}

}  // namespace qk::attention
