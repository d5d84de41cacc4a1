// Paged decode attention for AVX-512 (F, BW, VL, DQ). Compiled with those flags only in this
// file and reached only after cpuid says the CPU has them. The algorithm is the AVX2 kernel's
// (attention_avx2.cpp, which explains it) with 16-lane chunks of head_dim for the K dot products
// and the V accumulation; head_dim not a multiple of 16 takes the scalar path.
//
// The development machine has no AVX-512: this file is compiled in CI but has never run here;
// the Java and native tests run it automatically on a CPU that has it.
#include <immintrin.h>
#include <math.h>
#include <string.h>

// GCC 12 warns inside its own AVX-512 intrinsic headers (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "attention/attention_cpu.h"
#include "attention/attention_simd8.h"
#include "qkern.h"

namespace qk::attention {
namespace {

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
inline __m256 transpose_sum16(const __m512* v) {
  __m256 h[8];
  for (int g = 0; g < 8; g++)
    h[g] = _mm256_add_ps(_mm512_castps512_ps256(v[g]),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[g]), 1)));
  return transpose_sum8(h);
}

// Tokens of V accumulated per pass over the output lanes: their rows stay in L1 while the
// D/8 chunks are walked.
constexpr int64_t kVTile = 32;

// Accumulates V for output chunks [d, d + 16*CH) of GT heads over tokens [t0, t1):
// acc[g][d..] = acc[g][d..] * alpha[g] (first token tile only) + sum_t p[t][g] * V[t][d..].
template <int DT, int GT, int CH>
inline void accumulate_v(const void* v, const int64_t* v_rows, int64_t head_off, int64_t t0, int64_t t1, int d, int D,
                         const float* p, const float* alpha, float* acc) {
  __m512 o[GT][CH];
  for (int g = 0; g < GT; g++)
    for (int c = 0; c < CH; c++) {
      o[g][c] = _mm512_loadu_ps(acc + g * D + d + 16 * c);
      if (t0 == 0) o[g][c] = _mm512_mul_ps(o[g][c], _mm512_set1_ps(alpha[g]));
    }
  for (int64_t t = t0; t < t1; t++) {
    __m512 vv[CH];
    for (int c = 0; c < CH; c++) vv[c] = load16<DT>(v, v_rows[t] + head_off + d + 16 * c);
    for (int g = 0; g < GT; g++) {
      const __m512 pg = _mm512_set1_ps(p[t * GT + g]);
      for (int c = 0; c < CH; c++) o[g][c] = _mm512_fmadd_ps(pg, vv[c], o[g][c]);
    }
  }
  for (int g = 0; g < GT; g++)
    for (int c = 0; c < CH; c++) _mm512_storeu_ps(acc + g * D + d + 16 * c, o[g][c]);
}

// One tile of tokens for a tile of GT (1..8) query heads; token t's K row starts at element
// k_rows[t] + head_off (V: v_rows[t] + head_off). p: scores, then probabilities, as
// [token][GT]; m, l: running max and sum per head; acc: GT x D unnormalized output.
// With GT dividing 8, TT = 8 / GT tokens are scored per step so 8 independent FMA chains are
// in flight even for MQA-like groups of 1, and one transposing reduction yields all 8 scores.
// pf: a slice of the next page, prefetched a part per step.
template <int DT, int GT>
void page_tile(const void* k, const void* v, const int64_t* k_rows, const int64_t* v_rows, int64_t head_off,
               int64_t tokens, int D, const float* q, float scale, float* p, float* m, float* l, float* acc,
               Prefetch& pf) {
  constexpr bool kLanesAreHeads = 8 % GT == 0;  // lane j of an 8-float chunk of p is head j % GT
  constexpr int TT = kLanesAreHeads ? 8 / GT : 1;
  const __m256 vscale = _mm256_set1_ps(scale);
  const int64_t steps = (tokens + TT - 1) / TT;
  const int64_t lines_per_step = (pf.left + steps - 1) / steps;
  for (int64_t step = 0; step < steps; step++) {
    const int64_t t = step * TT;
    if (pf.left) prefetch_lines(pf, lines_per_step);
    __m512 dot[8];
    for (int j = 0; j < 8; j++) dot[j] = _mm512_setzero_ps();
    for (int d = 0; d < D; d += 16) {
      if constexpr (GT <= 4) {  // q chunks in registers, reused by the TT tokens (one load each)
        __m512 qr[GT];
        for (int g = 0; g < GT; g++) qr[g] = _mm512_loadu_ps(q + g * D + d);
        for (int tt = 0; tt < TT; tt++) {
          // a token past the tile's end re-reads the last valid row; its score is masked below
          const __m512 kv = load16<DT>(k, k_rows[t + tt < tokens ? t + tt : tokens - 1] + head_off + d);
          for (int g = 0; g < GT; g++) dot[tt * GT + g] = _mm512_fmadd_ps(qr[g], kv, dot[tt * GT + g]);
        }
      } else {  // TT = 1; q comes from L1 as the FMA's memory operand (registers are all taken)
        const __m512 kv = load16<DT>(k, k_rows[t < tokens ? t : tokens - 1] + head_off + d);
        for (int g = 0; g < GT; g++) dot[g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * D + d), kv, dot[g]);
      }
    }
    __m256 sc = _mm256_mul_ps(transpose_sum16(dot), vscale);
    if (kLanesAreHeads) {
      _mm256_storeu_ps(p + t * GT, mask_tail<GT>(sc, tokens - t));
    } else {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, sc);
      for (int g = 0; g < GT; g++) p[t * GT + g] = lanes[g];
    }
  }

  alignas(32) float alpha[8];
  if (kLanesAreHeads) {
    // p holds steps * 8 floats; lane j belongs to head j % GT
    softmax_update<GT>(p, steps * TT * GT / 8, m, l, alpha);
  } else {
    for (int g = 0; g < GT; g++) {
      float mx = -INFINITY;
      for (int64_t t = 0; t < tokens; t++) mx = fmaxf(mx, p[t * GT + g]);
      const float m_new = fmaxf(m[g], mx);
      alpha[g] = m[g] == -INFINITY ? 0.0f : expf(m[g] - m_new);
      float total = 0.0f;
      for (int64_t t = 0; t < tokens; t++) {
        const float e = expf(p[t * GT + g] - m_new);
        p[t * GT + g] = e;
        total += e;
      }
      l[g] = l[g] * alpha[g] + total;
      m[g] = m_new;
    }
  }

  // V: CH output chunks per pass so GT * CH = 8 independent accumulators
  constexpr int CH = kLanesAreHeads ? 8 / GT : 1;
  for (int64_t t0 = 0; t0 < tokens; t0 += kVTile) {
    const int64_t t1 = tokens < t0 + kVTile ? tokens : t0 + kVTile;
    int d = 0;
    for (; d + 16 * CH <= D; d += 16 * CH)
      accumulate_v<DT, GT, CH>(v, v_rows, head_off, t0, t1, d, D, p, alpha, acc);
    for (; d < D; d += 16) accumulate_v<DT, GT, 1>(v, v_rows, head_off, t0, t1, d, D, p, alpha, acc);
  }
}

template <int DT>
void page_tiles(const CacheView& c, const int64_t* k_rows, const int64_t* v_rows, int64_t head_off, int64_t tokens,
                const float* q, int group, float scale, float* s, float* m, float* l, float* acc, Prefetch& pf) {
  const int D = c.head_dim;
  Prefetch none = pf;
  none.left = 0;
  // Tiles of at most 4 heads: with 4 (2 tokens per step, q in registers; 2 output chunks per V
  // pass) there are 0.75 loads per FMA, with 8 heads 1.125 (q and the probabilities come from L1
  // for every FMA), and the loads, not the FMAs, would set the pace. A group of 8 reads each row
  // twice, the second time from cache.
  for (int g0 = 0; g0 < group; g0 += 4) {
    const int gt = group - g0 < 4 ? group - g0 : 4;
    const float* qt = q + (int64_t)g0 * D;
    float* at = acc + (int64_t)g0 * D;
    // only the first tile prefetches: later tiles of a large group find the rows in cache
    Prefetch& tile_pf = g0 == 0 ? pf : none;
#define QK_TILE(N)                                                                                               \
  case N:                                                                                                        \
    page_tile<DT, N>(c.k, c.v, k_rows, v_rows, head_off, tokens, D, qt, scale, s, m + g0, l + g0, at, tile_pf); \
    break;
    switch (gt) {
      QK_TILE(1) QK_TILE(2) QK_TILE(3) QK_TILE(4)
    }
#undef QK_TILE
  }
}

void decode_avx512(const CacheView& c, const int32_t* pages, int64_t num_pages, int64_t last_page_len, const float* q,
                 int kv_heads, int group, float scale, float* out, float* lse, float* scratch) {
  const int D = c.head_dim;
  if (D % 16 != 0) {
    decode_scalar(c, pages, num_pages, last_page_len, q, kv_heads, group, scale, out, lse, scratch);
    return;
  }
  // per KV head: acc (padded x D), m and l (padded; lanes past `group` are computed and ignored)
  const int padded = (group + 7) / 8 * 8;
  const int64_t head_floats = (int64_t)padded * D + 2 * padded;
  float* s = scratch + kv_heads * head_floats;  // the score buffer (decode_score_floats)
  for (int kvh = 0; kvh < kv_heads; kvh++) {
    float* acc = scratch + kvh * head_floats;
    float* m = acc + (int64_t)padded * D;
    memset(acc, 0, sizeof(float) * (size_t)group * (size_t)D);
    for (int g = 0; g < padded; g++) {
      m[g] = -INFINITY;
      m[padded + g] = 0.0f;
    }
  }
  for_each_tile(c, pages, num_pages, last_page_len, kv_heads,
                [&](int kvh, const int64_t* k_rows, const int64_t* v_rows, int64_t n, Prefetch& pf) {
    float* acc = scratch + kvh * head_floats;
    float* m = acc + (int64_t)padded * D;
    float* l = m + padded;
    const float* qh = q + (int64_t)kvh * group * D;
    const int64_t head_off = (int64_t)kvh * D;
    switch (c.dtype) {
      case QK_F16: page_tiles<QK_F16>(c, k_rows, v_rows, head_off, n, qh, group, scale, s, m, l, acc, pf); break;
      case QK_BF16: page_tiles<QK_BF16>(c, k_rows, v_rows, head_off, n, qh, group, scale, s, m, l, acc, pf); break;
      default: page_tiles<QK_F32>(c, k_rows, v_rows, head_off, n, qh, group, scale, s, m, l, acc, pf); break;
    }
  });
  for (int kvh = 0; kvh < kv_heads; kvh++) {
    const float* acc = scratch + kvh * head_floats;
    const float* m = acc + (int64_t)padded * D;
    const float* l = m + padded;
    for (int g = 0; g < group; g++) {
      const int64_t h = (int64_t)kvh * group + g;
      const float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;
      const float* ag = acc + (int64_t)g * D;
      for (int d = 0; d < D; d += 16) _mm512_storeu_ps(out + h * D + d, _mm512_mul_ps(_mm512_loadu_ps(ag + d), _mm512_set1_ps(inv)));
      lse[h] = l[g] > 0.0f ? m[g] + logf(l[g]) : -INFINITY;
    }
  }
}

}  // namespace

const CpuKernels& avx512_kernels() {
  static const CpuKernels k = {decode_avx512};
  return k;
}

}  // namespace qk::attention
