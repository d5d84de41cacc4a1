// NF4 matmul ABI entry points: argument checks, then the CPU kernels (nf4_matmul_cpu.h) split
// over the worker pool, or the CUDA backend.
//
// CPU plan. The activations are converted once to float32 in the kernel table's permuted
// layout (xq, k padded to a multiple of 64 with zeros). Then:
//  - forward, m <= 8 (kGemvMaxRows), aligned shapes (k % 64 == 0, blocksize >= 64): the fused GEMV streams
//    each packed row once for all m rows; threads split the output columns;
//  - everything else: per block of 48 weight rows, 256-column tiles of W are decoded into a
//    float32 tile that stays in L2 and multiplied by every activation row (forward: dot
//    micro-kernel; input gradient: axpy micro-kernel, threads split k for many rows and bands
//    of W rows with partial sums for few). Unaligned shapes
//    (k % 64 != 0, odd k, blocksize 32) decode tiles with the portable decoder below.
// Every output element is summed by one thread in a fixed order: results do not depend on
// the thread count.
#include <string.h>

#include <algorithm>
#include <vector>

#include "common/nf4.h"
#include "internal.h"
#include "nf4/nf4_matmul_cpu.h"
#include "nf4/nf4_matmul_cuda.h"

namespace {

using namespace qk;

constexpr int64_t kTileRows = 48;   // weight rows per decoded tile (a multiple of the dot kernel's 3)
constexpr int64_t kTileCols = 256;  // columns per tile: 48 x 256 floats = 48 KiB, L2-resident
constexpr int64_t kTileLd = kTileCols + 16;
constexpr int64_t kBandRows = 10 * kTileRows;
// GEMV columns per pass. Whole rows stream the weights as one sequential read, which the
// hardware prefetcher follows; walking k in chunks over a band of rows turns it into many short
// strided streams and measured ~1.3x slower (4096x11008, one core). So rows are split only when
// the m activation rows would not stay in L2 (kGemvActivationBytes), and then into chunks that do.
constexpr int64_t kGemvActivationBytes = 192 << 10;
constexpr int64_t kGemvMinChunk = 4096;
int64_t gemv_chunk(int64_t m) {
  return std::max(kGemvMinChunk, kGemvActivationBytes / (4 * std::max<int64_t>(m, 1)) / 64 * 64);
}
constexpr int64_t kGemvBand = 32;  // GEMV rows per band when rows are longer than a chunk
constexpr float kTable[16] = QK_NF4_TABLE;

const nf4mm::Kernels& kernels() {
  switch (cpu_path()) {
    case CpuPath::Avx512: return nf4mm::avx512_kernels();
    case CpuPath::Avx2: return nf4mm::avx2_kernels();
    default: return nf4mm::scalar_kernels();
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }
int64_t round_up64(int64_t v) { return ceil_div(v, 64) * 64; }

float load_f32(const void* p, int32_t dtype, int64_t i) {
  if (dtype == QK_F16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  if (dtype == QK_BF16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return static_cast<const float*>(p)[i];
}

void store_from_f32(void* p, int32_t dtype, int64_t i, float v) {
  if (dtype == QK_F16) static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  else if (dtype == QK_BF16) static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  else static_cast<float*>(p)[i] = v;
}

// rows x cols (row-major, any float dtype) -> rows x kp float32, each 64-chunk permuted.
std::vector<float> to_permuted(const void* src, int32_t dtype, int64_t rows, int64_t cols, int64_t kp,
                               const int* perm64) {
  std::vector<float> out((size_t)(rows * kp));
  parallel_for(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(kp, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      float* dst = out.data() + r * kp;
      for (int64_t c = 0; c < kp; c += 64)
        for (int q = 0; q < 64; q++) {
          const int64_t col = c + perm64[q];
          dst[c + q] = col < cols ? load_f32(src, dtype, r * cols + col) : 0.0f;
        }
    }
  });
  return out;
}

// W rows [n0, n1), columns [k0, k0 + klen) into a permuted tile, for any shape: rows may
// start mid-byte and blocks may straddle rows. Columns >= k decode as 0.
void decode_any(const uint8_t* packed, const float* absmax, int64_t k, int64_t blocksize, int64_t n0, int64_t n1,
                int64_t k0, int64_t klen, const int* perm64, float* tile, int64_t ldt) {
  for (int64_t row = n0; row < n1; row++) {
    float* dst = tile + (row - n0) * ldt;
    for (int64_t c = 0; c < klen; c += 64)
      for (int q = 0; q < 64; q++) {
        const int64_t col = k0 + c + perm64[q];
        float v = 0.0f;
        if (col < k) {
          const int64_t i = row * k + col;
          const uint8_t byte = packed[i >> 1];
          v = kTable[(i & 1) ? (byte & 15) : (byte >> 4)] * absmax[i >> nf4mm::block_shift(blocksize)];
        }
        dst[c + q] = v;
      }
  }
}

struct Weights {
  const uint8_t* packed;
  const float* absmax;
  int64_t n, k, kp, blocksize;
  bool aligned;

  void decode(const nf4mm::Kernels& kern, int64_t n0, int64_t n1, int64_t k0, int64_t klen, float* tile) const {
    if (aligned) kern.decode(packed, absmax, k, blocksize, n0, n1, k0, klen, tile, kTileLd);
    else decode_any(packed, absmax, k, blocksize, n0, n1, k0, klen, kern.perm64, tile, kTileLd);
  }
};

qk_status check_2d(const qk_tensor* t, const char* fn, const char* what, std::initializer_list<int32_t> dtypes) {
  QK_TRY(check_flat(t, fn, what, dtypes));
  if (t->ndim != 2) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be 2-D, got %d dimensions", fn, what, t->ndim);
  return QK_OK;
}

// packed / absmax / blocksize for an NF4 matrix of n x k elements on `like`'s device.
qk_status check_weights(const qk_tensor* packed, const qk_tensor* absmax, int64_t blocksize, int64_t n, int64_t k,
                        const qk_tensor* like, const char* fn) {
  if (!nf4::valid_blocksize(blocksize))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: blocksize %lld is invalid (a power of two in %d..%d)", fn,
                (long long)blocksize, nf4::kMinBlocksize, nf4::kMaxBlocksize);
  if (k > 0 && n > INT64_MAX / k)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: the weight shape [%lld, %lld] overflows", fn, (long long)n, (long long)k);
  const int64_t elements = n * k;
  QK_TRY(check_flat(packed, fn, "packed", {QK_U8}));
  if (numel(packed) != ceil_div(elements, 2))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: packed has %lld bytes but a [%lld, %lld] NF4 weight needs %lld", fn,
                (long long)numel(packed), (long long)n, (long long)k, (long long)ceil_div(elements, 2));
  QK_TRY(check_flat(absmax, fn, "absmax", {QK_F32}));
  if (numel(absmax) != ceil_div(elements, blocksize))
    return fail(QK_ERR_INVALID_ARGUMENT,
                "%s: absmax has %lld values but a [%lld, %lld] weight in blocks of %lld needs %lld "
                "(decode double-quantized absmax first)",
                fn, (long long)numel(absmax), (long long)n, (long long)k, (long long)blocksize,
                (long long)ceil_div(elements, blocksize));
  QK_TRY(check_same_device(like, packed, fn, "the activations", "packed"));
  QK_TRY(check_same_device(like, absmax, fn, "the activations", "absmax"));
  return QK_OK;
}

qk_status check_output(const qk_tensor* out, const char* out_name, const qk_tensor* in, const char* in_name,
                       const qk_tensor* packed, const qk_tensor* absmax, const char* fn) {
  QK_TRY(check_same_device(in, out, fn, in_name, out_name));
  QK_TRY(check_no_overlap(out, in, fn, out_name, in_name));
  QK_TRY(check_no_overlap(out, packed, fn, out_name, "packed"));
  QK_TRY(check_no_overlap(out, absmax, fn, out_name, "absmax"));
  if (out->dtype != QK_F32 && out->dtype != in->dtype)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be F32 or %s's dtype (%s), got %s", fn, out_name, in_name,
                dtype_name(in->dtype), dtype_name(out->dtype));
  return QK_OK;
}

void forward_cpu(const qk_tensor* x, const Weights& w, const qk_tensor* bias, const qk_tensor* y) {
  const nf4mm::Kernels& kern = kernels();
  const int64_t m = x->shape[0], n = w.n;
  std::vector<float> xq = to_permuted(x->data, x->dtype, m, w.k, w.kp, kern.perm64);
  std::vector<float> scratch;
  float* acc = static_cast<float*>(y->data);
  if (y->dtype != QK_F32) {
    scratch.resize((size_t)(m * n));
    acc = scratch.data();
  }
  if (m <= nf4mm::kGemvMaxRows && w.aligned) {
    const int64_t chunk = gemv_chunk(m);
    if (w.k <= chunk) {
      parallel_for(n, std::max<int64_t>(1, 32768 / std::max<int64_t>(w.k, 1)), [&](int64_t n0, int64_t n1) {
        kern.gemv(w.packed, w.absmax, w.k, w.blocksize, n0, n1, 0, w.k, xq.data(), w.kp, m, acc + n0, n);
      });
    } else {
      // Rows longer than gemv_chunk(m): the m activation rows would not stay in L2 across a row,
      // so bands of rows walk k in chunks that do and add the chunk sums in chunk order.
      parallel_for(n, kGemvBand, [&](int64_t n0, int64_t n1) {
        std::vector<float> part((size_t)(m * kGemvBand));
        for (int64_t b0 = n0; b0 < n1; b0 += kGemvBand) {
          const int64_t b1 = std::min(n1, b0 + kGemvBand);
          for (int64_t k0 = 0; k0 < w.k; k0 += chunk) {
            const int64_t klen = std::min(chunk, w.k - k0);
            kern.gemv(w.packed, w.absmax, w.k, w.blocksize, b0, b1, k0, klen, xq.data() + k0, w.kp, m, part.data(),
                      kGemvBand);
            for (int64_t i = 0; i < m; i++)
              for (int64_t r = b0; r < b1; r++)
                acc[i * n + r] = (k0 == 0 ? 0.0f : acc[i * n + r]) + part[(size_t)(i * kGemvBand + (r - b0))];
          }
        }
      });
    }
  } else {
    parallel_for(ceil_div(n, kTileRows), 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> tile((size_t)(kTileRows * kTileLd));
      for (int64_t b = b0; b < b1; b++) {
        const int64_t n0 = b * kTileRows, n1 = std::min(n, n0 + kTileRows);
        for (int64_t i = 0; i < m; i++) memset(acc + i * n + n0, 0, sizeof(float) * (size_t)(n1 - n0));
        for (int64_t k0 = 0; k0 < w.kp; k0 += kTileCols) {
          const int64_t klen = std::min(kTileCols, w.kp - k0);
          w.decode(kern, n0, n1, k0, klen, tile.data());
          kern.dot(xq.data() + k0, w.kp, m, tile.data(), kTileLd, n1 - n0, klen, acc + n0, n);
        }
      }
    });
  }
  if (bias != nullptr || y->dtype != QK_F32) {
    parallel_for(m * n, 1 << 16, [&](int64_t e0, int64_t e1) {
      for (int64_t e = e0; e < e1; e++) {
        float v = acc[e];
        if (bias != nullptr) v += load_f32(bias->data, bias->dtype, e % n);
        store_from_f32(y->data, y->dtype, e, v);
      }
    });
  }
}

void input_grad_cpu(const qk_tensor* dy, const Weights& w, const qk_tensor* dx) {
  const nf4mm::Kernels& kern = kernels();
  const int64_t m = dy->shape[0], n = w.n, k = w.k, kp = w.kp;
  std::vector<float> dy32;
  const float* g = static_cast<const float*>(dy->data);
  if (dy->dtype != QK_F32) {
    dy32.resize((size_t)(m * n));
    for (int64_t e = 0; e < m * n; e++) dy32[e] = load_f32(dy->data, dy->dtype, e);
    g = dy32.data();
  }
  std::vector<float> accq((size_t)(m * kp), 0.0f);
  if (m <= nf4mm::kInputGradFewRows) {
    // Few rows: stream W in bands of whole rows (sequential reads, few pages), each band
    // summing into its own partial dx; the partials are added in band order, so the result
    // does not depend on the thread count. (A k-split would read every row in 128-byte
    // pieces per pass: TLB- and DRAM-page-bound.)
    const int64_t bands = ceil_div(n, kBandRows);
    std::vector<float> partial((size_t)(bands * m * kp), 0.0f);
    parallel_for(bands, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> tile((size_t)(kTileRows * kTileLd));
      for (int64_t b = b0; b < b1; b++) {
        float* acc = partial.data() + b * m * kp;
        for (int64_t n0 = b * kBandRows; n0 < std::min(n, (b + 1) * kBandRows); n0 += kTileRows) {
          const int64_t n1 = std::min({n, n0 + kTileRows, (b + 1) * kBandRows});
          for (int64_t k0 = 0; k0 < kp; k0 += kTileCols) {
            const int64_t klen = std::min(kTileCols, kp - k0);
            w.decode(kern, n0, n1, k0, klen, tile.data());
            kern.axpy(g + n0, n, m, tile.data(), kTileLd, n1 - n0, klen, acc + k0, kp);
          }
        }
      }
    });
    parallel_for(m * kp, 1 << 14, [&](int64_t e0, int64_t e1) {
      for (int64_t b = 0; b < bands; b++) {
        const float* p = partial.data() + b * m * kp;
        for (int64_t e = e0; e < e1; e++) accq[e] += p[e];
      }
    });
  } else {
    // Many rows: threads split k; each decoded tile serves all m rows, so the strided reads of W
    // are amortized over enough arithmetic.
    parallel_for(ceil_div(kp, kTileCols), 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> tile((size_t)(kTileRows * kTileLd));
      for (int64_t t = t0; t < t1; t++) {
        const int64_t k0 = t * kTileCols, klen = std::min(kTileCols, kp - k0);
        for (int64_t n0 = 0; n0 < n; n0 += kTileRows) {
          const int64_t n1 = std::min(n, n0 + kTileRows);
          w.decode(kern, n0, n1, k0, klen, tile.data());
          kern.axpy(g + n0, n, m, tile.data(), kTileLd, n1 - n0, klen, accq.data() + k0, kp);
        }
      }
    });
  }
  int inverse[64];
  for (int q = 0; q < 64; q++) inverse[kern.perm64[q]] = q;
  parallel_for(m, std::max<int64_t>(1, 16384 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t col = 0; col < k; col++)
        store_from_f32(dx->data, dx->dtype, r * k + col, accq[r * kp + (col & ~63) + inverse[col & 63]]);
  });
}

}  // namespace

extern "C" {

QK_API qk_status qk_nf4_matmul(const qk_tensor* x, const qk_tensor* packed, const qk_tensor* absmax,
                               int64_t blocksize, const qk_tensor* bias, const qk_tensor* y, qk_stream stream) {
  const char* fn = "qk_nf4_matmul";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_2d(x, fn, "x", {QK_F32, QK_F16, QK_BF16}));
    QK_TRY(check_2d(y, fn, "y", {QK_F32, QK_F16, QK_BF16}));
    const int64_t m = x->shape[0], k = x->shape[1], n = y->shape[1];
    if (y->shape[0] != m)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: y has %lld rows but x has %lld", fn, (long long)y->shape[0],
                  (long long)m);
    QK_TRY(check_weights(packed, absmax, blocksize, n, k, x, fn));
    QK_TRY(check_output(y, "y", x, "x", packed, absmax, fn));
    if (bias != nullptr) {
      QK_TRY(check_tensor(bias, fn, "bias"));
      QK_TRY(check_contiguous(bias, fn, "bias"));
      if (bias->dtype != QK_F32 && bias->dtype != x->dtype)
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: bias must be F32 or x's dtype (%s), got %s", fn,
                    dtype_name(x->dtype), dtype_name(bias->dtype));
      if (bias->ndim != 1 || bias->shape[0] != n)
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: bias must have shape [%lld] (y's columns)", fn, (long long)n);
      QK_TRY(check_same_device(x, bias, fn, "x", "bias"));
      QK_TRY(check_no_overlap(y, bias, fn, "y", "bias"));
    }
    QK_TRY(check_stream(stream, x, fn));
    if (m == 0 || n == 0) return QK_OK;
    if (x->device_kind == QK_DEVICE_CUDA) return cuda::nf4_matmul(x, packed, absmax, blocksize, bias, y, stream);
    Weights w{static_cast<const uint8_t*>(packed->data), static_cast<const float*>(absmax->data), n, k,
              round_up64(k), blocksize, nf4mm::aligned(k, blocksize)};
    forward_cpu(x, w, bias, y);
    return QK_OK;
  });
}

QK_API qk_status qk_nf4_matmul_input_grad(const qk_tensor* dy, const qk_tensor* packed, const qk_tensor* absmax,
                                          int64_t blocksize, const qk_tensor* dx, qk_stream stream) {
  const char* fn = "qk_nf4_matmul_input_grad";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_2d(dy, fn, "dy", {QK_F32, QK_F16, QK_BF16}));
    QK_TRY(check_2d(dx, fn, "dx", {QK_F32, QK_F16, QK_BF16}));
    const int64_t m = dy->shape[0], n = dy->shape[1], k = dx->shape[1];
    if (dx->shape[0] != m)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: dx has %lld rows but dy has %lld", fn, (long long)dx->shape[0],
                  (long long)m);
    QK_TRY(check_weights(packed, absmax, blocksize, n, k, dy, fn));
    QK_TRY(check_output(dx, "dx", dy, "dy", packed, absmax, fn));
    QK_TRY(check_stream(stream, dy, fn));
    if (m == 0 || k == 0) return QK_OK;
    if (dy->device_kind == QK_DEVICE_CUDA)
      return cuda::nf4_matmul_input_grad(dy, packed, absmax, blocksize, dx, stream);
    Weights w{static_cast<const uint8_t*>(packed->data), static_cast<const float*>(absmax->data), n, k,
              round_up64(k), blocksize, nf4mm::aligned(k, blocksize)};
    input_grad_cpu(dy, w, dx);
    return QK_OK;
  });
}

QK_API const char* qk_nf4_matmul_path(int64_t m, int32_t device_kind, int32_t input_grad) {
  if (device_kind == QK_DEVICE_CUDA) return cuda::nf4_matmul_path(m, input_grad != 0);
  const bool gemv = input_grad == 0 && m <= nf4mm::kGemvMaxRows;
  switch (cpu_path()) {
    case CpuPath::Avx512: return gemv ? "cpu-avx512-gemv" : "cpu-avx512-tiled";
    case CpuPath::Avx2: return gemv ? "cpu-avx2-gemv" : "cpu-avx2-tiled";
    default: return gemv ? "cpu-scalar-gemv" : "cpu-scalar-tiled";
  }
}

}  // extern "C"
