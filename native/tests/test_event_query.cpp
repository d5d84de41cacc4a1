// qk_event_query, the non-blocking completion test the NCCL communicator polls against its
// deadline: on the CPU every event is complete (work is synchronous), bad arguments are errors,
// and a CUDA event on a machine without CUDA fails cleanly instead of pretending.
#include <string.h>

#include "check.h"
#include "qkern.h"

int main() {
  qk_event cpu = NULL;
  CHECK(qk_event_create(QK_DEVICE_CPU, 0, &cpu) == QK_OK, "%s", qk_last_error());

  // Never recorded: complete, as cudaEventQuery reports for an unrecorded event.
  int32_t done = 7;
  CHECK(qk_event_query(cpu, &done) == QK_OK, "%s", qk_last_error());
  CHECK(done == 1, "unrecorded cpu event: complete=%d", done);

  done = 7;
  CHECK(qk_event_record(cpu, NULL) == QK_OK, "%s", qk_last_error());
  CHECK(qk_event_query(cpu, &done) == QK_OK, "%s", qk_last_error());
  CHECK(done == 1, "recorded cpu event: complete=%d", done);

  // NULL output: an argument error that names the argument; the event is untouched.
  CHECK(qk_event_query(cpu, NULL) == QK_ERR_INVALID_ARGUMENT, "NULL complete_out accepted");
  CHECK(strstr(qk_last_error(), "complete_out") != NULL, "message: %s", qk_last_error());

  // NULL event: an argument error, and the output says "not complete" rather than stale data.
  done = 7;
  CHECK(qk_event_query(NULL, &done) == QK_ERR_INVALID_ARGUMENT, "NULL event accepted");
  CHECK(done == 0, "NULL event left complete=%d", done);
  CHECK(strstr(qk_last_error(), "event is NULL") != NULL, "message: %s", qk_last_error());
  CHECK(qk_event_destroy(cpu) == QK_OK, "%s", qk_last_error());

  // Without a usable CUDA backend no CUDA event can exist; with one, a fresh event is complete.
  qk_event gpu = NULL;
  qk_status st = qk_event_create(QK_DEVICE_CUDA, 0, &gpu);
  if (qk_backend_available(QK_DEVICE_CUDA)) {
    CHECK(st == QK_OK, "%s", qk_last_error());
    done = 7;
    CHECK(qk_event_query(gpu, &done) == QK_OK, "%s", qk_last_error());
    CHECK(done == 1, "unrecorded cuda event: complete=%d", done);
    CHECK(qk_event_record(gpu, NULL) == QK_OK, "%s", qk_last_error());
    CHECK(qk_device_synchronize(QK_DEVICE_CUDA, 0) == QK_OK, "%s", qk_last_error());
    CHECK(qk_event_query(gpu, &done) == QK_OK && done == 1, "after synchronize: complete=%d %s", done,
          qk_last_error());
    CHECK(qk_event_destroy(gpu) == QK_OK, "%s", qk_last_error());
  } else {
    CHECK(st != QK_OK && gpu == NULL, "cuda event created without a cuda backend");
  }
  TEST_MAIN_END();
}
