// Top-k selection and the fused DGC step on CUDA.
//
// Exact top-k is a radix select over the same 32-bit keys as the CPU (native/common/topk.h) in
// three digit passes (11 + 11 + 10 bits). Every decision stays on the device: the histogram
// kernels add into a global histogram, a one-block kernel picks the bucket and narrows the key
// range [lo, hi] in a device-side SelectState that the next kernel reads, and the output is
// written at offsets from a device-side scan of per-chunk counts. No kernel result is copied to
// the host inside the selection and the outputs have the fixed size k, so a whole selection is a
// fixed sequence of launches on one stream (capturable in a CUDA graph). The only host
// synchronisation is at the very end, to report a NaN (or non-finite gradient) index.
//
// Output order: ascending index, exactly as on the CPU; equal keys go to the lower index. The
// chunk-ordered compaction (cub::BlockScan within a chunk, a scan of chunk counts across chunks)
// makes the result deterministic. QK_TOPK_SORTED and the sampled selection are CPU-only for now.
//
// Not as lean as AIR Top-K yet: every pass re-reads the full input (no candidate buffer), i.e.
// five reads of x per selection.
//
// Compiled in CI (sm_80, sm_90); NEVER RUN ON A GPU: this file has not been executed or tested.
#include <cuda_fp16.h>
#include <stdint.h>

#include <cub/block/block_scan.cuh>

#include "common/topk.h"
#include "cuda_common.cuh"
#include "topk/topk_cuda.h"

namespace qk::cuda {
namespace {

using namespace qk::topk;
using detail::DeviceGuard;
using detail::StreamScratch;

constexpr int kThreads = 256;
constexpr int kPerThread = 16;
constexpr int64_t kChunk = (int64_t)kThreads * kPerThread;  // elements per block in count / write
constexpr unsigned long long kNone = ~0ull;

struct SelectState {
  uint32_t lo, hi;
  unsigned long long need;         // keys == T still to take after the last pass
  unsigned long long nan_index;    // lowest NaN index of x (kNone if none)
  unsigned long long bad_grad;     // DGC: lowest non-finite grad index
  unsigned long long bad_v;        // DGC: lowest non-finite v index after the update
  double sum_squares;              // DGC: ||g||^2
  float scale;                     // DGC: clipping factor
  int scaled;
  unsigned long long hist[kBins];
};

__device__ __forceinline__ uint32_t key_at(const uint32_t* bits, int64_t i, int order) {
  return key_of(bits[i], order);
}

__global__ void init_state(SelectState* s, unsigned long long k) {
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) s->hist[b] = 0;
  if (threadIdx.x == 0) {
    s->lo = 0;
    s->hi = 0xffffffffu;
    s->need = k;
    s->nan_index = s->bad_grad = s->bad_v = kNone;
    s->sum_squares = 0.0;
    s->scale = 1.0f;
    s->scaled = 0;
  }
}

// hist[digit] += 1 for keys in [lo, hi]; pass 0 also records the lowest NaN index
__global__ void histogram_kernel(const uint32_t* __restrict__ bits, int64_t n, int order, int shift, bool nan_check,
                                 SelectState* s) {
  __shared__ uint32_t h[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) h[b] = 0;
  __syncthreads();
  const uint32_t lo = s->lo, span = s->hi - s->lo;
  unsigned long long first_nan = kNone;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const uint32_t b = bits[i];
    if (nan_check && is_nan_bits(b) && (unsigned long long)i < first_nan) first_nan = (unsigned long long)i;
    const uint32_t key = key_of(b, order);
    if (key - lo <= span) atomicAdd(&h[(key >> shift) & (kBins - 1)], 1u);
  }
  if (first_nan != kNone) atomicMin(&s->nan_index, first_nan);
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (h[b]) atomicAdd(&s->hist[b], (unsigned long long)h[b]);
}

// One block: the bucket holding the need-th largest key; narrows [lo, hi]; clears the histogram.
__global__ void choose_bucket(SelectState* s, int shift) {
  __shared__ unsigned long long h[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    h[b] = s->hist[b];
    s->hist[b] = 0;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  unsigned long long cum = 0, need = s->need;
  int b = kBins - 1;
  for (; b > 0; b--) {
    if (cum + h[b] >= need) break;
    cum += h[b];
  }
  s->need = need - cum;
  uint32_t lo = (s->lo & ~((uint32_t)(kBins - 1) << shift)) | ((uint32_t)b << shift);
  s->lo = lo;
  s->hi = lo | (shift ? (1u << shift) - 1u : 0u);
}

// Per chunk: keys > T and keys == T.
__global__ void count_chunks(const uint32_t* __restrict__ bits, int64_t n, int order, const SelectState* s,
                             unsigned long long* above, unsigned long long* ties) {
  __shared__ unsigned int a_sh, t_sh;
  if (threadIdx.x == 0) a_sh = t_sh = 0;
  __syncthreads();
  const uint32_t t = s->lo;
  const int64_t base = (int64_t)blockIdx.x * kChunk;
  unsigned a = 0, e = 0;
  for (int r = 0; r < kPerThread; r++) {
    int64_t i = base + (int64_t)r * kThreads + threadIdx.x;
    if (i < n) {
      uint32_t key = key_at(bits, i, order);
      a += key > t;
      e += key == t;
    }
  }
  atomicAdd(&a_sh, a);
  atomicAdd(&t_sh, e);
  __syncthreads();
  if (threadIdx.x == 0) {
    above[blockIdx.x] = a_sh;
    ties[blockIdx.x] = t_sh;
  }
}

// One block: chunk output offsets and tie quotas (ties go to the lowest indices).
__global__ void scan_chunks(const SelectState* s, int64_t chunks, const unsigned long long* above,
                            const unsigned long long* ties, unsigned long long* offset, unsigned long long* quota) {
  using Scan = cub::BlockScan<unsigned long long, 1024>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ unsigned long long carry_ties, carry_out;
  if (threadIdx.x == 0) carry_ties = carry_out = 0;
  __syncthreads();
  const unsigned long long need = s->need;
  for (int64_t c0 = 0; c0 < chunks; c0 += 1024) {
    const int64_t c = c0 + threadIdx.x;
    unsigned long long t = c < chunks ? ties[c] : 0, t_before, t_total;
    Scan(tmp).ExclusiveSum(t, t_before, t_total);
    __syncthreads();
    t_before += carry_ties;
    unsigned long long q = t_before >= need ? 0 : (need - t_before < t ? need - t_before : t);
    unsigned long long o = c < chunks ? above[c] + q : 0, o_before, o_total;
    Scan(tmp).ExclusiveSum(o, o_before, o_total);
    if (c < chunks) {
      offset[c] = carry_out + o_before;
      quota[c] = q;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      carry_ties += t_total;
      carry_out += o_total;
    }
    __syncthreads();
  }
}

// Writes every key > T and the chunk's quota of keys == T, in index order.
__global__ void write_chunks(const uint32_t* __restrict__ bits, int64_t n, int order, const SelectState* s,
                             const unsigned long long* offset, const unsigned long long* quota, uint32_t* out_bits,
                             int64_t* out_index) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const uint32_t t = s->lo;
  const int64_t base = (int64_t)blockIdx.x * kChunk;
  const unsigned long long q = quota[blockIdx.x];
  unsigned long long out = offset[blockIdx.x], ties_seen = 0;
  for (int r = 0; r < kPerThread; r++) {
    const int64_t i = base + (int64_t)r * kThreads + threadIdx.x;
    uint32_t b = 0, key = 0;
    if (i < n) {
      b = bits[i];
      key = key_of(b, order);
    }
    const int tie = i < n && key == t;
    int tie_rank, tie_total;
    Scan(tmp).ExclusiveSum(tie, tie_rank, tie_total);
    __syncthreads();
    const int sel = i < n && (key > t || (tie && ties_seen + (unsigned long long)tie_rank < q));
    int pos, total;
    Scan(tmp).ExclusiveSum(sel, pos, total);
    __syncthreads();
    if (sel) {
      out_bits[out + pos] = b;
      out_index[out + pos] = i;
    }
    out += total;
    ties_seen += tie_total;
  }
}

struct Plan {
  SelectState* state;
  unsigned long long *above, *ties, *offset, *quota;
  uint32_t* out_bits;
  int64_t* out_index;
  int64_t chunks;
};

size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

qk_status make_plan(StreamScratch& scratch, int64_t n, int64_t k, Plan* p, const char* fn) {
  p->chunks = (n + kChunk - 1) / kChunk;
  const size_t s0 = align256(sizeof(SelectState)), c = align256(sizeof(unsigned long long) * (size_t)p->chunks);
  const size_t ob = align256(sizeof(uint32_t) * (size_t)k), oi = align256(sizeof(int64_t) * (size_t)k);
  QK_TRY(scratch.allocate(s0 + 4 * c + ob + oi, fn));
  size_t off = 0;
  p->state = scratch.as<SelectState>(off), off += s0;
  p->above = scratch.as<unsigned long long>(off), off += c;
  p->ties = scratch.as<unsigned long long>(off), off += c;
  p->offset = scratch.as<unsigned long long>(off), off += c;
  p->quota = scratch.as<unsigned long long>(off), off += c;
  p->out_bits = scratch.as<uint32_t>(off), off += ob;
  p->out_index = scratch.as<int64_t>(off);
  return QK_OK;
}

// The three digit passes (pass 0's histogram skipped when the caller already built it), then the
// ordered emission into plan.out_bits / out_index.
qk_status run_select(const uint32_t* bits, int64_t n, int order, bool hist0_ready, const Plan& p, cudaStream_t st,
                     const char* fn) {
  const unsigned grid = detail::grid_for((n + kThreads - 1) / kThreads, 8);
  for (int pass = 0; pass < kPasses; pass++) {
    if (pass > 0 || !hist0_ready) {
      histogram_kernel<<<grid, kThreads, 0, st>>>(bits, n, order, digit_shift(pass), pass == 0, p.state);
      QK_CUDA_LAUNCHED(fn, "histogram_kernel");
    }
    choose_bucket<<<1, 1024, 0, st>>>(p.state, digit_shift(pass));
    QK_CUDA_LAUNCHED(fn, "choose_bucket");
  }
  count_chunks<<<(unsigned)p.chunks, kThreads, 0, st>>>(bits, n, order, p.state, p.above, p.ties);
  QK_CUDA_LAUNCHED(fn, "count_chunks");
  scan_chunks<<<1, 1024, 0, st>>>(p.state, p.chunks, p.above, p.ties, p.offset, p.quota);
  QK_CUDA_LAUNCHED(fn, "scan_chunks");
  write_chunks<<<(unsigned)p.chunks, kThreads, 0, st>>>(bits, n, order, p.state, p.offset, p.quota, p.out_bits,
                                                         p.out_index);
  QK_CUDA_LAUNCHED(fn, "write_chunks");
  return QK_OK;
}

__global__ void store_outputs(const uint32_t* ob, const int64_t* oi, int64_t k, void* indices, bool i32, float* values) {
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < k; j += (int64_t)gridDim.x * blockDim.x) {
    if (i32) static_cast<int32_t*>(indices)[j] = (int32_t)oi[j];
    else static_cast<int64_t*>(indices)[j] = oi[j];
    if (values) values[j] = __uint_as_float(ob[j]);
  }
}

// ---- DGC ------------------------------------------------------------------------------------

__global__ void dgc_check(const float* __restrict__ g, int64_t n, double* partial, SelectState* s) {
  __shared__ double sh[kThreads];
  double acc = 0.0;
  unsigned long long bad = kNone;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float x = g[i];
    if (is_nonfinite_bits(__float_as_uint(x))) {
      if ((unsigned long long)i < bad) bad = i;
    } else {
      acc = __dadd_rn(acc, __dmul_rn((double)x, (double)x));
    }
  }
  if (bad != kNone) atomicMin(&s->bad_grad, bad);
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] = __dadd_rn(sh[threadIdx.x], sh[threadIdx.x + w]);
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}

// One thread: the partial sums in block order (deterministic for a given grid), then the scale.
__global__ void dgc_scale(const double* partial, int blocks, float clip_norm, SelectState* s) {
  double sum = 0.0;
  for (int b = 0; b < blocks; b++) sum = __dadd_rn(sum, partial[b]);
  s->sum_squares = sum;
  const double norm = sqrt(sum);
  if (clip_norm > 0.0f && norm > (double)clip_norm) {
    s->scaled = 1;
    s->scale = (float)((double)clip_norm / norm);
  }
}

// The fused update (skipped entirely when the check found a bad gradient) and pass-0 histogram.
__global__ void dgc_update(const float* __restrict__ g, float* __restrict__ u, float* __restrict__ v, int64_t n,
                           int feedback, bool nesterov, float m, SelectState* s) {
  if (s->bad_grad != kNone) return;
  __shared__ uint32_t h[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) h[b] = 0;
  __syncthreads();
  const bool scaled = s->scaled;
  const float scale = s->scale;
  unsigned long long bad = kNone;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const float gi = scaled ? __fmul_rn(g[i], scale) : g[i];
    float ui = feedback == 2 ? u[i] : 0.0f, vi = v[i];
    dgc_accumulate(gi, ui, vi, feedback, nesterov, m);
    if (feedback == 2) u[i] = ui;
    v[i] = vi;
    const uint32_t b = __float_as_uint(vi);
    if (is_nonfinite_bits(b) && (unsigned long long)i < bad) bad = i;
    atomicAdd(&h[(b & 0x7fffffffu) >> 21], 1u);
  }
  if (bad != kNone) atomicMin(&s->bad_v, bad);
  __syncthreads();
  for (int b = threadIdx.x; b < kBins; b += blockDim.x)
    if (h[b]) atomicAdd(&s->hist[b], (unsigned long long)h[b]);
}

__global__ void dgc_pack(const uint32_t* ob, const int64_t* oi, int64_t k, void* indices, bool i32, void* values,
                         bool half, float* u, float* v, const SelectState* s) {
  if (s->bad_grad != kNone) return;
  for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < k; j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = oi[j];
    const float val = __uint_as_float(ob[j]);
    if (i32) static_cast<int32_t*>(indices)[j] = (int32_t)i;
    else static_cast<int64_t*>(indices)[j] = i;
    if (half) {
      const float sat = fminf(65504.0f, fmaxf(-65504.0f, val));
      const uint16_t hb = f32_to_f16(sat);
      static_cast<uint16_t*>(values)[j] = hb;
      v[i] = __fsub_rn(val, f16_to_f32(hb));
    } else {
      static_cast<float*>(values)[j] = val;
      v[i] = 0.0f;
    }
    if (u) u[i] = 0.0f;
  }
}

}  // namespace

qk_status topk(const qk_tensor* x, int64_t k, int32_t order, int32_t flags, const qk_tensor* indices,
               const qk_tensor* values, int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_topk";
  if (flags & QK_TOPK_SORTED)
    return fail(QK_ERR_UNSUPPORTED, "%s: QK_TOPK_SORTED is CPU-only for now (CUDA returns ascending index order)", fn);
  DeviceGuard guard;
  QK_TRY(guard.set(x->device_index, fn));
  cudaStream_t st = detail::stream_of(stream);
  const int64_t n = numel(x);
  StreamScratch scratch(st);
  Plan p;
  QK_TRY(make_plan(scratch, n, k, &p, fn));
  init_state<<<1, 1024, 0, st>>>(p.state, (unsigned long long)k);
  QK_CUDA_LAUNCHED(fn, "init_state");
  QK_TRY(run_select(static_cast<const uint32_t*>(x->data), n, order, false, p, st, fn));
  store_outputs<<<detail::grid_for((k + kThreads - 1) / kThreads, 8), kThreads, 0, st>>>(
      p.out_bits, p.out_index, k, indices->data, indices->dtype == QK_I32,
      values ? static_cast<float*>(values->data) : nullptr);
  QK_CUDA_LAUNCHED(fn, "store_outputs");
  unsigned long long nan_index = kNone;
  QK_CUDA(fn, cudaMemcpyAsync, &nan_index, &p.state->nan_index, sizeof nan_index, cudaMemcpyDeviceToHost, st);
  QK_CUDA(fn, cudaStreamSynchronize, st);
  if (nan_index != kNone) {
    if (nonfinite_index) *nonfinite_index = (int64_t)nan_index;
    return fail(QK_ERR_NON_FINITE, "%s: x[%lld] is NaN", fn, (long long)nan_index);
  }
  return QK_OK;
}

qk_status dgc_step(const qk_tensor* grad, const qk_tensor* u, const qk_tensor* v, int64_t k, int32_t feedback,
                   float momentum, float clip_norm, int32_t flags, double, uint64_t, const qk_tensor* indices,
                   const qk_tensor* values, int64_t* selected_out, int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_dgc_step";
  if (flags & QK_DGC_SAMPLED) return fail(QK_ERR_UNSUPPORTED, "%s: QK_DGC_SAMPLED is CPU-only for now", fn);
  DeviceGuard guard;
  QK_TRY(guard.set(grad->device_index, fn));
  cudaStream_t st = detail::stream_of(stream);
  const int64_t n = numel(grad);
  const unsigned grid = detail::grid_for((n + kThreads - 1) / kThreads, 8);
  StreamScratch scratch(st), partials(st);
  Plan p;
  QK_TRY(make_plan(scratch, n, k, &p, fn));
  QK_TRY(partials.allocate(sizeof(double) * grid, fn));
  init_state<<<1, 1024, 0, st>>>(p.state, (unsigned long long)k);
  QK_CUDA_LAUNCHED(fn, "init_state");
  const float* g = static_cast<const float*>(grad->data);
  float* uu = u ? static_cast<float*>(u->data) : nullptr;
  float* vv = static_cast<float*>(v->data);
  // the check always runs on CUDA (QK_DGC_SKIP_FINITE_CHECK is ignored): it is what keeps u and v
  // untouched on a bad gradient, and it costs one read of grad
  dgc_check<<<grid, kThreads, 0, st>>>(g, n, partials.as<double>(), p.state);
  QK_CUDA_LAUNCHED(fn, "dgc_check");
  dgc_scale<<<1, 1, 0, st>>>(partials.as<double>(), (int)grid, clip_norm, p.state);
  QK_CUDA_LAUNCHED(fn, "dgc_scale");
  dgc_update<<<grid, kThreads, 0, st>>>(g, uu, vv, n, feedback, feedback == 2 && (flags & QK_DGC_NESTEROV), momentum,
                                        p.state);
  QK_CUDA_LAUNCHED(fn, "dgc_update");
  if (k > 0) {
    QK_TRY(run_select(reinterpret_cast<const uint32_t*>(vv), n, kMagnitude, true, p, st, fn));
    dgc_pack<<<detail::grid_for((k + kThreads - 1) / kThreads, 8), kThreads, 0, st>>>(
        p.out_bits, p.out_index, k, indices->data, indices->dtype == QK_I32, values->data, values->dtype == QK_F16,
        uu, vv, p.state);
    QK_CUDA_LAUNCHED(fn, "dgc_pack");
  }
  unsigned long long bad[2];
  QK_CUDA(fn, cudaMemcpyAsync, bad, &p.state->bad_grad, sizeof bad, cudaMemcpyDeviceToHost, st);
  QK_CUDA(fn, cudaStreamSynchronize, st);
  if (bad[0] != kNone) {
    if (nonfinite_index) *nonfinite_index = (int64_t)bad[0];
    return fail(QK_ERR_NON_FINITE, "%s: grad[%lld] is not finite; u and v are unchanged", fn, (long long)bad[0]);
  }
  if (bad[1] != kNone) {
    if (nonfinite_index) *nonfinite_index = (int64_t)bad[1];
    return fail(QK_ERR_NON_FINITE, "%s: v[%lld] is not finite after accumulation (float32 overflow)", fn,
                (long long)bad[1]);
  }
  if (selected_out) *selected_out = k;
  return QK_OK;
}

}  // namespace qk::cuda
