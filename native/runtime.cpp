// Backends, devices, memory, streams and events: the CPU side here, CUDA via qk::cuda.
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <chrono>
#include <string>
#include <thread>

#include "internal.h"

namespace {

const char* kind_name(int32_t kind) { return kind == QK_DEVICE_CUDA ? "cuda" : "cpu"; }

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const std::string& cpu_status() {
  static const std::string s = std::string("CPU, ") + qk_cpu_path() + " path, " +
                               std::to_string(qk::worker_threads()) + " thread(s); features: " + qk_cpu_features();
  return s;
}

}  // namespace

extern "C" {

QK_API int32_t qk_backend_available(int32_t kind) {
  if (kind == QK_DEVICE_CPU) return 1;
  if (kind == QK_DEVICE_CUDA) return qk::cuda::available() ? 1 : 0;
  return 0;
}

QK_API const char* qk_backend_status(int32_t kind) {
  if (kind == QK_DEVICE_CPU) return cpu_status().c_str();
  if (kind == QK_DEVICE_CUDA) return qk::cuda::status();
  return "unknown device kind";
}

QK_API int32_t qk_device_count(int32_t kind) {
  if (kind == QK_DEVICE_CPU) return 1;
  if (kind == QK_DEVICE_CUDA) return qk::cuda::available() ? qk::cuda::device_count() : 0;
  return 0;
}

QK_API qk_status qk_device_name(int32_t kind, int32_t index, char* buf, int64_t buf_len) {
  return qk::guard("qk_device_name", [&]() -> qk_status {
    if (!buf || buf_len <= 0)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_device_name: buffer is NULL or empty");
    QK_TRY(qk::check_device(kind, index, "qk_device_name"));
    if (kind == QK_DEVICE_CUDA) return qk::cuda::device_name(index, buf, buf_len);
    snprintf(buf, (size_t)buf_len, "cpu (%u hardware threads, %s)", std::thread::hardware_concurrency(),
             qk_cpu_path());
    return QK_OK;
  });
}

QK_API qk_status qk_device_memory(int32_t kind, int32_t index, int64_t* free_bytes, int64_t* total_bytes) {
  return qk::guard("qk_device_memory", [&]() -> qk_status {
    if (!free_bytes || !total_bytes)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_device_memory: output pointer is NULL");
    QK_TRY(qk::check_device(kind, index, "qk_device_memory"));
    if (kind == QK_DEVICE_CUDA) return qk::cuda::device_memory(index, free_bytes, total_bytes);
    return qk::fail(QK_ERR_UNSUPPORTED, "qk_device_memory: not reported for the cpu");
  });
}

namespace {
constexpr size_t kHugePageBytes = 2u << 20;
constexpr uint64_t kHugePageMinBytes = 4u << 20;
}  // namespace

QK_API qk_status qk_malloc(int32_t kind, int32_t index, int64_t nbytes, void** out) {
  return qk::guard("qk_malloc", [&]() -> qk_status {
    if (!out) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_malloc: out is NULL");
    *out = nullptr;
    if (nbytes < 0) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_malloc: negative size %lld", (long long)nbytes);
    QK_TRY(qk::check_device(kind, index, "qk_malloc"));
    if (nbytes == 0) return QK_OK;
    if (kind == QK_DEVICE_CUDA) return qk::cuda::malloc(index, nbytes, out);
    if ((uint64_t)nbytes > (uint64_t)INT64_MAX - 64)
      return qk::fail(QK_ERR_OUT_OF_MEMORY, "qk_malloc: %lld bytes is too large", (long long)nbytes);
    // Large host buffers (KV pools, weights) are read at random block granularity: 2 MiB pages
    // keep those reads from missing the TLB every 4 KiB (paged decode over a shuffled pool ran
    // ~5% behind the same reads in order with 4 KiB pages, level with them with 2 MiB pages).
    // Advised before anything touches the memory, so the pages are huge from the first fault.
    const bool huge = (uint64_t)nbytes >= kHugePageMinBytes;
    const size_t align = huge ? kHugePageBytes : 64;
    size_t rounded = ((size_t)nbytes + align - 1) & ~(align - 1);
    void* p = aligned_alloc(align, rounded);
    if (!p) return qk::fail(QK_ERR_OUT_OF_MEMORY, "qk_malloc: cannot allocate %lld host bytes", (long long)nbytes);
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without THP the memory works the same
#endif
    *out = p;
    return QK_OK;
  });
}

QK_API qk_status qk_free(int32_t kind, int32_t index, void* ptr) {
  return qk::guard("qk_free", [&]() -> qk_status {
    if (!ptr) return QK_OK;
    QK_TRY(qk::check_device(kind, index, "qk_free"));
    if (kind == QK_DEVICE_CUDA) return qk::cuda::free(index, ptr);
    ::free(ptr);
    return QK_OK;
  });
}

QK_API qk_status qk_memcpy(void* dst, int32_t dst_kind, int32_t dst_index, const void* src, int32_t src_kind,
                           int32_t src_index, int64_t nbytes, qk_stream stream) {
  return qk::guard("qk_memcpy", [&]() -> qk_status {
    if (nbytes < 0) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_memcpy: negative size %lld", (long long)nbytes);
    if (nbytes == 0) return QK_OK;
    if (!dst || !src) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_memcpy: %s is NULL", dst ? "src" : "dst");
    QK_TRY(qk::check_device(dst_kind, dst_index, "qk_memcpy"));
    QK_TRY(qk::check_device(src_kind, src_index, "qk_memcpy"));
    if (dst_kind == QK_DEVICE_CPU && src_kind == QK_DEVICE_CPU) {
      memmove(dst, src, (size_t)nbytes);
      return QK_OK;
    }
    if (stream && stream->device_kind != QK_DEVICE_CUDA)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_memcpy: a copy involving a GPU needs a cuda stream or NULL");
    return qk::cuda::memcpy(dst, dst_kind, dst_index, src, src_kind, src_index, nbytes, stream);
  });
}

QK_API qk_status qk_memset(void* dst, int32_t kind, int32_t index, int32_t value, int64_t nbytes,
                           qk_stream stream) {
  return qk::guard("qk_memset", [&]() -> qk_status {
    if (nbytes < 0) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_memset: negative size %lld", (long long)nbytes);
    if (nbytes == 0) return QK_OK;
    if (!dst) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_memset: dst is NULL");
    QK_TRY(qk::check_device(kind, index, "qk_memset"));
    if (kind == QK_DEVICE_CPU) {
      memset(dst, value & 0xff, (size_t)nbytes);
      return QK_OK;
    }
    return qk::cuda::memset(dst, index, value & 0xff, nbytes, stream);
  });
}

QK_API qk_status qk_stream_create(int32_t kind, int32_t index, qk_stream* out) {
  return qk::guard("qk_stream_create", [&]() -> qk_status {
    if (!out) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_stream_create: out is NULL");
    *out = nullptr;
    QK_TRY(qk::check_device(kind, index, "qk_stream_create"));
    auto* s = new qk_stream_s{kind, index, nullptr};
    if (kind == QK_DEVICE_CUDA) {
      qk_status st = qk::cuda::stream_create(index, &s->native);
      if (st != QK_OK) {
        delete s;
        return st;
      }
    }
    *out = s;
    return QK_OK;
  });
}

QK_API qk_status qk_stream_destroy(qk_stream stream) {
  return qk::guard("qk_stream_destroy", [&]() -> qk_status {
    if (!stream) return QK_OK;
    qk_status st = stream->device_kind == QK_DEVICE_CUDA ? qk::cuda::stream_destroy(stream) : QK_OK;
    delete stream;
    return st;
  });
}

QK_API qk_status qk_stream_synchronize(qk_stream stream) {
  return qk::guard("qk_stream_synchronize", [&]() -> qk_status {
    if (!stream || stream->device_kind == QK_DEVICE_CPU) return QK_OK;
    return qk::cuda::stream_synchronize(stream);
  });
}

QK_API qk_status qk_device_synchronize(int32_t kind, int32_t index) {
  return qk::guard("qk_device_synchronize", [&]() -> qk_status {
    QK_TRY(qk::check_device(kind, index, "qk_device_synchronize"));
    return kind == QK_DEVICE_CUDA ? qk::cuda::device_synchronize(index) : QK_OK;
  });
}

QK_API qk_status qk_event_create(int32_t kind, int32_t index, qk_event* out) {
  return qk::guard("qk_event_create", [&]() -> qk_status {
    if (!out) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_create: out is NULL");
    *out = nullptr;
    QK_TRY(qk::check_device(kind, index, "qk_event_create"));
    auto* e = new qk_event_s{kind, index, nullptr, -1.0};
    if (kind == QK_DEVICE_CUDA) {
      qk_status st = qk::cuda::event_create(index, &e->native);
      if (st != QK_OK) {
        delete e;
        return st;
      }
    }
    *out = e;
    return QK_OK;
  });
}

QK_API qk_status qk_event_destroy(qk_event event) {
  return qk::guard("qk_event_destroy", [&]() -> qk_status {
    if (!event) return QK_OK;
    qk_status st = event->device_kind == QK_DEVICE_CUDA ? qk::cuda::event_destroy(event) : QK_OK;
    delete event;
    return st;
  });
}

QK_API qk_status qk_event_record(qk_event event, qk_stream stream) {
  return qk::guard("qk_event_record", [&]() -> qk_status {
    if (!event) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_record: event is NULL");
    if (stream && (stream->device_kind != event->device_kind || stream->device_index != event->device_index))
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_record: event is on %s:%d but stream on %s:%d",
                      kind_name(event->device_kind), event->device_index, kind_name(stream->device_kind),
                      stream->device_index);
    if (event->device_kind == QK_DEVICE_CUDA) return qk::cuda::event_record(event, stream);
    event->cpu_ms = now_ms();
    return QK_OK;
  });
}

QK_API qk_status qk_event_synchronize(qk_event event) {
  return qk::guard("qk_event_synchronize", [&]() -> qk_status {
    if (!event) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_synchronize: event is NULL");
    return event->device_kind == QK_DEVICE_CUDA ? qk::cuda::event_synchronize(event) : QK_OK;
  });
}

QK_API qk_status qk_event_elapsed_ms(qk_event start, qk_event end, float* ms_out) {
  return qk::guard("qk_event_elapsed_ms", [&]() -> qk_status {
    if (!start || !end || !ms_out) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_elapsed_ms: NULL argument");
    if (start->device_kind != end->device_kind || start->device_index != end->device_index)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_elapsed_ms: events are on different devices");
    if (start->device_kind == QK_DEVICE_CUDA) return qk::cuda::event_elapsed_ms(start, end, ms_out);
    if (start->cpu_ms < 0 || end->cpu_ms < 0)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_elapsed_ms: an event was never recorded");
    *ms_out = (float)(end->cpu_ms - start->cpu_ms);
    return QK_OK;
  });
}

QK_API qk_status qk_event_query(qk_event event, int32_t* complete_out) {
  return qk::guard("qk_event_query", [&]() -> qk_status {
    if (!complete_out) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_query: complete_out is NULL");
    *complete_out = 0;
    if (!event) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_event_query: event is NULL");
    if (event->device_kind == QK_DEVICE_CUDA) return qk::cuda::event_query(event, complete_out);
    *complete_out = 1;  // CPU work is synchronous: whatever was recorded has already happened
    return QK_OK;
  });
}

}  // extern "C"
