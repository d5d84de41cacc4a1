// Paged attention on CUDA: write K/V by slot, paged decode (padded and CSR page tables, GQA
// groups, split-KV partitions) with lse, and the merge of partial results. Block copies and
// swaps need no kernel: the ABI layer issues one cudaMemcpyAsync per block.
//
// NEVER RUN ON A GPU: this file is compiled for sm_80 / sm_90 in CI, but no GPU was available
// while it was written, so it has not been executed or measured. The CPU kernels
// (native/attention/) are the tested reference; the merge math is shared with them
// (native/common/attention.h).
//
// Decode: one CTA per (sequence, KV head, partition). The CTA keeps its query group and the
// group's unnormalized output in shared memory (scores are scaled after the dot product, as on
// the CPU), walks its pages in chunks of kChunk tokens (scores by warps, an
// online-softmax update per query head, then V accumulated per (head, d) pair), and writes a
// normalized partial (out, lse). Split sequences are folded by a second kernel with the shared
// merge rule. Page ids and lengths live in device memory, so the kernels check them: a bad one
// raises a flag, the CTA skips the read, and the launcher synchronizes to report the error.
#include <cuda_runtime.h>
#include <math.h>

#include <algorithm>

#include "attention/attention_cuda.h"
#include "common/attention.h"
#include "cuda_common.cuh"

namespace qk::cuda {
namespace {

using detail::DeviceGuard;
using detail::StreamScratch;
using detail::stream_of;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 32;  // tokens scored per softmax update

enum ErrorBits : unsigned {
  kBadBlock = 1u,
  kBadLength = 2u,
  kBadIndptr = 4u,
  kBadLastPage = 8u,
  kBadSlot = 16u,
};

__device__ __forceinline__ float load_elem(const void* base, int dtype, int64_t i) {
  if (dtype == QK_F16) return qk::f16_to_f32(static_cast<const uint16_t*>(base)[i]);
  if (dtype == QK_BF16) return qk::bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

__device__ __forceinline__ void store_elem(void* base, int dtype, int64_t i, float v) {
  if (dtype == QK_F16) static_cast<uint16_t*>(base)[i] = qk::f32_to_f16(v);
  else if (dtype == QK_BF16) static_cast<uint16_t*>(base)[i] = qk::f32_to_bf16(v);
  else static_cast<float*>(base)[i] = v;
}

// ---- write K/V -------------------------------------------------------------------------------

__global__ void check_slots_kernel(const int64_t* slots, int64_t tokens, int64_t capacity, unsigned* error) {
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < tokens; t += (int64_t)gridDim.x * blockDim.x)
    if (slots[t] >= capacity) atomicOr(error, kBadSlot);
}

struct WriteArgs {
  const void* src;
  int src_dtype;
  int64_t src_token_stride, src_head_stride;
  void* cache;
  int cache_dtype;
  int64_t block_stride;
};

__global__ void write_kv_kernel(WriteArgs k, WriteArgs v, const int64_t* slots, int64_t tokens, int block_size,
                                int heads, int head_dim) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    const int64_t block = slot / block_size, off = slot % block_size;
    for (int i = threadIdx.x; i < heads * head_dim; i += blockDim.x) {
      const int h = i / head_dim, d = i % head_dim;
      const int64_t dst = block * k.block_stride + (off * heads + h) * (int64_t)head_dim + d;
      store_elem(k.cache, k.cache_dtype, dst,
                 load_elem(k.src, k.src_dtype, t * k.src_token_stride + h * k.src_head_stride + d));
      const int64_t dst_v = block * v.block_stride + (off * heads + h) * (int64_t)head_dim + d;
      store_elem(v.cache, v.cache_dtype, dst_v,
                 load_elem(v.src, v.src_dtype, t * v.src_token_stride + h * v.src_head_stride + d));
    }
  }
}

// ---- decode ------------------------------------------------------------------------------------

// The pages of sequence b, from a padded table or a CSR table; valid() raises the error flag.
struct PaddedPages {
  const int32_t* table;
  const int32_t* seq_lens;
  int64_t max_blocks;
  __device__ bool get(int64_t b, int block_size, const int32_t** pages, int64_t* count, int64_t* last,
                      unsigned* error) const {
    const int64_t len = seq_lens[b];
    if (len < 0 || len > max_blocks * block_size) {
      atomicOr(error, kBadLength);
      return false;
    }
    *pages = table + b * max_blocks;
    *count = (len + block_size - 1) / block_size;
    *last = *count ? len - (*count - 1) * block_size : 0;
    return true;
  }
};

struct CsrPages {
  const int32_t* indptr;
  const int32_t* indices;
  const int32_t* last_page_len;
  int64_t nnz;
  __device__ bool get(int64_t b, int block_size, const int32_t** pages, int64_t* count, int64_t* last,
                      unsigned* error) const {
    const int64_t lo = indptr[b], hi = indptr[b + 1];
    if ((b == 0 && lo != 0) || lo < 0 || hi < lo || hi > nnz) {
      atomicOr(error, kBadIndptr);
      return false;
    }
    *pages = indices + lo;
    *count = hi - lo;
    *last = last_page_len[b];
    if (*count > 0 ? (*last < 1 || *last > block_size) : *last != 0) {
      atomicOr(error, kBadLastPage);
      return false;
    }
    return true;
  }
};

struct DecodeArgs {
  const void* q;
  int q_dtype;
  int64_t q_batch_stride, q_head_stride;
  const void* k;
  const void* v;
  int cache_dtype;
  int64_t k_block_stride, v_block_stride, token_stride, num_blocks;
  int block_size, kv_heads, group, head_dim;
  float scale;
  int64_t partition_blocks;  // pages per partition
  int parts;                 // partitions per sequence in the grid (gridDim.z)
  float* part_out;           // [B][parts][Hq][D] when parts > 1
  float* part_lse;           // [B][parts][Hq]
  void* out;
  int out_dtype;
  float* lse;                // may be null
  unsigned* error;
};

template <class Pages>
__global__ void __launch_bounds__(kThreads) decode_kernel(DecodeArgs a, Pages src) {
  extern __shared__ float smem[];
  const int G = a.group, D = a.head_dim;
  float* q_s = smem;                    // G x D
  float* acc = q_s + G * D;             // G x D
  float* s = acc + G * D;               // G x kChunk scores, then probabilities
  float* m = s + G * kChunk;            // G
  float* l = m + G;                     // G
  float* alpha = l + G;                 // G
  __shared__ int bad;

  const int64_t b = blockIdx.x;
  const int kvh = blockIdx.y, part = blockIdx.z;
  const int hq = a.kv_heads * G;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  for (int i = tid; i < G * D; i += kThreads) {
    const int g = i / D, d = i % D;
    q_s[i] = load_elem(a.q, a.q_dtype, b * a.q_batch_stride + (int64_t)(kvh * G + g) * a.q_head_stride + d);
    acc[i] = 0.0f;
  }
  for (int g = tid; g < G; g += kThreads) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
  }
  if (tid == 0) bad = 0;
  __syncthreads();

  const int32_t* pages = nullptr;
  int64_t count = 0, last = 0;
  bool ok = src.get(b, a.block_size, &pages, &count, &last, a.error);
  if (ok && tid == 0)  // every page of this partition must name a block before any is read
    for (int64_t p = part * a.partition_blocks; p < count && p < (part + 1) * a.partition_blocks; p++)
      if (pages[p] < 0 || pages[p] >= a.num_blocks) {
        atomicOr(a.error, kBadBlock);
        bad = 1;
      }
  __syncthreads();
  if (!ok || bad) count = 0;

  const int64_t first = part * a.partition_blocks;
  const int64_t end_page = count < first + a.partition_blocks ? count : first + a.partition_blocks;
  const int64_t tokens = end_page <= first ? 0 : (end_page - first - 1) * a.block_size +
                                                     (end_page == count ? last : a.block_size);
  for (int64_t c0 = 0; c0 < tokens; c0 += kChunk) {
    const int n = tokens - c0 < kChunk ? (int)(tokens - c0) : kChunk;
    // scores: warp w takes tokens w, w + 8, ...; lanes split head_dim; one warp reduction per head
    for (int t = warp; t < n; t += kWarps) {
      const int64_t tok = c0 + t;
      const int64_t page = pages[first + tok / a.block_size];
      const int64_t row = page * a.k_block_stride + (tok % a.block_size) * a.token_stride + (int64_t)kvh * D;
      for (int g = 0; g < G; g++) {
        float dot = 0.0f;
        for (int d = lane; d < D; d += 32) dot += q_s[g * D + d] * load_elem(a.k, a.cache_dtype, row + d);
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (lane == 0) s[g * kChunk + t] = dot * a.scale;
      }
    }
    __syncthreads();
    for (int g = tid; g < G; g += kThreads) {  // online softmax update per query head
      float mx = -INFINITY;
      for (int t = 0; t < n; t++) mx = fmaxf(mx, s[g * kChunk + t]);
      const float m_new = fmaxf(m[g], mx);
      const float al = m[g] == -INFINITY ? 0.0f : expf(m[g] - m_new);
      float sum = 0.0f;
      for (int t = 0; t < n; t++) {
        const float e = expf(s[g * kChunk + t] - m_new);
        s[g * kChunk + t] = e;
        sum += e;
      }
      l[g] = l[g] * al + sum;
      m[g] = m_new;
      alpha[g] = al;
    }
    __syncthreads();
    for (int i = tid; i < G * D; i += kThreads) {  // V: threads over (head, d); consecutive d coalesce
      const int g = i / D, d = i % D;
      float o = acc[i] * alpha[g];
      for (int t = 0; t < n; t++) {
        const int64_t tok = c0 + t;
        const int64_t page = pages[first + tok / a.block_size];
        const int64_t row = page * a.v_block_stride + (tok % a.block_size) * a.token_stride + (int64_t)kvh * D;
        o += s[g * kChunk + t] * load_elem(a.v, a.cache_dtype, row + d);
      }
      acc[i] = o;
    }
    __syncthreads();
  }

  for (int i = tid; i < G * D; i += kThreads) {
    const int g = i / D, d = i % D;
    const float value = l[g] > 0.0f ? acc[i] / l[g] : 0.0f;
    const int64_t head = (int64_t)kvh * G + g;
    if (a.parts == 1)
      store_elem(a.out, a.out_dtype, (b * hq + head) * D + d, value);
    else
      a.part_out[((b * a.parts + part) * hq + head) * D + d] = value;
  }
  for (int g = tid; g < G; g += kThreads) {
    const float lse = l[g] > 0.0f ? m[g] + logf(l[g]) : -INFINITY;
    const int64_t head = (int64_t)kvh * G + g;
    if (a.parts == 1) {
      if (a.lse) a.lse[b * hq + head] = lse;
    } else {
      a.part_lse[(b * a.parts + part) * hq + head] = lse;
    }
  }
}

// Folds the partitions of each (sequence, head) with the shared merge rule.
__global__ void merge_parts_kernel(const float* part_out, const float* part_lse, int parts, int64_t rows, int hq,
                                   int head_dim, void* out, int out_dtype, float* lse) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t b = r / hq, head = r % hq;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
      float acc = part_out[((b * parts) * hq + head) * head_dim + d];
      float acc_lse = part_lse[(b * parts) * hq + head];
      for (int p = 1; p < parts; p++) {
        const float lp = part_lse[(b * parts + p) * hq + head];
        const qk::attention::MergeWeights w = qk::attention::merge_weights(acc_lse, lp);
        acc = qk::attention::merge_value(w, acc, part_out[((b * parts + p) * hq + head) * head_dim + d]);
        acc_lse = w.lse;
      }
      store_elem(out, out_dtype, r * head_dim + d, acc);
      if (d == 0 && lse) lse[r] = acc_lse;
    }
  }
}

__global__ void merge_kernel(const float* oa, const float* la, const float* ob, const float* lb, float* o, float* l,
                             int64_t rows, int64_t head_dim) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const qk::attention::MergeWeights w = qk::attention::merge_weights(la[r], lb[r]);
    __syncthreads();  // every thread has read la[r] / lb[r] before l[r] (maybe the same memory) is written
    for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x)
      o[r * head_dim + d] = qk::attention::merge_value(w, oa[r * head_dim + d], ob[r * head_dim + d]);
    if (threadIdx.x == 0) l[r] = w.lse;
  }
}

const char* describe(unsigned bits) {
  if (bits & kBadBlock) return "a page table names a block outside the cache";
  if (bits & kBadLength) return "a seq_lens entry is negative or longer than its block_tables row";
  if (bits & kBadIndptr) return "kv_indptr is not 0-based, non-decreasing and within kv_indices";
  if (bits & kBadLastPage) return "a kv_last_page_len entry is outside 1..block_size (0 without pages)";
  if (bits & kBadSlot) return "a slot_mapping entry is beyond the cache";
  return "unknown";
}

// Copies the error flag back (synchronizing the stream) and turns it into a status.
qk_status report(const unsigned* flag, cudaStream_t s, const char* fn) {
  unsigned bits = 0;
  QK_CUDA(fn, cudaMemcpyAsync, &bits, flag, sizeof bits, cudaMemcpyDeviceToHost, s);
  QK_CUDA(fn, cudaStreamSynchronize, s);
  if (bits) return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: %s (checked on the device)", fn, describe(bits));
  return QK_OK;
}

template <class Pages>
qk_status launch_decode(const char* fn, const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                        Pages pages, int64_t max_pages, float scale, int64_t partition_blocks, const qk_tensor* out,
                        const qk_tensor* lse, qk_stream stream) {
  const int64_t B = q->shape[0], hq = q->shape[1], D = q->shape[2];
  const int64_t hkv = k_cache->shape[2], bs = k_cache->shape[1];
  if (B == 0) return QK_OK;
  const int64_t group = hq / hkv;
  const size_t smem = sizeof(float) * (size_t)(2 * group * D + group * kChunk + 3 * group);
  DeviceGuard guard;
  QK_TRY(guard.set(k_cache->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  int device = 0, max_smem = 0;
  QK_CUDA(fn, cudaGetDevice, &device);
  QK_CUDA(fn, cudaDeviceGetAttribute, &max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (smem + 64 > (size_t)max_smem)
    return qk::fail(QK_ERR_UNSUPPORTED, "%s: a query group of %lld heads x head_dim %lld needs %zu bytes of shared memory, "
                    "this GPU allows %d", fn, (long long)group, (long long)D, smem, max_smem);
  // partitions of 512 tokens (vLLM's choice) unless the caller set one
  const int64_t pb = partition_blocks > 0 ? partition_blocks : std::max<int64_t>(1, 512 / bs);
  const int64_t parts = std::max<int64_t>(1, (max_pages + pb - 1) / pb);
  if (parts > 65535) return qk::fail(QK_ERR_UNSUPPORTED, "%s: %lld partitions per sequence exceed the grid", fn, (long long)parts);
  if (hkv > 65535) return qk::fail(QK_ERR_UNSUPPORTED, "%s: %lld kv heads exceed the grid", fn, (long long)hkv);

  StreamScratch scratch(s);
  const size_t part_floats = parts > 1 ? (size_t)(B * parts * hq * (D + 1)) : 0;
  QK_TRY(scratch.allocate(64 + sizeof(float) * part_floats, fn));
  unsigned* error = scratch.as<unsigned>();
  QK_CUDA(fn, cudaMemsetAsync, error, 0, sizeof(unsigned), s);

  DecodeArgs a;
  a.q = q->data;
  a.q_dtype = q->dtype;
  a.q_batch_stride = q->strides[0];
  a.q_head_stride = q->strides[1];
  a.k = k_cache->data;
  a.v = v_cache->data;
  a.cache_dtype = k_cache->dtype;
  a.k_block_stride = k_cache->strides[0];
  a.v_block_stride = v_cache->strides[0];
  a.token_stride = hkv * D;
  a.num_blocks = k_cache->shape[0];
  a.block_size = (int)bs;
  a.kv_heads = (int)hkv;
  a.group = (int)group;
  a.head_dim = (int)D;
  a.scale = scale;
  a.partition_blocks = pb;
  a.parts = (int)parts;
  a.part_out = parts > 1 ? scratch.as<float>(64) : nullptr;
  a.part_lse = parts > 1 ? a.part_out + B * parts * hq * D : nullptr;
  a.out = out->data;
  a.out_dtype = out->dtype;
  a.lse = lse ? static_cast<float*>(lse->data) : nullptr;
  a.error = error;

  QK_CUDA(fn, cudaFuncSetAttribute, decode_kernel<Pages>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  const dim3 grid((unsigned)B, (unsigned)hkv, (unsigned)parts);
  decode_kernel<Pages><<<grid, kThreads, smem, s>>>(a, pages);
  QK_CUDA_LAUNCHED(fn, "decode_kernel");
  if (parts > 1) {
    merge_parts_kernel<<<detail::grid_for(B * hq, 8), 128, 0, s>>>(a.part_out, a.part_lse, (int)parts, B * hq, (int)hq,
                                                                   (int)D, out->data, out->dtype, a.lse);
    QK_CUDA_LAUNCHED(fn, "merge_parts_kernel");
  }
  return report(error, s, fn);
}

}  // namespace

qk_status attention_write_kv(const qk_tensor* key, const qk_tensor* value, const qk_tensor* k_cache,
                             const qk_tensor* v_cache, const qk_tensor* slot_mapping, qk_stream stream) {
  const char* fn = "qk_attention_write_kv";
  const int64_t T = slot_mapping->shape[0];
  if (T == 0) return QK_OK;
  DeviceGuard guard;
  QK_TRY(guard.set(k_cache->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  StreamScratch scratch(s);
  QK_TRY(scratch.allocate(sizeof(unsigned), fn));
  unsigned* error = scratch.as<unsigned>();
  QK_CUDA(fn, cudaMemsetAsync, error, 0, sizeof(unsigned), s);
  const int64_t* slots = static_cast<const int64_t*>(slot_mapping->data);
  // every slot is checked before anything is written (duplicate slots are not detected on CUDA)
  check_slots_kernel<<<detail::grid_for((T + 255) / 256, 4), 256, 0, s>>>(slots, T,
                                                                         k_cache->shape[0] * k_cache->shape[1], error);
  QK_CUDA_LAUNCHED(fn, "check_slots_kernel");
  QK_TRY(report(error, s, fn));
  WriteArgs k{key->data, key->dtype, key->strides[0], key->strides[1], k_cache->data, k_cache->dtype, k_cache->strides[0]};
  WriteArgs v{value->data, value->dtype, value->strides[0], value->strides[1], v_cache->data, v_cache->dtype,
              v_cache->strides[0]};
  write_kv_kernel<<<detail::grid_for(T, 8), 128, 0, s>>>(k, v, slots, T, (int)k_cache->shape[1], (int)k_cache->shape[2],
                                                         (int)k_cache->shape[3]);
  QK_CUDA_LAUNCHED(fn, "write_kv_kernel");
  return QK_OK;
}

qk_status attention_paged_decode(const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                                 const qk_tensor* block_tables, const qk_tensor* seq_lens, float scale,
                                 int64_t partition_blocks, const qk_tensor* out, const qk_tensor* lse,
                                 qk_stream stream) {
  PaddedPages pages{static_cast<const int32_t*>(block_tables->data), static_cast<const int32_t*>(seq_lens->data),
                    block_tables->shape[1]};
  return launch_decode("qk_attention_paged_decode", q, k_cache, v_cache, pages, block_tables->shape[1], scale,
                       partition_blocks, out, lse, stream);
}

qk_status attention_paged_decode_csr(const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                                     const qk_tensor* kv_indptr, const qk_tensor* kv_indices,
                                     const qk_tensor* kv_last_page_len, float scale, int64_t partition_blocks,
                                     const qk_tensor* out, const qk_tensor* lse, qk_stream stream) {
  CsrPages pages{static_cast<const int32_t*>(kv_indptr->data), static_cast<const int32_t*>(kv_indices->data),
                 static_cast<const int32_t*>(kv_last_page_len->data), kv_indices->shape[0]};
  // the longest sequence is unknown on the host: size the grid for all of kv_indices
  return launch_decode("qk_attention_paged_decode_csr", q, k_cache, v_cache, pages, kv_indices->shape[0], scale,
                       partition_blocks, out, lse, stream);
}

qk_status attention_merge(const qk_tensor* out_a, const qk_tensor* lse_a, const qk_tensor* out_b,
                          const qk_tensor* lse_b, const qk_tensor* out, const qk_tensor* lse, qk_stream stream) {
  const char* fn = "qk_attention_merge";
  const int64_t rows = qk::numel(lse), D = out->shape[out->ndim - 1];
  DeviceGuard guard;
  QK_TRY(guard.set(out->device_index, fn));
  const cudaStream_t s = stream_of(stream);
  merge_kernel<<<detail::grid_for(rows, 8), 128, 0, s>>>(
      static_cast<const float*>(out_a->data), static_cast<const float*>(lse_a->data),
      static_cast<const float*>(out_b->data), static_cast<const float*>(lse_b->data), static_cast<float*>(out->data),
      static_cast<float*>(lse->data), rows, D);
  QK_CUDA_LAUNCHED(fn, "merge_kernel");
  return QK_OK;
}

}  // namespace qk::cuda
