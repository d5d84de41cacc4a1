// Paged decode attention, portable C++ (the reference CPU path; no SIMD intrinsics).
#include <math.h>
#include <string.h>

#include "attention/attention_cpu.h"
#include "common/qk_hd.h"
#include "qkern.h"

namespace qk::attention {
namespace {

inline float element(const void* base, int32_t dtype, int64_t i) {
  switch (dtype) {
    case QK_F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case QK_BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

}  // namespace

void decode_scalar(const CacheView& c, const int32_t* pages, int64_t num_pages, int64_t last_page_len,
                   const float* q, int kv_heads, int group, float scale, float* out, float* lse, float* scratch) {
  const int D = c.head_dim;
  const int64_t heads = (int64_t)kv_heads * group;
  float* acc = scratch;              // heads x D, unnormalized output
  float* m = acc + heads * D;        // running max of the scaled scores, per query head
  float* l = m + heads;              // running sum of exp(score - m)
  float* s = l + heads;              // scores of one page for one group: block_size x group
  for (int64_t h = 0; h < heads; h++) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
  }
  memset(acc, 0, sizeof(float) * (size_t)(heads * D));

  for (int64_t p = 0; p < num_pages; p++) {
    const int64_t tokens = p + 1 == num_pages ? last_page_len : c.block_size;
    for (int kvh = 0; kvh < kv_heads; kvh++) {
      const int64_t k_page = pages[p] * c.k_block_stride + (int64_t)kvh * D;
      const int64_t v_page = pages[p] * c.v_block_stride + (int64_t)kvh * D;
      const float* qh = q + (int64_t)kvh * group * D;
      float* ah = acc + (int64_t)kvh * group * D;
      float* mh = m + (int64_t)kvh * group;
      float* lh = l + (int64_t)kvh * group;
      for (int64_t t = 0; t < tokens; t++) {
        const int64_t row = k_page + t * c.token_stride;
        for (int g = 0; g < group; g++) {
          const float* qg = qh + (int64_t)g * D;
          float dot = 0.0f;
          for (int d = 0; d < D; d++) dot += qg[d] * element(c.k, c.dtype, row + d);
          s[t * group + g] = dot * scale;
        }
      }
      for (int g = 0; g < group; g++) {
        float page_max = -INFINITY;
        for (int64_t t = 0; t < tokens; t++) page_max = fmaxf(page_max, s[t * group + g]);
        const float m_new = fmaxf(mh[g], page_max);
        // mh[g] = -inf before the first page: the old state is empty and its weight is exactly 0
        const float alpha = mh[g] == -INFINITY ? 0.0f : expf(mh[g] - m_new);
        float sum = 0.0f;
        for (int64_t t = 0; t < tokens; t++) {
          const float e = expf(s[t * group + g] - m_new);
          s[t * group + g] = e;
          sum += e;
        }
        lh[g] = lh[g] * alpha + sum;
        mh[g] = m_new;
        float* ag = ah + (int64_t)g * D;
        for (int d = 0; d < D; d++) ag[d] *= alpha;
      }
      for (int64_t t = 0; t < tokens; t++) {
        const int64_t row = v_page + t * c.token_stride;
        for (int d = 0; d < D; d++) {
          const float v = element(c.v, c.dtype, row + d);
          for (int g = 0; g < group; g++) ah[(int64_t)g * D + d] += s[t * group + g] * v;
        }
      }
    }
  }

  for (int64_t h = 0; h < heads; h++) {
    const float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
    for (int d = 0; d < D; d++) out[h * D + d] = acc[h * D + d] * inv;
    lse[h] = l[h] > 0.0f ? m[h] + logf(l[h]) : -INFINITY;
  }
}

const CpuKernels& scalar_kernels() {
  static const CpuKernels k = {decode_scalar};
  return k;
}

}  // namespace qk::attention
