// Paged-attention math shared by the CPU and CUDA kernels: the merge of two partial softmax
// results (out, lse) over disjoint key sets, and the validation rules for page tables.
#pragma once
#include <math.h>

#include "qk_hd.h"

namespace qk::attention {

constexpr int kMinBlockSize = 8;
constexpr int kMaxBlockSize = 256;

QK_HD bool valid_block_size(int64_t b) { return b >= kMinBlockSize && b <= kMaxBlockSize; }

// Weights of a two-way merge. An empty side (lse = -inf) has weight 0, and both empty gives
// (0, 0, -inf) instead of exp(-inf - -inf) = NaN.
struct MergeWeights {
  float wa, wb, lse;
};

QK_HD MergeWeights merge_weights(float lse_a, float lse_b) {
  const float neg_inf = -INFINITY;
  if (lse_a == neg_inf && lse_b == neg_inf) return {0.0f, 0.0f, neg_inf};
  const float m = lse_a > lse_b ? lse_a : lse_b;
  const float wa = expf(lse_a - m), wb = expf(lse_b - m);
  return {wa, wb, m + logf(wa + wb)};
}

// (wa * a + wb * b) / (wa + wb), where a side of weight 0 is left out entirely, so an empty
// partial's output (0, or anything) never turns the result into NaN.
QK_HD float merge_value(MergeWeights w, float a, float b) {
  const float sum = w.wa + w.wb;
  if (sum == 0.0f) return 0.0f;
  float num = 0.0f;
  if (w.wa > 0.0f) num = w.wa * a;
  if (w.wb > 0.0f) num = num + w.wb * b;
  return num / sum;
}

}  // namespace qk::attention
