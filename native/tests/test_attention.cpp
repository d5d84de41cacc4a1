// Paged attention through the C ABI on every CPU path this machine has, against a float64
// dense reference: GQA groups, partial last pages, split-KV partitions, CSR tables, NaN in
// unused slots, write/copy/swap of blocks, merge, and bad arguments (errors, never a crash;
// the ASan build of this test catches any out-of-bounds read).
#include <math.h>
#include <string.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "check.h"
#include "common/qk_hd.h"
#include "qkern.h"

static qk_tensor make(void* data, int32_t dtype, std::vector<int64_t> shape, int64_t esize) {
  qk_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.ndim = (int32_t)shape.size();
  int64_t n = 1;
  for (int i = t.ndim - 1; i >= 0; i--) {
    t.shape[i] = shape[i];
    t.strides[i] = n;
    n *= shape[i];
  }
  t.nbytes = n * esize;
  return t;
}

struct Cache {
  int64_t blocks, bs, H, D;
  int32_t dtype;
  std::vector<uint16_t> k16, v16;
  std::vector<float> k32, v32;
  void* k() { return dtype == QK_F32 ? (void*)k32.data() : (void*)k16.data(); }
  void* v() { return dtype == QK_F32 ? (void*)v32.data() : (void*)v16.data(); }
  int64_t esize() const { return dtype == QK_F32 ? 4 : 2; }
  double get(bool key, int64_t i) const {
    if (dtype == QK_F32) return key ? k32[i] : v32[i];
    uint16_t h = key ? k16[i] : v16[i];
    return dtype == QK_F16 ? qk::f16_to_f32(h) : qk::bf16_to_f32(h);
  }
  qk_tensor kt() { return make(k(), dtype, {blocks, bs, H, D}, esize()); }
  qk_tensor vt() { return make(v(), dtype, {blocks, bs, H, D}, esize()); }
};

static Cache make_cache(int64_t blocks, int64_t bs, int64_t H, int64_t D, int32_t dtype, std::mt19937& rng) {
  Cache c{blocks, bs, H, D, dtype, {}, {}, {}, {}};
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t n = blocks * bs * H * D;
  // every slot starts as NaN: a kernel reading an unused slot shows up in the output
  if (dtype == QK_F32) {
    c.k32.assign((size_t)n, nanf(""));
    c.v32.assign((size_t)n, nanf(""));
  } else {
    c.k16.assign((size_t)n, 0x7e00);
    c.v16.assign((size_t)n, 0x7fc0);
  }
  (void)nd;
  (void)rng;
  return c;
}

static void fill_slot(Cache& c, int64_t block, int64_t off, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t h = 0; h < c.H; h++)
    for (int64_t d = 0; d < c.D; d++) {
      int64_t i = ((block * c.bs + off) * c.H + h) * c.D + d;
      float kv = nd(rng), vv = nd(rng);
      if (c.dtype == QK_F32) {
        c.k32[i] = kv;
        c.v32[i] = vv;
      } else if (c.dtype == QK_F16) {
        c.k16[i] = qk::f32_to_f16(kv);
        c.v16[i] = qk::f32_to_f16(vv);
      } else {
        c.k16[i] = qk::f32_to_bf16(kv);
        c.v16[i] = qk::f32_to_bf16(vv);
      }
    }
}

// Dense float64 attention of sequence b over the tokens its table names.
static void reference(const Cache& c, const std::vector<int32_t>& pages, int64_t len, const float* q, int64_t Hq,
                      double scale, std::vector<double>& out, std::vector<double>& lse) {
  const int64_t G = Hq / c.H;
  out.assign((size_t)(Hq * c.D), 0.0);
  lse.assign((size_t)Hq, -INFINITY);
  for (int64_t h = 0; h < Hq; h++) {
    const int64_t kvh = h / G;
    std::vector<double> s((size_t)len);
    double m = -INFINITY;
    for (int64_t t = 0; t < len; t++) {
      int64_t base = ((pages[t / c.bs] * c.bs + t % c.bs) * c.H + kvh) * c.D;
      double dot = 0;
      for (int64_t d = 0; d < c.D; d++) dot += (double)q[h * c.D + d] * c.get(true, base + d);
      s[t] = dot * scale;
      m = std::max(m, s[t]);
    }
    if (len == 0) continue;
    double sum = 0;
    for (int64_t t = 0; t < len; t++) sum += exp(s[t] - m);
    for (int64_t t = 0; t < len; t++) {
      int64_t base = ((pages[t / c.bs] * c.bs + t % c.bs) * c.H + kvh) * c.D;
      double p = exp(s[t] - m) / sum;
      for (int64_t d = 0; d < c.D; d++) out[h * c.D + d] += p * c.get(false, base + d);
    }
    lse[h] = m + log(sum);
  }
}

static void decode_case(const char* path, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, int64_t bs, int32_t dtype,
                        std::vector<int64_t> lens, int64_t partition, bool csr, std::mt19937& rng) {
  int64_t max_pages = 1;
  for (int64_t l : lens) max_pages = std::max(max_pages, (l + bs - 1) / bs);
  int64_t blocks = B * max_pages + 3;
  Cache c = make_cache(blocks, bs, Hkv, D, dtype, rng);
  std::vector<int32_t> perm((size_t)blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);  // non-monotonic tables
  std::vector<int32_t> table((size_t)(B * max_pages), -7);  // unused entries are garbage ids
  std::vector<std::vector<int32_t>> pages((size_t)B);
  int64_t next = 0;
  for (int64_t b = 0; b < B; b++) {
    int64_t np = (lens[b] + bs - 1) / bs;
    for (int64_t j = 0; j < np; j++) {
      int32_t id = perm[(size_t)next++];
      table[b * max_pages + j] = id;
      pages[b].push_back(id);
      int64_t used = std::min(bs, lens[b] - j * bs);
      for (int64_t o = 0; o < used; o++) fill_slot(c, id, o, rng);
    }
  }
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q((size_t)(B * Hq * D));
  for (float& x : q) x = nd(rng);
  std::vector<float> out((size_t)(B * Hq * D), nanf("")), lse((size_t)(B * Hq), nanf(""));
  std::vector<int32_t> seq_lens(lens.begin(), lens.end());
  qk_tensor tq = make(q.data(), QK_F32, {B, Hq, D}, 4), to = make(out.data(), QK_F32, {B, Hq, D}, 4),
            tl = make(lse.data(), QK_F32, {B, Hq}, 4), kt = c.kt(), vt = c.vt();
  const float scale = 1.0f / sqrtf((float)D);
  qk_status st;
  if (!csr) {
    qk_tensor tb = make(table.data(), QK_I32, {B, max_pages}, 4), ts = make(seq_lens.data(), QK_I32, {B}, 4);
    st = qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, scale, partition, &to, &tl, NULL);
  } else {
    std::vector<int32_t> indptr(1, 0), indices, last;
    for (int64_t b = 0; b < B; b++) {
      indices.insert(indices.end(), pages[b].begin(), pages[b].end());
      indptr.push_back((int32_t)indices.size());
      last.push_back(lens[b] == 0 ? 0 : (int32_t)(lens[b] - (int64_t)(pages[b].size() - 1) * bs));
    }
    indices.push_back(-1);  // a trailing unused entry
    qk_tensor ti = make(indptr.data(), QK_I32, {B + 1}, 4), tx = make(indices.data(), QK_I32, {(int64_t)indices.size()}, 4),
              tlp = make(last.data(), QK_I32, {B}, 4);
    st = qk_attention_paged_decode_csr(&tq, &kt, &vt, &ti, &tx, &tlp, scale, partition, &to, &tl, NULL);
  }
  CHECK(st == QK_OK, "%s: %s", path, qk_last_error());
  double tol = dtype == QK_F32 ? 2e-5 : 2e-4;  // float32 accumulation over up to ~600 tokens
  for (int64_t b = 0; b < B; b++) {
    std::vector<double> ro, rl;
    reference(c, pages[b], lens[b], &q[(size_t)(b * Hq * D)], Hq, scale, ro, rl);
    for (int64_t i = 0; i < Hq * D; i++) {
      double got = out[(size_t)(b * Hq * D + i)];
      CHECK(fabs(got - ro[(size_t)i]) <= tol * (1 + fabs(ro[(size_t)i])),
            "%s dt%d csr%d B%lld Hq%lld Hkv%lld D%lld bs%lld len%lld part%lld: out[%lld][%lld] %g vs %g", path, dtype,
            csr, (long long)B, (long long)Hq, (long long)Hkv, (long long)D, (long long)bs, (long long)lens[b],
            (long long)partition, (long long)b, (long long)i, got, ro[(size_t)i]);
    }
    for (int64_t h = 0; h < Hq; h++) {
      double got = lse[(size_t)(b * Hq + h)];
      if (lens[b] == 0)
        CHECK(got == -INFINITY, "%s: empty sequence lse %g", path, got);
      else
        CHECK(fabs(got - rl[(size_t)h]) <= tol * (1 + fabs(rl[(size_t)h])), "%s: lse[%lld][%lld] %g vs %g", path,
              (long long)b, (long long)h, got, rl[(size_t)h]);
    }
  }
}

static void bad_arguments() {
  std::mt19937 rng(5);
  Cache c = make_cache(4, 16, 2, 8, QK_F32, rng);
  std::vector<float> q(2 * 4 * 8, 0.5f), out(2 * 4 * 8), lse(8);
  std::vector<int32_t> table = {0, 1, 2, 3}, lens = {20, 32};
  qk_tensor tq = make(q.data(), QK_F32, {2, 4, 8}, 4), to = make(out.data(), QK_F32, {2, 4, 8}, 4),
            tl = make(lse.data(), QK_F32, {2, 4}, 4), kt = c.kt(), vt = c.vt(),
            tb = make(table.data(), QK_I32, {2, 2}, 4), ts = make(lens.data(), QK_I32, {2}, 4);
  for (size_t i = 0; i < c.k32.size(); i++) c.k32[i] = c.v32[i] = 0.25f;
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl, NULL) == QK_OK, "%s", qk_last_error());
  table[3] = 4;  // one past the last block
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "id");
  CHECK(strstr(qk_last_error(), "block_tables[1][1] = 4") != NULL, "%s", qk_last_error());
  table[3] = -1;
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "-1");
  table[3] = 3;
  lens[1] = 33;  // beyond 2 blocks of 16
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "len");
  CHECK(strstr(qk_last_error(), "seq_lens[1] = 33") != NULL, "%s", qk_last_error());
  lens[1] = -1;
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "neg");
  lens[1] = 3;
  qk_tensor tq3 = make(q.data(), QK_F32, {2, 3, 8}, 4), to3 = make(out.data(), QK_F32, {2, 3, 8}, 4);
  CHECK(qk_attention_paged_decode(&tq3, &kt, &vt, &tb, &ts, 0.3f, 0, &to3, NULL, NULL) == QK_ERR_INVALID_ARGUMENT, "heads");
  CHECK(strstr(qk_last_error(), "3 heads") != NULL, "%s", qk_last_error());
  qk_tensor tl_small = make(lse.data(), QK_F32, {2, 3}, 4);
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl_small, NULL) == QK_ERR_INVALID_ARGUMENT, "lse");
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, NAN, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "scale");
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl, NULL) == QK_OK, "%s", qk_last_error());
  kt.nbytes -= 4;  // a cache descriptor that claims more than its buffer
  CHECK(qk_attention_paged_decode(&tq, &kt, &vt, &tb, &ts, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "nbytes");
  kt.nbytes += 4;

  // CSR: bad indptr, index and last page length
  std::vector<int32_t> indptr = {0, 2, 3}, indices = {0, 1, 2}, last = {16, 5};
  qk_tensor ti = make(indptr.data(), QK_I32, {3}, 4), tx = make(indices.data(), QK_I32, {3}, 4),
            tp = make(last.data(), QK_I32, {2}, 4);
  CHECK(qk_attention_paged_decode_csr(&tq, &kt, &vt, &ti, &tx, &tp, 0.3f, 0, &to, &tl, NULL) == QK_OK, "%s", qk_last_error());
  indptr[2] = 4;
  CHECK(qk_attention_paged_decode_csr(&tq, &kt, &vt, &ti, &tx, &tp, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "indptr");
  indptr[2] = 3;
  indices[2] = 99;
  CHECK(qk_attention_paged_decode_csr(&tq, &kt, &vt, &ti, &tx, &tp, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "index");
  CHECK(strstr(qk_last_error(), "kv_indices[2] = 99") != NULL, "%s", qk_last_error());
  indices[2] = 2;
  last[1] = 17;
  CHECK(qk_attention_paged_decode_csr(&tq, &kt, &vt, &ti, &tx, &tp, 0.3f, 0, &to, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "last");

  // write_kv: out-of-range and duplicate slots fail before anything is written
  std::vector<float> key(3 * 2 * 8, 1.0f), val(3 * 2 * 8, 2.0f);
  std::vector<int64_t> slots = {5, -1, 64};
  qk_tensor tk = make(key.data(), QK_F32, {3, 2, 8}, 4), tv = make(val.data(), QK_F32, {3, 2, 8}, 4),
            tsl = make(slots.data(), QK_I64, {3}, 8);
  float before = c.k32[5 * 16];
  CHECK(qk_attention_write_kv(&tk, &tv, &kt, &vt, &tsl, NULL) == QK_ERR_INVALID_ARGUMENT, "slot 64");
  CHECK(strstr(qk_last_error(), "slot_mapping[2] = 64") != NULL, "%s", qk_last_error());
  CHECK(c.k32[5 * 16] == before, "a failed write changed the cache");
  slots[2] = 5;
  CHECK(qk_attention_write_kv(&tk, &tv, &kt, &vt, &tsl, NULL) == QK_ERR_INVALID_ARGUMENT, "dup");
  slots[2] = 63;
  CHECK(qk_attention_write_kv(&tk, &tv, &kt, &vt, &tsl, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(c.k32[5 * 16] == 1.0f && c.v32[63 * 16 + 15] == 2.0f, "write_kv did not write");

  // copy / swap block mappings
  std::vector<int64_t> map = {0, 1, 1, 2};
  qk_tensor tm = make(map.data(), QK_I64, {2, 2}, 8);
  CHECK(qk_attention_copy_blocks(&kt, &tm, NULL) == QK_ERR_INVALID_ARGUMENT, "chain");
  map = {0, 4, 1, 2};
  CHECK(qk_attention_copy_blocks(&kt, &tm, NULL) == QK_ERR_INVALID_ARGUMENT, "range");
  map = {0, 3, 1, 3};
  CHECK(qk_attention_copy_blocks(&kt, &tm, NULL) == QK_ERR_INVALID_ARGUMENT, "dst twice");
  map = {0, 3, 1, 2};
  CHECK(qk_attention_copy_blocks(&kt, &tm, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(memcmp(&c.k32[3 * 256], &c.k32[0], 256 * 4) == 0, "copy_blocks");
  Cache host = make_cache(2, 16, 2, 8, QK_F32, rng);
  qk_tensor hk = host.kt();
  map = {3, 1, 2, 0};
  CHECK(qk_attention_swap_blocks(&kt, &hk, &tm, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(memcmp(&host.k32[256], &c.k32[3 * 256], 256 * 4) == 0, "swap_blocks");
  map = {3, 2, 2, 0};
  CHECK(qk_attention_swap_blocks(&kt, &hk, &tm, NULL) == QK_ERR_INVALID_ARGUMENT, "swap range");
}

static void merge_cases() {
  const int64_t N = 5, D = 3;
  std::vector<float> oa(N * D), ob(N * D), o(N * D, nanf("")), la(N), lb(N), l(N, nanf(""));
  for (int64_t i = 0; i < N * D; i++) {
    oa[i] = (float)i;
    ob[i] = (float)(100 - i);
  }
  la = {0.5f, -INFINITY, -INFINITY, 3.0f, 80.0f};
  lb = {0.5f, 2.0f, -INFINITY, -INFINITY, -20.0f};
  oa[1 * D] = nanf("");  // an empty partial's output is not read
  qk_tensor ta = make(oa.data(), QK_F32, {N, D}, 4), tb = make(ob.data(), QK_F32, {N, D}, 4),
            to = make(o.data(), QK_F32, {N, D}, 4), tla = make(la.data(), QK_F32, {N}, 4),
            tlb = make(lb.data(), QK_F32, {N}, 4), tl = make(l.data(), QK_F32, {N}, 4);
  CHECK(qk_attention_merge(&ta, &tla, &tb, &tlb, &to, &tl, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(fabsf(o[0] - 50.0f) < 1e-5f && fabsf(l[0] - (0.5f + logf(2.0f))) < 1e-6f, "equal halves %g %g", o[0], l[0]);
  CHECK(o[1 * D] == ob[1 * D] && l[1] == 2.0f, "empty a: %g %g", o[1 * D], l[1]);
  CHECK(o[2 * D] == 0.0f && l[2] == -INFINITY, "both empty: %g %g", o[2 * D], l[2]);
  CHECK(o[3 * D] == oa[3 * D] && l[3] == 3.0f, "empty b");
  CHECK(isfinite(o[4 * D]) && fabsf(l[4] - 80.0f) < 1e-4f, "far apart");
  // in place into a
  CHECK(qk_attention_merge(&ta, &tla, &tb, &tlb, &ta, &tla, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(oa[0] == o[0] && la[0] == l[0], "in-place merge");
  qk_tensor tbad = make(o.data(), QK_F32, {N, D}, 4);
  CHECK(qk_attention_merge(&ta, &tla, &tb, &tlb, &tbad, &tla, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(qk_attention_merge(&ta, &tla, &tb, &tlb, &ta, &tlb, NULL) == QK_OK, "%s", qk_last_error());
  std::vector<float> big(N * D + 1, 1.0f);
  qk_tensor big_a = make(big.data(), QK_F32, {N, D}, 4), big_out = make(big.data() + 1, QK_F32, {N, D}, 4);
  CHECK(qk_attention_merge(&big_a, &tla, &tb, &tlb, &big_out, &tl, NULL) == QK_ERR_INVALID_ARGUMENT, "overlap");
  CHECK(strstr(qk_last_error(), "overlap") != NULL, "%s", qk_last_error());
  qk_tensor lshort = make(l.data(), QK_F32, {N - 1}, 4);
  CHECK(qk_attention_merge(&ta, &tla, &tb, &tlb, &to, &lshort, NULL) == QK_ERR_INVALID_ARGUMENT, "short lse");
}

int main() {
  std::mt19937 rng(1234);
  for (const char* path : {"scalar", "avx2", "avx512"}) {
    if (qk_cpu_set_path(path) != QK_OK) continue;
    for (int32_t dt : {QK_F32, QK_F16, QK_BF16}) {
      decode_case(path, 3, 8, 2, 64, 16, dt, {1, 15, 17}, 0, false, rng);
      decode_case(path, 2, 12, 4, 24, 8, dt, {0, 9}, 0, false, rng);  // D not a multiple of 16
      decode_case(path, 2, 16, 1, 32, 32, dt, {513, 100}, 3, true, rng);  // MQA, split
    }
    decode_case(path, 1, 8, 8, 16, 256, QK_F32, {511}, 1, false, rng);
    decode_case(path, 2, 20, 2, 16, 16, QK_BF16, {200, 0}, 2, true, rng);  // group of 10: a tile of 8 and of 2
    decode_case(path, 1, 4, 4, 6, 8, QK_F32, {7}, 0, true, rng);  // odd head_dim
    // the SIMD kernels tile a group as 4 + 2 + 1 heads and widen BF16 rows 16 (or 8) at a time:
    // groups 5 (4 + 1), 6 (4 + 2), 7 (4 + 2 + 1) and 8 (4 + 4), head_dim a multiple of 16 or not
    for (int32_t dt : {QK_F32, QK_BF16}) {
      decode_case(path, 2, 10, 2, 32, 16, dt, {17, 15}, 0, false, rng);
      decode_case(path, 2, 12, 2, 40, 16, dt, {16, 33}, 0, true, rng);
      decode_case(path, 1, 14, 2, 48, 8, dt, {65}, 0, false, rng);
      decode_case(path, 2, 16, 2, 128, 16, dt, {513, 1}, 0, false, rng);
      decode_case(path, 1, 16, 2, 128, 32, dt, {200}, 2, true, rng);
      // rows of 2-4 KiB (all KV heads of a token): the SIMD kernels take tiles of 8 or 16 tokens
      decode_case(path, 2, 16, 8, 128, 16, dt, {37, 100}, 0, false, rng);
    }
    decode_case(path, 1, 8, 4, 128, 8, QK_BF16, {77}, 0, true, rng);  // 1 KiB rows: tiles of 32 tokens
  }
  qk_cpu_set_path("auto");
  bad_arguments();
  merge_cases();
  TEST_MAIN_END();
}
