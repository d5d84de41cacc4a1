// DLPack exchange (include/qkern_dlpack.h): exports with a C deleter and a reference-counted
// owner, and imports checked field by field before any qkern kernel sees the memory.
#include "qkern_dlpack.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <atomic>
#include <new>

#include "internal.h"

struct qk_dlpack_owner_s {
  std::atomic<int64_t> references;    // the producer's (until qk_dlpack_owner_release) + live exports
  std::atomic<int64_t> live_exports;
  qk_dlpack_release_fn release;
  void* context;
};

namespace {

using namespace qk;

void drop_reference(qk_dlpack_owner owner) {
  if (owner->references.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    if (owner->release) owner->release(owner->context);
    delete owner;
  }
}

// One allocation per export: the managed tensor first, so the deleter's argument is the block.
struct ExportBlock {
  DLManagedTensorVersioned managed;
  int64_t shape[QK_MAX_DIMS];
  int64_t strides[QK_MAX_DIMS];
  qk_dlpack_owner owner;
};

void export_deleter(DLManagedTensorVersioned* self) {
  if (!self) return;
  ExportBlock* block = static_cast<ExportBlock*>(self->manager_ctx);
  qk_dlpack_owner owner = block->owner;
  delete block;
  if (owner) {
    owner->live_exports.fetch_sub(1, std::memory_order_acq_rel);
    drop_reference(owner);
  }
}

bool to_dlpack_dtype(int32_t dtype, DLDataType* out) {
  out->lanes = 1;
  switch (dtype) {
    case QK_F32: out->code = kDLFloat; out->bits = 32; return true;
    case QK_F16: out->code = kDLFloat; out->bits = 16; return true;
    case QK_BF16: out->code = kDLBfloat; out->bits = 16; return true;
    case QK_F64: out->code = kDLFloat; out->bits = 64; return true;
    case QK_U8: out->code = kDLUInt; out->bits = 8; return true;
    case QK_I8: out->code = kDLInt; out->bits = 8; return true;
    case QK_I16: out->code = kDLInt; out->bits = 16; return true;
    case QK_I32: out->code = kDLInt; out->bits = 32; return true;
    case QK_I64: out->code = kDLInt; out->bits = 64; return true;
    case QK_BOOL: out->code = kDLBool; out->bits = 8; return true;
    default: return false;
  }
}

int32_t from_dlpack_dtype(DLDataType t) {
  if (t.lanes != 1) return -1;
  switch (t.code) {
    case kDLFloat: return t.bits == 32 ? QK_F32 : t.bits == 16 ? QK_F16 : t.bits == 64 ? QK_F64 : -1;
    case kDLBfloat: return t.bits == 16 ? QK_BF16 : -1;
    case kDLUInt: return t.bits == 8 ? QK_U8 : -1;
    case kDLInt:
      return t.bits == 8 ? QK_I8 : t.bits == 16 ? QK_I16 : t.bits == 32 ? QK_I32 : t.bits == 64 ? QK_I64 : -1;
    case kDLBool: return t.bits == 8 ? QK_BOOL : -1;
    default: return -1;
  }
}

const char* device_type_name(int32_t type) {
  switch (type) {
    case kDLCPU: return "kDLCPU";
    case kDLCUDA: return "kDLCUDA";
    case kDLCUDAHost: return "kDLCUDAHost";
    case kDLOpenCL: return "kDLOpenCL";
    case kDLVulkan: return "kDLVulkan";
    case kDLMetal: return "kDLMetal";
    case kDLVPI: return "kDLVPI";
    case kDLROCM: return "kDLROCM";
    case kDLROCMHost: return "kDLROCMHost";
    case kDLExtDev: return "kDLExtDev";
    case kDLCUDAManaged: return "kDLCUDAManaged";
    case kDLOneAPI: return "kDLOneAPI";
    case kDLWebGPU: return "kDLWebGPU";
    case kDLHexagon: return "kDLHexagon";
    case kDLMAIA: return "kDLMAIA";
    default: return "an unknown device type";
  }
}

// The checks of qk_dlpack_import, apart so that every refusal goes through one deleter call.
qk_status describe_import(const DLManagedTensorVersioned* m, uint32_t flags, qk_tensor* out, const char* fn) {
  if (m->version.major != 1)
    return fail(QK_ERR_UNSUPPORTED, "%s: DLPack version %u.%u is not supported (qkern reads major version 1)", fn,
                m->version.major, m->version.minor);
  if (flags & ~(QK_DLPACK_IMPORT_WRITABLE | QK_DLPACK_IMPORT_CONTIGUOUS))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: unknown import flags 0x%x", fn, flags);
  const DLTensor& t = m->dl_tensor;
  if ((flags & QK_DLPACK_IMPORT_WRITABLE) && (m->flags & DLPACK_FLAG_BITMASK_READ_ONLY))
    return fail(QK_ERR_UNSUPPORTED,
                "%s: the tensor is read-only (DLPACK_FLAG_BITMASK_READ_ONLY) but a writable tensor was asked for", fn);
  int32_t dtype = from_dlpack_dtype(t.dtype);
  if (dtype < 0)
    return fail(QK_ERR_UNSUPPORTED,
                "%s: DLPack dtype (code %u, bits %u, lanes %u) has no qkern equivalent (supported: float16/32/64, "
                "bfloat16, uint8, int8/16/32/64, bool, one lane)",
                fn, t.dtype.code, t.dtype.bits, t.dtype.lanes);
  int32_t kind, index;
  switch ((int32_t)t.device.device_type) {
    case kDLCPU:
    case kDLCUDAHost: kind = QK_DEVICE_CPU; index = 0; break;
    case kDLCUDA:
    case kDLCUDAManaged: kind = QK_DEVICE_CUDA; index = t.device.device_id; break;
    default:
      return fail(QK_ERR_UNSUPPORTED, "%s: device type %d (%s) is not supported (qkern takes CPU and CUDA memory)",
                  fn, (int)t.device.device_type, device_type_name(t.device.device_type));
  }
  if (kind == QK_DEVICE_CUDA && !cuda::available())
    return fail(QK_ERR_UNSUPPORTED, "%s: the tensor is on cuda:%d but CUDA is unavailable here: %s", fn,
                index, cuda::status());
  if (t.ndim < 0 || t.ndim > QK_MAX_DIMS)
    return fail(t.ndim < 0 ? QK_ERR_INVALID_ARGUMENT : QK_ERR_UNSUPPORTED, "%s: ndim %d (qkern takes 0..%d)", fn,
                t.ndim, QK_MAX_DIMS);
  if (t.ndim > 0 && !t.shape) return fail(QK_ERR_INVALID_ARGUMENT, "%s: ndim is %d but shape is NULL", fn, t.ndim);

  int64_t esize = dtype_size(dtype);
  out->dtype = dtype;
  out->device_kind = kind;
  out->device_index = index;
  out->ndim = t.ndim;
  int64_t compact = 1;
  for (int d = t.ndim - 1; d >= 0; d--) {
    int64_t size = t.shape[d];
    if (size < 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: shape[%d] is negative (%lld)", fn, d, (long long)size);
    int64_t stride = t.strides ? t.strides[d] : compact;
    if (stride < 0)
      return fail(QK_ERR_UNSUPPORTED, "%s: strides[%d] is negative (%lld elements); qkern needs non-negative strides",
                  fn, d, (long long)stride);
    out->shape[d] = size;
    out->strides[d] = stride;
    if (__builtin_mul_overflow(compact, size, &compact))
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: the element count overflows 64 bits", fn);
  }
  if ((flags & QK_DLPACK_IMPORT_CONTIGUOUS) && t.strides) {
    int64_t expect = 1;
    for (int d = t.ndim - 1; d >= 0; d--) {
      if (out->shape[d] != 1 && out->strides[d] != expect)
        return fail(QK_ERR_UNSUPPORTED,
                    "%s: the tensor is not compact row-major (strides[%d] is %lld elements, expected %lld) and a "
                    "contiguous tensor was asked for",
                    fn, d, (long long)out->strides[d], (long long)expect);
      expect *= out->shape[d];
    }
  }
  // nbytes: from element 0 to one past the element farthest from it.
  int64_t last = 0, span = 0;
  bool empty = compact == 0;
  for (int d = 0; d < t.ndim && !empty; d++) {
    int64_t reach;
    if (__builtin_mul_overflow(out->shape[d] - 1, out->strides[d], &reach) || __builtin_add_overflow(last, reach, &last))
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: the strided extent overflows 64 bits", fn);
  }
  if (!empty && __builtin_mul_overflow(last + 1, esize, &span))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: the byte extent overflows 64 bits", fn);
  if (t.byte_offset > (uint64_t)INT64_MAX)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: byte_offset %llu is too large", fn, (unsigned long long)t.byte_offset);
  uintptr_t address = (uintptr_t)t.data + (uintptr_t)t.byte_offset;
  if (!empty && !t.data) return fail(QK_ERR_INVALID_ARGUMENT, "%s: data is NULL for a tensor with elements", fn);
  if (address % (uintptr_t)esize != 0)
    return fail(QK_ERR_UNSUPPORTED, "%s: data + byte_offset (0x%llx) is not aligned to the %lld-byte element size",
                fn, (unsigned long long)address, (long long)esize);
  out->data = t.data ? (void*)address : nullptr;
  out->nbytes = span;
  return check_tensor(out, fn, "the imported tensor");
}

}  // namespace

extern "C" {

QK_API qk_status qk_dlpack_owner_create(qk_dlpack_release_fn release, void* context, qk_dlpack_owner* out) {
  const char* fn = "qk_dlpack_owner_create";
  return guard(fn, [&]() -> qk_status {
    if (!out) return fail(QK_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = nullptr;
    qk_dlpack_owner owner = new qk_dlpack_owner_s;
    owner->references.store(1);
    owner->live_exports.store(0);
    owner->release = release;
    owner->context = context;
    *out = owner;
    return QK_OK;
  });
}

QK_API int64_t qk_dlpack_owner_live_exports(qk_dlpack_owner owner) {
  return owner ? owner->live_exports.load(std::memory_order_acquire) : 0;
}

QK_API void qk_dlpack_owner_release(qk_dlpack_owner owner) {
  if (owner) drop_reference(owner);
}

QK_API qk_status qk_dlpack_export(const qk_tensor* t, uint64_t flags, qk_dlpack_owner owner,
                                  DLManagedTensorVersioned** out) {
  const char* fn = "qk_dlpack_export";
  return guard(fn, [&]() -> qk_status {
    if (!out) return fail(QK_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = nullptr;
    QK_TRY(check_tensor(t, fn, "t"));
    if (flags & ~DLPACK_FLAG_BITMASK_READ_ONLY)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: flags 0x%llx: only DLPACK_FLAG_BITMASK_READ_ONLY may be set", fn,
                  (unsigned long long)flags);
    ExportBlock* block = new ExportBlock();
    DLManagedTensorVersioned& m = block->managed;
    m.version.major = 1;
    m.version.minor = 0;
    m.manager_ctx = block;
    m.deleter = export_deleter;
    m.flags = flags;
    DLTensor& d = m.dl_tensor;
    d.data = t->data;
    d.device.device_type = t->device_kind == QK_DEVICE_CUDA ? kDLCUDA : kDLCPU;
    d.device.device_id = t->device_index;
    d.ndim = t->ndim;
    to_dlpack_dtype(t->dtype, &d.dtype);  // check_tensor accepted the dtype, so it maps
    for (int i = 0; i < t->ndim; i++) {
      block->shape[i] = t->shape[i];
      block->strides[i] = t->strides[i];
    }
    d.shape = block->shape;
    d.strides = block->strides;
    d.byte_offset = 0;
    block->owner = owner;
    if (owner) {
      owner->references.fetch_add(1, std::memory_order_relaxed);
      owner->live_exports.fetch_add(1, std::memory_order_relaxed);
    }
    *out = &m;
    return QK_OK;
  });
}

QK_API qk_status qk_dlpack_import(DLManagedTensorVersioned* managed, uint32_t flags, qk_tensor* out,
                                  int32_t* read_only_out) {
  const char* fn = "qk_dlpack_import";
  return guard(fn, [&]() -> qk_status {
    if (read_only_out) *read_only_out = 0;
    if (out) memset(out, 0, sizeof *out);
    if (!managed) return fail(QK_ERR_INVALID_ARGUMENT, "%s: managed is NULL", fn);
    if (!out) {
      qk_dlpack_release(managed);
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: out is NULL (the tensor was handed back to its deleter)", fn);
    }
    qk_status st = describe_import(managed, flags, out, fn);
    if (st != QK_OK) {
      memset(out, 0, sizeof *out);
      // The producer's deleter may call qkern itself (and so clear the error): keep the reason.
      char reason[1024];
      snprintf(reason, sizeof reason, "%s", qk_last_error());
      qk_dlpack_release(managed);
      return fail(st, "%s", reason);
    }
    if (read_only_out) *read_only_out = (managed->flags & DLPACK_FLAG_BITMASK_READ_ONLY) ? 1 : 0;
    return QK_OK;
  });
}

QK_API void qk_dlpack_release(DLManagedTensorVersioned* managed) {
  if (managed && managed->deleter) managed->deleter(managed);
}

QK_API void qk_dlpack_free_host(void* context) { qk_free(QK_DEVICE_CPU, 0, context); }

QK_API void qk_dlpack_capsule_destructor(void* capsule) {
  using IsValid = int (*)(void*, const char*);
  using GetPointer = void* (*)(void*, const char*);
  // Looked up per call (cheap next to a tensor's life) so a runtime loaded later is still found.
  IsValid is_valid = reinterpret_cast<IsValid>(dlsym(RTLD_DEFAULT, "PyCapsule_IsValid"));
  GetPointer get_pointer = reinterpret_cast<GetPointer>(dlsym(RTLD_DEFAULT, "PyCapsule_GetPointer"));
  if (!capsule || !is_valid || !get_pointer) return;
  static const char kName[] = "dltensor_versioned";
  if (is_valid(capsule, kName)) qk_dlpack_release(static_cast<DLManagedTensorVersioned*>(get_pointer(capsule, kName)));
}

}  // extern "C"
