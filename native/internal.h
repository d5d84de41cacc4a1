// Internal plumbing shared by every ABI implementation file: errors, descriptor checks,
// CPU dispatch and worker threads, and the CUDA backend's entry points.
#pragma once
#include <stdint.h>

#include <functional>
#include <initializer_list>
#include <new>

#include "qkern.h"

struct qk_stream_s {
  int32_t device_kind;
  int32_t device_index;
  void* native;  // cudaStream_t on CUDA, unused on the CPU
};

struct qk_event_s {
  int32_t device_kind;
  int32_t device_index;
  void* native;  // cudaEvent_t on CUDA; on the CPU a steady-clock timestamp holder
  double cpu_ms;
};

namespace qk {

// ---- errors -----------------------------------------------------------------------------
// Records a printf-style message for qk_last_error() and returns `status`.
qk_status fail(qk_status status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void clear_error();

// Every ABI function body runs inside guard(): C++ exceptions never cross the C boundary.
template <class F>
qk_status guard(const char* function, F&& body) noexcept {
  try {
    clear_error();
    return body();
  } catch (const std::bad_alloc&) {
    return fail(QK_ERR_OUT_OF_MEMORY, "%s: out of host memory", function);
  } catch (...) {
    return fail(QK_ERR_INTERNAL, "%s: unexpected C++ exception (a qkern bug)", function);
  }
}

#define QK_TRY(expr)                  \
  do {                                \
    qk_status qk_try_status_ = (expr); \
    if (qk_try_status_ != QK_OK) return qk_try_status_; \
  } while (0)

// ---- tensors ----------------------------------------------------------------------------
int64_t dtype_size(int32_t dtype);  // 0 for an unknown dtype
const char* dtype_name(int32_t dtype);
int64_t numel(const qk_tensor* t);   // of an already checked descriptor

// Checks a descriptor completely: non-null, dtype, device, ndim, non-negative shape and
// strides, element count without overflow, every element inside nbytes, data non-null
// when there are elements. `what` names the argument in messages.
qk_status check_tensor(const qk_tensor* t, const char* function, const char* what);
qk_status check_contiguous(const qk_tensor* t, const char* function, const char* what);
qk_status check_dtype(const qk_tensor* t, const char* function, const char* what,
                      std::initializer_list<int32_t> allowed);
qk_status check_numel(const qk_tensor* t, const char* function, const char* what, int64_t expected);
// The usual argument: a checked, contiguous tensor of one of `dtypes` with exactly `count`
// elements (any count when count < 0).
qk_status check_flat(const qk_tensor* t, const char* function, const char* what,
                     std::initializer_list<int32_t> dtypes, int64_t count = -1);
qk_status check_same_device(const qk_tensor* a, const qk_tensor* b, const char* function,
                            const char* what_a, const char* what_b);
qk_status check_no_overlap(const qk_tensor* a, const qk_tensor* b, const char* function,
                           const char* what_a, const char* what_b);
qk_status check_stream(qk_stream stream, const qk_tensor* t, const char* function);
qk_status check_device(int32_t kind, int32_t index, const char* function);

// ---- CPU dispatch and threads -------------------------------------------------------------
enum class CpuPath { Scalar = 0, Avx2 = 1, Avx512 = 2 };
CpuPath cpu_path();
bool cpu_supports(CpuPath path);

// Runs body(begin, end) over [0, n) split into at most 4 x `threads` contiguous chunks of at
// least `grain` items (n <= threads with grain 1: one item per chunk), claimed one at a time by
// the worker pool and the calling thread; which thread runs a chunk varies from call to call, so
// a body's result must depend only on its range. Nested or concurrent calls from other threads
// run inline rather than wait.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);
int worker_threads();

// ---- CUDA backend (cuda/*.cu when built with nvcc, native/cuda_absent.cpp otherwise) -------
// The ABI layer has checked every argument before calling these.
namespace cuda {
// Builds without nvcc only (native/cuda_absent.cpp): the error every CUDA entry point returns.
qk_status absent(const char* function);

bool available();
const char* status();
int device_count();
qk_status device_name(int index, char* buf, int64_t len);
qk_status device_memory(int index, int64_t* free_bytes, int64_t* total_bytes);
qk_status malloc(int index, int64_t nbytes, void** out);
qk_status free(int index, void* ptr);
qk_status memcpy(void* dst, int dst_kind, int dst_index, const void* src, int src_kind, int src_index,
                 int64_t nbytes, qk_stream stream);
qk_status memset(void* dst, int index, int value, int64_t nbytes, qk_stream stream);
qk_status stream_create(int index, void** native_out);
qk_status stream_destroy(qk_stream stream);
qk_status stream_synchronize(qk_stream stream);
qk_status device_synchronize(int index);
qk_status event_create(int index, void** native_out);
qk_status event_destroy(qk_event event);
qk_status event_record(qk_event event, qk_stream stream);
qk_status event_synchronize(qk_event event);
qk_status event_elapsed_ms(qk_event start, qk_event end, float* ms_out);
qk_status event_query(qk_event event, int32_t* complete_out);

qk_status nf4_quantize(const qk_tensor* x, int64_t blocksize, const qk_tensor* packed,
                       const qk_tensor* absmax, int64_t* nonfinite_index, qk_stream stream);
qk_status nf4_dequantize(const qk_tensor* packed, const qk_tensor* absmax, int64_t blocksize,
                         const qk_tensor* out, qk_stream stream);
qk_status nf4_double_quantize(const qk_tensor* absmax, const qk_tensor* code_map, const qk_tensor* codes,
                              const qk_tensor* nested_absmax, float* offset_out, qk_stream stream);
qk_status nf4_double_dequantize(const qk_tensor* codes, const qk_tensor* nested_absmax,
                                const qk_tensor* code_map, float offset, const qk_tensor* absmax,
                                qk_stream stream);
qk_status probe_read_bandwidth(const qk_tensor* buf, int32_t repetitions, double* gbps_out,
                               char* best_pattern, int64_t best_pattern_len);
}  // namespace cuda

}  // namespace qk
