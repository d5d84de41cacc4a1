// NF4 matmul CPU kernels: one table per SIMD path. The ABI layer (nf4_matmul_api.cpp) brings
// the activations into a "permuted" float32 layout (xq) once per call, and every kernel of a
// table works in that layout: inside each 64-element chunk of k, position q holds element
// perm64[q]. The permutation is whatever order the path's NF4 decode produces for free
// (nibble order, register shuffles), so decoded weights never need reordering: only the small
// activation matrix is reordered, once. K is padded to a multiple of 64 with zeros in xq.
//
// Decoded weights are W[n, k] = fp32(NF4[code] * absmax) exactly (what qk_nf4_dequantize
// writes as F32); products and sums are float32.
#pragma once
#include <stdint.h>

namespace qk::nf4mm {

// Internal linkage: these are compiled into kernel files with different ISA flags, and the linker
// must not hand one file another's copy.
namespace {

// The fused GEMV needs every 64-weight chunk inside one block and starting on a byte:
// k % 64 == 0 and blocksize >= 64. Other shapes decode through the portable path.
inline bool aligned(int64_t k, int64_t blocksize) { return k % 64 == 0 && blocksize >= 64; }

// log2 of a (power-of-two) blocksize: a shift instead of a 64-bit division per 64 weights,
// which cost as much as decoding them.
inline int block_shift(int64_t blocksize) { return __builtin_ctzll((unsigned long long)blocksize); }

}  // namespace

// The fused forward GEMV serves m <= this; larger m tile through decode + dot, which also decodes
// each weight once for all rows. Above 8 rows the GEMV re-decodes a row per group of 8 and its
// activation loads outnumber its FMAs: the tiled path measured 1.35x faster at m = 16 (AVX2).
constexpr int64_t kGemvMaxRows = 8;
// The input gradient streams W in row bands with per-band partial sums for m <= this.
constexpr int64_t kInputGradFewRows = 16;

struct Kernels {
  const char* name;
  const int* perm64;  // [64]: position q of a chunk holds element perm64[q] of the chunk

  // y[i * ldy + (row - n0)] = sum_{j < klen} xq[i * ldx + j] * W[row, k0 + j] for rows [n0, n1),
  // i < m (m <= kGemvMaxRows); xq points at column k0. Aligned shapes only; k0 and klen are multiples of 64.
  // Streams each packed row (segment) once for all m activation rows.
  void (*gemv)(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
               int64_t k0, int64_t klen, const float* xq, int64_t ldx, int64_t m, float* y, int64_t ldy);

  // tile[(row - n0) * ldt + j] = W[row, k0 + j] in permuted order, rows [n0, n1), j < klen.
  // Aligned shapes only; k0 and klen are multiples of 64.
  void (*decode)(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
                 int64_t k0, int64_t klen, float* tile, int64_t ldt);

  // out[i * ldo + r] += sum_{j < klen} xq[i * ldx + j] * tile[r * ldt + j] for i < m, r < rows.
  // klen is a multiple of 64.
  void (*dot)(const float* xq, int64_t ldx, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
              float* out, int64_t ldo);

  // acc[i * lda + j] += sum_{r < rows} dy[i * lddy + r] * tile[r * ldt + j] for i < m, j < klen.
  // klen is a multiple of 64.
  void (*axpy)(const float* dy, int64_t lddy, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
               float* acc, int64_t lda);
};

const Kernels& scalar_kernels();
const Kernels& avx2_kernels();
const Kernels& avx512_kernels();

// Shared by the SIMD tables: AVX2 dot/axpy serve the AVX-512 table too (they are bound by
// FMA throughput, not by vector width, at these tile sizes).
void dot_avx2(const float* xq, int64_t ldx, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
              float* out, int64_t ldo);
void axpy_avx2(const float* dy, int64_t lddy, int64_t m, const float* tile, int64_t ldt, int64_t rows, int64_t klen,
               float* acc, int64_t lda);

}  // namespace qk::nf4mm
