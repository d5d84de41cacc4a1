// NF4 (bitsandbytes layout) on CUDA: quantize, dequantize, double quantize / dequantize.
//
// Bit-exact with the CPU kernels (native/nf4/nf4_scalar.cpp): the same float32 operations in
// the same order, the shared math from native/common/nf4.h (encode, nearest_code), and every
// rounding spelled out (__fdiv_rn, __fmul_rn, __fadd_rn, RNE conversions) so that neither
// compiler flags nor FMA contraction can change a result. Never build this with
// --use_fast_math or -ftz=true: subnormal absmax values must behave as on the CPU.
//
// Compiled in CI; never yet run on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/nf4.h"
#include "cuda_common.cuh"

namespace {

constexpr int kThreads = 256;     // threads per block, every kernel in this file
constexpr int kBlocksPerSm = 32;  // grid cap; the grid-stride loops cover the rest
constexpr unsigned long long kNone = ~0ull;  // "no non-finite element seen"

__constant__ float c_table[16] = QK_NF4_TABLE;
__constant__ float c_thresholds[15] = QK_NF4_THRESHOLDS;

__device__ __forceinline__ bool nonfinite(float v) { return (qk::f32_bits(v) & 0x7f800000u) == 0x7f800000u; }

// ---- quantize ------------------------------------------------------------------------------
//
// A group of G = min(32, blocksize / 8) lanes owns one quantization block; each lane reads
// 8-element chunks (two float4 or one uint4 load) and writes the 4 packed bytes of a chunk as
// one 32-bit store, so a warp covers 256 contiguous elements at every step. Blocks are
// >= 32 elements and start at even indices, so a chunk never straddles two blocks and
// a block owns whole bytes of `packed`. Pass 1 finds absmax (and the lowest non-finite index);
// pass 2 re-reads the chunks (the first one stays in registers; the rest come from cache)
// and encodes.

struct InF32 {
  using T = float;
  static __device__ __forceinline__ float widen(float v) { return v; }
};
struct InF16 {
  using T = uint16_t;
  static __device__ __forceinline__ float widen(uint16_t h) { return qk::f16_to_f32(h); }
};
struct InBF16 {
  using T = uint16_t;
  static __device__ __forceinline__ float widen(uint16_t h) { return qk::bf16_to_f32(h); }
};

// Elements [e, e + 8) widened to float; elements at or past `end` read as 0 (which neither
// raises absmax nor counts as non-finite). Vector loads need x 16-byte aligned (e is a multiple of 8).
template <class In>
__device__ __forceinline__ void load8(const typename In::T* __restrict__ x, int64_t e, int64_t end, bool vec,
                                      float (&v)[8]) {
  if (vec && e + 8 <= end) {
    if constexpr (sizeof(typename In::T) == 4) {
      const float4 a = reinterpret_cast<const float4*>(x + e)[0];
      const float4 b = reinterpret_cast<const float4*>(x + e)[1];
      v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
      v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
      const uint4 q = *reinterpret_cast<const uint4*>(x + e);
      const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int k = 0; k < 4; k++) {
        v[2 * k] = In::widen((uint16_t)(w[k] & 0xffffu));  // little-endian: lower address in the low half
        v[2 * k + 1] = In::widen((uint16_t)(w[k] >> 16));
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = e + k < end ? In::widen(x[e + k]) : 0.0f;
  }
}

__device__ __forceinline__ void scan8(const float (&v)[8], int64_t e, float& amax, unsigned long long& bad) {
#pragma unroll
  for (int k = 0; k < 8; k++) {
    amax = fmaxf(amax, fabsf(v[k]));  // max is exact: same value as the CPU's compare-and-select
    if (nonfinite(v[k]) && bad == kNone) bad = (unsigned long long)(e + k);  // a lane's indices only grow
  }
}

// Codes of elements [e, e + 8) -> bytes [e/2, e/2 + 4): first element of a pair in the HIGH
// nibble, an odd n's missing last element is code 7; bytes at or past (n+1)/2 are not written.
__device__ __forceinline__ void encode_store8(const float (&v)[8], int64_t e, int64_t n, float inv, const float* thr,
                                              uint8_t* __restrict__ packed, bool vec) {
  uint32_t word = 0;
#pragma unroll
  for (int k = 0; k < 4; k++) {
    const int hi = qk::nf4::encode(v[2 * k], inv, thr);
    const int lo = e + 2 * k + 1 < n ? qk::nf4::encode(v[2 * k + 1], inv, thr) : 7;
    word |= (uint32_t)((hi << 4) | lo) << (8 * k);
  }
  uint8_t* dst = packed + (e >> 1);
  if (vec && e + 8 <= n) {
    *reinterpret_cast<uint32_t*>(dst) = word;  // e % 8 == 0 and packed 4-byte aligned
  } else {
#pragma unroll
    for (int k = 0; k < 4; k++)
      if (e + 2 * k < n) dst[k] = (uint8_t)(word >> (8 * k));
  }
}

template <class In>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const typename In::T* __restrict__ x, int64_t n, int log2_bs, uint8_t* __restrict__ packed,
                    float* __restrict__ absmax, unsigned long long* __restrict__ first_bad, bool vec_in,
                    bool vec_out) {
  // Thresholds in shared memory: the binary search in encode() indexes them per lane, which
  // __constant__ memory would serialize; 15 words in 15 banks never conflict.
  __shared__ float thr[15];
  if (threadIdx.x < 15) thr[threadIdx.x] = c_thresholds[threadIdx.x];
  __syncthreads();

  const int log2_group = min(5, log2_bs - 3);
  const int group = 1 << log2_group;
  const int sub = (int)threadIdx.x & (group - 1);
  const unsigned lane = threadIdx.x & 31u;
  // Shuffles stay inside the group (xor offsets < group), so only the group's lanes take part:
  // other groups of the same warp may already have left the loop.
  const unsigned mask = group == 32 ? 0xffffffffu : ((1u << group) - 1u) << (lane & ~(unsigned)(group - 1));
  const int chunks = 1 << (log2_bs - 3);
  const int64_t groups_per_block = kThreads >> log2_group;
  const int64_t nblocks = ((n - 1) >> log2_bs) + 1;
  const int64_t stride = (int64_t)gridDim.x * groups_per_block;

  for (int64_t qb = (int64_t)blockIdx.x * groups_per_block + (threadIdx.x >> log2_group); qb < nblocks;
       qb += stride) {
    const int64_t begin = qb << log2_bs;
    const int64_t end = min(begin + ((int64_t)1 << log2_bs), n);
    const int64_t e0 = begin + 8 * sub;

    // Pass 1: absmax and the lowest non-finite index. Lane `sub` owns chunks sub, sub + group, ...
    float first[8];
    load8<In>(x, e0, end, vec_in, first);
    float amax = 0.0f;
    unsigned long long bad = kNone;
    scan8(first, e0, amax, bad);
    for (int c = sub + group; c < chunks; c += group) {
      float v[8];
      const int64_t e = begin + 8 * (int64_t)c;
      load8<In>(x, e, end, vec_in, v);
      scan8(v, e, amax, bad);
    }
    for (int off = group >> 1; off > 0; off >>= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(mask, amax, off));
      const unsigned long long other = __shfl_xor_sync(mask, bad, off);
      bad = other < bad ? other : bad;
    }

    // Pass 2: encode with inv = 1 / absmax (IEEE division, = qk::nf4::inverse_absmax on the CPU).
    // A zero absmax gives inv = +Inf; encode() maps zeros to code 7 regardless.
    const float inv = __fdiv_rn(1.0f, amax);
    encode_store8(first, e0, n, inv, thr, packed, vec_out);
    for (int c = sub + group; c < chunks; c += group) {
      float v[8];
      const int64_t e = begin + 8 * (int64_t)c;
      load8<In>(x, e, end, vec_in, v);
      encode_store8(v, e, n, inv, thr, packed, vec_out);
    }
    if (sub == 0) {
      absmax[qb] = amax;
      if (bad != kNone) atomicMin(first_bad, bad);
    }
  }
}

// ---- dequantize ----------------------------------------------------------------------------
//
// Memory-bound: every load and store instruction of a warp covers one contiguous span.
// A warp handles tiles of 1024 elements; lane l's j-th "unit" is the E elements starting at
// tile + (32 j + l) E, where E elements of the output make exactly 16 bytes (E = 8 for
// F16/BF16, 4 for F32). Per unit: one E/2-byte packed load (32-bit or 16-bit), one absmax
// load (a unit never straddles blocks: blocksize >= 32 > E), one 128-bit store. Each thread
// has 32 elements = 16 packed bytes in flight per tile. Elements past the last whole tile (and
// all elements when a pointer is not aligned for vector access) take a per-element path.

constexpr int kElemsPerThread = 32;
constexpr int64_t kWarpTile = 32 * kElemsPerThread;

struct OutF32 {
  using T = float;
  using Packed = uint16_t;  // 2 packed bytes = 4 elements = one float4
  static constexpr int kUnit = 4;
  static __device__ __forceinline__ float one(float v) { return v; }
};
struct OutF16 {
  using T = uint16_t;
  using Packed = uint32_t;  // 4 packed bytes = 8 elements = one uint4
  static constexpr int kUnit = 8;
  static __device__ __forceinline__ uint16_t one(float v) { return __half_as_ushort(__float2half_rn(v)); }
  static __device__ __forceinline__ uint32_t two(float a, float b) {  // a at the lower address
    const __half2 h = __floats2half2_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
};
struct OutBF16 {
  using T = uint16_t;
  using Packed = uint32_t;
  static constexpr int kUnit = 8;
  static __device__ __forceinline__ uint16_t one(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  static __device__ __forceinline__ uint32_t two(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    uint32_t u;
    memcpy(&u, &h, 4);
    return u;
  }
};

// Element k of a unit: byte k/2 of the packed word (little-endian), high nibble for even k.
// The product is one float32 multiply, as on the CPU; the conversions round to nearest even
// (identical to qk::f32_to_f16 / qk::f32_to_bf16 for every non-NaN value).
template <class Packed>
__device__ __forceinline__ float decode(Packed w, int k, float scale, const float* tab) {
  const uint32_t byte = ((uint32_t)w >> (8 * (k >> 1))) & 0xffu;
  const uint32_t code = (k & 1) ? (byte & 15u) : (byte >> 4);
  return __fmul_rn(tab[code], scale);
}

template <class Out>
__device__ __forceinline__ void store_unit(typename Out::T* __restrict__ dst, typename Out::Packed w, float scale,
                                           const float* tab) {
  if constexpr (Out::kUnit == 4) {
    float4 r;
    r.x = decode(w, 0, scale, tab);
    r.y = decode(w, 1, scale, tab);
    r.z = decode(w, 2, scale, tab);
    r.w = decode(w, 3, scale, tab);
    *reinterpret_cast<float4*>(dst) = r;
  } else {
    uint4 r;
    r.x = Out::two(decode(w, 0, scale, tab), decode(w, 1, scale, tab));
    r.y = Out::two(decode(w, 2, scale, tab), decode(w, 3, scale, tab));
    r.z = Out::two(decode(w, 4, scale, tab), decode(w, 5, scale, tab));
    r.w = Out::two(decode(w, 6, scale, tab), decode(w, 7, scale, tab));
    *reinterpret_cast<uint4*>(dst) = r;
  }
}

template <class Out>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax, int64_t n, int log2_bs,
                      typename Out::T* __restrict__ out, bool vec) {
  // The 16-entry table in shared memory: per-lane lookups hit 16 distinct banks (no conflicts),
  // where __constant__ memory would serialize divergent indices.
  __shared__ float tab[16];
  if (threadIdx.x < 16) tab[threadIdx.x] = c_table[threadIdx.x];
  __syncthreads();

  constexpr int E = Out::kUnit;
  constexpr int U = kElemsPerThread / E;
  using Packed = typename Out::Packed;
  const int64_t lane = threadIdx.x & 31;
  const int64_t thread = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  const int64_t threads = (int64_t)gridDim.x * kThreads;
  const int64_t tiles = vec ? n / kWarpTile : 0;

  for (int64_t t = thread >> 5; t < tiles; t += threads >> 5) {
    const int64_t base = t * kWarpTile + lane * E;
    Packed w[U];
    float scale[U];
#pragma unroll
    for (int j = 0; j < U; j++) {  // all loads first: U independent requests in flight
      const int64_t e = base + (int64_t)j * 32 * E;
      w[j] = *reinterpret_cast<const Packed*>(packed + (e >> 1));
      scale[j] = absmax[e >> log2_bs];
    }
#pragma unroll
    for (int j = 0; j < U; j++) store_unit<Out>(out + base + (int64_t)j * 32 * E, w[j], scale[j], tab);
  }

  for (int64_t i = tiles * kWarpTile + thread; i < n; i += threads) {
    const uint32_t byte = packed[i >> 1];
    const uint32_t code = (i & 1) ? (byte & 15u) : (byte >> 4);
    out[i] = Out::one(__fmul_rn(tab[code], absmax[i >> log2_bs]));
  }
}

// ---- double quantization -------------------------------------------------------------------
//
// offset = mean(absmax): a float64 sum in a fixed order (chunks of kMeanChunk consecutive
// values summed left to right, then the chunk sums left to right), divided by the count in
// float64 and rounded once to float32. Whenever no float64 addition rounds (all values within
// ~29 - log2(count) binades of each other, the usual case for absmax) this equals the CPU's
// plain left-to-right sum exactly; otherwise the two may differ in the last float64 bits and,
// very rarely, in the last bit of the float32 offset.

constexpr int64_t kMeanChunk = 4096;

// Written by the device, read back by the host in one copy.
struct DoubleQuantResult {
  unsigned long long first_bad;  // lowest index of a non-finite absmax, or kNone
  float offset;
  int map_bad;                   // first i with !(map[i-1] <= map[i]), or 0
};

__global__ void __launch_bounds__(kThreads)
    mean_partials_kernel(const float* __restrict__ a, int64_t count, double* __restrict__ partials,
                         int64_t chunks, DoubleQuantResult* __restrict__ result) {
  const int64_t threads = (int64_t)gridDim.x * kThreads;
  for (int64_t c = (int64_t)blockIdx.x * kThreads + threadIdx.x; c < chunks; c += threads) {
    const int64_t begin = c * kMeanChunk, end = min(begin + kMeanChunk, count);
    double sum = 0.0;
    unsigned long long bad = kNone;
    for (int64_t i = begin; i < end; i++) {
      const float v = a[i];
      if (nonfinite(v) && bad == kNone) bad = (unsigned long long)i;
      sum = __dadd_rn(sum, (double)v);
    }
    partials[c] = sum;
    if (bad != kNone) atomicMin(&result->first_bad, bad);
  }
}

// One thread: the final sum in order, the offset, and the code_map check the CPU also makes.
__global__ void mean_final_kernel(const double* __restrict__ partials, int64_t chunks, int64_t count,
                                  const float* __restrict__ map, DoubleQuantResult* __restrict__ result) {
  double sum = 0.0;
  for (int64_t c = 0; c < chunks; c++) sum = __dadd_rn(sum, partials[c]);
  result->offset = __double2float_rn(__ddiv_rn(sum, (double)count));
  int bad = 0;
  for (int i = 1; i < 256 && bad == 0; i++)
    if (!(map[i - 1] <= map[i])) bad = i;
  result->map_bad = bad;
}

// One block of 256 threads per nested block of 256 absmax values (thread t <-> value t).
__global__ void __launch_bounds__(kThreads)
    double_quant_codes_kernel(const float* __restrict__ a, int64_t count, const float* __restrict__ map,
                              const DoubleQuantResult* __restrict__ result, uint8_t* __restrict__ codes,
                              float* __restrict__ nested) {
  static_assert(kThreads == qk::nf4::kNestedBlocksize, "one thread per value of a nested block");
  if (result->map_bad != 0 || result->first_bad != kNone) return;  // the host reports it, writes nothing
  __shared__ float smap[256];
  __shared__ float warp_max[kThreads / 32];
  smap[threadIdx.x] = map[threadIdx.x];
  __syncthreads();

  const float offset = result->offset;
  const int64_t groups = (count + kThreads - 1) / kThreads;
  for (int64_t g = blockIdx.x; g < groups; g += gridDim.x) {
    const int64_t b = g * kThreads + threadIdx.x;
    const float d = b < count ? __fsub_rn(a[b], offset) : 0.0f;
    float m = fabsf(d);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = m;
    __syncthreads();
    float amax2 = warp_max[0];
#pragma unroll
    for (int w = 1; w < kThreads / 32; w++) amax2 = fmaxf(amax2, warp_max[w]);
    __syncthreads();  // warp_max is reused by the next group

    if (b < count) {
      // Like qk::nf4::encode: a zero difference is 0 even when inv2 is Inf (all values equal).
      const float inv2 = __fdiv_rn(1.0f, amax2);
      const float s = d == 0.0f ? 0.0f : fminf(1.0f, fmaxf(-1.0f, __fmul_rn(d, inv2)));
      codes[b] = (uint8_t)qk::nf4::nearest_code(s, smap);
    }
    if (threadIdx.x == 0) nested[g] = amax2;
  }
}

// absmax[b] = fp32(fp32(map[codes[b]] * nested[b / 256]) + offset): two roundings, no FMA.
__global__ void __launch_bounds__(kThreads)
    double_dequant_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ nested,
                          const float* __restrict__ map, float offset, int64_t count, float* __restrict__ absmax) {
  __shared__ float smap[256];
  smap[threadIdx.x] = map[threadIdx.x];
  __syncthreads();
  const int64_t threads = (int64_t)gridDim.x * kThreads;
  for (int64_t b = (int64_t)blockIdx.x * kThreads + threadIdx.x; b < count; b += threads)
    absmax[b] = __fadd_rn(__fmul_rn(smap[codes[b]], nested[b >> 8]), offset);
}

// ---- host helpers ----------------------------------------------------------------------------

int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }
bool aligned(const void* p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }
int log2_exact(int64_t v) { return __builtin_ctzll((unsigned long long)v); }

float widen_host(int32_t dtype, uint32_t raw) {
  if (dtype == QK_F16) return qk::f16_to_f32((uint16_t)raw);
  if (dtype == QK_BF16) return qk::bf16_to_f32((uint16_t)raw);
  return qk::bits_f32(raw);
}

}  // namespace

namespace qk::cuda {

using detail::DeviceGuard;
using detail::grid_for;
using detail::stream_of;
using detail::StreamScratch;

qk_status nf4_quantize(const qk_tensor* x, int64_t blocksize, const qk_tensor* packed, const qk_tensor* absmax,
                       int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_nf4_quantize";
  if (nonfinite_index) *nonfinite_index = -1;
  if (!qk::nf4::valid_blocksize(blocksize))
    return qk::fail(QK_ERR_INTERNAL, "%s: blocksize %lld reached the CUDA kernel", fn, (long long)blocksize);
  const int64_t n = qk::numel(x);
  if (n == 0) return QK_OK;

  DeviceGuard guard;
  QK_TRY(guard.set(x->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  StreamScratch scratch(s);  // destroyed (freed on the stream) before the guard restores the device
  QK_TRY(scratch.allocate(sizeof(unsigned long long), fn));
  unsigned long long* first_bad = scratch.as<unsigned long long>();
  QK_CUDA(fn, cudaMemsetAsync, first_bad, 0xff, sizeof(unsigned long long), s);

  const int log2_bs = log2_exact(blocksize);
  const int log2_group = log2_bs - 3 < 5 ? log2_bs - 3 : 5;
  const int64_t blocks = ceil_div(n, blocksize);
  const unsigned grid = grid_for(ceil_div(blocks, kThreads >> log2_group), kBlocksPerSm);
  const bool vec_in = aligned(x->data, 16), vec_out = aligned(packed->data, 4);
  uint8_t* p = static_cast<uint8_t*>(packed->data);
  float* a = static_cast<float*>(absmax->data);
  switch (x->dtype) {
    case QK_F32:
      quantize_kernel<InF32><<<grid, kThreads, 0, s>>>(static_cast<const float*>(x->data), n, log2_bs, p, a,
                                                      first_bad, vec_in, vec_out);
      break;
    case QK_F16:
      quantize_kernel<InF16><<<grid, kThreads, 0, s>>>(static_cast<const uint16_t*>(x->data), n, log2_bs, p, a,
                                                      first_bad, vec_in, vec_out);
      break;
    case QK_BF16:
      quantize_kernel<InBF16><<<grid, kThreads, 0, s>>>(static_cast<const uint16_t*>(x->data), n, log2_bs, p, a,
                                                       first_bad, vec_in, vec_out);
      break;
    default:
      return qk::fail(QK_ERR_INTERNAL, "%s: dtype %s reached the CUDA kernel", fn, qk::dtype_name(x->dtype));
  }
  QK_CUDA_LAUNCHED(fn, "quantize_kernel");

  // The header promises this call synchronizes its stream to report the index.
  unsigned long long bad = kNone;
  QK_CUDA(fn, cudaMemcpyAsync, &bad, first_bad, sizeof bad, cudaMemcpyDeviceToHost, s);
  QK_CUDA(fn, cudaStreamSynchronize, s);
  if (bad == kNone) return QK_OK;

  // Name the value (NaN / +Inf / -Inf) as the CPU path does: fetch that one element.
  const int64_t esize = qk::dtype_size(x->dtype);
  uint32_t raw = 0;  // little-endian: a 2-byte element lands in the low half
  QK_CUDA(fn, cudaMemcpyAsync, &raw, static_cast<const char*>(x->data) + (int64_t)bad * esize, (size_t)esize,
          cudaMemcpyDeviceToHost, s);
  QK_CUDA(fn, cudaStreamSynchronize, s);
  const float v = widen_host(x->dtype, raw);
  if (nonfinite_index) *nonfinite_index = (int64_t)bad;
  return qk::fail(QK_ERR_NON_FINITE, "%s: element %lld is %s", fn, (long long)bad,
                  isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"));
}

qk_status nf4_dequantize(const qk_tensor* packed, const qk_tensor* absmax, int64_t blocksize, const qk_tensor* out,
                         qk_stream stream) {
  const char* fn = "qk_nf4_dequantize";
  if (!qk::nf4::valid_blocksize(blocksize))
    return qk::fail(QK_ERR_INTERNAL, "%s: blocksize %lld reached the CUDA kernel", fn, (long long)blocksize);
  const int64_t n = qk::numel(out);
  if (n == 0) return QK_OK;

  DeviceGuard guard;
  QK_TRY(guard.set(out->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  const int log2_bs = log2_exact(blocksize);
  const unsigned grid = grid_for(ceil_div(n, (int64_t)kThreads * kElemsPerThread), kBlocksPerSm);
  const uint8_t* p = static_cast<const uint8_t*>(packed->data);
  const float* a = static_cast<const float*>(absmax->data);
  switch (out->dtype) {
    case QK_F32: {
      const bool vec = aligned(p, 2) && aligned(out->data, 16);
      dequantize_kernel<OutF32><<<grid, kThreads, 0, s>>>(p, a, n, log2_bs, static_cast<float*>(out->data), vec);
      break;
    }
    case QK_F16: {
      const bool vec = aligned(p, 4) && aligned(out->data, 16);
      dequantize_kernel<OutF16><<<grid, kThreads, 0, s>>>(p, a, n, log2_bs, static_cast<uint16_t*>(out->data), vec);
      break;
    }
    case QK_BF16: {
      const bool vec = aligned(p, 4) && aligned(out->data, 16);
      dequantize_kernel<OutBF16><<<grid, kThreads, 0, s>>>(p, a, n, log2_bs, static_cast<uint16_t*>(out->data),
                                                          vec);
      break;
    }
    default:
      return qk::fail(QK_ERR_INTERNAL, "%s: dtype %s reached the CUDA kernel", fn, qk::dtype_name(out->dtype));
  }
  QK_CUDA_LAUNCHED(fn, "dequantize_kernel");
  return QK_OK;
}

qk_status nf4_double_quantize(const qk_tensor* absmax, const qk_tensor* code_map, const qk_tensor* codes,
                              const qk_tensor* nested_absmax, float* offset_out, qk_stream stream) {
  const char* fn = "qk_nf4_double_quantize";
  const int64_t count = qk::numel(absmax);
  if (count == 0) {
    *offset_out = 0.0f;
    return QK_OK;
  }

  DeviceGuard guard;
  QK_TRY(guard.set(absmax->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  const int64_t chunks = ceil_div(count, kMeanChunk);
  static_assert(sizeof(DoubleQuantResult) == 16, "partials start 8-byte aligned after the result");
  StreamScratch scratch(s);
  QK_TRY(scratch.allocate(sizeof(DoubleQuantResult) + (size_t)chunks * sizeof(double), fn));
  DoubleQuantResult* result = scratch.as<DoubleQuantResult>();
  double* partials = scratch.as<double>(sizeof(DoubleQuantResult));
  QK_CUDA(fn, cudaMemsetAsync, result, 0xff, sizeof(unsigned long long), s);  // first_bad = kNone

  const float* a = static_cast<const float*>(absmax->data);
  const float* map = static_cast<const float*>(code_map->data);
  mean_partials_kernel<<<grid_for(ceil_div(chunks, kThreads), kBlocksPerSm), kThreads, 0, s>>>(a, count, partials,
                                                                                               chunks, result);
  QK_CUDA_LAUNCHED(fn, "mean_partials_kernel");
  mean_final_kernel<<<1, 1, 0, s>>>(partials, chunks, count, map, result);
  QK_CUDA_LAUNCHED(fn, "mean_final_kernel");
  const int64_t groups = ceil_div(count, qk::nf4::kNestedBlocksize);
  double_quant_codes_kernel<<<grid_for(groups, kBlocksPerSm), kThreads, 0, s>>>(
      a, count, map, result, static_cast<uint8_t*>(codes->data), static_cast<float*>(nested_absmax->data));
  QK_CUDA_LAUNCHED(fn, "double_quant_codes_kernel");

  DoubleQuantResult host;
  QK_CUDA(fn, cudaMemcpyAsync, &host, result, sizeof host, cudaMemcpyDeviceToHost, s);
  QK_CUDA(fn, cudaStreamSynchronize, s);
  // Same checks, order and messages as the CPU path.
  if (host.map_bad != 0)
    return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: code_map must be ascending (entry %d)", fn, host.map_bad);
  if (host.first_bad != kNone)
    return qk::fail(QK_ERR_NON_FINITE, "%s: absmax[%lld] is not finite", fn, (long long)host.first_bad);
  *offset_out = host.offset;
  return QK_OK;
}

qk_status nf4_double_dequantize(const qk_tensor* codes, const qk_tensor* nested_absmax, const qk_tensor* code_map,
                                float offset, const qk_tensor* absmax, qk_stream stream) {
  const char* fn = "qk_nf4_double_dequantize";
  const int64_t count = qk::numel(codes);
  if (count == 0) return QK_OK;

  DeviceGuard guard;
  QK_TRY(guard.set(codes->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  double_dequant_kernel<<<grid_for(ceil_div(count, kThreads), kBlocksPerSm), kThreads, 0, s>>>(
      static_cast<const uint8_t*>(codes->data), static_cast<const float*>(nested_absmax->data),
      static_cast<const float*>(code_map->data), offset, count, static_cast<float*>(absmax->data));
  QK_CUDA_LAUNCHED(fn, "double_dequant_kernel");
  return QK_OK;
}

}  // namespace qk::cuda
