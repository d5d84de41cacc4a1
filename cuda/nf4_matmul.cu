// The fused NF4 matmul on CUDA: y = x W^T (+ bias) and dx = dy W, W an NF4 tensor [n, k] in the
// bitsandbytes flat layout, dequantized on the fly (no full-precision copy of W is made).
//
// Compiled in CI (sm_80, sm_90); NEVER YET RUN ON A GPU: every kernel here is untested on
// hardware, its speed unmeasured and its thresholds and tile sizes untuned.
//
// Two kernel families, chosen by the number of activation rows m (nf4_matmul_path):
//
// * "cuda-gemv", m <= kGemvMaxRows (16): CUDA-core float32, W streamed once for all m rows.
//   - forward: a warp owns kGemvRowsPerWarp (2) rows of W (= output columns); its lanes walk
//     the row in 32-element chunks (one 128-bit load of packed bytes + one absmax per chunk
//     and row, coalesced), decode with the NF4 table in shared memory, and FMA against the
//     m activation rows (read through L1, where every warp of the SM reuses them). One
//     butterfly shuffle reduction per output at the end.
//   - input grad: a thread owns 8 consecutive columns of W (one 32-bit load per row, a warp
//     covers 128 contiguous bytes of each row) and loops over a slice of W's rows; dy values
//     are block-uniform loads. Row slices write float32 partial sums to stream-ordered
//     scratch and a second kernel adds them in slice order (deterministic, no atomics).
//   Precision: W is exactly fp32(NF4[code] * absmax) (what qk_nf4_dequantize writes as F32),
//   the activations are widened exactly, every product-and-add is one float32 FMA
//   (__fmaf_rn), and the summation order is fixed: results are run-to-run deterministic and
//   match a dense float32 matmul over the dequantized W to float32 rounding.
//
// * "cuda-mma", m > 16: tensor cores, mma.sync m16n8k16 with float32 accumulators. Block tile
//   64 (m) x 64 (output columns) x 64 (reduction), 4 warps of 32 x 32: small enough that a
//   4096-wide layer already gives 64 column tiles and one block needs only 18-37 KB of static
//   shared memory (several blocks per SM), large enough that each decoded W element feeds 64
//   activation rows; 64 reduction elements make each tile row of W 32 packed bytes = one full
//   memory sector. W tiles are decoded into shared memory; the next tile's packed bytes and
//   activations are loaded into registers while the current tile is multiplied. When the
//   output tiles are too few to fill the GPU, the reduction is split into slices (float32
//   partials summed in slice order by a second kernel: deterministic). The input gradient
//   uses the same kernel: the W tile is stored as it lies in memory and read with
//   ldmatrix.trans, which hands the tensor cores W^T.
//   Precision (NOT the float32 products the CUDA-core path gives):
//   - BF16 / F16 activations: W = fp32(NF4[code] * absmax) is rounded to nearest even into
//     the activations' dtype (relative error <= 2^-8 for BF16, 2^-11 for F16; in F16, |W| >=
//     65520 becomes Inf and |W| < 2^-14 loses bits as a subnormal). Products of two 16-bit
//     values are exact; sums are the tensor cores' float32 accumulation. This is the same
//     arithmetic as dequantizing W to the activations' dtype and calling a BF16/F16 GEMM.
//   - F32 activations: "bf16x3": x = xh + xl and W = wh + wl, each part bf16 (round to
//     nearest even of the value, then of the exact float32 remainder), and
//     acc += xl*wh + xh*wl + xh*wh (xl*wl dropped). Each operand is represented to within
//     2^-16 relative (two 8-bit significands), so a product's error is below 3 * 2^-16 ~
//     2^-14.4 of |x||W|: far better than BF16 (2^-8) or TF32 (2^-11), well short of float32
//     (2^-24); 3 mma per tile step instead of 1. A non-finite x or W element gives NaN here
//     where float32 would give +-Inf.
//   Bias is added in float32 after the full sum, then the result is rounded once to y's dtype.
//
// Any n, k, blocksize: fast paths need aligned whole units (forward GEMV: k % 32 == 0 and
// 16-byte aligned packed/x; input-grad GEMV and mma W tiles: row length % 8 == 0 and 4-byte
// aligned packed; mma activations: length % 8 == 0 and 16-byte aligned). Otherwise a general
// path gathers element by element (rows starting mid-byte, blocks straddling rows, a block
// boundary inside an 8-element unit) with the same arithmetic. Nothing here synchronizes
// the host: scratch memory is allocated and freed in stream order.
//
// Known limits (untuned): the forward GEMV does not split k, so a W with few rows (n < ~8K)
// leaves SMs idle; the m = 9..16 input-grad GEMV needs ~220 registers per thread (8 warps per
// SM); the mma path has no cp.async / multi-stage pipeline (one register-prefetched stage).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "common/nf4.h"
#include "cuda_common.cuh"
#include "nf4/nf4_matmul_cuda.h"

namespace {

constexpr int kThreads = 256;        // GEMV and reduction kernels
constexpr int kBlocksPerSm = 32;     // grid cap of the grid-stride kernels
// m above this takes the tensor-core path. 16 = one mma row tile: below it the tensor cores
// would mostly multiply padding. A guess to be measured: at m = 16 the CUDA-core GEMV needs
// ~16 FMAs per streamed weight, which on an H100 (~34 TFMA/s vs ~6.7 G weights/s of HBM)
// likely makes it compute-bound at m >= ~5, so the best threshold may be lower.
constexpr int kGemvMaxRows = 16;
constexpr int kGemvRowsPerWarp = 2;  // forward GEMV: W rows per warp (each x load feeds both)
constexpr int kGradCols = 8;         // input-grad GEMV: W columns per thread (one 32-bit load)

constexpr int kMmaThreads = 128;  // 4 warps, 2 x 2, each 32 x 32 of the output tile
constexpr int kTileM = 64, kTileN = 64, kTileK = 64;
// Shared tile rows are 72 halves = 144 bytes: ldmatrix's 8 row addresses then fall on 8
// distinct 4-bank groups (144 / 4 = 36 = 4 mod 32), so fragment loads are conflict-free.
constexpr int kSmemLd = kTileK + 8;
static_assert(kTileM == kTileK && kTileN == kTileK, "one shared layout serves A, B and B^T tiles");

__constant__ float c_table[16] = QK_NF4_TABLE;

// ---- element types ---------------------------------------------------------------------------

// Tensor-core operand types: RNE packing of two floats and the matching mma instruction
// (OpBf16::round serves the F32 split; F16 activations are never split).
struct OpBf16 {
  static __device__ __forceinline__ uint32_t pack2(float a, float b) {  // a at the lower address
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
  static __device__ __forceinline__ float round(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};
struct OpF16 {
  static __device__ __forceinline__ uint32_t pack2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// Activation types: exact widening, 8 elements from a 16-byte aligned address, and the
// tensor-core operand type (F32 is split into two bf16 parts).
struct InF32 {
  using T = float;
  using Op = OpBf16;
  static constexpr bool kSplit = true;
  static __device__ __forceinline__ float widen(float v) { return v; }
  static __device__ __forceinline__ void load8(const float* p, float (&v)[8]) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    const float4 b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  }
  // The mma path's 8-element unit of A[row, col ..] (zeros outside [M, K]), kept as float32
  // until it is split into shared memory.
  struct Unit {
    float v[8];
  };
  static __device__ __forceinline__ Unit load_unit(const float* __restrict__ a, int64_t row, int64_t col, int64_t M,
                                                   int64_t K, bool vec) {
    Unit u;
    if (vec && row < M && col < K) {  // K % 8 == 0: the whole unit is inside
      load8(a + row * K + col, u.v);
    } else {
#pragma unroll
      for (int e = 0; e < 8; e++) u.v[e] = row < M && col + e < K ? a[row * K + col + e] : 0.0f;
    }
    return u;
  }
};
template <class Widen, class TensorOp>
struct In16 {
  using T = uint16_t;
  using Op = TensorOp;
  static constexpr bool kSplit = false;
  static __device__ __forceinline__ float widen(uint16_t h) { return Widen::f(h); }
  static __device__ __forceinline__ void load8(const uint16_t* p, float (&v)[8]) {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {  // little-endian: the lower address is the low half
      v[2 * j] = Widen::f((uint16_t)(w[j] & 0xffffu));
      v[2 * j + 1] = Widen::f((uint16_t)(w[j] >> 16));
    }
  }
  // The mma path's unit: 8 raw 16-bit values, which go into shared memory unchanged.
  using Unit = uint4;
  static __device__ __forceinline__ uint4 load_unit(const uint16_t* __restrict__ a, int64_t row, int64_t col,
                                                    int64_t M, int64_t K, bool vec) {
    if (vec && row < M && col < K) return __ldg(reinterpret_cast<const uint4*>(a + row * K + col));
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const uint32_t lo = row < M && col + 2 * j < K ? a[row * K + col + 2 * j] : 0u;
      const uint32_t hi = row < M && col + 2 * j + 1 < K ? a[row * K + col + 2 * j + 1] : 0u;
      w[j] = lo | (hi << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
};
struct WidenF16 {  // the hardware conversion: exact like qk::f16_to_f32, without its branches
  static __device__ __forceinline__ float f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
};
struct WidenBF16 {
  static __device__ __forceinline__ float f(uint16_t h) { return qk::bf16_to_f32(h); }
};
using InF16 = In16<WidenF16, OpF16>;
using InBF16 = In16<WidenBF16, OpBf16>;

// Bias and outputs have a run-time dtype (F32 or the activations'): one uniform branch per
// element written, far from the inner loops.
__device__ __forceinline__ float load_as(const void* p, int32_t dtype, int64_t i) {
  if (dtype == QK_F16) return WidenF16::f(static_cast<const uint16_t*>(p)[i]);
  if (dtype == QK_BF16) return qk::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void store_as(void* p, int32_t dtype, int64_t i, float v) {
  if (dtype == QK_F16) static_cast<uint16_t*>(p)[i] = __half_as_ushort(__float2half_rn(v));
  else if (dtype == QK_BF16) static_cast<uint16_t*>(p)[i] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  else static_cast<float*>(p)[i] = v;
}

// ---- NF4 decoding --------------------------------------------------------------------------

// Element e (0..7) of a 32-bit word of packed bytes: byte e/2 (little-endian), high nibble for
// even e. The value is one float32 multiply, exactly as qk_nf4_dequantize computes it.
__device__ __forceinline__ float decode(uint32_t word, int e, float scale, const float* tab) {
  const uint32_t byte = (word >> (8 * (e >> 1))) & 0xffu;
  const uint32_t code = (e & 1) ? (byte & 15u) : (byte >> 4);
  return __fmul_rn(tab[code], scale);
}

// Flat element f of W decoded on its own (the general paths).
__device__ __forceinline__ float decode_at(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                           int log2_bs, int64_t f, const float* tab) {
  const uint32_t byte = packed[f >> 1];
  const uint32_t code = (f & 1) ? (byte & 15u) : (byte >> 4);
  return __fmul_rn(tab[code], absmax[f >> log2_bs]);
}

// The 16-entry table in shared memory: per-lane lookups of distinct codes hit distinct banks,
// where __constant__ memory would serialize them.
__device__ __forceinline__ void load_table(float* tab) {
  if (threadIdx.x < 16) tab[threadIdx.x] = c_table[threadIdx.x];
  __syncthreads();
}

// ---- GEMV forward: y[r, j] = sum_c x[r, c] W[j, c] (+ bias[j]), r < m <= M ---------------

template <class In, int M>
__global__ void __launch_bounds__(kThreads)
    gemv_forward_kernel(const typename In::T* __restrict__ x, const uint8_t* __restrict__ packed,
                        const float* __restrict__ absmax, int log2_bs, const void* __restrict__ bias,
                        int32_t bias_dtype, void* __restrict__ y, int32_t y_dtype, int m, int64_t n, int64_t k,
                        bool vec) {
  __shared__ float tab[16];
  load_table(tab);
  constexpr int R = kGemvRowsPerWarp;
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t)gridDim.x * (kThreads / 32);

  // The loop condition depends on the warp only, so whole warps reach the shuffles together.
  for (int64_t w = (int64_t)blockIdx.x * (kThreads / 32) + (threadIdx.x >> 5); w * R < n; w += warps) {
    const int64_t row0 = w * R;
    float acc[M][R];
#pragma unroll
    for (int r = 0; r < M; r++)
#pragma unroll
      for (int q = 0; q < R; q++) acc[r][q] = 0.0f;

    if (vec) {
      // k % 32 == 0: chunk c of a row is 16 aligned bytes inside one quantization block
      // (the flat index of its first element is a multiple of 32 <= blocksize).
      const int64_t chunks = k >> 5;
      for (int64_t c = lane; c < chunks; c += 32) {
        uint4 q4[R];
        float s[R];
#pragma unroll
        for (int q = 0; q < R; q++) {
          const int64_t row = row0 + q;
          if (row < n) {
            const int64_t f = row * k + (c << 5);
            q4[q] = __ldg(reinterpret_cast<const uint4*>(packed + (f >> 1)));
            s[q] = __ldg(absmax + (f >> log2_bs));
          } else {
            q4[q] = make_uint4(0x77777777u, 0x77777777u, 0x77777777u, 0x77777777u);  // zeros, never stored
            s[q] = 0.0f;
          }
        }
#pragma unroll
        for (int g = 0; g < 4; g++) {
          float wv[R][8];
#pragma unroll
          for (int q = 0; q < R; q++) {
            const uint32_t word = g == 0 ? q4[q].x : g == 1 ? q4[q].y : g == 2 ? q4[q].z : q4[q].w;
#pragma unroll
            for (int e = 0; e < 8; e++) wv[q][e] = decode(word, e, s[q], tab);
          }
#pragma unroll
          for (int r = 0; r < M; r++) {
            if (r < m) {
              float xv[8];
              In::load8(x + (int64_t)r * k + (c << 5) + 8 * g, xv);
#pragma unroll
              for (int q = 0; q < R; q++)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[r][q] = __fmaf_rn(xv[e], wv[q][e], acc[r][q]);
            }
          }
        }
      }
    } else {
      for (int64_t c = lane; c < k; c += 32) {
        float wv[R];
#pragma unroll
        for (int q = 0; q < R; q++)
          wv[q] = row0 + q < n ? decode_at(packed, absmax, log2_bs, (row0 + q) * k + c, tab) : 0.0f;
#pragma unroll
        for (int r = 0; r < M; r++) {
          if (r < m) {
            const float xv = In::widen(x[(int64_t)r * k + c]);
#pragma unroll
            for (int q = 0; q < R; q++) acc[r][q] = __fmaf_rn(xv, wv[q], acc[r][q]);
          }
        }
      }
    }

#pragma unroll
    for (int r = 0; r < M; r++) {
      if (r < m) {
#pragma unroll
        for (int q = 0; q < R; q++)
#pragma unroll
          for (int off = 16; off > 0; off >>= 1) acc[r][q] += __shfl_xor_sync(0xffffffffu, acc[r][q], off);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < M; r++) {
        if (r < m) {
#pragma unroll
          for (int q = 0; q < R; q++) {
            const int64_t row = row0 + q;
            if (row < n) {
              float v = acc[r][q];
              if (bias) v = __fadd_rn(v, load_as(bias, bias_dtype, row));
              store_as(y, y_dtype, (int64_t)r * n + row, v);
            }
          }
        }
      }
    }
  }
}

// ---- GEMV input grad: out[s][r, c] = sum_{j in slice s} dy[r, j] W[j, c], r < m <= M --------

// C = kGradCols (k % 8 == 0, packed 4-byte aligned: 8 columns of a row are one aligned 32-bit
// word inside one quantization block) or 1 (the general path). `out` is float32 [slices][m][k].
template <class In, int M, int C>
__global__ void __launch_bounds__(kThreads)
    gemv_input_grad_kernel(const typename In::T* __restrict__ dy, const uint8_t* __restrict__ packed,
                           const float* __restrict__ absmax, int log2_bs, int m, int64_t n, int64_t k,
                           int64_t rows_per_slice, float* __restrict__ out) {
  __shared__ float tab[16];
  load_table(tab);
  const int64_t c0 = ((int64_t)blockIdx.x * kThreads + threadIdx.x) * C;
  if (c0 >= k) return;  // no barrier follows
  const int64_t begin = (int64_t)blockIdx.y * rows_per_slice;
  const int64_t end = begin + rows_per_slice < n ? begin + rows_per_slice : n;

  float acc[M][C];
#pragma unroll
  for (int r = 0; r < M; r++)
#pragma unroll
    for (int e = 0; e < C; e++) acc[r][e] = 0.0f;

#pragma unroll 4
  for (int64_t j = begin; j < end; j++) {
    const int64_t f = j * k + c0;
    float wv[C];
    if constexpr (C == kGradCols) {
      const uint32_t word = __ldg(reinterpret_cast<const uint32_t*>(packed + (f >> 1)));
      const float s = __ldg(absmax + (f >> log2_bs));
#pragma unroll
      for (int e = 0; e < C; e++) wv[e] = decode(word, e, s, tab);
    } else {
      wv[0] = decode_at(packed, absmax, log2_bs, f, tab);
    }
#pragma unroll
    for (int r = 0; r < M; r++) {
      if (r < m) {
        const float d = In::widen(dy[(int64_t)r * n + j]);  // the same address block-wide: one broadcast
#pragma unroll
        for (int e = 0; e < C; e++) acc[r][e] = __fmaf_rn(d, wv[e], acc[r][e]);
      }
    }
  }

  float* dst = out + (int64_t)blockIdx.y * m * k;
#pragma unroll
  for (int r = 0; r < M; r++)
    if (r < m)
#pragma unroll
      for (int e = 0; e < C; e++) dst[(int64_t)r * k + c0 + e] = acc[r][e];
}

// out[i] = sum_s partial[s * count + i] (in slice order) (+ bias[i % cols]), rounded to out's dtype.
__global__ void __launch_bounds__(kThreads)
    sum_slices_kernel(const float* __restrict__ partial, int64_t slices, int64_t count, int64_t cols,
                      const void* __restrict__ bias, int32_t bias_dtype, void* __restrict__ out, int32_t out_dtype) {
  const int64_t threads = (int64_t)gridDim.x * kThreads;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < count; i += threads) {
    float v = partial[i];
    for (int64_t s = 1; s < slices; s++) v = __fadd_rn(v, partial[s * count + i]);
    if (bias) v = __fadd_rn(v, load_as(bias, bias_dtype, i % cols));
    store_as(out, out_dtype, i, v);
  }
}

// ---- tensor-core GEMM ------------------------------------------------------------------------
//
// out[r, j] = sum_t A[r, t] B[t, j] over one reduction slice (blockIdx.y), A [M, K] the
// activations (x, or dy for the input grad), W [wn, wk] NF4:
//   forward    (kTransB false): B[t, j] = W[j, t], N = wn, K = wk; W tile rows = output columns.
//   input grad (kTransB true):  B[t, j] = W[t, j], N = wk, K = wn; W tile rows = reduction.
// Either way a W tile is 64 W rows x 64 consecutive W columns, stored in shared memory as it
// lies in W; ldmatrix (forward) or ldmatrix.trans (input grad) turns it into B fragments.

// 8 consecutive elements of one W row: codes laid out as in memory, the scale before and after
// a possible block boundary at `split`, and `len` real elements (the rest decode to 0).
struct WUnit {
  uint32_t codes;
  float s0, s1;
  int split, len;
};

__device__ __forceinline__ WUnit load_w_unit(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                             int log2_bs, int64_t wn, int64_t wk, int64_t row, int64_t col,
                                             bool vec) {
  WUnit u{0x77777777u, 0.0f, 0.0f, 8, 0};
  if (row >= wn || col >= wk) return u;
  const int64_t f0 = row * wk + col;
  if (vec) {  // wk % 8 == 0: an aligned word inside one block (blocksize >= 32)
    u.codes = __ldg(reinterpret_cast<const uint32_t*>(packed + (f0 >> 1)));
    u.s0 = u.s1 = __ldg(absmax + (f0 >> log2_bs));
    u.len = 8;
    return u;
  }
  const int len = wk - col < 8 ? (int)(wk - col) : 8;
  uint32_t codes = 0;
#pragma unroll
  for (int e = 0; e < 8; e++) {
    uint32_t code = 7u;
    if (e < len) {
      const int64_t f = f0 + e;
      code = (packed[f >> 1] >> ((f & 1) ? 0 : 4)) & 15u;
    }
    codes |= code << (8 * (e >> 1) + ((e & 1) ? 0 : 4));
  }
  // 8 elements span at most two blocks (blocksize >= 32).
  const int64_t b0 = f0 >> log2_bs, b1 = (f0 + len - 1) >> log2_bs;
  u.codes = codes;
  u.s0 = absmax[b0];
  u.s1 = absmax[b1];
  u.split = b1 == b0 ? 8 : (int)((b1 << log2_bs) - f0);
  u.len = len;
  return u;
}

__device__ __forceinline__ void decode_w_unit(const WUnit& u, const float* tab, float (&v)[8]) {
#pragma unroll
  for (int e = 0; e < 8; e++) v[e] = e < u.len ? decode(u.codes, e, e < u.split ? u.s0 : u.s1, tab) : 0.0f;
}

// 8 float32 values -> one 16-byte row piece of each plane: plane 0 the value rounded to Op's
// type, plane 1 (split) the rounded exact remainder.
template <class Op, bool kSplit>
__device__ __forceinline__ void store_unit(uint16_t* plane0, uint16_t* plane1, const float (&v)[8]) {
  uint32_t hi[4], lo[4];
#pragma unroll
  for (int j = 0; j < 4; j++) {
    hi[j] = Op::pack2(v[2 * j], v[2 * j + 1]);
    if constexpr (kSplit)
      lo[j] = Op::pack2(__fsub_rn(v[2 * j], Op::round(v[2 * j])), __fsub_rn(v[2 * j + 1], Op::round(v[2 * j + 1])));
  }
  *reinterpret_cast<uint4*>(plane0) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
  if constexpr (kSplit) *reinterpret_cast<uint4*>(plane1) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a)
               : "memory");
}

// Units (8 elements) per thread per tile: 64 x 64 / 8 / 128 threads.
constexpr int kUnitsPerThread = kTileM * kTileK / 8 / kMmaThreads;
static_assert(kUnitsPerThread == 4, "tile and thread counts");

template <class In, bool kTransB>
__global__ void __launch_bounds__(kMmaThreads)
    mma_kernel(const typename In::T* __restrict__ a, int64_t M, int64_t K, const uint8_t* __restrict__ packed,
               const float* __restrict__ absmax, int log2_bs, int64_t wn, int64_t wk, int64_t N, int64_t tiles_m,
               int64_t ktiles_per_slice, bool vec_a, bool vec_w, const void* __restrict__ bias, int32_t bias_dtype,
               void* __restrict__ out, int32_t out_dtype) {
  using Op = typename In::Op;
  constexpr bool kSplit = In::kSplit;
  constexpr int kPlanes = kSplit ? 2 : 1;
  __shared__ __align__(16) uint16_t sA[kPlanes][kTileM][kSmemLd];
  __shared__ __align__(16) uint16_t sB[kPlanes][kTileK][kSmemLd];
  __shared__ float tab[16];
  load_table(tab);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn_ = warp & 1;  // the warp's 32 x 32 quadrant
  const int64_t m0 = (int64_t)(blockIdx.x % tiles_m) * kTileM;
  const int64_t n0 = (int64_t)(blockIdx.x / tiles_m) * kTileN;
  const int64_t ktiles = (K + kTileK - 1) / kTileK;
  const int64_t kt_begin = (int64_t)blockIdx.y * ktiles_per_slice;
  const int64_t kt_end = kt_begin + ktiles_per_slice < ktiles ? kt_begin + ktiles_per_slice : ktiles;

  // Registers holding the next tile while the current one is multiplied. Thread unit i covers
  // tile row (tid + 128 i) / 8, columns 8 * ((tid + 128 i) % 8) .. + 8: 8 lanes per 64-wide row.
  typename In::Unit ra[kUnitsPerThread];
  WUnit rw[kUnitsPerThread];

  auto load_tile = [&](int64_t kt) {
    const int64_t k0 = kt * kTileK;
#pragma unroll
    for (int i = 0; i < kUnitsPerThread; i++) {
      const int id = tid + kMmaThreads * i;
      const int row = id >> 3, col = 8 * (id & 7);
      // activations A[m0 + row, k0 + col ..]
      const int64_t ar = m0 + row, ac = k0 + col;
      ra[i] = In::load_unit(a, ar, ac, M, K, vec_a);
      // W rows and columns of this unit
      const int64_t w_row = kTransB ? k0 + row : n0 + row;
      const int64_t w_col = kTransB ? n0 + col : k0 + col;
      rw[i] = load_w_unit(packed, absmax, log2_bs, wn, wk, w_row, w_col, vec_w);
    }
  };

  auto store_tile = [&]() {
#pragma unroll
    for (int i = 0; i < kUnitsPerThread; i++) {
      const int id = tid + kMmaThreads * i;
      const int row = id >> 3, col = 8 * (id & 7);
      if constexpr (kSplit)
        store_unit<Op, true>(&sA[0][row][col], &sA[kPlanes - 1][row][col], ra[i].v);
      else
        *reinterpret_cast<uint4*>(&sA[0][row][col]) = ra[i];  // 16-bit activations go in unchanged
      float w[8];
      decode_w_unit(rw[i], tab, w);
      store_unit<Op, kSplit>(&sB[0][row][col], &sB[kPlanes - 1][row][col], w);
    }
  };

  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

  if (kt_begin < kt_end) load_tile(kt_begin);
  for (int64_t kt = kt_begin; kt < kt_end; kt++) {
    __syncthreads();  // every warp is done reading the previous tile
    store_tile();
    __syncthreads();
    if (kt + 1 < kt_end) load_tile(kt + 1);  // in flight during the tensor-core work below

#pragma unroll
    for (int ks = 0; ks < kTileK; ks += 16) {
      uint32_t af[kPlanes][2][4], bf[kPlanes][4][2];
#pragma unroll
      for (int p = 0; p < kPlanes; p++) {
#pragma unroll
        for (int mi = 0; mi < 2; mi++)  // lanes 0-15: rows at k 0..7, lanes 16-31: the same rows at k 8..15
          ldmatrix_x4(af[p][mi], &sA[p][wm * 32 + mi * 16 + (lane & 15)][ks + (lane >> 4) * 8]);
#pragma unroll
        for (int nj = 0; nj < 2; nj++) {  // two n8 fragments (b0, b1 each) per ldmatrix.x4
          uint32_t r[4];
          if constexpr (kTransB)
            ldmatrix_x4_trans(r, &sB[p][ks + (lane & 7) + ((lane >> 3) & 1) * 8][wn_ * 32 + nj * 16 + (lane >> 4) * 8]);
          else
            ldmatrix_x4(r, &sB[p][wn_ * 32 + nj * 16 + (lane & 7) + ((lane >> 4) << 3)][ks + ((lane >> 3) & 1) * 8]);
          bf[p][2 * nj][0] = r[0];
          bf[p][2 * nj][1] = r[1];
          bf[p][2 * nj + 1][0] = r[2];
          bf[p][2 * nj + 1][1] = r[3];
        }
      }
#pragma unroll
      for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
          if constexpr (kSplit) {  // small terms first
            Op::mma(acc[mi][ni], af[kPlanes - 1][mi], bf[0][ni]);
            Op::mma(acc[mi][ni], af[0][mi], bf[kPlanes - 1][ni]);
          }
          Op::mma(acc[mi][ni], af[0][mi], bf[0][ni]);
        }
    }
  }

  // Accumulator fragment: c0, c1 = (row g, columns 2t, 2t+1), c2, c3 = (row g + 8, same columns).
  const int g = lane >> 2, t = lane & 3;
  const int64_t slice_base = (int64_t)blockIdx.y * M * N;  // 0 unless writing float32 partials
#pragma unroll
  for (int mi = 0; mi < 2; mi++)
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int64_t r = m0 + wm * 32 + mi * 16 + g + 8 * (e >> 1);
        const int64_t j = n0 + wn_ * 32 + ni * 8 + 2 * t + (e & 1);
        if (r < M && j < N) {
          float v = acc[mi][ni][e];
          if (bias) v = __fadd_rn(v, load_as(bias, bias_dtype, j));
          store_as(out, out_dtype, slice_base + r * N + j, v);
        }
      }
}

// ---- host helpers ----------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }
bool aligned(const void* p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }
int log2_exact(int64_t v) { return __builtin_ctzll((unsigned long long)v); }

// The smallest compiled row count >= m (m in 1..kGemvMaxRows).
template <class F>
void with_rows(int m, F&& f) {
  if (m <= 1) f(std::integral_constant<int, 1>{});
  else if (m <= 2) f(std::integral_constant<int, 2>{});
  else if (m <= 4) f(std::integral_constant<int, 4>{});
  else if (m <= 8) f(std::integral_constant<int, 8>{});
  else f(std::integral_constant<int, 16>{});
}

// Calls f(In{}) for the activations' dtype; false for an unexpected dtype.
template <class F>
bool with_input(int32_t dtype, F&& f) {
  switch (dtype) {
    case QK_F32: f(InF32{}); return true;
    case QK_F16: f(InF16{}); return true;
    case QK_BF16: f(InBF16{}); return true;
    default: return false;
  }
}

struct Weights {
  const uint8_t* packed;
  const float* absmax;
  int log2_bs;
  int64_t n, k;  // W is [n, k]
};

// out[s] partial sums (float32) -> out, with bias, in slice order.
qk_status sum_slices(const char* fn, const float* partial, int64_t slices, int64_t rows, int64_t cols,
                     const qk_tensor* bias, const qk_tensor* out, cudaStream_t s) {
  const int64_t count = rows * cols;
  sum_slices_kernel<<<qk::cuda::detail::grid_for(ceil_div(count, kThreads), kBlocksPerSm), kThreads, 0, s>>>(
      partial, slices, count, cols, bias ? bias->data : nullptr, bias ? bias->dtype : QK_F32, out->data,
      out->dtype);
  QK_CUDA_LAUNCHED(fn, "sum_slices_kernel");
  return QK_OK;
}

// The tensor-core path for A [M, K] (x or dy) against W; out [M, N].
qk_status run_mma(const char* fn, bool input_grad, const qk_tensor* act, int64_t M, int64_t K, const Weights& w,
                  int64_t N, const qk_tensor* bias, const qk_tensor* out, cudaStream_t s) {
  using qk::cuda::detail::sm_count;
  const int64_t tiles_m = ceil_div(M, kTileM), tiles_n = ceil_div(N, kTileN);
  if (tiles_m > INT_MAX / tiles_n)
    return qk::fail(QK_ERR_UNSUPPORTED, "%s: a [%lld, %lld] output needs more than 2^31 tiles", fn, (long long)M,
                    (long long)N);
  const int64_t tiles = tiles_m * tiles_n;
  const int64_t ktiles = ceil_div(K, kTileK);

  // Split the reduction only when the output tiles leave SMs idle, each slice keeps >= 4 k-tiles,
  // and the float32 partials (written and read once) stay small next to W's bytes.
  int64_t slices = 1;
  const int64_t target = 2 * (int64_t)sm_count();
  if (tiles < target && ktiles >= 8) {
    slices = ceil_div(target, tiles);
    const int64_t by_work = ktiles / 4, by_traffic = K / (32 * M) > 1 ? K / (32 * M) : 1;
    if (slices > by_work) slices = by_work;
    if (slices > by_traffic) slices = by_traffic;
    if (slices < 1) slices = 1;
  }
  const int64_t per_slice = ktiles > 0 ? ceil_div(ktiles, slices) : 1;
  slices = ktiles > 0 ? ceil_div(ktiles, per_slice) : 1;

  const bool vec_a = K % 8 == 0 && aligned(act->data, 16);
  const bool vec_w = w.k % 8 == 0 && aligned(w.packed, 4);
  qk::cuda::detail::StreamScratch scratch(s);
  float* partial = nullptr;
  if (slices > 1) {
    QK_TRY(scratch.allocate((size_t)slices * (size_t)M * (size_t)N * sizeof(float), fn));
    partial = scratch.as<float>();
  }
  const void* b = slices > 1 || !bias ? nullptr : bias->data;
  const int32_t b_dtype = bias ? bias->dtype : QK_F32;
  void* dst = slices > 1 ? static_cast<void*>(partial) : out->data;
  const int32_t dst_dtype = slices > 1 ? (int32_t)QK_F32 : out->dtype;
  const dim3 grid((unsigned)tiles, (unsigned)slices);

  const bool known = with_input(act->dtype, [&](auto in) {
    using In = decltype(in);
    const auto* ap = static_cast<const typename In::T*>(act->data);
    if (input_grad)
      mma_kernel<In, true><<<grid, kMmaThreads, 0, s>>>(ap, M, K, w.packed, w.absmax, w.log2_bs, w.n, w.k, N, tiles_m,
                                                        per_slice, vec_a, vec_w, b, b_dtype, dst, dst_dtype);
    else
      mma_kernel<In, false><<<grid, kMmaThreads, 0, s>>>(ap, M, K, w.packed, w.absmax, w.log2_bs, w.n, w.k, N,
                                                         tiles_m, per_slice, vec_a, vec_w, b, b_dtype, dst,
                                                         dst_dtype);
  });
  if (!known) return qk::fail(QK_ERR_INTERNAL, "%s: dtype %s reached the CUDA kernel", fn, qk::dtype_name(act->dtype));
  QK_CUDA_LAUNCHED(fn, "mma_kernel");
  if (slices > 1) QK_TRY(sum_slices(fn, partial, slices, M, N, bias, out, s));
  return QK_OK;
}

}  // namespace

namespace qk::cuda {

using detail::DeviceGuard;
using detail::grid_for;
using detail::stream_of;

const char* nf4_matmul_path(int64_t m, bool input_grad) {
  (void)input_grad;  // the same threshold both ways
  return m <= kGemvMaxRows ? "cuda-gemv" : "cuda-mma";
}

qk_status nf4_matmul(const qk_tensor* x, const qk_tensor* packed, const qk_tensor* absmax, int64_t blocksize,
                     const qk_tensor* bias, const qk_tensor* y, qk_stream stream) {
  const char* fn = "qk_nf4_matmul";
  if (!qk::nf4::valid_blocksize(blocksize))
    return qk::fail(QK_ERR_INTERNAL, "%s: blocksize %lld reached the CUDA kernel", fn, (long long)blocksize);
  const int64_t m = y->shape[0], n = y->shape[1], k = x->shape[1];
  if (m == 0 || n == 0) return QK_OK;

  DeviceGuard guard;
  QK_TRY(guard.set(x->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  const Weights w{static_cast<const uint8_t*>(packed->data), static_cast<const float*>(absmax->data),
                  log2_exact(blocksize), n, k};

  if (m > kGemvMaxRows) return run_mma(fn, false, x, m, k, w, n, bias, y, s);

  const bool vec = k % 32 == 0 && aligned(w.packed, 16) && aligned(x->data, 16);
  const int64_t warps = ceil_div(n, kGemvRowsPerWarp);
  const unsigned grid = grid_for(ceil_div(warps, kThreads / 32), kBlocksPerSm);
  const void* b = bias ? bias->data : nullptr;
  const int32_t b_dtype = bias ? bias->dtype : QK_F32;
  const bool known = with_input(x->dtype, [&](auto in) {
    using In = decltype(in);
    with_rows((int)m, [&](auto rows) {
      gemv_forward_kernel<In, decltype(rows)::value><<<grid, kThreads, 0, s>>>(
          static_cast<const typename In::T*>(x->data), w.packed, w.absmax, w.log2_bs, b, b_dtype, y->data, y->dtype,
          (int)m, n, k, vec);
    });
  });
  if (!known) return qk::fail(QK_ERR_INTERNAL, "%s: dtype %s reached the CUDA kernel", fn, qk::dtype_name(x->dtype));
  QK_CUDA_LAUNCHED(fn, "gemv_forward_kernel");
  return QK_OK;
}

qk_status nf4_matmul_input_grad(const qk_tensor* dy, const qk_tensor* packed, const qk_tensor* absmax,
                                int64_t blocksize, const qk_tensor* dx, qk_stream stream) {
  const char* fn = "qk_nf4_matmul_input_grad";
  if (!qk::nf4::valid_blocksize(blocksize))
    return qk::fail(QK_ERR_INTERNAL, "%s: blocksize %lld reached the CUDA kernel", fn, (long long)blocksize);
  const int64_t m = dx->shape[0], k = dx->shape[1], n = dy->shape[1];
  if (m == 0 || k == 0) return QK_OK;

  DeviceGuard guard;
  QK_TRY(guard.set(dy->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  const Weights w{static_cast<const uint8_t*>(packed->data), static_cast<const float*>(absmax->data),
                  log2_exact(blocksize), n, k};

  if (m > kGemvMaxRows) return run_mma(fn, true, dy, m, n, w, k, nullptr, dx, s);

  const bool vec = k % kGradCols == 0 && aligned(w.packed, 4);
  const int cols = vec ? kGradCols : 1;
  const int64_t col_blocks = ceil_div(ceil_div(k, cols), kThreads);
  if (col_blocks > INT_MAX)
    return qk::fail(QK_ERR_UNSUPPORTED, "%s: k = %lld is too large for one launch", fn, (long long)k);
  // Slices of W's rows, until the grid has ~4 blocks per SM: each slice keeps >= 32 rows, and the
  // float32 partials (m x k per slice, written and read once) stay within half of W's bytes.
  int64_t slices = 1;
  const int64_t target = 4 * (int64_t)detail::sm_count();
  if (col_blocks < target) {
    slices = ceil_div(target, col_blocks);
    const int64_t by_rows = n / 32 > 1 ? n / 32 : 1, by_traffic = n / (16 * m) > 1 ? n / (16 * m) : 1;
    if (slices > by_rows) slices = by_rows;
    if (slices > by_traffic) slices = by_traffic;
    if (slices > 65535) slices = 65535;  // grid.y limit
  }
  const int64_t rows_per_slice = n > 0 ? ceil_div(n, slices) : 1;
  slices = n > 0 ? ceil_div(n, rows_per_slice) : 1;

  // One slice into an F32 dx needs no scratch; otherwise partials, then the ordered sum.
  const bool direct = slices == 1 && dx->dtype == QK_F32;
  detail::StreamScratch scratch(s);
  float* partial = static_cast<float*>(dx->data);
  if (!direct) {
    QK_TRY(scratch.allocate((size_t)slices * (size_t)m * (size_t)k * sizeof(float), fn));
    partial = scratch.as<float>();
  }
  const dim3 grid((unsigned)col_blocks, (unsigned)slices);
  const bool known = with_input(dy->dtype, [&](auto in) {
    using In = decltype(in);
    const auto* d = static_cast<const typename In::T*>(dy->data);
    with_rows((int)m, [&](auto rows) {
      constexpr int M = decltype(rows)::value;
      if (vec)
        gemv_input_grad_kernel<In, M, kGradCols><<<grid, kThreads, 0, s>>>(d, w.packed, w.absmax, w.log2_bs, (int)m, n,
                                                                          k, rows_per_slice, partial);
      else
        gemv_input_grad_kernel<In, M, 1><<<grid, kThreads, 0, s>>>(d, w.packed, w.absmax, w.log2_bs, (int)m, n, k,
                                                                  rows_per_slice, partial);
    });
  });
  if (!known) return qk::fail(QK_ERR_INTERNAL, "%s: dtype %s reached the CUDA kernel", fn, qk::dtype_name(dy->dtype));
  QK_CUDA_LAUNCHED(fn, "gemv_input_grad_kernel");
  if (!direct) QK_TRY(sum_slices(fn, partial, slices, m, k, nullptr, dx, s));
  return QK_OK;
}

}  // namespace qk::cuda
