// Top-k / DGC CUDA entry points of a build without nvcc: CUDA is reported unavailable.
#include "internal.h"
#include "topk/topk_cuda.h"

namespace qk::cuda {

qk_status topk(const qk_tensor*, int64_t, int32_t, int32_t, const qk_tensor*, const qk_tensor*, int64_t*, qk_stream) {
  return absent("qk_topk");
}

qk_status dgc_step(const qk_tensor*, const qk_tensor*, const qk_tensor*, int64_t, int32_t, float, float, int32_t,
                   double, uint64_t, const qk_tensor*, const qk_tensor*, int64_t*, int64_t*, qk_stream) {
  return absent("qk_dgc_step");
}

}  // namespace qk::cuda
