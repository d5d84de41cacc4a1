/* Dequantize NF4 weights (bitsandbytes layout) and pick the largest with libqkern from C. */
#include <stdio.h>
#include <string.h>

#include <qkern.h>

/* The 16 NF4 values (the format's definition), to check qkern's output exactly. */
static const float kNf4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

/* A contiguous 1-D host tensor over caller memory. */
static qk_tensor host_vector(void* data, int32_t dtype, int64_t count, int64_t element_bytes) {
  qk_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.nbytes = count * element_bytes;
  t.dtype = dtype;
  t.device_kind = QK_DEVICE_CPU;
  t.ndim = 1;
  t.shape[0] = count;
  t.strides[0] = 1;
  return t;
}

enum { N = 64, BLOCK = 32 };

int main(void) {
  if (qk_abi_version() != QK_ABI_VERSION) {
    fprintf(stderr, "libqkern has ABI %d, this program was built for %d\n", qk_abi_version(), QK_ABI_VERSION);
    return 1;
  }
  /* Two elements per byte, the first in the high nibble; one F32 absmax per block of 32. */
  unsigned char packed[N / 2];
  for (int i = 0; i < N / 2; i++) packed[i] = (unsigned char)(((2 * i) % 16) << 4 | (2 * i + 1) % 16);
  float absmax[N / BLOCK] = {2.0f, 0.5f};
  float out[N];

  qk_tensor p = host_vector(packed, QK_U8, N / 2, 1);
  qk_tensor a = host_vector(absmax, QK_F32, N / BLOCK, 4);
  qk_tensor o = host_vector(out, QK_F32, N, 4);
  if (qk_nf4_dequantize(&p, &a, BLOCK, &o, NULL) != QK_OK) {
    fprintf(stderr, "qk_nf4_dequantize: %s\n", qk_last_error());
    return 1;
  }
  for (int i = 0; i < N; i++) {
    float expected = kNf4[i % 16] * absmax[i / BLOCK];
    if (out[i] != expected) {
      fprintf(stderr, "element %d: got %.9g, expected %.9g\n", i, out[i], expected);
      return 1;
    }
  }
  printf("qkern %s, cpu path %s: %d NF4 values dequantized exactly\n", qk_version_string(), qk_cpu_path(), N);

  /* The K values of largest magnitude, in ascending index order (equal magnitudes: lower index first). */
  enum { K = 5 };
  int64_t top[K];
  qk_tensor idx = host_vector(top, QK_I64, K, 8);
  if (qk_topk(&o, K, QK_TOPK_MAGNITUDE, 0, &idx, NULL, NULL, NULL) != QK_OK) {
    fprintf(stderr, "qk_topk: %s\n", qk_last_error());
    return 1;
  }
  /* Check: exactly K elements beat or tie each pick's rank, found by counting. */
  for (int j = 0; j < K; j++) {
    int64_t i = top[j];
    float m = out[i] < 0 ? -out[i] : out[i];
    int ahead = 0;
    for (int e = 0; e < N; e++) {
      float me = out[e] < 0 ? -out[e] : out[e];
      if (me > m || (me == m && e < i)) ahead++;
    }
    if (ahead >= K || (j > 0 && top[j - 1] >= i)) {
      fprintf(stderr, "top-k pick %d (index %lld) is wrong\n", j, (long long)i);
      return 1;
    }
  }
  printf("top-%d by magnitude: indices %lld %lld %lld %lld %lld\n", K, (long long)top[0], (long long)top[1],
         (long long)top[2], (long long)top[3], (long long)top[4]);

  /* Errors come back as a status; qk_last_error() says what was wrong. */
  qk_status st = qk_nf4_dequantize(&p, &a, 48, &o, NULL);
  printf("blocksize 48 -> %s: %s\n", qk_status_name(st), qk_last_error());
  return st == QK_ERR_INVALID_ARGUMENT ? 0 : 1;
}
