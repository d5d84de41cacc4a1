// The NF4 matmul's CUDA entry points in a libqkern built without nvcc: they fail cleanly.
#include "internal.h"
#include "nf4/nf4_matmul_cuda.h"

namespace qk::cuda {

qk_status nf4_matmul(const qk_tensor*, const qk_tensor*, const qk_tensor*, int64_t, const qk_tensor*,
                     const qk_tensor*, qk_stream) {
  return qk::fail(QK_ERR_BACKEND_UNAVAILABLE,
                  "qk_nf4_matmul: this libqkern was built without CUDA (nvcc was not found when it was compiled)");
}

qk_status nf4_matmul_input_grad(const qk_tensor*, const qk_tensor*, const qk_tensor*, int64_t, const qk_tensor*,
                                qk_stream) {
  return qk::fail(QK_ERR_BACKEND_UNAVAILABLE,
                  "qk_nf4_matmul_input_grad: this libqkern was built without CUDA (nvcc was not found when it was "
                  "compiled)");
}

const char* nf4_matmul_path(int64_t, bool) { return "cuda-unavailable"; }

}  // namespace qk::cuda
