// NF4 kernels for AVX2 + FMA + F16C. Compiled with those flags only in this file and reached
// only after cpuid says the CPU has them.
#include <immintrin.h>

#include "common/nf4.h"
#include "nf4/nf4_cpu.h"
#include "qkern.h"

namespace qk::nf4 {
namespace {

const float kThresholds[15] = QK_NF4_THRESHOLDS;
const float kTable[16] = QK_NF4_TABLE;

inline __m256 load8(const void* x, int32_t dtype, int64_t i) {
  switch (dtype) {
    case QK_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + i)));
    case QK_BF16:
      return _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)x + i))), 16));
    default: return _mm256_loadu_ps((const float*)x + i);
  }
}

int64_t quantize_avx2(const void* x, int32_t dtype, int64_t n, int64_t blocksize, int64_t b0, int64_t b1,
                      uint8_t* packed, float* absmax) {
  __m256 thr[15];
  for (int k = 0; k < 15; k++) thr[k] = _mm256_set1_ps(kThresholds[k]);
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
  // gathers byte 0 and byte 8 of each 128-bit lane (the packed pair bytes) into bytes 0..1
  const __m256i pick = _mm256_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                        0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  for (int64_t b = b0; b < b1; b++) {
    int64_t begin = b * blocksize;
    if (begin + blocksize > n) {
      int64_t bad = quantize_block_scalar(x, dtype, begin, n, packed, &absmax[b]);
      if (bad >= 0) return bad;
      continue;
    }
    int64_t end = begin + blocksize;
    __m256i amax = _mm256_setzero_si256();  // see the AVX-512 file: integer max finds NaN/Inf too
    for (int64_t i = begin; i < end; i += 8)
      amax = _mm256_max_epu32(amax, _mm256_and_si256(_mm256_castps_si256(load8(x, dtype, i)), abs_mask));
    __m128i m4 = _mm_max_epu32(_mm256_castsi256_si128(amax), _mm256_extracti128_si256(amax, 1));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0x4e));
    m4 = _mm_max_epu32(m4, _mm_shuffle_epi32(m4, 0xb1));
    uint32_t amax_bits = (uint32_t)_mm_cvtsi128_si32(m4);
    if (amax_bits >= 0x7f800000u) return quantize_block_scalar(x, dtype, begin, end, packed, &absmax[b]);
    float am;
    __builtin_memcpy(&am, &amax_bits, 4);
    absmax[b] = am;
    const __m256 inv = _mm256_set1_ps(inverse_absmax(am));
    for (int64_t i = begin; i < end; i += 8) {
      __m256 v = load8(x, dtype, i);
      __m256 s = _mm256_and_ps(_mm256_mul_ps(v, inv), _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ));
      __m256i c = _mm256_setzero_si256();
      for (int k = 0; k < 15; k++)  // comparison masks are -1: subtracting counts them
        c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(s, thr[k], _CMP_GT_OQ)));
      __m256i pair = _mm256_or_si256(_mm256_slli_epi64(c, 4), _mm256_srli_epi64(c, 32));
      __m256i bytes = _mm256_shuffle_epi8(pair, pick);
      uint32_t lo = (uint32_t)_mm_extract_epi16(_mm256_castsi256_si128(bytes), 0);
      uint32_t hi = (uint32_t)_mm_extract_epi16(_mm256_extracti128_si256(bytes, 1), 0);
      uint32_t four = lo | (hi << 16);
      __builtin_memcpy(packed + (i >> 1), &four, 4);
    }
  }
  return -1;
}

inline __m128i to_bf16(__m256 v) {
  __m256i u = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  r = _mm256_blendv_epi8(r, quiet, nan);
  // values are < 2^16, so unsigned saturation packs them unchanged
  __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  return packed;
}

// 8 codes (as dword indices 0..15) -> table values, using two 8-entry permutes.
inline __m256 lookup8(__m256i idx, __m256 tlo, __m256 thi) {
  __m256 lo = _mm256_permutevar8x32_ps(tlo, idx);
  __m256 hi = _mm256_permutevar8x32_ps(thi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// 16-bit outputs: every output of a block is one of 16 values, round(T[c] * absmax). Build those
// 16 results once per block (the same multiply and rounding as the scalar path, so the bits
// agree) and look them up with byte shuffles: 32 elements take ~15 instructions.
template <int32_t DTYPE>
void dequantize_avx2_lut16(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin,
                           int64_t end, void* out) {
  const __m256 tlo = _mm256_loadu_ps(kTable), thi = _mm256_loadu_ps(kTable + 8);
  const __m128i low4 = _mm_set1_epi8(15), low8 = _mm_set1_epi16(0xff);
  uint16_t* o = static_cast<uint16_t*>(out);
  int64_t i = begin;
  while (i < end) {
    int64_t block = i / blocksize;
    int64_t stop = (block + 1) * blocksize < end ? (block + 1) * blocksize : end;
    const __m256 scale = _mm256_set1_ps(absmax[block]);
    __m128i v0, v1;  // the 16 possible outputs of this block, as 16-bit words
    if (DTYPE == QK_F16) {
      v0 = _mm256_cvtps_ph(_mm256_mul_ps(tlo, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      v1 = _mm256_cvtps_ph(_mm256_mul_ps(thi, scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      v0 = to_bf16(_mm256_mul_ps(tlo, scale));
      v1 = to_bf16(_mm256_mul_ps(thi, scale));
    }
    const __m256i lo_bytes = _mm256_broadcastsi128_si256(
        _mm_packus_epi16(_mm_and_si128(v0, low8), _mm_and_si128(v1, low8)));
    const __m256i hi_bytes = _mm256_broadcastsi128_si256(_mm_packus_epi16(_mm_srli_epi16(v0, 8), _mm_srli_epi16(v1, 8)));
    for (; i + 32 <= stop; i += 32) {
      __m128i b = _mm_loadu_si128((const __m128i*)(packed + (i >> 1)));
      __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);  // codes of even elements
      __m128i lo = _mm_and_si128(b, low4);                     // codes of odd elements
      __m256i codes = _mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo));  // element order
      __m256i l = _mm256_shuffle_epi8(lo_bytes, codes);
      __m256i h = _mm256_shuffle_epi8(hi_bytes, codes);
      __m256i w0 = _mm256_unpacklo_epi8(l, h);  // elements 0..7 | 16..23
      __m256i w1 = _mm256_unpackhi_epi8(l, h);  // elements 8..15 | 24..31
      _mm256_storeu_si256((__m256i*)(o + i), _mm256_permute2x128_si256(w0, w1, 0x20));
      _mm256_storeu_si256((__m256i*)(o + i + 16), _mm256_permute2x128_si256(w0, w1, 0x31));
    }
    if (i < stop) {
      dequantize_range_scalar(packed, absmax, blocksize, i, stop, out, DTYPE);
      i = stop;
    }
  }
}

void dequantize_avx2_f32(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin, int64_t end,
                         float* out) {
  const __m256 tlo = _mm256_loadu_ps(kTable), thi = _mm256_loadu_ps(kTable + 8);
  const __m256i low4 = _mm256_set1_epi32(15);
  int64_t i = begin;
  while (i < end) {
    int64_t block = i / blocksize;
    int64_t stop = (block + 1) * blocksize < end ? (block + 1) * blocksize : end;
    const __m256 scale = _mm256_set1_ps(absmax[block]);
    for (; i + 16 <= stop; i += 16) {
      __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(packed + (i >> 1))));
      __m256 even = lookup8(_mm256_srli_epi32(bytes, 4), tlo, thi);
      __m256 odd = lookup8(_mm256_and_si256(bytes, low4), tlo, thi);
      __m256 a = _mm256_unpacklo_ps(even, odd);  // e0 o0 e1 o1 | e4 o4 e5 o5
      __m256 b = _mm256_unpackhi_ps(even, odd);  // e2 o2 e3 o3 | e6 o6 e7 o7
      _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x20), scale));
      _mm256_storeu_ps(out + i + 8, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x31), scale));
    }
    if (i < stop) {
      dequantize_range_scalar(packed, absmax, blocksize, i, stop, out, QK_F32);
      i = stop;
    }
  }
}

void dequantize_avx2(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin, int64_t end,
                     void* out, int32_t dtype) {
  switch (dtype) {
    case QK_F16: return dequantize_avx2_lut16<QK_F16>(packed, absmax, blocksize, begin, end, out);
    case QK_BF16: return dequantize_avx2_lut16<QK_BF16>(packed, absmax, blocksize, begin, end, out);
    default: return dequantize_avx2_f32(packed, absmax, blocksize, begin, end, static_cast<float*>(out));
  }
}

}  // namespace

const CpuKernels& avx2_kernels() {
  static const CpuKernels k{quantize_avx2, dequantize_avx2};
  return k;
}

}  // namespace qk::nf4
