// CPU feature detection, SIMD path selection, and the worker pool for CPU kernels.
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "internal.h"

namespace qk {
namespace {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vpopcntdq = false, avx512vnni = false, avx512bf16 = false;
  std::string list;
};

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  // __builtin_cpu_supports also checks that the OS saves the wide register state (XCR0).
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.bmi2 = __builtin_cpu_supports("bmi2");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vpopcntdq = __builtin_cpu_supports("avx512vpopcntdq");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  struct { bool on; const char* name; } all[] = {
      {f.avx2, "avx2"}, {f.fma, "fma"}, {f.f16c, "f16c"}, {f.bmi2, "bmi2"}, {f.avx512f, "avx512f"},
      {f.avx512bw, "avx512bw"}, {f.avx512vl, "avx512vl"}, {f.avx512dq, "avx512dq"},
      {f.avx512vpopcntdq, "avx512vpopcntdq"}, {f.avx512vnni, "avx512vnni"}, {f.avx512bf16, "avx512bf16"}};
  for (auto& e : all)
    if (e.on) {
      if (!f.list.empty()) f.list += ' ';
      f.list += e.name;
    }
  return f;
}

const CpuFeatures& features() {
  static const CpuFeatures f = detect();
  return f;
}

CpuPath best_path() {
  const CpuFeatures& f = features();
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) return CpuPath::Avx512;
  if (f.avx2 && f.fma && f.f16c) return CpuPath::Avx2;
  return CpuPath::Scalar;
}

const char* path_name(CpuPath p) {
  switch (p) {
    case CpuPath::Avx512: return "avx512";
    case CpuPath::Avx2: return "avx2";
    default: return "scalar";
  }
}

bool parse_path(const char* s, CpuPath* out) {
  if (!strcmp(s, "avx512")) *out = CpuPath::Avx512;
  else if (!strcmp(s, "avx2")) *out = CpuPath::Avx2;
  else if (!strcmp(s, "scalar")) *out = CpuPath::Scalar;
  else if (!strcmp(s, "auto")) *out = best_path();
  else return false;
  return true;
}

CpuPath initial_path() {
  // QKERN_CPU_PATH lets a user pin a slower path (e.g. to compare); an unusable value is ignored.
  const char* env = getenv("QKERN_CPU_PATH");
  CpuPath p;
  if (env && parse_path(env, &p) && cpu_supports(p)) return p;
  return best_path();
}

std::atomic<int> g_path{-1};

// ---- worker pool --------------------------------------------------------------------------
// Persistent threads woken per job. A job is split into up to kChunksPerThread chunks per
// thread, claimed one at a time from an atomic counter, and the caller claims too: a worker
// that wakes late (tens of microseconds in a VM) then costs only the chunks it did not take,
// instead of its wake-up on top of a fixed half. One job at a time: a call that finds the pool
// busy (another thread's job, or a nested call) runs its body inline.
class Pool {
 public:
  explicit Pool(int threads) { resize(threads); }
  ~Pool() { stop_all(); }

  int threads() const { return (int)workers_.size() + 1; }

  void resize(int threads) {
    std::lock_guard<std::mutex> job(job_mutex_);
    stop_all();
    stop_ = false;
    // New workers must not mistake the last finished job for a new one.
    const uint64_t current = generation_;
    for (int i = 1; i < threads; i++) workers_.emplace_back([this, current] { loop(current); });
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> job(job_mutex_, std::try_to_lock);
    const int64_t chunks =
        std::min<int64_t>((int64_t)threads() * kChunksPerThread, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
    if (!job.owns_lock() || chunks <= 1 || threads() == 1) {
      body(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      body_ = &body;
      n_ = n;
      chunks_ = chunks;
      next_.store(0, std::memory_order_relaxed);
      generation_++;
    }
    cv_.notify_all();
    work(body);
    // Every chunk is claimed; wait for the workers still running one. A worker that has not
    // woken yet finds body_ cleared and sits this job out.
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return active_ == 0; });
    body_ = nullptr;
  }

 private:
  static constexpr int64_t kChunksPerThread = 4;

  void work(const std::function<void(int64_t, int64_t)>& body) {
    for (int64_t c; (c = next_.fetch_add(1, std::memory_order_relaxed)) < chunks_;)
      body(n_ * c / chunks_, n_ * (c + 1) / chunks_);
  }

  void loop(uint64_t seen) {
    for (;;) {
      const std::function<void(int64_t, int64_t)>* body;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (body_ == nullptr) continue;  // the job ended before this worker woke
        body = body_;
        active_++;
      }
      work(*body);
      std::lock_guard<std::mutex> lk(m_);
      if (--active_ == 0) done_cv_.notify_one();
    }
  }

  void stop_all() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex job_mutex_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0, chunks_ = 0;  // written under m_ before the generation changes; read-only during a job
  std::atomic<int64_t> next_{0};
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

int default_threads() {
  const char* env = getenv("QKERN_NUM_THREADS");
  if (env) {
    int v = atoi(env);
    if (v > 0 && v <= 1024) return v;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? (int)hc : 1;
}

Pool& pool() {
  // Deliberately leaked: worker threads must not be joined from a static destructor while
  // the JVM may still call into the library during shutdown.
  static Pool* p = new Pool(default_threads());
  return *p;
}

}  // namespace

bool cpu_supports(CpuPath path) {
  const CpuFeatures& f = features();
  switch (path) {
    case CpuPath::Avx512: return f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
    case CpuPath::Avx2: return f.avx2 && f.fma && f.f16c;
    default: return true;
  }
}

CpuPath cpu_path() {
  int p = g_path.load(std::memory_order_relaxed);
  if (p < 0) {
    p = (int)initial_path();
    g_path.store(p, std::memory_order_relaxed);
  }
  return (CpuPath)p;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  pool().run(n, grain, body);
}

int worker_threads() { return pool().threads(); }

}  // namespace qk

extern "C" {

QK_API const char* qk_cpu_path(void) { return qk::path_name(qk::cpu_path()); }

QK_API qk_status qk_cpu_set_path(const char* path) {
  return qk::guard("qk_cpu_set_path", [&]() -> qk_status {
    if (!path) return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_cpu_set_path: path is NULL");
    qk::CpuPath p;
    if (!qk::parse_path(path, &p))
      return qk::fail(QK_ERR_INVALID_ARGUMENT,
                      "qk_cpu_set_path: unknown path \"%.64s\" (expected auto, scalar, avx2 or avx512)", path);
    if (!qk::cpu_supports(p))
      return qk::fail(QK_ERR_UNSUPPORTED, "qk_cpu_set_path: this CPU cannot run the %s path (features: %s)", path,
                      qk::features().list.c_str());
    qk::g_path.store((int)p);
    return QK_OK;
  });
}

QK_API const char* qk_cpu_features(void) { return qk::features().list.c_str(); }

QK_API int32_t qk_cpu_threads(void) { return qk::worker_threads(); }

QK_API qk_status qk_cpu_set_threads(int32_t threads) {
  return qk::guard("qk_cpu_set_threads", [&]() -> qk_status {
    if (threads < 0 || threads > 1024)
      return qk::fail(QK_ERR_INVALID_ARGUMENT, "qk_cpu_set_threads: threads must be 0..1024, got %d", threads);
    qk::pool().resize(threads == 0 ? (int)std::max(1u, std::thread::hardware_concurrency()) : threads);
    return QK_OK;
  });
}

}  // extern "C"
