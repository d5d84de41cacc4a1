// APMM ABI entry points: argument checks, then the CPU kernels (tiles over the worker pool,
// path chosen per (p, q, M)) or the CUDA backend. The kernels return sums of unsigned-code
// products u_a*u_w per segment; the exact code products, scales and zero points are applied
// here once per output element (apply_segments).
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "apmm/apmm_cpu.h"
#include "apmm/apmm_cuda.h"
#include "common/apmm.h"
#include "internal.h"

namespace {

using namespace qk;
using namespace qk::apmm;

const char* format_name(int32_t f) {
  return f == QK_APMM_BIPOLAR ? "bipolar" : f == QK_APMM_SIGNED ? "signed" : "unsigned";
}

bool cpu_has_vnni_popcnt() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vpopcntdq");
  }();
  return has;
}

const CpuKernels& kernels() {
  switch (cpu_path()) {
    case CpuPath::Avx512: return cpu_has_vnni_popcnt() ? avx512vnni_kernels() : avx2_kernels();
    case CpuPath::Avx2: return avx2_kernels();
    default: return scalar_kernels();
  }
}

// Bit-serial costs p*q AND+popcount per 64 (AVX2: 256) columns; the int8 path one multiply-add
// per column plus unpacking both operands (for few rows of A, unpacking W dominates). Measured on
// the AVX2 machine (bench/results/apmm-cpu*.md): bit-serial wins up to p*q = 4 at M = 512, and up
// to p*q = 8 (W1A8) at M = 1. The AVX-512 thresholds are the same (not measured: no such CPU here).
bool prefer_bitserial(int p, int q, int64_t m) {
  return p * q <= 4 || (m <= 4 && p * q <= 8);
}

// The small-M streaming path decodes each weight row once per pass of <= 4 rows of A, then
// costs two vector operations per row of A and 32 weights. Measured on the AVX2 machine
// (interleaved, 4096 x 4096): at M = 1 it beats bit-serial from p*q = 8 (W1A8 2.1x, W2A4 2x,
// W4A2 1.7x) but loses at p*q <= 4 (W2A2 0.75x, W1A4 0.85x); it beats the int8 path 1.3-1.6x
// at M = 8, and at M = 16 for p <= 4 (1.2-1.5x) but not at W6A8 (0.8x).
bool prefer_stream(int p, int q, int64_t m) {
  return stream_serves(p, q) && p * q > 4 && m <= (p <= 4 ? 16 : 8);
}

enum class CpuFamily { Bitserial, Int8, Stream };

CpuFamily choose_cpu(int32_t request, int p, int q, int64_t m) {
  if (request == QK_APMM_PATH_BITSERIAL) return CpuFamily::Bitserial;
  if (request == QK_APMM_PATH_INT8) return CpuFamily::Int8;
  if (prefer_stream(p, q, m)) return CpuFamily::Stream;
  return prefer_bitserial(p, q, m) ? CpuFamily::Bitserial : CpuFamily::Int8;
}

int32_t path_id(const CpuKernels& k, CpuFamily f) {
  return f == CpuFamily::Bitserial ? k.bitserial_id : f == CpuFamily::Int8 ? k.int8_id : k.stream_id;
}

qk_status check_format_bits(int32_t format, int32_t bits, const char* fn, const char* what) {
  if (!valid_format(format))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s format %d is invalid (0 bipolar, 1 signed, 2 unsigned)", fn, what,
                format);
  if (!valid_bits(bits))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s bits %d is outside 1..8", fn, what, bits);
  return QK_OK;
}

qk_status check_group(int64_t group, const char* fn, const char* what) {
  if (!valid_group(group))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s %lld is invalid (0 for whole rows, or 32, 64, 128)", fn, what,
                (long long)group);
  return QK_OK;
}

qk_status check_shape(const qk_tensor* t, const char* fn, const char* what, std::initializer_list<int32_t> dtypes,
                      std::initializer_list<int64_t> shape) {
  QK_TRY(check_flat(t, fn, what, dtypes));
  bool same = t->ndim == (int32_t)shape.size();
  int d = 0;
  for (int64_t s : shape) same = same && t->shape[d++] == s;
  if (!same) {
    char want[160] = "", got[160] = "";
    int o = 0;
    for (int64_t s : shape) o += snprintf(want + o, sizeof want - o, o ? ", %lld" : "%lld", (long long)s);
    o = 0;
    for (int i = 0; i < t->ndim && o < 140; i++)
      o += snprintf(got + o, sizeof got - o, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has shape [%s], expected [%s]", fn, what, got, want);
  }
  return QK_OK;
}

qk_status check_planes_aligned(const qk_tensor* t, const char* fn, const char* what) {
  if (((uintptr_t)t->data & 7u) != 0)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s data %p is not 8-byte aligned (planes are 64-bit words)", fn, what,
                t->data);
  return QK_OK;
}

int64_t code_at(const qk_tensor* t, int64_t i) {
  switch (t->dtype) {
    case QK_I8: return static_cast<const int8_t*>(t->data)[i];
    case QK_U8: return static_cast<const uint8_t*>(t->data)[i];
    case QK_I16: return static_cast<const int16_t*>(t->data)[i];
    default: return static_cast<const int32_t*>(t->data)[i];
  }
}

float float_at(const qk_tensor* t, int64_t i) {
  if (t->dtype == QK_F16) return f16_to_f32(static_cast<const uint16_t*>(t->data)[i]);
  if (t->dtype == QK_BF16) return bf16_to_f32(static_cast<const uint16_t*>(t->data)[i]);
  return static_cast<const float*>(t->data)[i];
}

void atomic_min(std::atomic<int64_t>& a, int64_t v) {
  int64_t cur = a.load();
  while (v < cur && !a.compare_exchange_weak(cur, v)) {
  }
}

// Packs one row of unsigned codes u[0..K) into its planes (zeroed first) and segment sums.
void pack_row(const uint32_t* u, int64_t k, int bits, int64_t kw, int64_t group, uint64_t* planes, int32_t* sums) {
  memset(planes, 0, (size_t)(bits * kw) * 8);
  const int64_t segs = segments(k, group);
  for (int64_t s = 0; s < segs; s++) sums[s] = 0;
  for (int64_t c = 0; c < k; c++) {
    const uint64_t bit = (uint64_t)1 << (c % 64);
    for (int i = 0; i < bits; i++)
      if ((u[c] >> i) & 1u) planes[i * kw + c / 64] |= bit;
    sums[group ? c / group : 0] += (int32_t)u[c];
  }
}

struct Operand {
  const uint64_t* planes;
  const int32_t* sums;
  const float* scales;     // NULL for integer output
  const int32_t* zeros;    // NULL = 0
  bool per_segment;        // scales/zeros per segment (else per row)
  int32_t format, bits;
};

// Turns a tile's unsigned-code products into output elements (math in common/apmm.h).
struct Epilogue {
  Operand a, w;
  int64_t k, group, segs;
  const qk_tensor* out;
  // segment_product is linear in (uprod, sa, sw, len): its coefficients, taken from it once, so
  // that the per-element work is four multiply-adds (at M = 1 this epilogue ran ~12% of the time).
  int64_t c_u = 0, c_a = 0, c_w = 0, c_len = 0;

  void init_coefficients() {
    c_u = segment_product(a.format, a.bits, w.format, w.bits, 1, 0, 0, 0);
    c_a = segment_product(a.format, a.bits, w.format, w.bits, 0, 1, 0, 0);
    c_w = segment_product(a.format, a.bits, w.format, w.bits, 0, 0, 1, 0);
    c_len = segment_product(a.format, a.bits, w.format, w.bits, 0, 0, 0, 1);
  }

  // store() for an I32 output, elements (m, n0 .. n0 + nt) from uu[j * u_segs + s]: the loop
  // invariants in registers (through store() they were reloaded per element, the int32 output
  // may alias the int32 sums as far as the compiler knows).
  void store_i32(int64_t m, int64_t n0, int64_t nt, const int32_t* __restrict uu, int64_t u_segs,
                 int64_t int8_shift) const {
    const int64_t S = segs, K = k, G = group, cu = c_u, ca = c_a, cw = c_w, cl = c_len;
    const int32_t* __restrict sa_row = a.sums + m * S;
    const int32_t* __restrict sw_rows = w.sums + n0 * S;
    int32_t* __restrict o = static_cast<int32_t*>(out->data) + m * out->shape[1] + n0;
    for (int64_t j = 0; j < nt; j++) {
      int64_t total = 0;
      for (int64_t s = 0; s < S; s++) {
        const int64_t len = G == 0 ? K : std::min(K, (s + 1) * G) - s * G;
        const int64_t sa = sa_row[s], sw = sw_rows[j * S + s], uprod = (int64_t)uu[j * u_segs + s] + int8_shift * sa;
        total += cu * uprod + ca * sa + cw * sw + cl * len;
      }
      o[j] = (int32_t)total;
    }
  }

  void store(int64_t m, int64_t n, const int32_t* uu, int64_t u_stride, int64_t int8_shift) const {
    const int64_t N = out->shape[1];
    int64_t total = 0;
    double y = 0.0;
    for (int64_t s = 0; s < segs; s++) {
      const int64_t len = group == 0 ? k : std::min(k, (s + 1) * group) - s * group;
      const int64_t sa = a.sums[m * segs + s], sw = w.sums[n * segs + s];
      const int64_t uprod = (int64_t)uu[s * u_stride] + int8_shift * sa;
      const int64_t d = c_u * uprod + c_a * sa + c_w * sw + c_len * len;  // = segment_product(...)
      if (out->dtype == QK_I32) {
        total += d;
        continue;
      }
      const int64_t ia = a.per_segment ? m * segs + s : m, iw = w.per_segment ? n * segs + s : n;
      const int64_t za = a.zeros ? a.zeros[ia] : 0, zw = w.zeros ? w.zeros[iw] : 0;
      const int64_t e = segment_centered(a.format, a.bits, w.format, w.bits, d, sa, sw, len, za, zw);
      y += (double)a.scales[ia] * (double)w.scales[iw] * (double)e;
    }
    const int64_t at = m * N + n;
    switch (out->dtype) {
      case QK_I32: static_cast<int32_t*>(out->data)[at] = (int32_t)total; break;
      case QK_F32: static_cast<float*>(out->data)[at] = (float)y; break;
      case QK_F16: static_cast<uint16_t*>(out->data)[at] = f32_to_f16(round_to_odd_f32(y)); break;
      default: static_cast<uint16_t*>(out->data)[at] = f32_to_bf16(round_to_odd_f32(y)); break;
    }
  }
};

qk_status check_operand_meta(const qk_tensor* planes, const qk_tensor* sums, const qk_tensor* scales,
                             const qk_tensor* zeros, int32_t format, int32_t bits, int64_t kw, int64_t segs, bool float_out,
                             const char* fn, const char* side, int64_t* rows_out, bool* per_segment) {
  char what[32];
  snprintf(what, sizeof what, "%s_planes", side);
  QK_TRY(check_tensor(planes, fn, what));
  QK_TRY(check_dtype(planes, fn, what, {QK_U8}));
  if (planes->ndim != 3)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be 3-d [rows, bits, 8*kw], got %d-d", fn, what, planes->ndim);
  const int64_t rows = planes->shape[0];
  QK_TRY(check_shape(planes, fn, what, {QK_U8}, {rows, bits, kw * 8}));
  QK_TRY(check_planes_aligned(planes, fn, what));
  snprintf(what, sizeof what, "%s_sums", side);
  QK_TRY(check_shape(sums, fn, what, {QK_I32}, {rows, segs}));
  QK_TRY(check_same_device(planes, sums, fn, "planes", what));
  *per_segment = false;
  if (!float_out) {
    if (scales || zeros)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s_scales/%s_zero_points must be NULL for an I32 output", fn, side,
                  side);
  } else {
    snprintf(what, sizeof what, "%s_scales", side);
    if (!scales) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s is NULL (required for a float output)", fn, what);
    QK_TRY(check_tensor(scales, fn, what));
    const int64_t per = scales->ndim == 2 ? scales->shape[1] : -1;
    *per_segment = per == segs && segs != 1;
    QK_TRY(check_shape(scales, fn, what, {QK_F32}, {rows, *per_segment ? segs : 1}));
    QK_TRY(check_same_device(planes, scales, fn, "planes", what));
    if (zeros) {
      snprintf(what, sizeof what, "%s_zero_points", side);
      if (format != QK_APMM_UNSIGNED)
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s given for the %s format (zero points are for unsigned only)", fn,
                    what, format_name(format));
      QK_TRY(check_shape(zeros, fn, what, {QK_I32}, {rows, *per_segment ? segs : 1}));
      QK_TRY(check_same_device(planes, zeros, fn, "planes", what));
    }
  }
  *rows_out = rows;
  return QK_OK;
}

}  // namespace

extern "C" {

QK_API const char* qk_apmm_path_name(int32_t path) {
  switch (path) {
    case QK_APMM_RAN_SCALAR_BITSERIAL: return "scalar-bitserial";
    case QK_APMM_RAN_SCALAR_INT8: return "scalar-int8";
    case QK_APMM_RAN_AVX2_BITSERIAL: return "avx2-bitserial";
    case QK_APMM_RAN_AVX2_INT8: return "avx2-int8";
    case QK_APMM_RAN_AVX512_BITSERIAL: return "avx512-bitserial";
    case QK_APMM_RAN_AVX512_INT8: return "avx512-int8-vnni";
    case QK_APMM_RAN_CUDA_B1_MMA: return "cuda-b1-mma";
    case QK_APMM_RAN_CUDA_INT8_MMA: return "cuda-int8-mma";
    case QK_APMM_RAN_SCALAR_STREAM: return "scalar-stream";
    case QK_APMM_RAN_AVX2_STREAM: return "avx2-stream";
    default: return "unknown";
  }
}

QK_API qk_status qk_apmm_choose_path(int32_t a_bits, int32_t w_bits, int64_t m, int32_t device_kind,
                                     int32_t request, int32_t* path_out) {
  const char* fn = "qk_apmm_choose_path";
  return guard(fn, [&]() -> qk_status {
    if (!path_out) return fail(QK_ERR_INVALID_ARGUMENT, "%s: path_out is NULL", fn);
    if (!valid_bits(a_bits)) return fail(QK_ERR_INVALID_ARGUMENT, "%s: a_bits %d is outside 1..8", fn, a_bits);
    if (!valid_bits(w_bits)) return fail(QK_ERR_INVALID_ARGUMENT, "%s: w_bits %d is outside 1..8", fn, w_bits);
    if (m < 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: m %lld is negative", fn, (long long)m);
    if (request < QK_APMM_PATH_AUTO || request > QK_APMM_PATH_INT8)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: request %d is invalid (0 auto, 1 bitserial, 2 int8)", fn, request);
    if (device_kind == QK_DEVICE_CUDA) {
      *path_out = cuda::apmm_choose_path(a_bits, w_bits, m, request);
      return QK_OK;
    }
    if (device_kind != QK_DEVICE_CPU)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: device_kind %d is invalid", fn, device_kind);
    *path_out = path_id(kernels(), choose_cpu(request, w_bits, a_bits, m));
    return QK_OK;
  });
}

QK_API qk_status qk_apmm_pack(const qk_tensor* codes, int32_t format, int32_t bits, int64_t group,
                              const qk_tensor* planes, const qk_tensor* sums, int64_t* bad_index, qk_stream stream) {
  const char* fn = "qk_apmm_pack";
  return guard(fn, [&]() -> qk_status {
    if (bad_index) *bad_index = -1;
    QK_TRY(check_format_bits(format, bits, fn, "the"));
    QK_TRY(check_group(group, fn, "group"));
    QK_TRY(check_tensor(codes, fn, "codes"));
    QK_TRY(check_dtype(codes, fn, "codes", {QK_I8, QK_U8, QK_I16, QK_I32}));
    QK_TRY(check_contiguous(codes, fn, "codes"));
    if (codes->ndim != 2)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: codes must be 2-d [rows, K], got %d-d", fn, codes->ndim);
    const int64_t rows = codes->shape[0], k = codes->shape[1], kw = words_per_plane(k);
    QK_TRY(check_shape(planes, fn, "planes", {QK_U8}, {rows, bits, kw * 8}));
    QK_TRY(check_planes_aligned(planes, fn, "planes"));
    QK_TRY(check_shape(sums, fn, "sums", {QK_I32}, {rows, segments(k, group)}));
    QK_TRY(check_same_device(codes, planes, fn, "codes", "planes"));
    QK_TRY(check_same_device(codes, sums, fn, "codes", "sums"));
    QK_TRY(check_no_overlap(codes, planes, fn, "codes", "planes"));
    QK_TRY(check_no_overlap(codes, sums, fn, "codes", "sums"));
    QK_TRY(check_no_overlap(planes, sums, fn, "planes", "sums"));
    QK_TRY(check_stream(stream, codes, fn));
    if (rows == 0) return QK_OK;
    if (codes->device_kind == QK_DEVICE_CUDA)
      return cuda::apmm_pack(codes, format, bits, group, planes, sums, bad_index, stream);
    std::atomic<int64_t> first_bad{INT64_MAX};
    uint64_t* pl = static_cast<uint64_t*>(planes->data);
    int32_t* sm = static_cast<int32_t*>(sums->data);
    const int64_t segs = segments(k, group);
    parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
      std::vector<uint32_t> u((size_t)k);
      for (int64_t r = r0; r < r1; r++) {
        for (int64_t c = 0; c < k; c++) {
          int64_t x = code_at(codes, r * k + c);
          if (!code_valid(format, bits, x)) {
            atomic_min(first_bad, r * k + c);
            x = code_min(format, bits);
          }
          u[(size_t)c] = code_to_u(format, bits, (int32_t)x);
        }
        pack_row(u.data(), k, bits, kw, group, pl + r * bits * kw, sm + r * segs);
      }
    });
    const int64_t bad = first_bad.load();
    if (bad != INT64_MAX) {
      if (bad_index) *bad_index = bad;
      const long long x = (long long)code_at(codes, bad);
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: codes[%lld, %lld] = %lld is not a %s %d-bit code (%s in [%d, %d])", fn,
                  (long long)(bad / k), (long long)(bad % k), x, format_name(format), bits,
                  format == QK_APMM_BIPOLAR ? "odd integers" : "integers", code_min(format, bits),
                  code_max(format, bits));
    }
    return QK_OK;
  });
}

QK_API qk_status qk_apmm_unpack(const qk_tensor* planes, int32_t format, int32_t bits, const qk_tensor* codes,
                                qk_stream stream) {
  const char* fn = "qk_apmm_unpack";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_format_bits(format, bits, fn, "the"));
    QK_TRY(check_tensor(codes, fn, "codes"));
    if (codes->ndim != 2)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: codes must be 2-d [rows, K], got %d-d", fn, codes->ndim);
    const int64_t rows = codes->shape[0], k = codes->shape[1], kw = words_per_plane(k);
    QK_TRY(check_shape(codes, fn, "codes", {QK_I32}, {rows, k}));
    QK_TRY(check_shape(planes, fn, "planes", {QK_U8}, {rows, bits, kw * 8}));
    QK_TRY(check_planes_aligned(planes, fn, "planes"));
    QK_TRY(check_same_device(codes, planes, fn, "codes", "planes"));
    QK_TRY(check_no_overlap(codes, planes, fn, "codes", "planes"));
    QK_TRY(check_stream(stream, codes, fn));
    if (rows == 0 || k == 0) return QK_OK;
    if (codes->device_kind == QK_DEVICE_CUDA) return cuda::apmm_unpack(planes, format, bits, codes, stream);
    const uint64_t* pl = static_cast<const uint64_t*>(planes->data);
    int32_t* out = static_cast<int32_t*>(codes->data);
    parallel_for(rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++)
        for (int64_t c = 0; c < k; c++) {
          uint32_t u = 0;
          for (int i = 0; i < bits; i++) u |= (uint32_t)((pl[(r * bits + i) * kw + c / 64] >> (c % 64)) & 1u) << i;
          out[r * k + c] = u_to_code(format, bits, u);
        }
    });
    return QK_OK;
  });
}

QK_API qk_status qk_apmm_quantize(const qk_tensor* x, int32_t format, int32_t bits, int64_t scale_group,
                                  int64_t sum_group, const qk_tensor* planes, const qk_tensor* sums,
                                  const qk_tensor* scales, const qk_tensor* zero_points, int64_t* nonfinite_index,
                                  qk_stream stream) {
  const char* fn = "qk_apmm_quantize";
  return guard(fn, [&]() -> qk_status {
    if (nonfinite_index) *nonfinite_index = -1;
    QK_TRY(check_format_bits(format, bits, fn, "the"));
    QK_TRY(check_group(scale_group, fn, "scale_group"));
    QK_TRY(check_group(sum_group, fn, "sum_group"));
    if (scale_group != 0 && scale_group != sum_group)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: scale_group %lld must be 0 or equal to sum_group %lld", fn,
                  (long long)scale_group, (long long)sum_group);
    QK_TRY(check_tensor(x, fn, "x"));
    QK_TRY(check_dtype(x, fn, "x", {QK_F32, QK_F16, QK_BF16}));
    QK_TRY(check_contiguous(x, fn, "x"));
    if (x->ndim != 2) return fail(QK_ERR_INVALID_ARGUMENT, "%s: x must be 2-d [rows, K], got %d-d", fn, x->ndim);
    const int64_t rows = x->shape[0], k = x->shape[1], kw = words_per_plane(k);
    const int64_t segs = segments(k, sum_group), ssegs = segments(k, scale_group);
    QK_TRY(check_shape(planes, fn, "planes", {QK_U8}, {rows, bits, kw * 8}));
    QK_TRY(check_planes_aligned(planes, fn, "planes"));
    QK_TRY(check_shape(sums, fn, "sums", {QK_I32}, {rows, segs}));
    QK_TRY(check_shape(scales, fn, "scales", {QK_F32}, {rows, ssegs}));
    if (format == QK_APMM_UNSIGNED) {
      if (!zero_points) return fail(QK_ERR_INVALID_ARGUMENT, "%s: zero_points is NULL (required for unsigned)", fn);
      QK_TRY(check_shape(zero_points, fn, "zero_points", {QK_I32}, {rows, ssegs}));
    } else if (zero_points) {
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: zero_points given for the %s format (unsigned only)", fn,
                  format_name(format));
    }
    const qk_tensor* outs[] = {planes, sums, scales, zero_points};
    const char* names[] = {"planes", "sums", "scales", "zero_points"};
    for (int i = 0; i < 4; i++) {
      if (!outs[i]) continue;
      QK_TRY(check_same_device(x, outs[i], fn, "x", names[i]));
      QK_TRY(check_no_overlap(x, outs[i], fn, "x", names[i]));
      for (int j = i + 1; j < 4; j++)
        if (outs[j]) QK_TRY(check_no_overlap(outs[i], outs[j], fn, names[i], names[j]));
    }
    QK_TRY(check_stream(stream, x, fn));
    if (rows == 0) return QK_OK;
    if (x->device_kind == QK_DEVICE_CUDA)
      return cuda::apmm_quantize(x, format, bits, scale_group, sum_group, planes, sums, scales, zero_points,
                                 nonfinite_index, stream);
    std::atomic<int64_t> first_bad{INT64_MAX};
    uint64_t* pl = static_cast<uint64_t*>(planes->data);
    int32_t* sm = static_cast<int32_t*>(sums->data);
    float* sc = static_cast<float*>(scales->data);
    int32_t* zp = zero_points ? static_cast<int32_t*>(zero_points->data) : nullptr;
    const int64_t sg = scale_group == 0 ? std::max<int64_t>(k, 1) : scale_group;
    parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
      std::vector<uint32_t> u((size_t)k);
      for (int64_t r = r0; r < r1; r++) {
        bool row_bad = false;
        for (int64_t g = 0; g < ssegs; g++) {
          const int64_t c0 = g * sg, c1 = std::min(k, c0 + sg);
          float amax = 0.0f, lo = 0.0f, hi = 0.0f;
          for (int64_t c = c0; c < c1; c++) {
            const float v = float_at(x, r * k + c);
            if (!isfinite(v)) {
              atomic_min(first_bad, r * k + c);
              row_bad = true;
              break;
            }
            amax = std::max(amax, fabsf(v));
            lo = std::min(lo, v);
            hi = std::max(hi, v);
          }
          if (row_bad) break;
          int32_t zero = 0;
          const float scale = group_scale(format, bits, amax, lo, hi, &zero);
          sc[r * ssegs + g] = scale;
          if (zp) zp[r * ssegs + g] = zero;
          for (int64_t c = c0; c < c1; c++)
            u[(size_t)c] = code_to_u(format, bits, quantize_value(format, bits, float_at(x, r * k + c), scale, zero));
        }
        if (!row_bad) pack_row(u.data(), k, bits, kw, sum_group, pl + r * bits * kw, sm + r * segs);
      }
    });
    const int64_t bad = first_bad.load();
    if (bad != INT64_MAX) {
      if (nonfinite_index) *nonfinite_index = bad;
      const float v = float_at(x, bad);
      return fail(QK_ERR_NON_FINITE, "%s: x[%lld, %lld] is %s", fn, (long long)(bad / k), (long long)(bad % k),
                  isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf");
    }
    return QK_OK;
  });
}

QK_API qk_status qk_apmm_matmul(const qk_tensor* a_planes, const qk_tensor* a_sums, const qk_tensor* a_scales,
                                const qk_tensor* a_zero_points, int32_t a_format, int32_t a_bits,
                                const qk_tensor* w_planes, const qk_tensor* w_sums, const qk_tensor* w_scales,
                                const qk_tensor* w_zero_points, int32_t w_format, int32_t w_bits, int64_t k,
                                int64_t group, const qk_tensor* out, int32_t request, int32_t* path_used,
                                qk_stream stream) {
  const char* fn = "qk_apmm_matmul";
  return guard(fn, [&]() -> qk_status {
    if (path_used) *path_used = 0;
    QK_TRY(check_format_bits(a_format, a_bits, fn, "a"));
    QK_TRY(check_format_bits(w_format, w_bits, fn, "w"));
    QK_TRY(check_group(group, fn, "group"));
    if (k < 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: k %lld is negative", fn, (long long)k);
    if (request < QK_APMM_PATH_AUTO || request > QK_APMM_PATH_INT8)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: request %d is invalid (0 auto, 1 bitserial, 2 int8)", fn, request);
    const int64_t umax = (((int64_t)1 << a_bits) - 1) * (((int64_t)1 << w_bits) - 1);
    const int64_t vmax = code_abs_max(a_format, a_bits) * code_abs_max(w_format, w_bits);
    if (k > 0 && (k > INT32_MAX / umax || k > INT32_MAX / vmax))
      return fail(QK_ERR_INVALID_ARGUMENT,
                  "%s: k %lld is too large for exact int32 accumulation at %d x %d bits (at most %lld)", fn,
                  (long long)k, a_bits, w_bits, (long long)std::min(INT32_MAX / umax, INT32_MAX / vmax));
    QK_TRY(check_tensor(out, fn, "out"));
    QK_TRY(check_dtype(out, fn, "out", {QK_I32, QK_F32, QK_F16, QK_BF16}));
    const bool float_out = out->dtype != QK_I32;
    const int64_t kw = words_per_plane(k), segs = segments(k, group);
    int64_t M = 0, N = 0;
    bool a_per_seg = false, w_per_seg = false;
    QK_TRY(check_operand_meta(a_planes, a_sums, a_scales, a_zero_points, a_format, a_bits, kw, segs, float_out, fn,
                              "a", &M, &a_per_seg));
    QK_TRY(check_operand_meta(w_planes, w_sums, w_scales, w_zero_points, w_format, w_bits, kw, segs, float_out, fn,
                              "w", &N, &w_per_seg));
    QK_TRY(check_shape(out, fn, "out", {QK_I32, QK_F32, QK_F16, QK_BF16}, {M, N}));
    QK_TRY(check_same_device(a_planes, w_planes, fn, "a_planes", "w_planes"));
    QK_TRY(check_same_device(a_planes, out, fn, "a_planes", "out"));
    const qk_tensor* ins[] = {a_planes, a_sums, a_scales, a_zero_points, w_planes, w_sums, w_scales, w_zero_points};
    const char* names[] = {"a_planes", "a_sums", "a_scales", "a_zero_points",
                           "w_planes", "w_sums", "w_scales", "w_zero_points"};
    for (int i = 0; i < 8; i++)
      if (ins[i]) QK_TRY(check_no_overlap(out, ins[i], fn, "out", names[i]));
    QK_TRY(check_stream(stream, out, fn));
    if (out->device_kind == QK_DEVICE_CUDA)
      return cuda::apmm_matmul(a_planes, a_sums, a_scales, a_zero_points, a_format, a_bits, w_planes, w_sums,
                               w_scales, w_zero_points, w_format, w_bits, k, group, out, request, path_used, stream);

    const CpuKernels& kern = kernels();
    const CpuFamily family = choose_cpu(request, w_bits, a_bits, M);
    const bool bitserial = family == CpuFamily::Bitserial, stream = family == CpuFamily::Stream;
    if (path_used) *path_used = path_id(kern, family);
    if (M == 0 || N == 0) return QK_OK;

    Epilogue ep;
    ep.a = {static_cast<const uint64_t*>(a_planes->data), static_cast<const int32_t*>(a_sums->data),
            a_scales ? static_cast<const float*>(a_scales->data) : nullptr,
            a_zero_points ? static_cast<const int32_t*>(a_zero_points->data) : nullptr, a_per_seg, a_format, a_bits};
    ep.w = {static_cast<const uint64_t*>(w_planes->data), static_cast<const int32_t*>(w_sums->data),
            w_scales ? static_cast<const float*>(w_scales->data) : nullptr,
            w_zero_points ? static_cast<const int32_t*>(w_zero_points->data) : nullptr, w_per_seg, w_format, w_bits};
    ep.k = k;
    ep.group = group;
    ep.segs = segs;
    ep.out = out;
    ep.init_coefficients();
    if (k == 0) {  // no columns: every product is 0 (the kernels need at least one word)
      std::vector<int32_t> zeros((size_t)segs, 0);
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) ep.store(m, n, zeros.data(), 1, 0);
      return QK_OK;
    }

    const int p = w_bits, q = a_bits;
    const int64_t kp = kw * 64;
    const int64_t tile_segs = group == 0 ? 1 : kp / group;
    constexpr int64_t n_tile = 16, m_block = 64, m_sub = 4;
    static_assert(m_sub <= kStreamMaxRows, "the stream kernels take at most kStreamMaxRows rows of A per call");
    const int64_t n_tiles = (N + n_tile - 1) / n_tile, m_blocks = (M + m_block - 1) / m_block;
    std::vector<uint8_t> a_u8;
    if (!bitserial) {  // activations as bytes once, shared by every weight panel
      a_u8.resize((size_t)(M * kp));
      parallel_for(M, 1, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
          uint8_t* row = &a_u8[(size_t)(r * kp)];
          if (stream)
            kern.stream_prepare_a(ep.a.planes + r * q * kw, q, kw, row);
          else
            kern.unpack_row(ep.a.planes + r * q * kw, q, kw, false, row);
        }
      });
    }
    const int64_t int8_shift = family == CpuFamily::Int8 ? ((int64_t)1 << (p - 1)) : 0;
    // Tiles are claimed one at a time rather than split in equal static ranges: a worker that
    // wakes late (tens of microseconds on a busy or virtualized machine) then takes fewer tiles
    // instead of finishing its half that much after the caller (at M = 1 a whole 4096 x 4096
    // call is ~200 us).
    const int64_t tiles = n_tiles * m_blocks;
    std::atomic<int64_t> next_tile{0};
    parallel_for(std::min<int64_t>(tiles, worker_threads()), 1, [&](int64_t, int64_t) {
      std::vector<int32_t> u((size_t)(m_sub * n_tile * tile_segs));
      std::vector<int8_t> panel(family == CpuFamily::Int8 ? (size_t)(n_tile * kp) : 0);
      TileOut tile{u.data(), tile_segs, group};
      for (int64_t t = next_tile.fetch_add(1); t < tiles; t = next_tile.fetch_add(1)) {
        const int64_t n0 = (t / m_blocks) * n_tile, nt = std::min(n_tile, N - n0);
        const int64_t mb0 = (t % m_blocks) * m_block, mb1 = std::min(M, mb0 + m_block);
        if (family == CpuFamily::Int8)
          for (int64_t j = 0; j < nt; j++)
            kern.unpack_row(ep.w.planes + (n0 + j) * p * kw, p, kw, true, (uint8_t*)&panel[(size_t)(j * kp)]);
        for (int64_t m0 = mb0; m0 < mb1; m0 += m_sub) {
          const int64_t m1 = std::min(mb1, m0 + m_sub);
          if (bitserial)
            kern.bitserial(ep.a.planes, q, ep.w.planes, p, kw, m0, m1, n0, nt, tile);
          else if (stream)
            kern.stream(a_u8.data(), q, ep.w.planes, p, kw, m0, m1, n0, nt, tile);
          else
            kern.int8(a_u8.data(), panel.data(), kp, m0, m1, nt, p + q == 16, tile);
          for (int64_t m = m0; m < m1; m++) {
            const int32_t* um = &u[(size_t)((m - m0) * nt * tile_segs)];
            if (out->dtype == QK_I32) {
              ep.store_i32(m, n0, nt, um, tile_segs, int8_shift);
              continue;
            }
            for (int64_t j = 0; j < nt; j++) ep.store(m, n0 + j, um + j * tile_segs, 1, int8_shift);
          }
        }
      }
    });
    return QK_OK;
  });
}

}  // extern "C"
