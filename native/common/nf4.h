// NF4 format math (bitsandbytes layout), shared by CPU and CUDA kernels.
#pragma once
#include "qk_hd.h"

namespace qk::nf4 {

// Code -> value. Exactly bitsandbytes' NF4 table as float32.
#define QK_NF4_TABLE                                                                      \
  {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,               \
   -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,              \
   0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, \
   0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f}

// Decision thresholds: float32 midpoints (T[k] + T[k+1]) * 0.5f, k = 0..14.
// code = number of thresholds strictly below s, so an exact tie goes to the lower code —
// the same answer as bitsandbytes' argmin |s - T[c]| (first minimum wins).
#define QK_NF4_THRESHOLDS                                                                  \
  {-0.8480963706970215f, -0.6106328964233398f, -0.4599952697753906f, -0.33967941999435425f, \
   -0.23460739850997925f, -0.13791173696517944f, -0.045525018125772476f, 0.03979014977812767f, \
   0.120255246758461f, 0.2035212516784668f, 0.2920137643814087f, 0.3893125355243683f,         \
   0.5016634464263916f, 0.6427869200706482f, 0.8614784479141235f}

constexpr int kMinBlocksize = 32;
constexpr int kMaxBlocksize = 4096;
constexpr int kNestedBlocksize = 256;

QK_HD bool valid_blocksize(int64_t b) {
  return b >= kMinBlocksize && b <= kMaxBlocksize && (b & (b - 1)) == 0;
}

// Scaled value -> 4-bit code by binary search over the sorted thresholds (4 compares).
// A zero element always maps to code 7 (value 0), even when inv is Inf (all-zero or
// subnormal-absmax blocks), so an all-zero block decodes to +0.0.
QK_HD int encode(float x, float inv, const float* thr) {
  float s = x == 0.0f ? 0.0f : x * inv;
  int c = 0;
  c += (s > thr[c + 7]) ? 8 : 0;
  c += (s > thr[c + 3]) ? 4 : 0;
  c += (s > thr[c + 1]) ? 2 : 0;
  c += (s > thr[c]) ? 1 : 0;
  return c;
}

// Reciprocal as bitsandbytes computes it: one float32 division.
QK_HD float inverse_absmax(float absmax) { return 1.0f / absmax; }

// Nearest entry of an ascending 256-entry map, ties to the lower index (argmin semantics).
QK_HD int nearest_code(float s, const float* map) {
  int lo = 0, hi = 255;  // find first index with map[i] >= s
  if (s <= map[0]) return 0;
  if (s >= map[255]) {
    // exact-equal duplicates at the top still resolve to the first of them
    int i = 255;
    while (i > 0 && map[i - 1] == map[255] && s - map[i - 1] <= s - map[255]) i--;
    return i;
  }
  while (lo < hi) {
    int mid = (lo + hi) >> 1;
    if (map[mid] >= s) hi = mid; else lo = mid + 1;
  }
  float dl = s - map[lo - 1];
  float dh = map[lo] - s;
  return dl <= dh ? lo - 1 : lo;
}

}  // namespace qk::nf4
