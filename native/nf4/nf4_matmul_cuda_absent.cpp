// The NF4 matmul's CUDA entry points in a libqkern built without nvcc: they fail cleanly.
#include "internal.h"
#include "nf4/nf4_matmul_cuda.h"

namespace qk::cuda {

qk_status nf4_matmul(const qk_tensor*, const qk_tensor*, const qk_tensor*, int64_t, const qk_tensor*,
                     const qk_tensor*, qk_stream) {
  return absent("qk_nf4_matmul");
}

qk_status nf4_matmul_input_grad(const qk_tensor*, const qk_tensor*, const qk_tensor*, int64_t, const qk_tensor*,
                                qk_stream) {
  return absent("qk_nf4_matmul_input_grad");
}

const char* nf4_matmul_path(int64_t, bool) { return "cuda-unavailable"; }

}  // namespace qk::cuda
