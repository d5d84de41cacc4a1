// NF4 kernels for AVX-512 (F, BW, VL, DQ). Compiled with those flags only in this file and
// reached only after cpuid says the CPU has them.
#include <immintrin.h>

// GCC 12 warns inside its own AVX-512 intrinsic headers (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "common/nf4.h"
#include "nf4/nf4_cpu.h"
#include "qkern.h"

namespace qk::nf4 {
namespace {

const float kThresholds[16] = {-0.8480963706970215f, -0.6106328964233398f, -0.4599952697753906f,
                               -0.33967941999435425f, -0.23460739850997925f, -0.13791173696517944f,
                               -0.045525018125772476f, 0.03979014977812767f, 0.120255246758461f,
                               0.2035212516784668f, 0.2920137643814087f, 0.3893125355243683f,
                               0.5016634464263916f, 0.6427869200706482f, 0.8614784479141235f,
                               __builtin_inff()};
const float kTable[16] = QK_NF4_TABLE;

// 16 elements of any supported input dtype, widened exactly to float32.
inline __m512 load16(const void* x, int32_t dtype, int64_t i) {
  switch (dtype) {
    case QK_F16:
      return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)((const uint16_t*)x + i)));
    case QK_BF16:
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)((const uint16_t*)x + i))), 16));
    default:
      return _mm512_loadu_ps((const float*)x + i);
  }
}

// Binary search over the 15 sorted thresholds: code = #thresholds strictly below s.
inline __m512i encode16(__m512 s, __m512 thr) {
  __m512i c = _mm512_setzero_si512();
  const __m512i seven = _mm512_set1_epi32(7), three = _mm512_set1_epi32(3), one = _mm512_set1_epi32(1);
  __mmask16 m = _mm512_cmp_ps_mask(s, _mm512_permutexvar_ps(_mm512_add_epi32(c, seven), thr), _CMP_GT_OQ);
  c = _mm512_mask_add_epi32(c, m, c, _mm512_set1_epi32(8));
  m = _mm512_cmp_ps_mask(s, _mm512_permutexvar_ps(_mm512_add_epi32(c, three), thr), _CMP_GT_OQ);
  c = _mm512_mask_add_epi32(c, m, c, _mm512_set1_epi32(4));
  m = _mm512_cmp_ps_mask(s, _mm512_permutexvar_ps(_mm512_add_epi32(c, one), thr), _CMP_GT_OQ);
  c = _mm512_mask_add_epi32(c, m, c, _mm512_set1_epi32(2));
  m = _mm512_cmp_ps_mask(s, _mm512_permutexvar_ps(c, thr), _CMP_GT_OQ);
  return _mm512_mask_add_epi32(c, m, c, one);
}

int64_t quantize_avx512(const void* x, int32_t dtype, int64_t n, int64_t blocksize, int64_t b0, int64_t b1,
                        uint8_t* packed, float* absmax) {
  const __m512 thr = _mm512_loadu_ps(kThresholds);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  for (int64_t b = b0; b < b1; b++) {
    int64_t begin = b * blocksize;
    if (begin + blocksize > n) {  // the short last block
      int64_t bad = quantize_block_scalar(x, dtype, begin, n, packed, &absmax[b]);
      if (bad >= 0) return bad;
      continue;
    }
    int64_t end = begin + blocksize;
    // Max over |x| as unsigned integers: monotone for finite floats, and any NaN/Inf shows
    // as a value >= 0x7f800000, so one pass finds both the absmax and bad input.
    __m512i amax = _mm512_setzero_si512();
    for (int64_t i = begin; i < end; i += 16)
      amax = _mm512_max_epu32(amax, _mm512_and_si512(_mm512_castps_si512(load16(x, dtype, i)), abs_mask));
    uint32_t amax_bits = _mm512_reduce_max_epu32(amax);
    if (amax_bits >= 0x7f800000u) return quantize_block_scalar(x, dtype, begin, end, packed, &absmax[b]);
    float am;
    __builtin_memcpy(&am, &amax_bits, 4);
    absmax[b] = am;
    const __m512 inv = _mm512_set1_ps(inverse_absmax(am));
    for (int64_t i = begin; i < end; i += 16) {
      __m512 v = load16(x, dtype, i);
      // zero elements encode as 0 exactly (code 7), even when inv is Inf
      __m512 s = _mm512_maskz_mul_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ), v, inv);
      __m512i c = encode16(s, thr);
      // pairs (c[2j], c[2j+1]) share a qword: (low << 4) | high-dword gives the byte in bits 0..7
      __m512i pair = _mm512_or_si512(_mm512_slli_epi64(c, 4), _mm512_srli_epi64(c, 32));
      _mm_storel_epi64((__m128i*)(packed + (i >> 1)), _mm512_cvtepi64_epi8(pair));
    }
  }
  return -1;
}

// Rounds 16 floats to bf16, nearest even; NaN becomes a quiet NaN (as qk::f32_to_bf16).
inline __m256i to_bf16(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

inline void store16(void* out, int32_t dtype, int64_t i, __m512 v) {
  switch (dtype) {
    case QK_F16:
      _mm256_storeu_si256((__m256i*)((uint16_t*)out + i), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    case QK_BF16:
      _mm256_storeu_si256((__m256i*)((uint16_t*)out + i), to_bf16(v));
      break;
    default:
      _mm512_storeu_ps((float*)out + i, v);
  }
}

template <int32_t DTYPE>
void dequantize_avx512_t(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin, int64_t end,
                         void* out) {
  const __m512 table = _mm512_loadu_ps(kTable);
  // lanes of the 32 decoded values: even elements come from high nibbles, odd from low
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i low4 = _mm512_set1_epi32(15);
  int64_t i = begin;
  while (i < end) {
    int64_t block = i / blocksize;
    int64_t stop = (block + 1) * blocksize < end ? (block + 1) * blocksize : end;
    const __m512 scale = _mm512_set1_ps(absmax[block]);
    for (; i + 32 <= stop; i += 32) {
      __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(packed + (i >> 1))));
      __m512i hi = _mm512_srli_epi32(bytes, 4);
      __m512i lo = _mm512_and_si512(bytes, low4);
      __m512i idx0 = _mm512_permutex2var_epi32(hi, first, lo);
      __m512i idx1 = _mm512_permutex2var_epi32(hi, second, lo);
      store16(out, DTYPE, i, _mm512_mul_ps(_mm512_permutexvar_ps(idx0, table), scale));
      store16(out, DTYPE, i + 16, _mm512_mul_ps(_mm512_permutexvar_ps(idx1, table), scale));
    }
    if (i < stop) {
      dequantize_range_scalar(packed, absmax, blocksize, i, stop, out, DTYPE);
      i = stop;
    }
  }
}

void dequantize_avx512(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin, int64_t end,
                       void* out, int32_t dtype) {
  switch (dtype) {
    case QK_F16: return dequantize_avx512_t<QK_F16>(packed, absmax, blocksize, begin, end, out);
    case QK_BF16: return dequantize_avx512_t<QK_BF16>(packed, absmax, blocksize, begin, end, out);
    default: return dequantize_avx512_t<QK_F32>(packed, absmax, blocksize, begin, end, out);
  }
}

}  // namespace

const CpuKernels& avx512_kernels() {
  static const CpuKernels k{quantize_avx512, dequantize_avx512};
  return k;
}

}  // namespace qk::nf4
