// APMM kernels for AVX2. Compiled with AVX2 flags only in this file and reached only after
// cpuid says the CPU has them.
//  - bit-serial: AND of a weight plane and an activation plane, popcount per byte with the
//    vpshufb nibble table, and (for small p*q) the 2^(i+j)-weighted byte counts of all plane
//    pairs added in bytes before one vpsadbw, so the per-pair cost is AND + popcount only.
//  - int8: planes unpacked to bytes (u_a unsigned, u_w - 2^(p-1) signed), vpmaddubsw +
//    vpmaddwd; exact because |pair sum| < 2^(p+q) <= 2^15 for p + q <= 15, and for p = q = 8
//    the bytes are widened to int16 first (vpmaddwd only).
#include <immintrin.h>

#include "apmm/apmm_cpu.h"
#include "qkern.h"

namespace qk::apmm {
namespace {

inline __m256i popcount_bytes(__m256i x) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256i lo = _mm256_and_si256(x, low4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
}

// Byte counts -> per-segment lane sums: 4 x u64 (64/128-column segments) or 8 x u32 (32).
inline __m256i reduce_lanes(__m256i bytes, bool lanes32) {
  if (!lanes32) return _mm256_sad_epu8(bytes, _mm256_setzero_si256());
  __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi8(1));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

inline __m256i shift_lanes(__m256i v, int s, bool lanes32) {
  const __m128i count = _mm_cvtsi32_si128(s);
  return lanes32 ? _mm256_sll_epi32(v, count) : _mm256_sll_epi64(v, count);
}

inline int64_t hsum64(__m256i v) {
  __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

// Adds one chunk's (256 columns) lane sums into the segments they belong to.
inline void add_chunk_segments(__m256i lanes, int64_t chunk, int64_t seg_bits, int32_t* u) {
  alignas(32) uint64_t l64[4];
  alignas(32) uint32_t l32[8];
  if (seg_bits == 32) {
    _mm256_store_si256((__m256i*)l32, lanes);
    for (int l = 0; l < 8; l++) u[chunk * 8 + l] += (int32_t)l32[l];
  } else if (seg_bits == 64) {
    _mm256_store_si256((__m256i*)l64, lanes);
    for (int l = 0; l < 4; l++) u[chunk * 4 + l] += (int32_t)l64[l];
  } else {
    _mm256_store_si256((__m256i*)l64, lanes);
    u[chunk * 2] += (int32_t)(l64[0] + l64[1]);
    u[chunk * 2 + 1] += (int32_t)(l64[2] + l64[3]);
  }
}

// One activation row against NB weight rows. P, Q: compile-time plane counts (0: use p, q).
template <int P, int Q, int NB>
void bitserial_rows(const uint64_t* a, const uint64_t* const* w, int p_rt, int q_rt, int64_t kw, const TileOut& out,
                    int32_t* const* u) {
  const int p = P ? P : p_rt, q = Q ? Q : q_rt;
  const int64_t chunks = kw / 4;
  const int weight_sum = ((1 << p) - 1) * ((1 << q) - 1);
  // 2^(i+j)-weighted byte counts of all pairs stay below 256 for this many chunks
  const bool combine = weight_sum <= 31;
  const bool lanes32 = out.seg_bits == 32;
  __m256i av[8];
  if (out.seg_bits == 0) {
    const int flush_every = combine ? 255 / (8 * weight_sum) : 1;
    __m256i acc[NB], bytes[NB];
    for (int nb = 0; nb < NB; nb++) acc[nb] = bytes[nb] = _mm256_setzero_si256();
    int pending = 0;
    for (int64_t c = 0; c < chunks; c++) {
      for (int j = 0; j < q; j++) av[j] = _mm256_loadu_si256((const __m256i*)(a + j * kw + 4 * c));
      for (int nb = 0; nb < NB; nb++) {
        for (int i = 0; i < p; i++) {
          const __m256i wv = _mm256_loadu_si256((const __m256i*)(w[nb] + i * kw + 4 * c));
          for (int j = 0; j < q; j++) {
            __m256i cnt = popcount_bytes(_mm256_and_si256(wv, av[j]));
            if (combine)
              bytes[nb] = _mm256_add_epi8(bytes[nb], _mm256_sll_epi16(cnt, _mm_cvtsi32_si128(i + j)));
            else
              acc[nb] = _mm256_add_epi64(acc[nb], shift_lanes(reduce_lanes(cnt, false), i + j, false));
          }
        }
      }
      if (combine && ++pending == flush_every) {
        for (int nb = 0; nb < NB; nb++) {
          acc[nb] = _mm256_add_epi64(acc[nb], reduce_lanes(bytes[nb], false));
          bytes[nb] = _mm256_setzero_si256();
        }
        pending = 0;
      }
    }
    for (int nb = 0; nb < NB; nb++) {
      if (combine) acc[nb] = _mm256_add_epi64(acc[nb], reduce_lanes(bytes[nb], false));
      u[nb][0] = (int32_t)hsum64(acc[nb]);
    }
    return;
  }
  for (int nb = 0; nb < NB; nb++)
    for (int64_t s = 0; s < out.segs; s++) u[nb][s] = 0;
  for (int64_t c = 0; c < chunks; c++) {
    for (int j = 0; j < q; j++) av[j] = _mm256_loadu_si256((const __m256i*)(a + j * kw + 4 * c));
    for (int nb = 0; nb < NB; nb++) {
      __m256i bytes = _mm256_setzero_si256(), lanes = _mm256_setzero_si256();
      for (int i = 0; i < p; i++) {
        const __m256i wv = _mm256_loadu_si256((const __m256i*)(w[nb] + i * kw + 4 * c));
        for (int j = 0; j < q; j++) {
          __m256i cnt = popcount_bytes(_mm256_and_si256(wv, av[j]));
          if (combine)
            bytes = _mm256_add_epi8(bytes, _mm256_sll_epi16(cnt, _mm_cvtsi32_si128(i + j)));
          else
            lanes = lanes32 ? _mm256_add_epi32(lanes, shift_lanes(reduce_lanes(cnt, true), i + j, true))
                            : _mm256_add_epi64(lanes, shift_lanes(reduce_lanes(cnt, false), i + j, false));
        }
      }
      if (combine) lanes = reduce_lanes(bytes, lanes32);
      add_chunk_segments(lanes, c, out.seg_bits, u[nb]);
    }
  }
}

template <int P, int Q>
void bitserial_tile(const uint64_t* a_planes, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0,
                    int64_t m1, int64_t n0, int64_t nt, const TileOut& out) {
  for (int64_t m = m0; m < m1; m++) {
    const uint64_t* a = a_planes + m * q * kw;
    int64_t j = 0;
    for (; j + 4 <= nt; j += 4) {
      const uint64_t* w[4];
      int32_t* u[4];
      for (int nb = 0; nb < 4; nb++) {
        w[nb] = w_planes + (n0 + j + nb) * p * kw;
        u[nb] = out.u + ((m - m0) * nt + j + nb) * out.segs;
      }
      bitserial_rows<P, Q, 4>(a, w, p, q, kw, out, u);
    }
    for (; j < nt; j++) {
      const uint64_t* w[1] = {w_planes + (n0 + j) * p * kw};
      int32_t* u[1] = {out.u + ((m - m0) * nt + j) * out.segs};
      bitserial_rows<P, Q, 1>(a, w, p, q, kw, out, u);
    }
  }
}

void bitserial_avx2(const uint64_t* a_planes, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0,
                    int64_t m1, int64_t n0, int64_t nt, const TileOut& out) {
  switch (p * 16 + q) {
    case 0x11: return bitserial_tile<1, 1>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    case 0x12: return bitserial_tile<1, 2>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    case 0x21: return bitserial_tile<2, 1>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    case 0x22: return bitserial_tile<2, 2>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    case 0x13: return bitserial_tile<1, 3>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    case 0x31: return bitserial_tile<3, 1>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    case 0x14: return bitserial_tile<1, 4>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    case 0x41: return bitserial_tile<4, 1>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
    default: return bitserial_tile<0, 0>(a_planes, q, w_planes, p, kw, m0, m1, n0, nt, out);
  }
}

void unpack_row_avx2(const uint64_t* planes, int bits, int64_t kw, bool signed_shift, uint8_t* out) {
  // byte b of the 32-bit half-word goes to output bytes 8b..8b+7; each then keeps one bit
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
  const __m256i bit_select = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
  const __m256i shift = _mm256_set1_epi8(signed_shift ? (char)(1u << (bits - 1)) : 0);
  const uint32_t* halves = (const uint32_t*)planes;  // little-endian: half 2w is columns 64w..64w+31
  for (int64_t h = 0; h < kw * 2; h++) {
    __m256i acc = _mm256_setzero_si256();
    for (int i = 0; i < bits; i++) {
      __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)halves[i * kw * 2 + h]), spread);
      __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit_select), bit_select);
      acc = _mm256_or_si256(acc, _mm256_and_si256(set, _mm256_set1_epi8((char)(1u << i))));
    }
    _mm256_storeu_si256((__m256i*)(out + h * 32), _mm256_sub_epi8(acc, shift));
  }
}

inline int32_t hsum32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// MB activation rows x NB weight rows over columns [k0, k1) (multiples of 32).
template <int MB, int NB, bool Wide>
inline void dot_block(const uint8_t* const* a, const int8_t* const* w, int64_t k0, int64_t k1, int32_t* const* u,
                      int64_t s) {
  __m256i acc[MB][NB];
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++) acc[i][j] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  if (!Wide) {
    for (int64_t k = k0; k < k1; k += 32) {
      __m256i av[MB], wv[NB];
      for (int i = 0; i < MB; i++) av[i] = _mm256_loadu_si256((const __m256i*)(a[i] + k));
      for (int j = 0; j < NB; j++) wv[j] = _mm256_loadu_si256((const __m256i*)(w[j] + k));
      for (int i = 0; i < MB; i++)
        for (int j = 0; j < NB; j++)
          acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(_mm256_maddubs_epi16(av[i], wv[j]), ones));
    }
  } else {
    for (int64_t k = k0; k < k1; k += 16) {
      __m256i av[MB], wv[NB];
      for (int i = 0; i < MB; i++) av[i] = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)(a[i] + k)));
      for (int j = 0; j < NB; j++) wv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(w[j] + k)));
      for (int i = 0; i < MB; i++)
        for (int j = 0; j < NB; j++) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av[i], wv[j]));
    }
  }
  for (int i = 0; i < MB; i++)
    for (int j = 0; j < NB; j++) u[i * NB + j][s] = hsum32(acc[i][j]);
}

template <int MB, int NB>
inline void dot_tile(const uint8_t* a_u8, const int8_t* w_s8, int64_t kp, int64_t m, int64_t m0, int64_t j,
                     int64_t nt, bool wide, const TileOut& out) {
  const uint8_t* a[MB];
  const int8_t* w[NB];
  int32_t* u[MB * NB];
  for (int i = 0; i < MB; i++) a[i] = a_u8 + (m + i) * kp;
  for (int jj = 0; jj < NB; jj++) w[jj] = w_s8 + (j + jj) * kp;
  for (int i = 0; i < MB; i++)
    for (int jj = 0; jj < NB; jj++) u[i * NB + jj] = out.u + ((m + i - m0) * nt + j + jj) * out.segs;
  const int64_t seg_len = out.seg_bits == 0 ? kp : out.seg_bits;
  for (int64_t s = 0; s < out.segs; s++) {
    if (wide)
      dot_block<MB, NB, true>(a, w, s * seg_len, (s + 1) * seg_len, u, s);
    else
      dot_block<MB, NB, false>(a, w, s * seg_len, (s + 1) * seg_len, u, s);
  }
}

void int8_avx2(const uint8_t* a_u8, const int8_t* w_s8, int64_t kp, int64_t m0, int64_t m1, int64_t nt, bool wide,
               const TileOut& out) {
  int64_t m = m0;
  for (; m + 2 <= m1; m += 2) {
    int64_t j = 0;
    for (; j + 4 <= nt; j += 4) dot_tile<2, 4>(a_u8, w_s8, kp, m, m0, j, nt, wide, out);
    for (; j < nt; j++) dot_tile<2, 1>(a_u8, w_s8, kp, m, m0, j, nt, wide, out);
  }
  for (; m < m1; m++) {
    int64_t j = 0;
    for (; j + 4 <= nt; j += 4) dot_tile<1, 4>(a_u8, w_s8, kp, m, m0, j, nt, wide, out);
    for (; j < nt; j++) dot_tile<1, 1>(a_u8, w_s8, kp, m, m0, j, nt, wide, out);
  }
}

const CpuKernels kAvx2 = {bitserial_avx2,        unpack_row_avx2,       int8_avx2,
                          stream_prepare_a_avx2, stream_avx2,           QK_APMM_RAN_AVX2_BITSERIAL,
                          QK_APMM_RAN_AVX2_INT8, QK_APMM_RAN_AVX2_STREAM};

}  // namespace

const CpuKernels& avx2_kernels() { return kAvx2; }

}  // namespace qk::apmm
