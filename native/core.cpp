// Errors, version, and qk_tensor descriptor checks.
#include <stdarg.h>
#include <stdio.h>

#include <string>

#include "internal.h"

#ifndef QKERN_VERSION
#define QKERN_VERSION "0.0.0-dev"
#endif

namespace qk {
namespace {
thread_local std::string t_last_error;
}

qk_status fail(qk_status status, const char* fmt, ...) {
  char buf[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(buf, sizeof buf, fmt, args);
  va_end(args);
  t_last_error.assign(buf);
  return status;
}

void clear_error() { t_last_error.clear(); }

int64_t dtype_size(int32_t dtype) {
  switch (dtype) {
    case QK_F32: case QK_I32: return 4;
    case QK_F16: case QK_BF16: case QK_I16: return 2;
    case QK_F64: case QK_I64: return 8;
    case QK_U8: case QK_I8: case QK_BOOL: return 1;
    default: return 0;
  }
}

const char* dtype_name(int32_t dtype) {
  switch (dtype) {
    case QK_F32: return "F32";
    case QK_F16: return "F16";
    case QK_BF16: return "BF16";
    case QK_F64: return "F64";
    case QK_U8: return "U8";
    case QK_I8: return "I8";
    case QK_I16: return "I16";
    case QK_I32: return "I32";
    case QK_I64: return "I64";
    case QK_BOOL: return "BOOL";
    default: return "unknown";
  }
}

int64_t numel(const qk_tensor* t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

qk_status check_device(int32_t kind, int32_t index, const char* function) {
  if (kind == QK_DEVICE_CPU) {
    if (index != 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: cpu device index must be 0, got %d", function, index);
    return QK_OK;
  }
  if (kind == QK_DEVICE_CUDA) {
    if (!cuda::available())
      return fail(QK_ERR_BACKEND_UNAVAILABLE, "%s: CUDA is unavailable: %s", function, cuda::status());
    int count = cuda::device_count();
    if (index < 0 || index >= count)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: cuda device index %d out of range (%d device(s))", function,
                  index, count);
    return QK_OK;
  }
  return fail(QK_ERR_INVALID_ARGUMENT, "%s: unknown device kind %d", function, kind);
}

qk_status check_tensor(const qk_tensor* t, const char* function, const char* what) {
  if (!t) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s is NULL", function, what);
  int64_t esize = dtype_size(t->dtype);
  if (esize == 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has unknown dtype code %d", function, what, t->dtype);
  QK_TRY(check_device(t->device_kind, t->device_index, function));
  if (t->ndim < 0 || t->ndim > QK_MAX_DIMS)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has ndim %d (allowed 0..%d)", function, what, t->ndim, QK_MAX_DIMS);
  if (t->nbytes < 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has negative nbytes %lld", function, what, (long long)t->nbytes);
  int64_t n = 1, last = 0;  // last = largest element offset
  for (int i = 0; i < t->ndim; i++) {
    int64_t s = t->shape[i], st = t->strides[i];
    if (s < 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has negative size %lld in dim %d", function, what, (long long)s, i);
    if (st < 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has negative stride %lld in dim %d", function, what, (long long)st, i);
    if (__builtin_mul_overflow(n, s, &n))
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s element count overflows 64 bits", function, what);
    if (s > 0) {
      int64_t span;
      if (__builtin_mul_overflow(s - 1, st, &span) || __builtin_add_overflow(last, span, &last))
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s extent overflows 64 bits", function, what);
    }
  }
  if (n == 0) return QK_OK;
  int64_t end;
  if (__builtin_mul_overflow(last + 1, esize, &end))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s byte extent overflows 64 bits", function, what);
  if (end > t->nbytes)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s needs %lld bytes but its buffer holds %lld", function, what,
                (long long)end, (long long)t->nbytes);
  if (!t->data) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has a NULL data pointer", function, what);
  return QK_OK;
}

qk_status check_contiguous(const qk_tensor* t, const char* function, const char* what) {
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->strides[i] != expect)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be contiguous (row-major), dim %d has stride %lld, expected %lld",
                  function, what, i, (long long)t->strides[i], (long long)expect);
    expect *= t->shape[i];
  }
  return QK_OK;
}

qk_status check_dtype(const qk_tensor* t, const char* function, const char* what,
                      std::initializer_list<int32_t> allowed) {
  for (int32_t d : allowed)
    if (t->dtype == d) return QK_OK;
  std::string list;
  for (int32_t d : allowed) {
    if (!list.empty()) list += ", ";
    list += dtype_name(d);
  }
  return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has dtype %s, expected %s", function, what, dtype_name(t->dtype),
              list.c_str());
}

qk_status check_numel(const qk_tensor* t, const char* function, const char* what, int64_t expected) {
  int64_t n = numel(t);
  if (n != expected)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has %lld elements, expected %lld", function, what, (long long)n,
                (long long)expected);
  return QK_OK;
}

qk_status check_flat(const qk_tensor* t, const char* function, const char* what,
                     std::initializer_list<int32_t> dtypes, int64_t count) {
  QK_TRY(check_tensor(t, function, what));
  QK_TRY(check_dtype(t, function, what, dtypes));
  QK_TRY(check_contiguous(t, function, what));
  if (count >= 0) QK_TRY(check_numel(t, function, what, count));
  return QK_OK;
}

qk_status check_same_device(const qk_tensor* a, const qk_tensor* b, const char* function, const char* what_a,
                            const char* what_b) {
  if (a->device_kind != b->device_kind || a->device_index != b->device_index)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s is on %s:%d but %s is on %s:%d", function, what_a,
                a->device_kind == QK_DEVICE_CUDA ? "cuda" : "cpu", a->device_index, what_b,
                b->device_kind == QK_DEVICE_CUDA ? "cuda" : "cpu", b->device_index);
  return QK_OK;
}

qk_status check_no_overlap(const qk_tensor* a, const qk_tensor* b, const char* function, const char* what_a,
                           const char* what_b) {
  if (numel(a) == 0 || numel(b) == 0) return QK_OK;
  uintptr_t a0 = (uintptr_t)a->data, b0 = (uintptr_t)b->data;
  uintptr_t a1 = a0 + (uintptr_t)a->nbytes, b1 = b0 + (uintptr_t)b->nbytes;
  if (a0 < b1 && b0 < a1)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s and %s overlap in memory", function, what_a, what_b);
  return QK_OK;
}

qk_status check_stream(qk_stream stream, const qk_tensor* t, const char* function) {
  if (!stream) return QK_OK;
  if (stream->device_kind != t->device_kind || stream->device_index != t->device_index)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: stream belongs to %s:%d but the tensors are on %s:%d", function,
                stream->device_kind == QK_DEVICE_CUDA ? "cuda" : "cpu", stream->device_index,
                t->device_kind == QK_DEVICE_CUDA ? "cuda" : "cpu", t->device_index);
  return QK_OK;
}

}  // namespace qk

extern "C" {

QK_API int32_t qk_abi_version(void) { return QK_ABI_VERSION; }

QK_API const char* qk_version_string(void) { return QKERN_VERSION; }

QK_API const char* qk_last_error(void) { return qk::t_last_error.c_str(); }

QK_API void qk_clear_error(void) { qk::clear_error(); }

QK_API const char* qk_status_name(qk_status status) {
  switch (status) {
    case QK_OK: return "QK_OK";
    case QK_ERR_INVALID_ARGUMENT: return "QK_ERR_INVALID_ARGUMENT";
    case QK_ERR_UNSUPPORTED: return "QK_ERR_UNSUPPORTED";
    case QK_ERR_OUT_OF_MEMORY: return "QK_ERR_OUT_OF_MEMORY";
    case QK_ERR_BACKEND_UNAVAILABLE: return "QK_ERR_BACKEND_UNAVAILABLE";
    case QK_ERR_DEVICE: return "QK_ERR_DEVICE";
    case QK_ERR_NON_FINITE: return "QK_ERR_NON_FINITE";
    case QK_ERR_INTERNAL: return "QK_ERR_INTERNAL";
    default: return "QK_ERR_UNKNOWN";
  }
}

}  // extern "C"
