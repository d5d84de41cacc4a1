/*
 * qkern — the whole C ABI in one header.
 *
 * Conventions
 *  - Every fallible function returns qk_status (0 = QK_OK). On failure a human-readable
 *    message is kept per calling thread and returned by qk_last_error().
 *  - Tensors cross the ABI as `const qk_tensor*`: a data address (host or device), the
 *    number of bytes addressable from it, dtype, device and shape/strides in elements.
 *    The library checks every descriptor it receives (shape, strides, bounds, device,
 *    dtype) and never writes outside `nbytes`.
 *  - Device work takes an explicit qk_stream; NULL means the device's default stream
 *    (on the CPU, work is always synchronous and the stream is ignored).
 *  - The CUDA runtime is linked statically: the library loads on machines without a GPU
 *    or driver and reports CUDA as unavailable (qk_backend_status) instead.
 */
#ifndef QKERN_H
#define QKERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define QK_API __declspec(dllexport)
#else
#define QK_API __attribute__((visibility("default")))
#endif

/** Bumped on every incompatible change; the Java side refuses a mismatch. */
#define QK_ABI_VERSION 1
#define QK_MAX_DIMS 8

typedef int32_t qk_status;
enum qk_status_code {
  QK_OK = 0,
  QK_ERR_INVALID_ARGUMENT = 1,   /* a caller error: bad shape, dtype, pointer, size, value */
  QK_ERR_UNSUPPORTED = 2,        /* a valid request this build or backend cannot serve */
  QK_ERR_OUT_OF_MEMORY = 3,
  QK_ERR_BACKEND_UNAVAILABLE = 4,/* e.g. CUDA requested but no driver / device */
  QK_ERR_DEVICE = 5,             /* the device runtime reported an error */
  QK_ERR_NON_FINITE = 6,         /* NaN or Inf where the operation forbids it */
  QK_ERR_INTERNAL = 7            /* a bug in qkern */
};

/* Element types. Values are part of the ABI. */
enum qk_dtype {
  QK_F32 = 0, QK_F16 = 1, QK_BF16 = 2, QK_F64 = 3,
  QK_U8 = 4, QK_I8 = 5, QK_I16 = 6, QK_I32 = 7, QK_I64 = 8, QK_BOOL = 9
};

enum qk_device_kind { QK_DEVICE_CPU = 0, QK_DEVICE_CUDA = 1 };

typedef struct qk_tensor {
  void* data;                    /* address of element [0, ..., 0] (host or device) */
  int64_t nbytes;                /* bytes addressable from data: every element must lie inside */
  int32_t dtype;                 /* enum qk_dtype */
  int32_t device_kind;           /* enum qk_device_kind */
  int32_t device_index;          /* 0 for the CPU */
  int32_t ndim;                  /* 0..QK_MAX_DIMS */
  int64_t shape[QK_MAX_DIMS];
  int64_t strides[QK_MAX_DIMS];  /* in elements, not bytes */
} qk_tensor;

typedef struct qk_stream_s* qk_stream;
typedef struct qk_event_s* qk_event;

/* ---- library ------------------------------------------------------------------------ */
QK_API int32_t qk_abi_version(void);
QK_API const char* qk_version_string(void);
/** This thread's last error message ("" if none). Valid until the next qk_* call on the thread. */
QK_API const char* qk_last_error(void);
QK_API void qk_clear_error(void);
QK_API const char* qk_status_name(qk_status status);

/* ---- CPU ---------------------------------------------------------------------------- */
/** The SIMD path kernels use: "avx512", "avx2" or "scalar" (chosen at load from cpuid). */
QK_API const char* qk_cpu_path(void);
/** Force a path ("scalar", "avx2", "avx512") or "auto"; fails if this CPU lacks it. */
QK_API qk_status qk_cpu_set_path(const char* path);
/** Space-separated CPU features qkern looked for and found. */
QK_API const char* qk_cpu_features(void);
QK_API int32_t qk_cpu_threads(void);
/** Worker threads for CPU kernels; 0 = hardware concurrency. */
QK_API qk_status qk_cpu_set_threads(int32_t threads);

/* ---- backends and devices ----------------------------------------------------------- */
/** 1 if the backend can run kernels on this machine, else 0. */
QK_API int32_t qk_backend_available(int32_t device_kind);
/** One line: what the backend is, or why it is unavailable. */
QK_API const char* qk_backend_status(int32_t device_kind);
QK_API int32_t qk_device_count(int32_t device_kind);
/** Writes a NUL-terminated device name (truncated to buf_len). */
QK_API qk_status qk_device_name(int32_t device_kind, int32_t device_index, char* buf, int64_t buf_len);
QK_API qk_status qk_device_memory(int32_t device_kind, int32_t device_index, int64_t* free_bytes,
                                  int64_t* total_bytes);

/* ---- memory ------------------------------------------------------------------------- */
/**
 * 64-byte aligned on the host, cudaMalloc on CUDA. nbytes == 0 gives NULL and QK_OK. Host
 * allocations of 4 MiB or more are 2 MiB aligned and, on Linux, advised for transparent huge
 * pages (MADV_HUGEPAGE) before first use. Contents are undefined.
 */
QK_API qk_status qk_malloc(int32_t device_kind, int32_t device_index, int64_t nbytes, void** out);
QK_API qk_status qk_free(int32_t device_kind, int32_t device_index, void* ptr);
/** Any direction between host and device; asynchronous on a non-NULL CUDA stream. */
QK_API qk_status qk_memcpy(void* dst, int32_t dst_kind, int32_t dst_index, const void* src,
                           int32_t src_kind, int32_t src_index, int64_t nbytes, qk_stream stream);
QK_API qk_status qk_memset(void* dst, int32_t device_kind, int32_t device_index, int32_t byte_value,
                           int64_t nbytes, qk_stream stream);

/* ---- streams and events ------------------------------------------------------------- */
QK_API qk_status qk_stream_create(int32_t device_kind, int32_t device_index, qk_stream* out);
QK_API qk_status qk_stream_destroy(qk_stream stream);
QK_API qk_status qk_stream_synchronize(qk_stream stream);
QK_API qk_status qk_device_synchronize(int32_t device_kind, int32_t device_index);
QK_API qk_status qk_event_create(int32_t device_kind, int32_t device_index, qk_event* out);
QK_API qk_status qk_event_destroy(qk_event event);
QK_API qk_status qk_event_record(qk_event event, qk_stream stream);
QK_API qk_status qk_event_synchronize(qk_event event);
QK_API qk_status qk_event_elapsed_ms(qk_event start, qk_event end, float* ms_out);

/* ---- NF4 (QLoRA NormalFloat-4, bitsandbytes layout) ---------------------------------- */
/**
 * Blockwise NF4 quantization of a contiguous F32/F16/BF16 tensor (flattened row-major).
 *   packed: U8, (n+1)/2 elements; first element of a pair in the HIGH nibble.
 *   absmax: F32, ceil(n/blocksize) elements.
 * blocksize: a power of two in 32..4096. NaN/Inf input fails with QK_ERR_NON_FINITE and
 * *nonfinite_index (if not NULL) set to the lowest offending flat index (else to -1).
 * On CUDA this call synchronizes its stream to report that index.
 */
QK_API qk_status qk_nf4_quantize(const qk_tensor* x, int64_t blocksize, const qk_tensor* packed,
                                 const qk_tensor* absmax, int64_t* nonfinite_index, qk_stream stream);

/**
 * out = round_to_dtype(NF4[code] * absmax[block]) for every element of `out`
 * (contiguous F32/F16/BF16; its element count is n).
 */
QK_API qk_status qk_nf4_dequantize(const qk_tensor* packed, const qk_tensor* absmax, int64_t blocksize,
                                   const qk_tensor* out, qk_stream stream);

/**
 * Double quantization of the F32 absmax (bitsandbytes compress_statistics):
 * offset = mean(absmax) (computed in double, rounded once), then 256-blocks of
 * (absmax - offset) are quantized to the nearest entry of `code_map` (F32 [256], ascending).
 * Outputs: codes U8 [blocks], nested_absmax F32 [ceil(blocks/256)], *offset_out.
 * On CUDA this call synchronizes its stream (the offset is returned to the host).
 */
QK_API qk_status qk_nf4_double_quantize(const qk_tensor* absmax, const qk_tensor* code_map,
                                        const qk_tensor* codes, const qk_tensor* nested_absmax,
                                        float* offset_out, qk_stream stream);

/** absmax[b] = fp32(fp32(code_map[codes[b]] * nested_absmax[b / 256]) + offset). */
QK_API qk_status qk_nf4_double_dequantize(const qk_tensor* codes, const qk_tensor* nested_absmax,
                                          const qk_tensor* code_map, float offset,
                                          const qk_tensor* absmax, qk_stream stream);

/* ---- NF4 matmul (fused dequantization: no full-precision copy of W is made) ---------- */
/*
 * W is an NF4 tensor of logical shape [n, k] in the bitsandbytes layout: row-major, flat
 * element i = row * k + col in packed byte i / 2 (even i in the high nibble), scaled by
 * absmax[i / blocksize] (F32; decode double-quantized absmax first). Any n, k, blocksize:
 * rows may start mid-byte and blocks may straddle rows.
 * W[n, k] means fp32(NF4[code] * absmax): exactly what qk_nf4_dequantize writes as F32.
 * CPU, and CUDA for m <= 16: products and sums are float32 (the order of summation is the
 * kernel's, so results match a dense F32 matmul over the dequantized weights to float32
 * rounding, not bit for bit). CUDA for m > 16 runs on tensor cores: F16/BF16 activations meet
 * W rounded to their dtype; F32 activations use a three-product bf16 split (about 2^-14
 * relative error per product); sums are float32. (The CUDA kernels have never run on a GPU.)
 */

/**
 * y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]).
 * x: F32/F16/BF16 [m, k]; bias: NULL, or F32 or x's dtype [n]; y: F32 or x's dtype [m, n].
 * All contiguous; y must not overlap any input.
 */
QK_API qk_status qk_nf4_matmul(const qk_tensor* x, const qk_tensor* packed, const qk_tensor* absmax,
                               int64_t blocksize, const qk_tensor* bias, const qk_tensor* y,
                               qk_stream stream);

/**
 * dx[m, k] = sum_n dy[m, n] * W[n, k]   (the input gradient of y = x W^T).
 * dy: F32/F16/BF16 [m, n]; dx: F32 or dy's dtype [m, k]. Contiguous; dx overlaps nothing.
 */
QK_API qk_status qk_nf4_matmul_input_grad(const qk_tensor* dy, const qk_tensor* packed,
                                          const qk_tensor* absmax, int64_t blocksize,
                                          const qk_tensor* dx, qk_stream stream);

/**
 * The kernel qk_nf4_matmul (input_grad = 0) or qk_nf4_matmul_input_grad (input_grad = 1)
 * uses for `m` rows on a device kind with the current CPU path, e.g. "cpu-avx2-gemv" or
 * "cuda-mma". A static string; never NULL.
 */
QK_API const char* qk_nf4_matmul_path(int64_t m, int32_t device_kind, int32_t input_grad);

/* ---- dense baseline ---------------------------------------------------------------- */
/**
 * Dense float32 y[m, n] = x[m, k] w[n, k]^T on the CPU (contiguous F32 tensors): what the NF4
 * matmul is measured against, with the same tile kernels and no decode step. CUDA tensors get
 * QK_ERR_UNSUPPORTED (cuBLAS is the dense baseline there).
 */
QK_API qk_status qk_matmul_f32(const qk_tensor* x, const qk_tensor* w, const qk_tensor* y, qk_stream stream);

/* ---- measurement -------------------------------------------------------------------- */
/**
 * Memory-read bandwidth probe over `buf` (host or device, any dtype, contiguous):
 * the best GB/s (1e9 bytes/s) over several read patterns and `repetitions` passes, using
 * every CPU worker thread (or the whole GPU). The name of the winning pattern is written
 * to `best_pattern` (NUL-terminated, may be NULL).
 */
QK_API qk_status qk_probe_read_bandwidth(const qk_tensor* buf, int32_t repetitions, double* gbps_out,
                                         char* best_pattern, int64_t best_pattern_len);

/**
 * Floating-point peak probe for compute-bound kernels: the best GFLOP/s (1e9 float32 flops/s,
 * an FMA counting 2) over `repetitions` passes of independent FMA chains of the CPU path's
 * widest vectors (AVX-512, AVX2 + FMA, or scalar multiply-adds) on every CPU worker thread.
 */
QK_API qk_status qk_probe_fma_peak(int32_t repetitions, double* gflops_out);


/* ---- APMM (arbitrary-precision quantized matmul, bit-plane decomposition) ------------- */
/*
 * Code formats, p bits (1..8), chosen independently for the weights W and activations A:
 *   QK_APMM_BIPOLAR   the odd integers in [-(2^p-1), 2^p-1]; bit b_i stands for -1/+1:
 *                     x = sum_i (2 b_i - 1) 2^i
 *   QK_APMM_SIGNED    two's complement integers in [-2^(p-1), 2^(p-1)-1]
 *   QK_APMM_UNSIGNED  integers in [0, 2^p-1], optionally with an integer zero point
 * Packed layout (what the matmul reads, the same on CPU and CUDA):
 *   planes  U8 [rows, p, 8*kw] holding kw little-endian 64-bit words per plane (8-byte
 *           aligned), kw = ceil(K/256)*4: bit (k mod 64) of word k/64 of plane i is bit i of
 *           the row's unsigned code u at column k; K is zero-padded to a multiple of 256.
 *           u is x itself (unsigned), (x + 2^p - 1)/2 (bipolar), and x + 2^(p-1) (signed:
 *           the two's complement planes with the sign plane stored inverted), so every
 *           format reads x = alpha*u + beta and padding (u = 0) is corrected exactly.
 *   sums    I32 [rows, segments]: sum of u over each segment of `group` columns
 *           (group 0: one segment per row; else 32, 64 or 128; the last may be short).
 *   scales  F32 [rows, 1 or segments]; zero_points I32 of the same shape (unsigned only).
 *   A dequantized element is scale * (x - zero_point).
 */
enum qk_apmm_format { QK_APMM_BIPOLAR = 0, QK_APMM_SIGNED = 1, QK_APMM_UNSIGNED = 2 };

/* Requested kernel family for qk_apmm_matmul. AUTO picks per (p, q, M) and device. */
enum qk_apmm_path_request { QK_APMM_PATH_AUTO = 0, QK_APMM_PATH_BITSERIAL = 1, QK_APMM_PATH_INT8 = 2 };

/* The kernel that ran (qk_apmm_matmul's *path_used); qk_apmm_path_name gives its name. */
enum qk_apmm_path {
  QK_APMM_RAN_SCALAR_BITSERIAL = 1,  /* "scalar-bitserial": AND + popcount, plain C++ */
  QK_APMM_RAN_SCALAR_INT8 = 2,       /* "scalar-int8": planes unpacked to bytes, int32 dot */
  QK_APMM_RAN_AVX2_BITSERIAL = 3,    /* "avx2-bitserial": AND + vpshufb nibble popcount */
  QK_APMM_RAN_AVX2_INT8 = 4,         /* "avx2-int8": unpacked bytes, vpmaddubsw/vpmaddwd */
  QK_APMM_RAN_AVX512_BITSERIAL = 5,  /* "avx512-bitserial": AND + VPOPCNTDQ */
  QK_APMM_RAN_AVX512_INT8 = 6,       /* "avx512-int8-vnni": unpacked bytes, VPDPBUSD */
  QK_APMM_RAN_CUDA_B1_MMA = 7,       /* "cuda-b1-mma": mma.sync m16n8k256 b1 AND.popc */
  QK_APMM_RAN_CUDA_INT8_MMA = 8,     /* "cuda-int8-mma": planes unpacked in shared memory, mma.sync s8 */
  /* Small-M weight streaming, chosen by AUTO for p*q > 4 at M <= 16 (p <= 4) or M <= 8 (p = 5..7;
   * not p = 8), where its int16 pair sums cannot overflow: 2 (2^p - 1)(2^q - 1) <= 32767 (so not
   * W7A8 or W8A*): each weight row's planes are decoded to byte codes once per pass of up to 4 rows
   * of A and multiplied with each of them. The AVX-512 kernel table runs the AVX2 kernel. */
  QK_APMM_RAN_SCALAR_STREAM = 9,     /* "scalar-stream": plain C++ reference of the streaming path */
  QK_APMM_RAN_AVX2_STREAM = 10       /* "avx2-stream": SWAR bit transpose of the planes, vpmaddubsw */
};
QK_API const char* qk_apmm_path_name(int32_t path);

/**
 * The path qk_apmm_matmul would take for q-bit activations, p-bit weights and M rows of A on
 * `device_kind` under `request` (enum qk_apmm_path_request), without running it.
 */
QK_API qk_status qk_apmm_choose_path(int32_t a_bits, int32_t w_bits, int64_t m, int32_t device_kind,
                                     int32_t request, int32_t* path_out);

/**
 * Packs integer codes (I8, U8, I16 or I32 [rows, K], contiguous) given in `format` with
 * `bits` bits into planes U8 [rows, bits, 8*kw] and sums I32 [rows, segments of `group`].
 * A code outside the format's range fails with QK_ERR_INVALID_ARGUMENT naming the value
 * and *bad_index (if not NULL) set to its flat index (else -1).
 */
QK_API qk_status qk_apmm_pack(const qk_tensor* codes, int32_t format, int32_t bits, int64_t group,
                              const qk_tensor* planes, const qk_tensor* sums, int64_t* bad_index, qk_stream stream);

/** The inverse of qk_apmm_pack: codes I32 [rows, K] from planes (K given by `codes`). */
QK_API qk_status qk_apmm_unpack(const qk_tensor* planes, int32_t format, int32_t bits, const qk_tensor* codes,
                                qk_stream stream);

/**
 * Quantizes x (F32/F16/BF16 [rows, K]) row by row and packs the codes in one pass: the
 * weight quantizer (scale_group = sum_group = 0 or 32/64/128) and the dynamic per-token
 * activation quantizer (scale_group = 0, sum_group = the weights' group) alike.
 *   bipolar:  scale = absmax / (2^p-1), code = the nearest odd integer to x/scale, clamped
 *   signed:   scale = absmax / max(1, 2^(p-1)-1), code = rint(x/scale), clamped
 *   unsigned: lo = min(0, min x), hi = max(0, max x), scale = (hi-lo)/(2^p-1),
 *             zero_point = rint(-lo/scale), code = rint(x/scale) + zero_point, clamped
 * An all-zero group gets scale 0. zero_points must be given for unsigned, NULL otherwise.
 * scale_group must be 0 or equal to sum_group. NaN/Inf input fails with QK_ERR_NON_FINITE
 * and *nonfinite_index (if not NULL) set to the lowest offending flat index.
 */
QK_API qk_status qk_apmm_quantize(const qk_tensor* x, int32_t format, int32_t bits, int64_t scale_group,
                                  int64_t sum_group, const qk_tensor* planes, const qk_tensor* sums,
                                  const qk_tensor* scales, const qk_tensor* zero_points, int64_t* nonfinite_index,
                                  qk_stream stream);

/**
 * C[M, N] = A[M, K] W[N, K]^T over packed operands (a_*: M rows, q = a_bits; w_*: N rows,
 * p = w_bits), both packed with the same K and `group` (the segments of their sums).
 * The p*q binary products are accumulated exactly in int32 and recovered with 2^(i+j),
 * then per segment s:  D_s = sum_k x_a x_w  (exact, int64), and
 *   out I32: C = sum_s D_s (scales and zero points must be NULL; |C| must fit in int32).
 *   out F32/F16/BF16: C = sum_s sa*sw*(D_s - zw*Sa_s - za*Sw_s + len_s*za*zw) in float64,
 *   rounded once (S = sum of the codes over the segment; scales/zero points per row or
 *   per segment; zero points NULL means 0).
 * K*(2^p-1)*(2^q-1) must be below 2^31 (exact int32 accumulation; K <= 33025 at 8x8).
 * request: enum qk_apmm_path_request; *path_used (may be NULL) receives enum qk_apmm_path.
 */
QK_API qk_status qk_apmm_matmul(const qk_tensor* a_planes, const qk_tensor* a_sums, const qk_tensor* a_scales,
                                const qk_tensor* a_zero_points, int32_t a_format, int32_t a_bits,
                                const qk_tensor* w_planes, const qk_tensor* w_sums, const qk_tensor* w_scales,
                                const qk_tensor* w_zero_points, int32_t w_format, int32_t w_bits, int64_t k,
                                int64_t group, const qk_tensor* out, int32_t request, int32_t* path_used,
                                qk_stream stream);
/* ---- Top-k selection and Deep Gradient Compression (DGC) -------------------------------- */
/*
 * Selection keys: QK_TOPK_MAGNITUDE picks the k largest |x|; QK_TOPK_LARGEST / QK_TOPK_SMALLEST
 * the k largest / smallest x. Values compare as IEEE floats (-0.0 == +0.0; subnormals exact);
 * equal keys go to the lower index. The result is exact and deterministic (the same on every
 * CPU path, thread count and device). Indices are 64-bit internally: n may exceed 2^31.
 */
enum qk_topk_order { QK_TOPK_MAGNITUDE = 0, QK_TOPK_LARGEST = 1, QK_TOPK_SMALLEST = 2 };
/* qk_topk flags: results by descending key (ties: lower index first) instead of ascending index. */
#define QK_TOPK_SORTED 1

/**
 * Exact top-k of a contiguous F32 tensor x (n elements, flattened), 0 <= k <= n.
 *   indices: I64 or I32 [k] (I32 needs n <= 2^31); values: F32 [k] or NULL.
 * Output order: ascending index, or with QK_TOPK_SORTED descending key. NaN in x fails with
 * QK_ERR_NON_FINITE and *nonfinite_index (if not NULL) = its lowest index (else -1); Inf is a
 * value like any other. On CUDA the selection runs without host synchronisation (device-side
 * counters, fixed-size outputs); the NaN index is then reported by a stream synchronisation at
 * the end of the call.
 */
QK_API qk_status qk_topk(const qk_tensor* x, int64_t k, int32_t order, int32_t flags, const qk_tensor* indices,
                         const qk_tensor* values, int64_t* nonfinite_index, qk_stream stream);

/**
 * DGC's sampled-threshold selection by |x| (APPROXIMATE: it may return fewer than k pairs).
 * Samples ~sample_ratio of x (at least ceil(2n/k) samples; random start from `seed`, odd stride),
 * takes the ceil(samples*k/n)-th largest sampled |x| as the threshold t and counts |x| >= t:
 *   count >= k        -> the exact top-k among those candidates (which is the exact top-k);
 *   0.8k <= count < k -> all `count` candidates are returned (the approximate case);
 *   count < 0.8k      -> t *= 0.8 and count again, at most 10 rounds, then exact top-k.
 * DGC's upper refinement bound (1.3k, above which the reference code selects exactly among the
 * candidates) collapses to k here, because the slots are fixed: every call fills exactly k.
 * Outputs indices I64/I32 [k], values F32 [k] or NULL, ascending index; *selected_out = number of
 * real pairs; the remaining slots hold index -1 and value 0 (qk_dgc_decompress skips them).
 */
QK_API qk_status qk_topk_sampled(const qk_tensor* x, int64_t k, double sample_ratio, uint64_t seed,
                                 const qk_tensor* indices, const qk_tensor* values, int64_t* selected_out,
                                 int64_t* nonfinite_index, qk_stream stream);

/* Error feedback of a DGC step. */
enum qk_dgc_feedback {
  QK_DGC_FEEDBACK_NONE = 0,     /* v = g: what is not sent is dropped (v returns it, for inspection) */
  QK_DGC_FEEDBACK_RESIDUAL = 1, /* v = v + g: the unsent rest accumulates (error feedback) */
  QK_DGC_FEEDBACK_MOMENTUM = 2  /* DGC momentum correction: u = m*u + g, v = v + u */
};
/* qk_dgc_step flags */
#define QK_DGC_NESTEROV 1        /* momentum feedback: u = (u + g)*m, v = (v + u) + g */
#define QK_DGC_SAMPLED 2         /* select with qk_topk_sampled's rule instead of exact top-k */
#define QK_DGC_SKIP_FINITE_CHECK 4 /* skip the up-front NaN/Inf scan of grad (see below) */

/**
 * One fused DGC step over a contiguous F32 tensor of n elements:
 *   g' = g * min(1, clip_norm / ||g||_2)   (local clipping when clip_norm > 0; norm in float64)
 *   u, v updated per `feedback` (float32 operations in the reference code's order, no FMA)
 *   select k by |v| (exact, or sampled with QK_DGC_SAMPLED), ascending index
 *   indices[j] = idx (I32 or I64), values[j] = v[idx] as F32 or F16 (F16 saturates at +-65504)
 *   v[idx] -= sent value (0 for F32: the residual keeps exactly what was not sent), u[idx] = 0
 * so that, element by element and exactly, sent + residual == the accumulated v.
 * u is read and written only with QK_DGC_FEEDBACK_MOMENTUM (may be NULL otherwise).
 * grad is first scanned for NaN/Inf (fused with the clipping norm): on one the call fails with
 * QK_ERR_NON_FINITE and *nonfinite_index = its lowest index, leaving u and v untouched. With
 * QK_DGC_SKIP_FINITE_CHECK (and no clipping) that pass is skipped; a non-finite v is still
 * detected after the update, but u and v have then been updated. *selected_out: real pairs
 * (k, or fewer with QK_DGC_SAMPLED; empty slots hold index -1, value 0).
 */
QK_API qk_status qk_dgc_step(const qk_tensor* grad, const qk_tensor* u, const qk_tensor* v, int64_t k,
                             int32_t feedback, float momentum, float clip_norm, int32_t flags, double sample_ratio,
                             uint64_t seed, const qk_tensor* indices, const qk_tensor* values, int64_t* selected_out,
                             int64_t* nonfinite_index, qk_stream stream);

/**
 * DGC decompression: out (F32 [n], overwritten) = (sum of the values of all pairs with index i,
 * added in pair order) / world_size. indices: I32/I64 [m], values: F32/F16 [m] (m = P*k pairs
 * from P ranks); index -1 marks an empty slot and is skipped; any other index outside [0, n)
 * fails naming the pair.
 */
QK_API qk_status qk_dgc_decompress(const qk_tensor* indices, const qk_tensor* values, int64_t world_size,
                                   const qk_tensor* out, qk_stream stream);

/* Benchmark baselines (CPU, single-threaded as the standard library is): what a user would
 * write with the C++ standard library. Same inputs/outputs as qk_topk with QK_TOPK_MAGNITUDE
 * (ascending index order, ties to the lower index). Not for production use. */
enum qk_topk_baseline { QK_TOPK_BASELINE_NTH_ELEMENT = 0, QK_TOPK_BASELINE_FULL_SORT = 1 };
QK_API qk_status qk_topk_baseline(const qk_tensor* x, int64_t k, int32_t method, const qk_tensor* indices,
                                  const qk_tensor* values);
/* Benchmark baseline for the DGC step: the momentum pass alone (u = m*u + g, v = v + u; CPU, all
 * worker threads, the same SIMD path), without the finite check, histogram or selection. */
QK_API qk_status qk_dgc_momentum_baseline(const qk_tensor* grad, const qk_tensor* u, const qk_tensor* v,
                                          float momentum);

/* ---- DLPack exchange ------------------------------------------------------------------ */
/* Zero-copy export/import of tensors as DLPack 1.x DLManagedTensorVersioned: include/qkern_dlpack.h
 * (qk_dlpack_export, qk_dlpack_import, qk_dlpack_owner_*), which includes this header. */

/* ---- Paged attention (paged KV cache, paged decode, partial-result merge) ------------ */
/*
 * KV cache of one layer: k_cache and v_cache, each [num_blocks, block_size, num_kv_heads,
 * head_dim], dtype F32/F16/BF16 (both the same), block_size 8..256. Each block must be
 * contiguous (row-major inside the block); the block stride (strides[0]) is free, so K and V
 * may interleave in one allocation. Slot s = block * block_size + offset.
 * Every block id, slot and length is validated before any cache memory is read or written:
 * a bad one fails with QK_ERR_INVALID_ARGUMENT naming it (on CUDA the decode kernels check on
 * the device and the call synchronizes its stream to report a bad id).
 */

/**
 * Writes key/value [T, num_kv_heads, head_dim] (F32/F16/BF16, converted with round-to-nearest-
 * even to the cache dtype; last dim contiguous) into the slots `slot_mapping` (I64 [T]) names.
 * A negative slot skips that token; a slot >= num_blocks * block_size, or two tokens naming one
 * slot, fails before anything is written.
 */
QK_API qk_status qk_attention_write_kv(const qk_tensor* key, const qk_tensor* value, const qk_tensor* k_cache,
                                       const qk_tensor* v_cache, const qk_tensor* slot_mapping, qk_stream stream);

/**
 * Copies whole blocks inside one cache (copy-on-write): block_mapping I64 [N, 2] of (src, dst).
 * Destinations must be distinct and no destination may also be a source (the result would
 * depend on the order).
 */
QK_API qk_status qk_attention_copy_blocks(const qk_tensor* cache, const qk_tensor* block_mapping, qk_stream stream);

/**
 * Copies blocks between two caches of the same dtype and block shape that may live on different
 * devices (swap out: CUDA -> host, swap in: host -> CUDA; host -> host on the CPU):
 * block_mapping I64 [N, 2] of (src block in src_cache, dst block in dst_cache), destinations distinct.
 * On CUDA the copies are queued on `stream` (the stream of the CUDA side).
 */
QK_API qk_status qk_attention_swap_blocks(const qk_tensor* src_cache, const qk_tensor* dst_cache,
                                          const qk_tensor* block_mapping, qk_stream stream);

/**
 * Decode attention over a paged cache with a padded page table:
 *   q [B, Hq, D] (F32/F16/BF16, last dim contiguous), block_tables I32 [B, max_blocks],
 *   seq_lens I32 [B] (0 <= seq_len <= max_blocks * block_size; only the first
 *   ceil(seq_len / block_size) ids of a row are read and validated).
 *   out [B, Hq, D] F32/F16/BF16 contiguous; lse F32 [B, Hq] contiguous or NULL.
 * out = softmax(scale * q K^T) V per (sequence, query head); lse = natural-log log-sum-exp of
 * the scaled scores. Query head h uses KV head h / (Hq / Hkv) (GQA/MQA; Hq % Hkv == 0); one
 * work item reads a KV head's blocks once for its whole query group. A sequence of length 0
 * gives out = 0 and lse = -inf. partition_blocks > 0 splits each sequence into partitions of
 * that many blocks (split-KV) whose partial results are merged; 0 lets qkern choose.
 */
QK_API qk_status qk_attention_paged_decode(const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                                           const qk_tensor* block_tables, const qk_tensor* seq_lens, float scale,
                                           int64_t partition_blocks, const qk_tensor* out, const qk_tensor* lse,
                                           qk_stream stream);

/**
 * As qk_attention_paged_decode, with a CSR page table: kv_indptr I32 [B + 1] (kv_indptr[0] == 0,
 * non-decreasing, kv_indptr[B] <= len(kv_indices)), kv_indices I32 [nnz], kv_last_page_len
 * I32 [B] (1..block_size tokens in the last page of a sequence with pages; 0 for one without).
 * Sequence b reads pages kv_indices[kv_indptr[b] .. kv_indptr[b+1]); all but its last are full.
 */
QK_API qk_status qk_attention_paged_decode_csr(const qk_tensor* q, const qk_tensor* k_cache,
                                               const qk_tensor* v_cache, const qk_tensor* kv_indptr,
                                               const qk_tensor* kv_indices, const qk_tensor* kv_last_page_len,
                                               float scale, int64_t partition_blocks, const qk_tensor* out,
                                               const qk_tensor* lse, qk_stream stream);

/**
 * Merges two partial attention results over disjoint key sets (all F32, contiguous):
 * out_a, out_b, out [..., D] and lse_a, lse_b, lse [...] (out has numel(lse) * D elements).
 *   M = max(lse_a, lse_b); wa = exp(lse_a - M); wb = exp(lse_b - M)
 *   out = (wa * out_a + wb * out_b) / (wa + wb); lse = M + log(wa + wb)
 * An empty partial (lse = -inf) contributes nothing; two empty ones give out = 0, lse = -inf.
 * out/lse may be the very same buffers as out_a/lse_a (or _b) for in-place accumulation.
 */
QK_API qk_status qk_attention_merge(const qk_tensor* out_a, const qk_tensor* lse_a, const qk_tensor* out_b,
                                    const qk_tensor* lse_b, const qk_tensor* out, const qk_tensor* lse,
                                    qk_stream stream);

/* ---- event query (core; appended for the NCCL communicator's deadline polling) ------ */
/**
 * Non-blocking completion test: *complete_out = 1 once all work recorded into `event` before it
 * has finished (also for an event never recorded, as cudaEventQuery), else 0. A CPU event is
 * always complete. Lets a caller wait for device work against its own deadline instead of
 * blocking in qk_event_synchronize.
 */
QK_API qk_status qk_event_query(qk_event event, int32_t* complete_out);

#ifdef __cplusplus
}
#endif
#endif /* QKERN_H */
