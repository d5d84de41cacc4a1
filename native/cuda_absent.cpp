// The CUDA backend of a libqkern built without nvcc: compiled instead of cuda/*.cu. CUDA is
// reported unavailable (with the reason) and every CUDA entry point fails cleanly.
#include "internal.h"

namespace qk::cuda {

qk_status absent(const char* function) {
  return qk::fail(QK_ERR_BACKEND_UNAVAILABLE,
                  "%s: this libqkern was built without CUDA (nvcc was not found when it was compiled)", function);
}

bool available() { return false; }

const char* status() { return "not built: nvcc was not found when this libqkern was compiled"; }

int device_count() { return 0; }

qk_status device_name(int, char*, int64_t) { return absent("qk_device_name"); }

qk_status device_memory(int, int64_t*, int64_t*) { return absent("qk_device_memory"); }

qk_status malloc(int, int64_t, void**) { return absent("qk_malloc"); }

qk_status free(int, void*) { return absent("qk_free"); }

qk_status memcpy(void*, int, int, const void*, int, int, int64_t, qk_stream) { return absent("qk_memcpy"); }

qk_status memset(void*, int, int, int64_t, qk_stream) { return absent("qk_memset"); }

qk_status stream_create(int, void**) { return absent("qk_stream_create"); }

qk_status stream_destroy(qk_stream) { return absent("qk_stream_destroy"); }

qk_status stream_synchronize(qk_stream) { return absent("qk_stream_synchronize"); }

qk_status device_synchronize(int) { return absent("qk_device_synchronize"); }

qk_status event_create(int, void**) { return absent("qk_event_create"); }

qk_status event_destroy(qk_event) { return absent("qk_event_destroy"); }

qk_status event_record(qk_event, qk_stream) { return absent("qk_event_record"); }

qk_status event_synchronize(qk_event) { return absent("qk_event_synchronize"); }

qk_status event_elapsed_ms(qk_event, qk_event, float*) { return absent("qk_event_elapsed_ms"); }

qk_status event_query(qk_event, int32_t*) { return absent("qk_event_query"); }

qk_status nf4_quantize(const qk_tensor*, int64_t, const qk_tensor*, const qk_tensor*, int64_t* nonfinite_index,
                       qk_stream) {
  if (nonfinite_index) *nonfinite_index = -1;
  return absent("qk_nf4_quantize");
}

qk_status nf4_dequantize(const qk_tensor*, const qk_tensor*, int64_t, const qk_tensor*, qk_stream) {
  return absent("qk_nf4_dequantize");
}

qk_status nf4_double_quantize(const qk_tensor*, const qk_tensor*, const qk_tensor*, const qk_tensor*, float*,
                              qk_stream) {
  return absent("qk_nf4_double_quantize");
}

qk_status nf4_double_dequantize(const qk_tensor*, const qk_tensor*, const qk_tensor*, float, const qk_tensor*,
                                qk_stream) {
  return absent("qk_nf4_double_dequantize");
}

qk_status probe_read_bandwidth(const qk_tensor*, int32_t, double*, char*, int64_t) {
  return absent("qk_probe_read_bandwidth");
}

}  // namespace qk::cuda
