// GPU memory-read bandwidth probe: the yardstick the CUDA kernels' speed is judged against.
//
// Read-only kernels stream the buffer with 128-bit loads (grid-stride, one full wave of
// resident blocks), with 1, 4 or 8 independent loads in flight per thread; each variant runs
// once to warm up and then `repetitions` times, timed with CUDA events. The best GB/s
// (1e9 bytes / s) over all variants and passes is reported with the winning variant's name.
// Loads are folded into an XOR that is stored only if it equals a value passed at run time,
// so the compiler cannot drop them and almost nothing is written.
//
// A buffer that fits in L2 (50 MB on H100) measures L2, not HBM: pass a large one.
//
// Compiled in CI; never yet run on a GPU.
#include <stdint.h>
#include <stdio.h>

#include "cuda_common.cuh"

namespace {

constexpr int kThreads = 256;
constexpr unsigned kNeverEqual = 0x9e3779b9u;  // the sink is written only if the XOR happens to equal this
constexpr int64_t kMinBytes = 1 << 20;

__device__ __forceinline__ unsigned fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

// Reads vectors [0, nvec) plus the unaligned head and tail bytes around them.
// MIN_BLOCKS (blocks per SM) caps registers: at 8 (32 registers) ptxas keeps at most about
// four 128-bit loads in flight whatever K says, so the x8 variant allows 64 registers (4 blocks).
template <int K, int MIN_BLOCKS>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS)
    read_kernel(const uint4* __restrict__ vec, int64_t nvec, const uint8_t* __restrict__ head, int head_bytes,
                const uint8_t* __restrict__ tail, int tail_bytes, unsigned sink_key, unsigned* __restrict__ sink) {
  const int64_t stride = (int64_t)gridDim.x * kThreads;
  int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x;
  unsigned acc = 0;
  // K loads issued before any is used; each of the K is coalesced across the warp.
  for (; i + (K - 1) * stride < nvec; i += K * stride) {
    uint4 v[K];
#pragma unroll
    for (int k = 0; k < K; k++) v[k] = vec[i + k * stride];
#pragma unroll
    for (int k = 0; k < K; k++) acc ^= fold(v[k]);
  }
  for (; i < nvec; i += stride) acc ^= fold(vec[i]);
  if (blockIdx.x == 0 && threadIdx.x < 16) {
    if ((int)threadIdx.x < head_bytes) acc ^= head[threadIdx.x];
    if ((int)threadIdx.x < tail_bytes) acc ^= tail[threadIdx.x];
  }
  if (acc == sink_key) *sink = acc;
}

struct Variant {
  const char* name;
  void (*kernel)(const uint4*, int64_t, const uint8_t*, int, const uint8_t*, int, unsigned, unsigned*);
};

const Variant kVariants[] = {
    {"cuda-read-uint4x1", read_kernel<1, 8>},
    {"cuda-read-uint4x4", read_kernel<4, 8>},
    {"cuda-read-uint4x8", read_kernel<8, 4>},
};

// Owns the probe's events and stream: destroyed on every path.
struct Resources {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  ~Resources() {
    if (start) (void)cudaEventDestroy(start);
    if (stop) (void)cudaEventDestroy(stop);
    if (stream) (void)cudaStreamDestroy(stream);
    (void)cudaGetLastError();
  }
};

}  // namespace

namespace qk::cuda {

qk_status probe_read_bandwidth(const qk_tensor* buf, int32_t repetitions, double* gbps_out, char* best_pattern,
                               int64_t best_pattern_len) {
  const char* fn = "qk_probe_read_bandwidth";
  const int64_t bytes = qk::numel(buf) * qk::dtype_size(buf->dtype);
  if (bytes < kMinBytes)
    return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: buffer too small to probe (need at least %lld bytes, got %lld)", fn,
                    (long long)kMinBytes, (long long)bytes);
  if (repetitions < 1) repetitions = 1;

  detail::DeviceGuard guard;
  QK_TRY(guard.set(buf->device_index, fn));
  Resources r;  // declared after the guard: released while the probed device is still current
  QK_CUDA(fn, cudaStreamCreateWithFlags, &r.stream, cudaStreamNonBlocking);
  QK_CUDA(fn, cudaEventCreate, &r.start);
  QK_CUDA(fn, cudaEventCreate, &r.stop);
  detail::StreamScratch sink(r.stream);  // destroyed before r: freed on a live stream
  QK_TRY(sink.allocate(sizeof(unsigned), fn));

  const uintptr_t begin = (uintptr_t)buf->data, end = begin + (uintptr_t)bytes;
  const uintptr_t vbegin = (begin + 15) & ~(uintptr_t)15, vend = end & ~(uintptr_t)15;
  const int64_t nvec = (int64_t)(vend - vbegin) / 16;  // bytes >= 1 MiB, so vbegin < vend
  const auto* vec = reinterpret_cast<const uint4*>(vbegin);
  const auto* head = reinterpret_cast<const uint8_t*>(begin);
  const auto* tail = reinterpret_cast<const uint8_t*>(vend);
  const int head_bytes = (int)(vbegin - begin), tail_bytes = (int)(end - vend);

  const int sms = detail::sm_count();
  double best = 0.0;
  const char* best_name = kVariants[0].name;
  for (const Variant& v : kVariants) {
    // One full wave of resident blocks: the grid-stride loop keeps every SM busy to the end.
    int per_sm = 0;
    QK_CUDA(fn, cudaOccupancyMaxActiveBlocksPerMultiprocessor, &per_sm, v.kernel, kThreads, 0);
    const unsigned grid = (unsigned)(sms * (per_sm > 0 ? per_sm : 1));
    for (int rep = -1; rep < repetitions; rep++) {  // rep -1: warm-up, not timed
      QK_CUDA(fn, cudaEventRecord, r.start, r.stream);
      v.kernel<<<grid, kThreads, 0, r.stream>>>(vec, nvec, head, head_bytes, tail, tail_bytes, kNeverEqual,
                                                sink.as<unsigned>());
      QK_CUDA_LAUNCHED(fn, "read_kernel");
      QK_CUDA(fn, cudaEventRecord, r.stop, r.stream);
      QK_CUDA(fn, cudaEventSynchronize, r.stop);
      float ms = 0.0f;
      QK_CUDA(fn, cudaEventElapsedTime, &ms, r.start, r.stop);
      if (rep < 0 || ms <= 0.0f) continue;
      const double gbps = (double)bytes / 1e9 / ((double)ms / 1e3);
      if (gbps > best) {
        best = gbps;
        best_name = v.name;
      }
    }
  }
  *gbps_out = best;
  if (best_pattern && best_pattern_len > 0) snprintf(best_pattern, (size_t)best_pattern_len, "%s", best_name);
  return QK_OK;
}

}  // namespace qk::cuda
