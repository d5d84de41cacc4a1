// Memory-read bandwidth probe: the yardstick every benchmark divides by. It must be strong —
// a weak probe flatters every kernel — so it takes the best of several read patterns, each
// running on every worker thread: one sequential stream with many accumulators, and several
// interleaved streams per thread (more outstanding cache-line misses per core).
#include <immintrin.h>

// GCC 12 warns inside its own AVX-512 intrinsic headers (the _mm512_undefined_* idiom).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "internal.h"

namespace {

using qk::CpuPath;

std::atomic<uint64_t> g_sink{0};  // keeps the loads observable

// Reads [p, p + bytes) as `streams` interleaved sub-ranges. bytes is a multiple of 256 * streams.
__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* p, int64_t bytes, int streams) {
  __m512i acc[8];
  for (auto& a : acc) a = _mm512_setzero_si512();
  int64_t part = bytes / streams;
  if (streams == 1) {
    for (int64_t i = 0; i < bytes; i += 512)
      for (int k = 0; k < 8; k++) acc[k] = _mm512_xor_si512(acc[k], _mm512_load_si512(p + i + 64 * k));
  } else {
    for (int64_t i = 0; i < part; i += 128)
      for (int s = 0; s < streams; s++) {
        const uint8_t* q = p + s * part + i;
        acc[s & 7] = _mm512_xor_si512(acc[s & 7], _mm512_load_si512(q));
        acc[(s + 4) & 7] = _mm512_xor_si512(acc[(s + 4) & 7], _mm512_load_si512(q + 64));
      }
  }
  __m512i r = acc[0];
  for (int k = 1; k < 8; k++) r = _mm512_xor_si512(r, acc[k]);
  return (uint64_t)_mm512_reduce_add_epi64(r);
}

__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* p, int64_t bytes, int streams) {
  __m256i acc[8];
  for (auto& a : acc) a = _mm256_setzero_si256();
  int64_t part = bytes / streams;
  if (streams == 1) {
    for (int64_t i = 0; i < bytes; i += 256)
      for (int k = 0; k < 8; k++) acc[k] = _mm256_xor_si256(acc[k], _mm256_load_si256((const __m256i*)(p + i + 32 * k)));
  } else {
    for (int64_t i = 0; i < part; i += 64)
      for (int s = 0; s < streams; s++) {
        const uint8_t* q = p + s * part + i;
        acc[s & 7] = _mm256_xor_si256(acc[s & 7], _mm256_load_si256((const __m256i*)q));
        acc[(s + 4) & 7] = _mm256_xor_si256(acc[(s + 4) & 7], _mm256_load_si256((const __m256i*)(q + 32)));
      }
  }
  __m256i r = acc[0];
  for (int k = 1; k < 8; k++) r = _mm256_xor_si256(r, acc[k]);
  return (uint64_t)_mm256_extract_epi64(r, 0) ^ (uint64_t)_mm256_extract_epi64(r, 3);
}

uint64_t read_scalar(const uint8_t* p, int64_t bytes, int streams) {
  uint64_t acc[8] = {0};
  int64_t part = bytes / streams;
  for (int64_t i = 0; i < part; i += 64)
    for (int s = 0; s < streams; s++) {
      const uint64_t* q = (const uint64_t*)(p + s * part + i);
      for (int k = 0; k < 8; k++) acc[k] ^= q[k];
    }
  uint64_t r = 0;
  for (uint64_t a : acc) r ^= a;
  return r;
}

// Independent FMA chains, enough to cover FMA latency x throughput on current cores; returns a
// value that depends on every chain (keeps the loop alive). flops = iters * 12 * lanes * 2.
constexpr int kFmaChains = 12;

__attribute__((target("avx512f"))) float fma_avx512(int64_t iters) {
  __m512 a[kFmaChains];
  for (int j = 0; j < kFmaChains; j++) a[j] = _mm512_set1_ps(0.001f * (float)j);
  const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.0001f);
  for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
    for (int j = 0; j < kFmaChains; j++) a[j] = _mm512_fmadd_ps(a[j], b, c);
  }
  __m512 s = a[0];
  for (int j = 1; j < kFmaChains; j++) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) float fma_avx2(int64_t iters) {
  __m256 a[kFmaChains];
  for (int j = 0; j < kFmaChains; j++) a[j] = _mm256_set1_ps(0.001f * (float)j);
  const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.0001f);
  for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
    for (int j = 0; j < kFmaChains; j++) a[j] = _mm256_fmadd_ps(a[j], b, c);
  }
  __m256 s = a[0];
  for (int j = 1; j < kFmaChains; j++) s = _mm256_add_ps(s, a[j]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  return lanes[0] + lanes[7];
}

float fma_scalar(int64_t iters) {
  float a[kFmaChains];
  for (int j = 0; j < kFmaChains; j++) a[j] = 0.001f * (float)j;
  for (int64_t i = 0; i < iters; i++) {
#pragma GCC unroll 12
    for (int j = 0; j < kFmaChains; j++) a[j] = a[j] * 0.999f + 0.0001f;
  }
  float s = 0.0f;
  for (float v : a) s += v;
  return s;
}

struct Pattern {
  const char* name;
  int streams;
};

}  // namespace

extern "C" QK_API qk_status qk_probe_read_bandwidth(const qk_tensor* buf, int32_t repetitions, double* gbps_out,
                                                    char* best_pattern, int64_t best_pattern_len) {
  const char* fn = "qk_probe_read_bandwidth";
  return qk::guard(fn, [&]() -> qk_status {
    if (!gbps_out) return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: gbps_out is NULL", fn);
    if (repetitions < 1 || repetitions > 1000)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: repetitions must be 1..1000, got %d", fn, repetitions);
    QK_TRY(qk::check_tensor(buf, fn, "buf"));
    QK_TRY(qk::check_contiguous(buf, fn, "buf"));
    if (buf->device_kind == QK_DEVICE_CUDA)
      return qk::cuda::probe_read_bandwidth(buf, repetitions, gbps_out, best_pattern, best_pattern_len);

    const int threads = qk::worker_threads();
    const int64_t unit = 64 * 64;  // every thread gets whole 4 KiB units: aligned, divisible by streams
    // Start at the first 64-byte boundary inside the buffer; read whole units only.
    uintptr_t start = ((uintptr_t)buf->data + 63) & ~(uintptr_t)63;
    int64_t usable = qk::numel(buf) * qk::dtype_size(buf->dtype) - (int64_t)(start - (uintptr_t)buf->data);
    int64_t units = usable / unit;
    if (units < threads * 4)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: buffer too small to probe (need at least %lld bytes)", fn,
                      (long long)(threads * 4 * unit + 64));
    const uint8_t* base = (const uint8_t*)start;
    static const Pattern patterns[] = {{"1-stream x8 accumulators", 1}, {"4 interleaved streams", 4},
                                       {"8 interleaved streams", 8}};
    const CpuPath path = qk::cpu_path();
    double best = 0.0;
    const char* best_name = "";
    for (const Pattern& pat : patterns) {
      for (int r = 0; r < repetitions; r++) {
        auto t0 = std::chrono::steady_clock::now();
        qk::parallel_for(units, 4, [&](int64_t u0, int64_t u1) {
          const uint8_t* p = base + u0 * unit;
          int64_t bytes = (u1 - u0) * unit;
          uint64_t v = path == CpuPath::Avx512 ? read_avx512(p, bytes, pat.streams)
                       : path == CpuPath::Avx2 ? read_avx2(p, bytes, pat.streams)
                                               : read_scalar(p, bytes, pat.streams);
          g_sink.fetch_xor(v, std::memory_order_relaxed);
        });
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        double gbps = (double)(units * unit) / s / 1e9;
        if (gbps > best) {
          best = gbps;
          best_name = pat.name;
        }
      }
    }
    *gbps_out = best;
    if (best_pattern && best_pattern_len > 0) {
      std::string name = std::string("cpu ") + qk_cpu_path() + " " + best_name;
      snprintf(best_pattern, (size_t)best_pattern_len, "%s", name.c_str());
    }
    return QK_OK;
  });
}

extern "C" QK_API qk_status qk_probe_fma_peak(int32_t repetitions, double* gflops_out) {
  const char* fn = "qk_probe_fma_peak";
  return qk::guard(fn, [&]() -> qk_status {
    if (!gflops_out) return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: gflops_out is NULL", fn);
    if (repetitions < 1 || repetitions > 1000)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "%s: repetitions must be 1..1000, got %d", fn, repetitions);
    const CpuPath path = qk::cpu_path();
    const int lanes = path == CpuPath::Avx512 ? 16 : path == CpuPath::Avx2 ? 8 : 1;
    // units of ~2-4 ms each, 4 per worker thread: long enough to dwarf the pool's dispatch and a late-waking worker
    const int64_t iters = path == CpuPath::Scalar ? 2000000 : 1000000;
    const int64_t units = 4 * (int64_t)qk::worker_threads();
    double best = 0.0;
    for (int r = 0; r < repetitions; r++) {
      auto t0 = std::chrono::steady_clock::now();
      qk::parallel_for(units, 1, [&](int64_t u0, int64_t u1) {
        for (int64_t u = u0; u < u1; u++) {
          const float v = path == CpuPath::Avx512 ? fma_avx512(iters)
                          : path == CpuPath::Avx2 ? fma_avx2(iters)
                                                  : fma_scalar(iters);
          uint32_t bits;
          memcpy(&bits, &v, sizeof bits);
          g_sink.fetch_xor(bits, std::memory_order_relaxed);
        }
      });
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, (double)units * (double)iters * kFmaChains * lanes * 2 / s / 1e9);
    }
    *gflops_out = best;
    return QK_OK;
  });
}
