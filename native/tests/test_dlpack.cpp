// DLPack exchange: export/import round trips for every dtype, strides and byte offsets, the
// owner's reference count, and every refusal calling the producer's deleter exactly once.
#include <string.h>

#include <random>
#include <string>

#include "check.h"
#include "qkern_dlpack.h"

namespace {

int g_released = 0;
void count_release(void* context) {
  g_released++;
  *static_cast<int*>(context) += 1;
}

// A producer of hand-made DLPack tensors that records its deleter calls.
struct Foreign {
  DLManagedTensorVersioned managed{};
  int64_t shape[QK_MAX_DIMS + 1]{};
  int64_t strides[QK_MAX_DIMS + 1]{};
  int deleted = 0;
};

void foreign_deleter(DLManagedTensorVersioned* self) { static_cast<Foreign*>(self->manager_ctx)->deleted++; }

void make_foreign(Foreign& f, void* data, DLDataType dtype, int ndim, const int64_t* shape, const int64_t* strides) {
  f.managed.version = {1, 1};
  f.managed.manager_ctx = &f;
  f.managed.deleter = foreign_deleter;
  f.managed.flags = 0;
  f.managed.dl_tensor.data = data;
  f.managed.dl_tensor.device = {kDLCPU, 0};
  f.managed.dl_tensor.ndim = ndim;
  f.managed.dl_tensor.dtype = dtype;
  for (int i = 0; i < ndim; i++) {
    f.shape[i] = shape[i];
    if (strides) f.strides[i] = strides[i];
  }
  f.managed.dl_tensor.shape = f.shape;
  f.managed.dl_tensor.strides = strides ? f.strides : nullptr;
  f.managed.dl_tensor.byte_offset = 0;
}

qk_tensor host_tensor(void* data, int64_t nbytes, int32_t dtype, int ndim, const int64_t* shape) {
  qk_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.nbytes = nbytes;
  t.dtype = dtype;
  t.device_kind = QK_DEVICE_CPU;
  t.ndim = ndim;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t.shape[i] = shape[i];
    t.strides[i] = s;
    s *= shape[i];
  }
  return t;
}

// Imports a foreign tensor that must be refused; checks the deleter ran once and the reason.
void expect_refused(Foreign& f, uint32_t flags, qk_status expected, const char* reason_part) {
  qk_tensor out;
  memset(&out, 0x5A, sizeof out);
  int before = f.deleted;
  qk_status st = qk_dlpack_import(&f.managed, flags, &out, nullptr);
  CHECK(st == expected, "status %s, expected %s (%s)", qk_status_name(st), qk_status_name(expected), qk_last_error());
  CHECK(f.deleted == before + 1, "deleter ran %d times on refusal (%s)", f.deleted - before, reason_part);
  CHECK(strstr(qk_last_error(), reason_part) != nullptr, "error \"%s\" lacks \"%s\"", qk_last_error(), reason_part);
  CHECK(out.data == nullptr && out.ndim == 0, "out not zeroed after a refusal");
}

void test_every_dtype_round_trips() {
  const int32_t dtypes[] = {QK_F32, QK_F16, QK_BF16, QK_F64, QK_U8, QK_I8, QK_I16, QK_I32, QK_I64, QK_BOOL};
  alignas(64) unsigned char buffer[3 * 5 * 8];
  for (int32_t dtype : dtypes) {
    int64_t shape[2] = {3, 5};
    int64_t esize = dtype == QK_F64 || dtype == QK_I64 ? 8 : dtype == QK_F32 || dtype == QK_I32 ? 4
                  : dtype == QK_F16 || dtype == QK_BF16 || dtype == QK_I16 ? 2 : 1;
    qk_tensor t = host_tensor(buffer, 15 * esize, dtype, 2, shape);
    DLManagedTensorVersioned* m = nullptr;
    CHECK(qk_dlpack_export(&t, 0, nullptr, &m) == QK_OK, "export dtype %d: %s", dtype, qk_last_error());
    if (!m) continue;
    CHECK(m->version.major == 1, "version %u", m->version.major);
    CHECK(m->dl_tensor.dtype.bits == esize * 8 && m->dl_tensor.dtype.lanes == 1, "dtype %d bits %u", dtype,
          m->dl_tensor.dtype.bits);
    CHECK(m->dl_tensor.device.device_type == kDLCPU && m->dl_tensor.device.device_id == 0, "device");
    CHECK(m->dl_tensor.strides[0] == 5 && m->dl_tensor.strides[1] == 1, "strides are in elements");
    qk_tensor back;
    int32_t read_only = -1;
    CHECK(qk_dlpack_import(m, QK_DLPACK_IMPORT_WRITABLE | QK_DLPACK_IMPORT_CONTIGUOUS, &back, &read_only) == QK_OK,
          "import dtype %d: %s", dtype, qk_last_error());
    CHECK(back.dtype == dtype && back.data == buffer && back.nbytes == 15 * esize && back.ndim == 2 &&
              back.shape[0] == 3 && back.shape[1] == 5 && back.strides[0] == 5 && back.strides[1] == 1 &&
              read_only == 0,
          "round trip of dtype %d changed the descriptor", dtype);
    qk_dlpack_release(m);
  }
}

void test_owner_reference_count() {
  int released = 0;
  qk_dlpack_owner owner = nullptr;
  CHECK(qk_dlpack_owner_create(count_release, &released, &owner) == QK_OK, "owner_create");
  float data[4] = {1, 2, 3, 4};
  int64_t shape[1] = {4};
  qk_tensor t = host_tensor(data, sizeof data, QK_F32, 1, shape);
  DLManagedTensorVersioned *a = nullptr, *b = nullptr;
  CHECK(qk_dlpack_export(&t, 0, owner, &a) == QK_OK && qk_dlpack_export(&t, 0, owner, &b) == QK_OK, "exports");
  CHECK(qk_dlpack_owner_live_exports(owner) == 2, "live exports %lld", (long long)qk_dlpack_owner_live_exports(owner));
  qk_dlpack_release(a);
  CHECK(qk_dlpack_owner_live_exports(owner) == 1, "one export left");
  qk_dlpack_owner_release(owner);  // the producer lets go first: the last deleter must release
  CHECK(released == 0, "released while an export is alive");
  qk_dlpack_release(b);
  CHECK(released == 1, "release ran %d times after the last deleter", released);

  // Producer last: the release runs on the producer's release.
  released = 0;
  CHECK(qk_dlpack_owner_create(count_release, &released, &owner) == QK_OK, "owner_create");
  CHECK(qk_dlpack_export(&t, DLPACK_FLAG_BITMASK_READ_ONLY, owner, &a) == QK_OK, "export read-only");
  CHECK(a->flags == DLPACK_FLAG_BITMASK_READ_ONLY, "flags 0x%llx", (unsigned long long)a->flags);
  qk_dlpack_release(a);
  CHECK(released == 0 && qk_dlpack_owner_live_exports(owner) == 0, "no export left, producer still holds");
  qk_dlpack_owner_release(owner);
  CHECK(released == 1, "release ran %d times", released);

  // A failed export takes no reference.
  CHECK(qk_dlpack_owner_create(count_release, &released, &owner) == QK_OK, "owner_create");
  qk_tensor bad = t;
  bad.dtype = 99;
  CHECK(qk_dlpack_export(&bad, 0, owner, &a) == QK_ERR_INVALID_ARGUMENT && a == nullptr, "bad dtype exported");
  CHECK(qk_dlpack_export(&t, 4, owner, &a) == QK_ERR_INVALID_ARGUMENT && a == nullptr, "unknown flag exported");
  CHECK(qk_dlpack_owner_live_exports(owner) == 0, "failed export counted");
  qk_dlpack_owner_release(owner);
  CHECK(released == 2, "release after failed exports");
}

void test_strides_offset_and_flags() {
  alignas(64) float data[64];
  for (int i = 0; i < 64; i++) data[i] = (float)i;
  // A [3, 4] view of every second column of an [3, 8] array, starting at column 1 via byte_offset.
  int64_t shape[2] = {3, 4}, strides[2] = {8, 2};
  Foreign f;
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, strides);
  f.managed.dl_tensor.byte_offset = sizeof(float);
  qk_tensor out;
  int32_t read_only = -1;
  CHECK(qk_dlpack_import(&f.managed, QK_DLPACK_IMPORT_WRITABLE, &out, &read_only) == QK_OK, "strided import: %s",
        qk_last_error());
  CHECK(out.data == data + 1 && out.strides[0] == 8 && out.strides[1] == 2, "strided view described wrongly");
  CHECK(out.nbytes == (int64_t)((2 * 8 + 3 * 2 + 1) * sizeof(float)), "nbytes %lld", (long long)out.nbytes);
  CHECK(((float*)out.data)[out.strides[0] * 2 + out.strides[1] * 3] == 23.0f, "element [2,3]");
  CHECK(f.deleted == 0, "deleter ran on success");
  qk_dlpack_release(&f.managed);
  CHECK(f.deleted == 1, "release runs the deleter");

  // Not contiguous but asked to be; read-only but asked to write; and read-only reported.
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, strides);
  expect_refused(f, QK_DLPACK_IMPORT_CONTIGUOUS, QK_ERR_UNSUPPORTED, "not compact row-major");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  f.managed.flags = DLPACK_FLAG_BITMASK_READ_ONLY;
  expect_refused(f, QK_DLPACK_IMPORT_WRITABLE, QK_ERR_UNSUPPORTED, "read-only");
  CHECK(qk_dlpack_import(&f.managed, QK_DLPACK_IMPORT_CONTIGUOUS, &out, &read_only) == QK_OK && read_only == 1,
        "read-only import for reading: %s", qk_last_error());
  CHECK(out.strides[0] == 4 && out.strides[1] == 1 && out.nbytes == 48, "NULL strides mean compact");
  qk_dlpack_release(&f.managed);

  // A zero-element tensor may have NULL data.
  int64_t empty_shape[2] = {0, 7};
  make_foreign(f, nullptr, DLDataType{kDLFloat, 32, 1}, 2, empty_shape, nullptr);
  CHECK(qk_dlpack_import(&f.managed, 0, &out, nullptr) == QK_OK && out.nbytes == 0, "empty import: %s",
        qk_last_error());
  qk_dlpack_release(&f.managed);
}

void test_refusals_call_the_deleter() {
  alignas(64) float data[16] = {};
  int64_t shape[2] = {4, 4}, neg[2] = {-4, 1}, neg_shape[2] = {4, -1};
  Foreign f;
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  f.managed.version = {2, 0};
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "version 2.0");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  f.managed.dl_tensor.device = {kDLROCM, 0};
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "kDLROCM");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  f.managed.dl_tensor.device = {kDLCUDA, qk_device_count(QK_DEVICE_CUDA) + 3};  // never a usable device
  expect_refused(f, 0, qk_backend_available(QK_DEVICE_CUDA) ? QK_ERR_INVALID_ARGUMENT : QK_ERR_UNSUPPORTED, "cuda");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 4}, 2, shape, nullptr);
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "lanes 4");
  make_foreign(f, data, DLDataType{kDLComplex, 64, 1}, 2, shape, nullptr);
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "code 5, bits 64");
  make_foreign(f, data, DLDataType{kDLUInt, 16, 1}, 2, shape, nullptr);
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "no qkern equivalent");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, neg);
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "strides[0] is negative");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, neg_shape, nullptr);
  expect_refused(f, 0, QK_ERR_INVALID_ARGUMENT, "shape[1] is negative");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  f.managed.dl_tensor.byte_offset = 2;
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "not aligned");
  make_foreign(f, nullptr, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  expect_refused(f, 0, QK_ERR_INVALID_ARGUMENT, "data is NULL");
  int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 9, nine, nullptr);
  expect_refused(f, 0, QK_ERR_UNSUPPORTED, "ndim 9");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  f.managed.dl_tensor.shape = nullptr;
  expect_refused(f, 0, QK_ERR_INVALID_ARGUMENT, "shape is NULL");
  int64_t huge[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, huge, nullptr);
  expect_refused(f, 0, QK_ERR_INVALID_ARGUMENT, "overflows");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  expect_refused(f, 8, QK_ERR_INVALID_ARGUMENT, "unknown import flags");
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  int deleted_before = f.deleted;
  CHECK(qk_dlpack_import(&f.managed, 0, nullptr, nullptr) == QK_ERR_INVALID_ARGUMENT && f.deleted == deleted_before + 1,
        "NULL out must hand the tensor back");
  CHECK(qk_dlpack_import(nullptr, 0, nullptr, nullptr) == QK_ERR_INVALID_ARGUMENT, "NULL managed");
  // A NULL deleter is allowed by the spec: a refusal then frees nothing and does not crash.
  make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, 2, shape, nullptr);
  f.managed.deleter = nullptr;
  f.managed.version = {0, 8};
  qk_tensor out;
  CHECK(qk_dlpack_import(&f.managed, 0, &out, nullptr) == QK_ERR_UNSUPPORTED, "0.8 refused");
  qk_dlpack_release(nullptr);
}

// Generated corrupt inputs: random field mutations of a valid tensor. Every import either succeeds
// with a descriptor inside the checks or is refused; the deleter runs exactly once either way.
void test_corrupt_inputs() {
  std::mt19937_64 rng(std::random_device{}());
  alignas(64) static float data[256];
  for (int iter = 0; iter < 20000; iter++) {
    int64_t shape[QK_MAX_DIMS + 1], strides[QK_MAX_DIMS + 1];
    int ndim = 1 + (int)(rng() % 3);
    for (int d = 0; d < ndim; d++) shape[d] = 1 + (int64_t)(rng() % 4);
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) { strides[d] = s; s *= shape[d]; }
    Foreign f;
    make_foreign(f, data, DLDataType{kDLFloat, 32, 1}, ndim, shape, strides);
    int mutations = 1 + (int)(rng() % 3);
    for (int m = 0; m < mutations; m++) {
      int64_t wild = (int64_t)rng() >> (rng() % 64);
      if (rng() & 1) wild = -wild;
      switch (rng() % 10) {
        case 0: f.managed.version.major = (uint32_t)(rng() % 4); break;
        case 1: f.managed.dl_tensor.device.device_type = (DLDeviceType)(rng() % 20); break;
        case 2: f.managed.dl_tensor.device.device_id = (int32_t)wild; break;
        case 3: f.managed.dl_tensor.ndim = (int32_t)(rng() % 12) - 2; break;
        case 4: f.managed.dl_tensor.dtype = DLDataType{(uint8_t)(rng() % 8), (uint8_t)(rng() % 80), (uint16_t)(rng() % 3)}; break;
        case 5: f.shape[rng() % ndim] = wild; break;
        case 6: f.strides[rng() % ndim] = wild; break;
        case 7: f.managed.dl_tensor.byte_offset = (uint64_t)wild; break;
        case 8: f.managed.dl_tensor.strides = (rng() & 1) ? nullptr : f.strides; break;
        default: f.managed.flags = rng() & 7; break;
      }
    }
    if (f.managed.dl_tensor.ndim > ndim) f.managed.dl_tensor.ndim = ndim;  // the producer's arrays hold ndim entries
    qk_tensor out;
    uint32_t flags = (uint32_t)(rng() % 4);
    qk_status st = qk_dlpack_import(&f.managed, flags, &out, nullptr);
    if (st == QK_OK) {
      CHECK(f.deleted == 0, "deleter ran on an accepted import");
      CHECK(out.dtype == QK_F32 || out.ndim >= 0, "descriptor");
      for (int d = 0; d < out.ndim; d++) CHECK(out.shape[d] >= 0 && out.strides[d] >= 0, "negative field accepted");
      CHECK(out.nbytes >= 0, "negative nbytes accepted");
      qk_dlpack_release(&f.managed);
    } else {
      CHECK(qk_last_error()[0] != 0, "refusal without a reason (status %d)", st);
    }
    CHECK(f.deleted == 1, "iteration %d: deleter ran %d times", iter, f.deleted);
    if (g_failures) return;
  }
}

}  // namespace

int main() {
  test_every_dtype_round_trips();
  test_owner_reference_count();
  test_strides_offset_and_flags();
  test_refusals_call_the_deleter();
  test_corrupt_inputs();
  TEST_MAIN_END();
}
