// APMM small-M weight streaming for AVX2 (M = 1..16 rows of A against p <= 7-bit weights).
// Compiled with AVX2 flags only in this file and reached only after cpuid says the CPU has them.
//
// At small M the matmul is a pass over the packed weights, so the work per weight must be a few
// instructions: each 32-column block of a weight row is decoded to byte codes u_w once and
// multiplied with every row of A (the int8 path instead writes every weight row out as bytes
// and reads it back). Decoding one plane: vpbroadcastd of its 32-bit word, vpsrlvd by the lane
// index L = 0..7, so byte b of lane L holds column 8b + L in bit 0; mask and shift to bit i, OR.
// That byte order (byte 4L + b = column 8b + L) differs from the natural one, so the activation
// rows are unpacked once per call in the same order (stream_prepare_a_avx2): the product sums
// over the block are unchanged. u_a (unsigned operand) x u_w (signed operand, < 128) with
// vpmaddubsw: the pair sums are <= 2 (2^q - 1)(2^p - 1) <= 32767 (stream_serves), and
// `flush` blocks of them are added in int16 before vpmaddwd widens them to int32, with
// flush * (pair bound) <= 32767, so nothing saturates: the result is exact.
#include <immintrin.h>

#include "apmm/apmm_cpu.h"
#include "qkern.h"

namespace qk::apmm {
namespace {

inline int32_t hsum32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

// The byte codes u_w of one 32-column block (block `blk` of every plane), in the kernel order.
template <int P>
inline __m256i decode_block(const uint32_t* const* halves, int64_t blk, __m256i lane_index) {
  const __m256i ones = _mm256_set1_epi8(1);
  __m256i code = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)halves[0][blk]), lane_index), ones);
  for (int i = 1; i < P; i++) {
    const __m256i bits = _mm256_srlv_epi32(_mm256_set1_epi32((int)halves[i][blk]), lane_index);
    code = _mm256_or_si256(code, _mm256_and_si256(_mm256_slli_epi32(bits, i), _mm256_set1_epi8((char)(1 << i))));
  }
  return code;
}

// MR rows of A (a, kp bytes apart) against weight rows [n0, n0 + nt).
template <int P, int MR>
void stream_tile(const uint8_t* a, int64_t kp, const uint64_t* w_planes, int64_t kw, int64_t n0, int64_t nt,
                 int flush, const TileOut& out) {
  const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const int64_t blocks = kw * 2, seg_blocks = out.seg_bits / 32, segs = out.segs;
  for (int64_t j = 0; j < nt; j++) {
    const uint32_t* halves[P];
    for (int i = 0; i < P; i++) halves[i] = (const uint32_t*)(w_planes + ((n0 + j) * P + i) * kw);
    int32_t* u[MR];
    for (int r = 0; r < MR; r++) {
      u[r] = out.u + (r * nt + j) * segs;
      if (seg_blocks)
        for (int64_t s = 0; s < segs; s++) u[r][s] = 0;
    }
    __m256i acc16[MR], acc32[MR];
    for (int r = 0; r < MR; r++) acc16[r] = acc32[r] = _mm256_setzero_si256();
    for (int64_t blk = 0; blk < blocks; blk++) {
      const __m256i code = decode_block<P>(halves, blk, lane_index);
      for (int r = 0; r < MR; r++) {
        const __m256i av = _mm256_loadu_si256((const __m256i*)(a + r * kp + blk * 32));
        acc16[r] = _mm256_add_epi16(acc16[r], _mm256_maddubs_epi16(av, code));
      }
      if ((blk & (flush - 1)) == flush - 1) {  // flush divides the blocks of a segment
        for (int r = 0; r < MR; r++) {
          const __m256i v = _mm256_madd_epi16(acc16[r], ones16);
          acc16[r] = _mm256_setzero_si256();
          if (seg_blocks)
            u[r][blk / seg_blocks] += hsum32(v);
          else
            acc32[r] = _mm256_add_epi32(acc32[r], v);
        }
      }
    }
    if (!seg_blocks)
      for (int r = 0; r < MR; r++) u[r][0] = hsum32(acc32[r]);
  }
}

template <int P>
void stream_rows(const uint8_t* a, int64_t kp, int64_t rows, const uint64_t* w_planes, int64_t kw, int64_t n0,
                 int64_t nt, int flush, const TileOut& out) {
  switch (rows) {
    case 1: return stream_tile<P, 1>(a, kp, w_planes, kw, n0, nt, flush, out);
    case 2: return stream_tile<P, 2>(a, kp, w_planes, kw, n0, nt, flush, out);
    case 3: return stream_tile<P, 3>(a, kp, w_planes, kw, n0, nt, flush, out);
    default: return stream_tile<P, 4>(a, kp, w_planes, kw, n0, nt, flush, out);
  }
}

}  // namespace

void stream_prepare_a_avx2(const uint64_t* planes, int bits, int64_t kw, uint8_t* out) {
  avx2_kernels().unpack_row(planes, bits, kw, false, out);
  for (int64_t blk = 0; blk < kw * 2; blk++) {  // natural order -> byte 4L + b = column 8b + L
    uint8_t* x = out + blk * 32;
    uint8_t natural[32];
    for (int c = 0; c < 32; c++) natural[c] = x[c];
    for (int lane = 0; lane < 8; lane++)
      for (int b = 0; b < 4; b++) x[4 * lane + b] = natural[8 * b + lane];
  }
}

void stream_avx2(const uint8_t* a_u8, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0, int64_t m1,
                 int64_t n0, int64_t nt, const TileOut& out) {
  const int64_t kp = kw * 64, rows = m1 - m0;
  // Blocks whose int16 pair sums may be added before widening: a power of two that divides
  // the segment's blocks and the 8 blocks of a padded 256-column chunk.
  const int pair_max = 2 * ((1 << p) - 1) * ((1 << q) - 1);
  int flush = 8;
  while (flush > 1 && (flush * pair_max > 32767 || (out.seg_bits != 0 && flush > out.seg_bits / 32))) flush /= 2;
  const uint8_t* a = a_u8 + m0 * kp;
  switch (p) {
    case 1: return stream_rows<1>(a, kp, rows, w_planes, kw, n0, nt, flush, out);
    case 2: return stream_rows<2>(a, kp, rows, w_planes, kw, n0, nt, flush, out);
    case 3: return stream_rows<3>(a, kp, rows, w_planes, kw, n0, nt, flush, out);
    case 4: return stream_rows<4>(a, kp, rows, w_planes, kw, n0, nt, flush, out);
    case 5: return stream_rows<5>(a, kp, rows, w_planes, kw, n0, nt, flush, out);
    case 6: return stream_rows<6>(a, kp, rows, w_planes, kw, n0, nt, flush, out);
    default: return stream_rows<7>(a, kp, rows, w_planes, kw, n0, nt, flush, out);
  }
}

}  // namespace qk::apmm
