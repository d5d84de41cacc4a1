// The CUDA entry points of the top-k / DGC family (cuda/topk.cu when built with nvcc,
// native/topk/topk_cuda_absent.cpp otherwise). The ABI layer has checked every argument.
#pragma once
#include "qkern.h"

namespace qk::cuda {

qk_status topk(const qk_tensor* x, int64_t k, int32_t order, int32_t flags, const qk_tensor* indices,
               const qk_tensor* values, int64_t* nonfinite_index, qk_stream stream);
qk_status dgc_step(const qk_tensor* grad, const qk_tensor* u, const qk_tensor* v, int64_t k, int32_t feedback,
                   float momentum, float clip_norm, int32_t flags, double sample_ratio, uint64_t seed,
                   const qk_tensor* indices, const qk_tensor* values, int64_t* selected_out,
                   int64_t* nonfinite_index, qk_stream stream);

}  // namespace qk::cuda
