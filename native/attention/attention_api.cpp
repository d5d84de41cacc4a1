// Paged-attention ABI entry points: argument checks (every block id, slot and length is
// validated before cache memory is touched), then the CPU kernels over the worker pool or the
// CUDA backend.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "attention/attention_cpu.h"
#include "attention/attention_cuda.h"
#include "common/attention.h"
#include "internal.h"

namespace {

using namespace qk;
using namespace qk::attention;

const CpuKernels& kernels() {
  switch (cpu_path()) {
    case CpuPath::Avx512: return avx512_kernels();
    case CpuPath::Avx2: return avx2_kernels();
    default: return scalar_kernels();
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

// Geometry of a checked [num_blocks, block_size, heads, head_dim] cache.
struct CacheShape {
  int64_t num_blocks, block_size, heads, head_dim, block_elems, block_stride;
};

qk_status check_cache(const qk_tensor* c, const char* fn, const char* what, CacheShape* out) {
  QK_TRY(check_tensor(c, fn, what));
  QK_TRY(check_dtype(c, fn, what, {QK_F32, QK_F16, QK_BF16}));
  if (c->ndim != 4)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be 4-d [num_blocks, block_size, num_kv_heads, head_dim], got %d-d",
                fn, what, c->ndim);
  CacheShape s{c->shape[0], c->shape[1], c->shape[2], c->shape[3], 0, c->strides[0]};
  if (!valid_block_size(s.block_size))
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s block_size %lld is out of range (%d..%d)", fn, what,
                (long long)s.block_size, kMinBlockSize, kMaxBlockSize);
  if (s.heads < 1 || s.head_dim < 1)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has %lld kv heads of dim %lld (both must be >= 1)", fn, what,
                (long long)s.heads, (long long)s.head_dim);
  if (s.num_blocks > INT32_MAX)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s has %lld blocks; block ids are int32", fn, what,
                (long long)s.num_blocks);
  if (c->strides[3] != 1 || c->strides[2] != s.head_dim || c->strides[1] != s.heads * s.head_dim)
    return fail(QK_ERR_INVALID_ARGUMENT,
                "%s: %s must be contiguous inside a block (strides [*, %lld, %lld, 1]), got [%lld, %lld, %lld, %lld]",
                fn, what, (long long)(s.heads * s.head_dim), (long long)s.head_dim, (long long)c->strides[0],
                (long long)c->strides[1], (long long)c->strides[2], (long long)c->strides[3]);
  s.block_elems = s.block_size * s.heads * s.head_dim;
  if (s.num_blocks > 1 && s.block_stride < s.block_elems)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s block stride %lld is smaller than a block (%lld elements)", fn, what,
                (long long)s.block_stride, (long long)s.block_elems);
  *out = s;
  return QK_OK;
}

qk_status check_kv_pair(const qk_tensor* k, const qk_tensor* v, const char* fn, CacheShape* out) {
  CacheShape ks, vs;
  QK_TRY(check_cache(k, fn, "k_cache", &ks));
  QK_TRY(check_cache(v, fn, "v_cache", &vs));
  if (k->dtype != v->dtype)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: k_cache is %s but v_cache is %s", fn, dtype_name(k->dtype),
                dtype_name(v->dtype));
  if (ks.num_blocks != vs.num_blocks || ks.block_size != vs.block_size || ks.heads != vs.heads ||
      ks.head_dim != vs.head_dim)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: k_cache [%lld, %lld, %lld, %lld] and v_cache [%lld, %lld, %lld, %lld] differ",
                fn, (long long)ks.num_blocks, (long long)ks.block_size, (long long)ks.heads, (long long)ks.head_dim,
                (long long)vs.num_blocks, (long long)vs.block_size, (long long)vs.heads, (long long)vs.head_dim);
  QK_TRY(check_same_device(k, v, fn, "k_cache", "v_cache"));
  *out = ks;
  return QK_OK;
}

// A tensor that must be contiguous, of dtype `dtype`, with `ndim` dims (shape not checked here).
qk_status check_index(const qk_tensor* t, const char* fn, const char* what, int32_t dtype, int ndim) {
  QK_TRY(check_tensor(t, fn, what));
  QK_TRY(check_dtype(t, fn, what, {dtype}));
  if (t->ndim != ndim) return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be %d-d, got %d-d", fn, what, ndim, t->ndim);
  QK_TRY(check_contiguous(t, fn, what));
  return QK_OK;
}

float load_float(const void* base, int32_t dtype, int64_t i) {
  switch (dtype) {
    case QK_F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case QK_BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

void store_float(void* base, int32_t dtype, int64_t i, float v) {
  switch (dtype) {
    case QK_F16: static_cast<uint16_t*>(base)[i] = f32_to_f16(v); break;
    case QK_BF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(v); break;
    default: static_cast<float*>(base)[i] = v; break;
  }
}

// Copies one row of n elements, converting dtype (exact widening, round-to-nearest-even narrowing).
void copy_row(const void* src, int32_t src_dtype, int64_t src_off, void* dst, int32_t dst_dtype, int64_t dst_off,
              int64_t n) {
  if (src_dtype == dst_dtype) {
    const int64_t es = dtype_size(src_dtype);
    memcpy(static_cast<char*>(dst) + dst_off * es, static_cast<const char*>(src) + src_off * es, (size_t)(n * es));
    return;
  }
  for (int64_t i = 0; i < n; i++) store_float(dst, dst_dtype, dst_off + i, load_float(src, src_dtype, src_off + i));
}

// Checks an I64 [N, 2] block mapping in host memory: ids in range, destinations distinct and,
// when `same_cache`, no destination also a source.
qk_status check_block_mapping(const qk_tensor* m, const char* fn, int64_t src_blocks, int64_t dst_blocks,
                              bool same_cache, int64_t* pairs_out) {
  QK_TRY(check_index(m, fn, "block_mapping", QK_I64, 2));
  if (m->device_kind != QK_DEVICE_CPU)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: block_mapping must be in host memory (it is read by the host)", fn);
  if (m->shape[1] != 2)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: block_mapping must be [N, 2] (src, dst), got [%lld, %lld]", fn,
                (long long)m->shape[0], (long long)m->shape[1]);
  const int64_t n = m->shape[0];
  const int64_t* p = static_cast<const int64_t*>(m->data);
  std::vector<int64_t> dsts, srcs;
  for (int64_t i = 0; i < n; i++) {
    if (p[2 * i] < 0 || p[2 * i] >= src_blocks)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: block_mapping[%lld] source block %lld is out of range (0..%lld)", fn,
                  (long long)i, (long long)p[2 * i], (long long)src_blocks - 1);
    if (p[2 * i + 1] < 0 || p[2 * i + 1] >= dst_blocks)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: block_mapping[%lld] destination block %lld is out of range (0..%lld)",
                  fn, (long long)i, (long long)p[2 * i + 1], (long long)dst_blocks - 1);
    dsts.push_back(p[2 * i + 1]);
    srcs.push_back(p[2 * i]);
  }
  std::sort(dsts.begin(), dsts.end());
  for (size_t i = 1; i < dsts.size(); i++)
    if (dsts[i] == dsts[i - 1])
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: block_mapping names destination block %lld twice", fn,
                  (long long)dsts[i]);
  if (same_cache)
    for (int64_t s : srcs)
      if (std::binary_search(dsts.begin(), dsts.end(), s))
        return fail(QK_ERR_INVALID_ARGUMENT,
                    "%s: block %lld is both a source and a destination (the result would depend on the order)", fn,
                    (long long)s);
  *pairs_out = n;
  return QK_OK;
}

// ---- decode -------------------------------------------------------------------------------------

// The pages of one sequence: all full except the last, which holds last_len (>= 1) tokens.
struct SeqPages {
  const int32_t* pages;
  int64_t num_pages;
  int64_t last_len;
};

struct DecodeShape {
  int64_t batch, q_heads, kv_heads, head_dim;
};

// Checks q / out / lse against the cache and the batch size; returns the shape.
qk_status check_decode_io(const char* fn, const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                          const CacheShape& cs, const qk_tensor* out, const qk_tensor* lse, DecodeShape* ds) {
  QK_TRY(check_tensor(q, fn, "q"));
  QK_TRY(check_dtype(q, fn, "q", {QK_F32, QK_F16, QK_BF16}));
  if (q->ndim != 3) return fail(QK_ERR_INVALID_ARGUMENT, "%s: q must be 3-d [B, Hq, D], got %d-d", fn, q->ndim);
  if (q->shape[2] != cs.head_dim)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: q head_dim %lld does not match the cache's head_dim %lld", fn,
                (long long)q->shape[2], (long long)cs.head_dim);
  if (q->strides[2] != 1 && q->shape[2] > 1)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: q's last dim must be contiguous (stride %lld)", fn, (long long)q->strides[2]);
  const int64_t hq = q->shape[1];
  if (hq < 1 || hq % cs.heads != 0)
    return fail(QK_ERR_INVALID_ARGUMENT,
                "%s: q has %lld heads, which is not a positive multiple of the cache's %lld kv heads", fn,
                (long long)hq, (long long)cs.heads);
  QK_TRY(check_same_device(q, k_cache, fn, "q", "k_cache"));
  QK_TRY(check_tensor(out, fn, "out"));
  QK_TRY(check_dtype(out, fn, "out", {QK_F32, QK_F16, QK_BF16}));
  QK_TRY(check_contiguous(out, fn, "out"));
  if (out->ndim != 3 || out->shape[0] != q->shape[0] || out->shape[1] != hq || out->shape[2] != cs.head_dim)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: out must be [%lld, %lld, %lld] like q", fn, (long long)q->shape[0],
                (long long)hq, (long long)cs.head_dim);
  QK_TRY(check_same_device(out, k_cache, fn, "out", "k_cache"));
  QK_TRY(check_no_overlap(out, q, fn, "out", "q"));
  QK_TRY(check_no_overlap(out, k_cache, fn, "out", "k_cache"));
  QK_TRY(check_no_overlap(out, v_cache, fn, "out", "v_cache"));
  if (lse) {
    QK_TRY(check_tensor(lse, fn, "lse"));
    QK_TRY(check_dtype(lse, fn, "lse", {QK_F32}));
    QK_TRY(check_contiguous(lse, fn, "lse"));
    if (lse->ndim != 2 || lse->shape[0] != q->shape[0] || lse->shape[1] != hq)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: lse must be [%lld, %lld]", fn, (long long)q->shape[0], (long long)hq);
    QK_TRY(check_same_device(lse, k_cache, fn, "lse", "k_cache"));
    QK_TRY(check_no_overlap(lse, out, fn, "lse", "out"));
    QK_TRY(check_no_overlap(lse, q, fn, "lse", "q"));
    QK_TRY(check_no_overlap(lse, k_cache, fn, "lse", "k_cache"));
    QK_TRY(check_no_overlap(lse, v_cache, fn, "lse", "v_cache"));
  }
  *ds = {q->shape[0], hq, cs.heads, cs.head_dim};
  return QK_OK;
}

// One work item is one partition of one sequence, all heads.
int64_t auto_partition_blocks(const std::vector<SeqPages>& seqs, int64_t block_size) {
  const int64_t threads = worker_threads();
  const int64_t items = (int64_t)seqs.size();
  // 4 items per thread even out sequences of different lengths (the pool hands each thread one
  // contiguous range of items)
  if (items >= 4 * threads) return INT64_MAX;
  int64_t max_pages = 0;
  for (const SeqPages& s : seqs) max_pages = std::max(max_pages, s.num_pages);
  const int64_t parts = ceil_div(4 * threads, std::max<int64_t>(items, 1));
  // partitions of at least 256 tokens: below that the merge costs more than the split gains
  return std::max(ceil_div(256, block_size), ceil_div(std::max<int64_t>(max_pages, 1), parts));
}

qk_status decode_cpu(const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache, const CacheShape& cs,
                     const DecodeShape& ds, const std::vector<SeqPages>& seqs, float scale, int64_t partition_blocks,
                     const qk_tensor* out, const qk_tensor* lse) {
  const int64_t B = ds.batch, Hq = ds.q_heads, Hkv = ds.kv_heads, D = ds.head_dim;
  const int group = (int)(Hq / Hkv);
  if (B == 0) return QK_OK;
  const int64_t pb = partition_blocks > 0 ? partition_blocks : auto_partition_blocks(seqs, cs.block_size);

  // part_start[b]: index of sequence b's first partition; a sequence without pages has one
  std::vector<int64_t> part_start((size_t)B + 1, 0);
  for (int64_t b = 0; b < B; b++)
    part_start[b + 1] = part_start[b] + std::max<int64_t>(1, ceil_div(seqs[b].num_pages, pb));
  const int64_t total_parts = part_start[B];
  const bool split = total_parts > B;
  // partial results of split sequences: [part][Hq][D] and [part][Hq]
  std::vector<float> part_out, part_lse;
  if (split) {
    part_out.assign((size_t)(total_parts * Hq * D), 0.0f);
    part_lse.assign((size_t)(total_parts * Hq), -INFINITY);
  }

  CacheView view{k_cache->data, v_cache->data, k_cache->strides[0], v_cache->strides[0], cs.heads * D,
                 k_cache->dtype, (int32_t)cs.block_size, (int32_t)D};
  const CpuKernels& k = kernels();
  const int64_t scratch_floats = decode_scratch_floats((int)Hkv, group, (int)D, (int)cs.block_size);
  float* lse_data = lse ? static_cast<float*>(lse->data) : nullptr;

  parallel_for(total_parts, 1, [&](int64_t i0, int64_t i1) {
    // not zeroed: the kernels initialize what they read
    std::unique_ptr<float[]> buf(new float[(size_t)(scratch_floats + 2 * Hq * D + Hq)]);
    float* scratch = buf.get();
    float* qf = scratch + scratch_floats;
    float* of = qf + Hq * D;
    float* lf = of + Hq * D;
    for (int64_t part = i0; part < i1; part++) {
      const int64_t b = std::upper_bound(part_start.begin(), part_start.end(), part) - part_start.begin() - 1;
      const SeqPages& s = seqs[b];
      const int64_t first = (part - part_start[b]) * pb;
      const int64_t count = std::max<int64_t>(0, std::min(pb, s.num_pages - first));
      const int64_t last_len = first + count == s.num_pages ? s.last_len : cs.block_size;
      for (int64_t head = 0; head < Hq; head++)
        copy_row(q->data, q->dtype, b * q->strides[0] + head * q->strides[1], qf, QK_F32, head * D, D);
      k.decode(view, s.pages + first, count, last_len, qf, (int)Hkv, group, scale, of, lf, scratch);
      if (part_start[b + 1] - part_start[b] == 1) {
        copy_row(of, QK_F32, 0, out->data, out->dtype, b * Hq * D, Hq * D);
        if (lse_data) memcpy(lse_data + b * Hq, lf, sizeof(float) * (size_t)Hq);
      } else {
        memcpy(&part_out[(size_t)(part * Hq * D)], of, sizeof(float) * (size_t)(Hq * D));
        memcpy(&part_lse[(size_t)(part * Hq)], lf, sizeof(float) * (size_t)Hq);
      }
    }
  });

  if (split) {
    parallel_for(B * Hq, 8, [&](int64_t r0, int64_t r1) {
      std::vector<float> acc((size_t)D);
      for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / Hq, head = r % Hq;
        const int64_t p0 = part_start[b], p1 = part_start[b + 1];
        if (p1 - p0 == 1) continue;
        memcpy(acc.data(), &part_out[(size_t)((p0 * Hq + head) * D)], sizeof(float) * (size_t)D);
        float acc_lse = part_lse[(size_t)(p0 * Hq + head)];
        for (int64_t p = p0 + 1; p < p1; p++) {
          const float* po = &part_out[(size_t)((p * Hq + head) * D)];
          const MergeWeights w = merge_weights(acc_lse, part_lse[(size_t)(p * Hq + head)]);
          for (int64_t d = 0; d < D; d++) acc[d] = merge_value(w, acc[d], po[d]);
          acc_lse = w.lse;
        }
        copy_row(acc.data(), QK_F32, 0, out->data, out->dtype, r * D, D);
        if (lse_data) lse_data[r] = acc_lse;
      }
    });
  }
  return QK_OK;
}

qk_status check_partition(int64_t partition_blocks, const char* fn) {
  if (partition_blocks < 0)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: partition_blocks %lld is negative (0 = automatic)", fn,
                (long long)partition_blocks);
  return QK_OK;
}

qk_status check_scale(float scale, const char* fn) {
  if (!isfinite(scale)) return fail(QK_ERR_INVALID_ARGUMENT, "%s: scale %g is not finite", fn, (double)scale);
  return QK_OK;
}

}  // namespace

extern "C" {

QK_API qk_status qk_attention_write_kv(const qk_tensor* key, const qk_tensor* value, const qk_tensor* k_cache,
                                       const qk_tensor* v_cache, const qk_tensor* slot_mapping, qk_stream stream) {
  const char* fn = "qk_attention_write_kv";
  return guard(fn, [&]() -> qk_status {
    CacheShape cs;
    QK_TRY(check_kv_pair(k_cache, v_cache, fn, &cs));
    QK_TRY(check_index(slot_mapping, fn, "slot_mapping", QK_I64, 1));
    const int64_t T = slot_mapping->shape[0];
    const qk_tensor* kv[2] = {key, value};
    const char* names[2] = {"key", "value"};
    for (int i = 0; i < 2; i++) {
      QK_TRY(check_tensor(kv[i], fn, names[i]));
      QK_TRY(check_dtype(kv[i], fn, names[i], {QK_F32, QK_F16, QK_BF16}));
      if (kv[i]->ndim != 3 || kv[i]->shape[0] != T || kv[i]->shape[1] != cs.heads || kv[i]->shape[2] != cs.head_dim)
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s must be [%lld, %lld, %lld] (tokens, kv heads, head_dim)", fn,
                    names[i], (long long)T, (long long)cs.heads, (long long)cs.head_dim);
      if (kv[i]->strides[2] != 1 && cs.head_dim > 1)
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: %s's last dim must be contiguous", fn, names[i]);
      QK_TRY(check_same_device(kv[i], k_cache, fn, names[i], "k_cache"));
      QK_TRY(check_no_overlap(kv[i], k_cache, fn, names[i], "k_cache"));
      QK_TRY(check_no_overlap(kv[i], v_cache, fn, names[i], "v_cache"));
    }
    QK_TRY(check_no_overlap(k_cache, v_cache, fn, "k_cache", "v_cache"));
    QK_TRY(check_same_device(slot_mapping, k_cache, fn, "slot_mapping", "k_cache"));
    QK_TRY(check_stream(stream, k_cache, fn));
    if (T == 0) return QK_OK;
    if (k_cache->device_kind == QK_DEVICE_CUDA)
      return cuda::attention_write_kv(key, value, k_cache, v_cache, slot_mapping, stream);

    const int64_t* slots = static_cast<const int64_t*>(slot_mapping->data);
    const int64_t capacity = cs.num_blocks * cs.block_size;
    std::vector<int64_t> used;
    for (int64_t t = 0; t < T; t++) {
      if (slots[t] < 0) continue;
      if (slots[t] >= capacity)
        return fail(QK_ERR_INVALID_ARGUMENT,
                    "%s: slot_mapping[%lld] = %lld is beyond the cache (%lld blocks x %lld slots = %lld slots)", fn,
                    (long long)t, (long long)slots[t], (long long)cs.num_blocks, (long long)cs.block_size,
                    (long long)capacity);
      used.push_back(slots[t]);
    }
    std::sort(used.begin(), used.end());
    for (size_t i = 1; i < used.size(); i++)
      if (used[i] == used[i - 1])
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: slot %lld is named by two tokens of slot_mapping", fn,
                    (long long)used[i]);
    const int64_t H = cs.heads, D = cs.head_dim;
    parallel_for(T, 64, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; t++) {
        if (slots[t] < 0) continue;
        const int64_t block = slots[t] / cs.block_size, off = slots[t] % cs.block_size;
        for (int64_t h = 0; h < H; h++) {
          copy_row(key->data, key->dtype, t * key->strides[0] + h * key->strides[1], k_cache->data, k_cache->dtype,
                   block * k_cache->strides[0] + (off * H + h) * D, D);
          copy_row(value->data, value->dtype, t * value->strides[0] + h * value->strides[1], v_cache->data,
                   v_cache->dtype, block * v_cache->strides[0] + (off * H + h) * D, D);
        }
      }
    });
    return QK_OK;
  });
}

QK_API qk_status qk_attention_copy_blocks(const qk_tensor* cache, const qk_tensor* block_mapping, qk_stream stream) {
  const char* fn = "qk_attention_copy_blocks";
  return guard(fn, [&]() -> qk_status {
    CacheShape cs;
    QK_TRY(check_cache(cache, fn, "cache", &cs));
    QK_TRY(check_stream(stream, cache, fn));
    int64_t n;
    QK_TRY(check_block_mapping(block_mapping, fn, cs.num_blocks, cs.num_blocks, true, &n));
    const int64_t* p = static_cast<const int64_t*>(block_mapping->data);
    const int64_t es = dtype_size(cache->dtype), bytes = cs.block_elems * es;
    char* base = static_cast<char*>(cache->data);
    if (cache->device_kind == QK_DEVICE_CUDA) {
      for (int64_t i = 0; i < n; i++)
        QK_TRY(cuda::memcpy(base + p[2 * i + 1] * cs.block_stride * es, QK_DEVICE_CUDA, cache->device_index,
                            base + p[2 * i] * cs.block_stride * es, QK_DEVICE_CUDA, cache->device_index, bytes, stream));
      return QK_OK;
    }
    parallel_for(n, 4, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++)
        memcpy(base + p[2 * i + 1] * cs.block_stride * es, base + p[2 * i] * cs.block_stride * es, (size_t)bytes);
    });
    return QK_OK;
  });
}

QK_API qk_status qk_attention_swap_blocks(const qk_tensor* src_cache, const qk_tensor* dst_cache,
                                          const qk_tensor* block_mapping, qk_stream stream) {
  const char* fn = "qk_attention_swap_blocks";
  return guard(fn, [&]() -> qk_status {
    CacheShape ss, ds;
    QK_TRY(check_cache(src_cache, fn, "src_cache", &ss));
    QK_TRY(check_cache(dst_cache, fn, "dst_cache", &ds));
    if (src_cache->dtype != dst_cache->dtype)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: src_cache is %s but dst_cache is %s", fn,
                  dtype_name(src_cache->dtype), dtype_name(dst_cache->dtype));
    if (ss.block_size != ds.block_size || ss.heads != ds.heads || ss.head_dim != ds.head_dim)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: src_cache blocks [%lld, %lld, %lld] differ from dst_cache's [%lld, %lld, %lld]",
                  fn, (long long)ss.block_size, (long long)ss.heads, (long long)ss.head_dim, (long long)ds.block_size,
                  (long long)ds.heads, (long long)ds.head_dim);
    QK_TRY(check_no_overlap(src_cache, dst_cache, fn, "src_cache", "dst_cache"));
    const qk_tensor* device_side = src_cache->device_kind == QK_DEVICE_CUDA ? src_cache : dst_cache;
    QK_TRY(check_stream(stream, device_side, fn));
    int64_t n;
    QK_TRY(check_block_mapping(block_mapping, fn, ss.num_blocks, ds.num_blocks, false, &n));
    const int64_t* p = static_cast<const int64_t*>(block_mapping->data);
    const int64_t es = dtype_size(src_cache->dtype), bytes = ss.block_elems * es;
    const char* src = static_cast<const char*>(src_cache->data);
    char* dst = static_cast<char*>(dst_cache->data);
    if (src_cache->device_kind == QK_DEVICE_CUDA || dst_cache->device_kind == QK_DEVICE_CUDA) {
      for (int64_t i = 0; i < n; i++)
        QK_TRY(cuda::memcpy(dst + p[2 * i + 1] * ds.block_stride * es, dst_cache->device_kind, dst_cache->device_index,
                            src + p[2 * i] * ss.block_stride * es, src_cache->device_kind, src_cache->device_index,
                            bytes, stream));
      return QK_OK;
    }
    parallel_for(n, 4, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++)
        memcpy(dst + p[2 * i + 1] * ds.block_stride * es, src + p[2 * i] * ss.block_stride * es, (size_t)bytes);
    });
    return QK_OK;
  });
}

QK_API qk_status qk_attention_paged_decode(const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                                           const qk_tensor* block_tables, const qk_tensor* seq_lens, float scale,
                                           int64_t partition_blocks, const qk_tensor* out, const qk_tensor* lse,
                                           qk_stream stream) {
  const char* fn = "qk_attention_paged_decode";
  return guard(fn, [&]() -> qk_status {
    CacheShape cs;
    DecodeShape ds;
    QK_TRY(check_kv_pair(k_cache, v_cache, fn, &cs));
    QK_TRY(check_decode_io(fn, q, k_cache, v_cache, cs, out, lse, &ds));
    QK_TRY(check_scale(scale, fn));
    QK_TRY(check_partition(partition_blocks, fn));
    QK_TRY(check_index(block_tables, fn, "block_tables", QK_I32, 2));
    QK_TRY(check_index(seq_lens, fn, "seq_lens", QK_I32, 1));
    if (block_tables->shape[0] != ds.batch || seq_lens->shape[0] != ds.batch)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: block_tables has %lld rows and seq_lens %lld entries but q has batch %lld",
                  fn, (long long)block_tables->shape[0], (long long)seq_lens->shape[0], (long long)ds.batch);
    QK_TRY(check_same_device(block_tables, k_cache, fn, "block_tables", "k_cache"));
    QK_TRY(check_same_device(seq_lens, k_cache, fn, "seq_lens", "k_cache"));
    QK_TRY(check_no_overlap(out, block_tables, fn, "out", "block_tables"));
    QK_TRY(check_no_overlap(out, seq_lens, fn, "out", "seq_lens"));
    if (lse) QK_TRY(check_no_overlap(lse, block_tables, fn, "lse", "block_tables"));
    if (lse) QK_TRY(check_no_overlap(lse, seq_lens, fn, "lse", "seq_lens"));
    QK_TRY(check_stream(stream, k_cache, fn));
    if (k_cache->device_kind == QK_DEVICE_CUDA)
      return cuda::attention_paged_decode(q, k_cache, v_cache, block_tables, seq_lens, scale, partition_blocks, out,
                                          lse, stream);

    const int64_t max_blocks = block_tables->shape[1];
    const int32_t* table = static_cast<const int32_t*>(block_tables->data);
    const int32_t* lens = static_cast<const int32_t*>(seq_lens->data);
    std::vector<SeqPages> seqs((size_t)ds.batch);
    for (int64_t b = 0; b < ds.batch; b++) {
      const int64_t len = lens[b];
      if (len < 0 || len > max_blocks * cs.block_size)
        return fail(QK_ERR_INVALID_ARGUMENT,
                    "%s: seq_lens[%lld] = %lld is outside 0..%lld (block_tables holds %lld blocks of %lld per row)", fn,
                    (long long)b, (long long)len, (long long)(max_blocks * cs.block_size), (long long)max_blocks,
                    (long long)cs.block_size);
      const int64_t pages = ceil_div(len, cs.block_size);
      const int32_t* row = table + b * max_blocks;
      for (int64_t j = 0; j < pages; j++)
        if (row[j] < 0 || row[j] >= cs.num_blocks)
          return fail(QK_ERR_INVALID_ARGUMENT, "%s: block_tables[%lld][%lld] = %d is not a block of the cache (0..%lld)",
                      fn, (long long)b, (long long)j, row[j], (long long)cs.num_blocks - 1);
      seqs[b] = {row, pages, pages ? len - (pages - 1) * cs.block_size : 0};
    }
    return decode_cpu(q, k_cache, v_cache, cs, ds, seqs, scale, partition_blocks, out, lse);
  });
}

QK_API qk_status qk_attention_paged_decode_csr(const qk_tensor* q, const qk_tensor* k_cache,
                                               const qk_tensor* v_cache, const qk_tensor* kv_indptr,
                                               const qk_tensor* kv_indices, const qk_tensor* kv_last_page_len,
                                               float scale, int64_t partition_blocks, const qk_tensor* out,
                                               const qk_tensor* lse, qk_stream stream) {
  const char* fn = "qk_attention_paged_decode_csr";
  return guard(fn, [&]() -> qk_status {
    CacheShape cs;
    DecodeShape ds;
    QK_TRY(check_kv_pair(k_cache, v_cache, fn, &cs));
    QK_TRY(check_decode_io(fn, q, k_cache, v_cache, cs, out, lse, &ds));
    QK_TRY(check_scale(scale, fn));
    QK_TRY(check_partition(partition_blocks, fn));
    QK_TRY(check_index(kv_indptr, fn, "kv_indptr", QK_I32, 1));
    QK_TRY(check_index(kv_indices, fn, "kv_indices", QK_I32, 1));
    QK_TRY(check_index(kv_last_page_len, fn, "kv_last_page_len", QK_I32, 1));
    if (kv_indptr->shape[0] != ds.batch + 1 || kv_last_page_len->shape[0] != ds.batch)
      return fail(QK_ERR_INVALID_ARGUMENT,
                  "%s: kv_indptr has %lld entries and kv_last_page_len %lld; batch %lld needs %lld and %lld", fn,
                  (long long)kv_indptr->shape[0], (long long)kv_last_page_len->shape[0], (long long)ds.batch,
                  (long long)ds.batch + 1, (long long)ds.batch);
    const qk_tensor* idx[3] = {kv_indptr, kv_indices, kv_last_page_len};
    const char* idx_names[3] = {"kv_indptr", "kv_indices", "kv_last_page_len"};
    for (int i = 0; i < 3; i++) {
      QK_TRY(check_same_device(idx[i], k_cache, fn, idx_names[i], "k_cache"));
      QK_TRY(check_no_overlap(out, idx[i], fn, "out", idx_names[i]));
      if (lse) QK_TRY(check_no_overlap(lse, idx[i], fn, "lse", idx_names[i]));
    }
    QK_TRY(check_stream(stream, k_cache, fn));
    if (k_cache->device_kind == QK_DEVICE_CUDA)
      return cuda::attention_paged_decode_csr(q, k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len, scale,
                                              partition_blocks, out, lse, stream);

    const int32_t* indptr = static_cast<const int32_t*>(kv_indptr->data);
    const int32_t* indices = static_cast<const int32_t*>(kv_indices->data);
    const int32_t* last = static_cast<const int32_t*>(kv_last_page_len->data);
    const int64_t nnz = kv_indices->shape[0];
    if (indptr[0] != 0) return fail(QK_ERR_INVALID_ARGUMENT, "%s: kv_indptr[0] = %d, must be 0", fn, indptr[0]);
    std::vector<SeqPages> seqs((size_t)ds.batch);
    for (int64_t b = 0; b < ds.batch; b++) {
      if (indptr[b + 1] < indptr[b] || indptr[b + 1] > nnz)
        return fail(QK_ERR_INVALID_ARGUMENT,
                    "%s: kv_indptr[%lld] = %d must lie in kv_indptr[%lld] = %d .. len(kv_indices) = %lld", fn,
                    (long long)b + 1, indptr[b + 1], (long long)b, indptr[b], (long long)nnz);
      const int64_t pages = indptr[b + 1] - indptr[b];
      const int64_t last_len = last[b];
      if (pages > 0 ? (last_len < 1 || last_len > cs.block_size) : last_len != 0)
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: kv_last_page_len[%lld] = %lld is invalid for %lld page(s) (%s)", fn,
                    (long long)b, (long long)last_len, (long long)pages,
                    pages > 0 ? "must be 1..block_size" : "must be 0 without pages");
      for (int64_t j = indptr[b]; j < indptr[b + 1]; j++)
        if (indices[j] < 0 || indices[j] >= cs.num_blocks)
          return fail(QK_ERR_INVALID_ARGUMENT, "%s: kv_indices[%lld] = %d is not a block of the cache (0..%lld)", fn,
                      (long long)j, indices[j], (long long)cs.num_blocks - 1);
      seqs[b] = {indices + indptr[b], pages, last_len};
    }
    return decode_cpu(q, k_cache, v_cache, cs, ds, seqs, scale, partition_blocks, out, lse);
  });
}

QK_API qk_status qk_attention_merge(const qk_tensor* out_a, const qk_tensor* lse_a, const qk_tensor* out_b,
                                    const qk_tensor* lse_b, const qk_tensor* out, const qk_tensor* lse,
                                    qk_stream stream) {
  const char* fn = "qk_attention_merge";
  return guard(fn, [&]() -> qk_status {
    const qk_tensor* t[6] = {out_a, lse_a, out_b, lse_b, out, lse};
    const char* names[6] = {"out_a", "lse_a", "out_b", "lse_b", "out", "lse"};
    for (int i = 0; i < 6; i++) {
      QK_TRY(check_tensor(t[i], fn, names[i]));
      QK_TRY(check_dtype(t[i], fn, names[i], {QK_F32}));
      QK_TRY(check_contiguous(t[i], fn, names[i]));
      if (i > 0) QK_TRY(check_same_device(t[0], t[i], fn, names[0], names[i]));
    }
    if (out->ndim < 1) return fail(QK_ERR_INVALID_ARGUMENT, "%s: out must have a last (head_dim) dimension", fn);
    const int64_t D = out->shape[out->ndim - 1], rows = numel(lse);
    QK_TRY(check_numel(out, fn, "out", rows * D));
    QK_TRY(check_numel(out_a, fn, "out_a", rows * D));
    QK_TRY(check_numel(out_b, fn, "out_b", rows * D));
    QK_TRY(check_numel(lse_a, fn, "lse_a", rows));
    QK_TRY(check_numel(lse_b, fn, "lse_b", rows));
    // The output may be one of the inputs exactly (element i only reads element i), never a
    // partial overlap.
    for (int dst = 4; dst < 6; dst++)
      for (int src = 0; src < 4; src++) {
        if (t[dst]->data == t[src]->data && t[dst]->nbytes == t[src]->nbytes && (src % 2) == (dst % 2)) continue;
        QK_TRY(check_no_overlap(t[dst], t[src], fn, names[dst], names[src]));
      }
    QK_TRY(check_no_overlap(out, lse, fn, "out", "lse"));
    QK_TRY(check_stream(stream, out, fn));
    if (rows == 0) return QK_OK;
    if (out->device_kind == QK_DEVICE_CUDA) return cuda::attention_merge(out_a, lse_a, out_b, lse_b, out, lse, stream);
    const float* oa = static_cast<const float*>(out_a->data);
    const float* ob = static_cast<const float*>(out_b->data);
    const float* la = static_cast<const float*>(lse_a->data);
    const float* lb = static_cast<const float*>(lse_b->data);
    float* o = static_cast<float*>(out->data);
    float* l = static_cast<float*>(lse->data);
    parallel_for(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        const MergeWeights w = merge_weights(la[r], lb[r]);
        for (int64_t d = 0; d < D; d++) o[r * D + d] = merge_value(w, oa[r * D + d], ob[r * D + d]);
        l[r] = w.lse;
      }
    });
    return QK_OK;
  });
}

}  // extern "C"
