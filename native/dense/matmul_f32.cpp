// Dense float32 y = x W^T: the baseline the NF4 matmul is measured against (the same tile
// kernels with the decode step taken out), and a matmul for small dense weights next to NF4
// ones (LoRA adapters). CPU only.
#include <string.h>

#include <algorithm>
#include <vector>

#include "internal.h"
#include "nf4/nf4_matmul_cpu.h"

namespace {

using namespace qk;

const nf4mm::Kernels& kernels() {
  switch (cpu_path()) {
    case CpuPath::Avx512: return nf4mm::avx512_kernels();
    case CpuPath::Avx2: return nf4mm::avx2_kernels();
    default: return nf4mm::scalar_kernels();
  }
}

}  // namespace

extern "C" QK_API qk_status qk_matmul_f32(const qk_tensor* x, const qk_tensor* w, const qk_tensor* y,
                                          qk_stream stream) {
  const char* fn = "qk_matmul_f32";
  return guard(fn, [&]() -> qk_status {
    for (const qk_tensor* t : {x, w, y}) {
      const char* what = t == x ? "x" : t == w ? "w" : "y";
      QK_TRY(check_flat(t, fn, what, {QK_F32}));
      if (t->ndim != 2) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be 2-D, got %d dimensions", fn, what, t->ndim);
    }
    const int64_t m = x->shape[0], k = x->shape[1], n = w->shape[0];
    if (w->shape[1] != k)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: w has %lld columns but x has %lld", fn, (long long)w->shape[1],
                  (long long)k);
    if (y->shape[0] != m || y->shape[1] != n)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: y must have shape [%lld, %lld]", fn, (long long)m, (long long)n);
    QK_TRY(check_same_device(x, w, fn, "x", "w"));
    QK_TRY(check_same_device(x, y, fn, "x", "y"));
    QK_TRY(check_no_overlap(y, x, fn, "y", "x"));
    QK_TRY(check_no_overlap(y, w, fn, "y", "w"));
    QK_TRY(check_stream(stream, x, fn));
    if (x->device_kind == QK_DEVICE_CUDA)
      return fail(QK_ERR_UNSUPPORTED, "%s: CPU tensors only (on CUDA, cuBLAS is the dense baseline)", fn);
    if (m == 0 || n == 0) return QK_OK;
    const nf4mm::Kernels& kern = kernels();
    const float* xs = static_cast<const float*>(x->data);
    const float* ws = static_cast<const float*>(w->data);
    float* ys = static_cast<float*>(y->data);
    const int64_t kmain = k / 64 * 64;  // the tile kernels take multiples of 64; the rest is summed here
    constexpr int64_t kRows = 48, kCols = 1024;
    parallel_for((n + kRows - 1) / kRows, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; b++) {
        const int64_t n0 = b * kRows, rows = std::min(n, n0 + kRows) - n0;
        for (int64_t i = 0; i < m; i++) {
          for (int64_t r = 0; r < rows; r++) {
            float s = 0.0f;
            for (int64_t c = kmain; c < k; c++) s += xs[i * k + c] * ws[(n0 + r) * k + c];
            ys[i * n + n0 + r] = s;
          }
        }
        // W is read in place: its rows serve as the tile (the kernels' permutation does not
        // matter when x and W share the natural order)
        for (int64_t k0 = 0; k0 < kmain; k0 += kCols)
          kern.dot(xs + k0, k, m, ws + n0 * k + k0, k, rows, std::min(kCols, kmain - k0), ys + n0, n);
      }
    });
    return QK_OK;
  });
}
