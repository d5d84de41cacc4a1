// Exact top-k on the CPU: an AIR-Top-K-style radix select over 32-bit keys (common/topk.h) in
// three digit passes (11 + 11 + 10 bits), most significant first.
//
// Each pass histograms the digit of the keys still in play ([lo, hi]: the keys sharing the
// prefix chosen so far), picks the bucket holding the k-th largest key, and narrows [lo, hi] to
// it; keys above the bucket are selected for sure. As soon as the selected-plus-candidate set is
// small (<= n/8, after the first pass for any ordinary gradient) it is compacted, in index order,
// into a buffer of (bits, index) pairs and the remaining passes read only that buffer. After the
// last digit the k-th key T is known exactly, and so is how many keys equal to T are needed; the
// final emission writes every key > T and the first `need` keys == T in index order (ties to the
// lowest index). Per-part counts from the histograms give every part its exact output offset,
// so parts write in parallel without atomics and the output is deterministic.
#include "topk/topk_select.h"

#include <string.h>

#include <cmath>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "common/topk.h"
#include "internal.h"

namespace qk::topk {

const CpuKernels& kernels() {
  switch (cpu_path()) {
    case CpuPath::Avx512: return avx512_kernels();
    case CpuPath::Avx2: return avx2_kernels();
    default: return scalar_kernels();
  }
}

int64_t first_nan(const uint32_t* bits, int64_t n, bool nonfinite) {
  std::atomic<int64_t> first{INT64_MAX};
  parallel_for(part_count(n), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++)
      for (int64_t i = part_begin(p), e = part_end(p, n); i < e; i++)
        if (nonfinite ? is_nonfinite_bits(bits[i]) : is_nan_bits(bits[i])) {
          int64_t cur = first.load();
          while (i < cur && !first.compare_exchange_weak(cur, i)) {
          }
          p = p1;  // later parts can only hold larger indices
          break;
        }
  });
  int64_t f = first.load();
  return f == INT64_MAX ? -1 : f;
}

namespace {

template <class T>
std::unique_ptr<T[]> uninitialized(int64_t n) {
  return std::unique_ptr<T[]>(new T[(size_t)std::max<int64_t>(n, 1)]);
}

}  // namespace

qk_status select_exact(const uint32_t* bits, const int64_t* src_index, int64_t n, int64_t k, int order,
                       const uint32_t* hist0, uint32_t* out_bits, int64_t* out_index, int64_t* nan_index) {
  *nan_index = -1;
  if (k <= 0 || n <= 0) return QK_OK;
  const CpuKernels& K = kernels();
  const uint32_t* sb = bits;
  const int64_t* si = src_index;
  int64_t m = n;
  bool may_compact = true;
  std::unique_ptr<uint32_t[]> buf_bits;
  std::unique_ptr<int64_t[]> buf_index;

  uint32_t lo = 0, hi = 0xffffffffu;
  int64_t need = k;  // still to take from the keys in [lo, hi]
  int64_t parts = part_count(m);
  std::vector<uint32_t> hist;
  std::vector<int64_t> above((size_t)parts), inrange((size_t)parts);
  std::vector<int64_t> total(kBins);

  for (int pass = 0; pass < kPasses; pass++) {
    const int shift = digit_shift(pass);
    hist.assign((size_t)(parts * kBins), 0u);
    if (pass == 0 && hist0) {
      memcpy(hist.data(), hist0, sizeof(uint32_t) * (size_t)(parts * kBins));
      std::fill(above.begin(), above.end(), 0);
    } else {
      parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++)
          above[p] = K.histogram(sb, part_begin(p), part_end(p, m), order, lo, hi, shift, &hist[p * kBins]);
      });
    }
    std::fill(total.begin(), total.end(), 0);
    for (int64_t p = 0; p < parts; p++)
      for (int b = 0; b < kBins; b++) total[b] += hist[p * kBins + b];
    if (pass == 0) {
      int64_t suspicious = 0;
      for (int b = 0; b < kBins; b++)
        if (nan_bin(b, order)) suspicious += total[b];
      if (suspicious) {
        int64_t bad = first_nan(sb, m, false);
        if (bad >= 0) {
          *nan_index = si ? si[bad] : bad;
          return QK_ERR_NON_FINITE;
        }
      }
    }
    // the bucket holding the need-th largest key among [lo, hi]
    int64_t cum = 0;
    int b = kBins - 1;
    for (; b >= 0; b--) {
      if (cum + total[b] >= need) break;
      cum += total[b];
    }
    if (b < 0) return fail(QK_ERR_INTERNAL, "topk: radix select lost elements in pass %d (a qkern bug)", pass);
    need -= cum;
    lo = (lo & ~((uint32_t)(kBins - 1) << shift)) | ((uint32_t)b << shift);
    hi = lo | (shift ? (1u << shift) - 1u : 0u);
    int64_t kept = 0;
    for (int64_t p = 0; p < parts; p++) {
      const uint32_t* h = &hist[p * kBins];
      for (int j = b + 1; j < kBins; j++) above[p] += h[j];
      inrange[p] = h[b];
      kept += above[p] + inrange[p];
    }
    if (pass + 1 < kPasses && may_compact && kept <= m / 8) {
      // keys > hi (selected) and keys in [lo, hi] (candidates), in index order
      auto nb = uninitialized<uint32_t>(kept);
      auto ni = uninitialized<int64_t>(kept);
      std::vector<int64_t> offset((size_t)parts + 1, 0);
      for (int64_t p = 0; p < parts; p++) offset[p + 1] = offset[p] + above[p] + inrange[p];
      std::atomic<bool> mismatch{false};
      parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; p++) {
          int64_t w = K.emit(sb, si, part_begin(p), part_end(p, m), order, lo, hi, INT64_MAX, nb.get() + offset[p],
                             ni.get() + offset[p]);
          if (w != offset[p + 1] - offset[p]) mismatch = true;
        }
      });
      if (mismatch) return fail(QK_ERR_INTERNAL, "topk: compaction count mismatch (a qkern bug)");
      buf_bits = std::move(nb);
      buf_index = std::move(ni);
      sb = buf_bits.get();
      si = buf_index.get();
      m = kept;
      may_compact = false;
      parts = part_count(m);
      above.assign((size_t)parts, 0);
      inrange.assign((size_t)parts, 0);
    }
  }

  // lo == hi == T: every key > T, plus the first `need` keys == T in index order
  std::vector<int64_t> quota((size_t)parts), offset((size_t)parts + 1, 0);
  int64_t ties_before = 0;
  for (int64_t p = 0; p < parts; p++) {
    quota[p] = std::max<int64_t>(0, std::min(inrange[p], need - ties_before));
    ties_before += inrange[p];
    offset[p + 1] = offset[p] + above[p] + quota[p];
  }
  if (offset[parts] != k)
    return fail(QK_ERR_INTERNAL, "topk: final count %lld != k %lld (a qkern bug)", (long long)offset[parts],
                (long long)k);
  std::atomic<bool> mismatch{false};
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) {
      if (offset[p + 1] == offset[p]) continue;
      int64_t w = K.emit(sb, si, part_begin(p), part_end(p, m), order, lo, hi, quota[p], out_bits + offset[p],
                         out_index + offset[p]);
      if (w != offset[p + 1] - offset[p]) mismatch = true;
    }
  });
  if (mismatch) return fail(QK_ERR_INTERNAL, "topk: emission count mismatch (a qkern bug)");
  return QK_OK;
}

qk_status select_sampled(const uint32_t* bits, int64_t n, int64_t k, double sample_ratio, uint64_t seed,
                         uint32_t* out_bits, int64_t* out_index, int64_t* selected, int64_t* nan_index) {
  *selected = 0;
  *nan_index = -1;
  if (k <= 0 || n <= 0) return QK_OK;
  const CpuKernels& K = kernels();
  const double density = (double)k / (double)n;
  // at least ceil(2 / density) samples, so the sample's own top-k is >= 2 elements
  double want = std::max(std::ceil((double)n * sample_ratio), std::ceil(2.0 / density));
  int64_t ns = (int64_t)std::min<double>((double)n, std::max(1.0, want));
  int64_t stride = std::max<int64_t>(1, n / ns);
  if (stride % 2 == 0) stride--;  // odd stride: no lock-step with power-of-two row lengths
  const int64_t start = (int64_t)(splitmix64(seed) % (uint64_t)stride);
  const int64_t samples = (n - start + stride - 1) / stride;
  std::vector<uint32_t> keys((size_t)samples);
  parallel_for(samples, 1 << 16, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; s++) keys[s] = key_of(bits[start + s * stride], kMagnitude);
  });
  const int64_t ks = std::max<int64_t>(1, std::min<int64_t>(samples, (int64_t)std::ceil((double)samples * density)));
  std::nth_element(keys.begin(), keys.begin() + (ks - 1), keys.end(), std::greater<uint32_t>());
  uint32_t t = keys[ks - 1];

  const int64_t parts = part_count(n);
  std::vector<int64_t> counts((size_t)parts);
  const int64_t low = (int64_t)std::ceil(0.8 * (double)k);
  int64_t count = 0;
  for (int round = 0; round < 10; round++) {
    parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; p++) counts[p] = K.count_at_least(bits, part_begin(p), part_end(p, n), kMagnitude, t);
    });
    count = 0;
    for (int64_t c : counts) count += c;
    if (count >= low || t == 0) break;
    t = key_of(f32_bits(bits_f32(t) * 0.8f), kMagnitude);  // lower the threshold and filter again
  }

  if (count < low) {  // the sample misled us ten times: exact selection over everything
    *selected = k;
    return select_exact(bits, nullptr, n, k, kMagnitude, nullptr, out_bits, out_index, nan_index);
  }
  // candidates |x| >= t, in index order
  const bool direct = count <= k;
  std::unique_ptr<uint32_t[]> cb(direct ? nullptr : new uint32_t[(size_t)count]);
  std::unique_ptr<int64_t[]> ci(direct ? nullptr : new int64_t[(size_t)count]);
  uint32_t* wb = direct ? out_bits : cb.get();
  int64_t* wi = direct ? out_index : ci.get();
  std::vector<int64_t> offset((size_t)parts + 1, 0);
  for (int64_t p = 0; p < parts; p++) offset[p + 1] = offset[p] + counts[p];
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++)
      if (counts[p]) K.emit(bits, nullptr, part_begin(p), part_end(p, n), kMagnitude, t, 0xffffffffu, INT64_MAX,
                            wb + offset[p], wi + offset[p]);
  });
  if (direct) {
    int64_t bad = first_nan(out_bits, count, false);
    if (bad >= 0) {
      *nan_index = out_index[bad];
      return QK_ERR_NON_FINITE;
    }
    *selected = count;
    return QK_OK;
  }
  // more than k survivors: the exact top-k among them is the exact global top-k
  *selected = k;
  return select_exact(cb.get(), ci.get(), count, k, kMagnitude, nullptr, out_bits, out_index, nan_index);
}

}  // namespace qk::topk
