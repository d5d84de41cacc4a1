// The CUDA backend of the NF4 matmul (cuda/nf4_matmul.cu; native/nf4/nf4_matmul_cuda_absent.cpp
// when built without nvcc). The ABI layer (nf4_matmul_api.cpp) has checked every argument.
#pragma once
#include "qkern.h"

namespace qk::cuda {
// y[m, n] = x[m, k] W[n, k]^T (+ bias[n]); W's n and k are y's and x's last dimensions.
qk_status nf4_matmul(const qk_tensor* x, const qk_tensor* packed, const qk_tensor* absmax, int64_t blocksize,
                     const qk_tensor* bias, const qk_tensor* y, qk_stream stream);
// dx[m, k] = dy[m, n] W[n, k].
qk_status nf4_matmul_input_grad(const qk_tensor* dy, const qk_tensor* packed, const qk_tensor* absmax,
                                int64_t blocksize, const qk_tensor* dx, qk_stream stream);
// The kernel the calls above pick for m rows ("cuda-gemv", "cuda-mma").
const char* nf4_matmul_path(int64_t m, bool input_grad);
}  // namespace qk::cuda
