// NF4 through the C ABI on every CPU path this machine has: scalar, AVX2 and AVX-512 must
// agree bit for bit, and bad descriptors must come back as errors, never as a crash.
#include <math.h>
#include <string.h>

#include <random>
#include <vector>

#include "check.h"
#include "descriptors.h"
#include "qkern.h"

struct Result {
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
  std::vector<uint16_t> bf16;
  std::vector<uint16_t> f16;
  std::vector<float> f32;
};

static Result run(const std::vector<float>& x, int64_t blocksize) {
  int64_t n = (int64_t)x.size(), blocks = (n + blocksize - 1) / blocksize;
  Result r;
  r.packed.assign((size_t)(n + 1) / 2, 0xAB);
  r.absmax.assign((size_t)blocks, nanf(""));
  qk_tensor tx = flat((void*)x.data(), QK_F32, n, 4), tp = flat(r.packed.data(), QK_U8, (n + 1) / 2, 1),
            ta = flat(r.absmax.data(), QK_F32, blocks, 4);
  int64_t bad = 123;
  CHECK(qk_nf4_quantize(&tx, blocksize, &tp, &ta, &bad, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(bad == -1, "bad=%lld", (long long)bad);
  r.f32.assign((size_t)n, nanf(""));
  r.bf16.assign((size_t)n, 0xFFFF);
  r.f16.assign((size_t)n, 0xFFFF);
  qk_tensor o32 = flat(r.f32.data(), QK_F32, n, 4), obf = flat(r.bf16.data(), QK_BF16, n, 2),
            of16 = flat(r.f16.data(), QK_F16, n, 2);
  CHECK(qk_nf4_dequantize(&tp, &ta, blocksize, &o32, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(qk_nf4_dequantize(&tp, &ta, blocksize, &obf, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(qk_nf4_dequantize(&tp, &ta, blocksize, &of16, NULL) == QK_OK, "%s", qk_last_error());
  return r;
}

static void bad_arguments() {
  float x[64] = {0};
  uint8_t p[32];
  float a[1];
  qk_tensor tx = flat(x, QK_F32, 64, 4), tp = flat(p, QK_U8, 32, 1), ta = flat(a, QK_F32, 1, 4);
  CHECK(qk_nf4_quantize(NULL, 64, &tp, &ta, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "null x");
  CHECK(strstr(qk_last_error(), "x is NULL") != NULL, "%s", qk_last_error());
  CHECK(qk_nf4_quantize(&tx, 48, &tp, &ta, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "blocksize 48");
  CHECK(strstr(qk_last_error(), "blocksize 48") != NULL, "%s", qk_last_error());
  qk_tensor small = tp;
  small.nbytes = 31;
  CHECK(qk_nf4_quantize(&tx, 64, &small, &ta, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "short buffer");
  CHECK(strstr(qk_last_error(), "needs 32 bytes") != NULL, "%s", qk_last_error());
  qk_tensor neg = tx;
  neg.shape[0] = -5;
  CHECK(qk_nf4_quantize(&neg, 64, &tp, &ta, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "negative shape");
  qk_tensor huge = tx;
  huge.ndim = 2;
  huge.shape[0] = INT64_MAX / 2;
  huge.shape[1] = 4;
  huge.strides[0] = 4;
  huge.strides[1] = 1;
  CHECK(qk_nf4_quantize(&huge, 64, &tp, &ta, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "overflow");
  qk_tensor wrongdt = tx;
  wrongdt.dtype = QK_I32;
  CHECK(qk_nf4_quantize(&wrongdt, 64, &tp, &ta, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "dtype");
  CHECK(strstr(qk_last_error(), "dtype I32") != NULL, "%s", qk_last_error());
  qk_tensor alias = flat(x, QK_U8, 32, 1);
  CHECK(qk_nf4_quantize(&tx, 64, &alias, &ta, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "overlap");
  qk_tensor gpu = tx;
  gpu.device_kind = QK_DEVICE_CUDA;
  qk_status st = qk_nf4_quantize(&gpu, 64, &tp, &ta, NULL, NULL);
  CHECK(st == QK_ERR_BACKEND_UNAVAILABLE || st == QK_ERR_INVALID_ARGUMENT, "cuda tensor on cpu: %d", st);
  x[17] = INFINITY;
  int64_t bad = 0;
  CHECK(qk_nf4_quantize(&tx, 64, &tp, &ta, &bad, NULL) == QK_ERR_NON_FINITE, "inf");
  CHECK(bad == 17, "bad=%lld", (long long)bad);
  CHECK(strstr(qk_last_error(), "element 17 is +Inf") != NULL, "%s", qk_last_error());
  CHECK(qk_cpu_set_path("avx9000") == QK_ERR_INVALID_ARGUMENT, "unknown path");
}

int main() {
  std::mt19937_64 rng(12345);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const char* paths[] = {"scalar", "avx2", "avx512"};
  const int64_t sizes[] = {1, 2, 31, 33, 64, 1000, 4097, 65537, 300001};
  const int64_t blocksizes[] = {32, 64, 256, 4096};
  for (int64_t n : sizes)
    for (int64_t bs : blocksizes) {
      std::vector<float> x((size_t)n);
      for (auto& v : x) v = normal(rng) * 0.02f;
      if (n > 40) {
        for (int i = 0; i < 32; i++) x[(size_t)i] = 0.0f;  // an all-zero block for bs=32
        x[(size_t)n / 2] = -0.0f;
      }
      Result ref;
      bool have_ref = false;
      for (const char* path : paths) {
        if (qk_cpu_set_path(path) != QK_OK) {
          printf("skip path %s: %s\n", path, qk_last_error());
          continue;
        }
        Result r = run(x, bs);
        if (!have_ref) {
          ref = r;
          have_ref = true;
          continue;
        }
        CHECK(r.packed == ref.packed, "packed differs on %s n=%lld bs=%lld", path, (long long)n, (long long)bs);
        CHECK(memcmp(r.absmax.data(), ref.absmax.data(), r.absmax.size() * 4) == 0, "absmax differs on %s", path);
        CHECK(memcmp(r.f32.data(), ref.f32.data(), r.f32.size() * 4) == 0, "f32 differs on %s n=%lld", path, (long long)n);
        CHECK(r.bf16 == ref.bf16, "bf16 differs on %s n=%lld", path, (long long)n);
        CHECK(r.f16 == ref.f16, "f16 differs on %s n=%lld", path, (long long)n);
      }
      if (n > 40 && bs == 32) CHECK(ref.f32[0] == 0.0f && !signbit(ref.f32[0]), "zero block decodes to +0");
    }
  qk_cpu_set_path("auto");
  bad_arguments();
  TEST_MAIN_END();
}
