// The CUDA side of the paged-attention ABI (cuda/attention.cu, or attention_cuda_absent.cpp
// in a build without nvcc). The ABI layer has checked every descriptor, dtype and shape before
// calling these; block ids, slots and lengths held in device memory are checked by the kernels.
#pragma once
#include "internal.h"

namespace qk::cuda {

qk_status attention_write_kv(const qk_tensor* key, const qk_tensor* value, const qk_tensor* k_cache,
                             const qk_tensor* v_cache, const qk_tensor* slot_mapping, qk_stream stream);

qk_status attention_paged_decode(const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                                 const qk_tensor* block_tables, const qk_tensor* seq_lens, float scale,
                                 int64_t partition_blocks, const qk_tensor* out, const qk_tensor* lse,
                                 qk_stream stream);

qk_status attention_paged_decode_csr(const qk_tensor* q, const qk_tensor* k_cache, const qk_tensor* v_cache,
                                     const qk_tensor* kv_indptr, const qk_tensor* kv_indices,
                                     const qk_tensor* kv_last_page_len, float scale, int64_t partition_blocks,
                                     const qk_tensor* out, const qk_tensor* lse, qk_stream stream);

qk_status attention_merge(const qk_tensor* out_a, const qk_tensor* lse_a, const qk_tensor* out_b,
                          const qk_tensor* lse_b, const qk_tensor* out, const qk_tensor* lse, qk_stream stream);

}  // namespace qk::cuda
