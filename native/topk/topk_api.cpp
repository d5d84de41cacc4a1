// Top-k / DGC ABI entry points: argument checks, then the CPU driver (topk_select.cpp) or the
// CUDA backend. qk_topk_sampled and qk_dgc_decompress are CPU-only for now (CUDA tensors get
// QK_ERR_UNSUPPORTED, naming the function).
#include <math.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "common/topk.h"
#include "internal.h"
#include "topk/topk_cuda.h"
#include "topk/topk_select.h"

namespace {

using namespace qk;
using namespace qk::topk;

constexpr int64_t kMaxI32Index = (int64_t)1 << 31;  // I32 indices need n <= 2^31

qk_status check_k(int64_t k, int64_t n, const char* fn) {
  if (k < 0 || k > n)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: k = %lld is outside 0..n (n = %lld)", fn, (long long)k, (long long)n);
  return QK_OK;
}

qk_status check_indices(const qk_tensor* indices, int64_t k, int64_t n, const char* fn) {
  QK_TRY(check_flat(indices, fn, "indices", {QK_I64, QK_I32}, k));
  if (indices->dtype == QK_I32 && n > kMaxI32Index)
    return fail(QK_ERR_INVALID_ARGUMENT, "%s: I32 indices cannot address n = %lld elements (use I64)", fn,
                (long long)n);
  return QK_OK;
}

// Every pair of the given tensors (NULLs skipped) on one device and disjoint.
qk_status check_group(const char* fn, std::initializer_list<std::pair<const qk_tensor*, const char*>> ts) {
  const qk_tensor* first = nullptr;
  const char* first_name = nullptr;
  std::vector<std::pair<const qk_tensor*, const char*>> seen;
  for (auto& t : ts) {
    if (!t.first) continue;
    if (first) QK_TRY(check_same_device(first, t.first, fn, first_name, t.second));
    else first = t.first, first_name = t.second;
    for (auto& s : seen) QK_TRY(check_no_overlap(s.first, t.first, fn, s.second, t.second));
    seen.push_back(t);
  }
  return QK_OK;
}

const char* nonfinite_name(uint32_t bits) {
  if (is_nan_bits(bits)) return "NaN";
  return (bits >> 31) ? "-Inf" : "+Inf";
}

// Writes 64-bit indices into an I64 or I32 tensor (pad slots [count, k) with -1).
void store_indices(const qk_tensor* indices, const int64_t* idx, int64_t count, int64_t k) {
  if (indices->dtype == QK_I64) {
    int64_t* o = static_cast<int64_t*>(indices->data);
    if (o != idx) memcpy(o, idx, sizeof(int64_t) * (size_t)count);
    for (int64_t j = count; j < k; j++) o[j] = -1;
  } else {
    int32_t* o = static_cast<int32_t*>(indices->data);
    for (int64_t j = 0; j < count; j++) o[j] = (int32_t)idx[j];
    for (int64_t j = count; j < k; j++) o[j] = -1;
  }
}

template <class T>
std::unique_ptr<T[]> scratch(int64_t n) {
  return std::unique_ptr<T[]>(new T[(size_t)std::max<int64_t>(n, 1)]);
}

// Reorders (bits, index) pairs by descending key, ties by ascending index.
void sort_by_key(uint32_t* bits, int64_t* idx, int64_t k, int order) {
  struct Item {
    uint32_t key, bits;
    int64_t index;
  };
  std::vector<Item> items((size_t)k);
  for (int64_t j = 0; j < k; j++) items[j] = {key_of(bits[j], order), bits[j], idx[j]};
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.key != b.key ? a.key > b.key : a.index < b.index;
  });
  for (int64_t j = 0; j < k; j++) bits[j] = items[j].bits, idx[j] = items[j].index;
}

}  // namespace

extern "C" {

QK_API qk_status qk_topk(const qk_tensor* x, int64_t k, int32_t order, int32_t flags, const qk_tensor* indices,
                         const qk_tensor* values, int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_topk";
  return guard(fn, [&]() -> qk_status {
    if (nonfinite_index) *nonfinite_index = -1;
    QK_TRY(check_flat(x, fn, "x", {QK_F32}, -1));
    const int64_t n = numel(x);
    QK_TRY(check_k(k, n, fn));
    if (order < QK_TOPK_MAGNITUDE || order > QK_TOPK_SMALLEST)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: order %d is not QK_TOPK_MAGNITUDE, _LARGEST or _SMALLEST", fn, order);
    if (flags & ~QK_TOPK_SORTED) return fail(QK_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x", fn, flags);
    QK_TRY(check_indices(indices, k, n, fn));
    if (values) QK_TRY(check_flat(values, fn, "values", {QK_F32}, k));
    QK_TRY(check_group(fn, {{x, "x"}, {indices, "indices"}, {values, "values"}}));
    QK_TRY(check_stream(stream, x, fn));
    if (k == 0) return QK_OK;
    if (x->device_kind == QK_DEVICE_CUDA) return cuda::topk(x, k, order, flags, indices, values, nonfinite_index, stream);

    std::unique_ptr<int64_t[]> idx_tmp;
    std::unique_ptr<uint32_t[]> bits_tmp;
    int64_t* oi = indices->dtype == QK_I64 ? static_cast<int64_t*>(indices->data) : (idx_tmp = scratch<int64_t>(k)).get();
    uint32_t* ob = values ? static_cast<uint32_t*>(values->data) : (bits_tmp = scratch<uint32_t>(k)).get();
    const uint32_t* xb = static_cast<const uint32_t*>(x->data);
    int64_t bad = -1;
    qk_status st = select_exact(xb, nullptr, n, k, order, nullptr, ob, oi, &bad);
    if (st == QK_ERR_NON_FINITE) {
      if (nonfinite_index) *nonfinite_index = bad;
      return fail(QK_ERR_NON_FINITE, "%s: x[%lld] is NaN", fn, (long long)bad);
    }
    QK_TRY(st);
    if (flags & QK_TOPK_SORTED) sort_by_key(ob, oi, k, order);
    if (indices->dtype == QK_I32) store_indices(indices, oi, k, k);
    return QK_OK;
  });
}

QK_API qk_status qk_topk_sampled(const qk_tensor* x, int64_t k, double sample_ratio, uint64_t seed,
                                 const qk_tensor* indices, const qk_tensor* values, int64_t* selected_out,
                                 int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_topk_sampled";
  return guard(fn, [&]() -> qk_status {
    if (nonfinite_index) *nonfinite_index = -1;
    if (selected_out) *selected_out = 0;
    QK_TRY(check_flat(x, fn, "x", {QK_F32}, -1));
    const int64_t n = numel(x);
    QK_TRY(check_k(k, n, fn));
    if (!(sample_ratio > 0.0 && sample_ratio <= 1.0))
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: sample_ratio %g is outside (0, 1]", fn, sample_ratio);
    QK_TRY(check_indices(indices, k, n, fn));
    if (values) QK_TRY(check_flat(values, fn, "values", {QK_F32}, k));
    QK_TRY(check_group(fn, {{x, "x"}, {indices, "indices"}, {values, "values"}}));
    QK_TRY(check_stream(stream, x, fn));
    if (k == 0) return QK_OK;
    if (x->device_kind == QK_DEVICE_CUDA)
      return fail(QK_ERR_UNSUPPORTED, "%s: sampled selection runs on the CPU only (use qk_topk on CUDA)", fn);

    auto oi = scratch<int64_t>(k);
    auto ob = scratch<uint32_t>(k);
    int64_t bad = -1, selected = 0;
    qk_status st = select_sampled(static_cast<const uint32_t*>(x->data), n, k, sample_ratio, seed, ob.get(), oi.get(),
                                  &selected, &bad);
    if (st == QK_ERR_NON_FINITE) {
      if (nonfinite_index) *nonfinite_index = bad;
      return fail(QK_ERR_NON_FINITE, "%s: x[%lld] is NaN", fn, (long long)bad);
    }
    QK_TRY(st);
    store_indices(indices, oi.get(), selected, k);
    if (values) {
      uint32_t* vb = static_cast<uint32_t*>(values->data);
      memcpy(vb, ob.get(), sizeof(uint32_t) * (size_t)selected);
      for (int64_t j = selected; j < k; j++) vb[j] = 0;
    }
    if (selected_out) *selected_out = selected;
    return QK_OK;
  });
}

QK_API qk_status qk_dgc_step(const qk_tensor* grad, const qk_tensor* u, const qk_tensor* v, int64_t k,
                             int32_t feedback, float momentum, float clip_norm, int32_t flags, double sample_ratio,
                             uint64_t seed, const qk_tensor* indices, const qk_tensor* values, int64_t* selected_out,
                             int64_t* nonfinite_index, qk_stream stream) {
  const char* fn = "qk_dgc_step";
  return guard(fn, [&]() -> qk_status {
    if (nonfinite_index) *nonfinite_index = -1;
    if (selected_out) *selected_out = 0;
    QK_TRY(check_flat(grad, fn, "grad", {QK_F32}, -1));
    const int64_t n = numel(grad);
    if (feedback < QK_DGC_FEEDBACK_NONE || feedback > QK_DGC_FEEDBACK_MOMENTUM)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: feedback %d is not NONE (0), RESIDUAL (1) or MOMENTUM (2)", fn,
                  feedback);
    if (flags & ~(QK_DGC_NESTEROV | QK_DGC_SAMPLED | QK_DGC_SKIP_FINITE_CHECK))
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: unknown flags 0x%x", fn, flags);
    const bool with_u = feedback == QK_DGC_FEEDBACK_MOMENTUM;
    if (with_u) {
      QK_TRY(check_flat(u, fn, "u", {QK_F32}, n));
      if (!isfinite(momentum))
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: momentum %g is not finite", fn, (double)momentum);
    }
    QK_TRY(check_flat(v, fn, "v", {QK_F32}, n));
    QK_TRY(check_k(k, n, fn));
    if (!(clip_norm >= 0.0f) || !isfinite(clip_norm))
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: clip_norm %g must be finite and >= 0 (0 = no clipping)", fn,
                  (double)clip_norm);
    const bool sampled = flags & QK_DGC_SAMPLED;
    if (sampled && !(sample_ratio > 0.0 && sample_ratio <= 1.0))
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: sample_ratio %g is outside (0, 1]", fn, sample_ratio);
    QK_TRY(check_indices(indices, k, n, fn));
    QK_TRY(check_flat(values, fn, "values", {QK_F32, QK_F16}, k));
    QK_TRY(check_group(fn, {{grad, "grad"}, {with_u ? u : nullptr, "u"}, {v, "v"}, {indices, "indices"},
                            {values, "values"}}));
    QK_TRY(check_stream(stream, grad, fn));
    if (n == 0) return QK_OK;
    if (grad->device_kind == QK_DEVICE_CUDA)
      return cuda::dgc_step(grad, with_u ? u : nullptr, v, k, feedback, momentum, clip_norm, flags, sample_ratio, seed,
                            indices, values, selected_out, nonfinite_index, stream);

    const CpuKernels& K = kernels();
    const float* g = static_cast<const float*>(grad->data);
    float* uu = with_u ? static_cast<float*>(u->data) : nullptr;
    float* vv = static_cast<float*>(v->data);
    const int64_t parts = part_count(n);

    // The bound for exact selection on a large tensor: a threshold t on |v_new| from a sample
    // (v_new computed at the sample positions without writing); the update then collects every
    // element with |v_new| >= t as a candidate. t <= Inf's key, so every non-finite v_new is a
    // candidate. Otherwise (sampled selection, small tensors, k a large fraction of n) the update
    // histograms |v_new| for the first radix pass.
    const bool nesterov = with_u && (flags & QK_DGC_NESTEROV);
    bool scaled = false;
    float scale = 1.0f;
    const KeysAt sample_keys = [&](int64_t i, uint32_t* out) {
      for (int j = 0; j < kSampleGroup; j++) {
        const float gi = scaled ? g[i + j] * scale : g[i + j];
        float ui = with_u ? uu[i + j] : 0.0f, vi = vv[i + j];
        dgc_accumulate(gi, ui, vi, feedback, nesterov, momentum);
        out[j] = f32_bits(vi) & 0x7fffffffu;
      }
    };
    const Prefetch sample_prefetch = [&](int64_t i) {
      __builtin_prefetch(g + i);
      __builtin_prefetch(vv + i);
      if (with_u) __builtin_prefetch(uu + i);
    };
    const bool try_bound = !sampled && bound_applies(n, k);
    BoundSample sample(try_bound ? n : 0, k);
    bool bounded = try_bound && sample.usable();
    bool gathered = false;

    // 1. NaN/Inf scan of grad (before anything is written), fused with the clipping norm when
    // there is one. Without clipping: a plain exponent test at memory speed, run backwards so the
    // update pass finds the start of each worker's range of grad still in cache, with the sample
    // gathered part by part on the side
    if (clip_norm == 0.0f && !(flags & QK_DGC_SKIP_FINITE_CHECK)) {
      const int64_t bad = first_nonfinite_backward(reinterpret_cast<const uint32_t*>(g), n,
                                                   bounded ? &sample : nullptr, sample_keys, sample_prefetch);
      if (bad >= 0) {
        if (nonfinite_index) *nonfinite_index = bad;
        return fail(QK_ERR_NON_FINITE, "%s: grad[%lld] is %s; u and v are unchanged", fn, (long long)bad,
                    nonfinite_name(f32_bits(g[bad])));
      }
      gathered = bounded;
    } else if (clip_norm > 0.0f) {
      std::vector<double> sums((size_t)parts);
      std::vector<int64_t> bad((size_t)parts);
      parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++) sums[p] = K.sum_squares(g, part_begin(p), part_end(p, n), &bad[p]);
      });
      for (int64_t p = 0; p < parts; p++)
        if (bad[p] >= 0) {
          if (nonfinite_index) *nonfinite_index = bad[p];
          return fail(QK_ERR_NON_FINITE, "%s: grad[%lld] is %s; u and v are unchanged", fn, (long long)bad[p],
                      nonfinite_name(f32_bits(g[bad[p]])));
        }
      double sum = 0.0;
      for (double s : sums) sum += s;
      const double norm = sqrt(sum);
      if (clip_norm > 0.0f && norm > (double)clip_norm) {
        scaled = true;
        scale = (float)((double)clip_norm / norm);
      }
    }

    // 2. the fused update
    if (bounded && !gathered)
      parallel_for(sample.groups(), 512,
                   [&](int64_t j0, int64_t j1) { sample.gather(j0, j1, sample_keys, sample_prefetch); });
    const uint32_t t = bounded ? std::min(sample.bound(0), 0x7f800000u) : 0u;
    if (t == 0) bounded = false;  // mostly zeros: every element would be a candidate
    std::vector<uint32_t> hist;
    Candidates cand;
    bool suspicious = false;  // may hold a non-finite v
    if (bounded) {
      // Non-finite v_new: among each block's new candidates (t <= Inf's key); once collection has
      // stopped (too many candidates), found by a scan of the block just written (still in cache).
      std::atomic<bool> nonfinite{false};
      cand = collect_candidates(
          n, n / 16, 2 * k,
          [&](int64_t b, int64_t e, uint32_t* ob, int64_t* oi) {
            const int64_t w =
                K.dgc_update_collect(g, uu, vv, b, e, feedback, nesterov, momentum, scaled, scale, t, ob, oi);
            for (int64_t j = 0; j < w; j++)
              if ((ob[j] & 0x7fffffffu) >= 0x7f800000u) nonfinite = true;
            return w;
          },
          [&](int64_t b, int64_t e) {
            K.dgc_update(g, uu, vv, b, e, feedback, nesterov, momentum, scaled, scale, nullptr);
            if (K.find_nonfinite(reinterpret_cast<const uint32_t*>(vv), b, e) >= 0) nonfinite = true;
          });
      suspicious = nonfinite;
    } else {
      hist.assign((size_t)(parts * kBins), 0u);
      parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++)
          K.dgc_update(g, uu, vv, part_begin(p), part_end(p, n), feedback, nesterov, momentum, scaled, scale,
                       &hist[p * kBins]);
      });
      for (int64_t p = 0; p < parts && !suspicious; p++)
        for (int b = 0x3fc; b < kBins; b++) suspicious |= hist[p * kBins + b] != 0;
    }
    if (suspicious) {
      int64_t bad = first_nan(reinterpret_cast<const uint32_t*>(g), n, true);
      if (bad >= 0) {  // only reachable with QK_DGC_SKIP_FINITE_CHECK
        if (nonfinite_index) *nonfinite_index = bad;
        return fail(QK_ERR_NON_FINITE, "%s: grad[%lld] is %s; u and v have been updated (restore them)", fn,
                    (long long)bad, nonfinite_name(f32_bits(g[bad])));
      }
      bad = first_nan(reinterpret_cast<const uint32_t*>(vv), n, true);
      if (bad >= 0) {
        if (nonfinite_index) *nonfinite_index = bad;
        return fail(QK_ERR_NON_FINITE, "%s: v[%lld] is %s after accumulation (float32 overflow)", fn,
                    (long long)bad, nonfinite_name(f32_bits(vv[bad])));
      }
    }
    if (k == 0) return QK_OK;

    // 3. selection by |v|: among the candidates when there are at least k of them (then the
    // exact top-k is among them), else over all of v
    auto oi = scratch<int64_t>(k);
    auto ob = scratch<uint32_t>(k);
    int64_t selected = k, bad = -1;
    const uint32_t* vb = reinterpret_cast<const uint32_t*>(vv);
    qk_status st;
    if (sampled)
      st = select_sampled(vb, n, k, sample_ratio, seed, ob.get(), oi.get(), &selected, &bad);
    else if (bounded && !cand.overflow && cand.count >= k && !bound_forced_short(0))
      st = select_radix(cand.bits.get(), cand.index.get(), cand.count, k, kMagnitude, nullptr, ob.get(), oi.get(),
                        &bad);
    else if (!bounded)
      st = select_radix(vb, nullptr, n, k, kMagnitude, hist.data(), ob.get(), oi.get(), &bad);
    else {
      // too few candidates: one retry over v with a lower threshold (v is finite by now); too
      // many, or too few again: radix passes over v
      const bool too_few = !cand.overflow;
      cand = Candidates();
      Candidates retry;
      bool nan = false;
      const uint32_t t1 = too_few ? std::min(sample.bound(1), 0x7f800000u) : 0u;
      if (t1 > 0) retry = collect_above(vb, n, k, kMagnitude, t1, &nan);
      if (t1 > 0 && !retry.overflow && retry.count >= k && !bound_forced_short(1))
        st = select_radix(retry.bits.get(), retry.index.get(), retry.count, k, kMagnitude, nullptr, ob.get(), oi.get(),
                          &bad);
      else
        st = select_radix(vb, nullptr, n, k, kMagnitude, nullptr, ob.get(), oi.get(), &bad);
    }
    if (st == QK_ERR_NON_FINITE)
      return fail(QK_ERR_INTERNAL, "%s: v[%lld] is NaN after the finite check (a qkern bug)", fn, (long long)bad);
    QK_TRY(st);

    // 4. pack the pairs, then momentum factor masking and the residual update
    const bool half = values->dtype == QK_F16;
    parallel_for(k, 1 << 12, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; j++) {
        if (j + 16 < std::min(j1, selected)) {  // scattered writes: fetch the lines ahead
          __builtin_prefetch(vv + oi[j + 16], 1);
          if (uu) __builtin_prefetch(uu + oi[j + 16], 1);
        }
        if (j >= selected) {
          if (half) static_cast<uint16_t*>(values->data)[j] = 0;
          else static_cast<float*>(values->data)[j] = 0.0f;
          continue;
        }
        const int64_t i = oi[j];
        const float val = bits_f32(ob[j]);
        if (half) {
          const float sat = std::min(65504.0f, std::max(-65504.0f, val));  // the rest stays in the residual
          const uint16_t h = f32_to_f16(sat);
          static_cast<uint16_t*>(values->data)[j] = h;
          vv[i] = val - f16_to_f32(h);
        } else {
          static_cast<float*>(values->data)[j] = val;
          vv[i] = 0.0f;
        }
        if (uu) uu[i] = 0.0f;
      }
    });
    store_indices(indices, oi.get(), selected, k);
    if (selected_out) *selected_out = selected;
    return QK_OK;
  });
}

QK_API qk_status qk_dgc_decompress(const qk_tensor* indices, const qk_tensor* values, int64_t world_size,
                                   const qk_tensor* out, qk_stream stream) {
  const char* fn = "qk_dgc_decompress";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_flat(indices, fn, "indices", {QK_I64, QK_I32}, -1));
    const int64_t m = numel(indices);
    QK_TRY(check_flat(values, fn, "values", {QK_F32, QK_F16}, m));
    QK_TRY(check_flat(out, fn, "out", {QK_F32}, -1));
    const int64_t n = numel(out);
    if (world_size < 1)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: world_size %lld must be >= 1", fn, (long long)world_size);
    QK_TRY(check_group(fn, {{indices, "indices"}, {values, "values"}, {out, "out"}}));
    QK_TRY(check_stream(stream, out, fn));
    if (out->device_kind == QK_DEVICE_CUDA)
      return fail(QK_ERR_UNSUPPORTED, "%s: decompression runs on the CPU only for now", fn);
    const bool wide = indices->dtype == QK_I64, half = values->dtype == QK_F16;
    auto index_at = [&](int64_t j) -> int64_t {
      return wide ? static_cast<const int64_t*>(indices->data)[j] : static_cast<const int32_t*>(indices->data)[j];
    };
    auto value_at = [&](int64_t j) -> float {
      return half ? f16_to_f32(static_cast<const uint16_t*>(values->data)[j]) : static_cast<const float*>(values->data)[j];
    };
    for (int64_t j = 0; j < m; j++) {
      const int64_t i = index_at(j);
      if (i != -1 && (i < 0 || i >= n))
        return fail(QK_ERR_INVALID_ARGUMENT, "%s: pair %lld has index %lld outside [0, %lld) (and not -1, empty)", fn,
                    (long long)j, (long long)i, (long long)n);
    }
    if (n == 0) return QK_OK;
    float* o = static_cast<float*>(out->data);
    // Each slice of `out` belongs to one task, which scans every pair in order: every element
    // receives its additions in pair order, so the result is deterministic.
    const int64_t slices = std::min<int64_t>(worker_threads(), std::max<int64_t>(1, n / 4096));
    const float divisor = (float)world_size;
    parallel_for(slices, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; s++) {
        const int64_t b = n * s / slices, e = n * (s + 1) / slices;
        memset(o + b, 0, sizeof(float) * (size_t)(e - b));
        for (int64_t j = 0; j < m; j++) {
          const int64_t i = index_at(j);
          if (i >= b && i < e) o[i] += value_at(j);
        }
        if (world_size > 1)
          for (int64_t i = b; i < e; i++) o[i] = o[i] / divisor;
      }
    });
    return QK_OK;
  });
}

QK_API qk_status qk_topk_baseline(const qk_tensor* x, int64_t k, int32_t method, const qk_tensor* indices,
                                  const qk_tensor* values) {
  const char* fn = "qk_topk_baseline";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_flat(x, fn, "x", {QK_F32}, -1));
    const int64_t n = numel(x);
    QK_TRY(check_k(k, n, fn));
    if (method != QK_TOPK_BASELINE_NTH_ELEMENT && method != QK_TOPK_BASELINE_FULL_SORT)
      return fail(QK_ERR_INVALID_ARGUMENT, "%s: method %d is not NTH_ELEMENT (0) or FULL_SORT (1)", fn, method);
    QK_TRY(check_flat(indices, fn, "indices", {QK_I64}, k));
    if (values) QK_TRY(check_flat(values, fn, "values", {QK_F32}, k));
    QK_TRY(check_group(fn, {{x, "x"}, {indices, "indices"}, {values, "values"}}));
    if (x->device_kind != QK_DEVICE_CPU) return fail(QK_ERR_UNSUPPORTED, "%s: the baselines run on the CPU", fn);
    if (k == 0) return QK_OK;
    const float* xs = static_cast<const float*>(x->data);
    int64_t* oi = static_cast<int64_t*>(indices->data);
    if (method == QK_TOPK_BASELINE_NTH_ELEMENT) {
      // |x| copy, std::nth_element for the k-th largest, then one scan in index order
      std::vector<float> mag((size_t)n);
      for (int64_t i = 0; i < n; i++) mag[i] = fabsf(xs[i]);
      std::nth_element(mag.begin(), mag.begin() + (k - 1), mag.end(), std::greater<float>());
      const float t = mag[k - 1];
      int64_t greater = 0;
      for (int64_t i = 0; i < k; i++) greater += mag[i] > t;
      int64_t ties = k - greater, w = 0;
      for (int64_t i = 0; i < n && w < k; i++) {
        const float a = fabsf(xs[i]);
        if (a > t || (a == t && ties-- > 0)) oi[w++] = i;
      }
    } else {
      // sort every (key, index) pair, keep the first k, back to index order
      std::vector<uint64_t> all((size_t)n);
      const bool packed = n <= ((int64_t)1 << 32);
      if (!packed) return fail(QK_ERR_UNSUPPORTED, "%s: the full-sort baseline handles n <= 2^32", fn);
      for (int64_t i = 0; i < n; i++)
        all[i] = ((uint64_t)key_of(f32_bits(xs[i]), kMagnitude) << 32) | (uint64_t)(0xffffffffu - (uint32_t)i);
      std::sort(all.begin(), all.end(), std::greater<uint64_t>());
      for (int64_t j = 0; j < k; j++) oi[j] = (int64_t)(0xffffffffu - (uint32_t)(all[j] & 0xffffffffu));
      std::sort(oi, oi + k);
    }
    if (values)
      for (int64_t j = 0; j < k; j++) static_cast<float*>(values->data)[j] = xs[oi[j]];
    return QK_OK;
  });
}

QK_API qk_status qk_dgc_momentum_baseline(const qk_tensor* grad, const qk_tensor* u, const qk_tensor* v,
                                          float momentum) {
  const char* fn = "qk_dgc_momentum_baseline";
  return guard(fn, [&]() -> qk_status {
    QK_TRY(check_flat(grad, fn, "grad", {QK_F32}, -1));
    const int64_t n = numel(grad);
    QK_TRY(check_flat(u, fn, "u", {QK_F32}, n));
    QK_TRY(check_flat(v, fn, "v", {QK_F32}, n));
    QK_TRY(check_group(fn, {{grad, "grad"}, {u, "u"}, {v, "v"}}));
    if (grad->device_kind != QK_DEVICE_CPU) return fail(QK_ERR_UNSUPPORTED, "%s: the baselines run on the CPU", fn);
    const CpuKernels& K = kernels();
    parallel_for(part_count(n), 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; p++)
        K.dgc_update(static_cast<const float*>(grad->data), static_cast<float*>(u->data), static_cast<float*>(v->data),
                     part_begin(p), part_end(p, n), QK_DGC_FEEDBACK_MOMENTUM, false, momentum, false, 1.0f, nullptr);
    });
    return QK_OK;
  });
}

}  // extern "C"
