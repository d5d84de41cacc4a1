// APMM small-M weight streaming for AVX2 (M = 1..16 rows of A against p <= 7-bit weights).
// Compiled with AVX2 flags only in this file and reached only after cpuid says the CPU has them.
//
// At small M the matmul is one pass over the packed weights, so the work per weight must be a
// few instructions, and each weight row is decoded once and multiplied with every row of A (the
// int8 path instead writes every weight row out as bytes and reads it back).
//
// Decoding: one 256-column chunk of a weight row is p 32-byte loads (one per plane). In every
// byte of those registers, bit c is column 8b + c of the plane; the byte code of a column is a
// column of the p x 8 bit matrix the planes' bytes form, so a SWAR bit-matrix transpose turns
// the p plane registers into 8 "phase" registers C_0..C_7 whose bytes are codes: byte 4l + b of
// C_c is the code of column 32l + 8b + c of the chunk. For p <= 4 a 4 x 4 transpose per nibble
// (2 rounds of shift/xor/and) leaves the codes of columns c and c + 4 in the two nibbles; for
// p = 5..7 the 8 x 8 transpose (3 rounds) leaves whole codes. That is about 4.5 vector
// operations per 32 weights at p = 4 (the first version, one vpsrlvd per plane and 32 columns,
// needed ~20). The activation rows are unpacked once per call in the same column order
// (stream_prepare_a_avx2), so sum u_a * u_w over a chunk is unchanged.
//
// Products: u_a (unsigned operand) x u_w (signed operand, < 128) with vpmaddubsw; pair sums
// are <= 2 (2^q - 1)(2^p - 1) <= 32767 (stream_serves), and `flush` phases of them are added in
// int16 before vpmaddwd widens them to int32, with flush * (pair bound) <= 32767: exact. The
// 32-bit lane l of every product belongs to block l (columns 32l..32l+31) of the chunk, so the
// per-segment sums (32/64/128 columns) come straight from the lanes.
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

// Exchanges bits: x's bits at positions with `mask` << s and y's at `mask` (t = the differing ones).
template <int S>
inline void swap_bits(__m256i& x, __m256i& y, __m256i mask) {
  const __m256i t = _mm256_and_si256(_mm256_xor_si256(_mm256_srli_epi32(x, S), y), mask);
  y = _mm256_xor_si256(y, t);
  x = _mm256_xor_si256(x, _mm256_slli_epi32(t, S));
}

// The 8 phase registers of one chunk: C[c] byte 4l + b = code of column 32l + 8b + c.
template <int P>
inline void decode_chunk(const uint64_t* const* plane, int64_t chunk, __m256i* C) {
  __m256i R[8];
  for (int i = 0; i < 8; i++)
    R[i] = i < P ? _mm256_loadu_si256((const __m256i*)(plane[i] + chunk * 4)) : _mm256_setzero_si256();
  const __m256i m33 = _mm256_set1_epi8(0x33), m55 = _mm256_set1_epi8(0x55), m0f = _mm256_set1_epi8(0x0f);
  if (P == 1) {
    const __m256i one = _mm256_set1_epi8(1);
    C[0] = _mm256_and_si256(R[0], one);
    for (int c = 1; c < 8; c++) C[c] = _mm256_and_si256(_mm256_srli_epi32(R[0], c), one);
  } else if (P == 2) {
    // 2 x 2 transpose of bit pairs: R0 then holds the 2-bit codes of columns 0, 2, 4, 6 (bits
    // 2k, 2k+1), R1 those of columns 1, 3, 5, 7
    swap_bits<1>(R[0], R[1], m55);
    const __m256i three = _mm256_set1_epi8(3);
    for (int k = 0; k < 4; k++) {
      C[2 * k] = _mm256_and_si256(k ? _mm256_srli_epi32(R[0], 2 * k) : R[0], three);
      C[2 * k + 1] = _mm256_and_si256(k ? _mm256_srli_epi32(R[1], 2 * k) : R[1], three);
    }
  } else if (P <= 4) {
    // 4 x 4 transpose in each nibble: R[j] bit i (+4) = plane i's bit j (+4)
    swap_bits<2>(R[0], R[2], m33);
    swap_bits<2>(R[1], R[3], m33);
    swap_bits<1>(R[0], R[1], m55);
    swap_bits<1>(R[2], R[3], m55);
    for (int j = 0; j < 4; j++) {
      C[j] = _mm256_and_si256(R[j], m0f);
      C[j + 4] = _mm256_and_si256(_mm256_srli_epi32(R[j], 4), m0f);
    }
  } else {
    // 8 x 8 transpose: R[j] bit i = plane i's bit j (planes >= P are zero)
    for (int i = 0; i < 4; i++) swap_bits<4>(R[i], R[i + 4], m0f);
    for (int i = 0; i < 8; i += (i & 1) ? 3 : 1) swap_bits<2>(R[i], R[i + 2], m33);  // i = 0, 1, 4, 5
    for (int i = 0; i < 8; i += 2) swap_bits<1>(R[i], R[i + 1], m55);
    for (int c = 0; c < 8; c++) C[c] = R[c];
  }
}

// Adds one chunk's per-block lane sums into its segments (32, 64 or 128 columns).
inline void store_chunk_segments(__m256i lanes, int64_t chunk, int64_t seg_bits, int32_t* u) {
  alignas(32) int32_t l[8];
  _mm256_store_si256((__m256i*)l, lanes);
  if (seg_bits == 32) {
    for (int b = 0; b < 8; b++) u[chunk * 8 + b] = l[b];
  } else if (seg_bits == 64) {
    for (int s = 0; s < 4; s++) u[chunk * 4 + s] = l[2 * s] + l[2 * s + 1];
  } else {
    u[chunk * 2] = l[0] + l[1] + l[2] + l[3];
    u[chunk * 2 + 1] = l[4] + l[5] + l[6] + l[7];
  }
}

constexpr int64_t kAhead = 2;  // weight rows of prefetch distance

// MR rows of A (a, kp bytes apart) against weight rows [n0, n0 + nt).
template <int P, int MR, int F>
void stream_tile(const uint8_t* a, int64_t kp, const uint64_t* w_planes, int64_t kw, int64_t n0, int64_t nt,
                 const TileOut& out) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  const int64_t chunks = kw / 4;
  for (int64_t j = 0; j < nt; j++) {
    const uint64_t* plane[P];
    for (int i = 0; i < P; i++) plane[i] = w_planes + ((n0 + j) * P + i) * kw;
    __m256i acc32[MR], row32[MR];
    for (int r = 0; r < MR; r++) row32[r] = _mm256_setzero_si256();
    // The planes of row j + kAhead (rows are contiguous) are prefetched as fast as these are
    // read: a row's planes are short streams (K/8 bytes each) that the hardware prefetchers
    // pick up late, and weight streaming is bound by the reads in flight.
    // (an integer address: past the last row it points outside the weights, which a prefetch
    // may do but C++ pointer arithmetic may not)
    const uintptr_t ahead = (uintptr_t)w_planes + (uintptr_t)((n0 + j + kAhead) * P * kw * 8);
    for (int64_t ch = 0; ch < chunks; ch++) {
      for (int64_t off = ch * P * 32; off < (ch + 1) * P * 32; off += 64)
        _mm_prefetch((const char*)(ahead + (uintptr_t)off), _MM_HINT_T0);
      __m256i C[8];
      decode_chunk<P>(plane, ch, C);
      __m256i acc16[MR];
      for (int r = 0; r < MR; r++) acc32[r] = acc16[r] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int c = 0; c < 8; c++) {  // unrolled, so that C[] stays in registers
        for (int r = 0; r < MR; r++) {
          const __m256i av = _mm256_loadu_si256((const __m256i*)(a + r * kp + ch * 256 + c * 32));
          acc16[r] = _mm256_add_epi16(acc16[r], _mm256_maddubs_epi16(av, C[c]));
        }
        if ((c + 1) % F == 0)
          for (int r = 0; r < MR; r++) {
            acc32[r] = _mm256_add_epi32(acc32[r], _mm256_madd_epi16(acc16[r], ones16));
            acc16[r] = _mm256_setzero_si256();
          }
      }
      if (out.seg_bits == 0) {
        for (int r = 0; r < MR; r++) row32[r] = _mm256_add_epi32(row32[r], acc32[r]);
      } else {
        for (int r = 0; r < MR; r++) store_chunk_segments(acc32[r], ch, out.seg_bits, out.u + (r * nt + j) * out.segs);
      }
    }
    if (out.seg_bits == 0)
      for (int r = 0; r < MR; r++) out.u[(r * nt + j) * out.segs] = hsum32(row32[r]);
  }
}

template <int P, int F>
void stream_rows_f(const uint8_t* a, int64_t kp, int64_t rows, const uint64_t* w_planes, int64_t kw, int64_t n0,
                   int64_t nt, const TileOut& out) {
  switch (rows) {
    case 1: return stream_tile<P, 1, F>(a, kp, w_planes, kw, n0, nt, out);
    case 2: return stream_tile<P, 2, F>(a, kp, w_planes, kw, n0, nt, out);
    case 3: return stream_tile<P, 3, F>(a, kp, w_planes, kw, n0, nt, out);
    default: return stream_tile<P, 4, F>(a, kp, w_planes, kw, n0, nt, out);
  }
}

// flush: a compile-time constant, so the unrolled phase loop has no branches.
template <int P>
void stream_rows(const uint8_t* a, int64_t kp, int64_t rows, const uint64_t* w_planes, int64_t kw, int64_t n0,
                 int64_t nt, int flush, const TileOut& out) {
  switch (flush) {
    case 8: return stream_rows_f<P, 8>(a, kp, rows, w_planes, kw, n0, nt, out);
    case 4: return stream_rows_f<P, 4>(a, kp, rows, w_planes, kw, n0, nt, out);
    case 2: return stream_rows_f<P, 2>(a, kp, rows, w_planes, kw, n0, nt, out);
    default: return stream_rows_f<P, 1>(a, kp, rows, w_planes, kw, n0, nt, out);
  }
}

}  // namespace

void stream_prepare_a_avx2(const uint64_t* planes, int bits, int64_t kw, uint8_t* out) {
  avx2_kernels().unpack_row(planes, bits, kw, false, out);
  for (int64_t ch = 0; ch < kw / 4; ch++) {  // natural order -> byte 32c + 4l + b = column 32l + 8b + c
    uint8_t* x = out + ch * 256;
    uint8_t natural[256];
    for (int k = 0; k < 256; k++) natural[k] = x[k];
    for (int c = 0; c < 8; c++)
      for (int l = 0; l < 8; l++)
        for (int b = 0; b < 4; b++) x[32 * c + 4 * l + b] = natural[32 * l + 8 * b + c];
  }
}

void stream_avx2(const uint8_t* a_u8, int q, const uint64_t* w_planes, int p, int64_t kw, int64_t m0, int64_t m1,
                 int64_t n0, int64_t nt, const TileOut& out) {
  const int64_t kp = kw * 64, rows = m1 - m0;
  // Phases whose int16 pair sums are added before widening (a power of two dividing 8).
  const int pair_max = 2 * ((1 << p) - 1) * ((1 << q) - 1);
  int flush = 8;
  while (flush > 1 && flush * pair_max > 32767) flush /= 2;
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
