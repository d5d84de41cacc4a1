// NF4 matmul through the C ABI on every CPU path this machine has, against a float64
// reference over the dequantized weights: forward (GEMV and tiled paths, aligned and
// unaligned shapes, bias) and the input gradient. Also bad arguments.
//
// Tolerance: the kernels sum float32 products in blocked orders; rounding errors of a sum of
// K terms grow like a random walk, so |y - ref| <= 4 sqrt(K) u sum_k |x_k W_k| (u = 2^-24)
// holds with a wide margin, while one dropped or doubled term (about sum/K) breaks it.
#include <math.h>
#include <string.h>

#include <random>
#include <vector>

#include "check.h"
#include "descriptors.h"
#include "qkern.h"

struct Nf4Matrix {
  int64_t n, k, blocksize;
  std::vector<uint8_t> packed;
  std::vector<float> absmax, dense;  // dense: the dequantized weights, [n, k]
};

static Nf4Matrix make_matrix(int64_t n, int64_t k, int64_t blocksize, std::mt19937& rng) {
  Nf4Matrix w{n, k, blocksize, {}, {}, {}};
  const int64_t e = n * k;
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> src((size_t)e);
  for (auto& v : src) v = normal(rng);
  w.packed.assign((size_t)(e + 1) / 2, 0);
  w.absmax.assign((size_t)((e + blocksize - 1) / blocksize), 0.0f);
  w.dense.assign((size_t)e, 0.0f);
  qk_tensor ts = tensor(src.data(), QK_F32, 4, {e}), tp = tensor(w.packed.data(), QK_U8, 1, {(e + 1) / 2}),
            ta = tensor(w.absmax.data(), QK_F32, 4, {(int64_t)w.absmax.size()}),
            td = tensor(w.dense.data(), QK_F32, 4, {e});
  CHECK(qk_nf4_quantize(&ts, blocksize, &tp, &ta, NULL, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(qk_nf4_dequantize(&tp, &ta, blocksize, &td, NULL) == QK_OK, "%s", qk_last_error());
  return w;
}

static bool close(float got, double ref, double magnitude, int64_t terms) {
  const double tol = 4.0 * sqrt((double)terms + 1.0) * ldexp(1.0, -24) * magnitude + 1e-30;
  return fabs((double)got - ref) <= tol;
}

static void forward(const Nf4Matrix& w, int64_t m, bool with_bias, std::mt19937& rng, const char* path) {
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x((size_t)(m * w.k)), bias((size_t)w.n), y((size_t)(m * w.n), nanf(""));
  for (auto& v : x) v = uni(rng);
  for (auto& v : bias) v = uni(rng);
  qk_tensor tx = tensor(x.data(), QK_F32, 4, {m, w.k}), ty = tensor(y.data(), QK_F32, 4, {m, w.n}),
            tb = tensor(bias.data(), QK_F32, 4, {w.n});
  qk_tensor tp = tensor((void*)w.packed.data(), QK_U8, 1, {(int64_t)w.packed.size()}),
            ta = tensor((void*)w.absmax.data(), QK_F32, 4, {(int64_t)w.absmax.size()});
  qk_status st = qk_nf4_matmul(&tx, &tp, &ta, w.blocksize, with_bias ? &tb : NULL, &ty, NULL);
  CHECK(st == QK_OK, "%s", qk_last_error());
  int bad = 0;
  for (int64_t i = 0; i < m; i++)
    for (int64_t r = 0; r < w.n; r++) {
      double ref = with_bias ? bias[r] : 0.0, mag = with_bias ? fabs(bias[r]) : 0.0;
      for (int64_t c = 0; c < w.k; c++) {
        const double p = (double)x[i * w.k + c] * w.dense[r * w.k + c];
        ref += p;
        mag += fabs(p);
      }
      if (!close(y[i * w.n + r], ref, mag, w.k + 1) && bad++ < 3)
        CHECK(false, "%s forward n=%lld k=%lld bs=%lld m=%lld y[%lld,%lld]=%.9g ref=%.9g", path, (long long)w.n,
              (long long)w.k, (long long)w.blocksize, (long long)m, (long long)i, (long long)r, y[i * w.n + r], ref);
    }
}

static void input_grad(const Nf4Matrix& w, int64_t m, std::mt19937& rng, const char* path) {
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> dy((size_t)(m * w.n)), dx((size_t)(m * w.k), nanf(""));
  for (auto& v : dy) v = uni(rng);
  qk_tensor tdy = tensor(dy.data(), QK_F32, 4, {m, w.n}), tdx = tensor(dx.data(), QK_F32, 4, {m, w.k});
  qk_tensor tp = tensor((void*)w.packed.data(), QK_U8, 1, {(int64_t)w.packed.size()}),
            ta = tensor((void*)w.absmax.data(), QK_F32, 4, {(int64_t)w.absmax.size()});
  CHECK(qk_nf4_matmul_input_grad(&tdy, &tp, &ta, w.blocksize, &tdx, NULL) == QK_OK, "%s", qk_last_error());
  int bad = 0;
  for (int64_t i = 0; i < m; i++)
    for (int64_t c = 0; c < w.k; c++) {
      double ref = 0.0, mag = 0.0;
      for (int64_t r = 0; r < w.n; r++) {
        const double p = (double)dy[i * w.n + r] * w.dense[r * w.k + c];
        ref += p;
        mag += fabs(p);
      }
      if (!close(dx[i * w.k + c], ref, mag, w.n) && bad++ < 3)
        CHECK(false, "%s input_grad n=%lld k=%lld bs=%lld m=%lld dx[%lld,%lld]=%.9g ref=%.9g", path, (long long)w.n,
              (long long)w.k, (long long)w.blocksize, (long long)m, (long long)i, (long long)c, dx[i * w.k + c], ref);
    }
}

static void dense_baseline(int64_t m, int64_t n, int64_t k, std::mt19937& rng) {
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> x((size_t)(m * k)), w((size_t)(n * k)), y((size_t)(m * n), nanf(""));
  for (auto& v : x) v = uni(rng);
  for (auto& v : w) v = uni(rng);
  qk_tensor tx = tensor(x.data(), QK_F32, 4, {m, k}), tw = tensor(w.data(), QK_F32, 4, {n, k}),
            ty = tensor(y.data(), QK_F32, 4, {m, n});
  CHECK(qk_matmul_f32(&tx, &tw, &ty, NULL) == QK_OK, "%s", qk_last_error());
  for (int64_t i = 0; i < m; i++)
    for (int64_t r = 0; r < n; r++) {
      double ref = 0, mag = 0;
      for (int64_t c = 0; c < k; c++) {
        ref += (double)x[i * k + c] * w[r * k + c];
        mag += fabs((double)x[i * k + c] * w[r * k + c]);
      }
      CHECK(close(y[i * n + r], ref, mag, k), "dense m=%lld n=%lld k=%lld y[%lld,%lld]=%.9g ref=%.9g", (long long)m,
            (long long)n, (long long)k, (long long)i, (long long)r, y[i * n + r], ref);
    }
}

static void bad_arguments() {
  float x[2 * 64] = {0}, y[2 * 3];
  uint8_t p[96];
  float a[3];
  qk_tensor tx = tensor(x, QK_F32, 4, {2, 64}), ty = tensor(y, QK_F32, 4, {2, 3}), tp = tensor(p, QK_U8, 1, {96}),
            ta = tensor(a, QK_F32, 4, {3});
  CHECK(qk_nf4_matmul(&tx, &tp, &ta, 64, NULL, &ty, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(qk_nf4_matmul(&tx, &tp, &ta, 48, NULL, &ty, NULL) == QK_ERR_INVALID_ARGUMENT, "blocksize 48");
  qk_tensor short_p = tensor(p, QK_U8, 1, {95});
  CHECK(qk_nf4_matmul(&tx, &short_p, &ta, 64, NULL, &ty, NULL) == QK_ERR_INVALID_ARGUMENT, "packed too short");
  CHECK(strstr(qk_last_error(), "packed has 95 bytes") != NULL, "%s", qk_last_error());
  qk_tensor y_rows = tensor(y, QK_F32, 4, {3, 2});
  CHECK(qk_nf4_matmul(&tx, &tp, &ta, 64, NULL, &y_rows, NULL) == QK_ERR_INVALID_ARGUMENT, "row mismatch");
  qk_tensor bias = tensor(a, QK_F32, 4, {2});
  CHECK(qk_nf4_matmul(&tx, &tp, &ta, 64, &bias, &ty, NULL) == QK_ERR_INVALID_ARGUMENT, "bias length");
  qk_tensor y_over_x = tensor(x, QK_F32, 4, {2, 3});
  CHECK(qk_nf4_matmul(&tx, &tp, &ta, 64, NULL, &y_over_x, NULL) == QK_ERR_INVALID_ARGUMENT, "overlap");
  qk_tensor y16 = tensor(y, QK_F16, 2, {2, 3});
  CHECK(qk_nf4_matmul(&tx, &tp, &ta, 64, NULL, &y16, NULL) == QK_ERR_INVALID_ARGUMENT, "F16 y for F32 x");
  CHECK(qk_nf4_matmul(NULL, &tp, &ta, 64, NULL, &ty, NULL) == QK_ERR_INVALID_ARGUMENT, "null x");
  qk_tensor dx = tensor(x, QK_F32, 4, {2, 63});
  CHECK(qk_nf4_matmul_input_grad(&ty, &tp, &ta, 64, &dx, NULL) == QK_ERR_INVALID_ARGUMENT, "dx columns");
}

int main() {
  std::mt19937 rng(20261121);
  const char* paths[] = {"scalar", "avx2", "avx512"};
  const char* before = qk_cpu_path();
  char saved[32];
  snprintf(saved, sizeof saved, "%s", before);
  struct Shape {
    int64_t n, k, blocksize;
  } shapes[] = {{7, 64, 64}, {37, 256, 64}, {50, 320, 128}, {33, 200, 64}, {19, 77, 32}, {5, 1, 64},
                {96, 512, 32}, {13, 130, 256}, {3, 4096, 4096}, {37, 8256, 128}};
  const int64_t ms[] = {1, 3, 16, 17, 40};
  for (const char* path : paths) {
    if (qk_cpu_set_path(path) != QK_OK) continue;
    for (const Shape& s : shapes) {
      Nf4Matrix w = make_matrix(s.n, s.k, s.blocksize, rng);
      for (int64_t m : ms) {
        forward(w, m, m % 2 == 1, rng, path);
        input_grad(w, m, rng, path);
      }
    }
    dense_baseline(1, 50, 64, rng);
    dense_baseline(5, 7, 1100, rng);
    dense_baseline(17, 97, 130, rng);
    printf("%s: ok so far (%d failures)\n", path, g_failures);
  }
  qk_cpu_set_path(saved);
  bad_arguments();
  TEST_MAIN_END();
}
