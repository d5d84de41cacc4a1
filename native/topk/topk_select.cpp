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
//
// Large inputs (n >= 2^18, k <= n/64) first try a sampled lower bound: a threshold t taken from
// ~16n/k sampled keys so that very likely a few times k keys are >= t. One compare pass (memory
// speed) collects those candidates in index order; with at least k of them the exact top-k is
// among them (every key >= t is there, ties included) and the radix passes run on the small
// candidate set only. With fewer than k, one retry with a lower threshold; with fewer than k
// again, or too many (ties, zeros), the radix passes run over everything: the bound changes the
// speed, never the result.
#include "topk/topk_select.h"

#include <string.h>

#include <cmath>

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
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
  const CpuKernels& K = kernels();
  std::atomic<int64_t> first{INT64_MAX};
  parallel_for(part_count(n), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; p++) {
      int64_t i = -1;
      if (nonfinite) {
        i = K.find_nonfinite(bits, part_begin(p), part_end(p, n));
      } else {
        for (int64_t j = part_begin(p), e = part_end(p, n); j < e; j++)
          if (is_nan_bits(bits[j])) {
            i = j;
            break;
          }
      }
      if (i >= 0) {
        int64_t cur = first.load();
        while (i < cur && !first.compare_exchange_weak(cur, i)) {
        }
        break;  // later parts can only hold larger indices
      }
    }
  });
  int64_t f = first.load();
  return f == INT64_MAX ? -1 : f;
}

namespace {

// The bound pays for its sample only on large inputs, and only while the candidates (a few
// times k) stay a small fraction of n.
constexpr int64_t kBoundMinN = (int64_t)1 << 18;
constexpr int64_t kCollectBlock = (int64_t)1 << 14;

int bound_mode() {  // 0 on, 1 off, 2 first attempt short, 3 all short (QKERN_TOPK_BOUND, a test hook)
  const char* env = getenv("QKERN_TOPK_BOUND");
  if (!env) return 0;
  if (!strcmp(env, "off")) return 1;
  if (!strcmp(env, "retry")) return 2;
  if (!strcmp(env, "fallback")) return 3;
  return 0;
}

}  // namespace

bool bound_applies(int64_t n, int64_t k) { return n >= kBoundMinN && k > 0 && k <= n / 64 && bound_mode() != 1; }
bool bound_forced_short(int attempt) {
  const int mode = bound_mode();
  return mode == 3 || (mode == 2 && attempt == 0);
}

BoundSample::BoundSample(int64_t n, int64_t k) : n_(n) {
  // ~16 expected sample keys among the top k; the threshold rank r = e + 4 sqrt(e) + 4 sits 4
  // standard deviations above that, so the bound falls short of k with probability ~1e-4 on
  // unstructured data, and the candidates are ~2.3k (at least 16384 samples: tighter for larger
  // k, e.g. ~1.3k at k = 1%). The sample costs ~0.15-0.3 ms (cold scattered reads, prefetched,
  // on every worker), a few percent of a pass over 1e7 elements.
  constexpr int64_t G = kSampleGroup;
  if (k <= 0 || n < 32 * G) return;
  int64_t s = (int64_t)std::min(32768.0, std::max(16384.0, 16.0 * (double)n / (double)k));
  s = std::min(s, n / 32) / G * G;
  const double e = (double)s * (double)k / (double)n;
  const int64_t r = (int64_t)std::ceil(e + 4.0 * std::sqrt(e) + 4.0);
  if (s < G || r > s / 4) return;
  groups_ = s / G;
  rank_ = r;
  keys_.reset(new uint32_t[(size_t)s]);
}

int64_t BoundSample::position(int64_t j) const {
  return std::min(((2 * j + 1) * (n_ / 2) / groups_) & ~(kSampleGroup - 1), n_ - kSampleGroup);
}

int64_t BoundSample::first_group_at_or_after(int64_t i) const {
  int64_t lo = 0, hi = groups_;  // position() is non-decreasing in j
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (position(mid) < i) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

void BoundSample::gather(int64_t j0, int64_t j1, const KeysAt& keys_at, const Prefetch& prefetch) {
  constexpr int64_t kAhead = 8;
  for (int64_t j = j0; j < std::min(j0 + kAhead, j1); j++) prefetch(position(j));
  for (int64_t j = j0; j < j1; j++) {
    if (j + kAhead < j1) prefetch(position(j + kAhead));
    keys_at(position(j), keys_.get() + kSampleGroup * j);
  }
}

uint32_t BoundSample::bound(int attempt) {
  uint32_t* k = keys_.get();
  const int64_t s = groups_ * kSampleGroup;
  const int64_t rank = attempt == 0 ? rank_ : std::min(s, 8 * rank_);
  // the rank-th largest: a min-heap of the `rank` largest seen (rank << s: most keys fail the
  // first compare), ~4x faster than nth_element here
  std::vector<uint32_t> heap(k, k + rank);
  std::make_heap(heap.begin(), heap.end(), std::greater<uint32_t>());
  for (int64_t i = rank; i < s; i++)
    if (k[i] > heap.front()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<uint32_t>());
      heap.back() = k[i];
      std::push_heap(heap.begin(), heap.end(), std::greater<uint32_t>());
    }
  return heap.front();
}

bool sampled_bound(int64_t n, int64_t k, const KeysAt& keys_at, const Prefetch& prefetch, uint32_t* t) {
  BoundSample sample(n, k);
  if (!sample.usable()) return false;
  parallel_for(sample.groups(), 512, [&](int64_t j0, int64_t j1) { sample.gather(j0, j1, keys_at, prefetch); });
  *t = sample.bound(0);
  return true;
}

Candidates collect_above(const uint32_t* bits, int64_t n, int64_t k, int order, uint32_t t, bool* nan_seen) {
  const CpuKernels& K = kernels();
  std::atomic<bool> nan{false};
  Candidates c = collect_candidates(
      n, n / 16, 2 * k,
      [&](int64_t b, int64_t e, uint32_t* ob, int64_t* oi) {
        bool seen = false;
        const int64_t w = K.collect(bits, b, e, order, t, ob, oi, &seen);
        if (seen) nan = true;
        return w;
      },
      nullptr);
  if (nan) *nan_seen = true;
  return c;
}

int64_t first_nonfinite_backward(const uint32_t* bits, int64_t n, BoundSample* sample, const KeysAt& keys_at,
                                 const Prefetch& prefetch) {
  const CpuKernels& K = kernels();
  std::atomic<bool> any{false};
  parallel_for(part_count(n), 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p1 - 1; p >= p0 && !any.load(std::memory_order_relaxed); p--) {
      const int64_t b = part_begin(p), e = part_end(p, n);
      const int64_t j0 = sample ? sample->first_group_at_or_after(b) : 0;
      const int64_t j1 = sample ? sample->first_group_at_or_after(e) : 0;
      for (int64_t j = j0; j < j1; j++) prefetch(sample->position(j));  // arrives during the scan
      if (K.find_nonfinite(bits, b, e) >= 0) any = true;
      else if (sample) sample->gather(j0, j1, keys_at, prefetch);
    }
  });
  return any ? first_nan(bits, n, true) : -1;
}

Candidates collect_candidates(int64_t n, int64_t cap, int64_t expected,
                              const std::function<int64_t(int64_t, int64_t, uint32_t*, int64_t*)>& range,
                              const std::function<void(int64_t, int64_t)>& rest) {
  struct Piece {
    int64_t begin;
    std::unique_ptr<uint32_t[]> bits;
    std::unique_ptr<int64_t[]> index;
    int64_t size;
  };
  std::mutex mu;
  std::vector<Piece> pieces;
  std::atomic<int64_t> total{0};
  std::atomic<bool> overflow{false};
  const int64_t parts = part_count(n);
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    const int64_t b0 = part_begin(p0), e0 = part_end(p1 - 1, n);
    Piece pc{b0, nullptr, nullptr, 0};
    int64_t capacity = 0;
    for (int64_t i = b0; i < e0; i += kCollectBlock) {
      const int64_t be = std::min(e0, i + kCollectBlock);
      if (overflow.load(std::memory_order_relaxed)) {
        if (!rest) break;
        rest(i, be);
        continue;
      }
      if (capacity - pc.size < be - i) {  // room for a whole block of hits
        const int64_t want = std::max(pc.size + (be - i),
                                      std::max(2 * capacity, (int64_t)((double)(e0 - b0) / (double)n * 1.5 * expected)));
        std::unique_ptr<uint32_t[]> nb(new uint32_t[(size_t)want]);
        std::unique_ptr<int64_t[]> ni(new int64_t[(size_t)want]);
        if (pc.size) {
          memcpy(nb.get(), pc.bits.get(), sizeof(uint32_t) * (size_t)pc.size);
          memcpy(ni.get(), pc.index.get(), sizeof(int64_t) * (size_t)pc.size);
        }
        pc.bits = std::move(nb);
        pc.index = std::move(ni);
        capacity = want;
      }
      const int64_t w = range(i, be, pc.bits.get() + pc.size, pc.index.get() + pc.size);
      pc.size += w;
      if (w && total.fetch_add(w) + w > cap) overflow = true;
    }
    std::lock_guard<std::mutex> lk(mu);
    pieces.push_back(std::move(pc));
  });
  Candidates c;
  if (overflow) {
    c.overflow = true;
    return c;
  }
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.begin < b.begin; });
  int64_t count = 0;
  for (auto& pc : pieces) count += pc.size;
  c.bits.reset(new uint32_t[(size_t)std::max<int64_t>(count, 1)]);
  c.index.reset(new int64_t[(size_t)std::max<int64_t>(count, 1)]);
  for (auto& pc : pieces) {
    if (pc.size) {
      memcpy(c.bits.get() + c.count, pc.bits.get(), sizeof(uint32_t) * (size_t)pc.size);
      memcpy(c.index.get() + c.count, pc.index.get(), sizeof(int64_t) * (size_t)pc.size);
    }
    c.count += pc.size;
  }
  return c;
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
  if (!src_index && !hist0 && bound_applies(n, k)) {
    BoundSample sample(n, k);
    if (sample.usable()) {
      parallel_for(sample.groups(), 512, [&](int64_t j0, int64_t j1) {
        sample.gather(
            j0, j1,
            [&](int64_t i, uint32_t* out) {
              for (int j = 0; j < kSampleGroup; j++) out[j] = key_of(bits[i + j], order);
            },
            [&](int64_t i) { __builtin_prefetch(bits + i); });
      });
      for (int attempt = 0; attempt < kBoundAttempts; attempt++) {
        const uint32_t t = sample.bound(attempt);
        if (t == 0) break;  // every element would be a candidate
        bool nan = false;
        Candidates c = collect_above(bits, n, k, order, t, &nan);
        if (nan) {
          const int64_t bad = first_nan(bits, n, false);
          if (bad >= 0) {
            *nan_index = bad;
            return QK_ERR_NON_FINITE;
          }
        }
        if (c.overflow) break;
        if (c.count >= k && !bound_forced_short(attempt))
          return select_radix(c.bits.get(), c.index.get(), c.count, k, order, nullptr, out_bits, out_index, nan_index);
      }
    }
  }
  return select_radix(bits, src_index, n, k, order, hist0, out_bits, out_index, nan_index);
}

qk_status select_radix(const uint32_t* bits, const int64_t* src_index, int64_t n, int64_t k, int order,
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
