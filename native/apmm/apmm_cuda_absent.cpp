// The APMM CUDA entry points of a libqkern built without nvcc: every call fails cleanly.
#include "apmm/apmm_cuda.h"
#include "internal.h"

namespace qk::cuda {
int32_t apmm_choose_path(int32_t a_bits, int32_t w_bits, int64_t, int32_t request) {
  // what a CUDA build would run: b1 mma for small p*q (or when asked), int8 mma otherwise
  if (request == QK_APMM_PATH_BITSERIAL || (request == QK_APMM_PATH_AUTO && a_bits * w_bits <= 4))
    return QK_APMM_RAN_CUDA_B1_MMA;
  return QK_APMM_RAN_CUDA_INT8_MMA;
}

qk_status apmm_pack(const qk_tensor*, int32_t, int32_t, int64_t, const qk_tensor*, const qk_tensor*, int64_t* bad_index,
                    qk_stream) {
  if (bad_index) *bad_index = -1;
  return absent("qk_apmm_pack");
}

qk_status apmm_unpack(const qk_tensor*, int32_t, int32_t, const qk_tensor*, qk_stream) {
  return absent("qk_apmm_unpack");
}

qk_status apmm_quantize(const qk_tensor*, int32_t, int32_t, int64_t, int64_t, const qk_tensor*, const qk_tensor*,
                        const qk_tensor*, const qk_tensor*, int64_t* nonfinite_index, qk_stream) {
  if (nonfinite_index) *nonfinite_index = -1;
  return absent("qk_apmm_quantize");
}

qk_status apmm_matmul(const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*, int32_t, int32_t,
                      const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*, int32_t, int32_t, int64_t,
                      int64_t, const qk_tensor*, int32_t, int32_t* path_used, qk_stream) {
  if (path_used) *path_used = 0;
  return absent("qk_apmm_matmul");
}

}  // namespace qk::cuda
