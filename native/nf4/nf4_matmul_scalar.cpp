// Portable NF4 matmul kernels (identity permutation): the reference the SIMD paths are
// tested against, and the path for CPUs without AVX2.
#include <string.h>

#include "common/nf4.h"
#include "nf4/nf4_matmul_cpu.h"

namespace qk::nf4mm {
namespace {

constexpr float kTable[16] = QK_NF4_TABLE;

constexpr int kIdentity[64] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                               16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
                               32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47,
                               48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};

// Row `row`, elements [k0, k0 + klen) of an aligned NF4 matrix, as float32.
void decode_row(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t row, int64_t k0,
                int64_t klen, float* out) {
  const int64_t base = row * k + k0;  // even: k % 64 == 0
  const uint8_t* p = packed + base / 2;
  for (int64_t j = 0; j < klen; j += 2) {
    const float scale = absmax[(base + j) >> block_shift(blocksize)];
    out[j] = kTable[p[j / 2] >> 4] * scale;
    out[j + 1] = kTable[p[j / 2] & 15] * scale;
  }
}

void gemv(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
          int64_t k0, int64_t klen, const float* xq, int64_t ldx, int64_t m, float* y, int64_t ldy) {
  float w[64];
  float acc[kGemvMaxRows];
  for (int64_t row = n0; row < n1; row++) {
    for (int64_t i = 0; i < m; i++) acc[i] = 0.0f;
    for (int64_t c = 0; c < klen; c += 64) {
      decode_row(packed, absmax, k, blocksize, row, k0 + c, 64, w);
      for (int64_t i = 0; i < m; i++) {
        const float* x = xq + i * ldx + c;
        float s = acc[i];
        for (int j = 0; j < 64; j++) s += x[j] * w[j];
        acc[i] = s;
      }
    }
    for (int64_t i = 0; i < m; i++) y[i * ldy + (row - n0)] = acc[i];
  }
}

void decode(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
            int64_t k0, int64_t klen, float* tile, int64_t ldt) {
  for (int64_t row = n0; row < n1; row++) decode_row(packed, absmax, k, blocksize, row, k0, klen, tile + (row - n0) * ldt);
}

void dot(const float* xq, int64_t ldx, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
         float* out, int64_t ldo) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t r = 0; r < rows; r++) {
      const float* x = xq + i * ldx;
      const float* w = tile + r * ldt;
      float s = 0.0f;
      for (int64_t j = 0; j < klen; j++) s += x[j] * w[j];
      out[i * ldo + r] += s;
    }
}

void axpy(const float* dy, int64_t lddy, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
          float* acc, int64_t lda) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t r = 0; r < rows; r++) {
      const float g = dy[i * lddy + r];
      const float* w = tile + r * ldt;
      float* a = acc + i * lda;
      for (int64_t j = 0; j < klen; j++) a[j] += g * w[j];
    }
}

}  // namespace

const Kernels& scalar_kernels() {
  static const Kernels k{"scalar", kIdentity, gemv, decode, dot, axpy};
  return k;
}

}  // namespace qk::nf4mm
