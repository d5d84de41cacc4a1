// Paged decode attention for AVX2 + FMA + F16C. Compiled with those flags only in this file and
// reached only after cpuid says the CPU has them.
//
// Per tile of 8-64 tokens (decode_tile_tokens: the tile's K rows of all KV heads fit in L1),
// per KV head, and per tile of 4 (then 2, 1) query heads of its group: scores for every token
// of the tile (2 tokens x 4 heads per step, each K vector feeding several heads), an
// online-softmax update, then V accumulated over 4 heads x 16 output lanes in registers.
// Tiles are the outer loop, so every K/V row comes from memory once per group; the head tiles
// after the first re-read it from cache, and the next tile is prefetched while this one runs.
// BF16 rows are widened 16 elements at a time into even/odd vectors (see Rows).
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attention/attention_cpu.h"
#include "attention/attention_simd8.h"
#include "qkern.h"

namespace qk::attention {
namespace {

// One step along head_dim: W elements of a K/V row widened to NV float vectors. F32 and F16
// take 8 elements into one vector. BF16 with head_dim % 16 == 0 takes 16 elements (one 32-byte
// load) into two vectors: the even elements (shifted up from the low half of each 32-bit word)
// and the odd ones (the high half with the low half masked off): two cheap integer ops per 16
// elements instead of a widening shuffle and a shift per 8. The dot products and the output
// accumulators then use the same even/odd order of each 16 elements ("permuted" q and acc),
// undone once when the output is written. BF16 with head_dim % 16 == 8 widens 8 at a time.
template <int DT, bool EO>
struct Rows {
  static constexpr int W = EO ? 16 : 8, NV = EO ? 2 : 1;
  static inline void load(const void* base, int64_t i, __m256* out) {
    if constexpr (EO) {
      const __m256i w = _mm256_loadu_si256((const __m256i*)((const uint16_t*)base + i));
      out[0] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
      out[1] = _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xFFFF0000u)));
    } else if constexpr (DT == QK_F16) {
      out[0] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)base + i)));
    } else if constexpr (DT == QK_BF16) {
      out[0] = _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)base + i))), 16));
    } else {
      out[0] = _mm256_loadu_ps((const float*)base + i);
    }
  }
};

// Tokens of V accumulated per pass over the output lanes: their rows stay in L1 while head_dim
// is walked for every head of the group.
constexpr int64_t kVTile = 16;

// Accumulates V for head_dim [d, d + CH*W) of GT heads over tokens [t0, t1):
// acc[g][d..] = acc[g][d..] * alpha[g] (first token tile only) + sum_t p[t][g] * V[t][d..].
template <int DT, bool EO, int GT, int CH>
inline void accumulate_v(const void* v, const int64_t* v_rows, int64_t head_off, int64_t t0, int64_t t1, int d, int D,
                         const float* p, const float* alpha, float* acc) {
  using R = Rows<DT, EO>;
  constexpr int N = CH * R::NV;  // vectors per head
  __m256 o[GT][N];
  for (int g = 0; g < GT; g++)
    for (int c = 0; c < N; c++) {
      o[g][c] = _mm256_loadu_ps(acc + g * D + d + 8 * c);
      if (t0 == 0) o[g][c] = _mm256_mul_ps(o[g][c], _mm256_set1_ps(alpha[g]));
    }
  for (int64_t t = t0; t < t1; t++) {
    __m256 vv[N];
    for (int c = 0; c < CH; c++) R::load(v, v_rows[t] + head_off + d + R::W * c, vv + c * R::NV);
    for (int g = 0; g < GT; g++) {
      const __m256 pg = _mm256_broadcast_ss(p + t * GT + g);
      for (int c = 0; c < N; c++) o[g][c] = _mm256_fmadd_ps(pg, vv[c], o[g][c]);
    }
  }
  for (int g = 0; g < GT; g++)
    for (int c = 0; c < N; c++) _mm256_storeu_ps(acc + g * D + d + 8 * c, o[g][c]);
}

// Most lines (of K, and as many of V) a score step prefetches before the V passes take a share.
// Measured on Zen 3: MHA rows (one score step per KV head and tile, 32 lines each) ran 1.15-1.3x
// faster with their prefetches spread over the V passes; GQA rows (4-8 lines per step) ran 1-4%
// slower.
constexpr int64_t kPrefetchBurst = 8;

// Scores of TT = 8 / GT tokens (rows row[0..TT), element offsets) for GT heads (q: GT x D, in
// the Rows<DT, EO> order), scaled, as one vector: lane tt * GT + g is token tt, head g.
// 8 independent FMA chains (FMA latency x throughput) and every loaded vector feeds several
// FMAs: with 4 heads the K vectors of both tokens are widened first and each q vector, loaded
// once, serves the 2 tokens (2 + 4 NV loads per 8 NV FMAs); with 1 or 2 heads the q vectors stay
// in registers and each K vector serves the GT heads.
template <int DT, bool EO, int GT>
inline __m256 score_step(const void* k, const int64_t* row, int D, const float* q, __m256 vscale) {
  using R = Rows<DT, EO>;
  constexpr int TT = 8 / GT;
  __m256 dot[8];
  for (int j = 0; j < 8; j++) dot[j] = _mm256_setzero_ps();
  for (int d = 0; d < D; d += R::W) {
    if constexpr (GT == 4) {
      __m256 kv[TT][R::NV];
      for (int tt = 0; tt < TT; tt++) R::load(k, row[tt] + d, kv[tt]);
      for (int n = 0; n < R::NV; n++)
        for (int g = 0; g < GT; g++) {
          __m256 qv = _mm256_loadu_ps(q + g * D + d + 8 * n);
          // one load for both tokens: keeps the compiler from folding it into each FMA
          asm("" : "+x"(qv));
          for (int tt = 0; tt < TT; tt++) dot[tt * GT + g] = _mm256_fmadd_ps(qv, kv[tt][n], dot[tt * GT + g]);
        }
    } else {
      __m256 qr[GT][R::NV];
      for (int g = 0; g < GT; g++)
        for (int n = 0; n < R::NV; n++) qr[g][n] = _mm256_loadu_ps(q + g * D + d + 8 * n);
      for (int tt = 0; tt < TT; tt++) {
        __m256 kv[R::NV];
        R::load(k, row[tt] + d, kv);
        for (int g = 0; g < GT; g++)
          for (int n = 0; n < R::NV; n++) dot[tt * GT + g] = _mm256_fmadd_ps(qr[g][n], kv[n], dot[tt * GT + g]);
      }
    }
  }
  return _mm256_mul_ps(transpose_sum8(dot), vscale);
}

// V for GT heads over tokens [t0, t1), all of head_dim: CH steps along head_dim per pass, so
// GT * CH * NV = 8 independent accumulators, GT + CH loads per 8 FMAs. Before each pass the
// next `lines` lines of pf are prefetched.
template <int DT, bool EO, int GT>
inline void accumulate_v_rows(const void* v, const int64_t* v_rows, int64_t head_off, int64_t t0, int64_t t1, int D,
                              const float* p, const float* alpha, float* acc, Prefetch& pf, int64_t lines) {
  using R = Rows<DT, EO>;
  constexpr int CH = 8 / GT / R::NV;
  constexpr int span = CH * R::W;
  int d = 0;
  for (; d + span <= D; d += span) {
    if (pf.left) prefetch_lines(pf, lines);
    accumulate_v<DT, EO, GT, CH>(v, v_rows, head_off, t0, t1, d, D, p, alpha, acc);
  }
  for (; d < D; d += R::W) {
    if (pf.left) prefetch_lines(pf, lines);
    accumulate_v<DT, EO, GT, 1>(v, v_rows, head_off, t0, t1, d, D, p, alpha, acc);
  }
}

// Passes accumulate_v_rows makes over head_dim D.
template <int DT, bool EO, int GT>
constexpr int v_passes(int D) {
  using R = Rows<DT, EO>;
  constexpr int span = 8 / GT / R::NV * R::W;
  return D / span + D % span / R::W;
}

// Scores of one tile for a head tile of GT heads (q: GT x D): one vector per 8 / GT tokens
// of the 8 tokens at rows row[0..8) (t: the first one's index in the tile), stored at p.
// Before each step, the next `lines` lines of pf are prefetched.
template <int DT, bool EO, int GT>
inline void score_rows(const void* k, const int64_t* row, int64_t t, int64_t tokens, int D, const float* q,
                       __m256 vscale, float* p, Prefetch& pf, int64_t lines) {
  constexpr int TT = 8 / GT;
  for (int i = 0; i < GT; i++) {
    if (pf.left) prefetch_lines(pf, lines);
    _mm256_storeu_ps(p + 8 * i, mask_tail<GT>(score_step<DT, EO, GT>(k, row + i * TT, D, q, vscale), tokens - t - i * TT));
  }
}

// One tile of up to kMaxDecodeTile tokens for one KV head and its whole query group; token t's K row
// starts at element k_rows[t] + head_off (V: v_rows[t] + head_off). Heads are taken 4 at a time
// (then 2 and 1 for the rest of the group; see score_step for why 4).
// The loops run token-major: 8 tokens' K rows are scored for every head of the group before the
// next 8, and V is accumulated for every head over a chunk of kVTile tokens before the next
// chunk. A KV head's rows are a whole number of 2 KiB apart in memory (num_kv_heads * head_dim
// elements per token), so they all fall into a handful of L1 sets; walking the whole tile per
// head tile instead would evict a row before the next head tile reads it.
// s: per head tile, scores then probabilities as [token][GT] (GT * ceil(tokens / 8) * 8 floats);
// m, l, alpha: running max, running sum and rescale factor per head; acc: group x D unnormalized
// output (q and acc in the Rows<DT, EO> order of head_dim). pf: a slice of the next tile,
// prefetched a part per 8 tokens.
template <int DT, bool EO>
void page_tiles(const CacheView& c, const int64_t* k_rows, const int64_t* v_rows, int64_t head_off, int64_t tokens,
                const float* q, int group, float scale, float* s, float* m, float* l, float* alpha, float* acc,
                Prefetch& pf) {
  const int D = c.head_dim;
  const int quads = group / 4, pair = group % 4 >= 2 ? 1 : 0, single = group % 2;
  const int g_pair = quads * 4, g_single = quads * 4 + 2 * pair;
  const __m256 vscale = _mm256_set1_ps(scale);
  const int64_t steps = (tokens + 7) / 8;
  const int64_t per_head = 8 * steps;  // floats of s per head: head tile j of GT heads at s + j0 * per_head
  // the prefetches are spread evenly over the score steps of the tile (one per 8 / GT tokens of
  // each head tile), and over its V passes too (one per pass over head_dim) when that would
  // still leave more than kPrefetchBurst lines per step: a burst would stall on the cache's miss
  // buffers, while prefetches issued as late as the V passes arrive later than needed
  const int64_t score_slots = steps * group;
  const int64_t v_slots = (tokens + kVTile - 1) / kVTile *
                          (quads * v_passes<DT, EO, 4>(D) + pair * v_passes<DT, EO, 2>(D) + single * v_passes<DT, EO, 1>(D));
  const int64_t slots = pf.left > kPrefetchBurst * score_slots ? score_slots + v_slots : score_slots;
  const int64_t per_step = (pf.left + slots - 1) / slots;
  for (int64_t step = 0; step < steps; step++) {
    const int64_t t = step * 8;
    int64_t row[8];
    // a token past the tile's end re-reads the last valid row; its score is masked
    for (int tt = 0; tt < 8; tt++) row[tt] = k_rows[t + tt < tokens ? t + tt : tokens - 1] + head_off;
    for (int j = 0; j < quads; j++)
      score_rows<DT, EO, 4>(c.k, row, t, tokens, D, q + (int64_t)4 * j * D, vscale, s + 4 * j * per_head + 4 * t, pf,
                            per_step);
    if (pair)
      score_rows<DT, EO, 2>(c.k, row, t, tokens, D, q + (int64_t)g_pair * D, vscale, s + g_pair * per_head + 2 * t, pf,
                            per_step);
    if (single)
      score_rows<DT, EO, 1>(c.k, row, t, tokens, D, q + (int64_t)g_single * D, vscale, s + g_single * per_head + t, pf,
                            per_step);
  }

  for (int j = 0; j < quads; j++)
    softmax_update<4>(s + 4 * j * per_head, 4 * steps, m + 4 * j, l + 4 * j, alpha + 4 * j);
  if (pair) softmax_update<2>(s + g_pair * per_head, 2 * steps, m + g_pair, l + g_pair, alpha + g_pair);
  if (single) softmax_update<1>(s + g_single * per_head, steps, m + g_single, l + g_single, alpha + g_single);

  for (int64_t t0 = 0; t0 < tokens; t0 += kVTile) {
    const int64_t t1 = tokens < t0 + kVTile ? tokens : t0 + kVTile;
    for (int j = 0; j < quads; j++)
      accumulate_v_rows<DT, EO, 4>(c.v, v_rows, head_off, t0, t1, D, s + 4 * j * per_head, alpha + 4 * j,
                                   acc + (int64_t)4 * j * D, pf, per_step);
    if (pair)
      accumulate_v_rows<DT, EO, 2>(c.v, v_rows, head_off, t0, t1, D, s + g_pair * per_head, alpha + g_pair,
                                   acc + (int64_t)g_pair * D, pf, per_step);
    if (single)
      accumulate_v_rows<DT, EO, 1>(c.v, v_rows, head_off, t0, t1, D, s + g_single * per_head, alpha + g_single,
                                   acc + (int64_t)g_single * D, pf, per_step);
  }
}

void decode_avx2(const CacheView& c, const int32_t* pages, int64_t num_pages, int64_t last_page_len, const float* q,
                 int kv_heads, int group, float scale, float* out, float* lse, float* scratch) {
  const int D = c.head_dim;
  if (D % 8 != 0) {
    decode_scalar(c, pages, num_pages, last_page_len, q, kv_heads, group, scale, out, lse, scratch);
    return;
  }
  // BF16 rows as even/odd pairs of vectors (Rows<BF16, true>) when head_dim allows
  const bool eo = c.dtype == QK_BF16 && D % 16 == 0;
  // per KV head: acc (padded x D), m, l and alpha (padded each)
  const int padded = (group + 7) / 8 * 8;
  const int64_t head_floats = (int64_t)padded * D + 3 * padded;
  float* s = scratch + kv_heads * head_floats;  // the score buffer (decode_score_floats)
  const int64_t heads = (int64_t)kv_heads * group;
  // q in the order of head_dim the kernels use: each 16 elements as 8 even then 8 odd ones
  float* qp = s + decode_score_floats(group, c.block_size);
  if (eo) {
    for (int64_t i = 0; i < heads * D; i += 16)
      for (int j = 0; j < 8; j++) {
        qp[i + j] = q[i + 2 * j];
        qp[i + 8 + j] = q[i + 2 * j + 1];
      }
    q = qp;
  }
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
    float* alpha = l + padded;
    const float* qh = q + (int64_t)kvh * group * D;
    const int64_t head_off = (int64_t)kvh * D;
    switch (c.dtype) {
      case QK_F16:
        page_tiles<QK_F16, false>(c, k_rows, v_rows, head_off, n, qh, group, scale, s, m, l, alpha, acc, pf);
        break;
      case QK_BF16:
        if (eo)
          page_tiles<QK_BF16, true>(c, k_rows, v_rows, head_off, n, qh, group, scale, s, m, l, alpha, acc, pf);
        else
          page_tiles<QK_BF16, false>(c, k_rows, v_rows, head_off, n, qh, group, scale, s, m, l, alpha, acc, pf);
        break;
      default: page_tiles<QK_F32, false>(c, k_rows, v_rows, head_off, n, qh, group, scale, s, m, l, alpha, acc, pf); break;
    }
  });
  for (int kvh = 0; kvh < kv_heads; kvh++) {
    const float* acc = scratch + kvh * head_floats;
    const float* m = acc + (int64_t)padded * D;
    const float* l = m + padded;
    for (int g = 0; g < group; g++) {
      const int64_t h = (int64_t)kvh * group + g;
      const __m256 inv = _mm256_set1_ps(l[g] > 0.0f ? 1.0f / l[g] : 0.0f);
      const float* ag = acc + (int64_t)g * D;
      float* oh = out + h * D;
      if (eo) {  // back to the natural order: interleave each 8 even and 8 odd elements
        for (int d = 0; d < D; d += 16) {
          const __m256 e = _mm256_mul_ps(_mm256_loadu_ps(ag + d), inv);
          const __m256 o = _mm256_mul_ps(_mm256_loadu_ps(ag + d + 8), inv);
          const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
          _mm256_storeu_ps(oh + d, _mm256_permute2f128_ps(lo, hi, 0x20));
          _mm256_storeu_ps(oh + d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
        }
      } else {
        for (int d = 0; d < D; d += 8) _mm256_storeu_ps(oh + d, _mm256_mul_ps(_mm256_loadu_ps(ag + d), inv));
      }
      lse[h] = l[g] > 0.0f ? m[g] + logf(l[g]) : -INFINITY;
    }
  }
}

}  // namespace

const CpuKernels& avx2_kernels() {
  static const CpuKernels k = {decode_avx2};
  return k;
}

}  // namespace qk::attention
