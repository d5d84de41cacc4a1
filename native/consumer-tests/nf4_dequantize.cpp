// NF4 round trip and top-k through libqkern from C++, then the result handed out through DLPack.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include <qkern.h>
#include <qkern_dlpack.h>

namespace {

// Turns a failed qkern call into an exception carrying qkern's message.
void check(qk_status status, const char* call) {
  if (status != QK_OK) throw std::runtime_error(std::string(call) + ": " + qk_last_error());
}

template <class T>
qk_tensor host_vector(std::vector<T>& v, int32_t dtype) {
  qk_tensor t{};
  t.data = v.data();
  t.nbytes = static_cast<int64_t>(v.size() * sizeof(T));
  t.dtype = dtype;
  t.device_kind = QK_DEVICE_CPU;
  t.ndim = 1;
  t.shape[0] = static_cast<int64_t>(v.size());
  t.strides[0] = 1;
  return t;
}

}  // namespace

int main() try {
  const int64_t n = 4096, blocksize = 64;
  std::vector<float> weights(n);
  for (int64_t i = 0; i < n; i++) weights[i] = static_cast<float>((i * 37) % 101 - 50) / 25.0f;

  // Quantize to NF4 and back: every value returns within half the widest gap of the NF4 grid
  // (between -1 and -0.6961928) times its block's absmax.
  std::vector<unsigned char> packed(n / 2);
  std::vector<float> absmax(n / blocksize), restored(n);
  qk_tensor w = host_vector(weights, QK_F32), p = host_vector(packed, QK_U8);
  qk_tensor a = host_vector(absmax, QK_F32), r = host_vector(restored, QK_F32);
  check(qk_nf4_quantize(&w, blocksize, &p, &a, nullptr, nullptr), "qk_nf4_quantize");
  check(qk_nf4_dequantize(&p, &a, blocksize, &r, nullptr), "qk_nf4_dequantize");
  for (int64_t i = 0; i < n; i++) {
    float bound = 0.5f * (1.0f - 0.6961928009986877f) * absmax[i / blocksize];
    if (!(std::abs(restored[i] - weights[i]) <= bound))
      throw std::runtime_error("element " + std::to_string(i) + " is off by more than " + std::to_string(bound));
  }

  // The 10 largest restored weights, largest first, against a sort (equal values: lower index first).
  const int64_t k = 10;
  std::vector<int64_t> top(k);
  std::vector<float> top_values(k);
  qk_tensor ti = host_vector(top, QK_I64), tv = host_vector(top_values, QK_F32);
  check(qk_topk(&r, k, QK_TOPK_LARGEST, QK_TOPK_SORTED, &ti, &tv, nullptr, nullptr), "qk_topk");
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; i++) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return restored[x] > restored[y]; });
  for (int64_t j = 0; j < k; j++)
    if (top[j] != order[j] || top_values[j] != restored[order[j]])
      throw std::runtime_error("top-k pick " + std::to_string(j) + " differs from the sort");

  // Lend `restored` to another stack as a DLPack tensor. The owner's release runs once the
  // consumer's deleter and our qk_dlpack_owner_release have both happened.
  bool released = false;
  qk_dlpack_owner owner = nullptr;
  check(qk_dlpack_owner_create([](void* flag) { *static_cast<bool*>(flag) = true; }, &released, &owner),
        "qk_dlpack_owner_create");
  DLManagedTensorVersioned* lent = nullptr;
  check(qk_dlpack_export(&r, DLPACK_FLAG_BITMASK_READ_ONLY, owner, &lent), "qk_dlpack_export");
  qk_dlpack_owner_release(owner);

  // ... the consumer side: take it as a qkern tensor (checked), use it, then hand it back.
  qk_tensor view{};
  int32_t read_only = 0;
  check(qk_dlpack_import(lent, QK_DLPACK_IMPORT_CONTIGUOUS, &view, &read_only), "qk_dlpack_import");
  bool same_memory = view.data == restored.data() && view.shape[0] == n && read_only == 1;
  qk_dlpack_release(lent);
  if (!same_memory || !released) throw std::runtime_error("the DLPack round trip did not share memory and release");

  std::printf("C++: %lld weights through NF4 (blocksize %lld), top-%lld largest = %g at %lld, lent out via DLPack\n",
              static_cast<long long>(n), static_cast<long long>(blocksize), static_cast<long long>(k), top_values[0],
              static_cast<long long>(top[0]));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
