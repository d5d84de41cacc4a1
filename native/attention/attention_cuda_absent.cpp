// The paged-attention CUDA entry points of a libqkern built without nvcc: they fail cleanly.
#include "attention/attention_cuda.h"

namespace qk::cuda {
qk_status attention_write_kv(const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*,
                             const qk_tensor*, qk_stream) {
  return absent("qk_attention_write_kv");
}

qk_status attention_paged_decode(const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*,
                                 const qk_tensor*, float, int64_t, const qk_tensor*, const qk_tensor*, qk_stream) {
  return absent("qk_attention_paged_decode");
}

qk_status attention_paged_decode_csr(const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*,
                                     const qk_tensor*, const qk_tensor*, float, int64_t, const qk_tensor*,
                                     const qk_tensor*, qk_stream) {
  return absent("qk_attention_paged_decode_csr");
}

qk_status attention_merge(const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*,
                          const qk_tensor*, qk_stream) {
  return absent("qk_attention_merge");
}

}  // namespace qk::cuda
