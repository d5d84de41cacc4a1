// Radix-select keys for top-k, shared by the CPU kernels and the CUDA kernels.
//
// A key is a 32-bit unsigned integer that orders elements the way the selection wants them:
// the k elements with the LARGEST keys are selected, ties broken by the lower index.
//   magnitude: key = bits & 0x7fffffff        (|x| as an integer; -0.0 and +0.0 tie)
//   largest:   IEEE order mapped onto unsigned (flip all bits of negatives, set the sign of
//              positives); -0.0 is first turned into +0.0 so the two compare equal as IEEE says
//   smallest:  the complement of the largest key
// Subnormals order correctly (the float bit pattern is monotonic in the value); NaN keys lie
// outside the keys of every finite value and Inf, in bins nan_bins_* below, and are rejected.
#pragma once
#include "common/qk_hd.h"

namespace qk::topk {

enum Order : int { kMagnitude = 0, kLargest = 1, kSmallest = 2 };

// Digits of the 32-bit key, most significant first: 11 + 11 + 10 bits.
constexpr int kPasses = 3;
constexpr int kBins = 2048;
QK_HD int digit_shift(int pass) { return pass == 0 ? 21 : (pass == 1 ? 10 : 0); }
QK_HD int digit_bins(int pass) { return pass == 2 ? 1024 : 2048; }

QK_HD uint32_t key_of(uint32_t bits, int order) {
  if (order == kMagnitude) return bits & 0x7fffffffu;
  if (bits == 0x80000000u) bits = 0;  // -0.0 == +0.0
  uint32_t k = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return order == kLargest ? k : ~k;
}

QK_HD bool is_nan_bits(uint32_t bits) { return (bits & 0x7fffffffu) > 0x7f800000u; }
QK_HD bool is_nonfinite_bits(uint32_t bits) { return (bits & 0x7f800000u) == 0x7f800000u; }

// Pass-0 bins (key >> 21) that can hold a NaN: a histogram with nothing in them proves the input
// NaN-free, so the exact scan for the offending index runs only when one may be there.
// Magnitude: NaN keys are 0x7f800001..0x7fffffff -> bins 0x3fc..0x3ff (Inf shares 0x3fc).
// Largest / smallest: +NaN and -NaN land at both ends -> bins 0..3 and 0x7fc..0x7ff.
QK_HD bool nan_bin(int bin, int order) {
  if (order == kMagnitude) return bin >= 0x3fc;
  return bin <= 3 || bin >= 0x7fc;
}

// Bins of |v| (magnitude keys) that can hold Inf or NaN: the DGC step's overflow check.
QK_HD bool nonfinite_magnitude_bin(int bin) { return bin >= 0x3fc; }

// splitmix64: the sampled selection's random start (deterministic for a given seed).
QK_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// One DGC accumulation step for one element, in the reference code's operation order (every
// operation rounded to float32; no FMA). feedback: 0 none, 1 residual, 2 momentum.
//   none:      v = g
//   residual:  v = v + g
//   momentum:  u = m*u + g,          v = v + u          (momentum correction)
//   nesterov:  u = (u + g)*m,        v = (v + u) + g
QK_HD void dgc_accumulate(float g, float& u, float& v, int feedback, bool nesterov, float m) {
  if (feedback == 0) {
    v = g;
  } else if (feedback == 1) {
    v = v + g;
  } else if (!nesterov) {
    float mu = m * u;
    u = mu + g;
    v = v + u;
  } else {
    float s = u + g;
    u = s * m;
    float w = v + u;
    v = w + g;
  }
}

}  // namespace qk::topk
