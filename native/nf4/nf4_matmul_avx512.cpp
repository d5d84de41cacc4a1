// NF4 matmul, AVX-512 (F/BW/VL/DQ). A 16-entry VPERMPS on a zmm register is the whole NF4
// table, so one permute decodes 16 weights: per 16 packed bytes, VPMOVZXBD spreads the bytes
// to dwords, the high nibbles (even elements) index directly after a shift and the low
// nibbles (odd elements) as they are (VPERMPS reads only the low 4 index bits). Positions
// 0..15 of each 32-weight half hold its even elements, 16..31 its odd ones (perm64).
// The tile dot / axpy micro-kernels are the AVX2 ones (FMA-bound at these tile sizes).
//
// Compiled here but never run: the development machine has no AVX-512. The dispatcher only
// selects it after cpuid reports AVX-512 F/BW/VL/DQ; tests run it wherever the CPU has it.
// GCC 12 warns about its own _mm512_undefined_*() inside the intrinsic headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "common/nf4.h"
#include "nf4/nf4_matmul_cpu.h"

namespace qk::nf4mm {
namespace {

constexpr float kTable[16] = QK_NF4_TABLE;

// constexpr so no constructor runs at library load (this file's code may only run after cpuid)
struct Perm {
  int q[64] = {};
  constexpr Perm() {
    for (int half = 0; half < 2; half++)
      for (int i = 0; i < 16; i++) {
        q[half * 32 + i] = half * 32 + 2 * i;
        q[half * 32 + 16 + i] = half * 32 + 2 * i + 1;
      }
  }
};
constexpr Perm kPerm{};

// The 64 weights packed in p[0..32) as four 16-float vectors in permuted order.
template <class Sink>
inline void decode64(const uint8_t* p, __m512 table, __m512 scale, Sink&& sink) {
  for (int half = 0; half < 2; half++) {
    const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * half)));
    sink(2 * half, _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), table), scale));
    sink(2 * half + 1, _mm512_mul_ps(_mm512_permutexvar_ps(d, table), scale));
  }
}

inline float hsum(__m512 v) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int MG, int NA>
void gemv_group(const uint8_t* packed, const float* absmax, int64_t row, int64_t k, int64_t blocksize, int64_t k0,
                int64_t klen, const float* xq,
                int64_t ldx, __m512 table, float* out, int64_t ldy) {
  __m512 acc[MG][NA];
  for (int i = 0; i < MG; i++)
    for (int a = 0; a < NA; a++) acc[i][a] = _mm512_setzero_ps();
  const int64_t base = row * k + k0;  // rows need not start on a block boundary (k % blocksize != 0)
  for (int64_t c = 0; c < klen; c += 64) {
    const __m512 scale = _mm512_set1_ps(absmax[(base + c) >> block_shift(blocksize)]);
    decode64(packed + (base + c) / 2, table, scale, [&](int v, __m512 w) {
      for (int i = 0; i < MG; i++)
        acc[i][v % NA] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xq + i * ldx + c + 16 * v), acc[i][v % NA]);
    });
  }
  for (int i = 0; i < MG; i++) {
    __m512 s = acc[i][0];
    for (int a = 1; a < NA; a++) s = _mm512_add_ps(s, acc[i][a]);
    out[i * ldy] = hsum(s);
  }
}

void gemv(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
          int64_t k0, int64_t klen, const float* xq, int64_t ldx, int64_t m, float* y, int64_t ldy) {
  const __m512 table = _mm512_loadu_ps(kTable);
  for (int64_t row = n0; row < n1; row++) {
    for (int64_t i = 0; i < m; i += 4) {
      const float* x = xq + i * ldx;
      float* out = y + i * ldy + (row - n0);
      switch (m - i) {
        case 1: gemv_group<1, 4>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, table, out, ldy); break;
        case 2: gemv_group<2, 2>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, table, out, ldy); break;
        case 3: gemv_group<3, 2>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, table, out, ldy); break;
        default: gemv_group<4, 2>(packed, absmax, row, k, blocksize, k0, klen, x, ldx, table, out, ldy); break;
      }
    }
  }
}

void decode(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
            int64_t k0, int64_t klen, float* tile, int64_t ldt) {
  const __m512 table = _mm512_loadu_ps(kTable);
  for (int64_t row = n0; row < n1; row++) {
    const int64_t base = row * k + k0;
    float* dst = tile + (row - n0) * ldt;
    for (int64_t c = 0; c < klen; c += 64) {
      const __m512 scale = _mm512_set1_ps(absmax[(base + c) >> block_shift(blocksize)]);
      decode64(packed + (base + c) / 2, table, scale, [&](int v, __m512 w) { _mm512_storeu_ps(dst + c + 16 * v, w); });
    }
  }
}

}  // namespace

const Kernels& avx512_kernels() {
  static const Kernels k{"avx512", kPerm.q, gemv, decode, dot_avx2, axpy_avx2};
  return k;
}

}  // namespace qk::nf4mm
