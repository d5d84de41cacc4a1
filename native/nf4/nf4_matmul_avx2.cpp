// NF4 matmul, AVX2 + FMA. The NF4 table lookup is four VPSHUFB byte-plane lookups (one per
// byte of the float32 table entries; a 16-entry VPSHUFB table is exactly one NF4 code space)
// and two rounds of byte/word unpacks that assemble the floats. VPERMPS would need two
// lookups and a blend per 8 weights and runs at half the shuffle rate on Zen 3, so this was
// measured 1.6x faster. The order the unpacks produce is this path's permutation (perm64).
#include <immintrin.h>
#include <string.h>

#include "common/nf4.h"
#include "nf4/nf4_matmul_cpu.h"

namespace qk::nf4mm {
namespace {

constexpr float kTable[16] = QK_NF4_TABLE;

// constexpr so no constructor runs at library load (this file's code may only run after cpuid)
struct Perm {
  int q[64] = {};
  constexpr Perm() {
    // Within a 32-code vector, unpack round f (0..3) yields codes f*4..f*4+3 of each 128-bit
    // lane; high nibbles (even elements) fill positions 0..31, low nibbles (odd) 32..63.
    for (int half = 0; half < 2; half++)
      for (int f = 0; f < 4; f++)
        for (int lane = 0; lane < 2; lane++)
          for (int e = 0; e < 4; e++) {
            int byte = lane * 16 + f * 4 + e;
            q[half * 32 + f * 8 + lane * 4 + e] = 2 * byte + half;
          }
  }
};
constexpr Perm kPerm{};

struct Planes {
  __m256i b[4];
  Planes() {
    alignas(32) uint8_t t[4][32];
    for (int c = 0; c < 16; c++) {
      uint32_t u;
      memcpy(&u, &kTable[c], 4);
      for (int j = 0; j < 4; j++) t[j][c] = t[j][c + 16] = (uint8_t)(u >> (8 * j));
    }
    for (int j = 0; j < 4; j++) b[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(t[j]));
  }
};

// 32 codes (one per byte, 0..15) -> four vectors of 8 float32 table values.
template <class Sink>
inline void expand(__m256i codes, const Planes& t, Sink&& sink) {
  const __m256i b0 = _mm256_shuffle_epi8(t.b[0], codes), b1 = _mm256_shuffle_epi8(t.b[1], codes);
  const __m256i b2 = _mm256_shuffle_epi8(t.b[2], codes), b3 = _mm256_shuffle_epi8(t.b[3], codes);
  const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
  const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
  sink(0, _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23)));
  sink(1, _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23)));
  sink(2, _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23)));
  sink(3, _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23)));
}

// The 64 table values (not yet times absmax) packed in p[0..32) as eight vectors in permuted
// order: sink(v, vector), v = 0..7.
template <class Sink>
inline void decode64(const uint8_t* p, const Planes& t, Sink&& sink) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i m15 = _mm256_set1_epi8(15);
  expand(_mm256_and_si256(_mm256_srli_epi16(v, 4), m15), t, [&](int i, __m256 w) { sink(i, w); });
  expand(_mm256_and_si256(v, m15), t, [&](int i, __m256 w) { sink(4 + i, w); });
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// MG activation rows at once. Each 64-column chunk lies in one absmax block (blocksize >= 64).
// For one or two rows a row's chunk sum is taken over the bare table values and scaled once by
// one FMA into the running sum: a multiply per weight vector less, which the shuffle-bound loop
// needs (shuffles share Zen 3's FP pipes with the FMAs); two partial chains per row hide the FMA
// latency. More rows would run out of registers that way, so they scale the decoded weights
// (one multiply per vector, shared by all rows) and keep one accumulator per row.
template <int MG>
void gemv_group(const uint8_t* packed, const float* absmax, int64_t row, int64_t k, int64_t blocksize, int64_t k0,
                int64_t klen, const float* xq,
                int64_t ldx, const Planes& t, float* out, int64_t ldy) {
  constexpr int NA = MG <= 2 ? 2 : 1;
  __m256 acc[MG][NA];
  for (int i = 0; i < MG; i++)
    for (int a = 0; a < NA; a++) acc[i][a] = _mm256_setzero_ps();
  const int64_t base = row * k + k0;  // rows need not start on a block boundary (k % blocksize != 0)
  for (int64_t c = 0; c < klen; c += 64) {
    const __m256 scale = _mm256_broadcast_ss(absmax + ((base + c) >> block_shift(blocksize)));
    if constexpr (MG <= 2) {
      __m256 part[MG][2];
      decode64(packed + (base + c) / 2, t, [&](int v, __m256 w) {
        for (int i = 0; i < MG; i++) {
          const __m256 x = _mm256_loadu_ps(xq + i * ldx + c + 8 * v);
          part[i][v & 1] = v < 2 ? _mm256_mul_ps(w, x) : _mm256_fmadd_ps(w, x, part[i][v & 1]);
        }
      });
      for (int i = 0; i < MG; i++)
        for (int a = 0; a < 2; a++) acc[i][a] = _mm256_fmadd_ps(scale, part[i][a], acc[i][a]);
    } else {
      decode64(packed + (base + c) / 2, t, [&](int v, __m256 w) {
        w = _mm256_mul_ps(w, scale);
        for (int i = 0; i < MG; i++) acc[i][0] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xq + i * ldx + c + 8 * v), acc[i][0]);
      });
    }
  }
  for (int i = 0; i < MG; i++) {
    __m256 s = acc[i][0];
    for (int a = 1; a < NA; a++) s = _mm256_add_ps(s, acc[i][a]);
    out[i * ldy] = hsum(s);
  }
}

const Planes& planes() {
  static const Planes t;
  return t;
}

void gemv(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
          int64_t k0, int64_t klen, const float* xq, int64_t ldx, int64_t m, float* y, int64_t ldy) {
  const Planes& t = planes();
  for (int64_t row = n0; row < n1; row++) {
    // the packed row (k/2 bytes) stays in L1 while the row groups re-decode it
    for (int64_t i = 0; i < m; i += 8) {
      const float* x = xq + i * ldx;
      float* out = y + i * ldy + (row - n0);
      switch (m - i) {
        case 1: gemv_group<1>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
        case 2: gemv_group<2>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
        case 3: gemv_group<3>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
        case 4: gemv_group<4>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
        case 5: gemv_group<5>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
        case 6: gemv_group<6>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
        case 7: gemv_group<7>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
        default: gemv_group<8>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, t, out, ldy); break;
      }
    }
  }
}

void decode(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
            int64_t k0, int64_t klen, float* tile, int64_t ldt) {
  const Planes& t = planes();
  for (int64_t row = n0; row < n1; row++) {
    const int64_t base = row * k + k0;
    float* dst = tile + (row - n0) * ldt;
    for (int64_t c = 0; c < klen; c += 64) {
      const __m256 scale = _mm256_broadcast_ss(absmax + ((base + c) >> block_shift(blocksize)));
      decode64(packed + (base + c) / 2, t,
               [&](int v, __m256 w) { _mm256_storeu_ps(dst + c + 8 * v, _mm256_mul_ps(w, scale)); });
    }
  }
}

template <int MM, int RR>
void dot_block(const float* xq, int64_t ldx, const float* tile, int64_t ldt, int64_t klen, float* out, int64_t ldo) {
  __m256 acc[MM][RR];
  for (int i = 0; i < MM; i++)
    for (int r = 0; r < RR; r++) acc[i][r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < klen; j += 8) {
    __m256 w[RR];
    for (int r = 0; r < RR; r++) w[r] = _mm256_loadu_ps(tile + r * ldt + j);
    for (int i = 0; i < MM; i++) {
      const __m256 x = _mm256_loadu_ps(xq + i * ldx + j);
      for (int r = 0; r < RR; r++) acc[i][r] = _mm256_fmadd_ps(x, w[r], acc[i][r]);
    }
  }
  for (int i = 0; i < MM; i++)
    for (int r = 0; r < RR; r++) out[i * ldo + r] += hsum(acc[i][r]);
}

template <int MM>
void dot_rows(const float* xq, int64_t ldx, const float* tile, int64_t ldt, int64_t rows, int64_t klen, float* out,
              int64_t ldo) {
  int64_t r = 0;
  for (; r + 3 <= rows; r += 3) dot_block<MM, 3>(xq, ldx, tile + r * ldt, ldt, klen, out + r, ldo);
  if (rows - r == 2) dot_block<MM, 2>(xq, ldx, tile + r * ldt, ldt, klen, out + r, ldo);
  if (rows - r == 1) dot_block<MM, 1>(xq, ldx, tile + r * ldt, ldt, klen, out + r, ldo);
}

template <int MM, int JJ>
void axpy_block(const float* dy, int64_t lddy, const float* tile, int64_t ldt, int64_t rows, float* acc,
                int64_t lda) {
  __m256 a[MM][JJ];
  for (int i = 0; i < MM; i++)
    for (int j = 0; j < JJ; j++) a[i][j] = _mm256_loadu_ps(acc + i * lda + 8 * j);
  for (int64_t r = 0; r < rows; r++) {
    if constexpr (MM == 1) {  // one row: each weight vector is used once, so load it at its FMA
      const __m256 g = _mm256_broadcast_ss(dy + r);
      for (int j = 0; j < JJ; j++) a[0][j] = _mm256_fmadd_ps(g, _mm256_loadu_ps(tile + r * ldt + 8 * j), a[0][j]);
    } else {
      __m256 w[JJ];
      for (int j = 0; j < JJ; j++) w[j] = _mm256_loadu_ps(tile + r * ldt + 8 * j);
      for (int i = 0; i < MM; i++) {
        const __m256 g = _mm256_broadcast_ss(dy + i * lddy + r);
        for (int j = 0; j < JJ; j++) a[i][j] = _mm256_fmadd_ps(g, w[j], a[i][j]);
      }
    }
  }
  for (int i = 0; i < MM; i++)
    for (int j = 0; j < JJ; j++) _mm256_storeu_ps(acc + i * lda + 8 * j, a[i][j]);
}

// Wide blocks for few rows: enough independent accumulators to hide the FMA latency.
template <int MM>
void axpy_rows(const float* dy, int64_t lddy, const float* tile, int64_t ldt, int64_t rows, int64_t klen, float* acc,
               int64_t lda) {
  constexpr int JJ = MM == 1 ? 8 : MM == 2 ? 4 : 3;
  int64_t j = 0;
  for (; j + 8 * JJ <= klen; j += 8 * JJ) axpy_block<MM, JJ>(dy, lddy, tile + j, ldt, rows, acc + j, lda);
  for (; j < klen; j += 8) axpy_block<MM, 1>(dy, lddy, tile + j, ldt, rows, acc + j, lda);
}

}  // namespace

void dot_avx2(const float* xq, int64_t ldx, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
              float* out, int64_t ldo) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) dot_rows<4>(xq + i * ldx, ldx, tile, ldt, rows, klen, out + i * ldo, ldo);
  switch (m - i) {
    case 3: dot_rows<3>(xq + i * ldx, ldx, tile, ldt, rows, klen, out + i * ldo, ldo); break;
    case 2: dot_rows<2>(xq + i * ldx, ldx, tile, ldt, rows, klen, out + i * ldo, ldo); break;
    case 1: dot_rows<1>(xq + i * ldx, ldx, tile, ldt, rows, klen, out + i * ldo, ldo); break;
    default: break;
  }
}

void axpy_avx2(const float* dy, int64_t lddy, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
               float* acc, int64_t lda) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) axpy_rows<4>(dy + i * lddy, lddy, tile, ldt, rows, klen, acc + i * lda, lda);
  switch (m - i) {
    case 3: axpy_rows<3>(dy + i * lddy, lddy, tile, ldt, rows, klen, acc + i * lda, lda); break;
    case 2: axpy_rows<2>(dy + i * lddy, lddy, tile, ldt, rows, klen, acc + i * lda, lda); break;
    case 1: axpy_rows<1>(dy + i * lddy, lddy, tile, ldt, rows, klen, acc + i * lda, lda); break;
    default: break;
  }
}

const Kernels& avx2_kernels() {
  static const Kernels k{"avx2", kPerm.q, gemv, decode, dot_avx2, axpy_avx2};
  return k;
}

}  // namespace qk::nf4mm
