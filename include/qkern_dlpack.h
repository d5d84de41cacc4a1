/*
 * qkern — DLPack exchange: hand a qkern tensor to another stack (NumPy, PyTorch, CuPy, JAX, ...)
 * or take one from it, without copying.
 *
 * The DLPack 1.x exchange types are declared below, written from the DLPack specification
 * (https://dmlc.github.io/dlpack/latest/) with the spec's names and layout, so these structs are
 * the ones any DLPack 1.x producer or consumer passes. If you also use the project's own
 * <dlpack/dlpack.h>, include it BEFORE this header: its definitions are then used as they are.
 *
 * Ownership, in one paragraph: an exported DLManagedTensorVersioned belongs to the consumer,
 * which calls its `deleter` exactly once when done. qkern's deleter is plain C (no callback into
 * Java or Python is needed to free it): it frees the export and drops one reference on the
 * qk_dlpack_owner the export was made with; the owner's release function runs when the
 * producer has let go of the owner and every export made with it has been deleted.
 * An imported tensor stays owned by its producer: the caller of qk_dlpack_import calls
 * qk_dlpack_release (which calls the producer's deleter) when it no longer uses the memory.
 */
#ifndef QKERN_DLPACK_H
#define QKERN_DLPACK_H

#include "qkern.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the DLPack 1.x exchange types (skipped when <dlpack/dlpack.h> came first) ------------- */
#ifndef DLPACK_DLPACK_H_
#define QKERN_DLPACK_DECLARES_DLPACK_TYPES 1

#define DLPACK_MAJOR_VERSION 1
#define DLPACK_MINOR_VERSION 1

/* The ABI version a DLManagedTensorVersioned carries. A consumer refuses another major. */
typedef struct {
  uint32_t major;
  uint32_t minor;
} DLPackVersion;

/* Where the memory lives. Values are fixed by the specification (only those qkern names). */
typedef enum {
  kDLCPU = 1,          /* plain host memory */
  kDLCUDA = 2,         /* CUDA device memory */
  kDLCUDAHost = 3,     /* page-locked host memory from cudaMallocHost (host addressable) */
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13, /* cudaMallocManaged memory */
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16,
  kDLMAIA = 17
} DLDeviceType;

typedef struct {
  DLDeviceType device_type;
  int32_t device_id;   /* the CUDA device ordinal; 0 for the CPU */
} DLDevice;

/* Element kinds; with `bits` and `lanes` they make a DLDataType. */
typedef enum {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLOpaqueHandle = 3,
  kDLBfloat = 4,
  kDLComplex = 5,
  kDLBool = 6
} DLDataTypeCode;

typedef struct {
  uint8_t code;    /* DLDataTypeCode */
  uint8_t bits;    /* bits per lane: 8, 16, 32, 64 */
  uint16_t lanes;  /* 1 for scalars (qkern exchanges scalars only) */
} DLDataType;

/* A strided view: element i lies at (char*)data + byte_offset + sum_d(i_d * strides[d]) * elem_bytes. */
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;       /* ndim sizes */
  int64_t* strides;     /* ndim strides IN ELEMENTS, or NULL for compact row-major */
  uint64_t byte_offset; /* added to data before indexing */
} DLTensor;

/* The consumer must not write through a tensor with this flag. */
#define DLPACK_FLAG_BITMASK_READ_ONLY (1ULL << 0)
/* The producer made a copy that the consumer owns alone. */
#define DLPACK_FLAG_BITMASK_IS_COPIED (1ULL << 1)
/* Sub-byte element types are stored one per byte instead of packed (DLPack 1.1). */
#define DLPACK_FLAG_BITMASK_IS_SUBBYTE_TYPE_PADDED (1ULL << 2)

/* The managed, versioned tensor that crosses between stacks (DLPack >= 1.0). */
typedef struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;  /* the producer's bookkeeping */
  /* Frees the export (and `self`); called once by the consumer. May be NULL. */
  void (*deleter)(struct DLManagedTensorVersioned* self);
  uint64_t flags;     /* DLPACK_FLAG_BITMASK_* */
  DLTensor dl_tensor;
} DLManagedTensorVersioned;
#endif /* DLPACK_DLPACK_H_ */

/* ---- qkern's side ------------------------------------------------------------------------ */
/*
 * dtype mapping (both directions; lanes must be 1):
 *   F32 <-> (kDLFloat, 32)   F16 <-> (kDLFloat, 16)   BF16 <-> (kDLBfloat, 16)  F64 <-> (kDLFloat, 64)
 *   U8  <-> (kDLUInt, 8)     I8  <-> (kDLInt, 8)      I16 <-> (kDLInt, 16)      I32 <-> (kDLInt, 32)
 *   I64 <-> (kDLInt, 64)     BOOL <-> (kDLBool, 8)
 * Devices: QK_DEVICE_CPU <-> kDLCPU (kDLCUDAHost imports as CPU memory: it is host addressable);
 *          QK_DEVICE_CUDA n <-> (kDLCUDA, n) (kDLCUDAManaged imports as CUDA device n).
 * Quantized formats travel as their parts: an NF4 tensor is its packed codes (U8) plus its scale
 * tensors (absmax F32, or the double-quantization codes U8, nested absmax F32 and code map F32);
 * the shape, block size and dtype travel beside them (bitsandbytes' quant-state JSON).
 */

/** Reference-counted keeper of memory that has been exported (see the ownership paragraph). */
typedef struct qk_dlpack_owner_s* qk_dlpack_owner;
typedef void (*qk_dlpack_release_fn)(void* context);

/**
 * A new owner holding the producer's reference. `release` (may be NULL) runs once, with
 * `context`, on whichever thread drops the last reference: the producer's qk_dlpack_owner_release
 * or a consumer's deleter.
 */
QK_API qk_status qk_dlpack_owner_create(qk_dlpack_release_fn release, void* context, qk_dlpack_owner* out);
/** Exports made with `owner` whose deleter has not run yet (0 for NULL). */
QK_API int64_t qk_dlpack_owner_live_exports(qk_dlpack_owner owner);
/** Drops the producer's reference (once per owner). NULL is ignored. */
QK_API void qk_dlpack_owner_release(qk_dlpack_owner owner);

/**
 * Exports `t` (any qkern dtype, strides as given) as a DLPack 1.0 managed tensor whose data
 * pointer is t->data (byte_offset 0). flags: 0 or DLPACK_FLAG_BITMASK_READ_ONLY. The export takes
 * a reference on `owner` until its deleter runs; with owner NULL the caller guarantees the memory
 * outlives every consumer. On failure *out is NULL and nothing is taken.
 */
QK_API qk_status qk_dlpack_export(const qk_tensor* t, uint64_t flags, qk_dlpack_owner owner,
                                  DLManagedTensorVersioned** out);

/* qk_dlpack_import flags */
#define QK_DLPACK_IMPORT_WRITABLE 1u   /* refuse a read-only tensor: the caller will write to it */
#define QK_DLPACK_IMPORT_CONTIGUOUS 2u /* refuse anything but compact row-major strides */

/**
 * Describes a producer's tensor as a qk_tensor, without copying. Checks: version major == 1,
 * device (CPU, CUDA host, or a CUDA device this library can use), dtype (see the mapping; lanes 1),
 * ndim <= QK_MAX_DIMS, non-negative shape and strides (strides are in elements; NULL means compact
 * row-major), data + byte_offset aligned to the element size and non-NULL when there are elements,
 * the read-only flag against QK_DLPACK_IMPORT_WRITABLE, and QK_DLPACK_IMPORT_CONTIGUOUS.
 * On success *out describes the memory (data = data + byte_offset; nbytes = the bytes the strided
 * view spans) and the caller calls qk_dlpack_release(managed) when it is done with it;
 * *read_only_out (may be NULL) says whether the producer marked it read-only.
 * On failure the producer's deleter HAS BEEN CALLED (the tensor is refused and returned), *out
 * is zeroed, and qk_last_error() says why: QK_ERR_UNSUPPORTED for a valid DLPack tensor qkern
 * cannot take (version, device, dtype, negative strides, a read-only tensor to be written),
 * QK_ERR_INVALID_ARGUMENT for a malformed one.
 */
QK_API qk_status qk_dlpack_import(DLManagedTensorVersioned* managed, uint32_t flags, qk_tensor* out,
                                  int32_t* read_only_out);

/** Calls managed->deleter(managed) if both are non-NULL: ends a consumer's use of a tensor. */
QK_API void qk_dlpack_release(DLManagedTensorVersioned* managed);

/** A qk_dlpack_release_fn that frees host memory from qk_malloc: qk_free(QK_DEVICE_CPU, 0, context). */
QK_API void qk_dlpack_free_host(void* context);

/**
 * For Python bindings (ctypes, cffi): a PyCapsule destructor for capsules named
 * "dltensor_versioned" that hold a DLManagedTensorVersioned*. When no consumer took the capsule
 * (it still has that name) it calls the tensor's deleter; a consumed capsule is left alone.
 * Python calls a capsule destructor with an exception possibly pending (a consumer that refused
 * the tensor), when Python code cannot run, so the destructor has to be C: this one finds
 * PyCapsule_IsValid and PyCapsule_GetPointer in the running process (dlsym), neither of which
 * touches the error state, and does nothing when no Python runtime is loaded. Pass its address
 * to PyCapsule_New.
 */
QK_API void qk_dlpack_capsule_destructor(void* capsule);

#ifdef __cplusplus
}
#endif
#endif /* QKERN_DLPACK_H */
