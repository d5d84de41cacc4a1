// APMM through the C ABI on every CPU path this machine has (scalar, AVX2, AVX-512 VNNI when
// present) and both kernel families (bit-serial, int8): the integer result must equal an
// int64 reference bit for bit for every format pair and the full 8 x 8 (p, q) grid; the
// quantize -> matmul float result must match a float64 reference; bad input must fail
// cleanly with a message naming the value.
#include <math.h>
#include <string.h>

#include <random>
#include <vector>

#include "check.h"
#include "descriptors.h"
#include "qkern.h"

static int64_t kw_of(int64_t k) { return (k + 255) / 256 * 4; }
static int64_t segs_of(int64_t k, int64_t g) { return g == 0 ? 1 : (k + g - 1) / g; }
static int32_t cmin(int f, int b) { return f == QK_APMM_BIPOLAR ? -((1 << b) - 1) : f == QK_APMM_SIGNED ? -(1 << (b - 1)) : 0; }
static int32_t cmax(int f, int b) { return f == QK_APMM_SIGNED ? (1 << (b - 1)) - 1 : (1 << b) - 1; }
static const char* fname(int f) { return f == 0 ? "bipolar" : f == 1 ? "signed" : "unsigned"; }

struct Packed {
  std::vector<uint64_t> planes;  // 8-byte aligned storage for the U8 plane tensor
  std::vector<int32_t> sums, zeros;
  std::vector<float> scales;
  int64_t rows = 0, k = 0, group = 0;
  int bits = 0, format = 0;
  qk_tensor tp() { return tensor(planes.data(), QK_U8, 1, {rows, bits, kw_of(k) * 8}); }
  qk_tensor ts() { return tensor(sums.data(), QK_I32, 4, {rows, segs_of(k, group)}); }
};

static std::vector<int32_t> random_codes(std::mt19937_64& rng, int f, int b, int64_t n) {
  std::uniform_int_distribution<int32_t> d(cmin(f, b), cmax(f, b));
  std::vector<int32_t> c((size_t)n);
  for (auto& x : c) {
    x = d(rng);
    if (f == QK_APMM_BIPOLAR && (x & 1) == 0) x += x < cmax(f, b) ? 1 : -1;
  }
  return c;
}

static Packed pack(const std::vector<int32_t>& codes, int f, int b, int64_t rows, int64_t k, int64_t group) {
  Packed p;
  p.rows = rows, p.k = k, p.group = group, p.bits = b, p.format = f;
  p.planes.assign((size_t)(rows * b * kw_of(k)), 0x5555555555555555ULL);  // poison
  p.sums.assign((size_t)(rows * segs_of(k, group)), -77);
  qk_tensor tc = tensor((void*)codes.data(), QK_I32, 4, {rows, k}), tp = p.tp(), ts = p.ts();
  int64_t bad = 0;
  CHECK(qk_apmm_pack(&tc, f, b, group, &tp, &ts, &bad, NULL) == QK_OK, "pack: %s", qk_last_error());
  CHECK(bad == -1, "bad=%lld", (long long)bad);
  return p;
}

static int64_t g_matmuls = 0;

static void integer_grid(std::mt19937_64& rng, const char* cpu) {
  const int64_t ms[] = {1, 3, 1, 7, 2};
  const int64_t ns[] = {5, 1, 17, 4, 9};
  const int64_t ks[] = {1, 63, 64, 100, 257, 300, 513, 65};
  int shape = 0;
  for (int p = 1; p <= 8; p++)
    for (int q = 1; q <= 8; q++)
      for (int fa = 0; fa < 3; fa++)
        for (int fw = 0; fw < 3; fw++) {
          const int64_t M = ms[shape % 5], N = ns[(shape / 5) % 5], K = ks[shape % 8];
          shape++;
          std::vector<int32_t> ca = random_codes(rng, fa, q, M * K), cw = random_codes(rng, fw, p, N * K);
          if (shape % 7 == 0) {  // extremes: the largest |products| and sums
            for (auto& x : ca) x = cmin(fa, q);
            for (auto& x : cw) x = (shape % 2) ? cmin(fw, p) : cmax(fw, p);
          }
          Packed a = pack(ca, fa, q, M, K, 0), w = pack(cw, fw, p, N, K, 0);
          std::vector<int64_t> ref((size_t)(M * N), 0);
          for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
              int64_t s = 0;
              for (int64_t c = 0; c < K; c++) s += (int64_t)ca[(size_t)(m * K + c)] * cw[(size_t)(n * K + c)];
              ref[(size_t)(m * N + n)] = s;
            }
          for (int request : {QK_APMM_PATH_BITSERIAL, QK_APMM_PATH_INT8, QK_APMM_PATH_AUTO}) {
            std::vector<int32_t> c((size_t)(M * N), (int32_t)0xDEADBEEF);
            qk_tensor tap = a.tp(), tas = a.ts(), twp = w.tp(), tws = w.ts(), tc = tensor(c.data(), QK_I32, 4, {M, N});
            int32_t used = -1;
            qk_status st = qk_apmm_matmul(&tap, &tas, NULL, NULL, fa, q, &twp, &tws, NULL, NULL, fw, p, K, 0, &tc,
                                          request, &used, NULL);
            g_matmuls++;
            CHECK(st == QK_OK, "%s", qk_last_error());
            CHECK(used > 0 && strcmp(qk_apmm_path_name(used), "unknown") != 0, "path %d", used);
            for (int64_t i = 0; i < M * N; i++)
              if (c[(size_t)i] != ref[(size_t)i]) {
                CHECK(false, "%s %s: A %s q=%d, W %s p=%d, M=%lld N=%lld K=%lld: c[%lld] = %d, expected %lld", cpu,
                      qk_apmm_path_name(used), fname(fa), q, fname(fw), p, (long long)M, (long long)N, (long long)K,
                      (long long)i, c[(size_t)i], (long long)ref[(size_t)i]);
                break;
              }
          }
        }
}

// The small-M streaming path (chosen by AUTO): every (p, q) it serves, every format pair, M = 1
// and its largest M (16 or 8: several passes of 4 rows), M = 6 (a ragged last pass), K not a
// multiple of 64 or 256, and segments of 0/32/64/128 columns, exact I32 output against int64.
static void stream_grid(std::mt19937_64& rng, const char* cpu) {
  const int64_t ks[] = {300, 97, 513, 1000, 31, 256};
  const int64_t groups[] = {0, 32, 64, 128};
  int shape = 0, streamed = 0;
  for (int p = 1; p <= 8; p++)
    for (int q = 1; q <= 8; q++)
      for (int fa = 0; fa < 3; fa++)
        for (int fw = 0; fw < 3; fw++) {
          const int64_t max_m = p <= 4 ? 16 : 8, ms[] = {1, max_m, 6};
          const int64_t M = ms[shape % 3], N = 1 + (shape * 7) % 21, K = ks[shape % 6], g = groups[shape % 4];
          shape++;
          int32_t chosen = 0;
          CHECK(qk_apmm_choose_path(q, p, M, QK_DEVICE_CPU, QK_APMM_PATH_AUTO, &chosen) == QK_OK, "%s",
                qk_last_error());
          const bool stream = strstr(qk_apmm_path_name(chosen), "stream") != NULL;
          // the streaming kernels hold u_w in a signed byte and int16 pair sums (see apmm_cpu.h)
          const bool serves = p <= 7 && 2 * ((1 << p) - 1) * ((1 << q) - 1) <= 32767;
          CHECK(!stream || serves, "AUTO chose %s for p=%d q=%d", qk_apmm_path_name(chosen), p, q);
          // AUTO's rule (apmm_api.cpp): bit-serial is faster at p*q <= 4, the int8 path above M = 8 for p > 4
          const bool expect = serves && p * q > 4 && M <= (p <= 4 ? 16 : 8);
          CHECK(stream == expect, "AUTO chose %s for p=%d q=%d M=%lld", qk_apmm_path_name(chosen), p, q, (long long)M);
          int32_t above = 0;
          CHECK(qk_apmm_choose_path(q, p, max_m + 1, QK_DEVICE_CPU, QK_APMM_PATH_AUTO, &above) == QK_OK, "%s",
                qk_last_error());
          CHECK(strstr(qk_apmm_path_name(above), "stream") == NULL, "stream above M = %lld", (long long)max_m);
          if (!stream) continue;
          streamed++;
          std::vector<int32_t> ca = random_codes(rng, fa, q, M * K), cw = random_codes(rng, fw, p, N * K);
          if (shape % 5 == 0) {  // the largest codes: every u_a * u_w product and int16 pair sum at its maximum
            for (auto& x : ca) x = cmax(fa, q);
            for (auto& x : cw) x = cmax(fw, p);
          }
          Packed a = pack(ca, fa, q, M, K, g), w = pack(cw, fw, p, N, K, g);
          std::vector<int32_t> c((size_t)(M * N), (int32_t)0xDEADBEEF);
          qk_tensor tap = a.tp(), tas = a.ts(), twp = w.tp(), tws = w.ts(), tc = tensor(c.data(), QK_I32, 4, {M, N});
          int32_t used = -1;
          CHECK(qk_apmm_matmul(&tap, &tas, NULL, NULL, fa, q, &twp, &tws, NULL, NULL, fw, p, K, g, &tc,
                               QK_APMM_PATH_AUTO, &used, NULL) == QK_OK,
                "%s", qk_last_error());
          g_matmuls++;
          CHECK(used == chosen, "ran %s, chose %s", qk_apmm_path_name(used), qk_apmm_path_name(chosen));
          for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
              int64_t ref = 0;
              for (int64_t k = 0; k < K; k++) ref += (int64_t)ca[(size_t)(m * K + k)] * cw[(size_t)(n * K + k)];
              if (c[(size_t)(m * N + n)] != ref) {
                CHECK(false, "%s %s: A %s q=%d, W %s p=%d, M=%lld N=%lld K=%lld g=%lld: c[%lld, %lld] = %d, expected %lld",
                      cpu, qk_apmm_path_name(used), fname(fa), q, fname(fw), p, (long long)M, (long long)N,
                      (long long)K, (long long)g, (long long)m, (long long)n, c[(size_t)(m * N + n)], (long long)ref);
                m = M;
                break;
              }
            }
        }
  CHECK(streamed > 400, "only %d matmuls took the stream path", streamed);
}

// Dynamic quantization of A (per token) and W (per row or per group), float output against
// a float64 reference built from the unpacked codes, scales and zero points.
static void float_path(std::mt19937_64& rng, const char* cpu) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t groups[] = {0, 32, 64, 128};
  int round = 0;
  for (int64_t g : groups)
    for (int fa = 0; fa < 3; fa++)
      for (int fw = 0; fw < 3; fw++) {
        const int q = 1 + (round * 3) % 8, p = 1 + (round * 5 + 2) % 8;
        const int64_t M = 1 + round % 4, N = 3 + round % 5, K = g == 0 ? 70 + 37 * (round % 5) : g * (1 + round % 4);
        round++;
        std::vector<float> xa((size_t)(M * K)), xw((size_t)(N * K));
        for (auto& v : xa) v = normal(rng) + (fa == QK_APMM_UNSIGNED ? 0.7f : 0.0f);
        for (auto& v : xw) v = normal(rng) * 0.05f;
        Packed a, w;
        Packed* ops[2] = {&a, &w};
        std::vector<float>* xs[2] = {&xa, &xw};
        const int fmt[2] = {fa, fw}, bts[2] = {q, p};
        const int64_t rows[2] = {M, N}, sgroup[2] = {0, g};
        for (int o = 0; o < 2; o++) {
          Packed& P = *ops[o];
          P.rows = rows[o], P.k = K, P.group = g, P.bits = bts[o], P.format = fmt[o];
          P.planes.assign((size_t)(P.rows * P.bits * kw_of(K)), ~0ULL);
          P.sums.assign((size_t)(P.rows * segs_of(K, g)), -1);
          const int64_t ss = segs_of(K, sgroup[o]);
          P.scales.assign((size_t)(P.rows * ss), nanf(""));
          P.zeros.assign((size_t)(P.rows * ss), -1);
          qk_tensor tx = tensor(xs[o]->data(), QK_F32, 4, {P.rows, K}), tp = P.tp(), ts = P.ts(),
                    tsc = tensor(P.scales.data(), QK_F32, 4, {P.rows, ss}),
                    tz = tensor(P.zeros.data(), QK_I32, 4, {P.rows, ss});
          CHECK(qk_apmm_quantize(&tx, fmt[o], bts[o], sgroup[o], g, &tp, &ts, &tsc,
                                 fmt[o] == QK_APMM_UNSIGNED ? &tz : NULL, NULL, NULL) == QK_OK,
                "quantize: %s", qk_last_error());
        }
        // decode codes and check the quantizer's error bound
        std::vector<int32_t> ca((size_t)(M * K)), cw((size_t)(N * K));
        qk_tensor tca = tensor(ca.data(), QK_I32, 4, {M, K}), tcw = tensor(cw.data(), QK_I32, 4, {N, K});
        qk_tensor tap = a.tp(), twp = w.tp();
        CHECK(qk_apmm_unpack(&tap, fa, q, &tca, NULL) == QK_OK, "%s", qk_last_error());
        CHECK(qk_apmm_unpack(&twp, fw, p, &tcw, NULL) == QK_OK, "%s", qk_last_error());
        for (int o = 0; o < 2; o++) {
          const Packed& P = *ops[o];
          const std::vector<int32_t>& codes = o ? cw : ca;
          const int64_t sg = sgroup[o], ss = segs_of(K, sg);
          for (int64_t r = 0; r < P.rows; r++)
            for (int64_t c = 0; c < K; c++) {
              const int64_t si = r * ss + (sg ? c / sg : 0);
              const double s = P.scales[(size_t)si], z = P.format == QK_APMM_UNSIGNED ? P.zeros[(size_t)si] : 0;
              const double x = (*xs[o])[(size_t)(r * K + c)], dq = s * (codes[(size_t)(r * K + c)] - z);
              const double bound = (P.format == QK_APMM_BIPOLAR || (P.format == QK_APMM_SIGNED && P.bits == 1) ? 1.0 : 0.5) * s * 1.0001 + 1e-7;
              CHECK(fabs(dq - x) <= bound, "quantizer %s %d-bit: x=%g decodes to %g (scale %g)", fname(P.format),
                    P.bits, x, dq, s);
            }
        }
        // float64 reference
        const int64_t segs = segs_of(K, g);
        std::vector<double> ref((size_t)(M * N));
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = 0; n < N; n++) {
            double y = 0;
            for (int64_t c = 0; c < K; c++) {
              const int64_t s = g ? c / g : 0;
              const double za = fa == QK_APMM_UNSIGNED ? a.zeros[(size_t)m] : 0;
              const double zw = fw == QK_APMM_UNSIGNED ? w.zeros[(size_t)(n * segs + s)] : 0;
              y += (double)a.scales[(size_t)m] * w.scales[(size_t)(n * segs + s)] * (ca[(size_t)(m * K + c)] - za) *
                   (cw[(size_t)(n * K + c)] - zw);
            }
            ref[(size_t)(m * N + n)] = y;
          }
        for (int request : {QK_APMM_PATH_BITSERIAL, QK_APMM_PATH_INT8, QK_APMM_PATH_AUTO})
          for (int32_t dt : {QK_F32, QK_F16, QK_BF16}) {
            std::vector<uint32_t> out((size_t)(M * N), 0x7fc0ffffu);
            qk_tensor to = tensor(out.data(), dt, dt == QK_F32 ? 4 : 2, {M, N});
            qk_tensor as = a.ts(), ws = w.ts();
            qk_tensor asc = tensor(a.scales.data(), QK_F32, 4, {M, 1}), wsc = tensor(w.scales.data(), QK_F32, 4, {N, segs});
            qk_tensor az = tensor(a.zeros.data(), QK_I32, 4, {M, 1}), wz = tensor(w.zeros.data(), QK_I32, 4, {N, segs});
            int32_t used = 0;
            qk_status st = qk_apmm_matmul(&tap, &as, &asc, fa == QK_APMM_UNSIGNED ? &az : NULL, fa, q, &twp, &ws, &wsc,
                                          fw == QK_APMM_UNSIGNED ? &wz : NULL, fw, p, K, g, &to, request, &used, NULL);
            CHECK(st == QK_OK, "%s", qk_last_error());
            for (int64_t i = 0; i < M * N; i++) {
              double y;
              if (dt == QK_F32) {
                float f;
                memcpy(&f, (char*)out.data() + i * 4, 4);
                y = f;
              } else {
                uint16_t h;
                memcpy(&h, (char*)out.data() + i * 2, 2);
                uint32_t bits = dt == QK_BF16 ? (uint32_t)h << 16 : 0;
                if (dt == QK_F16) {  // widen binary16 by hand (normal and subnormal values)
                  int e = (h >> 10) & 31, mnt = h & 1023;
                  double v = e ? ldexp(1024 + mnt, e - 25) : ldexp(mnt, -24);
                  y = (h & 0x8000) ? -v : v;
                } else {
                  float f;
                  memcpy(&f, &bits, 4);
                  y = f;
                }
              }
              const double r = ref[(size_t)i];
              const double ulp = dt == QK_F32 ? 1.2e-7 : dt == QK_F16 ? 9.8e-4 : 7.9e-3;
              CHECK(fabs(y - r) <= ulp * fabs(r) + 1e-6, "%s %s float out dtype %d A %s q=%d W %s p=%d g=%lld: %.9g vs %.9g",
                    cpu, qk_apmm_path_name(used), dt, fname(fa), q, fname(fw), p, (long long)g, y, r);
            }
          }
      }
}

static void bad_arguments() {
  std::vector<int32_t> codes(4 * 70, 1);
  std::vector<uint64_t> planes(4 * 8 * 4);
  std::vector<int32_t> sums(4 * 3);
  qk_tensor tc = tensor(codes.data(), QK_I32, 4, {4, 70}), tp = tensor(planes.data(), QK_U8, 1, {4, 3, 32}),
            ts = tensor(sums.data(), QK_I32, 4, {4, 1});
  int64_t bad = 0;
  CHECK(qk_apmm_pack(&tc, QK_APMM_SIGNED, 9, 0, &tp, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "bits 9");
  CHECK(strstr(qk_last_error(), "bits 9 is outside 1..8") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_pack(&tc, QK_APMM_SIGNED, 0, 0, &tp, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "bits 0");
  CHECK(strstr(qk_last_error(), "bits 0") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_pack(&tc, 7, 3, 0, &tp, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "format 7");
  CHECK(strstr(qk_last_error(), "format 7") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_pack(&tc, QK_APMM_SIGNED, 3, 48, &tp, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "group 48");
  CHECK(strstr(qk_last_error(), "group 48") != NULL, "%s", qk_last_error());
  codes[75] = 4;  // signed 3-bit holds -4..3
  CHECK(qk_apmm_pack(&tc, QK_APMM_SIGNED, 3, 0, &tp, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "code 4");
  CHECK(bad == 75, "bad=%lld", (long long)bad);
  CHECK(strstr(qk_last_error(), "codes[1, 5] = 4 is not a signed 3-bit code") != NULL, "%s", qk_last_error());
  codes[75] = 2;  // bipolar codes are odd
  CHECK(qk_apmm_pack(&tc, QK_APMM_BIPOLAR, 3, 0, &tp, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "even bipolar");
  CHECK(strstr(qk_last_error(), "= 2 is not a bipolar 3-bit code (odd integers in [-7, 7])") != NULL, "%s",
        qk_last_error());
  codes[75] = 1;
  qk_tensor wrong = tensor(planes.data(), QK_U8, 1, {4, 2, 32});
  CHECK(qk_apmm_pack(&tc, QK_APMM_SIGNED, 3, 0, &wrong, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "planes shape");
  CHECK(strstr(qk_last_error(), "planes has shape [4, 2, 32], expected [4, 3, 32]") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_pack(&tc, QK_APMM_SIGNED, 3, 0, &tp, &ts, &bad, NULL) == QK_OK, "%s", qk_last_error());
  // matmul: shape mismatch between A and W, K too large, scales with an I32 output
  std::vector<uint64_t> wpl(2 * 3 * 8);
  std::vector<int32_t> wsum(2), c(8);
  qk_tensor twp = tensor(wpl.data(), QK_U8, 1, {2, 3, 64}), tws = tensor(wsum.data(), QK_I32, 4, {2, 1}),
            tout = tensor(c.data(), QK_I32, 4, {4, 2});
  CHECK(qk_apmm_matmul(&tp, &ts, NULL, NULL, 1, 3, &twp, &tws, NULL, NULL, 1, 3, 70, 0, &tout, 0, NULL, NULL) ==
            QK_ERR_INVALID_ARGUMENT, "kw mismatch");
  CHECK(strstr(qk_last_error(), "w_planes has shape [2, 3, 64], expected [2, 3, 32]") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_matmul(&tp, &ts, NULL, NULL, 1, 3, &tp, &ts, NULL, NULL, 1, 3, 70, 0, &tout, 0, NULL, NULL) ==
            QK_ERR_INVALID_ARGUMENT, "out shape");
  CHECK(strstr(qk_last_error(), "out has shape [4, 2], expected [4, 4]") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_matmul(&tp, &ts, NULL, NULL, 2, 8, &tp, &ts, NULL, NULL, 2, 8, 40000, 0, &tout, 0, NULL, NULL) ==
            QK_ERR_INVALID_ARGUMENT, "k too large");
  CHECK(strstr(qk_last_error(), "k 40000 is too large") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_matmul(&tp, &ts, NULL, NULL, 1, 3, &tp, &ts, NULL, NULL, 1, 3, 70, 64, &tout, 0, NULL, NULL) ==
            QK_ERR_INVALID_ARGUMENT, "sums for another group");
  CHECK(strstr(qk_last_error(), "a_sums has shape [4, 1], expected [4, 2]") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_matmul(&tp, &ts, NULL, NULL, 1, 3, &tp, &ts, NULL, NULL, 1, 3, 70, 0, &tout, 5, NULL, NULL) ==
            QK_ERR_INVALID_ARGUMENT, "request 5");
  // quantize: group not dividing K is handled (short last group); a NaN is reported by index
  std::vector<float> x(4 * 70, 0.5f);
  std::vector<float> sc(4 * 3);
  std::vector<int32_t> s3(4 * 3);
  qk_tensor tx = tensor(x.data(), QK_F32, 4, {4, 70}), tsc = tensor(sc.data(), QK_F32, 4, {4, 3}),
            ts3 = tensor(s3.data(), QK_I32, 4, {4, 3});
  CHECK(qk_apmm_quantize(&tx, 1, 3, 32, 32, &tp, &ts3, &tsc, NULL, &bad, NULL) == QK_OK, "%s", qk_last_error());
  x[141] = nanf("");
  CHECK(qk_apmm_quantize(&tx, 1, 3, 32, 32, &tp, &ts3, &tsc, NULL, &bad, NULL) == QK_ERR_NON_FINITE, "nan");
  CHECK(bad == 141 && strstr(qk_last_error(), "x[2, 1] is NaN") != NULL, "%lld %s", (long long)bad, qk_last_error());
  CHECK(qk_apmm_quantize(&tx, 2, 3, 32, 32, &tp, &ts3, &tsc, NULL, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "no zeros");
  CHECK(strstr(qk_last_error(), "zero_points is NULL") != NULL, "%s", qk_last_error());
  CHECK(qk_apmm_quantize(&tx, 1, 3, 64, 32, &tp, &ts3, &tsc, NULL, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "groups");
  CHECK(strstr(qk_last_error(), "scale_group 64 must be 0 or equal to sum_group 32") != NULL, "%s", qk_last_error());
  qk_tensor misaligned = tp;
  misaligned.data = (char*)planes.data() + 1;
  misaligned.nbytes -= 8;
  misaligned.shape[2] = 32;
  CHECK(qk_apmm_pack(&tc, QK_APMM_SIGNED, 3, 0, &misaligned, &ts, &bad, NULL) == QK_ERR_INVALID_ARGUMENT, "align");
}

int main() {
  const uint64_t seed = std::random_device{}();
  printf("seed %llu\n", (unsigned long long)seed);
  std::mt19937_64 rng(seed);
  const char* paths[] = {"scalar", "avx2", "avx512"};
  for (const char* path : paths) {
    if (qk_cpu_set_path(path) != QK_OK) {
      printf("skip path %s: %s\n", path, qk_last_error());
      continue;
    }
    integer_grid(rng, path);
    stream_grid(rng, path);
    float_path(rng, path);
  }
  qk_cpu_set_path("auto");
  bad_arguments();
  printf("%lld integer matmuls checked\n", (long long)g_matmuls);
  TEST_MAIN_END();
}
