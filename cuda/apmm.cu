// APMM on CUDA: packing, fused quantize + pack, unpack, and the matmul on tensor cores.
//
// NEVER RUN ON A GPU: written and compiled (sm_80, sm_90) on a machine without one; the CPU
// kernels are the tested reference. Run the Java/native APMM tests on a CUDA device before use.
//
//  - b1 path ("cuda-b1-mma"): mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc, valid
//    on sm_80 and sm_90 (Hopper has no XOR b1 MMA, so AND is used everywhere; the bipolar and
//    signed offsets are corrected afterwards from the code sums: x = alpha*u + beta). Each warp
//    of a block takes some of the p*q plane pairs (i, j) of the block's 16 x 8 output tile; the
//    per-pair int32 results go to shared memory and the block recovers sum 2^(i+j) P_ij there.
//    Segments shorter than 256 columns (groups 32/64/128) mask A's 32-bit fragments.
//  - int8 path ("cuda-int8-mma"): each 16 x 32 tile of A (u_a, u8) and 8 x 32 tile of W
//    (u_w - 2^(p-1), s8) is unpacked from the planes into shared memory, then
//    mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32; u_a * 2^(p-1) is added back from the sums.
//  - The epilogue (exact segment product, zero points, scales in float64, one rounding) is the
//    CPU's, from native/common/apmm.h.
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "apmm/apmm_cuda.h"
#include "common/apmm.h"
#include "cuda_common.cuh"

namespace {

using namespace qk::apmm;
using qk::cuda::detail::DeviceGuard;
using qk::cuda::detail::grid_for;
using qk::cuda::detail::stream_of;
using qk::cuda::detail::StreamScratch;

constexpr unsigned long long kNone = ~0ULL;
constexpr int kWarps = 4;

__device__ __forceinline__ int64_t read_code(const void* p, int32_t dtype, int64_t i) {
  switch (dtype) {
    case QK_I8: return static_cast<const int8_t*>(p)[i];
    case QK_U8: return static_cast<const uint8_t*>(p)[i];
    case QK_I16: return static_cast<const int16_t*>(p)[i];
    default: return static_cast<const int32_t*>(p)[i];
  }
}

__device__ __forceinline__ float read_float(const void* p, int32_t dtype, int64_t i) {
  if (dtype == QK_F16) return qk::f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  if (dtype == QK_BF16) return qk::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

// Packs one row's unsigned codes 32 columns per warp step: ballots give the plane bits of a
// 32-bit half-word, lane 0 stores them and adds the warp's code sum to its segment.
// mode 0: integer codes (checked); mode 1: floats quantized with scales/zeros of the row.
struct PackArgs {
  const void* src;
  int32_t dtype, format, bits;
  int64_t rows, k, kw, group, scale_group, segs, scale_segs;
  uint32_t* planes;  // [rows, bits, 2*kw] half-words
  int32_t* sums;
  const float* scales;
  const int32_t* zeros;
  unsigned long long* first_bad;
};

template <int Mode>
__global__ void pack_kernel(PackArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t halves = a.kw * 2;
  const int64_t warp = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
  for (int64_t t = warp; t < a.rows * halves; t += warps) {
    const int64_t r = t / halves, h = t % halves, c = h * 32 + lane;
    uint32_t u = 0;
    if (c < a.k) {
      if (Mode == 0) {
        int64_t x = read_code(a.src, a.dtype, r * a.k + c);
        if (!code_valid(a.format, a.bits, x)) {
          atomicMin(a.first_bad, (unsigned long long)(r * a.k + c));
          x = code_min(a.format, a.bits);
        }
        u = code_to_u(a.format, a.bits, (int32_t)x);
      } else {
        const int64_t si = r * a.scale_segs + (a.scale_group ? c / a.scale_group : 0);
        const int32_t zero = a.zeros ? a.zeros[si] : 0;
        u = code_to_u(a.format, a.bits,
                      quantize_value(a.format, a.bits, read_float(a.src, a.dtype, r * a.k + c), a.scales[si], zero));
      }
    }
    for (int i = 0; i < a.bits; i++) {
      const uint32_t plane = __ballot_sync(0xffffffffu, (u >> i) & 1u);
      if (lane == 0) a.planes[(r * a.bits + i) * halves + h] = plane;
    }
    uint32_t sum = u;
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, o);
    if (lane == 0 && h * 32 < a.k) atomicAdd(&a.sums[r * a.segs + (a.group ? h * 32 / a.group : 0)], (int32_t)sum);
  }
}

// Scale and zero point of each (row, scale segment); NaN/Inf -> lowest flat index.
__global__ void stats_kernel(const void* x, int32_t dtype, int32_t format, int32_t bits, int64_t rows, int64_t k,
                             int64_t scale_group, int64_t scale_segs, float* scales, int32_t* zeros,
                             unsigned long long* first_bad) {
  __shared__ float s_amax[256], s_lo[256], s_hi[256];
  const int64_t len = scale_group ? scale_group : k;
  for (int64_t g = blockIdx.x; g < rows * scale_segs; g += gridDim.x) {
    const int64_t r = g / scale_segs, c0 = (g % scale_segs) * len, c1 = c0 + len < k ? c0 + len : k;
    float amax = 0.0f, lo = 0.0f, hi = 0.0f;
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
      const float v = read_float(x, dtype, r * k + c);
      if (!isfinite(v)) {
        atomicMin(first_bad, (unsigned long long)(r * k + c));
        continue;
      }
      amax = fmaxf(amax, fabsf(v));
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    s_amax[threadIdx.x] = amax;
    s_lo[threadIdx.x] = lo;
    s_hi[threadIdx.x] = hi;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
      if ((int)threadIdx.x < o) {
        s_amax[threadIdx.x] = fmaxf(s_amax[threadIdx.x], s_amax[threadIdx.x + o]);
        s_lo[threadIdx.x] = fminf(s_lo[threadIdx.x], s_lo[threadIdx.x + o]);
        s_hi[threadIdx.x] = fmaxf(s_hi[threadIdx.x], s_hi[threadIdx.x + o]);
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      int32_t zero = 0;
      scales[g] = group_scale(format, bits, s_amax[0], s_lo[0], s_hi[0], &zero);
      if (zeros) zeros[g] = zero;
    }
    __syncthreads();
  }
}

__global__ void unpack_kernel(const uint64_t* planes, int32_t format, int32_t bits, int64_t rows, int64_t k,
                              int64_t kw, int32_t* codes) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * k; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / k, c = i % k;
    uint32_t u = 0;
    for (int b = 0; b < bits; b++) u |= (uint32_t)((planes[(r * bits + b) * kw + c / 64] >> (c % 64)) & 1u) << b;
    codes[i] = u_to_code(format, bits, u);
  }
}

struct MatmulArgs {
  const uint32_t* a_planes;  // [M, q, 2*kw] half-words
  const uint32_t* w_planes;  // [N, p, 2*kw]
  const int32_t *a_sums, *w_sums;
  const float *a_scales, *w_scales;
  const int32_t *a_zeros, *w_zeros;
  bool a_per_seg, w_per_seg;
  int32_t a_format, a_bits, w_format, w_bits;
  int64_t m, n, k, kw, group, segs;
  void* out;
  int32_t out_dtype;
};

// One output element's running value over segments (each thread owns one element of the tile).
struct Acc {
  int64_t total = 0;
  double y = 0.0;
};

__device__ __forceinline__ void add_segment(const MatmulArgs& a, int64_t m, int64_t n, int64_t s, int64_t uprod,
                                            Acc& acc) {
  const int64_t len = a.group == 0 ? a.k : (a.k < (s + 1) * a.group ? a.k : (s + 1) * a.group) - s * a.group;
  const int64_t sa = a.a_sums[m * a.segs + s], sw = a.w_sums[n * a.segs + s];
  const int64_t d = segment_product(a.a_format, a.a_bits, a.w_format, a.w_bits, uprod, sa, sw, len);
  if (a.out_dtype == QK_I32) {
    acc.total += d;
    return;
  }
  const int64_t ia = a.a_per_seg ? m * a.segs + s : m, iw = a.w_per_seg ? n * a.segs + s : n;
  const int64_t za = a.a_zeros ? a.a_zeros[ia] : 0, zw = a.w_zeros ? a.w_zeros[iw] : 0;
  const int64_t e = segment_centered(a.a_format, a.a_bits, a.w_format, a.w_bits, d, sa, sw, len, za, zw);
  acc.y += (double)a.a_scales[ia] * (double)a.w_scales[iw] * (double)e;
}

__device__ __forceinline__ void store(const MatmulArgs& a, int64_t m, int64_t n, const Acc& acc) {
  const int64_t at = m * a.n + n;
  switch (a.out_dtype) {
    case QK_I32: static_cast<int32_t*>(a.out)[at] = (int32_t)acc.total; break;
    case QK_F32: static_cast<float*>(a.out)[at] = (float)acc.y; break;
    case QK_F16: static_cast<uint16_t*>(a.out)[at] = qk::f32_to_f16(round_to_odd_f32(acc.y)); break;
    default: static_cast<uint16_t*>(a.out)[at] = qk::f32_to_bf16(round_to_odd_f32(acc.y)); break;
  }
}

__device__ __forceinline__ void mma_b1_and(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ void mma_u8s8(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Block: kWarps warps on one 16 (M) x 8 (N) output tile. Warp w computes plane pairs
// w, w + kWarps, ... over one segment; shared memory recovers sum_ij 2^(i+j) P_ij.
__global__ void __launch_bounds__(kWarps * 32) b1_kernel(MatmulArgs a) {
  __shared__ int32_t partial[64][16][8];  // [pair][row][col]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t m0 = (int64_t)blockIdx.y * 16, n0 = (int64_t)blockIdx.x * 8;
  const int p = a.w_bits, q = a.a_bits, pairs = p * q;
  const int64_t halves = a.kw * 2, tiles = a.kw / 4;  // a tile: 256 columns = 8 half-words
  const int64_t seg_halves = a.group ? a.group / 32 : halves;
  // the thread's own output element for the recovery and epilogue
  const int my_r = threadIdx.x / 8, my_c = threadIdx.x % 8;
  Acc acc;
  for (int64_t s = 0; s < a.segs; s++) {
    const int64_t h_begin = s * seg_halves, h_end = h_begin + seg_halves < halves ? h_begin + seg_halves : halves;
    const int64_t t_begin = h_begin / 8, t_end = a.group ? t_begin + 1 : tiles;
    for (int pair = warp; pair < pairs; pair += kWarps) {
      const int i = pair / q, j = pair % q;  // weight plane i, activation plane j
      int32_t d[4] = {0, 0, 0, 0};
      for (int64_t t = t_begin; t < t_end; t++) {
        uint32_t fa[4], fb[2];
        for (int x = 0; x < 4; x++) {
          const int64_t row = m0 + gid + ((x & 1) ? 8 : 0);
          const int64_t h = t * 8 + ((x & 2) ? 4 : 0) + tig;
          const bool inside = row < a.m && h >= h_begin && h < h_end;  // mask columns of other segments
          fa[x] = inside ? a.a_planes[(row * q + j) * halves + h] : 0u;
        }
        for (int x = 0; x < 2; x++) {
          const int64_t col = n0 + gid;
          const int64_t h = t * 8 + (x ? 4 : 0) + tig;
          fb[x] = col < a.n ? a.w_planes[(col * p + i) * halves + h] : 0u;
        }
        mma_b1_and(d, fa, fb);
      }
      partial[pair][gid][tig * 2] = d[0];
      partial[pair][gid][tig * 2 + 1] = d[1];
      partial[pair][gid + 8][tig * 2] = d[2];
      partial[pair][gid + 8][tig * 2 + 1] = d[3];
    }
    __syncthreads();
    // 128 threads, one output element each: recover and apply the segment's epilogue
    const int64_t m = m0 + my_r, n = n0 + my_c;
    if (m < a.m && n < a.n) {
      int64_t uprod = 0;
      for (int pair = 0; pair < pairs; pair++) uprod += (int64_t)partial[pair][my_r][my_c] << (pair / q + pair % q);
      add_segment(a, m, n, s, uprod, acc);
    }
    __syncthreads();
  }
  const int64_t m = m0 + my_r, n = n0 + my_c;
  if (m < a.m && n < a.n) store(a, m, n, acc);
}

// Unsigned code of (row, column) from planes (0 outside the matrix).
__device__ __forceinline__ uint32_t code_u(const uint32_t* planes, int bits, int64_t rows, int64_t halves, int64_t row,
                                           int64_t col) {
  if (row >= rows) return 0;
  uint32_t u = 0;
  for (int i = 0; i < bits; i++) u |= ((planes[(row * bits + i) * halves + col / 32] >> (col % 32)) & 1u) << i;
  return u;
}

__global__ void __launch_bounds__(kWarps * 32) int8_kernel(MatmulArgs a) {
  __shared__ uint8_t sa[16][32];
  __shared__ int8_t sw[8][32];
  __shared__ int32_t part[kWarps][16][8];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, tig = lane & 3;
  const int64_t m0 = (int64_t)blockIdx.y * 16, n0 = (int64_t)blockIdx.x * 8;
  const int p = a.w_bits, q = a.a_bits;
  const int64_t halves = a.kw * 2, kp = a.kw * 64;
  const int64_t seg_len = a.group ? a.group : kp;
  const int my_r = threadIdx.x / 8, my_c = threadIdx.x % 8;
  const int32_t shift = 1 << (p - 1);
  Acc acc;
  for (int64_t s = 0; s < a.segs; s++) {
    int32_t d[4] = {0, 0, 0, 0};
    // warps take alternate 32-column k-steps of the segment; partial sums meet in shared memory
    for (int64_t k0 = s * seg_len; k0 < (s + 1) * seg_len && k0 < kp; k0 += 32 * kWarps) {
      __syncthreads();
      // unpack this block's k-steps one at a time: every warp's step shares the tiles below
      for (int step = 0; step < kWarps; step++) {
        const int64_t kk = k0 + step * 32;
        if (kk >= (s + 1) * seg_len || kk >= kp) break;
        for (int e = threadIdx.x; e < 16 * 32; e += blockDim.x)
          sa[e / 32][e % 32] = (uint8_t)code_u(a.a_planes, q, a.m, halves, m0 + e / 32, kk + e % 32);
        for (int e = threadIdx.x; e < 8 * 32; e += blockDim.x) {
          const int64_t row = n0 + e / 32;
          sw[e / 32][e % 32] = row < a.n ? (int8_t)((int32_t)code_u(a.w_planes, p, a.n, halves, row, kk + e % 32) - shift)
                                         : (int8_t)0;
        }
        __syncthreads();
        if (warp == step) {
          uint32_t fa[4], fb[2];
          fa[0] = *reinterpret_cast<const uint32_t*>(&sa[gid][tig * 4]);
          fa[1] = *reinterpret_cast<const uint32_t*>(&sa[gid + 8][tig * 4]);
          fa[2] = *reinterpret_cast<const uint32_t*>(&sa[gid][16 + tig * 4]);
          fa[3] = *reinterpret_cast<const uint32_t*>(&sa[gid + 8][16 + tig * 4]);
          fb[0] = *reinterpret_cast<const uint32_t*>(&sw[gid][tig * 4]);
          fb[1] = *reinterpret_cast<const uint32_t*>(&sw[gid][16 + tig * 4]);
          mma_u8s8(d, fa, fb);
        }
        __syncthreads();
      }
    }
    part[warp][gid][tig * 2] = d[0];
    part[warp][gid][tig * 2 + 1] = d[1];
    part[warp][gid + 8][tig * 2] = d[2];
    part[warp][gid + 8][tig * 2 + 1] = d[3];
    __syncthreads();
    const int64_t m = m0 + my_r, n = n0 + my_c;
    if (m < a.m && n < a.n) {
      int64_t uprod = 0;
      for (int w = 0; w < kWarps; w++) uprod += part[w][my_r][my_c];
      uprod += (int64_t)shift * a.a_sums[m * a.segs + s];  // u_w = t_w + 2^(p-1)
      add_segment(a, m, n, s, uprod, acc);
    }
    __syncthreads();
  }
  const int64_t m = m0 + my_r, n = n0 + my_c;
  if (m < a.m && n < a.n) store(a, m, n, acc);
}

qk_status report_bad(const char* fn, unsigned long long* first_bad, cudaStream_t s, unsigned long long* out) {
  QK_CUDA(fn, cudaMemcpyAsync, out, first_bad, sizeof *out, cudaMemcpyDeviceToHost, s);
  QK_CUDA(fn, cudaStreamSynchronize, s);
  return QK_OK;
}

}  // namespace

namespace qk::cuda {

int32_t apmm_choose_path(int32_t a_bits, int32_t w_bits, int64_t, int32_t request) {
  if (request == QK_APMM_PATH_BITSERIAL || (request == QK_APMM_PATH_AUTO && a_bits * w_bits <= 4))
    return QK_APMM_RAN_CUDA_B1_MMA;
  return QK_APMM_RAN_CUDA_INT8_MMA;
}

qk_status apmm_pack(const qk_tensor* codes, int32_t format, int32_t bits, int64_t group, const qk_tensor* planes,
                    const qk_tensor* sums, int64_t* bad_index, qk_stream stream) {
  const char* fn = "qk_apmm_pack";
  if (bad_index) *bad_index = -1;
  DeviceGuard guard;
  QK_TRY(guard.set(codes->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  StreamScratch scratch(s);
  QK_TRY(scratch.allocate(sizeof(unsigned long long), fn));
  unsigned long long* first_bad = scratch.as<unsigned long long>();
  QK_CUDA(fn, cudaMemsetAsync, first_bad, 0xff, sizeof(unsigned long long), s);
  QK_CUDA(fn, cudaMemsetAsync, sums->data, 0, (size_t)sums->nbytes, s);
  PackArgs a{};
  a.src = codes->data;
  a.dtype = codes->dtype;
  a.format = format;
  a.bits = bits;
  a.rows = codes->shape[0];
  a.k = codes->shape[1];
  a.kw = words_per_plane(a.k);
  a.group = group;
  a.segs = segments(a.k, group);
  a.planes = static_cast<uint32_t*>(planes->data);
  a.sums = static_cast<int32_t*>(sums->data);
  a.first_bad = first_bad;
  pack_kernel<0><<<grid_for((a.rows * a.kw * 2 + 7) / 8, 8), 256, 0, s>>>(a);
  QK_CUDA_LAUNCHED(fn, "pack_kernel");
  unsigned long long bad = kNone;
  QK_TRY(report_bad(fn, first_bad, s, &bad));
  if (bad == kNone) return QK_OK;
  if (bad_index) *bad_index = (int64_t)bad;
  return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: codes[%lld, %lld] is not a %d-bit code of format %d", fn,
                  (long long)(bad / a.k), (long long)(bad % a.k), bits, format);
}

qk_status apmm_unpack(const qk_tensor* planes, int32_t format, int32_t bits, const qk_tensor* codes,
                      qk_stream stream) {
  const char* fn = "qk_apmm_unpack";
  DeviceGuard guard;
  QK_TRY(guard.set(codes->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  const int64_t rows = codes->shape[0], k = codes->shape[1];
  unpack_kernel<<<grid_for((rows * k + 255) / 256, 8), 256, 0, s>>>(static_cast<const uint64_t*>(planes->data), format,
                                                                    bits, rows, k, words_per_plane(k),
                                                                    static_cast<int32_t*>(codes->data));
  QK_CUDA_LAUNCHED(fn, "unpack_kernel");
  return QK_OK;
}

qk_status apmm_quantize(const qk_tensor* x, int32_t format, int32_t bits, int64_t scale_group, int64_t sum_group,
                        const qk_tensor* planes, const qk_tensor* sums, const qk_tensor* scales,
                        const qk_tensor* zero_points, int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_apmm_quantize";
  if (nonfinite_index) *nonfinite_index = -1;
  DeviceGuard guard;
  QK_TRY(guard.set(x->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  StreamScratch scratch(s);
  QK_TRY(scratch.allocate(sizeof(unsigned long long), fn));
  unsigned long long* first_bad = scratch.as<unsigned long long>();
  QK_CUDA(fn, cudaMemsetAsync, first_bad, 0xff, sizeof(unsigned long long), s);
  QK_CUDA(fn, cudaMemsetAsync, sums->data, 0, (size_t)sums->nbytes, s);
  const int64_t rows = x->shape[0], k = x->shape[1];
  const int64_t scale_segs = segments(k, scale_group);
  float* sc = static_cast<float*>(scales->data);
  int32_t* zp = zero_points ? static_cast<int32_t*>(zero_points->data) : nullptr;
  stats_kernel<<<grid_for(rows * scale_segs, 16), 256, 0, s>>>(x->data, x->dtype, format, bits, rows, k, scale_group,
                                                               scale_segs, sc, zp, first_bad);
  QK_CUDA_LAUNCHED(fn, "stats_kernel");
  unsigned long long bad = kNone;
  QK_TRY(report_bad(fn, first_bad, s, &bad));  // the header promises the index: synchronize here
  if (bad != kNone) {
    if (nonfinite_index) *nonfinite_index = (int64_t)bad;
    return qk::fail(QK_ERR_NON_FINITE, "%s: x[%lld, %lld] is not finite", fn, (long long)(bad / k),
                    (long long)(bad % k));
  }
  PackArgs a{};
  a.src = x->data;
  a.dtype = x->dtype;
  a.format = format;
  a.bits = bits;
  a.rows = rows;
  a.k = k;
  a.kw = words_per_plane(k);
  a.group = sum_group;
  a.scale_group = scale_group;
  a.segs = segments(k, sum_group);
  a.scale_segs = scale_segs;
  a.planes = static_cast<uint32_t*>(planes->data);
  a.sums = static_cast<int32_t*>(sums->data);
  a.scales = sc;
  a.zeros = zp;
  a.first_bad = first_bad;
  pack_kernel<1><<<grid_for((rows * a.kw * 2 + 7) / 8, 8), 256, 0, s>>>(a);
  QK_CUDA_LAUNCHED(fn, "pack_kernel");
  return QK_OK;
}

qk_status apmm_matmul(const qk_tensor* a_planes, const qk_tensor* a_sums, const qk_tensor* a_scales,
                      const qk_tensor* a_zero_points, int32_t a_format, int32_t a_bits, const qk_tensor* w_planes,
                      const qk_tensor* w_sums, const qk_tensor* w_scales, const qk_tensor* w_zero_points,
                      int32_t w_format, int32_t w_bits, int64_t k, int64_t group, const qk_tensor* out,
                      int32_t request, int32_t* path_used, qk_stream stream) {
  const char* fn = "qk_apmm_matmul";
  const int32_t path = apmm_choose_path(a_bits, w_bits, a_planes->shape[0], request);
  if (path_used) *path_used = path;
  MatmulArgs a{};
  a.a_planes = static_cast<const uint32_t*>(a_planes->data);
  a.w_planes = static_cast<const uint32_t*>(w_planes->data);
  a.a_sums = static_cast<const int32_t*>(a_sums->data);
  a.w_sums = static_cast<const int32_t*>(w_sums->data);
  a.a_scales = a_scales ? static_cast<const float*>(a_scales->data) : nullptr;
  a.w_scales = w_scales ? static_cast<const float*>(w_scales->data) : nullptr;
  a.a_zeros = a_zero_points ? static_cast<const int32_t*>(a_zero_points->data) : nullptr;
  a.w_zeros = w_zero_points ? static_cast<const int32_t*>(w_zero_points->data) : nullptr;
  a.m = a_planes->shape[0];
  a.n = w_planes->shape[0];
  a.k = k;
  a.kw = words_per_plane(k);
  a.group = group;
  a.segs = segments(k, group);
  a.a_per_seg = a_scales && a_scales->shape[1] == a.segs && a.segs != 1;
  a.w_per_seg = w_scales && w_scales->shape[1] == a.segs && a.segs != 1;
  a.a_format = a_format;
  a.a_bits = a_bits;
  a.w_format = w_format;
  a.w_bits = w_bits;
  a.out = out->data;
  a.out_dtype = out->dtype;
  if (a.m == 0 || a.n == 0) return QK_OK;
  DeviceGuard guard;
  QK_TRY(guard.set(out->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  if (a.n > 8LL * 2147483647LL || a.m > 16LL * 65535LL)
    return qk::fail(QK_ERR_UNSUPPORTED, "%s: %lld x %lld exceeds the CUDA grid of this kernel", fn, (long long)a.m,
                    (long long)a.n);
  const dim3 grid((unsigned)((a.n + 7) / 8), (unsigned)((a.m + 15) / 16));
  if (path == QK_APMM_RAN_CUDA_B1_MMA) {
    b1_kernel<<<grid, kWarps * 32, 0, s>>>(a);
    QK_CUDA_LAUNCHED(fn, "b1_kernel");
  } else {
    int8_kernel<<<grid, kWarps * 32, 0, s>>>(a);
    QK_CUDA_LAUNCHED(fn, "int8_kernel");
  }
  return QK_OK;
}

}  // namespace qk::cuda
