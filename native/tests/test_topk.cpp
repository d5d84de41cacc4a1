// Top-k / DGC through the C ABI on every CPU path this machine has: exact sets against a
// sort-based reference on awkward inputs, the sampled selection's contract, the DGC step's
// invariant (sent + residual == accumulated, exactly), decompression, and bad arguments.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <random>
#include <vector>

#include "check.h"
#include "descriptors.h"
#include "qkern.h"

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// Independent reference: a total order on doubles (fabs / value / -value), stable sort by index.
static std::vector<int64_t> reference(const std::vector<float>& x, int64_t k, int order) {
  std::vector<int64_t> idx(x.size());
  for (size_t i = 0; i < x.size(); i++) idx[i] = (int64_t)i;
  auto key = [&](int64_t i) -> double {
    double v = (double)x[i];
    return order == QK_TOPK_MAGNITUDE ? fabs(v) : (order == QK_TOPK_LARGEST ? v : -v);
  };
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return key(a) > key(b); });
  idx.resize((size_t)k);
  return idx;  // descending key, ties by index (stable)
}

static void check_topk(const std::vector<float>& x, int64_t k, int order, const char* what,
                       const std::vector<int64_t>* full_ref = NULL) {
  int64_t n = (int64_t)x.size();
  std::vector<int64_t> ref = full_ref ? std::vector<int64_t>(full_ref->begin(), full_ref->begin() + k)
                                      : reference(x, k, order);
  std::vector<int64_t> sorted_ref = ref;
  std::sort(sorted_ref.begin(), sorted_ref.end());
  for (int flags = 0; flags <= QK_TOPK_SORTED; flags++) {
    std::vector<int64_t> idx((size_t)k + 1, 0x7f7f7f7f);
    std::vector<float> val((size_t)k + 1, nanf(""));
    qk_tensor tx = flat((void*)x.data(), QK_F32, n, 4), ti = flat(idx.data(), QK_I64, k, 8),
              tv = flat(val.data(), QK_F32, k, 4);
    int64_t bad = 7;
    qk_status st = qk_topk(&tx, k, order, flags, &ti, &tv, &bad, NULL);
    CHECK(st == QK_OK, "%s: %s", what, qk_last_error());
    CHECK(bad == -1, "%s: bad=%lld", what, (long long)bad);
    const std::vector<int64_t>& want = flags ? ref : sorted_ref;
    for (int64_t j = 0; j < k; j++) {
      CHECK(idx[j] == want[j], "%s n=%lld k=%lld order=%d flags=%d: idx[%lld]=%lld want %lld", what, (long long)n,
            (long long)k, order, flags, (long long)j, (long long)idx[j], (long long)want[j]);
      if (idx[j] != want[j]) return;
      CHECK(bits_of(val[j]) == bits_of(x[idx[j]]), "%s: value %lld", what, (long long)j);
    }
    CHECK(idx[k] == 0x7f7f7f7f, "%s: wrote past k", what);
    // I32 indices, no values
    std::vector<int32_t> idx32((size_t)k + 1, -7);
    qk_tensor t32 = flat(idx32.data(), QK_I32, k, 4);
    CHECK(qk_topk(&tx, k, order, flags, &t32, NULL, NULL, NULL) == QK_OK, "%s", qk_last_error());
    for (int64_t j = 0; j < k; j++) CHECK(idx32[j] == (int32_t)want[j], "%s: i32 idx[%lld]", what, (long long)j);
  }
}

static void exact_suite(std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t sizes[] = {0, 1, 7, 100, 1000, 4097, 300000, 600000};
  for (int64_t n : sizes) {
    std::vector<float> x((size_t)n);
    for (auto& v : x) v = normal(rng);
    for (int order = 0; order < 3; order++) {
      const std::vector<int64_t> full = reference(x, n, order);
      const int64_t ks[] = {0, 1, n / 1000, n / 100, n / 2, n};
      for (int64_t k : ks)
        if (k >= 0 && k <= n) check_topk(x, k, order, "gaussian", &full);
    }
  }
  // all equal: ties everywhere -> the lowest indices
  std::vector<float> eq(100000, 0.5f);
  check_topk(eq, 1234, QK_TOPK_MAGNITUDE, "all-equal");
  check_topk(eq, 100000, QK_TOPK_LARGEST, "all-equal k=n");
  // narrow range: many values share the top 22 key bits
  std::vector<float> narrow(500000);
  for (auto& v : narrow) v = 1.0f + (float)(rng() % 64) * 1.1920929e-07f * (rng() & 1 ? 1 : -1);
  for (int order = 0; order < 3; order++) check_topk(narrow, 777, order, "narrow");
  // signed zeros: -0.0 == +0.0 in every order
  std::vector<float> zeros(3000);
  for (auto& v : zeros) v = (rng() & 1) ? -0.0f : 0.0f;
  for (size_t i = 0; i < zeros.size(); i += 97) zeros[i] = (rng() & 1) ? 1e-3f : -1e-3f;
  for (int order = 0; order < 3; order++) check_topk(zeros, 100, order, "signed zeros");
  // denormals (and zeros) only
  std::vector<float> den(400000);
  for (auto& v : den) {
    uint32_t b = (uint32_t)(rng() % 0x800000u) | (rng() & 1 ? 0x80000000u : 0u);
    memcpy(&v, &b, 4);
  }
  for (int order = 0; order < 3; order++) check_topk(den, 4000, order, "denormals");
  // infinities are values
  std::vector<float> inf(5000, 1.0f);
  inf[17] = -INFINITY;
  inf[4000] = INFINITY;
  check_topk(inf, 3, QK_TOPK_MAGNITUDE, "inf");
  check_topk(inf, 3, QK_TOPK_SMALLEST, "inf smallest");
}

static void nan_is_an_error() {
  std::vector<float> x(300000, 1.0f);
  x[123456] = nanf("");
  x[200000] = -nanf("");
  std::vector<int64_t> idx(10);
  qk_tensor tx = flat(x.data(), QK_F32, (int64_t)x.size(), 4), ti = flat(idx.data(), QK_I64, 10, 8);
  for (int order = 0; order < 3; order++) {
    int64_t bad = -5;
    CHECK(qk_topk(&tx, 10, order, 0, &ti, NULL, &bad, NULL) == QK_ERR_NON_FINITE, "order %d", order);
    CHECK(bad == 123456, "bad=%lld", (long long)bad);
    CHECK(strstr(qk_last_error(), "x[123456] is NaN") != NULL, "%s", qk_last_error());
  }
}

static void sampled_suite(std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 2000000, k = 2000;
  std::vector<float> x((size_t)n);
  for (auto& v : x) v = normal(rng);
  std::vector<int64_t> exact = reference(x, k, QK_TOPK_MAGNITUDE);
  float kth = fabsf(x[exact[k - 1]]);
  for (uint64_t seed = 0; seed < 5; seed++) {
    std::vector<int64_t> idx((size_t)k, 0x7f7f7f7f);
    std::vector<float> val((size_t)k, nanf(""));
    qk_tensor tx = flat(x.data(), QK_F32, n, 4), ti = flat(idx.data(), QK_I64, k, 8), tv = flat(val.data(), QK_F32, k, 4);
    int64_t selected = -1;
    CHECK(qk_topk_sampled(&tx, k, 0.01, seed, &ti, &tv, &selected, NULL, NULL) == QK_OK, "%s", qk_last_error());
    CHECK(selected >= (int64_t)ceil(0.8 * k) && selected <= k, "selected %lld", (long long)selected);
    for (int64_t j = 0; j < k; j++) {
      if (j < selected) {
        CHECK(idx[j] >= 0 && idx[j] < n && (j == 0 || idx[j] > idx[j - 1]), "order at %lld", (long long)j);
        CHECK(bits_of(val[j]) == bits_of(x[idx[j]]), "value %lld", (long long)j);
        // every selected element is at least as large as the k-th largest scaled by 0.8^10
        CHECK(fabsf(val[j]) >= kth * 0.1f, "small value %g", (double)val[j]);
      } else {
        CHECK(idx[j] == -1 && val[j] == 0.0f, "padding at %lld", (long long)j);
      }
    }
    if (selected == k) {  // then it is the exact top-k
      std::vector<int64_t> s = exact;
      std::sort(s.begin(), s.end());
      for (int64_t j = 0; j < k; j++) CHECK(idx[j] == s[j], "exact when full at %lld", (long long)j);
    }
  }
}

// sent + residual == accumulated v exactly, on a reference of the update done here in float
// n >= 2^18 with k <= n/64 takes the sampled-bound path (candidates collected by the update).
static void dgc_suite(std::mt19937_64& rng, int64_t n, int64_t k) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int feedback = 0; feedback <= 2; feedback++)
    for (int nesterov = 0; nesterov <= (feedback == 2); nesterov++)
      for (int half = 0; half <= 1; half++)
        for (int sampled = 0; sampled <= 1; sampled++) {
          std::vector<float> g((size_t)n), u((size_t)n), v((size_t)n);
          for (int64_t i = 0; i < n; i++) g[i] = normal(rng), u[i] = normal(rng) * 0.1f, v[i] = normal(rng) * 0.5f;
          const float m = 0.9f, clip = (float)(0.65 * sqrt((double)n));
          // the expected accumulation (clip: ||g|| ~ sqrt(n) > clip)
          double ss = 0;
          for (float gi : g) ss += (double)gi * gi;
          const float scale = (float)((double)clip / sqrt(ss));
          std::vector<float> eu = u, ev = v;
          for (int64_t i = 0; i < n; i++) {
            float gi = g[i] * scale;
            if (feedback == 0) ev[i] = gi;
            else if (feedback == 1) ev[i] = ev[i] + gi;
            else if (!nesterov) { float mu = m * eu[i]; eu[i] = mu + gi; ev[i] = ev[i] + eu[i]; }
            else { float s = eu[i] + gi; eu[i] = s * m; float w = ev[i] + eu[i]; ev[i] = w + gi; }
          }
          std::vector<int32_t> idx((size_t)k, 0x7f7f7f7f);
          std::vector<float> val32((size_t)k, nanf(""));
          std::vector<uint16_t> val16((size_t)k, 0xffff);
          qk_tensor tg = flat(g.data(), QK_F32, n, 4), tu = flat(u.data(), QK_F32, n, 4), tv = flat(v.data(), QK_F32, n, 4),
                    ti = flat(idx.data(), QK_I32, k, 4),
                    tval = half ? flat(val16.data(), QK_F16, k, 2) : flat(val32.data(), QK_F32, k, 4);
          int64_t selected = -1;
          int flags = (nesterov ? QK_DGC_NESTEROV : 0) | (sampled ? QK_DGC_SAMPLED : 0);
          qk_status st = qk_dgc_step(&tg, feedback == 2 ? &tu : NULL, &tv, k, feedback, m, clip, flags, 0.01, 42, &ti,
                                     &tval, &selected, NULL, NULL);
          CHECK(st == QK_OK, "%s", qk_last_error());
          if (!sampled) {
            CHECK(selected == k, "selected %lld", (long long)selected);
            std::vector<int64_t> ref = reference(ev, k, QK_TOPK_MAGNITUDE);
            std::sort(ref.begin(), ref.end());
            for (int64_t j = 0; j < k; j++) CHECK(idx[j] == ref[j], "fb %d: idx[%lld]", feedback, (long long)j);
          }
          std::vector<float> sent((size_t)n, 0.0f);
          std::vector<char> hit((size_t)n, 0);
          for (int64_t j = 0; j < k; j++) {
            if (j >= selected) {
              CHECK(idx[j] == -1, "padding");
              continue;
            }
            float s = half ? 0.0f : val32[j];
            if (half) {
              uint16_t h = val16[j];  // widen f16 exactly
              int e = (h >> 10) & 31, man = h & 1023;
              double mag = e == 0 ? man * pow(2.0, -24) : (1024 + man) * pow(2.0, e - 25);
              s = (float)((h & 0x8000) ? -mag : mag);
            }
            sent[idx[j]] = s;
            hit[idx[j]] = 1;
          }
          int bad = 0;
          for (int64_t i = 0; i < n && bad < 5; i++) {
            float total = hit[i] ? sent[i] + v[i] : v[i];
            if (bits_of(total) != bits_of(ev[i]) && !(total == 0 && ev[i] == 0)) {
              CHECK(false, "n %lld fb %d nest %d half %d sampled %d: i=%lld sent+residual %a != %a", (long long)n, feedback, nesterov, half,
                    sampled, (long long)i, (double)total, (double)ev[i]);
              bad++;
            }
            if (feedback == 2) {
              float want_u = hit[i] ? 0.0f : eu[i];
              if (bits_of(u[i]) != bits_of(want_u)) {
                CHECK(false, "u masking at %lld", (long long)i);
                bad++;
              }
            }
          }
        }
  // NaN in grad: error naming the index, u and v untouched
  std::vector<float> g(70000, 1.0f), u(70000, 2.0f), v(70000, 3.0f);
  g[54321] = INFINITY;
  std::vector<int64_t> idx(10);
  std::vector<float> val(10);
  qk_tensor tg = flat(g.data(), QK_F32, 70000, 4), tu = flat(u.data(), QK_F32, 70000, 4),
            tv = flat(v.data(), QK_F32, 70000, 4), ti = flat(idx.data(), QK_I64, 10, 8), tval = flat(val.data(), QK_F32, 10, 4);
  int64_t bad = -1;
  CHECK(qk_dgc_step(&tg, &tu, &tv, 10, 2, 0.9f, 0.0f, 0, 0.0, 0, &ti, &tval, NULL, &bad, NULL) == QK_ERR_NON_FINITE, "inf");
  CHECK(bad == 54321, "bad %lld", (long long)bad);
  CHECK(strstr(qk_last_error(), "grad[54321] is +Inf") != NULL, "%s", qk_last_error());
  CHECK(u[0] == 2.0f && v[0] == 3.0f && u[69999] == 2.0f, "state changed");
}

// The sampled bound of exact selection (n >= 2^18, k <= n/64): one compare pass collects the
// candidates above a threshold from a sample; when they are too many (ties, zeros) or too few
// (QKERN_TOPK_BOUND=fallback forces this) the selection falls back to radix passes over all.
static void bound_suite(std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = ((int64_t)1 << 18) + 13;
  std::vector<float> x((size_t)n);
  for (auto& v : x) v = normal(rng);
  for (int order = 0; order < 3; order++) {
    const std::vector<int64_t> full = reference(x, n / 64, order);
    const int64_t ks[] = {1, 7, n / 1000, n / 100, n / 64};
    for (int64_t k : ks) check_topk(x, k, order, "bound gaussian", &full);
    setenv("QKERN_TOPK_BOUND", "retry", 1);
    check_topk(x, n / 1000, order, "bound forced retry", &full);
    setenv("QKERN_TOPK_BOUND", "fallback", 1);
    check_topk(x, n / 1000, order, "bound forced fallback", &full);
    setenv("QKERN_TOPK_BOUND", "off", 1);
    check_topk(x, n / 1000, order, "bound off", &full);
    unsetenv("QKERN_TOPK_BOUND");
  }
  // a cluster of large values the sample may or may not see, and ties at the threshold
  std::vector<float> y = x;
  for (int64_t i = 177777; i < 177777 + 3000; i++) y[i] = 100.0f + (float)(i % 5);
  check_topk(y, 2500, QK_TOPK_MAGNITUDE, "bound cluster");
  check_topk(y, 4000, QK_TOPK_LARGEST, "bound cluster largest");
  // all equal: every element is a candidate -> too many -> fallback; lowest indices win
  std::vector<float> eq((size_t)n, -0.25f);
  check_topk(eq, 1000, QK_TOPK_MAGNITUDE, "bound all-equal");
  check_topk(eq, 1000, QK_TOPK_SMALLEST, "bound all-equal smallest");
  // mostly zeros (both signs): fewer non-zeros than k, so the k-th key is zero
  std::vector<float> z((size_t)n);
  for (auto& v : z) v = (rng() & 1) ? -0.0f : 0.0f;
  for (int64_t i = 5; i < n; i += 9001) z[i] = normal(rng);
  check_topk(z, 1000, QK_TOPK_MAGNITUDE, "bound zeros");
  check_topk(z, 1000, QK_TOPK_LARGEST, "bound zeros largest");
  // denormals only
  std::vector<float> den((size_t)n);
  for (auto& v : den) {
    uint32_t b = (uint32_t)(rng() % 0x800000u) | (rng() & 1 ? 0x80000000u : 0u);
    memcpy(&v, &b, 4);
  }
  check_topk(den, 3000, QK_TOPK_MAGNITUDE, "bound denormals");
  // NaN: found whether its key is above the threshold (magnitude, +NaN largest) or below it
  // (-NaN in the largest order), and with the bound's fallback forced
  for (int mode = 0; mode < 3; mode++) {
    if (mode) setenv("QKERN_TOPK_BOUND", mode == 1 ? "retry" : "fallback", 1);
    for (int order = 0; order < 3; order++) {
      std::vector<float> w = x;
      w[170000] = -nanf("");
      w[250000] = nanf("");
      std::vector<int64_t> idx(2000);
      qk_tensor tw = flat(w.data(), QK_F32, n, 4), ti = flat(idx.data(), QK_I64, 2000, 8);
      int64_t bad = -5;
      CHECK(qk_topk(&tw, 2000, order, 0, &ti, NULL, &bad, NULL) == QK_ERR_NON_FINITE, "bound NaN order %d", order);
      CHECK(bad == 170000, "bound NaN order %d: bad=%lld", order, (long long)bad);
    }
    unsetenv("QKERN_TOPK_BOUND");
  }
}

// DGC steps on the bound path's edges: forced fallback, ties everywhere (too many candidates),
// v overflowing to Inf (a candidate), Inf in grad with the check skipped.
static void dgc_bound_edges(std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = ((int64_t)1 << 18) + 3, k = 1500;
  std::vector<float> g((size_t)n), u((size_t)n), v((size_t)n);
  std::vector<int64_t> idx((size_t)k);
  std::vector<float> val((size_t)k);
  qk_tensor tg = flat(g.data(), QK_F32, n, 4), tu = flat(u.data(), QK_F32, n, 4), tv = flat(v.data(), QK_F32, n, 4),
            ti = flat(idx.data(), QK_I64, k, 8), tval = flat(val.data(), QK_F32, k, 4);
  // 0 bound (sample gathered by the finite check), 1 forced fallback, 2 all equal (too many
  // candidates), 3 without the finite check (sample gathered on its own), 4 forced retry,
  // 5 mostly zeros (fewer non-zeros than k: no bound)
  for (int mode = 0; mode < 6; mode++) {
    for (int64_t i = 0; i < n; i++) {
      g[i] = mode == 2 ? 0.5f : (mode == 5 ? (i % 701 == 3 ? normal(rng) : 0.0f) : normal(rng));
      u[i] = mode == 2 || mode == 5 ? 0.0f : normal(rng) * 0.1f;
      v[i] = mode == 2 || mode == 5 ? 0.0f : normal(rng);
    }
    std::vector<float> ev = v;
    for (int64_t i = 0; i < n; i++) {
      float mu = 0.9f * u[i];
      ev[i] = ev[i] + (mu + g[i]);
    }
    if (mode == 1) setenv("QKERN_TOPK_BOUND", "fallback", 1);
    if (mode == 4) setenv("QKERN_TOPK_BOUND", "retry", 1);
    std::fill(idx.begin(), idx.end(), (int64_t)0x7f7f7f7f);
    int64_t selected = -1;
    CHECK(qk_dgc_step(&tg, &tu, &tv, k, 2, 0.9f, 0.0f, mode == 3 ? QK_DGC_SKIP_FINITE_CHECK : 0, 0.0, 0, &ti, &tval,
                      &selected, NULL, NULL) == QK_OK,
          "%s", qk_last_error());
    unsetenv("QKERN_TOPK_BOUND");
    std::vector<int64_t> ref = reference(ev, k, QK_TOPK_MAGNITUDE);
    std::sort(ref.begin(), ref.end());
    CHECK(selected == k, "selected %lld", (long long)selected);
    for (int64_t j = 0; j < k; j++) {
      CHECK(idx[j] == ref[j], "mode %d: idx[%lld] = %lld want %lld", mode, (long long)j, (long long)idx[j],
            (long long)ref[j]);
      if (idx[j] != ref[j]) break;
      CHECK(bits_of(val[j]) == bits_of(ev[ref[j]]) && v[ref[j]] == 0.0f && u[ref[j]] == 0.0f, "mode %d: pair %lld",
            mode, (long long)j);
    }
  }
  // v overflows to +-Inf at two places: an error naming the lower one
  for (int64_t i = 0; i < n; i++) g[i] = normal(rng), u[i] = 0.0f, v[i] = normal(rng);
  v[154321] = 3.0e38f;
  g[154321] = 3.0e38f;
  v[200000] = -3.0e38f;
  g[200000] = -3.0e38f;
  int64_t bad = -1;
  CHECK(qk_dgc_step(&tg, &tu, &tv, k, 2, 0.9f, 0.0f, 0, 0.0, 0, &ti, &tval, NULL, &bad, NULL) == QK_ERR_NON_FINITE,
        "v overflow");
  CHECK(bad == 154321, "v overflow at %lld", (long long)bad);
  CHECK(strstr(qk_last_error(), "v[154321] is +Inf after accumulation") != NULL, "%s", qk_last_error());
  // Inf in grad with the check skipped: still an error naming grad
  for (int64_t i = 0; i < n; i++) g[i] = normal(rng), u[i] = 0.0f, v[i] = normal(rng);
  g[200001] = -INFINITY;
  bad = -1;
  CHECK(qk_dgc_step(&tg, &tu, &tv, k, 2, 0.9f, 0.0f, QK_DGC_SKIP_FINITE_CHECK, 0.0, 0, &ti, &tval, NULL, &bad, NULL) ==
            QK_ERR_NON_FINITE,
        "grad inf unchecked");
  CHECK(bad == 200001 && strstr(qk_last_error(), "grad[200001] is -Inf; u and v have been updated") != NULL, "%s",
        qk_last_error());
  // ... also when the candidates overflow (all equal) before the Inf is reached
  for (int64_t i = 0; i < n; i++) g[i] = 0.5f, u[i] = 0.0f, v[i] = 0.0f;
  g[250003] = INFINITY;
  bad = -1;
  CHECK(qk_dgc_step(&tg, &tu, &tv, k, 2, 0.9f, 0.0f, QK_DGC_SKIP_FINITE_CHECK, 0.0, 0, &ti, &tval, NULL, &bad, NULL) ==
            QK_ERR_NON_FINITE,
        "grad inf unchecked, overflow");
  CHECK(bad == 250003 && strstr(qk_last_error(), "grad[250003] is +Inf; u and v have been updated") != NULL, "%s",
        qk_last_error());
  g[250003] = 0.5f;
  g[200001] = -INFINITY;
  // ... and with the check: state untouched
  for (int64_t i = 0; i < n; i++) u[i] = 2.0f, v[i] = 3.0f;
  CHECK(qk_dgc_step(&tg, &tu, &tv, k, 2, 0.9f, 0.0f, 0, 0.0, 0, &ti, &tval, NULL, &bad, NULL) == QK_ERR_NON_FINITE,
        "grad inf");
  bool same = true;
  for (int64_t i = 0; i < n; i++) same &= u[i] == 2.0f && v[i] == 3.0f;
  CHECK(same && bad == 200001, "state changed or bad %lld", (long long)bad);
}

static void decompress_suite() {
  // two ranks, k = 3, one empty slot, a shared index
  int64_t idx[6] = {5, 1, -1, 1, 9, 0};
  float val[6] = {1.0f, 2.0f, 0.0f, 3.0f, -4.0f, 0.5f};
  std::vector<float> out(10, nanf(""));
  qk_tensor ti = flat(idx, QK_I64, 6, 8), tv = flat(val, QK_F32, 6, 4), to = flat(out.data(), QK_F32, 10, 4);
  CHECK(qk_dgc_decompress(&ti, &tv, 2, &to, NULL) == QK_OK, "%s", qk_last_error());
  float want[10] = {0.25f, 2.5f, 0, 0, 0, 0.5f, 0, 0, 0, -2.0f};
  for (int i = 0; i < 10; i++) CHECK(out[i] == want[i], "out[%d]=%g", i, (double)out[i]);
  idx[4] = 10;
  CHECK(qk_dgc_decompress(&ti, &tv, 2, &to, NULL) == QK_ERR_INVALID_ARGUMENT, "index 10");
  CHECK(strstr(qk_last_error(), "pair 4 has index 10") != NULL, "%s", qk_last_error());
}

static void bad_arguments() {
  float x[16] = {0};
  int64_t idx[4];
  qk_tensor tx = flat(x, QK_F32, 16, 4), ti = flat(idx, QK_I64, 4, 8);
  CHECK(qk_topk(&tx, 17, 0, 0, &ti, NULL, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "k > n");
  CHECK(strstr(qk_last_error(), "k = 17") != NULL, "%s", qk_last_error());
  CHECK(qk_topk(&tx, 3, 0, 0, &ti, NULL, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "indices size");
  CHECK(qk_topk(&tx, 4, 9, 0, &ti, NULL, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "order");
  CHECK(qk_topk(NULL, 4, 0, 0, &ti, NULL, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "null x");
  qk_tensor overlap = flat(x, QK_I64, 4, 8);
  CHECK(qk_topk(&tx, 4, 0, 0, &overlap, NULL, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "overlap");
  CHECK(qk_dgc_step(&tx, NULL, &tx, 4, 2, 0.9f, 0, 0, 0, 0, &ti, NULL, NULL, NULL, NULL) == QK_ERR_INVALID_ARGUMENT,
        "null u with momentum");
}

int main() {
  std::mt19937_64 rng(std::random_device{}());
  const char* paths[] = {"scalar", "avx2", "avx512"};
  for (const char* p : paths) {
    if (qk_cpu_set_path(p) != QK_OK) {
      printf("skipping the %s path (not on this CPU)\n", p);
      continue;
    }
    printf("path %s\n", p);
    exact_suite(rng);
    nan_is_an_error();
    sampled_suite(rng);
    dgc_suite(rng, 600000, 600);
    bound_suite(rng);
    dgc_bound_edges(rng);
  }
  qk_cpu_set_path("auto");
  decompress_suite();
  bad_arguments();
  TEST_MAIN_END();
}
