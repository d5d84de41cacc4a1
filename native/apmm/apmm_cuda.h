// The APMM CUDA backend (cuda/apmm.cu, or apmm_cuda_absent.cpp in a build without nvcc).
// The ABI layer has checked every argument before calling these.
#pragma once
#include "qkern.h"

namespace qk::cuda {

int32_t apmm_choose_path(int32_t a_bits, int32_t w_bits, int64_t m, int32_t request);
qk_status apmm_pack(const qk_tensor* codes, int32_t format, int32_t bits, int64_t group, const qk_tensor* planes,
                    const qk_tensor* sums, int64_t* bad_index, qk_stream stream);
qk_status apmm_unpack(const qk_tensor* planes, int32_t format, int32_t bits, const qk_tensor* codes,
                      qk_stream stream);
qk_status apmm_quantize(const qk_tensor* x, int32_t format, int32_t bits, int64_t scale_group, int64_t sum_group,
                        const qk_tensor* planes, const qk_tensor* sums, const qk_tensor* scales,
                        const qk_tensor* zero_points, int64_t* nonfinite_index, qk_stream stream);
qk_status apmm_matmul(const qk_tensor* a_planes, const qk_tensor* a_sums, const qk_tensor* a_scales,
                      const qk_tensor* a_zero_points, int32_t a_format, int32_t a_bits, const qk_tensor* w_planes,
                      const qk_tensor* w_sums, const qk_tensor* w_scales, const qk_tensor* w_zero_points,
                      int32_t w_format, int32_t w_bits, int64_t k, int64_t group, const qk_tensor* out,
                      int32_t request, int32_t* path_used, qk_stream stream);

}  // namespace qk::cuda
