// NF4 ABI entry points: argument checks, then the CPU kernels (split over the worker pool)
// or the CUDA backend.
#include <math.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "common/nf4.h"
#include "internal.h"
#include "nf4/nf4_cpu.h"

namespace {

using namespace qk;

const nf4::CpuKernels& kernels() {
  switch (cpu_path()) {
    case CpuPath::Avx512: return nf4::avx512_kernels();
    case CpuPath::Avx2: return nf4::avx2_kernels();
    default: return nf4::scalar_kernels();
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

qk_status check_blocksize(int64_t blocksize, const char* fn) {
  if (!nf4::valid_blocksize(blocksize))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: blocksize %lld is invalid (a power of two in %d..%d)", fn,
                (long long)blocksize, nf4::kMinBlocksize, nf4::kMaxBlocksize);
  return QK_OK;
}

const char* nonfinite_name(float v) { return isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"); }

float element_as_f32(const qk_tensor* x, int64_t i) {
  const void* p = x->data;
  if (x->dtype == QK_F16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  if (x->dtype == QK_BF16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

}  // namespace

extern "C" {

QK_API qk_status qk_nf4_quantize(const qk_tensor* x, int64_t blocksize, const qk_tensor* packed,
                                 const qk_tensor* absmax, int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_nf4_quantize";
  return guard(fn, [&]() -> qk_status {
    if (nonfinite_index) *nonfinite_index = -1;
    QK_TRY(check_blocksize(blocksize, fn));
    QK_TRY(check_flat(x, fn, "x", {QK_F32, QK_F16, QK_BF16}, -1));
    int64_t n = numel(x), blocks = ceil_div(n, blocksize);
    QK_TRY(check_flat(packed, fn, "packed", {QK_U8}, n / 2 + (n & 1)));
    QK_TRY(check_flat(absmax, fn, "absmax", {QK_F32}, blocks));
    QK_TRY(check_same_device(x, packed, fn, "x", "packed"));
    QK_TRY(check_same_device(x, absmax, fn, "x", "absmax"));
    QK_TRY(check_no_overlap(x, packed, fn, "x", "packed"));
    QK_TRY(check_no_overlap(x, absmax, fn, "x", "absmax"));
    QK_TRY(check_no_overlap(packed, absmax, fn, "packed", "absmax"));
    QK_TRY(check_stream(stream, x, fn));
    if (n == 0) return QK_OK;
    if (x->device_kind == QK_DEVICE_CUDA)
      return cuda::nf4_quantize(x, blocksize, packed, absmax, nonfinite_index, stream);

    const nf4::CpuKernels& k = kernels();
    std::atomic<int64_t> first_bad{INT64_MAX};
    int64_t grain = std::max<int64_t>(1, (int64_t)(1 << 16) / blocksize);
    parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
      int64_t bad = k.quantize(x->data, x->dtype, n, blocksize, b0, b1, static_cast<uint8_t*>(packed->data),
                               static_cast<float*>(absmax->data));
      if (bad >= 0) {
        int64_t cur = first_bad.load();
        while (bad < cur && !first_bad.compare_exchange_weak(cur, bad)) {
        }
      }
    });
    int64_t bad = first_bad.load();
    if (bad != INT64_MAX) {
      if (nonfinite_index) *nonfinite_index = bad;
      return fail(QK_ERR_NON_FINITE, "%s: element %lld is %s", fn, (long long)bad,
                  nonfinite_name(element_as_f32(x, bad)));
    }
    return QK_OK;
  });
}

QK_API qk_status qk_nf4_dequantize(const qk_tensor* packed, const qk_tensor* absmax, int64_t blocksize,
                                   const qk_tensor* out, qk_stream stream) {
  const char* fn = "qk_nf4_dequantize";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_blocksize(blocksize, fn));
    QK_TRY(check_flat(out, fn, "out", {QK_F32, QK_F16, QK_BF16}, -1));
    int64_t n = numel(out);
    QK_TRY(check_flat(packed, fn, "packed", {QK_U8}, n / 2 + (n & 1)));
    QK_TRY(check_flat(absmax, fn, "absmax", {QK_F32}, ceil_div(n, blocksize)));
    QK_TRY(check_same_device(out, packed, fn, "out", "packed"));
    QK_TRY(check_same_device(out, absmax, fn, "out", "absmax"));
    QK_TRY(check_no_overlap(out, packed, fn, "out", "packed"));
    QK_TRY(check_no_overlap(out, absmax, fn, "out", "absmax"));
    QK_TRY(check_stream(stream, out, fn));
    if (n == 0) return QK_OK;
    if (out->device_kind == QK_DEVICE_CUDA) return cuda::nf4_dequantize(packed, absmax, blocksize, out, stream);

    const nf4::CpuKernels& k = kernels();
    const int64_t unit = 64;  // ranges start on 64-element boundaries: whole bytes, whole SIMD groups
    parallel_for(ceil_div(n, unit), 2048, [&](int64_t u0, int64_t u1) {
      k.dequantize(static_cast<const uint8_t*>(packed->data), static_cast<const float*>(absmax->data), blocksize,
                   u0 * unit, std::min(n, u1 * unit), out->data, out->dtype);
    });
    return QK_OK;
  });
}

QK_API qk_status qk_nf4_double_quantize(const qk_tensor* absmax, const qk_tensor* code_map, const qk_tensor* codes,
                                        const qk_tensor* nested_absmax, float* offset_out, qk_stream stream) {
  const char* fn = "qk_nf4_double_quantize";
  return guard(fn, [&]() -> qk_status {
    if (!offset_out) return fail(QK_ERR_INVALID_ARGUMENT, "%s: offset_out is NULL", fn);
    QK_TRY(check_flat(absmax, fn, "absmax", {QK_F32}, -1));
    int64_t blocks = numel(absmax);
    QK_TRY(check_flat(code_map, fn, "code_map", {QK_F32}, 256));
    QK_TRY(check_flat(codes, fn, "codes", {QK_U8}, blocks));
    QK_TRY(check_flat(nested_absmax, fn, "nested_absmax", {QK_F32}, ceil_div(blocks, nf4::kNestedBlocksize)));
    QK_TRY(check_same_device(absmax, code_map, fn, "absmax", "code_map"));
    QK_TRY(check_same_device(absmax, codes, fn, "absmax", "codes"));
    QK_TRY(check_same_device(absmax, nested_absmax, fn, "absmax", "nested_absmax"));
    QK_TRY(check_no_overlap(absmax, codes, fn, "absmax", "codes"));
    QK_TRY(check_no_overlap(absmax, nested_absmax, fn, "absmax", "nested_absmax"));
    QK_TRY(check_no_overlap(codes, nested_absmax, fn, "codes", "nested_absmax"));
    QK_TRY(check_stream(stream, absmax, fn));
    if (blocks == 0) {
      *offset_out = 0.0f;
      return QK_OK;
    }
    if (absmax->device_kind == QK_DEVICE_CUDA)
      return cuda::nf4_double_quantize(absmax, code_map, codes, nested_absmax, offset_out, stream);

    const float* a = static_cast<const float*>(absmax->data);
    const float* map = static_cast<const float*>(code_map->data);
    for (int i = 1; i < 256; i++)
      if (!(map[i - 1] <= map[i]))
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: code_map must be ascending (entry %d)", fn, i);
    // float64 sum in the CUDA kernel's fixed order (4096-value chunks left to right, then the
    // chunk sums left to right), so both devices produce the same offset bit for bit
    double sum = 0.0;
    for (int64_t c0 = 0; c0 < blocks; c0 += 4096) {
      double chunk = 0.0;
      for (int64_t b = c0; b < std::min(blocks, c0 + 4096); b++) {
        if (!isfinite(a[b])) return fail(QK_ERR_NON_FINITE, "%s: absmax[%lld] is not finite", fn, (long long)b);
        chunk += a[b];
      }
      sum += chunk;
    }
    const float offset = (float)(sum / (double)blocks);
    uint8_t* q = static_cast<uint8_t*>(codes->data);
    float* nested = static_cast<float*>(nested_absmax->data);
    for (int64_t g = 0; g * nf4::kNestedBlocksize < blocks; g++) {
      int64_t begin = g * nf4::kNestedBlocksize, end = std::min(blocks, begin + nf4::kNestedBlocksize);
      float amax = 0.0f;
      for (int64_t b = begin; b < end; b++) amax = std::max(amax, fabsf(a[b] - offset));
      nested[g] = amax;
      const float inv = 1.0f / amax;
      for (int64_t b = begin; b < end; b++) {
        float d = a[b] - offset;
        float s = d == 0.0f ? 0.0f : std::min(1.0f, std::max(-1.0f, d * inv));
        q[b] = (uint8_t)nf4::nearest_code(s, map);
      }
    }
    *offset_out = offset;
    return QK_OK;
  });
}

QK_API qk_status qk_nf4_double_dequantize(const qk_tensor* codes, const qk_tensor* nested_absmax,
                                          const qk_tensor* code_map, float offset, const qk_tensor* absmax,
                                          qk_stream stream) {
  const char* fn = "qk_nf4_double_dequantize";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_flat(codes, fn, "codes", {QK_U8}, -1));
    int64_t blocks = numel(codes);
    QK_TRY(check_flat(nested_absmax, fn, "nested_absmax", {QK_F32}, ceil_div(blocks, nf4::kNestedBlocksize)));
    QK_TRY(check_flat(code_map, fn, "code_map", {QK_F32}, 256));
    QK_TRY(check_flat(absmax, fn, "absmax", {QK_F32}, blocks));
    QK_TRY(check_same_device(codes, nested_absmax, fn, "codes", "nested_absmax"));
    QK_TRY(check_same_device(codes, code_map, fn, "codes", "code_map"));
    QK_TRY(check_same_device(codes, absmax, fn, "codes", "absmax"));
    QK_TRY(check_no_overlap(absmax, codes, fn, "absmax", "codes"));
    QK_TRY(check_no_overlap(absmax, nested_absmax, fn, "absmax", "nested_absmax"));
    QK_TRY(check_no_overlap(absmax, code_map, fn, "absmax", "code_map"));
    QK_TRY(check_stream(stream, codes, fn));
    if (!isfinite(offset)) return fail(QK_ERR_NON_FINITE, "%s: offset is not finite", fn);
    if (blocks == 0) return QK_OK;
    if (codes->device_kind == QK_DEVICE_CUDA)
      return cuda::nf4_double_dequantize(codes, nested_absmax, code_map, offset, absmax, stream);
    const uint8_t* q = static_cast<const uint8_t*>(codes->data);
    const float* nested = static_cast<const float*>(nested_absmax->data);
    const float* map = static_cast<const float*>(code_map->data);
    float* out = static_cast<float*>(absmax->data);
    for (int64_t b = 0; b < blocks; b++) {
      float scaled = map[q[b]] * nested[b / nf4::kNestedBlocksize];  // two separate float32 roundings
      out[b] = scaled + offset;
    }
    return QK_OK;
  });
}

}  // extern "C"
