// APMM kernels for AVX-512 (F/BW/VL/DQ) + VNNI + VPOPCNTDQ (Ice Lake, Zen 4 and newer).
// Compiled with those flags only in this file and reached only after cpuid reports all of them.
// NOTE: the machine qkern is developed on has AVX2 only: this file compiles in CI but has not
// run yet; the native and Java tests run it automatically wherever the CPU has the features.
//  - bit-serial: AND + VPOPCNTQ (VPOPCNTD for 32-column segments) per 64-bit word, the counts
//    of pair (i, j) shifted by i+j into 64-bit accumulators.
//  - int8: planes unpacked to bytes with mask moves (one k-mask per plane word), VPDPBUSD
//    (u8 x s8, four products summed exactly into int32: no saturation case at 8x8).
#include <immintrin.h>

// GCC 12's AVX-512 reduce/zero-extend intrinsics start from _mm256_undefined_si256() and trip
// -Wmaybe-uninitialized inside the system header; the values are fully defined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "apmm/apmm_cpu.h"
#include "qkern.h"

namespace qk::apmm {
namespace {

// Per-unit (64-bit word, or 32-bit half-word for 32-column segments) weighted counts of
// words [w0, w0 + 8) or [w0, w0 + 4) are added to their segments.
inline void add_units(const uint64_t* units, int count, int64_t first_unit, int64_t seg_bits, int32_t* u) {
  const int64_t unit_bits = seg_bits == 32 ? 32 : 64;
  for (int l = 0; l < count; l++) u[(first_unit + l) * unit_bits / seg_bits] += (int32_t)units[l];
}

void bitserial_avx512(const uint64_t* a_planes, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0,
                      int64_t m1, int64_t n0, int64_t nt, const TileOut& out) {
  const int64_t full = kw / 8 * 8;  // kw is a multiple of 4: at most one 256-bit tail
  for (int64_t m = m0; m < m1; m++) {
    const uint64_t* a = a_planes + m * q * kw;
    for (int64_t j = 0; j < nt; j++) {
      const uint64_t* w = w_planes + (n0 + j) * p * kw;
      int32_t* u = out.u + ((m - m0) * nt + j) * out.segs;
      if (out.seg_bits == 0) {
        __m512i acc = _mm512_setzero_si512();
        __m256i tail = _mm256_setzero_si256();
        for (int64_t x = 0; x < full; x += 8)
          for (int i = 0; i < p; i++) {
            const __m512i wv = _mm512_loadu_si512(w + i * kw + x);
            for (int jj = 0; jj < q; jj++) {
              __m512i cnt = _mm512_popcnt_epi64(_mm512_and_si512(wv, _mm512_loadu_si512(a + jj * kw + x)));
              acc = _mm512_add_epi64(acc, _mm512_slli_epi64(cnt, (unsigned)(i + jj)));
            }
          }
        if (full < kw)
          for (int i = 0; i < p; i++) {
            const __m256i wv = _mm256_loadu_si256((const __m256i*)(w + i * kw + full));
            for (int jj = 0; jj < q; jj++) {
              __m256i av = _mm256_loadu_si256((const __m256i*)(a + jj * kw + full));
              __m256i cnt = _mm256_popcnt_epi64(_mm256_and_si256(wv, av));
              tail = _mm256_add_epi64(tail, _mm256_slli_epi64(cnt, (unsigned)(i + jj)));
            }
          }
        alignas(32) uint64_t t[4];
        _mm256_store_si256((__m256i*)t, tail);
        u[0] = (int32_t)(_mm512_reduce_add_epi64(acc) + (int64_t)(t[0] + t[1] + t[2] + t[3]));
        continue;
      }
      for (int64_t s = 0; s < out.segs; s++) u[s] = 0;
      const bool halves = out.seg_bits == 32;
      alignas(64) uint64_t units[16];
      for (int64_t x = 0; x < kw; x += 8) {
        const bool wide = x + 8 <= kw;
        __m512i acc = _mm512_setzero_si512();
        for (int i = 0; i < p; i++) {
          const __m512i wv = wide ? _mm512_loadu_si512(w + i * kw + x)
                                  : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(w + i * kw + x)));
          for (int jj = 0; jj < q; jj++) {
            const __m512i av = wide ? _mm512_loadu_si512(a + jj * kw + x)
                                    : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(a + jj * kw + x)));
            const __m512i both = _mm512_and_si512(wv, av);
            acc = halves ? _mm512_add_epi32(acc, _mm512_slli_epi32(_mm512_popcnt_epi32(both), (unsigned)(i + jj)))
                         : _mm512_add_epi64(acc, _mm512_slli_epi64(_mm512_popcnt_epi64(both), (unsigned)(i + jj)));
          }
        }
        const int words = wide ? 8 : 4;
        if (halves) {
          alignas(64) uint32_t u32[16];
          _mm512_store_si512(u32, acc);
          for (int l = 0; l < 2 * words; l++) units[l] = u32[l];
          add_units(units, 2 * words, 2 * x, 32, u);
        } else {
          _mm512_store_si512(units, acc);
          add_units(units, words, x, out.seg_bits, u);
        }
      }
    }
  }
}

void unpack_row_avx512(const uint64_t* planes, int bits, int64_t kw, bool signed_shift, uint8_t* out) {
  const __m512i shift = _mm512_set1_epi8(signed_shift ? (char)(1u << (bits - 1)) : 0);
  for (int64_t word = 0; word < kw; word++) {
    __m512i acc = _mm512_setzero_si512();
    for (int i = 0; i < bits; i++)
      acc = _mm512_or_si512(acc, _mm512_maskz_mov_epi8((__mmask64)planes[i * kw + word], _mm512_set1_epi8((char)(1u << i))));
    _mm512_storeu_si512(out + word * 64, _mm512_sub_epi8(acc, shift));
  }
}

void int8_vnni(const uint8_t* a_u8, const int8_t* w_s8, int64_t kp, int64_t m0, int64_t m1, int64_t nt, bool,
               const TileOut& out) {
  const int64_t seg_len = out.seg_bits == 0 ? kp : out.seg_bits;
  for (int64_t m = m0; m < m1; m++) {
    const uint8_t* a = a_u8 + m * kp;
    int64_t j = 0;
    for (; j < nt; j += 4) {
      const int nb = nt - j >= 4 ? 4 : (int)(nt - j);
      const int8_t* w[4];
      for (int b = 0; b < 4; b++) w[b] = w_s8 + (j + (b < nb ? b : 0)) * kp;
      for (int64_t s = 0; s < out.segs; s++) {
        const int64_t k0 = s * seg_len, k1 = k0 + seg_len;
        int32_t sums[4];
        if (seg_len % 64 == 0) {
          __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                            _mm512_setzero_si512()};
          for (int64_t k = k0; k < k1; k += 64) {
            const __m512i av = _mm512_loadu_si512(a + k);
            for (int b = 0; b < 4; b++) acc[b] = _mm512_dpbusd_epi32(acc[b], av, _mm512_loadu_si512(w[b] + k));
          }
          for (int b = 0; b < 4; b++) sums[b] = _mm512_reduce_add_epi32(acc[b]);
        } else {  // 32-column segments
          __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                            _mm256_setzero_si256()};
          const __m256i av = _mm256_loadu_si256((const __m256i*)(a + k0));
          for (int b = 0; b < 4; b++)
            acc[b] = _mm256_dpbusd_epi32(acc[b], av, _mm256_loadu_si256((const __m256i*)(w[b] + k0)));
          for (int b = 0; b < 4; b++) sums[b] = _mm512_reduce_add_epi32(_mm512_zextsi256_si512(acc[b]));
        }
        for (int b = 0; b < nb; b++) out.u[((m - m0) * nt + j + b) * out.segs + s] = sums[b];
      }
    }
  }
}

// The small-M streaming path has no AVX-512 version yet: the AVX2 kernels run (and say so).
const CpuKernels kAvx512 = {bitserial_avx512,        unpack_row_avx512,       int8_vnni,
                            stream_prepare_a_avx2,   stream_avx2,             QK_APMM_RAN_AVX512_BITSERIAL,
                            QK_APMM_RAN_AVX512_INT8, QK_APMM_RAN_AVX2_STREAM};

}  // namespace

const CpuKernels& avx512vnni_kernels() { return kAvx512; }

}  // namespace qk::apmm
