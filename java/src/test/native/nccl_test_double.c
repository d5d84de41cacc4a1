/*
 * TEST DOUBLE of a small part of NCCL's C ABI, compiled only by the Java tests
 * (io.qkern.dist.NcclTestDoubleTest) so the FFM bindings run without NCCL or a GPU: version,
 * unique id, non-blocking init (ncclCommInitRankConfig with the unique id BY VALUE), async errors,
 * abort/destroy and error strings. It moves no data and is not NCCL; written from nccl.h's
 * documented signatures and enum values only.
 *
 * Behaviour the tests rely on:
 *   - ncclGetUniqueId fills byte i with (i * 7 + 3) & 0xff.
 *   - ncclCommInitRankConfig checks the config header (magic, size >= 40, version >= 2.14,
 *     blocking == 0) and that the id arrived intact; it keeps the id it received for
 *     test_double_last_id(). The communicator's state then depends on nranks:
 *       nranks == 2: stays ncclInProgress forever (a peer that never arrives);
 *       nranks == 3: init succeeds, then reports ncclRemoteError as its async error;
 *       otherwise:   ncclSuccess.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
} config_header;

struct ncclComm {
  int state;
  int nranks;
  int rank;
};
typedef struct ncclComm* ncclComm_t;

enum { ok = 0, invalid_argument = 4, remote_error = 6, in_progress = 7 };

static char last_error[256] = "";
static ncclUniqueId last_id;
static int aborts = 0, destroys = 0;

static void set_error(const char* msg) {
  strncpy(last_error, msg, sizeof last_error - 1);
  last_error[sizeof last_error - 1] = 0;
}

int ncclGetVersion(int* version) {
  if (!version) return invalid_argument;
  *version = 22105; /* 2.21.5 */
  return ok;
}

const char* ncclGetErrorString(int result) {
  switch (result) {
    case ok: return "no error";
    case invalid_argument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case remote_error: return "remote process exited or there was a network error";
    case in_progress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  (void)comm;
  return last_error;
}

int ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return invalid_argument;
  for (int i = 0; i < 128; i++) id->internal[i] = (char)((i * 7 + 3) & 0xff);
  return ok;
}

int ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, void* config) {
  last_id = id;
  if (!comm) return invalid_argument;
  *comm = NULL;
  const config_header* c = (const config_header*)config;
  if (!c || c->magic != 0xcafebeefu || c->size < 40 || c->version < 21400 || c->blocking != 0) {
    set_error("test double: config is not a non-blocking NCCL 2.14+ ncclConfig_t");
    return invalid_argument;
  }
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    set_error("test double: rank out of range");
    return invalid_argument;
  }
  for (int i = 0; i < 128; i++) {
    if ((unsigned char)id.internal[i] != (unsigned char)((i * 7 + 3) & 0xff)) {
      set_error("test double: the unique id did not arrive intact");
      return invalid_argument;
    }
  }
  struct ncclComm* made = (struct ncclComm*)calloc(1, sizeof *made);
  if (!made) return invalid_argument;
  made->nranks = nranks;
  made->rank = rank;
  made->state = nranks == 2 ? in_progress : ok;
  *comm = made;
  return in_progress;
}

int ncclCommGetAsyncError(ncclComm_t comm, int* async_error) {
  if (!comm || !async_error) return invalid_argument;
  if (comm->nranks == 3) {
    set_error("test double: peer rank 2 closed its connection");
    comm->state = remote_error;
  }
  *async_error = comm->state;
  return ok;
}

int ncclCommAbort(ncclComm_t comm) {
  aborts++;
  free(comm);
  return ok;
}

int ncclCommDestroy(ncclComm_t comm) {
  destroys++;
  free(comm);
  return ok;
}

/* ---- for the tests only ---- */
void test_double_last_id(ncclUniqueId* out) { *out = last_id; }
int test_double_aborts(void) { return aborts; }
int test_double_destroys(void) { return destroys; }
