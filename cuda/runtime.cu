// CUDA backend: availability probe, devices, memory, copies, streams and events.
//
// The CUDA runtime is linked statically (libcudart_static), so libqkern loads without a
// driver; the first question about CUDA runs a one-time probe that decides whether the backend
// is usable and keeps a one-line status saying what it found or why not.
//
// Every entry point makes the requested device current for the call (DeviceGuard) and
// restores the caller's device, so any thread may call with any device index.
//
// Compiled in CI; never yet run on a GPU.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cstring>
#include <mutex>

#include "cuda_common.cuh"

namespace qk::cuda {
namespace {

// The build holds sm_80 and sm_90 machine code plus compute_90 PTX: sm_80 code runs on every
// 8.x device, the PTX is JIT-compiled for anything newer than 9.0. Older devices cannot run it.
constexpr int kMinMajor = 8;

struct Probe {
  bool usable = false;
  int count = 0;
  char status[1024] = "";
};

// Appends printf-style text to a fixed buffer, truncating safely.
void append(char* buf, size_t cap, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
void append(char* buf, size_t cap, const char* fmt, ...) {
  size_t used = strlen(buf);
  if (used + 1 >= cap) return;
  va_list args;
  va_start(args, fmt);
  vsnprintf(buf + used, cap - used, fmt, args);
  va_end(args);
}

void format_version(int v, char* buf, size_t cap) { snprintf(buf, cap, "%d.%d", v / 1000, (v % 1000) / 10); }

// Never creates a CUDA context (no cudaSetDevice / cudaFree(0)): asking costs nothing on a GPU
// another process is using, and nothing at all without a driver.
void run_probe(Probe& p) {
  int runtime = 0, driver = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;  // 0 also means "no driver"
  char rt[16], drv[16];
  format_version(runtime, rt, sizeof rt);
  format_version(driver, drv, sizeof drv);

  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  (void)cudaGetLastError();
  if (e != cudaSuccess) {
    const char* name = cudaGetErrorName(e);
    const char* text = cudaGetErrorString(e);
    if (e == cudaErrorInsufficientDriver && driver == 0)
      snprintf(p.status, sizeof p.status, "no CUDA driver found (%s: %s)", name, text);
    else if (e == cudaErrorInsufficientDriver)
      snprintf(p.status, sizeof p.status, "CUDA driver %s is too old for this libqkern's CUDA %s runtime (%s: %s)",
               drv, rt, name, text);
    else if (e == cudaErrorNoDevice)
      snprintf(p.status, sizeof p.status, "no CUDA device (%s: %s; driver %s)", name, text, drv);
    else
      snprintf(p.status, sizeof p.status, "CUDA initialization failed (%s: %s; runtime %s, driver %s)", name, text,
               rt, drv);
    return;
  }
  if (count <= 0) {
    snprintf(p.status, sizeof p.status, "no CUDA device (driver %s)", drv);
    return;
  }

  char devices[768] = "";
  int supported = 0;
  for (int i = 0; i < count; i++) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      (void)cudaGetLastError();
      append(devices, sizeof devices, "%sdevice %d (properties unreadable)", i ? ", " : "", i);
      continue;
    }
    const bool ok = prop.major >= kMinMajor;
    supported += ok;
    append(devices, sizeof devices, "%s%s (sm_%d%d%s)", i ? ", " : "", prop.name, prop.major, prop.minor,
           ok ? "" : ", unsupported: needs sm_80 or newer");
  }
  p.count = count;
  p.usable = supported > 0;
  if (p.usable)
    snprintf(p.status, sizeof p.status, "CUDA %s runtime, driver %s, %d device(s): %s", rt, drv, count, devices);
  else
    snprintf(p.status, sizeof p.status,
             "no CUDA device this build supports (its kernels need sm_80 or newer): %s; CUDA %s runtime, driver %s",
             devices, rt, drv);
}

const Probe& probe() {
  static std::once_flag once;
  static Probe p;
  std::call_once(once, [] { run_probe(p); });  // run_probe neither throws nor allocates
  return p;
}

// A copy or memset on the NULL stream is complete when the call returns (the ABI promises
// "asynchronous on a non-NULL CUDA stream" only), so the host may reuse or read the buffer.
qk_status finish_if_null(qk_stream stream, cudaStream_t s, const char* function) {
  if (!stream) QK_CUDA(function, cudaStreamSynchronize, s);
  return QK_OK;
}

}  // namespace

namespace detail {
qk_status require_device(int index, const char* function) {
  const Probe& p = probe();
  if (!p.usable) return qk::fail(QK_ERR_BACKEND_UNAVAILABLE, "%s: CUDA is unavailable: %s", function, p.status);
  if (index < 0 || index >= p.count)
    return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: cuda device index %d out of range (%d device(s))", function, index,
                    p.count);
  int major = 0;
  QK_CUDA(function, cudaDeviceGetAttribute, &major, cudaDevAttrComputeCapabilityMajor, index);
  if (major < kMinMajor)
    return qk::fail(QK_ERR_UNSUPPORTED, "%s: cuda device %d has compute capability %d.x; qkern's kernels need 8.0+",
                    function, index, major);
  return QK_OK;
}
}  // namespace detail

using detail::DeviceGuard;
using detail::stream_of;

bool available() { return probe().usable; }

const char* status() { return probe().status; }

int device_count() { return probe().usable ? probe().count : 0; }

qk_status device_name(int index, char* buf, int64_t len) {
  const char* fn = "qk_device_name";
  if (!buf || len <= 0) return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: buffer is NULL or empty", fn);
  QK_TRY(detail::require_device(index, fn));
  cudaDeviceProp prop;
  QK_CUDA(fn, cudaGetDeviceProperties, &prop, index);
  snprintf(buf, (size_t)len, "%s", prop.name);
  return QK_OK;
}

qk_status device_memory(int index, int64_t* free_bytes, int64_t* total_bytes) {
  const char* fn = "qk_device_memory";
  DeviceGuard guard;
  QK_TRY(guard.set(index, fn));
  size_t f = 0, t = 0;
  QK_CUDA(fn, cudaMemGetInfo, &f, &t);
  *free_bytes = (int64_t)f;
  *total_bytes = (int64_t)t;
  return QK_OK;
}

qk_status malloc(int index, int64_t nbytes, void** out) {
  const char* fn = "qk_malloc";
  *out = nullptr;
  if (nbytes == 0) return QK_OK;
  DeviceGuard guard;
  QK_TRY(guard.set(index, fn));
  QK_CUDA(fn, cudaMalloc, out, (size_t)nbytes);
  return QK_OK;
}

qk_status free(int index, void* ptr) {
  const char* fn = "qk_free";
  if (!ptr) return QK_OK;
  DeviceGuard guard;
  QK_TRY(guard.set(index, fn));
  QK_CUDA(fn, cudaFree, ptr);
  return QK_OK;
}

qk_status memcpy(void* dst, int dst_kind, int dst_index, const void* src, int src_kind, int src_index,
                 int64_t nbytes, qk_stream stream) {
  const char* fn = "qk_memcpy";
  if (nbytes == 0) return QK_OK;
  const bool dst_dev = dst_kind == QK_DEVICE_CUDA, src_dev = src_kind == QK_DEVICE_CUDA;
  if (!dst_dev && !src_dev) {  // host <-> host: no device involved, always synchronous
    std::memmove(dst, src, (size_t)nbytes);
    return QK_OK;
  }
  if (dst_dev) QK_TRY(detail::require_device(dst_index, fn));
  if (src_dev) QK_TRY(detail::require_device(src_index, fn));
  // The copy is enqueued on the stream, so the stream's device is current while enqueuing.
  DeviceGuard guard;
  QK_TRY(guard.set(stream ? stream->device_index : (dst_dev ? dst_index : src_index), fn));
  const cudaStream_t s = stream_of(stream);
  if (dst_dev && src_dev && dst_index != src_index) {
    QK_CUDA(fn, cudaMemcpyPeerAsync, dst, dst_index, src, src_index, (size_t)nbytes, s);
  } else {
    const cudaMemcpyKind kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                        : cudaMemcpyDeviceToHost;
    QK_CUDA(fn, cudaMemcpyAsync, dst, src, (size_t)nbytes, kind, s);
  }
  return finish_if_null(stream, s, fn);
}

qk_status memset(void* dst, int index, int value, int64_t nbytes, qk_stream stream) {
  const char* fn = "qk_memset";
  if (nbytes == 0) return QK_OK;
  DeviceGuard guard;
  QK_TRY(guard.set(index, fn));
  const cudaStream_t s = stream_of(stream);
  QK_CUDA(fn, cudaMemsetAsync, dst, value & 0xff, (size_t)nbytes, s);
  return finish_if_null(stream, s, fn);
}

// Non-blocking: work on a qkern stream does not implicitly wait for (or hold up) work on the
// legacy default stream; order it with events or synchronize explicitly.
qk_status stream_create(int index, void** native_out) {
  const char* fn = "qk_stream_create";
  DeviceGuard guard;
  QK_TRY(guard.set(index, fn));
  cudaStream_t s = nullptr;
  QK_CUDA(fn, cudaStreamCreateWithFlags, &s, cudaStreamNonBlocking);
  *native_out = s;
  return QK_OK;
}

qk_status stream_destroy(qk_stream stream) {
  const char* fn = "qk_stream_destroy";
  if (!stream || !stream->native) return QK_OK;
  DeviceGuard guard;
  QK_TRY(guard.set(stream->device_index, fn));
  QK_CUDA(fn, cudaStreamDestroy, static_cast<cudaStream_t>(stream->native));  // pending work still completes
  stream->native = nullptr;
  return QK_OK;
}

qk_status stream_synchronize(qk_stream stream) {
  const char* fn = "qk_stream_synchronize";
  if (!stream) return QK_OK;  // the ABI layer does not route a NULL stream here
  DeviceGuard guard;
  QK_TRY(guard.set(stream->device_index, fn));
  QK_CUDA(fn, cudaStreamSynchronize, stream_of(stream));
  return QK_OK;
}

qk_status device_synchronize(int index) {
  const char* fn = "qk_device_synchronize";
  DeviceGuard guard;
  QK_TRY(guard.set(index, fn));
  QK_CUDA(fn, cudaDeviceSynchronize);
  return QK_OK;
}

qk_status event_create(int index, void** native_out) {
  const char* fn = "qk_event_create";
  DeviceGuard guard;
  QK_TRY(guard.set(index, fn));
  cudaEvent_t e = nullptr;
  QK_CUDA(fn, cudaEventCreateWithFlags, &e, cudaEventDefault);  // timing enabled
  *native_out = e;
  return QK_OK;
}

qk_status event_destroy(qk_event event) {
  const char* fn = "qk_event_destroy";
  if (!event || !event->native) return QK_OK;
  DeviceGuard guard;
  QK_TRY(guard.set(event->device_index, fn));
  QK_CUDA(fn, cudaEventDestroy, static_cast<cudaEvent_t>(event->native));
  event->native = nullptr;
  return QK_OK;
}

qk_status event_record(qk_event event, qk_stream stream) {
  const char* fn = "qk_event_record";
  DeviceGuard guard;
  QK_TRY(guard.set(event->device_index, fn));  // NULL stream: this device's legacy default stream
  QK_CUDA(fn, cudaEventRecord, static_cast<cudaEvent_t>(event->native), stream_of(stream));
  return QK_OK;
}

qk_status event_synchronize(qk_event event) {
  const char* fn = "qk_event_synchronize";
  DeviceGuard guard;
  QK_TRY(guard.set(event->device_index, fn));
  QK_CUDA(fn, cudaEventSynchronize, static_cast<cudaEvent_t>(event->native));
  return QK_OK;
}

qk_status event_elapsed_ms(qk_event start, qk_event end, float* ms_out) {
  const char* fn = "qk_event_elapsed_ms";
  DeviceGuard guard;
  QK_TRY(guard.set(start->device_index, fn));
  QK_CUDA(fn, cudaEventElapsedTime, ms_out, static_cast<cudaEvent_t>(start->native),
          static_cast<cudaEvent_t>(end->native));
  return QK_OK;
}

// cudaEventQuery reports "not yet" as cudaErrorNotReady, which is not an error here; it is not
// sticky, but clear it anyway so a later cudaGetLastError does not see it.
qk_status event_query(qk_event event, int32_t* complete_out) {
  const char* fn = "qk_event_query";
  DeviceGuard guard;
  QK_TRY(guard.set(event->device_index, fn));
  cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event->native));
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    *complete_out = 0;
    return QK_OK;
  }
  if (e != cudaSuccess) return detail::error(e, fn, "cudaEventQuery");
  *complete_out = 1;
  return QK_OK;
}

}  // namespace qk::cuda
