// NF4 CPU kernels: one table of entry points per SIMD path. Each kernel works on a range so
// the ABI layer can split work over the worker pool.
#pragma once
#include <stdint.h>

namespace qk::nf4 {

struct CpuKernels {
  // Quantizes whole blocks [block_begin, block_end) of the n-element tensor x (F32/F16/BF16).
  // Returns the lowest flat index of a NaN/Inf element in that range, or -1. Blocks start at
  // even elements (blocksize >= 32), so each block owns whole bytes of `packed`.
  int64_t (*quantize)(const void* x, int32_t dtype, int64_t n, int64_t blocksize, int64_t block_begin,
                      int64_t block_end, uint8_t* packed, float* absmax);
  // Dequantizes elements [begin, end) into out (F32/F16/BF16); begin is a multiple of 64.
  void (*dequantize)(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin, int64_t end,
                     void* out, int32_t dtype);
};

const CpuKernels& scalar_kernels();
const CpuKernels& avx2_kernels();
const CpuKernels& avx512_kernels();

// Scalar helpers the SIMD files use for their ragged tails.
int64_t quantize_block_scalar(const void* x, int32_t dtype, int64_t begin, int64_t end, uint8_t* packed,
                              float* absmax_out);
void dequantize_range_scalar(const uint8_t* packed, const float* absmax, int64_t blocksize, int64_t begin,
                             int64_t end, void* out, int32_t dtype);

}  // namespace qk::nf4
