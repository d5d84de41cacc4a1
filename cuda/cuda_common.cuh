// Small helpers shared by the CUDA backend files: CUDA errors -> qk::fail, a current-device
// guard, the cudaStream_t behind a qk_stream, and stream-ordered scratch memory.
//
// Compiled in CI; never yet run on a GPU.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "internal.h"

namespace qk::cuda::detail {

// Records "<function>: <cudaGetErrorName>: <cudaGetErrorString> (<call>)" and returns
// QK_ERR_OUT_OF_MEMORY for cudaErrorMemoryAllocation, QK_ERR_DEVICE otherwise. It also
// clears the runtime's per-thread last error, so a failed call is not reported again by the
// cudaGetLastError() that follows the next kernel launch (sticky errors stay, as they must).
inline qk_status error(cudaError_t e, const char* function, const char* call) {
  (void)cudaGetLastError();
  const qk_status status = e == cudaErrorMemoryAllocation ? QK_ERR_OUT_OF_MEMORY : QK_ERR_DEVICE;
  return qk::fail(status, "%s: %s: %s (%s)", function, cudaGetErrorName(e), cudaGetErrorString(e), call);
}

// QK_CUDA(function, cudaApi, args...): calls cudaApi(args...) and returns the qk status of a
// failure from the enclosing function, naming the API that failed.
#define QK_CUDA(function, api, ...)                                           \
  do {                                                                        \
    cudaError_t qk_cuda_err_ = api(__VA_ARGS__);                              \
    if (qk_cuda_err_ != cudaSuccess)                                          \
      return ::qk::cuda::detail::error(qk_cuda_err_, (function), #api);       \
  } while (0)

// After a <<<...>>> launch: a bad configuration shows up here, not at the launch itself.
#define QK_CUDA_LAUNCHED(function, kernel_name)                                \
  do {                                                                        \
    cudaError_t qk_cuda_err_ = cudaGetLastError();                            \
    if (qk_cuda_err_ != cudaSuccess)                                          \
      return ::qk::cuda::detail::error(qk_cuda_err_, (function), "launch " kernel_name); \
  } while (0)

// Implemented in runtime.cu: QK_OK when CUDA is usable and `index` names a device this build
// has kernels for (sm_80 or newer); otherwise records why and returns the status.
qk_status require_device(int index, const char* function);

// Makes `index` the calling thread's current device for the guard's lifetime and restores the
// previous one afterwards (the CUDA current device is per thread; callers may be on any thread).
// Nothing is changed when the device is already current, the common case.
// Caveat: if the thread had never chosen a device, cudaGetDevice reports 0 and the restore
// makes device 0 current, which creates its primary context if it did not exist yet.
class DeviceGuard {
 public:
  DeviceGuard() = default;
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (restore_ && cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();
  }

  qk_status set(int index, const char* function) {
    QK_TRY(require_device(index, function));
    // Start from a clean per-thread error state: an unrelated earlier failure on this thread must
    // not be reported by our post-launch cudaGetLastError() checks.
    (void)cudaGetLastError();
    QK_CUDA(function, cudaGetDevice, &previous_);
    if (previous_ == index) return QK_OK;
    QK_CUDA(function, cudaSetDevice, index);
    restore_ = true;
    return QK_OK;
  }

 private:
  int previous_ = 0;
  bool restore_ = false;
};

// NULL -> the legacy default stream. cudaStreamLegacy names it explicitly, so the meaning does
// not change if the code is ever compiled with --default-stream per-thread.
inline cudaStream_t stream_of(qk_stream s) {
  return (s && s->native) ? static_cast<cudaStream_t>(s->native) : cudaStreamLegacy;
}

// Streaming multiprocessors of the current device (grid sizing). Never fails: 1 if unknown.
inline int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms < 1) {
    (void)cudaGetLastError();
    return 1;
  }
  return sms;
}

// Grid size for a grid-stride kernel: enough blocks for the work, at most `per_sm` per SM
// (the loops inside the kernels cover the rest, so any n up to 2^40 and beyond works).
inline unsigned grid_for(int64_t blocks_needed, int per_sm) {
  const int64_t cap = (int64_t)sm_count() * per_sm;
  int64_t g = blocks_needed < cap ? blocks_needed : cap;
  return (unsigned)(g < 1 ? 1 : g);
}

// Device scratch memory ordered on a stream: cudaMallocAsync / cudaFreeAsync, or plain
// cudaMalloc / cudaFree where the device has no memory pools. Freed on every path (destructor).
class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch() {
    if (!ptr_) return;
    cudaError_t e = pooled_ ? cudaFreeAsync(ptr_, stream_) : cudaFree(ptr_);  // cudaFree waits for the device
    if (e != cudaSuccess) (void)cudaGetLastError();
  }

  qk_status allocate(size_t bytes, const char* function) {
    cudaError_t e = cudaMallocAsync(&ptr_, bytes, stream_);
    if (e == cudaErrorNotSupported) {  // no memory pools (some virtualized setups)
      (void)cudaGetLastError();
      pooled_ = false;
      e = cudaMalloc(&ptr_, bytes);
    }
    if (e != cudaSuccess) {
      ptr_ = nullptr;
      return error(e, function, pooled_ ? "cudaMallocAsync" : "cudaMalloc");
    }
    return QK_OK;
  }

  template <class T>
  T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr_) + byte_offset);
  }

 private:
  cudaStream_t stream_;
  void* ptr_ = nullptr;
  bool pooled_ = true;
};

}  // namespace qk::cuda::detail
