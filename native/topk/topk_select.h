// Exact radix select and DGC sampled-threshold selection on the CPU (topk_select.cpp).
#pragma once
#include <stdint.h>

#include <functional>
#include <memory>

#include "qkern.h"
#include "topk/topk_cpu.h"

namespace qk::topk {

// Work is split into fixed parts of kPartLen elements, independent of the thread count, so
// every per-part partial result (histograms, sums) and hence every output is the same however
// many threads run.
constexpr int64_t kPartLen = (int64_t)1 << 18;
inline int64_t part_count(int64_t n) { return n <= 0 ? 0 : (n + kPartLen - 1) / kPartLen; }
inline int64_t part_begin(int64_t p) { return p * kPartLen; }
inline int64_t part_end(int64_t p, int64_t n) { return n - p * kPartLen < kPartLen ? n : (p + 1) * kPartLen; }

const CpuKernels& kernels();  // for the current cpu_path()

// Exact top-k of the n elements bits[0, n) by key_of(order): writes exactly k (bits, index)
// pairs in ascending index order (index = src_index[i], or i when src_index is null).
// hist0: optional pass-0 histograms already computed by the caller over the same source and
// part split (part_count(n) x kBins, magnitude order only). NaN input: returns
// QK_ERR_NON_FINITE with *nan_index = its lowest index (after src_index mapping).
qk_status select_exact(const uint32_t* bits, const int64_t* src_index, int64_t n, int64_t k, int order,
                       const uint32_t* hist0, uint32_t* out_bits, int64_t* out_index, int64_t* nan_index);

// select_exact without the sampled bound: radix passes over all of bits[0, n).
qk_status select_radix(const uint32_t* bits, const int64_t* src_index, int64_t n, int64_t k, int order,
                       const uint32_t* hist0, uint32_t* out_bits, int64_t* out_index, int64_t* nan_index);

// ---- Sampled lower bound (exact selection stays exact) ---------------------------------------
// A threshold t picked from a small sample so that, very likely, at least k keys are >= t while
// only a few times k are. One pass then collects the candidates (keys >= t) in index order; if
// there are at least k of them the exact top-k lies among them (every key >= t is there, ties
// included), otherwise the caller falls back to select_radix over everything.

// A count short of k usually means the sample was unlucky or the data clustered: one retry with a
// threshold from a rank 8x lower (one more compare pass) before the radix passes over everything.
constexpr int kBoundAttempts = 2;

// Whether the bound is worth trying for n elements and k results. Test hook: the environment
// variable QKERN_TOPK_BOUND=off disables the bound; =retry makes the first attempt's count count
// as short (so the retry runs); =fallback makes every attempt short (so the radix passes over
// everything run after the collection passes).
bool bound_applies(int64_t n, int64_t k);
bool bound_forced_short(int attempt);

// The sample: groups of kSampleGroup adjacent elements (one cache line when aligned) at evenly
// spread positions. keys_at(i, out) writes the keys of elements [i, i + kSampleGroup) to out;
// prefetch(i) is called a few groups ahead (scattered reads: overlap the cache and TLB misses).
constexpr int64_t kSampleGroup = 16;
using KeysAt = std::function<void(int64_t, uint32_t*)>;
using Prefetch = std::function<void(int64_t)>;

class BoundSample {
 public:
  BoundSample(int64_t n, int64_t k);
  bool usable() const { return groups_ > 0; }  // false: k too large for a useful bound
  int64_t groups() const { return groups_; }
  int64_t position(int64_t j) const;
  int64_t first_group_at_or_after(int64_t i) const;  // groups [f(b), f(e)) start in [b, e)
  // Fills the keys of groups [j0, j1) (any thread; disjoint ranges).
  void gather(int64_t j0, int64_t j1, const KeysAt& keys_at, const Prefetch& prefetch);
  uint32_t bound(int attempt);  // once every group is gathered: the threshold of that attempt

 private:
  int64_t n_ = 0, groups_ = 0, rank_ = 0;
  std::unique_ptr<uint32_t[]> keys_;
};

// The threshold from a sample gathered on every worker. Returns false when !usable().
bool sampled_bound(int64_t n, int64_t k, const KeysAt& keys_at, const Prefetch& prefetch, uint32_t* t);

// The lowest index of a NaN or Inf in bits[0, n), or -1. Each worker scans its range from the end
// back to the start, so that the start of its range, where the pass that follows begins, is still
// in the last-level cache. With `sample`, each part's sample groups are prefetched before the part
// is scanned and gathered after it (their scattered reads overlap the streaming scan).
int64_t first_nonfinite_backward(const uint32_t* bits, int64_t n, BoundSample* sample, const KeysAt& keys_at,
                                 const Prefetch& prefetch);

struct Candidates {
  std::unique_ptr<uint32_t[]> bits;
  std::unique_ptr<int64_t[]> index;
  int64_t count = 0;
  bool overflow = false;  // more than `cap` candidates: collection stopped, bits / index are empty
};

// Runs range(begin, end, out_bits, out_index) -> pairs written (at most end - begin) over [0, n)
// in blocks on every worker and gathers the pairs in index order. Once more than `cap` pairs are
// found, collection stops; the remaining blocks are then passed to rest(begin, end) if given.
Candidates collect_candidates(int64_t n, int64_t cap, int64_t expected,
                              const std::function<int64_t(int64_t, int64_t, uint32_t*, int64_t*)>& range,
                              const std::function<void(int64_t, int64_t)>& rest);

// Every element of bits[0, n) with key >= t as (bits, index), in index order, collected on every
// worker (overflow past n/16). Sets *nan_seen when bits holds a NaN (unless overflow stopped it).
Candidates collect_above(const uint32_t* bits, int64_t n, int64_t k, int order, uint32_t t, bool* nan_seen);

// DGC sampled-threshold selection by magnitude (approximate; see qk_topk_sampled in qkern.h).
// Writes *selected (<= k) real pairs in ascending index order to out_bits/out_index.
qk_status select_sampled(const uint32_t* bits, int64_t n, int64_t k, double sample_ratio, uint64_t seed,
                         uint32_t* out_bits, int64_t* out_index, int64_t* selected, int64_t* nan_index);

// The lowest index i in [0, n) with is_nan_bits(bits[i]) (or non-finite when `nonfinite`), or -1.
int64_t first_nan(const uint32_t* bits, int64_t n, bool nonfinite);

}  // namespace qk::topk
