// CSR sparse Linear kernels for sparsebench: y = x @ W.T + b with W in CSR (fp32 values,
// int32 row pointers, int16 or int32 column indices) and x dense (batch, in).
//
// Built at first use by torch.utils.cpp_extension.load (see _extension.py), never by pip.
// Two kernels:
//  * batch 1, SpMV: rows split into chunks by nonzero count; each row is a dot product of
//    its values with a gather of x (x is a few KB, so the gather hits L1). With AVX-512 the
//    gather is one vpgatherdps per 16 nonzeros, which moves the limit from the ~3 scalar
//    loads per nonzero (about 1 nonzero/cycle) to the gather unit.
//  * batch >= 2, SpMM: x is transposed to xT (in, batch) so that each nonzero W[o, i] does an
//    AXPY of the contiguous vector xT[i, b0:b0+TB] into a register accumulator for row o.
//    A block of RB output rows is accumulated into a small L1 buffer and written out
//    transposed, so y comes back (batch, out) contiguous without a separate transpose pass.
//
// Threads (measured side by side by benchmarks/sparse_linear.py --variants): on a shared
// 2-core machine an OpenMP region waits at its barrier for a worker the OS has descheduled,
// a whole scheduler slice (~7-12 ms) for a 0.2 ms product. Two answers are here: WorkPool, our
// own pool in which the calling thread works and waits only for chunks a helper has started;
// and the default, "adaptive": OpenMP with dynamically claimed chunks that falls back to
// serial runs for a while when a region shows the cores are oversubscribed. On an idle
// machine OpenMP's spinning workers help at once while the pool's sleeping helpers wake too
// late for a 100 us product, so the adaptive mode won.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <cmath>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SB_HAVE_AVX512 1
#else
#define SB_HAVE_AVX512 0
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#define SB_HAVE_AVX2 1
#else
#define SB_HAVE_AVX2 0
#endif

#if defined(__x86_64__) && defined(__linux__)
#include "pattern_jit.h"
#endif

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// A job is run(ctx, chunk) for chunk in [0, n). The pool's whole state for a job is one
// 64-bit word, generation << 32 | next chunk, so a helper that wakes late can claim a chunk
// only of the job it read the descriptor of (its compare-and-swap fails once the generation
// moved on), and a job never waits for a helper that has not started.
class WorkPool {
 public:
  using Fn = void (*)(void*, int64_t);

  // Runs fn(ctx, c) for every c in [0, n) on the calling thread and up to `helpers` pool
  // threads; returns when all chunks are done. Concurrent callers (two Python threads) do
  // not share the pool: the second one runs its chunks alone.
  void run(int64_t n, int helpers, Fn fn, void* ctx) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (helpers <= 0 || n == 1 || !busy.owns_lock() || serial_left_ > 0) {
      for (int64_t c = 0; c < n; ++c) fn(ctx, c);
      if (busy.owns_lock() && helpers > 0 && n > 1) {
        --serial_left_;
        serial_jobs_.fetch_add(1);
      }
      return;
    }
    const auto t0 = Clock::now();
    const int64_t cpu0 = thread_cpu_ns();
    jobs_.fetch_add(1);
    grow(helpers);
    // Close the previous generation before touching the descriptor (see class comment).
    const uint64_t gen = (state_.load() >> 32) + 1;
    state_.store((gen << 32) | kClosed);
    fn_.store(fn);
    ctx_.store(ctx);
    n_.store(n);
    active_.store(helpers);
    done_.store(0);
    state_.store(gen << 32);
    if (sleepers_.load() > 0) {
      { std::lock_guard<std::mutex> lock(sleep_mutex_); }
      sleep_cv_.notify_all();
    }
    int64_t mine = 0;
    for (uint64_t s = state_.load(); (s & kIndexMask) < static_cast<uint64_t>(n);) {
      if (state_.compare_exchange_weak(s, s + 1)) {
        fn(ctx, static_cast<int64_t>(s & kIndexMask));
        ++mine;
        s = state_.load();
      }
    }
    // Every chunk is claimed; wait only for those a helper took (it is running them).
    const auto t_mine = Clock::now();
    const int64_t cpu_mine = thread_cpu_ns() - cpu0;
    for (int spins = 0; done_.load() < n - mine; ++spins) {
      if (spins < 4096) cpu_relax(); else sched_yield();
    }
    // Signs that the other core is busy with someone else's job: this thread was preempted
    // while working (wall time well above its CPU time), a helper preempted inside
    // its chunk made us wait long against our own share of the work, or the helpers did less
    // than a quarter of the chunks (they woke late or shared our core), so waking them cost
    // more than it gave. Then run the next jobs serially (1, 2, 4 ... up to 64 jobs while
    // this repeats; counted in jobs, not time, because the gap between calls varies) and
    // then try the helpers again.
    const auto waited = Clock::now() - t_mine;
    const bool late_helpers = 4 * (n - mine) < n;
    // Our own chunks took much longer in wall time than in CPU time: this thread was
    // preempted while it worked, i.e. the cores are oversubscribed (possibly by our helper).
    const int64_t wall_mine = std::chrono::duration_cast<std::chrono::nanoseconds>(t_mine - t0).count();
    const bool preempted = wall_mine > 50000 && 4 * wall_mine > 5 * cpu_mine;
    if (late_helpers || preempted ||
        waited > std::max<Clock::duration>(t_mine - t0, std::chrono::microseconds(100))) {
      stalls_.fetch_add(1);
      serial_left_ = backoff_;
      backoff_ = std::min<int64_t>(backoff_ * 2, kMaxBackoff);
    } else {
      backoff_ = 1;
    }
  }

  // Counters for benchmarks: pooled jobs, stalls seen, jobs run serially while backing off.
  std::tuple<int64_t, int64_t, int64_t> stats() const {
    return {jobs_.load(), stalls_.load(), serial_jobs_.load()};
  }

  static WorkPool& instance() {
    static std::once_flag once;
    std::call_once(once, [] {
      pool_ = new WorkPool();  // leaked on purpose: helpers outlive static destruction
      // A forked child has none of the parent's threads: give it a fresh, empty pool.
      pthread_atfork(nullptr, nullptr, [] { pool_ = new WorkPool(); });
    });
    return *pool_;
  }

 private:
  using Clock = std::chrono::steady_clock;

  static int64_t thread_cpu_ns() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  }
  static constexpr int64_t kMaxBackoff = 64;  // jobs
  static constexpr uint64_t kIndexMask = 0xffffffffull;
  static constexpr uint64_t kClosed = kIndexMask;  // index value: no chunk may be claimed
  // How long an idle helper spins before sleeping: long enough to catch the next layer of a
  // forward pass, short enough not to burn a shared core.
  static inline WorkPool* pool_ = nullptr;

 public:
  static inline std::atomic<int64_t> spin_us{200};

 private:

  void grow(int helpers) {
    while (static_cast<int>(threads_.size()) < helpers) {
      const int id = static_cast<int>(threads_.size());
      threads_.emplace_back([this, id] { helper(id); });
      threads_.back().detach();
    }
  }

  void helper(int id) {
    uint64_t seen = 0;  // generation last handled
    for (;;) {
      uint64_t s = state_.load();
      if ((s >> 32) == seen || (s & kIndexMask) == kClosed) {
        s = wait_for_job(seen);
        if ((s & kIndexMask) == kClosed) continue;
      }
      const uint64_t gen = s >> 32;
      const Fn fn = fn_.load();
      void* const ctx = ctx_.load();
      const uint64_t n = static_cast<uint64_t>(n_.load());
      const int active = active_.load();
      if (id < active) {
        while ((s >> 32) == gen && (s & kIndexMask) < n) {
          if (state_.compare_exchange_weak(s, s + 1)) {
            fn(ctx, static_cast<int64_t>(s & kIndexMask));
            done_.fetch_add(1);
            s = state_.load();
          }
        }
      }
      seen = gen;
    }
  }

  // Spins briefly, then sleeps until a generation other than `seen` is published.
  uint64_t wait_for_job(uint64_t seen) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us.load());
    for (int i = 0;; ++i) {
      const uint64_t s = state_.load();
      if ((s >> 32) != seen && (s & kIndexMask) != kClosed) return s;
      cpu_relax();
      if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
    }
    sleepers_.fetch_add(1);
    std::unique_lock<std::mutex> lock(sleep_mutex_);
    sleep_cv_.wait(lock, [&] {
      const uint64_t s = state_.load();
      return (s >> 32) != seen && (s & kIndexMask) != kClosed;
    });
    sleepers_.fetch_sub(1);
    return state_.load();
  }

  std::atomic<uint64_t> state_{kClosed};
  std::atomic<Fn> fn_{nullptr};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int> active_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int64_t> jobs_{0}, stalls_{0}, serial_jobs_{0};
  // Guarded by run_mutex_ (only the thread that holds it reads or writes them).
  int64_t serial_left_ = 0;  // jobs still to run serially after a stall
  int64_t backoff_ = 1;
  std::mutex run_mutex_, sleep_mutex_;
  std::condition_variable sleep_cv_;
  std::vector<std::thread> threads_;
};

// How a kernel spreads its chunks: the calling thread alone, torch's OpenMP pool, our pool,
// or (the default) OpenMP that backs off to serial runs when a region shows the cores are
// oversubscribed.
enum Threading : int64_t { kSerial = 0, kOpenMP = 1, kPool = 2, kAdaptive = 3 };

// Back-off state of the adaptive mode, shared by all kernels of the process. On an idle
// machine OpenMP's spinning workers start at once (measured: 2x a serial run, where our
// sleeping pool helpers woke too late to help); on a loaded one a region waits a whole
// scheduler slice for a preempted worker (measured: 7 ms for a 0.2 ms product). So: run the
// region with chunks claimed dynamically, and if the caller did nearly all of them or waited
// long for the others, run the next 1, 2, 4 ... 1024 jobs serially before trying again.
struct Adaptive {
  std::atomic<int64_t> serial_left{0}, backoff{1}, jobs{0}, stalls{0}, serial_jobs{0};
};
inline Adaptive& adaptive() {
  static Adaptive a;
  return a;
}
constexpr int64_t kMaxAdaptiveBackoff = 1024;

template <typename Body>
void adaptive_chunks(int64_t chunks, int threads, Body& body) {
  Adaptive& a = adaptive();
  if (a.serial_left.load(std::memory_order_relaxed) > 0) {
    a.serial_left.fetch_sub(1, std::memory_order_relaxed);
    a.serial_jobs.fetch_add(1, std::memory_order_relaxed);
    for (int64_t c = 0; c < chunks; ++c) body(c);
    return;
  }
  using Clock = std::chrono::steady_clock;
  a.jobs.fetch_add(1, std::memory_order_relaxed);
  std::atomic<int64_t> next{0};
  int64_t mine = 0;
  Clock::duration mine_time{};
  const auto caller = std::this_thread::get_id();
  const auto t0 = Clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    const bool is_caller = std::this_thread::get_id() == caller;
    for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
      if (is_caller) {
        const auto t = Clock::now();
        body(c);
        mine_time += Clock::now() - t;
        ++mine;
      } else {
        body(c);
      }
    }
  });
  const auto wall = Clock::now() - t0;
  const bool late_helpers = 4 * (chunks - mine) < chunks;
  const bool waited =
      wall - mine_time > std::max<Clock::duration>(mine_time, std::chrono::microseconds(100));
  if (late_helpers || waited) {
    a.stalls.fetch_add(1, std::memory_order_relaxed);
    const int64_t b = a.backoff.load(std::memory_order_relaxed);
    a.serial_left.store(b, std::memory_order_relaxed);
    a.backoff.store(std::min(2 * b, kMaxAdaptiveBackoff), std::memory_order_relaxed);
  } else {
    a.backoff.store(1, std::memory_order_relaxed);
  }
}

template <typename Body>
void parallel_chunks(int64_t chunks, int64_t threading, Body&& body) {
  const int threads = at::get_num_threads();
  if (chunks == 1 || threads <= 1 || threading == kSerial || at::in_parallel_region()) {
    for (int64_t c = 0; c < chunks; ++c) body(c);
  } else if (threading == kOpenMP) {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) body(c);
    });
  } else if (threading == kAdaptive) {
    adaptive_chunks(chunks, threads, body);
  } else {
    auto trampoline = [](void* ctx, int64_t c) { (*static_cast<Body*>(ctx))(c); };
    WorkPool::instance().run(chunks, threads - 1, trampoline, &body);
  }
}


constexpr int64_t kRowBlock = 16;  // output rows per tile: one 64-byte line of y per batch row
constexpr int64_t kSerialWork = 1 << 16;  // multiply-adds below which threads do not pay off
// Chunks per thread: several, so a preempted thread's share is small and others take it.
constexpr int64_t kChunksPerThread = 8;

// Chunk boundaries over rows so each chunk holds about the same nonzeros + rows; random
// pruning gives even rows, but a layer with dense and empty rows must not idle a core.
std::vector<int64_t> balanced_splits(const int32_t* rp, int64_t rows, int64_t chunks) {
  std::vector<int64_t> s(chunks + 1, rows);
  s[0] = 0;
  const int64_t total = static_cast<int64_t>(rp[rows]) + rows;
  for (int64_t k = 1; k < chunks; ++k) {
    const int64_t target = total * k / chunks;
    int64_t lo = s[k - 1], hi = rows;
    while (lo < hi) {  // first row r with rp[r] + r >= target
      const int64_t mid = (lo + hi) / 2;
      if (static_cast<int64_t>(rp[mid]) + mid < target) lo = mid + 1; else hi = mid;
    }
    s[k] = lo;
  }
  return s;
}

template <typename I>
void spmv_rows(int64_t r0, int64_t r1, const int32_t* rp, const I* ci, const float* v,
               const float* x, const float* bias, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = rp[r];
    const int64_t e = rp[r + 1];
    // Four independent sums hide the FMA latency; the order differs from a dense dot
    // product only by float rounding (well inside the 1e-5 tolerance).
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    for (; j + 4 <= e; j += 4) {
      a0 += v[j] * x[ci[j]];
      a1 += v[j + 1] * x[ci[j + 1]];
      a2 += v[j + 2] * x[ci[j + 2]];
      a3 += v[j + 3] * x[ci[j + 3]];
    }
    for (; j < e; ++j) a0 += v[j] * x[ci[j]];
    y[r] = ((a0 + a1) + (a2 + a3)) + (bias ? bias[r] : 0.f);
  }
}

#if SB_HAVE_AVX512
template <typename I> inline __m512i load_idx16(const I* p);
template <> inline __m512i load_idx16<int16_t>(const int16_t* p) {
  return _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
template <> inline __m512i load_idx16<int32_t>(const int32_t* p) {
  return _mm512_loadu_si512(p);
}
template <typename I> inline __m512i load_idx16_masked(const I* p, __mmask16 m);
template <> inline __m512i load_idx16_masked<int16_t>(const int16_t* p, __mmask16 m) {
  return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, p));
}
template <> inline __m512i load_idx16_masked<int32_t>(const int32_t* p, __mmask16 m) {
  return _mm512_maskz_loadu_epi32(m, p);
}

// One gather per 16 nonzeros. Two rows are interleaved so that one row's gathers are in
// flight while the other's FMAs retire (a row at 90% sparsity holds only ~6 gathers).
template <typename I>
inline float row_dot16(int64_t j, int64_t e, const I* ci, const float* v, const float* x) {
  __m512 acc = _mm512_setzero_ps();
  for (; j + 16 <= e; j += 16) {
    const __m512 xv = _mm512_i32gather_ps(load_idx16<I>(ci + j), x, 4);
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(v + j), xv, acc);
  }
  if (j < e) {
    const __mmask16 m = static_cast<__mmask16>((1u << (e - j)) - 1u);
    const __m512 xv =
        _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, load_idx16_masked<I>(ci + j, m), x, 4);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, v + j), xv, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

template <typename I>
void spmv_rows_gather(int64_t r0, int64_t r1, const int32_t* rp, const I* ci, const float* v,
                      const float* x, const float* bias, float* y) {
  for (int64_t r = r0; r < r1; ++r)
    y[r] = row_dot16<I>(rp[r], rp[r + 1], ci, v, x) + (bias ? bias[r] : 0.f);
}
#endif

#if SB_HAVE_AVX2
template <typename I> inline __m256i load_idx8(const I* p);
template <> inline __m256i load_idx8<int16_t>(const int16_t* p) {
  return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <> inline __m256i load_idx8<int32_t>(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// 8-wide gathers: on some CPUs (AMD Zen) a ymm gather has better throughput per element.
template <typename I>
void spmv_rows_gather8(int64_t r0, int64_t r1, const int32_t* rp, const I* ci, const float* v,
                       const float* x, const float* bias, float* y) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = rp[r];
    const int64_t e = rp[r + 1];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= e; j += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, load_idx8<I>(ci + j), 4), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 8),
                           _mm256_i32gather_ps(x, load_idx8<I>(ci + j + 8), 4), a1);
    }
    if (j + 8 <= e) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, load_idx8<I>(ci + j), 4), a0);
      j += 8;
    }
    a0 = _mm256_add_ps(a0, a1);
    alignas(32) float t[8];
    _mm256_store_ps(t, a0);
    float sum = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
    for (; j < e; ++j) sum += v[j] * x[ci[j]];
    y[r] = sum + (bias ? bias[r] : 0.f);
  }
}
#endif

// SpMV variants, selectable per call so a benchmark can time them side by side.
enum SpmvVariant : int64_t { kScalar = 0, kGather16 = 1, kGather8 = 2 };

// Measured on AMD Zen 4 (benchmarks/sparse_linear.py --variants): the gathers are not faster
// than the scalar loop there (vpgatherdps issues one load per element anyway), so the scalar
// loop is the default and the gathers stay selectable for CPUs where they win.
inline int64_t default_spmv_variant() { return kScalar; }

template <typename I>
void spmv_dispatch(int64_t variant, int64_t r0, int64_t r1, const int32_t* rp, const I* ci,
                   const float* v, const float* x, const float* bias, float* y) {
#if SB_HAVE_AVX512
  if (variant == kGather16) return spmv_rows_gather<I>(r0, r1, rp, ci, v, x, bias, y);
#endif
#if SB_HAVE_AVX2
  if (variant == kGather8) return spmv_rows_gather8<I>(r0, r1, rp, ci, v, x, bias, y);
#endif
  spmv_rows<I>(r0, r1, rp, ci, v, x, bias, y);
}

// GCC/Clang vector extension: 8 floats, one AVX2 register (half an AVX-512 one, which on
// AMD Zen 4 is executed as two halves anyway). Written this way the same source compiles to
// SSE, AVX2 or AVX-512 as -march allows, and the accumulators stay in registers, which plain
// arrays with `omp simd` did not guarantee (measured 3x slower).
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned loads/stores

// VL floats in one register: 8 (AVX2) or 16 (AVX-512), as GCC vector-extension types.
template <int VL> struct Vec {
  typedef float t __attribute__((vector_size(4 * VL)));
  typedef float u __attribute__((vector_size(4 * VL), aligned(4)));  // unaligned access
};

#if SB_HAVE_AVX512
// e^x for 8 floats: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-7 polynomial
// (Cephes' expf coefficients, relative error about 1e-7), times 2^n built in the exponent
// bits. x is clamped to [-87, 88], where 2^n stays a normal float; the GRU gates and the
// activations only need e^x to saturate correctly outside it.
typedef int32_t v8i __attribute__((vector_size(32)));
inline v8 exp8(v8 x) {
  const v8 lo = v8{} - 87.f, hi = v8{} + 88.f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const v8 shifter = v8{} + 12582912.f;  // 1.5 * 2^23: adding and subtracting it rounds
  const v8 n = (x * 1.44269504088896341f + shifter) - shifter;
  const v8 r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  v8 p = v8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8 scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Activations a sparse Linear applies as it writes its output (SparseLinear.activation), so
// the output is not read and written again by a separate elementwise pass: BERT's GELU after
// its 768->3072 product took 22 ms of a 540 ms forward at batch 8 as its own operation.
enum Activation : int64_t { kNoActivation = 0, kRelu = 1, kGeluErf = 2, kGeluTanh = 3 };

// GELU, x * Phi(x), with erfc(|x| / sqrt 2) from Abramowitz & Stegun 7.1.26 (absolute error
// at most 1.5e-7): Phi(x) = 1 - erfc / 2 for x >= 0, erfc / 2 below. Each side is computed
// directly, so the small values for negative x keep their relative accuracy.
inline v8 gelu_erf8(v8 x) {
  const v8 z = (x < 0.f ? -x : x) * 0.70710678118654752f;
  const v8 t = 1.f / (1.f + 0.3275911f * z);
  v8 poly = 1.061405429f * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const v8 half_erfc = 0.5f * poly * t * exp8(-z * z);
  return x * (x >= 0.f ? 1.f - half_erfc : half_erfc);
}

// The tanh form (GPT-2's "gelu_new", torch's approximate="tanh"):
// x (1 + tanh u) / 2 = x / (1 + e^{-2u}), u = sqrt(2 / pi) (x + 0.044715 x^3).
inline v8 gelu_tanh8(v8 x) {
  const v8 u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.f + exp8(-2.f * u));
}

inline float activation1(float x, int64_t act) {
  switch (act) {
    case kRelu: return x < 0.f ? 0.f : x;  // NaN stays NaN, as in torch
    case kGeluErf: return 0.5f * x * std::erfc(-x * 0.70710678118654752f);
    case kGeluTanh: return x / (1.f + std::exp(-1.5957691216057308f * (x + 0.044715f * x * x * x)));
    default: return x;
  }
}

#if SB_HAVE_AVX512
// The same three with AVX-512 intrinsics, 16 at a time: a reciprocal estimate refined by one
// Newton step instead of a division, and 2^n applied by scalef. The 8-wide vector-extension
// forms above (divisions included) made BERT's fused GELU cost 5.3 ms per 1024 x 3072 output
// against 2.3 ms for torch's own GELU pass; these take about as long as torch's.
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.f)), _mm512_set1_ps(88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// 1 / d for d >= 1: the 14-bit estimate and one Newton step (relative error about 1e-8).
inline __m512 reciprocal16(__m512 d) {
  const __m512 e = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(e, _mm512_fnmadd_ps(d, e, _mm512_set1_ps(2.f)));
}

// GELU, x Phi(x) = x (1 + erf(u)) / 2 with u = x / sqrt 2, and erf(u) = u P(u^2) / Q(u^2) for
// |u| <= 3.92 (beyond, erf is +-1 within 2e-8): P and Q of degree 5, fitted for this kernel by
// least squares reweighted towards the largest error (1.6e-8 against erf in float64; Q >= 1
// on the range, so its reciprocal needs no care). 21 operations, no exponential; the form of
// Abramowitz & Stegun 7.1.26 with its e^{-u^2} (the 8-wide one above) took about 30 and made
// BERT's first FFN product at 1,024 rows 1.49x slower than without its GELU, this one 1.15x
// (compiled pattern kernel, one thread; a script, not kept). In float32 the
// result is within 5e-7 max(1, |x|) of torch's GELU in float64, as the A&S form was
// (tests/inference/test_linear_activations.py).
inline __m512 gelu_erf16(__m512 x) {
  const __m512 limit = _mm512_set1_ps(3.92f);
  const __m512 u = _mm512_min_ps(
      _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f)),
                    _mm512_sub_ps(_mm512_setzero_ps(), limit)),
      limit);
  const __m512 t = _mm512_mul_ps(u, u);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(2.034737336e-06f), t, _mm512_set1_ps(2.874804918e-04f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(3.868356679e-03f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(5.306057632e-02f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.927646986e-01f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.128379022e+00f));
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(3.807071894e-05f), t, _mm512_set1_ps(1.188122960e-03f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.517235544e-02f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.150848935e-01f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(5.041649324e-01f));
  q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(1.f));
  const __m512 erf = _mm512_mul_ps(_mm512_mul_ps(u, p), reciprocal16(q));
  const __m512 half = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(half, erf, half);
}

// x / (1 + e^{-2u}) with the division as x * reciprocal (1 + e^{-2u} >= 1 always).
inline __m512 gelu_tanh16(__m512 x) {
  const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  const __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                 _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
  const __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-2.f), u));
  return _mm512_mul_ps(x, reciprocal16(_mm512_add_ps(_mm512_set1_ps(1.f), e)));
}

inline __m512 activation16(__m512 x, int64_t act) {
  if (act == kRelu) return _mm512_max_ps(_mm512_setzero_ps(), x);  // NaN: the 2nd operand
  if (act == kGeluErf) return gelu_erf16(x);
  return gelu_tanh16(x);
}
#endif

// p[0, n) = act(p[0, n)), in place.
inline void apply_activation(float* p, int64_t n, int64_t act) {
  if (act == kNoActivation) return;
  int64_t i = 0;
#if SB_HAVE_AVX512
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(p + i, activation16(_mm512_loadu_ps(p + i), act));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(p + i, m, activation16(_mm512_maskz_loadu_ps(m, p + i), act));
    return;
  }
#endif
  for (; i + 8 <= n; i += 8) {
    v8 x = *reinterpret_cast<const v8u*>(p + i);
    if (act == kRelu) x = x < 0.f ? v8{} : x;
    else if (act == kGeluErf) x = gelu_erf8(x);
    else x = gelu_tanh8(x);
    *reinterpret_cast<v8u*>(p + i) = x;
  }
  for (; i < n; ++i) p[i] = activation1(p[i], act);
}

// Outputs larger than this are written around the caches (non-temporal stores): they leave
// the cache before the next layer reads them anyway, and a plain store first reads each line
// it writes. A 1x1 convolution read in place, one thread, its output read after each call
// (a script, not kept): 64->256 on 56x56, 8 images (26 MB out): 1.38x; 128->512 on 28x28,
// 8 images (13 MB): 1.20x; 256->64 on 56x56, 8 images (6.4 MB): 1.03x; one image (3.2 and
// 1.6 MB), which the next layer finds in the L3: 0.87x and 0.93x. The kernels alone:
// results/benchmarks/kernels_ab_conv_stream_1thread.txt; whole models with it on and off:
// benchmarks/switch_ab.py --switch stream (set_stream_min_bytes moves the threshold).
constexpr int64_t kStreamOutputBytes = int64_t{8} << 20;
std::atomic<int64_t> g_stream_min_bytes{-1};  // -1: kStreamOutputBytes
inline bool stream_output(int64_t floats) {
  const int64_t set = g_stream_min_bytes.load(std::memory_order_relaxed);
  return floats * static_cast<int64_t>(sizeof(float)) > (set >= 0 ? set : kStreamOutputBytes);
}

// Writes the 16x16 block src (16 rows, `ld` floats apart) transposed: column c goes to
// dst + c * dst_ld as 16 consecutive floats. Three rounds of shuffles in registers, where
// element-by-element copies took about as long as a fifth of the products they wrote out.
// With `act`, the activation is applied to the loaded rows on the way (a panel's GELU this
// way rather than as a pass of its own over the sums: see write_panel_rows).
inline void store_transposed16(const float* src, int64_t ld, float* dst, int64_t dst_ld,
                               bool stream = false, int64_t act = kNoActivation) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld);
  if (act != kNoActivation)
    for (int i = 0; i < 16; ++i) r[i] = activation16(r[i], act);
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: (a0 b0 a1 b1), (a2 b2 a3 b3)
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + k]: lane q holds column 4q + k of rows 4i..4i+3
    r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int k = 0; k < 4; ++k) {
    // Rows 0-7: columns (k, k+8) and (k+4, k+12); rows 8-15 likewise.
    const __m512 a0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
    const __m512 a1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
    const __m512 b0 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
    const __m512 b1 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
    const __m512 c[4] = {_mm512_shuffle_f32x4(a0, b0, 0x88), _mm512_shuffle_f32x4(a0, b0, 0xDD),
                         _mm512_shuffle_f32x4(a1, b1, 0x88), _mm512_shuffle_f32x4(a1, b1, 0xDD)};
    float* d[4] = {dst + k * dst_ld, dst + (k + 8) * dst_ld, dst + (k + 4) * dst_ld,
                   dst + (k + 12) * dst_ld};
    for (int i = 0; i < 4; ++i) {
      if (stream) _mm512_stream_ps(d[i], c[i]);  // the caller checked the alignment
      else _mm512_storeu_ps(d[i], c[i]);
    }
  }
}
#endif

// dst (cols, rows; rows dst_ld floats apart) = src (rows, cols; rows src_ld apart)
// transposed. 16x16 blocks go through registers; a loop that copied element by element (or
// torch's transposing copy, 2.5 GB/s here) took 0.6 ms for a 128x3072 input, a third of the
// sparse product it fed.
inline void transpose_into(const float* src, int64_t rows, int64_t cols, int64_t src_ld,
                           float* dst, int64_t dst_ld) {
  int64_t r0 = 0;
#if SB_HAVE_AVX512
  for (; r0 + 16 <= rows; r0 += 16) {
    int64_t c0 = 0;
    for (; c0 + 16 <= cols; c0 += 16)
      store_transposed16(src + r0 * src_ld + c0, src_ld, dst + c0 * dst_ld + r0, dst_ld);
    for (int64_t c = c0; c < cols; ++c)
      for (int64_t r = r0; r < r0 + 16; ++r) dst[c * dst_ld + r] = src[r * src_ld + c];
  }
#endif
  // What is left (or everything, without AVX-512): 64 columns at a time, so the 64 lines
  // being written stay in L1 while the rows pass.
  for (int64_t c0 = 0; c0 < cols; c0 += 64) {
    const int64_t c1 = std::min(c0 + 64, cols);
    for (int64_t r = r0; r < rows; ++r)
      for (int64_t c = c0; c < c1; ++c) dst[c * dst_ld + r] = src[r * src_ld + c];
  }
}

// One output row's sums over its nonzeros [j, e): sum[k] = b + sum of v[j] * x[at(j) + VL*k
// ..], for the VL*NV columns starting at xb; at(j) is where nonzero j's input row starts.
// U nonzeros are in flight: with fewer than 4 registers per row (batch 16 or 32 with
// AVX-512) a single chain of dependent FMAs would wait on the FMA latency (4 cycles on Zen 4)
// at every nonzero; U independent partial sums keep 4 chains going. Summing them at the end
// reorders the additions, a float-rounding difference only.
template <int VL, int NV, typename At>
inline void row_sums(int64_t j, int64_t e, const float* v, const float* xb, At at, float b,
                     typename Vec<VL>::t (&sum)[NV]) {
  typedef typename Vec<VL>::t vt;
  typedef typename Vec<VL>::u vtu;
  constexpr int U = NV >= 4 ? 1 : 8 / NV;
  vt acc[U][NV];
  for (int u = 0; u < U; ++u)
    for (int k = 0; k < NV; ++k) acc[u][k] = vt{} + (u == 0 ? b : 0.f);
  for (; j + U <= e; j += U) {
    for (int u = 0; u < U; ++u) {
      const float w = v[j + u];
      const vtu* xr = reinterpret_cast<const vtu*>(xb + at(j + u));
      for (int k = 0; k < NV; ++k) acc[u][k] += w * xr[k];
    }
  }
  for (; j < e; ++j) {
    const float w = v[j];
    const vtu* xr = reinterpret_cast<const vtu*>(xb + at(j));
    for (int k = 0; k < NV; ++k) acc[0][k] += w * xr[k];
  }
  for (int u = 1; u < U; ++u)
    for (int k = 0; k < NV; ++k) acc[0][k] += acc[u][k];
  for (int k = 0; k < NV; ++k) sum[k] = acc[0][k];
}

// Rows [o0, o1) (at most kRowBlock) for batch columns [b0, b0 + VL*NV).
template <typename I, int VL, int NV>
inline void spmm_tile(int64_t o0, int64_t o1, int64_t b0, const int32_t* rp, const I* ci,
                      const float* v, const float* xT, int64_t ld, const float* bias,
                      float* y, int64_t out, int64_t act) {
  typedef typename Vec<VL>::t vt;
  constexpr int TB = VL * NV;
  alignas(64) float buf[kRowBlock][TB];
  const float* xb = xT + b0;
  const auto at = [ci, ld](int64_t j) { return static_cast<int64_t>(ci[j]) * ld; };
  for (int64_t o = o0; o < o1; ++o) {
    vt sum[NV];
    row_sums<VL, NV>(rp[o], rp[o + 1], v, xb, at, bias ? bias[o] : 0.f, sum);
    for (int k = 0; k < NV; ++k) *reinterpret_cast<vt*>(&buf[o - o0][VL * k]) = sum[k];
  }
  const int64_t n = o1 - o0;
  apply_activation(&buf[0][0], n * TB, act);
#if SB_HAVE_AVX512
  if constexpr (TB % 16 == 0 && kRowBlock == 16) {
    if (n == 16) {
      for (int t0 = 0; t0 < TB; t0 += 16)
        store_transposed16(&buf[0][t0], TB, y + (b0 + t0) * out + o0, out);
      return;
    }
  }
#endif
  for (int t = 0; t < TB; ++t) {
    float* yr = y + (b0 + t) * out + o0;
    for (int64_t k = 0; k < n; ++k) yr[k] = buf[k][t];
  }
}

// Scalar tail for the last batch % 8 columns.
template <typename I>
inline void spmm_tile_tail(int64_t o0, int64_t o1, int64_t b0, int64_t nb, const int32_t* rp,
                           const I* ci, const float* v, const float* xT, int64_t ld,
                           const float* bias, float* y, int64_t out, int64_t act) {
  for (int64_t o = o0; o < o1; ++o) {
    float acc[8];
    const float b = bias ? bias[o] : 0.f;
    for (int64_t t = 0; t < nb; ++t) acc[t] = b;
    for (int64_t j = rp[o], e = rp[o + 1]; j < e; ++j) {
      const float w = v[j];
      const float* xr = xT + static_cast<int64_t>(ci[j]) * ld + b0;
      for (int64_t t = 0; t < nb; ++t) acc[t] += w * xr[t];
    }
    for (int64_t t = 0; t < nb; ++t) y[(b0 + t) * out + o] = activation1(acc[t], act);
  }
}

// Output rows [r0, r1) for the B batch columns of xT (in, >= B; rows ld floats apart); y's
// batch rows are out floats apart, starting at xT's first batch column.
template <typename I>
void spmm_rows(int64_t r0, int64_t r1, const int32_t* rp, const I* ci, const float* v,
               const float* xT, int64_t ld, int64_t B, const float* bias, float* y,
               int64_t out, int64_t act) {
  for (int64_t o0 = r0; o0 < r1; o0 += kRowBlock) {
    const int64_t o1 = std::min(o0 + kRowBlock, r1);
    int64_t b0 = 0;
    // Widest tiles first (8 registers of 8 floats), then narrower ones and a scalar tail.
    // With AVX-512, 16-float registers: half the x loads per multiply-add of 8-float ones.
#if SB_HAVE_AVX512
    for (; b0 + 64 <= B; b0 += 64) spmm_tile<I, 16, 4>(o0, o1, b0, rp, ci, v, xT, ld, bias, y, out, act);
    if (b0 + 32 <= B) { spmm_tile<I, 16, 2>(o0, o1, b0, rp, ci, v, xT, ld, bias, y, out, act); b0 += 32; }
    if (b0 + 16 <= B) { spmm_tile<I, 16, 1>(o0, o1, b0, rp, ci, v, xT, ld, bias, y, out, act); b0 += 16; }
#else
    for (; b0 + 64 <= B; b0 += 64) spmm_tile<I, 8, 8>(o0, o1, b0, rp, ci, v, xT, ld, bias, y, out, act);
    if (b0 + 32 <= B) { spmm_tile<I, 8, 4>(o0, o1, b0, rp, ci, v, xT, ld, bias, y, out, act); b0 += 32; }
    if (b0 + 16 <= B) { spmm_tile<I, 8, 2>(o0, o1, b0, rp, ci, v, xT, ld, bias, y, out, act); b0 += 16; }
#endif
    if (b0 + 8 <= B) { spmm_tile<I, 8, 1>(o0, o1, b0, rp, ci, v, xT, ld, bias, y, out, act); b0 += 8; }
    if (b0 < B) spmm_tile_tail<I>(o0, o1, b0, B - b0, rp, ci, v, xT, ld, bias, y, out, act);
  }
}

// The sums of rows [r0, r1) of one panel (sums: (r1 - r0, TB), row-major), through the
// activation, into y's TB batch rows (out floats apart) at columns [r0, r1): transposed 16
// rows at a time, so each batch row gets one 64-byte run of y.
template <int TB>
void write_panel_rows(float* sums, int64_t r0, int64_t r1, float* y, int64_t out, int64_t act,
                      bool stream = false) {
  for (int64_t o0 = r0; o0 < r1; o0 += kRowBlock) {
    const int64_t n = std::min(kRowBlock, r1 - o0);
#if SB_HAVE_AVX512
    if constexpr (TB % 16 == 0 && kRowBlock == 16) {
      if (n == 16) {
        for (int t0 = 0; t0 < TB; t0 += 16)
          store_transposed16(sums + (o0 - r0) * TB + t0, TB, y + t0 * out + o0, out,
                             stream && out % 16 == 0 &&
                                 reinterpret_cast<std::uintptr_t>(y + o0) % 64 == 0,
                             act);
        continue;
      }
    }
#endif
    apply_activation(sums + (o0 - r0) * TB, n * TB, act);
    for (int tt = 0; tt < TB; ++tt) {
      float* yr = y + tt * out + o0;
      for (int64_t q = 0; q < n; ++q) yr[q] = sums[(o0 - r0 + q) * TB + tt];
    }
  }
}

// One full panel of TB = VL*NV batch columns for rows [r0, r1), the input features taken in
// blocks: kp[o * (nkb + 1) + t] is row o's first nonzero in block t (its last entry the row's
// end), so the part of the panel one block reads (kb x TB floats) can stay in L1 while all
// rows pass over it. Each row's partial sums wait in the thread's scratch between blocks.
template <typename I, int VL, int NV>
void spmm_panel_blocked(int64_t r0, int64_t r1, const int64_t* kp, int64_t nkb, const I* ci,
                        const float* v, const float* xT, const float* bias, float* y,
                        int64_t out, int64_t act) {
  typedef typename Vec<VL>::t vt;
  constexpr int TB = VL * NV;
  constexpr int U = NV >= 4 ? 1 : 4 / NV;
  const int64_t rows = r1 - r0;
  thread_local std::vector<vt> scratch;
  scratch.resize(rows * NV);
  vt* acc_rows = scratch.data();
  for (int64_t t = 0; t < nkb; ++t) {
    for (int64_t o = r0; o < r1; ++o) {
      const int64_t* k = kp + o * (nkb + 1) + t;
      int64_t j = k[0];
      const int64_t e = k[1];
      vt* st = acc_rows + (o - r0) * NV;
      vt a[U][NV];
      for (int q = 0; q < NV; ++q) a[0][q] = t == 0 ? vt{} + (bias ? bias[o] : 0.f) : st[q];
      for (int u = 1; u < U; ++u)
        for (int q = 0; q < NV; ++q) a[u][q] = vt{};
      for (; j + U <= e; j += U) {
        for (int u = 0; u < U; ++u) {
          const float w = v[j + u];
          const vt* xr = reinterpret_cast<const vt*>(xT + static_cast<int64_t>(ci[j + u]) * TB);
          for (int q = 0; q < NV; ++q) a[u][q] += w * xr[q];
        }
      }
      for (; j < e; ++j) {
        const float w = v[j];
        const vt* xr = reinterpret_cast<const vt*>(xT + static_cast<int64_t>(ci[j]) * TB);
        for (int q = 0; q < NV; ++q) a[0][q] += w * xr[q];
      }
      for (int u = 1; u < U; ++u)
        for (int q = 0; q < NV; ++q) a[0][q] += a[u][q];
      for (int q = 0; q < NV; ++q) st[q] = a[0][q];
    }
  }
  write_panel_rows<TB>(reinterpret_cast<float*>(acc_rows), r0, r1, y, out, act);
}

// ---------------------------------------------------------------------------------------
// Large batches over a count-class layout (built once per layer by csr_panel_layout).
//
// In spmm_panel_blocked each row runs its nonzeros of a feature block in a loop whose trip
// count is drawn by the sparsity pattern (about 13 at 90% and 128 features), so the branch
// predictor likely misses the loop's exit at nearly every row (our reading, not counted: a
// miss costs some 15 cycles here, a row's multiply-adds about 50). The layout sorts the rows
// of each part and feature block by their count of
// nonzeros there; rows of one count then run back to back through a body unrolled for
// exactly that count, and no branch depends on the pattern. The nonzeros are stored in that
// order (value and int16 feature offset within the block: 6 bytes, as CSR with int16).
// Measured side by side against the blocked loop (benchmarks/kernels_ab.py f1066eb --only
// linear, BERT's shapes and 4096x1024 at 90%, one thread): 1.15-1.46x at 128 rows,
// 1.03-1.18x at 1,024.
//
// The layout's tensors (int64 unless noted):
//   meta      [kblock, parts, blocks]
//   part_rows [parts + 1]: the row range of each part, balanced by nonzeros (a thread's share)
//   group_ptr [parts * blocks + 1]: groups of part p and block t are
//             [group_ptr[p * blocks + t], group_ptr[p * blocks + t + 1])
//   groups    [G, 4]: count, first entry of rows, number of rows, first nonzero
//   rows      int32: a group's rows, as row - part start
//   offsets   int16: the feature of each nonzero minus its block's first
//   values    float32
constexpr int kMaxUnrolledCount = 32;  // rows with more nonzeros in a block run a plain loop

// n rows of c nonzeros each in the block at xb: their sums (NV vectors per row, at
// sums + row * NV) plus w * x[offset] over each row's nonzeros. A positive C is c known at
// compile time, so the loop over a row's nonzeros unrolls and no branch depends on the
// pattern; C = 0 reads c at run time (counts above kMaxUnrolledCount).
template <int VL, int NV, int C>
void class_rows(int64_t c, int64_t n, const int32_t* rows, const int16_t* off,
                const float* val, const float* xb, typename Vec<VL>::t* sums) {
  typedef typename Vec<VL>::t vt;
  constexpr int TB = VL * NV;
  const int64_t count = C > 0 ? C : c;
  for (int64_t r = 0; r < n; ++r, off += count, val += count) {
    vt* s = sums + static_cast<int64_t>(rows[r]) * NV;
    vt a[NV];
    for (int q = 0; q < NV; ++q) a[q] = s[q];
#pragma GCC unroll 32
    for (int64_t i = 0; i < count; ++i) {
      const float w = val[i];
      const vt* xr = reinterpret_cast<const vt*>(xb + static_cast<int64_t>(off[i]) * TB);
      for (int q = 0; q < NV; ++q) a[q] += w * xr[q];
    }
    for (int q = 0; q < NV; ++q) s[q] = a[q];
  }
}

template <int VL, int NV>
using ClassRowsFn = void (*)(int64_t, int64_t, const int32_t*, const int16_t*, const float*,
                             const float*, typename Vec<VL>::t*);

template <int VL, int NV, int... C>
constexpr std::array<ClassRowsFn<VL, NV>, sizeof...(C)> class_rows_table(
    std::integer_sequence<int, C...>) {
  return {{&class_rows<VL, NV, C>...}};
}

// A layout's tensors as pointers, checked once per call.
struct PanelLayout {
  int64_t kblock, parts, blocks;
  const int64_t *part_rows, *group_ptr, *groups;
  const int32_t* rows;
  const int16_t* offsets;
  const float* values;
  // Set instead of the four above when the layout is code compiled for the pattern
  // (build_pattern_kernel): rows per group, each chunk's code and first weight, the code.
  int64_t group_rows = 0;
  const int64_t *chunk_code = nullptr, *chunk_w = nullptr;
  const uint8_t* code = nullptr;
  int64_t in = 0;  // input features (the compiled code's panels are 4 slices of (in, 16))
};

constexpr int64_t kPatternMagic = 0x5053;  // meta[0] of a compiled pattern kernel
PanelLayout check_pattern_kernel(const std::vector<at::Tensor>& t, int64_t out, int64_t in);

PanelLayout check_panel_layout(const std::vector<at::Tensor>& t, int64_t out, int64_t in) {
  if (t.size() == 6 && t[0].scalar_type() == at::kLong && t[0].numel() == 6 &&
      t[0].data_ptr<int64_t>()[0] == kPatternMagic)
    return check_pattern_kernel(t, out, in);
  TORCH_CHECK(t.size() == 7, "panel layout: expected 7 tensors, got ", t.size());
  for (int i = 0; i < 7; ++i) TORCH_CHECK(t[i].is_contiguous(), "panel layout: tensor ", i,
                                          " is not contiguous");
  TORCH_CHECK(t[0].scalar_type() == at::kLong && t[0].numel() == 3, "panel layout: bad meta");
  const int64_t* meta = t[0].data_ptr<int64_t>();
  PanelLayout L{meta[0], meta[1], meta[2], nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  TORCH_CHECK(L.kblock > 0 && L.parts > 0 && L.blocks == (in + L.kblock - 1) / L.kblock,
              "panel layout: built for another input width");
  TORCH_CHECK(t[1].scalar_type() == at::kLong && t[1].numel() == L.parts + 1 &&
                  t[1].data_ptr<int64_t>()[L.parts] == out,
              "panel layout: built for another output width");
  TORCH_CHECK(t[2].scalar_type() == at::kLong && t[2].numel() == L.parts * L.blocks + 1 &&
                  t[3].scalar_type() == at::kLong && t[4].scalar_type() == at::kInt &&
                  t[5].scalar_type() == at::kShort && t[6].scalar_type() == at::kFloat &&
                  t[5].numel() == t[6].numel(),
              "panel layout: tensors of the wrong type or size");
  L.part_rows = t[1].data_ptr<int64_t>();
  L.group_ptr = t[2].data_ptr<int64_t>();
  L.groups = t[3].data_ptr<int64_t>();
  L.rows = t[4].data_ptr<int32_t>();
  L.offsets = t[5].data_ptr<int16_t>();
  L.values = t[6].data_ptr<float>();
  return L;
}

// Part p of one full panel (xT: (in, TB)), written into y's TB batch rows.
template <int VL, int NV>
void layout_panel_part(const PanelLayout& L, int64_t p, const float* xT, const float* bias,
                       float* y, int64_t out, int64_t act, bool stream = false) {
  typedef typename Vec<VL>::t vt;
  constexpr int TB = VL * NV;
  static constexpr auto table =
      class_rows_table<VL, NV>(std::make_integer_sequence<int, kMaxUnrolledCount + 1>{});
  const int64_t r0 = L.part_rows[p], r1 = L.part_rows[p + 1];
  thread_local std::vector<vt> scratch;
  scratch.resize((r1 - r0) * NV);
  vt* sums = scratch.data();
  for (int64_t o = r0; o < r1; ++o)
    for (int q = 0; q < NV; ++q) sums[(o - r0) * NV + q] = vt{} + (bias ? bias[o] : 0.f);
  for (int64_t t = 0; t < L.blocks; ++t) {
    const float* xb = xT + t * L.kblock * TB;
    for (int64_t g = L.group_ptr[p * L.blocks + t], ge = L.group_ptr[p * L.blocks + t + 1];
         g < ge; ++g) {
      const int64_t* G = L.groups + 4 * g;
      const int32_t* rows = L.rows + G[1];
      const int16_t* off = L.offsets + G[3];
      const float* val = L.values + G[3];
      table[G[0] <= kMaxUnrolledCount ? G[0] : 0](G[0], G[2], rows, off, val, xb, sums);
    }
  }
  write_panel_rows<TB>(reinterpret_cast<float*>(sums), r0, r1, y, out, act, stream);
}

// Feature block of the layout: 128 features (32 KB of a 64-column panel, the L1 data cache
// of a Zen 4 core) from 7.5% density up, where a row keeps about 10 nonzeros per block or
// more; sparser layers take 256, so the loads and stores of each row's sums stay a small part
// of the work. Chosen by timing the layout's kernel alone at 2, 5, 10 and 50% density with
// blocks of 64-768 features (at 5%, 128 and 256 were within 4% of each other either way, and
// the first version, 128 from 3% up, ran 3072x768 at 1,024 rows 0.94x the blocked loop).
int64_t default_layout_kblock(int64_t nnz, int64_t out, int64_t in) {
  const double density = out * in > 0 ? static_cast<double>(nnz) / (out * in) : 0.0;
  return std::min<int64_t>(std::max<int64_t>(in, 1), density >= 0.075 ? 128 : 256);
}

template <typename I>
std::vector<at::Tensor> build_panel_layout(const int32_t* rp, const I* ci, const float* v,
                                           int64_t out, int64_t in, int64_t kb, int64_t parts) {
  const int64_t blocks = (in + kb - 1) / kb;
  const auto part_rows = balanced_splits(rp, out, parts);
  std::vector<int64_t> group_ptr{0}, groups;
  std::vector<int32_t> rows;
  std::vector<int16_t> offsets;
  std::vector<float> values;
  offsets.reserve(rp[out]);
  values.reserve(rp[out]);
  std::vector<int64_t> cursor(rp, rp + out + 1);  // each row's first nonzero not yet placed
  std::vector<std::pair<int64_t, int32_t>> counted;  // (count, row) of one part and block
  for (int64_t p = 0; p < parts; ++p) {
    const int64_t r0 = part_rows[p], r1 = part_rows[p + 1];
    std::vector<int64_t> start(r1 - r0);
    for (int64_t t = 0; t < blocks; ++t) {
      counted.clear();
      for (int64_t o = r0; o < r1; ++o) {
        int64_t e = cursor[o];
        start[o - r0] = e;
        while (e < rp[o + 1] && static_cast<int64_t>(ci[e]) < (t + 1) * kb) ++e;
        if (e > cursor[o]) counted.emplace_back(e - cursor[o], static_cast<int32_t>(o - r0));
        cursor[o] = e;
      }
      std::sort(counted.begin(), counted.end());  // by count, then row: sums visited in order
      for (size_t i = 0; i < counted.size();) {
        const int64_t c = counted[i].first;
        groups.insert(groups.end(), {c, static_cast<int64_t>(rows.size()), 0,
                                     static_cast<int64_t>(values.size())});
        for (; i < counted.size() && counted[i].first == c; ++i) {
          const int32_t r = counted[i].second;
          rows.push_back(r);
          groups[groups.size() - 2] += 1;  // the group's number of rows
          for (int64_t j = start[r]; j < start[r] + c; ++j) {
            offsets.push_back(static_cast<int16_t>(static_cast<int64_t>(ci[j]) - t * kb));
            values.push_back(v[j]);
          }
        }
      }
      group_ptr.push_back(static_cast<int64_t>(groups.size() / 4));
    }
  }
  auto from = [](const auto& vec, at::ScalarType type) {
    at::Tensor t = at::empty({static_cast<int64_t>(vec.size())}, at::TensorOptions().dtype(type));
    if (!vec.empty()) std::memcpy(t.data_ptr(), vec.data(), vec.size() * sizeof(vec[0]));
    return t;
  };
  return {from(std::vector<int64_t>{kb, parts, blocks}, at::kLong), from(part_rows, at::kLong), from(group_ptr, at::kLong),
          from(groups, at::kLong).view({-1, 4}), from(rows, at::kInt),
          from(offsets, at::kShort), from(values, at::kFloat)};
}

// The first n floats of v from a 64-byte boundary on (v grows as needed): the planes of a
// convolution's buffers start on whole cache lines only if the buffer does, and std::vector
// gives 16 bytes.
float* aligned_floats(std::vector<float>& v, int64_t n) {
  v.resize(n + 16);
  const auto at = reinterpret_cast<std::uintptr_t>(v.data());
  return v.data() + ((64 - at % 64) % 64) / sizeof(float);
}

// ---------------------------------------------------------------------------------------
// Large batches through code compiled for the pattern (pattern_jit.h says why).
//
// Rows are taken in groups of R, their sums in zmm0..zmm(R-1); features in blocks of
// kblock. One function per group and block, of the form
//   void chunk(const float* xb,    // rdi: the block's first feature in a 16-row slice of a
//                                  //      packed panel (features 16 floats apart)
//              const float* w,     // rsi: the chunk's weights, in the order its code reads them
//              float* sums,        // rdx: the group's first row's sums in that slice (rows 16
//                                  //      floats apart)
//              const float* bias)  // rcx: the group's first row's bias (first block only)
// starts the sums: in the first block of features from the bias (every row of the group, so
// the chunk exists even without nonzeros), in later blocks by loading those of the rows with
// nonzeros there; then for each feature with any: one load of x into zmm31 and one broadcast
// multiply-add per nonzero; then stores the sums. Starting from the bias in registers saves a
// pass that stored it to every sum before the chunks read it back. It is
// called for the 4 slices of a 64-row panel in turn, so its code, fetched once from L2 or
// L3, runs 4 times from L1 (a chunk is about 20 KB at R = 31, 90% and 768 features).
//
// The kernel's tensors:
//   meta        int64 [kPatternMagic, R, kblock, parts, groups, blocks]
//   part_rows   int64 [parts + 1]: the row range of each part, whole groups, balanced by
//               nonzeros (a thread's share, as in the count-class layout)
//   chunk_code  int64 [groups * blocks + 1]: byte offset of each chunk's code (none where
//               equal to the next)
//   chunk_w     int64 [groups * blocks]: each chunk's first weight
//   weights     float32, in code order
//   code        uint8, on pages mapped executable (pattern_jit::Executable)
#if SB_HAVE_AVX512 && defined(__x86_64__) && defined(__linux__)
#define SB_HAVE_PATTERN_JIT 1
constexpr int kPatternGroupRows = 31;  // sums in zmm0-30; zmm31 holds x
constexpr int kPatternXRegister = 31;
constexpr int64_t kPatternSlice = 16;  // batch columns per call (one register)
// A panel's inputs and sums are kept as 4 slices of 16 batch rows, each slice a matrix with
// one 64-byte row per feature (inputs) or output (sums): what one call reads or writes is
// contiguous, and a product's sums have the form of the next product's packed input
// (csr_pattern_chain). Against the 64 batch rows interleaved (one 256-byte row per feature,
// a call's features in a quarter of the L1's sets): 0.98-1.09x on BERT's three shapes at 128
// and 1,024 rows, level within the noise (benchmarks/kernels_ab.py, load average 3).
constexpr int64_t kPatternStride = kPatternSlice * sizeof(float);  // bytes between features

using PatternChunk = void (*)(const float*, const float*, float*, const float*);

template <typename I>
std::vector<at::Tensor> build_pattern_kernel(const int32_t* rp, const I* ci, const float* v,
                                             int64_t out, int64_t in, int64_t R, int64_t kb,
                                             int64_t parts) {
  using pattern_jit::Emitter;
  using pattern_jit::MovingBase;
  const int64_t groups = (out + R - 1) / R, blocks = (in + kb - 1) / kb;
  // Parts: whole groups, balanced by nonzeros (splits of the rows, rounded to groups).
  std::vector<int64_t> part_rows{0};
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = static_cast<int64_t>(rp[out]) * p / parts;
    int64_t g = part_rows.back() / R;
    while (g < groups && rp[std::min(out, (g + 1) * R)] <= target) ++g;
    part_rows.push_back(std::min(out, g * R));
  }
  part_rows.push_back(out);
  Emitter e;
  std::vector<float> weights;
  weights.reserve(rp[out]);
  std::vector<int64_t> chunk_code, chunk_w;
  std::vector<int64_t> cursor(rp, rp + out + 1);
  struct Entry { int64_t feature; int row; float w; };
  std::vector<Entry> entries;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t r0 = g * R, r1 = std::min(out, r0 + R);
    for (int64_t t = 0; t < blocks; ++t) {
      chunk_code.push_back(static_cast<int64_t>(e.bytes.size()));
      chunk_w.push_back(static_cast<int64_t>(weights.size()));
      entries.clear();
      uint32_t used = 0;
      for (int64_t o = r0; o < r1; ++o)
        for (int64_t& j = cursor[o]; j < rp[o + 1] && static_cast<int64_t>(ci[j]) < (t + 1) * kb; ++j) {
          entries.push_back({static_cast<int64_t>(ci[j]) - t * kb, static_cast<int>(o - r0), v[j]});
          used |= 1u << (o - r0);
        }
      if (t == 0) used = (uint32_t{1} << (r1 - r0)) - 1;  // every row starts at its bias
      if (entries.empty() && t > 0) continue;
      std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
        return a.feature != b.feature ? a.feature < b.feature : a.row < b.row;
      });
      for (int r = 0; r < R; ++r) {
        if (!(used >> r & 1)) continue;
        if (t == 0) e.broadcast(r, pattern_jit::kRcx, static_cast<int32_t>(4 * r));
        else e.load(r, pattern_jit::kRdx, static_cast<int32_t>(r * kPatternStride));
      }
      MovingBase x{pattern_jit::kRdi, 64}, w{pattern_jit::kRsi, 4};
      int64_t last = -1, j = 0;
      for (const Entry& n : entries) {
        if (n.feature != last) {
          e.load(kPatternXRegister, pattern_jit::kRdi, x.disp(e, n.feature * kPatternStride));
          last = n.feature;
        }
        e.fma_broadcast(n.row, kPatternXRegister, pattern_jit::kRsi, w.disp(e, 4 * j++));
        weights.push_back(n.w);
      }
      for (int r = 0; r < R; ++r)
        if (used >> r & 1) e.store(pattern_jit::kRdx, static_cast<int32_t>(r * kPatternStride), r);
      e.ret();
    }
  }
  chunk_code.push_back(static_cast<int64_t>(e.bytes.size()));
  auto from = [](const auto& vec, at::ScalarType type) {
    at::Tensor t = at::empty({static_cast<int64_t>(vec.size())}, at::TensorOptions().dtype(type));
    if (!vec.empty()) std::memcpy(t.data_ptr(), vec.data(), vec.size() * sizeof(vec[0]));
    return t;
  };
  if (e.bytes.empty()) e.ret();  // an all-zero weight: no chunk, but a mapping to point at
  const auto mapped = pattern_jit::Executable::map(e.bytes);
  TORCH_CHECK(mapped.first != nullptr, "csr_pattern_kernel: the system refused executable "
              "memory for the compiled code (", std::strerror(errno), ")");
  at::Tensor code = at::from_blob(
      mapped.first, {static_cast<int64_t>(e.bytes.size())},
      [size = mapped.second](void* p) { pattern_jit::Executable::unmap(p, size); },
      at::TensorOptions().dtype(at::kByte));
  return {from(std::vector<int64_t>{kPatternMagic, R, kb, parts, groups, blocks}, at::kLong),
          from(part_rows, at::kLong), from(chunk_code, at::kLong), from(chunk_w, at::kLong),
          from(weights, at::kFloat), code};
}

PanelLayout check_pattern_kernel(const std::vector<at::Tensor>& t, int64_t out, int64_t in) {
  for (int i = 0; i < 6; ++i)
    TORCH_CHECK(t[i].is_contiguous(), "pattern kernel: tensor ", i, " is not contiguous");
  const int64_t* meta = t[0].data_ptr<int64_t>();
  const int64_t R = meta[1], kb = meta[2], parts = meta[3], groups = meta[4], blocks = meta[5];
  TORCH_CHECK(R >= 1 && R <= kPatternGroupRows && groups == (out + R - 1) / R,
              "pattern kernel: built for another output width");
  TORCH_CHECK(kb > 0 && blocks == (in + kb - 1) / kb, "pattern kernel: built for another input width");
  TORCH_CHECK(t[1].scalar_type() == at::kLong && t[1].numel() == parts + 1 &&
                  t[1].data_ptr<int64_t>()[parts] == out &&
                  t[2].scalar_type() == at::kLong && t[2].numel() == groups * blocks + 1 &&
                  t[3].scalar_type() == at::kLong && t[3].numel() == groups * blocks &&
                  t[4].scalar_type() == at::kFloat && t[5].scalar_type() == at::kByte &&
                  t[2].data_ptr<int64_t>()[groups * blocks] <= t[5].numel(),
              "pattern kernel: tensors of the wrong type or size");
  // Code is only ever run from the pages it was mapped to: a copy (deepcopy, clone, a
  // pickle's round trip) is ordinary memory and is refused here, not executed.
  TORCH_CHECK(pattern_jit::Executable::holds(t[5].data_ptr(), t[5].numel()),
              "pattern kernel: its code is a copy, not the executable original; build it again");
  PanelLayout L{kb, parts, blocks, t[1].data_ptr<int64_t>(), nullptr, nullptr, nullptr, nullptr,
                t[4].data_ptr<float>()};
  L.group_rows = R;
  L.chunk_code = t[2].data_ptr<int64_t>();
  L.chunk_w = t[3].data_ptr<int64_t>();
  L.code = t[5].data_ptr<uint8_t>();
  L.in = in;
  return L;
}

// Rows [r0, r1) of n full 64-row panels through the compiled chunks of part p (whole groups).
// xT[i] is panel i packed in slices (pack_panel: 4 consecutive (in, 16) matrices); the sums
// go to sums[i], in the same form with `height` rows a slice, starting at row `row0`: the
// caller's own rows, or all of a layer's outputs when they feed the next product directly
// (csr_pattern_chain). Sums start at the bias; `act` is applied to each group's finished
// sums. Each chunk's code runs 4 n times in a row.
void pattern_chunks(const PanelLayout& L, int64_t p, const float* const* xT, int64_t n,
                    const float* bias, float* const* sums, int64_t height, int64_t row0,
                    int64_t act = kNoActivation) {
  const int64_t r0 = L.part_rows[p], r1 = L.part_rows[p + 1], R = L.group_rows;
  const int64_t slice = height * kPatternSlice;  // floats between slices of the sums
  alignas(64) static const float kNoBias[kPatternGroupRows] = {};
  // Block by block, every group of the part in turn: the packed inputs of one block of
  // features (768 x 64 floats a panel) stay in L2 while all groups read them. Group by group
  // the whole panel cycled through the L2 for each group once the input outgrew one block:
  // BERT's 768x3072 product at 1,024 rows and 90%, one thread, 1.04x [1.01-1.06] with the
  // other core busy (results/benchmarks/kernels_ab_block_major_1thread.txt), 1.05-1.11x in
  // two quieter runs (a script, not kept); inputs of one block run as before.
  const int64_t g0 = r0 / R, ge = (r1 + R - 1) / R;
  for (int64_t t = 0; t < L.blocks; ++t) {
    for (int64_t g = g0; g < ge; ++g) {
      const int64_t k = g * L.blocks + t;
      if (L.chunk_code[k + 1] != L.chunk_code[k]) {
        const auto chunk = reinterpret_cast<PatternChunk>(L.code + L.chunk_code[k]);
        const float* w = L.values + L.chunk_w[k];
        const float* b = bias ? bias + g * R : kNoBias;
        for (int64_t i = 0; i < n; ++i) {
          const float* xb = xT[i] + t * L.kblock * kPatternSlice;
          float* s = sums[i] + (g * R - row0) * kPatternSlice;
          for (int64_t q = 0; q < 4; ++q)
            chunk(xb + q * L.in * kPatternSlice, w, s + q * slice, b);
        }
      }
      if (act == kNoActivation || t + 1 < L.blocks) continue;
      // The group's sums are final and, just written by its last chunk, still in L1.
      const int64_t o0 = std::max(r0, g * R), o1 = std::min(r1, (g + 1) * R);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t q = 0; q < 4; ++q)
          apply_activation(sums[i] + q * slice + (o0 - row0) * kPatternSlice,
                           (o1 - o0) * kPatternSlice, act);
    }
  }
}

// Part p of n full 64-row panels (packed as pattern_chunks takes them) through the compiled
// chunks, written into each panel's 64 rows of y (y[i]).
void pattern_panel_part(const PanelLayout& L, int64_t p, const float* const* xT, float* const* y,
                        int64_t n, const float* bias, int64_t out, int64_t act, bool stream) {
  const int64_t r0 = L.part_rows[p], r1 = L.part_rows[p + 1], rows = r1 - r0;
  thread_local std::vector<float> store;
  float* base = aligned_floats(store, n * rows * 4 * kPatternSlice);  // aligned loads need it
  float* sums[4];
  for (int64_t i = 0; i < n; ++i) sums[i] = base + i * rows * 4 * kPatternSlice;
  pattern_chunks(L, p, xT, n, bias, sums, rows, r0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t q = 0; q < 4; ++q)
      write_panel_rows<kPatternSlice>(sums[i] + q * rows * kPatternSlice, r0, r1,
                                      y[i] + q * kPatternSlice * out, out, act, stream);
}

// Panels run together through the compiled chunks: as many as keep their packed inputs
// within about 256 KB of the L2 (1 from 513 features on). With 512 KB (2 panels at 768
// features), BERT-base's 768x768 products left their sums, inputs, code and weights more than
// the L2 holds: the compiled model at batch 8, one thread, ran 1.00-1.03x faster with one
// panel per pass in three runs of 15 interleaved rounds (switch_ab.py with a switch not
// kept, rounds spread 12-34%).
inline int64_t pattern_panels_per_pass(const PanelLayout& L, int64_t in) {
  if (L.code == nullptr) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(4, (int64_t{256} << 10) / (in * 64 * 4)));
}
#else
#define SB_HAVE_PATTERN_JIT 0
PanelLayout check_pattern_kernel(const std::vector<at::Tensor>&, int64_t, int64_t) {
  TORCH_CHECK(false, "pattern kernels need x86-64 with AVX-512 on Linux");
}
inline int64_t pattern_panels_per_pass(const PanelLayout&, int64_t) { return 1; }
#endif

// Part p of one full panel through whichever layout L is.
template <int VL>
void panel_part(const PanelLayout& L, int64_t p, const float* xT, const float* bias, float* y,
                int64_t out, int64_t act, bool stream) {
#if SB_HAVE_PATTERN_JIT
  if (L.code != nullptr) return pattern_panel_part(L, p, &xT, &y, 1, bias, out, act, stream);
#endif
  layout_panel_part<VL, 4>(L, p, xT, bias, y, out, act, stream);
}

#include "layer_norm.h"

// LayerNorm(y + residual) over each output row: the epilogue of a product whose output goes
// only there (a post-norm Transformer's attention output and second feed-forward product,
// fusion.fuse_residual_norm). A product through compiled pattern kernels applies it to each
// panel's 64 rows just written, while they are in L2; every other path applies it to all
// rows after the product. Torch's sum and our layer norm as passes of their own read and
// wrote 3 MB each from memory per call in BERT-base at batch 8, 26 + 25 calls a forward.
struct NormEpilogue {
  const float* residual = nullptr;  // (rows, out) contiguous, or null
  const float* weight = nullptr;    // (out,), or null
  const float* bias = nullptr;      // (out,), or null
  float eps = 0.f;
  bool on = false;
  // Rows [r0, r1) of y (out floats apart), in place.
  void apply(float* y, int64_t r0, int64_t r1, int64_t out) const {
#if SB_HAVE_AVX512
    if (!on) return;
    for (int64_t r = r0; r < r1; ++r)
      residual_layer_norm_row(y + r * out, residual ? residual + r * out : nullptr, out, weight,
                              bias, eps);
#endif
  }
  // All `rows` rows, split between threads as the layer norm kernel splits them.
  void apply_all(float* y, int64_t rows, int64_t out, int64_t threading) const {
    if (!on || rows == 0) return;
    const int64_t threads = at::get_num_threads();
    const int64_t chunks = threads <= 1 || rows * out < (1 << 16)
                               ? 1 : std::min<int64_t>(rows, threads * kChunksPerThread);
    parallel_chunks(chunks, threading, [&](int64_t c) {
      apply(y, rows * c / chunks, rows * (c + 1) / chunks, out);
    });
  }
};

// The epilogue of a call's arguments: on where eps >= 0 (then the rows must be a multiple of
// 16 wide and the machine have AVX-512); residual (rows, out), weight and bias (out,), each
// optional, contiguous float32.
NormEpilogue norm_epilogue(const c10::optional<at::Tensor>& residual,
                           const c10::optional<at::Tensor>& weight,
                           const c10::optional<at::Tensor>& bias, double eps, int64_t rows,
                           int64_t out, const char* who) {
  NormEpilogue e;
  if (eps < 0) {
    TORCH_CHECK(!residual.has_value() || !residual->defined(), who,
                ": a residual is only added before a layer norm (eps >= 0)");
    return e;
  }
  TORCH_CHECK(SB_HAVE_AVX512 && out % 16 == 0, who, ": the layer norm epilogue needs AVX-512 "
              "and outputs a multiple of 16 wide, got ", out);
  auto take = [&](const c10::optional<at::Tensor>& t, int64_t n, const char* what) -> const float* {
    if (!t.has_value() || !t->defined()) return nullptr;
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == n, who,
                ": ", what, " must be contiguous float32 with ", n, " values");
    return t->data_ptr<float>();
  };
  e.residual = take(residual, rows * out, "the residual");
  e.weight = take(weight, out, "the norm's weight");
  e.bias = take(bias, out, "the norm's bias");
  e.eps = static_cast<float>(eps);
  e.on = true;
  return e;
}

// Large batches (a BERT encoder at batch 8 x 128 tokens multiplies 1,024 rows): xT as one
// (in, B) matrix is megabytes, and visiting it once per block of 16 output rows streamed all
// of it from memory again and again; with B a power of two its rows are also 4 KB apart, so
// a tile's reads fall in the same few cache sets. Instead x is packed into panels of `panel`
// batch columns, each a contiguous (in, panel) matrix that stays in the core's L2 while all
// output rows of a thread's share are computed on it; the weights stream once per panel.
// The input features are also taken in blocks of `kblock`, so that the part of a panel one
// block reads is reused from L1 by every row before the next block; each row's partial sums
// wait in the thread's scratch between blocks. Panel width 0 turns panels off, kblock 0 the
// blocks (so a benchmark can time the orders side by side).
//
// Measured at 90%, one thread, side by side (768x768, 3072x768, 768x3072, 1024x4096; batch
// 128-2048): 64 columns in blocks of 256 features was the best or within noise of it at every
// shape; the earlier choice (about 160 KB of panel: 16 columns when in >= 2048, blocks of
// 32 KB) ran 768x3072 and 1024x4096 25-35% slower. Below 128 rows the unpacked order wins
// (batch 64: 1.1-1.2x the panels); from 128 rows the panels win by 3-18% on one thread. On
// two threads, at 128 rows, they won 1.09x on 768x3072 but lost 0.89x on 4096x1024, so with
// more than one thread they start at 256 rows, as before.
std::atomic<int64_t> g_spmm_kblock{-1};  // features per block; -1: the default, 0: no blocks
std::atomic<int64_t> g_spmm_panel{-1};   // batch columns per panel; -1: the default, 0: none
constexpr int64_t kPanelMinBatch = 128;  // one thread; kPanelMinBatchThreaded with more
constexpr int64_t kPanelMinBatchThreaded = 256;
// With a count-class layout (layout_panel_part) panels pay from one whole panel on: against
// the previous thresholds at 64-128 rows, 1.00-1.32x on one thread and 0.99-1.60x on two,
// 1.22-1.60x at 128 rows on two (results/benchmarks/kernels_ab_layout_min_rows.txt: BERT's
// shapes and 4096x1024 at 90 and 95%).
constexpr int64_t kLayoutMinBatch = 64;
constexpr int64_t kDefaultPanel = 64;
constexpr int64_t kDefaultKBlock = 256;

inline int64_t spmm_panel_width() {
  const int64_t set = g_spmm_panel.load(std::memory_order_relaxed);
  return set >= 0 ? set : kDefaultPanel;
}

// A panel of `width` rows of x (in features each) packed for the products: transposed,
// (in, width), or for code compiled for the pattern (slices), as 4 consecutive (in, 16)
// matrices, one per 16 rows, so that the features one call reads are 64 bytes apart.
inline void pack_panel(const float* x, int64_t width, int64_t in, float* dst, bool slices) {
  if (!slices) return transpose_into(x, width, in, in, dst, width);
  for (int64_t q = 0; q < width; q += 16) transpose_into(x + q * in, 16, in, in, dst + q * in, 16);
}

// Returns whether it applied `post` (panel by panel); if not, the caller applies it.
template <typename I>
bool run_panels(const at::Tensor& x, const int32_t* rp, const I* ci, const float* v,
                const float* bias, float* yp, int64_t out, int64_t panel, int64_t threading,
                int64_t act, const PanelLayout* layout, const NormEpilogue& post) {
  const int64_t B = x.size(0), in = x.size(1);
  const int64_t panels = (B + panel - 1) / panel;
  const at::Tensor xc = x.contiguous();
  const float* xs = xc.data_ptr<float>();
  const int64_t threads = at::get_num_threads();
  const bool serial = threads <= 1 || threading == kSerial;
#if SB_HAVE_AVX512
  constexpr int VL = 16;
#else
  constexpr int VL = 8;
#endif
  // Rows the epilogue reads back at once are better left in cache.
  const bool stream = stream_output(B * out) && !post.on;
  if (layout != nullptr && panel == 4 * VL && (serial || panels >= 2 * threads)) {
    // Whole panels per thread, each packed just before its products into a buffer of the
    // thread's that stays in L2, rather than all of x packed first: at 1,024 rows the packed
    // copy (3 MB for 768 features) went out to memory and came back once per panel. With the
    // streamed outputs, at 90% and 1,024 rows (BERT's 768x768, 3072x768, 768x3072):
    // 1.06-1.21x on one thread, 1.04-1.23x on two; at 128 rows 1.01-1.13x and level
    // (results/benchmarks/kernels_ab_panel_major_*.txt). The layout's parts run one after
    // another.
    // Code compiled for the pattern runs a pass of several panels at once where their
    // inputs fit the L2 together (pattern_panels_per_pass), if that leaves 2 passes a thread.
    const int64_t per_pass = pattern_panels_per_pass(*layout, in);
    const int64_t n = serial || panels >= 2 * threads * per_pass ? per_pass : 1;
    const int64_t passes = (panels + n - 1) / n;
    parallel_chunks(serial ? 1 : passes, threading, [&](int64_t c) {
      thread_local std::vector<float> store;
      float* buf = aligned_floats(store, n * panel * in);
      for (int64_t u = serial ? 0 : c, ue = serial ? passes : c + 1; u < ue; ++u) {
        const float* xT[4];
        float* yo[4];
        int64_t full = 0, first = -1;
        for (int64_t p = u * n, pe = std::min(panels, (u + 1) * n); p < pe; ++p) {
          const int64_t b0 = p * panel, width = std::min(panel, B - b0);
          float* xp = buf + (p - u * n) * panel * in;
          pack_panel(xs + b0 * in, width, in, xp, width == panel && layout->code != nullptr);
          if (width < panel) {
            spmm_rows<I>(0, out, rp, ci, v, xp, width, width, bias, yp + b0 * out, out, act);
            post.apply(yp, b0, B, out);
            continue;
          }
          if (full == 0) first = b0;
          xT[full] = xp;
          yo[full++] = yp + b0 * out;
        }
        for (int64_t k = 0; k < layout->parts && full > 0; ++k) {
#if SB_HAVE_PATTERN_JIT
          if (layout->code != nullptr) {
            pattern_panel_part(*layout, k, xT, yo, full, bias, out, act, stream);
            continue;
          }
#endif
          for (int64_t i = 0; i < full; ++i)
            layout_panel_part<VL, 4>(*layout, k, xT[i], bias, yo[i], out, act, stream);
        }
        if (full > 0) post.apply(yp, first, first + full * panel, out);  // the pass's rows
      }
#if SB_HAVE_AVX512
      if (stream) _mm_sfence();  // streamed lines visible before another thread reads y
#endif
    });
    return true;
  }
  // Panel p holds batch rows [p * panel, + width) transposed, (in, width), width = panel
  // except in the last one. torch's transposing copy ran at 2.5 GB/s here (1.2 ms for a
  // 1024x768 input, 88 ms of a 560 ms BERT step).
  at::Tensor packed = at::empty({B * in}, x.options());
  float* pp = packed.data_ptr<float>();
  parallel_chunks(serial ? 1 : panels, threading, [&](int64_t c) {
    for (int64_t p = serial ? 0 : c, pe = serial ? panels : c + 1; p < pe; ++p) {
      const int64_t b0 = p * panel, width = std::min(panel, B - b0);
      pack_panel(xs + b0 * in, width, in, pp + b0 * in,
                 width == panel && panel == 4 * VL && layout != nullptr && layout->code != nullptr);
    }
  });
  // Each panel's rows are split in `per` parts, claimed panel by panel, so the threads work
  // on the same panel at once (it comes from memory once) and each part of W is read once per
  // panel. Two parts per thread let a thread that finished early take another's. A layout
  // brings its own parts.
  if (layout != nullptr && panel != 4 * VL) layout = nullptr;  // built for 64-column panels
  const int64_t per = layout != nullptr ? layout->parts : serial ? 1 : 2 * threads;
  const auto splits = layout != nullptr
                          ? std::vector<int64_t>(layout->part_rows, layout->part_rows + per + 1)
                          : balanced_splits(rp, out, per);
  int64_t kb = g_spmm_kblock.load(std::memory_order_relaxed);
  if (kb < 0) kb = kDefaultKBlock;
  const bool blocked =
      layout == nullptr && kb > 0 && (panel == VL || panel == 2 * VL || panel == 4 * VL);
  const int64_t nkb = blocked ? (in + kb - 1) / kb : 0;
  std::vector<int64_t> kp(blocked ? out * (nkb + 1) : 0);
  if (blocked) {
    for (int64_t o = 0; o < out; ++o) {
      int64_t* k = kp.data() + o * (nkb + 1);
      int64_t j = rp[o];
      const int64_t e = rp[o + 1];
      for (int64_t t = 0; t < nkb; ++t) {
        k[t] = j;
        while (j < e && static_cast<int64_t>(ci[j]) < (t + 1) * kb) ++j;
      }
      k[nkb] = e;
    }
  }
  parallel_chunks(panels * per, threading, [&](int64_t c) {
    const int64_t p = c / per, k = c % per;
    const int64_t width = std::min(panel, B - p * panel);
    const float* xT = pp + p * panel * in;
    float* yo = yp + p * panel * out;
    if (layout != nullptr && width == panel) {
      panel_part<VL>(*layout, k, xT, bias, yo, out, act, stream);
#if SB_HAVE_AVX512
      if (stream) _mm_sfence();
#endif
      return;
    }
    if (blocked && width == panel) {
      const int64_t* kpp = kp.data();
      if (panel == 4 * VL)
        spmm_panel_blocked<I, VL, 4>(splits[k], splits[k + 1], kpp, nkb, ci, v, xT, bias, yo, out, act);
      else if (panel == 2 * VL)
        spmm_panel_blocked<I, VL, 2>(splits[k], splits[k + 1], kpp, nkb, ci, v, xT, bias, yo, out, act);
      else
        spmm_panel_blocked<I, VL, 1>(splits[k], splits[k + 1], kpp, nkb, ci, v, xT, bias, yo, out, act);
      return;
    }
    spmm_rows<I>(splits[k], splits[k + 1], rp, ci, v, xT, width, width, bias, yo, out, act);
  });
  return false;
}

template <typename I>
void run(const at::Tensor& x, const at::Tensor& rp_t, const at::Tensor& ci_t,
         const at::Tensor& v_t, const float* bias, at::Tensor& y, int64_t variant,
         int64_t threading, int64_t act, const PanelLayout* layout, const NormEpilogue& post) {
  const int64_t B = x.size(0);
  const int64_t out = y.size(1);
  const int32_t* rp = rp_t.data_ptr<int32_t>();
  const I* ci = ci_t.data_ptr<I>();
  const float* v = v_t.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Small products run on the calling thread alone: waking a helper costs microseconds.
  const int64_t threads = at::get_num_threads();
  const int64_t work = static_cast<int64_t>(rp[out]) * B + out;
  const int64_t per_thread = threading == kOpenMP ? 4 : kChunksPerThread;
  const int64_t chunks =
      work < kSerialWork || threads <= 1 || threading == kSerial
          ? 1
          : std::max<int64_t>(1, std::min<int64_t>(out, threads * per_thread));
  const auto splits = balanced_splits(rp, out, chunks);
  if (B == 1) {
    const at::Tensor xc = x.contiguous();
    const float* xp = xc.data_ptr<float>();
    parallel_chunks(chunks, threading, [&](int64_t c) {
      spmv_dispatch<I>(variant, splits[c], splits[c + 1], rp, ci, v, xp, bias, yp);
      apply_activation(yp + splits[c], splits[c + 1] - splits[c], act);
    });
    post.apply(yp, 0, 1, out);
    return;
  }
  const int64_t in = x.size(1);
  const int64_t panel = spmm_panel_width();
  const int64_t min_batch = layout != nullptr ? kLayoutMinBatch
                            : threads > 1     ? kPanelMinBatchThreaded
                                              : kPanelMinBatch;
  if (panel > 0 && B >= min_batch) {
    if (!run_panels<I>(x, rp, ci, v, bias, yp, out, panel, threading, act, layout, post))
      post.apply_all(yp, B, out, threading);
    return;
  }
  // x.t() is already contiguous when x came out of a previous transposed producer.
  at::Tensor xT;
  if (x.t().is_contiguous()) {
    xT = x.t();
  } else {
    const at::Tensor xc = x.contiguous();
    xT = at::empty({in, B}, x.options());
    transpose_into(xc.data_ptr<float>(), B, in, in, xT.data_ptr<float>(), B);
  }
  const float* xtp = xT.data_ptr<float>();
  parallel_chunks(chunks, threading, [&](int64_t c) {
    spmm_rows<I>(splits[c], splits[c + 1], rp, ci, v, xtp, B, B, bias, yp, out, act);
  });
  post.apply_all(yp, B, out, threading);
}


// ---------------------------------------------------------------------------------------
// Block-sparse (BSR) kernels, also used with 1x1 blocks for the sparse convolution.
//
// W (out, in) is stored as block rows of BH x BW blocks: brp (int32, block rows + 1), bci
// (block column, int16/int32) and values (nblocks, BH, BW) row-major inside a block. The cost
// is proportional to the number of nonzero blocks: no index is read per weight, and one
// load of an x vector serves RG rows of the block.
//
// Two layouts of the dense operand:
//  * xT (in_p, B): batch along the contiguous axis. Linear layers transpose x into it (with
//    in padded to a multiple of BW by zeros); a convolution's im2col (K, L) already is it.
//  * the output goes to y (B, out) (transposed, for Linear) or Y (out, L) (rows, for conv).

constexpr int64_t kMaxTB = 64;

// Adds block j's rows [rg0, + RG) times x into acc (RG x NV registers).
template <int BH, int BW, int RG, int VL, int NV, typename I>
inline void bsr_block_fma(int64_t j, int rg0, int64_t b0, const I* bci, const float* v,
                          const float* xT, const int64_t* coff,
                          typename Vec<VL>::t (&acc)[RG][NV]) {
  typedef typename Vec<VL>::t vt;
  typedef typename Vec<VL>::u vtu;
  const float* blk = v + j * (BH * BW) + rg0 * BW;
  const int64_t* co = coff + static_cast<int64_t>(bci[j]) * BW;
  for (int c = 0; c < BW; ++c) {
    if (co[c] < 0) continue;  // a padded matrix column (its weights are zero)
    const float* xr = xT + co[c] + b0;
    vt xv[NV];
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) xv[k] = *reinterpret_cast<const vtu*>(xr + VL * k);
    // Unrolled so that the RG x NV accumulators live in registers, not on the stack.
#pragma GCC unroll 16
    for (int r = 0; r < RG; ++r) {
      const float w = blk[r * BW + c];
#pragma GCC unroll 8
      for (int k = 0; k < NV; ++k) acc[r][k] += w * xv[k];
    }
  }
}

// Rows [R*BH + rg0, + RG) of block row R, batch columns [b0, b0 + VL*NV).
template <int BH, int BW, int RG, int VL, int NV, typename I>
inline void bsr_tile(int64_t R, int rg0, int64_t b0, const int32_t* brp, const I* bci,
                     const float* v, const float* xT, const int64_t* coff,
                     typename Vec<VL>::t (&acc)[RG][NV]) {
  typedef typename Vec<VL>::t vt;
  // With fewer than 8 accumulator registers (4-row blocks at batch 16) one chain of
  // dependent FMAs per register would wait on the FMA latency: U blocks in flight, each into
  // its own set, summed at the end (a float-rounding difference only). Not for 1x1 blocks
  // (the unstructured convolution): one column per block, and measured 0.9x with it.
  constexpr int U = RG * NV >= 8 || BH * BW == 1 ? 1 : 8 / (RG * NV);
  vt part[U][RG][NV];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 16
    for (int r = 0; r < RG; ++r)
#pragma GCC unroll 8
      for (int k = 0; k < NV; ++k) part[u][r][k] = vt{};
  int64_t j = brp[R];
  const int64_t e = brp[R + 1];
  for (; j + U <= e; j += U)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u)
      bsr_block_fma<BH, BW, RG, VL, NV, I>(j + u, rg0, b0, bci, v, xT, coff, part[u]);
  for (; j < e; ++j) bsr_block_fma<BH, BW, RG, VL, NV, I>(j, rg0, b0, bci, v, xT, coff, part[0]);
#pragma GCC unroll 16
  for (int r = 0; r < RG; ++r)
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) {
      vt sum = part[0][r][k];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) sum += part[u][r][k];
      acc[r][k] = sum;
    }
}

// The same for the last nb < 8 batch columns, in scalar code.
template <int BH, int BW, int RG, typename I>
inline void bsr_tile_tail(int64_t R, int rg0, int64_t b0, int64_t nb, const int32_t* brp,
                          const I* bci, const float* v, const float* xT,
                          const int64_t* coff, float (&acc)[RG][8]) {
  for (int r = 0; r < RG; ++r)
    for (int t = 0; t < 8; ++t) acc[r][t] = 0.f;
  for (int64_t j = brp[R], e = brp[R + 1]; j < e; ++j) {
    const float* blk = v + j * (BH * BW) + rg0 * BW;
    const int64_t* co = coff + static_cast<int64_t>(bci[j]) * BW;
    for (int c = 0; c < BW; ++c) {
      if (co[c] < 0) continue;
      const float* xr = xT + co[c] + b0;
      for (int r = 0; r < RG; ++r) {
        const float w = blk[r * BW + c];
        for (int64_t t = 0; t < nb; ++t) acc[r][t] += w * xr[t];
      }
    }
  }
}

struct BsrOut {
  float* y;
  int64_t out;
  bool rows;  // true: Y (out, B) as for conv; false: y (B, out) as for Linear
  const float* bias;
  void put(int64_t o, int64_t b, float val) const {
    const float add = bias ? bias[o] : 0.f;
    if (rows) y[o * ld + b] = val + add; else y[b * out + o] = val + add;
  }
  int64_t ld;  // B of the rows layout
};

// One register tile: rows [R*BH + rg0, + RG) by batch columns [b0, b0 + VL*NV), written out.
template <int BH, int BW, int RG, int VL, int NV, typename I>
inline void bsr_full_tile(int64_t R, int rg0, int64_t b0, const int32_t* brp, const I* bci,
                          const float* v, const float* xT, const int64_t* coff,
                          const BsrOut& o) {
  typedef typename Vec<VL>::t vt;
  typedef typename Vec<VL>::u vtu;
  constexpr int TB = VL * NV;
  const int64_t row0 = R * BH + rg0;
  const int nr = static_cast<int>(std::min<int64_t>(RG, o.out - row0));
  if (nr <= 0) return;
  vt acc[RG][NV];
  bsr_tile<BH, BW, RG, VL, NV, I>(R, rg0, b0, brp, bci, v, xT, coff, acc);
  if (o.rows) {
    for (int r = 0; r < nr; ++r) {
      const vt add = vt{} + (o.bias ? o.bias[row0 + r] : 0.f);
#pragma GCC unroll 8
      for (int k = 0; k < NV; ++k)
        *reinterpret_cast<vtu*>(o.y + (row0 + r) * o.ld + b0 + VL * k) = acc[r][k] + add;
    }
  } else {
    alignas(64) float buf[RG][TB];
#pragma GCC unroll 16
    for (int r = 0; r < RG; ++r)
#pragma GCC unroll 8
      for (int k = 0; k < NV; ++k) *reinterpret_cast<vt*>(&buf[r][VL * k]) = acc[r][k];
    // y is (B, out): the tile's rows are contiguous within each batch row of y. Bias and
    // layout are settled once here rather than per element (as put() would), which cost up
    // to a third of a narrow (batch 16) tile's time.
    float add[RG];
    for (int r = 0; r < RG; ++r) add[r] = o.bias && r < nr ? o.bias[row0 + r] : 0.f;
    for (int t = 0; t < TB; ++t) {
      float* yr = o.y + (b0 + t) * o.out + row0;
      for (int r = 0; r < nr; ++r) yr[r] = buf[r][t] + add[r];
    }
  }
}

// Batch columns [b0, b0 + VL*NV) of the block rows [Rg, Re).
template <int BH, int BW, int RG, int VL, int NV, typename I>
inline void bsr_tile_rows(int64_t Rg, int64_t Re, int64_t b0, const int32_t* brp, const I* bci,
                          const float* v, const float* xT, const int64_t* coff,
                          const BsrOut& o) {
  for (int64_t R = Rg; R < Re; ++R)
    for (int rg0 = 0; rg0 < BH; rg0 += RG)
      bsr_full_tile<BH, BW, RG, VL, NV, I>(R, rg0, b0, brp, bci, v, xT, coff, o);
}

template <int BH, int BW, int RG, int VL, int NV, typename I>
void bsr_rows_spmm(int64_t R0, int64_t R1, const int32_t* brp, const I* bci, const float* v,
                   const float* xT, const int64_t* coff, int64_t B, const BsrOut& o) {
  constexpr int TB = VL * NV;
  // Rows are visited in groups of about 16 output rows, and within a group the batch tile is
  // the outer loop: the x columns a tile reads are then shared by the group's rows while they
  // are in L1, instead of being streamed from L2 once per row (3x slower for 1x1 blocks).
  constexpr int64_t G = BH >= 16 ? 1 : 16 / BH;
  for (int64_t Rg = R0; Rg < R1; Rg += G) {
    const int64_t Re = std::min(Rg + G, R1);
    int64_t b0 = 0;
    for (; b0 + TB <= B; b0 += TB)
      bsr_tile_rows<BH, BW, RG, VL, NV, I>(Rg, Re, b0, brp, bci, v, xT, coff, o);
    // What is left of the batch in narrower 8-float tiles, then scalar code.
    if constexpr (TB > 16) {
      if (b0 + 16 <= B) {
        bsr_tile_rows<BH, BW, RG, 8, 2, I>(Rg, Re, b0, brp, bci, v, xT, coff, o);
        b0 += 16;
      }
    }
    if constexpr (TB > 8) {
      if (b0 + 8 <= B) {
        bsr_tile_rows<BH, BW, RG, 8, 1, I>(Rg, Re, b0, brp, bci, v, xT, coff, o);
        b0 += 8;
      }
    }
    for (; b0 < B; b0 += 8) {
      for (int64_t R = Rg; R < Re; ++R) {
        for (int rg0 = 0; rg0 < BH; rg0 += RG) {
          const int64_t row0 = R * BH + rg0;
          const int nr = static_cast<int>(std::min<int64_t>(RG, o.out - row0));
          if (nr <= 0) continue;
          const int64_t nb = std::min<int64_t>(8, B - b0);
          float acc[RG][8];
          bsr_tile_tail<BH, BW, RG, I>(R, rg0, b0, nb, brp, bci, v, xT, coff, acc);
          for (int64_t t = 0; t < nb; ++t)
            for (int r = 0; r < nr; ++r) o.put(row0 + r, b0 + t, acc[r][t]);
        }
      }
    }
  }
}

// Batch 1: per block row, partial sums of RG rows stay in registers across the row's blocks,
// reduced once at the end. For BW >= 4 each row's sum is a vector of VW = min(BW, 16) lanes
// (one 512-bit register for 16) fed by whole-row loads of the block; for BW < 4 (16x1) the
// vector runs down the block's rows instead.
template <int BH, int BW, typename I>
void bsr_rows_spmv(int64_t R0, int64_t R1, const int32_t* rp, const I* bci, const float* v,
                   const float* x, const float* bias, float* y, int64_t out) {
  if constexpr (BW >= 4) {
    constexpr int VW = BW >= 16 ? 16 : BW;
    constexpr int RG = BH < 8 ? BH : 8;
    typedef float vw __attribute__((vector_size(sizeof(float) * VW)));
    typedef float vwu __attribute__((vector_size(sizeof(float) * VW), aligned(4)));
    for (int64_t R = R0; R < R1; ++R) {
      for (int rg0 = 0; rg0 < BH; rg0 += RG) {
        const int64_t row0 = R * BH + rg0;
        if (row0 >= out) break;
        vw acc[RG];
#pragma GCC unroll 16
        for (int r = 0; r < RG; ++r) acc[r] = vw{};
        for (int64_t j = rp[R], e = rp[R + 1]; j < e; ++j) {
          const float* blk = v + j * (BH * BW) + rg0 * BW;
          const float* xb = x + static_cast<int64_t>(bci[j]) * BW;
#pragma GCC unroll 2
          for (int c0 = 0; c0 < BW; c0 += VW) {
            const vw xv = *reinterpret_cast<const vwu*>(xb + c0);
#pragma GCC unroll 16
            for (int r = 0; r < RG; ++r)
              acc[r] += *reinterpret_cast<const vwu*>(blk + r * BW + c0) * xv;
          }
        }
        for (int r = 0; r < RG && row0 + r < out; ++r) {
          float sum = 0.f;
          for (int c = 0; c < VW; ++c) sum += acc[r][c];
          y[row0 + r] = sum + (bias ? bias[row0 + r] : 0.f);
        }
      }
    }
  } else {
    for (int64_t R = R0; R < R1; ++R) {
      const int64_t row0 = R * BH;
      float acc[BH] = {};
      for (int64_t j = rp[R], e = rp[R + 1]; j < e; ++j) {
        const float* blk = v + j * (BH * BW);
        const float* xb = x + static_cast<int64_t>(bci[j]) * BW;
        for (int c = 0; c < BW; ++c)
#pragma GCC unroll 32
          for (int r = 0; r < BH; ++r) acc[r] += blk[r * BW + c] * xb[c];
      }
      for (int r = 0; r < BH && row0 + r < out; ++r)
        y[row0 + r] = acc[r] + (bias ? bias[row0 + r] : 0.f);
    }
  }
}

// Whether 16x1 blocks at 2-16 batch rows take bsr16x1_few_rows (set_bsr_few_rows; a switch for
// timing both side by side, benchmarks/switch_ab.py --switch few-rows).
std::atomic<bool> g_few_rows{true};

#if SB_HAVE_AVX512
// 16x1 blocks (16 rows of one column) times a few batch rows, into y (B, out). The register
// tile above puts the batch in a vector: at 8 rows that is a 256-bit multiply-add per weight,
// each weight a broadcast. Here a block's 16 rows are the vector: one load per block and NB
// full-width multiply-adds with the batch rows' inputs broadcast, and each batch row's sums
// are 16 consecutive outputs of y as stored. GPT-2's dense tied output projection (50257 x
// 768, which compile_sparse runs in 16x1 blocks at batch 8): see the README, session 24.
// xT is a Linear's (in, NB): column k's inputs start at k * NB (bsr_linear's coff, computed
// here rather than loaded per block).
template <int NB, typename I>
void bsr16x1_few_rows(int64_t R0, int64_t R1, const int32_t* brp, const I* bci, const float* v,
                      const float* xT, const float* bias, float* y, int64_t out) {
  constexpr int U = NB >= 4 ? 1 : 2;  // with few rows, two blocks in flight (FMA latency)
  for (int64_t R = R0; R < R1; ++R) {
    __m512 acc[U][NB];
    for (int u = 0; u < U; ++u)
      for (int b = 0; b < NB; ++b) acc[u][b] = _mm512_setzero_ps();
    int64_t j = brp[R];
    const int64_t e = brp[R + 1];
    auto block = [&](int64_t jj, __m512 (&a)[NB]) {
      const __m512 w = _mm512_loadu_ps(v + jj * 16);
      const float* xr = xT + static_cast<int64_t>(bci[jj]) * NB;
      for (int b = 0; b < NB; ++b) a[b] = _mm512_fmadd_ps(w, _mm512_set1_ps(xr[b]), a[b]);
    };
    for (; j + U <= e; j += U)
      for (int u = 0; u < U; ++u) block(j + u, acc[u]);
    for (; j < e; ++j) block(j, acc[0]);
    const int64_t row0 = R * 16;
    const int64_t nr = std::min<int64_t>(16, out - row0);
    const __mmask16 m = static_cast<__mmask16>(nr >= 16 ? 0xFFFF : (1u << nr) - 1);
    const __m512 add = bias ? _mm512_maskz_loadu_ps(m, bias + row0) : _mm512_setzero_ps();
    for (int b = 0; b < NB; ++b) {
      __m512 sum = acc[0][b];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][b]);
      _mm512_mask_storeu_ps(y + b * out + row0, m, _mm512_add_ps(sum, add));
    }
  }
}

// bsr16x1_few_rows for a run-time batch of 2 to 16 rows; false for any other.
template <typename I>
bool bsr16x1_few_rows_any(int64_t B, int64_t R0, int64_t R1, const int32_t* brp, const I* bci,
                          const float* v, const float* xT, const float* bias, float* y,
                          int64_t out) {
  switch (B) {
#define SB_FEW_ROWS(N) \
  case N: bsr16x1_few_rows<N, I>(R0, R1, brp, bci, v, xT, bias, y, out); return true;
    SB_FEW_ROWS(2) SB_FEW_ROWS(3) SB_FEW_ROWS(4) SB_FEW_ROWS(5) SB_FEW_ROWS(6) SB_FEW_ROWS(7)
    SB_FEW_ROWS(8) SB_FEW_ROWS(9) SB_FEW_ROWS(10) SB_FEW_ROWS(11) SB_FEW_ROWS(12)
    SB_FEW_ROWS(13) SB_FEW_ROWS(14) SB_FEW_ROWS(15) SB_FEW_ROWS(16)
#undef SB_FEW_ROWS
    default: return false;
  }
}
#endif

template <int BH, int BW, typename I>
void bsr_run(const float* xT, const int64_t* coff, int64_t B, int64_t images, int64_t x_stride,
             const int32_t* brp,
             const I* bci, const float* v, int64_t block_rows, const float* bias, float* y,
             int64_t out, bool rows_layout, int64_t y_stride, int64_t threading) {
  // Register tile: RG rows by VL*NV batch columns, 16 accumulator registers. With AVX-512
  // and RG = 8 the tile is 8 rows by 32 columns in 512-bit registers: each broadcast weight
  // and each x load feeds twice the multiply-adds of the 8-float tile (measured: 4096x1024 at
  // 90% with 16x16 blocks, batch 128, 2 threads, benchmarks/block_sparse.py).
  constexpr int RG = BH < 8 ? BH : 8;
#if SB_HAVE_AVX512
  constexpr int VL = RG == 8 ? 16 : 8;
#else
  constexpr int VL = 8;
#endif
  constexpr int NV = VL == 16 ? 2 : ((16 / RG) > 8 ? 8 : (16 / RG));
  const int64_t threads = at::get_num_threads();
  const int64_t work = (static_cast<int64_t>(brp[block_rows]) * BH * BW + out) * B * images;
  const int64_t per_image =
      work < kSerialWork || threads <= 1 || threading == kSerial
          ? 1
          : std::max<int64_t>(1, std::min<int64_t>(block_rows,
                                                   threads * kChunksPerThread / images + 1));
  const auto splits = balanced_splits(brp, block_rows, per_image);
  parallel_chunks(per_image * images, threading, [&](int64_t c) {
    const int64_t n = c / per_image, k = c % per_image;
    const float* xn = xT + n * x_stride;
    float* yn = y + n * y_stride;
    if (B == 1 && !rows_layout) {
      bsr_rows_spmv<BH, BW, I>(splits[k], splits[k + 1], brp, bci, v, xn, bias, yn, out);
      return;
    }
#if SB_HAVE_AVX512
    if constexpr (BH == 16 && BW == 1) {
      // Only a Linear's (in, B) input (images == 1, column k at k * B), which the kernel
      // indexes itself.
      if (!rows_layout && images == 1 && g_few_rows.load(std::memory_order_relaxed) &&
          bsr16x1_few_rows_any<I>(B, splits[k], splits[k + 1], brp, bci, v, xn, bias, yn, out))
        return;
    }
#endif
    const BsrOut o{yn, out, rows_layout, bias, B};
    bsr_rows_spmm<BH, BW, RG, VL, NV, I>(splits[k], splits[k + 1], brp, bci, v, xn, coff, B, o);
  });
}

template <typename I>
void bsr_dispatch(int64_t bh, int64_t bw, const float* xT, const int64_t* coff, int64_t B,
                  int64_t images,
                  int64_t x_stride, const int32_t* brp, const I* bci, const float* v,
                  int64_t block_rows, const float* bias, float* y, int64_t out, bool rows_layout,
                  int64_t y_stride, int64_t threading) {
#define SB_BSR_CASE(H, W)                                                                \
  if (bh == H && bw == W)                                                                \
    return bsr_run<H, W, I>(xT, coff, B, images, x_stride, brp, bci, v, block_rows, bias, y, \
                            out, rows_layout, y_stride, threading);
  SB_BSR_CASE(1, 1)
  SB_BSR_CASE(4, 4)
  SB_BSR_CASE(8, 8)
  SB_BSR_CASE(16, 16)
  SB_BSR_CASE(32, 32)
  SB_BSR_CASE(16, 1)
#undef SB_BSR_CASE
  TORCH_CHECK(false, "bsr: unsupported block size ", bh, "x", bw,
              " (supported: 1x1, 4x4, 8x8, 16x16, 32x32, 16x1)");
}

struct BsrArgs {
  int64_t bh, bw, block_rows;
  const float* bias;
  at::Tensor bias_keep;
};

BsrArgs check_bsr(const at::Tensor& brp, const at::Tensor& bci, const at::Tensor& values,
                  const c10::optional<at::Tensor>& bias, int64_t out) {
  TORCH_CHECK(brp.scalar_type() == at::kInt && brp.is_contiguous() && brp.dim() == 1,
              "bsr: block row pointers must be contiguous int32");
  TORCH_CHECK(bci.is_contiguous() && (bci.scalar_type() == at::kShort ||
                                      bci.scalar_type() == at::kInt),
              "bsr: block column indices must be contiguous int16 or int32");
  TORCH_CHECK(values.dim() == 3 && values.scalar_type() == at::kFloat && values.is_contiguous(),
              "bsr: values must be contiguous float32 (nblocks, bh, bw)");
  BsrArgs a{values.size(1), values.size(2), brp.size(0) - 1, nullptr, {}};
  TORCH_CHECK(a.block_rows * a.bh >= out && (a.block_rows - 1) * a.bh < out + (out == 0),
              "bsr: ", a.block_rows, " block rows of ", a.bh, " do not cover ", out, " outputs");
  if (bias.has_value() && bias->defined()) {
    a.bias_keep = bias->contiguous();
    TORCH_CHECK(a.bias_keep.scalar_type() == at::kFloat && a.bias_keep.numel() == out,
                "bsr: bias must be float32 (out,)");
    a.bias = a.bias_keep.data_ptr<float>();
  }
  return a;
}

void bsr_call(const BsrArgs& a, const float* xT, const int64_t* coff, int64_t B, int64_t images,
              int64_t x_stride,
              const at::Tensor& brp, const at::Tensor& bci, const at::Tensor& values, float* y,
              int64_t out, bool rows_layout, int64_t y_stride, int64_t threading) {
  if (threading < 0) threading = kAdaptive;
  if (bci.scalar_type() == at::kShort)
    bsr_dispatch<int16_t>(a.bh, a.bw, xT, coff, B, images, x_stride, brp.data_ptr<int32_t>(),
                          bci.data_ptr<int16_t>(), values.data_ptr<float>(), a.block_rows,
                          a.bias, y, out, rows_layout, y_stride, threading);
  else
    bsr_dispatch<int32_t>(a.bh, a.bw, xT, coff, B, images, x_stride, brp.data_ptr<int32_t>(),
                          bci.data_ptr<int32_t>(), values.data_ptr<float>(), a.block_rows,
                          a.bias, y, out, rows_layout, y_stride, threading);
}

}  // namespace

// x: (batch, in) float32; crow: (out + 1,) int32; col: (nnz,) int16/int32; values: (nnz,)
// float32; bias: (out,) float32 or None; variant: batch-1 kernel (SpmvVariant, -1 = best
// available); threading: Threading (-1 = adaptive). Returns y: (batch, out) float32, contiguous.
at::Tensor csr_linear(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                      const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                      int64_t in_features, int64_t variant, int64_t threading,
                      int64_t activation, const std::vector<at::Tensor>& layout,
                      const c10::optional<at::Tensor>& residual,
                      const c10::optional<at::Tensor>& norm_weight,
                      const c10::optional<at::Tensor>& norm_bias, double eps) {
  TORCH_CHECK(x.dim() == 2, "csr_linear: x must be 2-D (batch, in), got ", x.sizes());
  TORCH_CHECK(activation >= kNoActivation && activation <= kGeluTanh,
              "csr_linear: activation must be 0 (none), 1 (relu), 2 (gelu) or 3 (gelu tanh)");
  TORCH_CHECK(x.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat,
              "csr_linear: float32 only");
  TORCH_CHECK(x.size(1) == in_features, "csr_linear: x has ", x.size(1),
              " features, layer expects ", in_features);
  TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous(), "crow must be int32");
  TORCH_CHECK(col.is_contiguous() && values.is_contiguous(), "col/values must be contiguous");
  const int64_t out = crow.size(0) - 1;
  const float* bp = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    bc = bias->contiguous();
    TORCH_CHECK(bc.scalar_type() == at::kFloat && bc.numel() == out, "bias must be float32 (out,)");
    bp = bc.data_ptr<float>();
  }
  const NormEpilogue post =
      norm_epilogue(residual, norm_weight, norm_bias, eps, x.size(0), out, "csr_linear");
  at::Tensor y = at::empty({x.size(0), out}, x.options());
  if (x.size(0) == 0 || out == 0) return y;
  if (variant < 0) variant = default_spmv_variant();
  if (threading < 0) threading = kAdaptive;
  PanelLayout checked{};
  const PanelLayout* lp = nullptr;
  if (!layout.empty()) {
    checked = check_panel_layout(layout, out, in_features);
    const at::Tensor& held = layout[checked.code != nullptr ? 4 : 6];
    TORCH_CHECK(held.numel() == values.numel(), "csr_linear: the panel layout holds ",
                held.numel(), " nonzeros, the weight ", values.numel());
    lp = &checked;
  }
  if (col.scalar_type() == at::kShort) {
    run<int16_t>(x, crow, col, values, bp, y, variant, threading, activation, lp, post);
  } else {
    TORCH_CHECK(col.scalar_type() == at::kInt, "col indices must be int16 or int32");
    run<int32_t>(x, crow, col, values, bp, y, variant, threading, activation, lp, post);
  }
  return y;
}

// Two products in a row, y = act2(W2 act1(W1 x + b1) + b2), for the first `rows` rows of x
// (a multiple of 64), both weights through code compiled for their patterns; written into
// the first `rows` rows of y. A BERT or GPT-2 feed-forward block: the 3,072-wide activations
// between its products are 12 MB at 1,024 rows, written out by the first product (transposed
// back from its sums) and read and packed again by the second. Here each panel's sums of the
// first product, in L2, are the packed input of the second: nothing between them goes to
// memory and neither transpose happens.
void csr_pattern_chain(const at::Tensor& x, const std::vector<at::Tensor>& first,
                       const c10::optional<at::Tensor>& bias1, int64_t act1,
                       const std::vector<at::Tensor>& second,
                       const c10::optional<at::Tensor>& bias2, int64_t act2, at::Tensor& y,
                       int64_t rows, int64_t threading,
                       const c10::optional<at::Tensor>& residual,
                       const c10::optional<at::Tensor>& norm_weight,
                       const c10::optional<at::Tensor>& norm_bias, double eps) {
#if SB_HAVE_PATTERN_JIT
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "csr_pattern_chain: x must be a contiguous float32 matrix");
  TORCH_CHECK(y.dim() == 2 && y.scalar_type() == at::kFloat && y.is_contiguous() &&
                  y.size(0) == x.size(0),
              "csr_pattern_chain: y must be a contiguous float32 matrix with x's rows");
  TORCH_CHECK(rows % 64 == 0 && rows >= 0 && rows <= x.size(0),
              "csr_pattern_chain: rows must be a multiple of 64 within x, got ", rows);
  for (int64_t a : {act1, act2})
    TORCH_CHECK(a >= kNoActivation && a <= kGeluTanh, "csr_pattern_chain: unknown activation");
  TORCH_CHECK(!first.empty() && !second.empty() && first[0].numel() == 6 &&
                  second[0].numel() == 6,
              "csr_pattern_chain: both layouts must be compiled pattern kernels");
  const int64_t in = x.size(1);
  const int64_t mid = first[1].data_ptr<int64_t>()[first[1].numel() - 1];  // W1's outputs
  const int64_t out = y.size(1);
  const PanelLayout L1 = check_pattern_kernel(first, mid, in);
  const PanelLayout L2 = check_pattern_kernel(second, out, mid);
  auto bias_of = [](const c10::optional<at::Tensor>& b, int64_t n) -> const float* {
    if (!b.has_value() || !b->defined()) return nullptr;
    TORCH_CHECK(b->scalar_type() == at::kFloat && b->is_contiguous() && b->numel() == n,
                "csr_pattern_chain: a bias must be contiguous float32 of its layer's outputs");
    return b->data_ptr<float>();
  };
  const float* b1 = bias_of(bias1, mid);
  const float* b2 = bias_of(bias2, out);
  const float* xs = x.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  // The residual covers y's rows; the epilogue reaches the first `rows` of them.
  const NormEpilogue post = norm_epilogue(residual, norm_weight, norm_bias, eps, y.size(0), out,
                                          "csr_pattern_chain");
  const int64_t panels = rows / 64;
  if (panels == 0) return;
  if (threading < 0) threading = kAdaptive;  // the default, as for csr_linear
  const bool serial = at::get_num_threads() <= 1 || threading == kSerial;
  const bool stream = stream_output(rows * out) && !post.on;
  parallel_chunks(serial ? 1 : panels, threading, [&](int64_t c) {
    thread_local std::vector<float> packed_store, mid_store;
    float* xp = aligned_floats(packed_store, 64 * in);
    float* h = aligned_floats(mid_store, 64 * mid);
    for (int64_t p = serial ? 0 : c, pe = serial ? panels : c + 1; p < pe; ++p) {
      pack_panel(xs + p * 64 * in, 64, in, xp, true);
      const float* xT = xp;
      // The activation group by group as the sums are finished, in L1: against one pass over
      // the panel's 786 KB of sums afterwards, 1.01x for BERT's FFN at 1,024 rows (a script,
      // not kept).
      for (int64_t k = 0; k < L1.parts; ++k) pattern_chunks(L1, k, &xT, 1, b1, &h, mid, 0, act1);
      const float* hT = h;
      float* yo = ys + p * 64 * out;
      for (int64_t k = 0; k < L2.parts; ++k)
        pattern_panel_part(L2, k, &hT, &yo, 1, b2, out, act2, stream);
      post.apply(ys, p * 64, (p + 1) * 64, out);
    }
    if (stream) _mm_sfence();
  });
#else
  TORCH_CHECK(false, "csr_pattern_chain: needs x86-64 with AVX-512 on Linux");
#endif
}

// The count-class layout of a CSR weight for large batches (see layout_panel_part), rows in
// `parts` parts balanced by nonzeros; kblock <= 0 chooses the block from the density.
std::vector<at::Tensor> csr_panel_layout(const at::Tensor& crow, const at::Tensor& col,
                                         const at::Tensor& values, int64_t in_features,
                                         int64_t kblock, int64_t parts) {
  TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous(), "crow must be int32");
  TORCH_CHECK(col.is_contiguous() && values.is_contiguous() &&
                  values.scalar_type() == at::kFloat && col.numel() == values.numel(),
              "col/values must be contiguous, values float32, one index per value");
  TORCH_CHECK(parts >= 1, "csr_panel_layout: parts must be at least 1, got ", parts);
  TORCH_CHECK(kblock <= 32767, "csr_panel_layout: kblock must fit int16 offsets, got ", kblock);
  const int64_t out = crow.size(0) - 1;
  const int32_t* rp = crow.data_ptr<int32_t>();
  TORCH_CHECK(rp[out] == values.numel(), "csr_panel_layout: crow ends at ", rp[out],
              " but there are ", values.numel(), " values");
  const int64_t kb = kblock > 0 ? kblock : default_layout_kblock(values.numel(), out, in_features);
  const int64_t p = std::min<int64_t>(parts, std::max<int64_t>(out, 1));
  if (col.scalar_type() == at::kShort)
    return build_panel_layout(rp, col.data_ptr<int16_t>(), values.data_ptr<float>(), out,
                              in_features, kb, p);
  TORCH_CHECK(col.scalar_type() == at::kInt, "col indices must be int16 or int32");
  return build_panel_layout(rp, col.data_ptr<int32_t>(), values.data_ptr<float>(), out,
                            in_features, kb, p);
}

// Code compiled for the pattern of a CSR weight, for products of 64 rows or more (see
// pattern_panel_part): groups of `group_rows` rows (<= 0: the default, 31), feature blocks of
// `kblock` (<= 0: the whole input up to 1,024 features, else blocks of 768), rows in `parts`
// parts of whole groups balanced by nonzeros.
std::vector<at::Tensor> csr_pattern_kernel(const at::Tensor& crow, const at::Tensor& col,
                                           const at::Tensor& values, int64_t in_features,
                                           int64_t group_rows, int64_t kblock, int64_t parts) {
#if SB_HAVE_PATTERN_JIT
  TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous(), "crow must be int32");
  TORCH_CHECK(col.is_contiguous() && values.is_contiguous() &&
                  values.scalar_type() == at::kFloat && col.numel() == values.numel(),
              "col/values must be contiguous, values float32, one index per value");
  TORCH_CHECK(parts >= 1, "csr_pattern_kernel: parts must be at least 1, got ", parts);
  TORCH_CHECK(group_rows <= kPatternGroupRows, "csr_pattern_kernel: at most ",
              kPatternGroupRows, " rows per group (one register each), got ", group_rows);
  const int64_t out = crow.size(0) - 1;
  const int32_t* rp = crow.data_ptr<int32_t>();
  TORCH_CHECK(rp[out] == values.numel(), "csr_pattern_kernel: crow ends at ", rp[out],
              " but there are ", values.numel(), " values");
  const int64_t R = group_rows > 0 ? group_rows : kPatternGroupRows;
  const int64_t kb = kblock > 0 ? kblock : in_features <= 1024 ? std::max<int64_t>(in_features, 1) : 768;
  const int64_t groups = std::max<int64_t>((out + R - 1) / R, 1);
  const int64_t p = std::min<int64_t>(parts, groups);
  if (col.scalar_type() == at::kShort)
    return build_pattern_kernel(rp, col.data_ptr<int16_t>(), values.data_ptr<float>(), out,
                                in_features, R, kb, p);
  TORCH_CHECK(col.scalar_type() == at::kInt, "col indices must be int16 or int32");
  return build_pattern_kernel(rp, col.data_ptr<int32_t>(), values.data_ptr<float>(), out,
                              in_features, R, kb, p);
#else
  TORCH_CHECK(false, "csr_pattern_kernel: needs x86-64 with AVX-512 on Linux");
#endif
}

// y = x @ W.T + b with W in BSR. x: (batch, in) float32; W covers (out, in) with its last
// block row/column padded; values (nblocks, bh, bw). Returns y: (batch, out), contiguous.
at::Tensor bsr_linear(const at::Tensor& x, const at::Tensor& brp, const at::Tensor& bci,
                      const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                      int64_t out, int64_t in_features, int64_t threading) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "bsr_linear: x must be 2-D float32");
  TORCH_CHECK(x.size(1) == in_features, "bsr_linear: x has ", x.size(1),
              " features, layer expects ", in_features);
  const BsrArgs a = check_bsr(brp, bci, values, bias, out);
  const int64_t B = x.size(0);
  at::Tensor y = at::empty({B, out}, x.options());
  if (B == 0 || out == 0) return y;
  const int64_t in_p = (in_features + a.bw - 1) / a.bw * a.bw;
  at::Tensor xT;
  if (B == 1) {
    xT = in_p == in_features ? x.contiguous() : at::constant_pad_nd(x, {0, in_p - in_features});
  } else {
    // (in_p, B): the padded input columns are zero, so padded blocks add nothing.
    xT = at::zeros({in_p, B}, x.options());
    xT.narrow(0, 0, in_features).copy_(x.t());
  }
  std::vector<int64_t> coff(in_p);  // row k of xT starts at k * B
  for (int64_t k = 0; k < in_p; ++k) coff[k] = k * B;
  bsr_call(a, xT.data_ptr<float>(), coff.data(), B, 1, 0, brp, bci, values, y.data_ptr<float>(),
           out, false, 0, threading);
  return y;
}

// Y[n] = W @ X[n] + b[:, None] for a batch of column matrices: X (N, in_p, L) float32 with
// in_p a multiple of bw (im2col of a convolution). Returns Y: (N, out, L), contiguous.
at::Tensor bsr_matmul_cols(const at::Tensor& X, const at::Tensor& brp, const at::Tensor& bci,
                           const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                           int64_t out, int64_t threading) {
  TORCH_CHECK(X.dim() == 3 && X.scalar_type() == at::kFloat, "bsr_matmul_cols: X must be 3-D float32");
  const BsrArgs a = check_bsr(brp, bci, values, bias, out);
  TORCH_CHECK(X.size(1) % a.bw == 0, "bsr_matmul_cols: X rows must be a multiple of bw");
  const at::Tensor Xc = X.contiguous();
  const int64_t N = X.size(0), L = X.size(2);
  at::Tensor Y = at::empty({N, out, L}, X.options());
  if (N == 0 || L == 0 || out == 0) return Y;
  std::vector<int64_t> coff(X.size(1));
  for (int64_t k = 0; k < X.size(1); ++k) coff[k] = k * L;
  bsr_call(a, Xc.data_ptr<float>(), coff.data(), L, N, X.size(1) * L, brp, bci, values,
           Y.data_ptr<float>(), out, true, out * L, threading);
  return Y;
}

// Direct sparse convolution, stride 1 (Park et al. 2017, without im2col): for an output
// position p = oh * Wp + ow of a zero-padded input (C, Hp, Wp), matrix column k = (c, i, j)
// reads Xp at c*Hp*Wp + i*dh*Wp + j*dw + p, so a run of consecutive p is a contiguous run of
// Xp: the kernel streams the input rows themselves instead of a 9x larger unfolded copy. The
// product is computed over the padded width Wp; the last Wp - Wo columns of each output row
// read wrapped-around input and are cut off before returning.
// x: (N, C, H, W) float32. Returns (N, out, Ho, Wo) with Ho = H + 2ph - dh(kh-1), likewise Wo.
at::Tensor bsr_conv2d_s1(const at::Tensor& x, const at::Tensor& brp, const at::Tensor& bci,
                         const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                         int64_t out, int64_t kh, int64_t kw, int64_t ph, int64_t pw,
                         int64_t dh, int64_t dw, int64_t threading) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "bsr_conv2d_s1: x must be NCHW float32");
  const BsrArgs a = check_bsr(brp, bci, values, bias, out);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
  const int64_t Ho = Hp - dh * (kh - 1), Wo = Wp - dw * (kw - 1);
  TORCH_CHECK(Ho > 0 && Wo > 0, "bsr_conv2d_s1: the input is smaller than the kernel");
  const int64_t K = C * kh * kw, Kp = (K + a.bw - 1) / a.bw * a.bw;
  const int64_t image = C * Hp * Wp;
  const int64_t slack = dw * (kw - 1) + 8;  // the last image's wrapped reads stay in bounds
  // Padded matrix columns (K <= k < Kp) get offset -1: the kernel skips them, because no
  // run of Xp is guaranteed zero (0 * inf would be NaN).
  std::vector<int64_t> coff(Kp, -1);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t c = k / (kh * kw), i = (k / kw) % kh, j = k % kw;
    coff[k] = c * Hp * Wp + i * dh * Wp + j * dw;
  }
  const int64_t L = Ho * Wp;
  if (threading < 0) threading = kAdaptive;
  const int64_t threads = at::get_num_threads();
  if (N > 0 && out > 0 && (N >= 2 * threads || threads <= 1 || threading == kSerial)) {
    // Enough images to keep every thread busy with whole images: each thread pads one image
    // at a time into its own buffer, convolves it into a second one and copies the valid
    // columns out. Both buffers stay in the core's L2, where padding the whole batch first
    // and trimming a whole (N, out, Ho, Wp) output after went through memory three times:
    // 64->64 3x3 on 32x32 at batch 128 took 37 ms at any sparsity, 4.6x the per-image time
    // of batch 16 (benchmarks/block_sparse.py).
    const at::Tensor xc = x.contiguous();
    const float* xs = xc.data_ptr<float>();
    at::Tensor Y = at::empty({N, out, Ho, Wo}, x.options());
    float* yd = Y.data_ptr<float>();
    const int64_t chunks = std::min<int64_t>(N, std::max<int64_t>(1, threads) * kChunksPerThread);
    parallel_chunks(chunks, threading, [&](int64_t c) {
      thread_local std::vector<float> xbuf, ybuf;
      xbuf.assign(image + slack, 0.f);  // the padding and the slack stay zero for every image
      ybuf.resize(out * L);
      for (int64_t n = N * c / chunks, n1 = N * (c + 1) / chunks; n < n1; ++n) {
        for (int64_t ch = 0; ch < C; ++ch)
          for (int64_t h = 0; h < H; ++h)
            std::copy_n(xs + ((n * C + ch) * H + h) * W, W,
                        xbuf.data() + (ch * Hp + h + ph) * Wp + pw);
        bsr_call(a, xbuf.data(), coff.data(), L, 1, image, brp, bci, values, ybuf.data(), out,
                 true, out * L, kSerial);
        for (int64_t o = 0; o < out; ++o)
          for (int64_t h = 0; h < Ho; ++h)
            std::copy_n(ybuf.data() + o * L + h * Wp, Wo, yd + ((n * out + o) * Ho + h) * Wo);
      }
    });
    return Y;
  }
  at::Tensor xp;
  if (ph == 0 && pw == 0 && kw == 1) {
    xp = x.contiguous();  // nothing wraps past the end: read x itself
  } else {
    xp = at::zeros({N * image + slack}, x.options());
    xp.narrow(0, 0, N * image).view({N, C, Hp, Wp}).narrow(2, ph, H).narrow(3, pw, W).copy_(x);
  }
  const float* base = xp.data_ptr<float>();
  at::Tensor Y = at::empty({N, out, Ho, Wp}, x.options());
  if (N > 0 && out > 0)
    bsr_call(a, base, coff.data(), L, N, image, brp, bci, values, Y.data_ptr<float>(), out, true,
             out * L, threading);
  return Wo == Wp ? Y : Y.narrow(3, 0, Wo).contiguous();
}

// ---------------------------------------------------------------------------------------
// CSR convolution (1x1 blocks) over a prepared input, any stride (Park et al. 2017's direct
// sparse convolution, extended to strides by splitting the input into its stride phases).
//
// The zero-padded input Xp (C, Hp, Wp) of one image is rearranged into s*s phase planes of
// (Hs, Ws) = (ceil(Hp / sh), ceil(Wp / sw)): plane (c, a, b) holds Xp[c, sh*h + a, sw*w + b].
// Output (oh, ow) reads Xp[c, sh*oh + i*dh, sw*ow + j*dw] for tap (c, i, j); with
// i*dh = sh*i' + a and j*dw = sw*j' + b that is plane (c, a, b) at (oh + i', ow + j'). So at
// the output position p = oh * Ws + ow, tap (c, i, j) reads the plane at p + offset, with
// offset = plane start + i' * Ws + j': a run of consecutive p is a contiguous run of memory
// for every tap, at stride 2 as at stride 1 (stride 1 is one plane per channel, Xp itself).
// The product runs over Ho * Ws positions; the last Ws - Wo of each output row read
// wrapped-around input and are cut off. Each nonzero's offset is computed once per input size
// (conv_offsets, cached by the caller), so the kernel does one load for an index.

struct ConvGeometry {
  int64_t C, H, W, kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t Hp() const { return H + 2 * ph; }
  int64_t Wp() const { return W + 2 * pw; }
  int64_t Hs() const { return (Hp() + sh - 1) / sh; }
  int64_t Ws() const { return (Wp() + sw - 1) / sw; }
  int64_t Ho() const { return (Hp() - dh * (kh - 1) - 1) / sh + 1; }
  int64_t Wo() const { return (Wp() - dw * (kw - 1) - 1) / sw + 1; }
  // A 1x1 convolution of stride 1 without padding reads each image in place and writes the
  // output in place: its input already is the one plane per channel, and its output rows are
  // whole. Copying the input first took as long as the product (256->64 on 56x56 at 90%).
  bool in_place() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  }
  // Floats from one phase plane to the next: the image's own plane when read in place, else
  // whole 64-byte lines, so that every plane of the buffer starts aligned (3x3 convolutions
  // on 14x14 and 28x28 maps: 1.05-1.06x at batch 1 and 8, one thread,
  // results/benchmarks/kernels_ab_conv_aligned_planes_1thread.txt).
  // Reading 1x1 convolutions of 7x7 and 14x14 maps through such a buffer too was 1.1-1.2x
  // faster at batch 8, but at batch 1 on two threads, where each image's rows are split,
  // 0.6-0.7x (the serial copies in and out), so they stay in place.
  int64_t plane() const { return in_place() ? Hs() * Ws() : (Hs() * Ws() + 15) / 16 * 16; }
  int64_t image() const { return C * sh * sw * plane(); }
  // Output positions computed, a multiple of 16 so that every tile is whole vectors.
  int64_t L() const { return (Ho() * Ws() + 15) / 16 * 16; }
  // Reads past the last plane: wrapped columns, the rounding of L, the furthest tap.
  int64_t slack() const { return L() - Ho() * Ws() + (kh * dh / sh + 1) * Ws() + kw * dw + 16; }
};

ConvGeometry conv_geometry(int64_t C, int64_t H, int64_t W, const std::vector<int64_t>& g) {
  TORCH_CHECK(g.size() == 8, "conv: geometry is (kh, kw, sh, sw, ph, pw, dh, dw)");
  ConvGeometry c{C, H, W, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]};
  TORCH_CHECK(c.kh > 0 && c.kw > 0 && c.sh > 0 && c.sw > 0 && c.ph >= 0 && c.pw >= 0 &&
                  c.dh > 0 && c.dw > 0,
              "conv: kernel, stride and dilation must be positive, padding non-negative");
  TORCH_CHECK(c.Hp() >= c.dh * (c.kh - 1) + 1 && c.Wp() >= c.dw * (c.kw - 1) + 1,
              "conv: the input (", H, "x", W, ") is smaller than the kernel");
  return c;
}


// Rearranges image x (C, H, W) into the phase planes of buf, zero where padding falls. Only
// the phases some tap reads are written (a 1x1 convolution of stride 2 reads one in four
// input values); the others are never read by a kept output.
void conv_prepare(const ConvGeometry& g, const float* x, float* buf) {
  const int64_t Hs = g.Hs(), Ws = g.Ws(), plane = g.plane();
  std::vector<char> used(g.sh * g.sw, 0);
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) used[(i * g.dh % g.sh) * g.sw + j * g.dw % g.sw] = 1;
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t a = 0; a < g.sh; ++a)
      for (int64_t b = 0; b < g.sw; ++b) {
        if (!used[a * g.sw + b]) continue;
        float* dst = buf + ((c * g.sh + a) * g.sw + b) * plane;
        std::fill_n(dst, plane, 0.f);
        // Plane row hs holds padded row sh*hs + a, i.e. input row sh*hs + a - ph; its column
        // ws holds input column sw*ws + b - pw.
        const int64_t w_first = std::max<int64_t>(0, (g.pw - b + g.sw - 1) / g.sw);
        const int64_t w_end = std::min<int64_t>(Ws, (g.W + g.pw - b + g.sw - 1) / g.sw);
        for (int64_t hs = 0; hs < Hs; ++hs) {
          const int64_t h = g.sh * hs + a - g.ph;
          if (h < 0 || h >= g.H) continue;
          const float* src = x + (c * g.H + h) * g.W + (g.sw * w_first + b - g.pw);
          float* row = dst + hs * Ws;
          if (g.sw == 1) {
            std::copy(src, src + (w_end - w_first), row + w_first);
          } else {
            for (int64_t ws = w_first; ws < w_end; ++ws) row[ws] = src[(ws - w_first) * g.sw];
          }
        }
      }
  std::fill_n(buf + g.image(), g.slack(), 0.f);
}

// Rows [o0, o1) of the output for positions [p0, p0 + VL*NV): Y[o, p] = act(b[o] + sum over
// row o's nonzeros of v[j] * X[off[j] + p] + R[o, p]), R (laid out as Y) when not null: a
// residual connection added before the ReLU, as a ResNet block's last convolution needs.
// With `stream`, rows whose tile starts on a 64-byte line are written by non-temporal stores
// (see kStreamOutputBytes); the caller fences.
template <int VL, int NV>
inline void conv_tile(int64_t o0, int64_t o1, int64_t p0, const int32_t* rp, const int32_t* off,
                      const float* v, const float* X, const float* bias, bool relu, float* Y,
                      int64_t ldy, const float* R, bool stream = false) {
  typedef typename Vec<VL>::t vt;
  typedef typename Vec<VL>::u vtu;
  const float* xb = X + p0;
  const auto at = [off](int64_t j) { return static_cast<int64_t>(off[j]); };
  for (int64_t o = o0; o < o1; ++o) {
    vt sum[NV];
    row_sums<VL, NV>(rp[o], rp[o + 1], v, xb, at, bias ? bias[o] : 0.f, sum);
    vtu* yr = reinterpret_cast<vtu*>(Y + o * ldy + p0);
    if (R) {
      const vtu* rr = reinterpret_cast<const vtu*>(R + o * ldy + p0);
      for (int k = 0; k < NV; ++k) sum[k] += rr[k];
    }
#if SB_HAVE_AVX512
    if constexpr (VL == 16) {
      if (stream && reinterpret_cast<std::uintptr_t>(yr) % 64 == 0) {
        for (int k = 0; k < NV; ++k) {
          const vt out = relu ? (sum[k] < 0.f ? vt{} : sum[k]) : sum[k];
          _mm512_stream_ps(reinterpret_cast<float*>(yr + k), reinterpret_cast<const __m512&>(out));
        }
        continue;
      }
    }
#endif
    for (int k = 0; k < NV; ++k) yr[k] = relu ? (sum[k] < 0.f ? vt{} : sum[k]) : sum[k];
  }
}

#if SB_HAVE_AVX512
// The last nb positions, 16 * (NV - 1) < nb <= 16 * NV, of rows [o0, o1) in one tile whose
// last vector is masked (loads and stores), so nothing past X's or Y's row is touched. Only
// a convolution read in place has such a tail: 7x7 and 14x14 maps have 49 and 196 positions.
// Before, a 7x7 map ran three 16-wide passes and a scalar pass over every row's nonzeros
// (1x1 2048->512 at 90%: 17 GF/s, against 60 GF/s on 56x56 maps).
template <int NV>
inline void conv_tile_masked(int64_t o0, int64_t o1, int64_t p0, int64_t nb, const int32_t* rp,
                             const int32_t* off, const float* v, const float* X,
                             const float* bias, bool relu, float* Y, int64_t ldy,
                             const float* R) {
  constexpr int U = NV >= 4 ? 1 : (NV == 1 ? 4 : 2);  // independent chains, as in row_sums
  const __mmask16 last = static_cast<__mmask16>((1u << (nb - 16 * (NV - 1))) - 1);
  const float* xb = X + p0;
  for (int64_t o = o0; o < o1; ++o) {
    __m512 acc[U][NV];
    for (int u = 0; u < U; ++u)
      for (int k = 0; k < NV; ++k)
        acc[u][k] = _mm512_set1_ps(u == 0 && bias ? bias[o] : 0.f);
    int64_t j = rp[o];
    const int64_t e = rp[o + 1];
    for (; j + U <= e; j += U) {
      for (int u = 0; u < U; ++u) {
        const __m512 w = _mm512_set1_ps(v[j + u]);
        const float* xr = xb + off[j + u];
        for (int k = 0; k < NV - 1; ++k)
          acc[u][k] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xr + 16 * k), acc[u][k]);
        acc[u][NV - 1] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(last, xr + 16 * (NV - 1)),
                                         acc[u][NV - 1]);
      }
    }
    for (; j < e; ++j) {
      const __m512 w = _mm512_set1_ps(v[j]);
      const float* xr = xb + off[j];
      for (int k = 0; k < NV - 1; ++k)
        acc[0][k] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xr + 16 * k), acc[0][k]);
      acc[0][NV - 1] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(last, xr + 16 * (NV - 1)),
                                       acc[0][NV - 1]);
    }
    float* yr = Y + o * ldy + p0;
    for (int k = 0; k < NV; ++k) {
      __m512 sum = acc[0][k];
      for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][k]);
      if (R) {
        const float* rr = R + o * ldy + p0 + 16 * k;
        sum = _mm512_add_ps(sum, k < NV - 1 ? _mm512_loadu_ps(rr) : _mm512_maskz_loadu_ps(last, rr));
      }
      if (relu) sum = _mm512_max_ps(_mm512_setzero_ps(), sum);  // NaN stays NaN
      if (k < NV - 1)
        _mm512_storeu_ps(yr + 16 * k, sum);
      else
        _mm512_mask_storeu_ps(yr + 16 * k, last, sum);
    }
  }
}
#endif

// All positions [0, L) of rows [o0, o1): position tiles outermost, so the part of X a tile
// reads (C * taps runs of the tile's width) stays in cache while every row passes over it;
// the rows' weights are small enough to stay there too.
void conv_rows(int64_t o0, int64_t o1, int64_t L, const int32_t* rp, const int32_t* off,
               const float* v, const float* X, const float* bias, bool relu, float* Y,
               int64_t ldy, const float* R = nullptr, bool stream = false) {
#if SB_HAVE_AVX512
  constexpr int VL = 16;
#else
  constexpr int VL = 8;
#endif
  int64_t p0 = 0;
  for (; p0 + 4 * VL <= L; p0 += 4 * VL)
    conv_tile<VL, 4>(o0, o1, p0, rp, off, v, X, bias, relu, Y, ldy, R, stream);
#if SB_HAVE_AVX512
  if (stream) _mm_sfence();  // the streamed lines are visible before the caller reads them
#endif
#if SB_HAVE_AVX512
  // At most 63 positions left: one tile of 1-4 vectors, the last one masked.
  const int64_t left = L - p0;
  if (left > 48) conv_tile_masked<4>(o0, o1, p0, left, rp, off, v, X, bias, relu, Y, ldy, R);
  else if (left > 32) conv_tile_masked<3>(o0, o1, p0, left, rp, off, v, X, bias, relu, Y, ldy, R);
  else if (left > 16) conv_tile_masked<2>(o0, o1, p0, left, rp, off, v, X, bias, relu, Y, ldy, R);
  else if (left > 0) conv_tile_masked<1>(o0, o1, p0, left, rp, off, v, X, bias, relu, Y, ldy, R);
  return;
#endif
  for (; p0 + 16 <= L; p0 += 16)
    conv_tile<VL, 16 / VL>(o0, o1, p0, rp, off, v, X, bias, relu, Y, ldy, R);
  if (p0 == L) return;
  // The last L % 16 positions (only when X is the caller's own input, read in place).
  const int64_t nb = L - p0;
  for (int64_t o = o0; o < o1; ++o) {
    float acc[16];
    for (int64_t t = 0; t < nb; ++t) acc[t] = bias ? bias[o] : 0.f;
    for (int64_t j = rp[o], e = rp[o + 1]; j < e; ++j) {
      const float w = v[j];
      const float* xr = X + off[j] + p0;
      for (int64_t t = 0; t < nb; ++t) acc[t] += w * xr[t];
    }
    for (int64_t t = 0; t < nb; ++t) {
      const float y = acc[t] + (R ? R[o * ldy + p0 + t] : 0.f);
      Y[o * ldy + p0 + t] = relu && y < 0.f ? 0.f : y;
    }
  }
}

#if SB_HAVE_AVX512
// Convolutions through the count-class layout of their (out, C*kh*kw) weight, the one the
// large-batch Linear products use (layout_panel_part). conv_rows reads each tap's run of
// positions where it lies in the input planes, so two taps in three start off a 64-byte
// line and every vector load spans two lines: the same 3x3 convolutions ran 1.3-1.45x
// faster with their offsets rounded down to whole lines (wrong sums, right timing; 14x14 to
// 56x56 maps, one thread; a script, not kept). Here, for each tile of 64 positions and each block of features
// (channel, tap), the block's runs are first copied into an aligned panel that stays in L1,
// as im2col would but one L1-sized block at a time, and the rows then run through the
// layout's bodies unrolled per count. The copy is one load and store per feature and vector,
// where the products do about out * density multiply-adds on each.
//
// Every column k of the weight reads the input at X + foff[k] + position (conv_offsets'
// formula per column rather than per nonzero).
std::vector<int32_t> conv_feature_offsets(const ConvGeometry& g) {
  // Nested loops with each tap's part worked out once: the same formula per column with
  // divisions took 35 ns a column, 0.16 ms for a 512-channel 3x3 weight, a quarter of that
  // convolution's time at batch 1.
  std::vector<int32_t> foff(g.C * g.kh * g.kw);
  std::vector<int64_t> tap(g.kh * g.kw);  // offset of tap (i, t) from its channel's first plane
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t t = 0; t < g.kw; ++t) {
      const int64_t ri = i * g.dh, rj = t * g.dw;
      tap[i * g.kw + t] = g.in_place() ? 0
                          : ((ri % g.sh) * g.sw + rj % g.sw) * g.plane() +
                                (ri / g.sh) * g.Ws() + rj / g.sw;
    }
  const int64_t channel = g.in_place() ? g.H * g.W : g.sh * g.sw * g.plane();
  int32_t* out = foff.data();
  for (int64_t c = 0; c < g.C; ++c)
    for (const int64_t at : tap) *out++ = static_cast<int32_t>(c * channel + at);
  return foff;
}

// Positions [p0, p0 + width) (width <= 16 * NV; beyond it nothing is read or written) of the
// rows of layout parts [k0, k1): Y[o, p] = act(b[o] + sum_k W[o, k] X[foff[k] + p] + R[o, p]).
template <int NV>
void conv_layout_tile(const PanelLayout& L, int64_t k0, int64_t k1, int64_t cols,
                      const int32_t* foff, const float* X, int64_t p0, int64_t width,
                      const float* bias, bool relu, float* Y, int64_t ldy, const float* R) {
  constexpr int VL = 16, TB = VL * NV;
  typedef typename Vec<VL>::t vt;
  static constexpr auto table =
      class_rows_table<VL, NV>(std::make_integer_sequence<int, kMaxUnrolledCount + 1>{});
  const int64_t r0 = L.part_rows[k0], r1 = L.part_rows[k1];
  thread_local std::vector<vt> scratch;
  thread_local std::vector<float> panel_store;
  scratch.resize((r1 - r0) * NV);
  vt* sums = scratch.data();
  float* xb = aligned_floats(panel_store, L.kblock * TB);
  for (int64_t o = r0; o < r1; ++o)
    for (int q = 0; q < NV; ++q) sums[(o - r0) * NV + q] = vt{} + (bias ? bias[o] : 0.f);
  const __mmask16 last = static_cast<__mmask16>(
      width >= TB ? 0xFFFF : (1u << (width - 16 * (NV - 1))) - 1);
  for (int64_t t = 0; t < L.blocks; ++t) {
    bool any = false;
    for (int64_t k = k0; k < k1 && !any; ++k)
      any = L.group_ptr[k * L.blocks + t] < L.group_ptr[k * L.blocks + t + 1];
    if (!any) continue;
    const int64_t f0 = t * L.kblock, f1 = std::min(cols, f0 + L.kblock);
    for (int64_t f = f0; f < f1; ++f) {
      const float* src = X + foff[f] + p0;
      float* dst = xb + (f - f0) * TB;
      for (int q = 0; q < NV - 1; ++q) _mm512_store_ps(dst + 16 * q, _mm512_loadu_ps(src + 16 * q));
      _mm512_store_ps(dst + 16 * (NV - 1), _mm512_maskz_loadu_ps(last, src + 16 * (NV - 1)));
    }
    for (int64_t k = k0; k < k1; ++k) {
      vt* part_sums = sums + (L.part_rows[k] - r0) * NV;
      for (int64_t g = L.group_ptr[k * L.blocks + t], ge = L.group_ptr[k * L.blocks + t + 1];
           g < ge; ++g) {
        const int64_t* G = L.groups + 4 * g;
        table[G[0] <= kMaxUnrolledCount ? G[0] : 0](G[0], G[2], L.rows + G[1],
                                                    L.offsets + G[3], L.values + G[3], xb,
                                                    part_sums);
      }
    }
  }
  for (int64_t o = r0; o < r1; ++o) {
    const float* so = reinterpret_cast<const float*>(sums + (o - r0) * NV);
    float* yo = Y + o * ldy + p0;
    const float* ro = R ? R + o * ldy + p0 : nullptr;
    for (int q = 0; q < NV; ++q) {
      const __mmask16 m = q < NV - 1 ? static_cast<__mmask16>(0xFFFF) : last;
      __m512 y = _mm512_loadu_ps(so + 16 * q);
      if (ro) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, ro + 16 * q));
      if (relu) y = _mm512_max_ps(_mm512_setzero_ps(), y);  // NaN stays NaN
      _mm512_mask_storeu_ps(yo + 16 * q, m, y);
    }
  }
}

// Whether a convolution's rows should run through the layout: only where some tap's run
// starts off a 64-byte line, since on aligned runs (1x1 convolutions read in place from
// 28x28 and 56x56 maps, or of stride 2) conv_rows loses nothing and the layout adds its
// copies (64->256 1x1 on 56x56: 0.58x). And only with at least kLayoutNonzerosPerColumn
// nonzeros per weight column on average: each copied value feeds that many multiply-adds,
// and at 6.4 (64->64 3x3 at 90%) the copy ate the gain (0.96x).
constexpr int64_t kLayoutNonzerosPerColumn = 10;
bool conv_layout_pays(const ConvGeometry& g, int64_t nnz, const std::vector<int32_t>& foff) {
  if (nnz < kLayoutNonzerosPerColumn * g.C * g.kh * g.kw) return false;
  for (const int32_t f : foff)
    if (f % 16 != 0) return true;
  return false;
}

// Positions [pa, pb) of every row, in tiles of 64 from pa.
constexpr int64_t kConvTile = 64;
void conv_layout_rows(const PanelLayout& Lay, int64_t cols, const int32_t* foff, int64_t pa,
                      int64_t pb, const float* X, const float* bias, bool relu, float* Y,
                      int64_t ldy, const float* R = nullptr) {
  for (int64_t p0 = pa; p0 < pb; p0 += kConvTile) {
    const int64_t width = std::min<int64_t>(kConvTile, pb - p0);
    const int64_t k1 = Lay.parts;
    switch ((width + 15) / 16) {
      case 4: conv_layout_tile<4>(Lay, 0, k1, cols, foff, X, p0, width, bias, relu, Y, ldy, R); break;
      case 3: conv_layout_tile<3>(Lay, 0, k1, cols, foff, X, p0, width, bias, relu, Y, ldy, R); break;
      case 2: conv_layout_tile<2>(Lay, 0, k1, cols, foff, X, p0, width, bias, relu, Y, ldy, R); break;
      default: conv_layout_tile<1>(Lay, 0, k1, cols, foff, X, p0, width, bias, relu, Y, ldy, R);
    }
  }
}
#endif

// Copies the Ho x Wo valid outputs of the (out, L) buffer (rows Ws apart) to y (out, Ho, Wo);
// with a residual R (laid out as y), writes act(buf + R) instead (the buffer then holds the
// sums before the ReLU).
void conv_trim(const ConvGeometry& g, int64_t out, const float* buf, float* y,
               const float* R = nullptr, bool relu = false) {
  const int64_t Ho = g.Ho(), Wo = g.Wo(), Ws = g.Ws(), L = g.L();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t h = 0; h < Ho; ++h) {
      const float* src = buf + o * L + h * Ws;
      float* dst = y + (o * Ho + h) * Wo;
      if (!R) {
        std::copy_n(src, Wo, dst);
        continue;
      }
      const float* r = R + (o * Ho + h) * Wo;
      for (int64_t w = 0; w < Wo; ++w) {
        const float sum = src[w] + r[w];
        dst[w] = relu && sum < 0.f ? 0.f : sum;
      }
    }
}

// Where each nonzero of a CSR conv weight reads its input, for images of C x H x W:
// off[j] for the (c, i, j) tap of column col[j] (PyTorch's (channel, kh, kw) order).
at::Tensor conv_offsets(const at::Tensor& col, int64_t C, int64_t H, int64_t W,
                        std::vector<int64_t> geometry) {
  const ConvGeometry g = conv_geometry(C, H, W, geometry);
  TORCH_CHECK(col.dim() == 1 && col.is_contiguous() &&
                  (col.scalar_type() == at::kShort || col.scalar_type() == at::kInt),
              "conv_offsets: col must be contiguous int16/int32");
  TORCH_CHECK(g.image() + g.slack() < (int64_t{1} << 31), "conv_offsets: image too large");
  const at::Tensor c32 = col.to(at::kInt);
  const int32_t* cp = c32.data_ptr<int32_t>();
  at::Tensor off = at::empty({col.numel()}, col.options().dtype(at::kInt));
  int32_t* op = off.data_ptr<int32_t>();
  const int64_t taps = g.kh * g.kw;
  for (int64_t j = 0, nnz = col.numel(); j < nnz; ++j) {
    const int64_t k = cp[j];
    TORCH_CHECK(k >= 0 && k < C * taps, "conv_offsets: column ", k, " out of range");
    const int64_t c = k / taps, i = (k / g.kw) % g.kh, t = k % g.kw;
    const int64_t ri = i * g.dh, rj = t * g.dw;
    const int64_t plane = (c * g.sh + ri % g.sh) * g.sw + rj % g.sw;
    op[j] = static_cast<int32_t>(plane * g.plane() + (ri / g.sh) * g.Ws() + rj / g.sw);
  }
  return off;
}

// Whole images per chunk: each thread prepares one image at a time in its own buffers, which
// stay in its L2 (see bsr_conv2d_s1 for what going through memory cost). rows(xbuf, ybuf)
// computes one prepared image's rows into the (out, L) buffer, without the residual.
template <typename Rows>
void conv_whole_images(const ConvGeometry& g, const float* xs, int64_t N, int64_t out,
                       bool serial, int64_t threads, int64_t threading, bool relu,
                       const float* rs, float* yd, Rows&& rows) {
  const int64_t in_image = g.C * g.H * g.W, out_image = out * g.Ho() * g.Wo();
  const int64_t buf_in = (g.image() + g.slack() + 15) / 16 * 16;
  const int64_t chunks = serial ? 1 : std::min<int64_t>(N, threads * kChunksPerThread);
  parallel_chunks(chunks, serial ? kSerial : threading, [&](int64_t c) {
    thread_local std::vector<float> xstore, ystore;
    float* xbuf = aligned_floats(xstore, buf_in);
    float* ybuf = aligned_floats(ystore, out * g.L());
    for (int64_t n = N * c / chunks, n1 = N * (c + 1) / chunks; n < n1; ++n) {
      conv_prepare(g, xs + n * in_image, xbuf);
      rows(xbuf, ybuf);
      conv_trim(g, out, ybuf, yd + n * out_image, rs ? rs + n * out_image : nullptr, relu);
    }
  });
}

#if SB_HAVE_AVX512
// csr_conv2d through the layout (see conv_layout_tile): len positions per image (the image's
// own H*W when read in place, else the buffer's L), in `tiles` tiles of 64.
void conv_layout(const ConvGeometry& g, const PanelLayout& lay, const std::vector<int32_t>& foff,
                 const float* xs, int64_t N, int64_t len, int64_t tiles, bool serial,
                 int64_t threads, int64_t threading, const float* bp, bool relu,
                 const float* rs, float* yd, int64_t out) {
  const int64_t cols = g.C * g.kh * g.kw;
  const int64_t in_image = g.C * g.H * g.W, out_image = out * g.Ho() * g.Wo();
  const int64_t buf_in = (g.image() + g.slack() + 15) / 16 * 16;
  const auto residual = [&](int64_t n) { return rs ? rs + n * out_image : nullptr; };
  if (g.in_place()) {  // tiles of the image itself, written in place
    parallel_chunks(serial ? 1 : N * tiles, serial ? kSerial : threading, [&](int64_t c) {
      const int64_t n0 = serial ? 0 : c / tiles, n1 = serial ? N : n0 + 1;
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t pa = serial ? 0 : (c % tiles) * kConvTile;
        const int64_t pb = serial ? len : std::min(len, pa + kConvTile);
        conv_layout_rows(lay, cols, foff.data(), pa, pb, xs + n * in_image, bp, relu,
                         yd + n * out_image, len, residual(n));
      }
    });
    return;
  }
  if (serial || N >= 2 * threads) {
    conv_whole_images(g, xs, N, out, serial, threads, threading, relu, rs, yd,
                      [&](const float* xbuf, float* ybuf) {
                        conv_layout_rows(lay, cols, foff.data(), 0, len, xbuf, bp, relu && !rs,
                                         ybuf, len);
                      });
    return;
  }
  // Fewer images than threads: prepare them all, then the threads take tiles.
  std::vector<float> xstore, ystore;
  float* xbuf = aligned_floats(xstore, N * buf_in);
  float* ybuf = aligned_floats(ystore, N * out * len);
  for (int64_t n = 0; n < N; ++n) conv_prepare(g, xs + n * in_image, xbuf + n * buf_in);
  parallel_chunks(N * tiles, threading, [&](int64_t c) {
    const int64_t n = c / tiles, pa = (c % tiles) * kConvTile;
    conv_layout_rows(lay, cols, foff.data(), pa, std::min(len, pa + kConvTile),
                     xbuf + n * buf_in, bp, relu && !rs, ybuf + n * out * len, len);
  });
  for (int64_t n = 0; n < N; ++n)
    conv_trim(g, out, ybuf + n * out * len, yd + n * out_image, residual(n), relu);
}
#endif

#include "conv_pattern.h"

// y = conv2d(x, W) + b (then ReLU if relu) with W (out, C*kh*kw) in CSR, its nonzeros' input
// offsets from conv_offsets for this input size. x: (N, C, H, W) float32, contiguous.
// `layout` is empty, the weight's count-class layout (used where conv_layout_pays) or its
// compiled pattern kernel (always used: conv_pattern.h).
at::Tensor csr_conv2d(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& off,
                      const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                      int64_t out, std::vector<int64_t> geometry, bool relu, int64_t threading,
                      const c10::optional<at::Tensor>& residual,
                      const std::vector<at::Tensor>& layout) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "csr_conv2d: x must be NCHW float32");
  const int64_t N = x.size(0);
  const ConvGeometry g = conv_geometry(x.size(1), x.size(2), x.size(3), geometry);
  TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous() && crow.numel() == out + 1,
              "csr_conv2d: crow must be contiguous int32 (out + 1,)");
  TORCH_CHECK(off.scalar_type() == at::kInt && off.is_contiguous() &&
                  values.scalar_type() == at::kFloat && values.is_contiguous() &&
                  off.numel() == values.numel(),
              "csr_conv2d: offsets (int32) and values (float32) must be contiguous, one per nonzero");
  const float* bp = nullptr;
  at::Tensor bc;
  if (bias.has_value() && bias->defined()) {
    bc = bias->contiguous();
    TORCH_CHECK(bc.scalar_type() == at::kFloat && bc.numel() == out, "csr_conv2d: bias must be float32 (out,)");
    bp = bc.data_ptr<float>();
  }
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({N, out, g.Ho(), g.Wo()}, x.options());
  // A residual added before the ReLU: y = act(conv(x) + residual), residual shaped as y.
  at::Tensor rc;
  const float* rs = nullptr;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->sizes() == y.sizes(),
                "csr_conv2d: residual must be float32 of the output's shape ", y.sizes());
    rc = residual->contiguous();
    rs = rc.data_ptr<float>();
  }
  if (N == 0 || out == 0) return y;
  const int32_t* rp = crow.data_ptr<int32_t>();
  const int32_t* op = off.data_ptr<int32_t>();
  const float* v = values.data_ptr<float>();
  const float* xs = xc.data_ptr<float>();
  float* yd = y.data_ptr<float>();
  const int64_t in_image = g.C * g.H * g.W, out_image = out * g.Ho() * g.Wo();
  const int64_t L = g.L(), buf_in = (g.image() + g.slack() + 15) / 16 * 16;
  if (threading < 0) threading = kAdaptive;
  const int64_t threads = at::get_num_threads();
  const bool in_place = g.in_place();
  // Offsets computed for another input size would read outside the buffer: refuse them.
  int32_t lowest = 0, highest = 0;
  for (int64_t j = 0, nnz = off.numel(); j < nnz; ++j) {
    lowest = std::min(lowest, op[j]);
    highest = std::max(highest, op[j]);
  }
  TORCH_CHECK(lowest >= 0 && (in_place ? highest + g.H * g.W <= in_image : highest + L <= buf_in),
              "csr_conv2d: the offsets were computed for another input size");
  const bool serial = threads <= 1 || threading == kSerial ||
                      static_cast<int64_t>(rp[out]) * L * N < kSerialWork;
  if (!layout.empty()) {
#if SB_HAVE_AVX512
    const PanelLayout lay = check_panel_layout(layout, out, g.C * g.kh * g.kw);
#if SB_HAVE_PATTERN_JIT
    if (lay.code != nullptr) {
      TORCH_CHECK(layout[4].numel() == values.numel(), "csr_conv2d: the compiled kernel holds ",
                  layout[4].numel(), " nonzeros, the weight ", values.numel());
      conv_pattern(g, lay, conv_feature_offsets(g), xs, N, serial, threads, threading, bp, relu,
                   rs, yd, out);
      return y;
    }
#endif
    TORCH_CHECK(layout[6].numel() == values.numel(), "csr_conv2d: the layout holds ",
                layout[6].numel(), " nonzeros, the weight ", values.numel());
    const int64_t len = in_place ? g.H * g.W : L;
    const int64_t tiles = (len + kConvTile - 1) / kConvTile;
    // The layout's rows are never split between threads (each share would copy every block
    // again): threads take images or tiles of positions, and where there are too few of
    // those (one 7x7 image on two threads) conv_rows splits the rows instead.
    const std::vector<int32_t> foff = conv_feature_offsets(g);
    if (conv_layout_pays(g, values.numel(), foff) && (serial || N * tiles >= 2 * threads)) {
      conv_layout(g, lay, foff, xs, N, len, tiles, serial, threads, threading, bp, relu, rs, yd,
                  out);
      return y;
    }
#endif
  }
  if (in_place) {
    const int64_t HW = g.H * g.W;
    const int64_t per = serial ? 1 : (N >= 2 * threads ? 1 : 2 * threads);
    const auto splits = balanced_splits(rp, out, per);
    const bool stream = stream_output(N * out_image);
    parallel_chunks(N * per, serial ? kSerial : threading, [&](int64_t c) {
      const int64_t n = c / per, k = c % per;
      conv_rows(splits[k], splits[k + 1], HW, rp, op, v, xs + n * in_image, bp, relu,
                yd + n * out_image, HW, rs ? rs + n * out_image : nullptr, stream);
    });
    return y;
  }
  if (serial || N >= 2 * threads) {
    conv_whole_images(g, xs, N, out, serial, threads, threading, relu, rs, yd,
                      [&](const float* xbuf, float* ybuf) {
                        conv_rows(0, out, L, rp, op, v, xbuf, bp, relu && !rs, ybuf, L);
                      });
    return y;
  }
  // Fewer images than threads: prepare them all, then split each image's rows.
  std::vector<float> xstore, ystore;
  float* xbuf = aligned_floats(xstore, N * buf_in);
  float* ybuf = aligned_floats(ystore, N * out * L);
  for (int64_t n = 0; n < N; ++n) conv_prepare(g, xs + n * in_image, xbuf + n * buf_in);
  const int64_t per = 2 * threads;
  const auto splits = balanced_splits(rp, out, per);
  parallel_chunks(N * per, threading, [&](int64_t c) {
    const int64_t n = c / per, k = c % per;
    conv_rows(splits[k], splits[k + 1], L, rp, op, v, xbuf + n * buf_in, bp, relu && !rs,
              ybuf + n * out * L, L);
  });
  for (int64_t n = 0; n < N; ++n)
    conv_trim(g, out, ybuf + n * out * L, yd + n * out_image,
              rs ? rs + n * out_image : nullptr, relu);
  return y;
}

// ---------------------------------------------------------------------------------------
// Max pooling of NCHW images, in place of torch's NCHW kernel, which is slow on the CPU (a
// ResNet stem's 3x3/2 pooling of 64 x 112 x 112: 6 ms an image here, a fifth of a 90%-sparse
// ResNet-50's forward; through channels-last copies 2 ms). Each output row is the maximum over
// its window's input rows, taken 8 columns at a time, then over each output's columns. As in
// torch, a NaN in a window is the window's maximum.
namespace {

inline float nan_max(float m, float x) { return (x > m || std::isnan(x)) ? x : m; }
inline v8 nan_max8(v8 m, v8 x) { return (x > m || x != x) ? x : m; }

// One plane. `row` holds W + 2p + k + 8 floats: an output row's column maxima, between p
// columns of -inf on each side; `win` the maxima of each k consecutive of those, of which
// every s-th is an output.
void pool_plane(const float* x, int64_t H, int64_t W, int64_t k, int64_t s, int64_t p,
                int64_t Ho, int64_t Wo, float* y, float* row, float* win) {
  const float lowest = -std::numeric_limits<float>::infinity();
  const int64_t starts = (Wo - 1) * s + 1;  // window starts that some output uses
  auto ld = [](const float* q) { return *reinterpret_cast<const v8u*>(q); };
  auto st = [](float* q, v8 v) { *reinterpret_cast<v8u*>(q) = v; };
  std::fill_n(row, W + 2 * p + k + 8, lowest);
  for (int64_t oh = 0; oh < Ho; ++oh) {
    const int64_t h0 = std::max<int64_t>(0, oh * s - p), h1 = std::min(H, oh * s - p + k);
    float* mid = row + p;
    std::copy_n(x + h0 * W, W, mid);
    for (int64_t h = h0 + 1; h < h1; ++h) {
      const float* xr = x + h * W;
      int64_t w = 0;
      for (; w + 8 <= W; w += 8) st(mid + w, nan_max8(ld(mid + w), ld(xr + w)));
      for (; w < W; ++w) mid[w] = nan_max(mid[w], xr[w]);
    }
    int64_t i = 0;
    for (; i + 8 <= starts; i += 8) {
      v8 m = ld(row + i);
      for (int64_t t = 1; t < k; ++t) m = nan_max8(m, ld(row + i + t));
      st(win + i, m);
    }
    for (; i < starts; ++i) {
      float m = row[i];
      for (int64_t t = 1; t < k; ++t) m = nan_max(m, row[i + t]);
      win[i] = m;
    }
    float* yr = y + oh * Wo;
    for (int64_t ow = 0; ow < Wo; ++ow) yr[ow] = win[ow * s];
  }
}

}  // namespace

#include "attention.h"


// y = max_pool2d(x, kernel, stride, padding) for x (N, C, H, W) float32: square windows,
// dilation 1, floor rounding; the padding counts as -inf, as in torch.
at::Tensor max_pool2d_nchw(const at::Tensor& x, int64_t kernel, int64_t stride,
                           int64_t padding, int64_t threading) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat, "max_pool2d_nchw: x must be NCHW float32");
  TORCH_CHECK(kernel > 0 && stride > 0 && padding >= 0 && 2 * padding <= kernel,
              "max_pool2d_nchw: kernel and stride must be positive, padding at most half the kernel");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = (H + 2 * padding - kernel) / stride + 1;
  const int64_t Wo = (W + 2 * padding - kernel) / stride + 1;
  TORCH_CHECK(Ho > 0 && Wo > 0, "max_pool2d_nchw: the input is smaller than the window");
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({N, C, Ho, Wo}, x.options());
  const int64_t planes = N * C;
  if (planes == 0) return y;
  const float* xs = xc.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  if (threading < 0) threading = kAdaptive;
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = threads <= 1 ? 1 : std::min<int64_t>(planes, threads * kChunksPerThread);
  parallel_chunks(chunks, threading, [&](int64_t c) {
    thread_local std::vector<float> row, win;
    row.resize(W + 2 * padding + kernel + 8);
    win.resize((Wo - 1) * stride + 1);
    for (int64_t pl = planes * c / chunks, pe = planes * (c + 1) / chunks; pl < pe; ++pl)
      pool_plane(xs + pl * H * W, H, W, kernel, stride, padding, Ho, Wo, ys + pl * Ho * Wo,
                 row.data(), win.data());
  });
  return y;
}

// ---------------------------------------------------------------------------------------
// Sampling a GRU language model at batch 1 in one call (issue 27, the Sparse WaveRNN claim).
//
// Called once per character from Python, a step pays for a dozen tensor ops (~280 us here)
// whatever the weights, so sampling time could not follow the nonzeros. This loop runs the
// whole generation: for each id, the embedding row, every layer's input and recurrent
// matrix-vector products (CSR or dense, each as the caller gives it) and gates in torch.nn.GRU's
// order, the output layer, then a draw by inverse CDF from the caller's uniforms. What is left
// per step besides the products is the gates' 3 x hidden sigmoid/tanh and the vocabulary's exp.

namespace {

struct GruMatrix {
  int64_t rows = 0, cols = 0;
  const int32_t* rp = nullptr;  // CSR (block) row pointers; nullptr: a dense (rows, cols) matrix
  const void* ci = nullptr;
  bool ci16 = false;
  int64_t bh = 1, bw = 1;  // BSR block shape; 1 x 1: CSR
  const float* v = nullptr;
  const float* bias = nullptr;
  std::vector<int64_t> splits;  // row chunks for threads, balanced by nonzeros
};

inline float dense_dot(const float* w, const float* x, int64_t n) {
  v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 += *reinterpret_cast<const v8u*>(w + i) * *reinterpret_cast<const v8u*>(x + i);
    a1 += *reinterpret_cast<const v8u*>(w + i + 8) * *reinterpret_cast<const v8u*>(x + i + 8);
    a2 += *reinterpret_cast<const v8u*>(w + i + 16) * *reinterpret_cast<const v8u*>(x + i + 16);
    a3 += *reinterpret_cast<const v8u*>(w + i + 24) * *reinterpret_cast<const v8u*>(x + i + 24);
  }
  for (; i + 8 <= n; i += 8)
    a0 += *reinterpret_cast<const v8u*>(w + i) * *reinterpret_cast<const v8u*>(x + i);
  const v8 a = (a0 + a1) + (a2 + a3);
  float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  for (; i < n; ++i) sum += w[i] * x[i];
  return sum;
}

void gru_matvec_rows(const GruMatrix& m, int64_t r0, int64_t r1, const float* x, float* y) {
  if (m.rp == nullptr) {
    for (int64_t r = r0; r < r1; ++r)
      y[r] = dense_dot(m.v + r * m.cols, x, m.cols) + (m.bias ? m.bias[r] : 0.f);
  } else if (m.ci16) {
    spmv_dispatch<int16_t>(default_spmv_variant(), r0, r1, m.rp,
                           static_cast<const int16_t*>(m.ci), m.v, x, m.bias, y);
  } else {
    spmv_dispatch<int32_t>(default_spmv_variant(), r0, r1, m.rp,
                           static_cast<const int32_t*>(m.ci), m.v, x, m.bias, y);
  }
}

void gru_matvec(const GruMatrix& m, const float* x, float* y) {
  if (m.bh * m.bw > 1) {  // the block kernels split their block rows themselves
    const int64_t block_rows = (m.rows + m.bh - 1) / m.bh;
    if (m.ci16)
      bsr_dispatch<int16_t>(m.bh, m.bw, x, nullptr, 1, 1, 0, m.rp,
                            static_cast<const int16_t*>(m.ci), m.v, block_rows, m.bias, y,
                            m.rows, false, 0, kAdaptive);
    else
      bsr_dispatch<int32_t>(m.bh, m.bw, x, nullptr, 1, 1, 0, m.rp,
                            static_cast<const int32_t*>(m.ci), m.v, block_rows, m.bias, y,
                            m.rows, false, 0, kAdaptive);
    return;
  }
  const int64_t chunks = static_cast<int64_t>(m.splits.size()) - 1;
  parallel_chunks(chunks, kAdaptive, [&](int64_t c) {
    gru_matvec_rows(m, m.splits[c], m.splits[c + 1], x, y);
  });
}

GruMatrix gru_matrix(const std::vector<at::Tensor>& t, const c10::optional<at::Tensor>& bias,
                     int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK(t.size() == 1 || t.size() == 3, "gru_generate: ", name,
              " must be [weight] (dense) or [crow, col, values] (CSR, or BSR with 3-D values)");
  GruMatrix m;
  m.rows = rows;
  m.cols = cols;
  int64_t work = rows * cols;
  if (t.size() == 1) {
    TORCH_CHECK(t[0].scalar_type() == at::kFloat && t[0].is_contiguous() && t[0].dim() == 2 &&
                    t[0].size(0) == rows && t[0].size(1) == cols,
                "gru_generate: ", name, " must be a contiguous float32 (", rows, ", ", cols,
                ") weight, got ", t[0].sizes());
    m.v = t[0].data_ptr<float>();
  } else {
    const at::Tensor &crow = t[0], &col = t[1], &values = t[2];
    if (values.dim() == 3) {
      m.bh = values.size(1);
      m.bw = values.size(2);
      // The block kernels read whole blocks of x: the width must be a multiple of theirs.
      TORCH_CHECK(cols % m.bw == 0, "gru_generate: ", name, " has ", cols,
                  " inputs, not a multiple of its blocks' width ", m.bw);
    }
    const int64_t block_rows = (rows + m.bh - 1) / m.bh;
    TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous() &&
                    crow.numel() == block_rows + 1,
                "gru_generate: ", name, " crow must be int32 (", block_rows + 1, ",)");
    TORCH_CHECK(values.scalar_type() == at::kFloat && values.is_contiguous() &&
                    col.is_contiguous() && col.numel() * m.bh * m.bw == values.numel(),
                "gru_generate: ", name, " col/values must be contiguous, one per block");
    TORCH_CHECK(col.scalar_type() == at::kShort || col.scalar_type() == at::kInt,
                "gru_generate: ", name, " col must be int16 or int32");
    m.rp = crow.data_ptr<int32_t>();
    m.ci16 = col.scalar_type() == at::kShort;
    m.ci = col.data_ptr();
    m.v = values.data_ptr<float>();
    work = values.numel() + rows;
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() &&
                    bias->numel() == rows,
                "gru_generate: ", name, " bias must be contiguous float32 (", rows, ",)");
    m.bias = bias->data_ptr<float>();
  }
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = work < kSerialWork || threads <= 1
                             ? 1
                             : std::max<int64_t>(1, std::min(rows, threads * kChunksPerThread));
  if (m.bh * m.bw > 1) {
    // unused: bsr_dispatch splits the block rows
  } else if (m.rp != nullptr) {
    m.splits = balanced_splits(m.rp, rows, chunks);
  } else {
    for (int64_t c = 0; c <= chunks; ++c) m.splits.push_back(rows * c / chunks);
  }
  return m;
}

// One GRU layer's new state from its gate pre-activations, 8 units at a time (torch.nn.GRU's
// order: reset, update, new): r = σ(gx_r + gh_r), z = σ(gx_z + gh_z),
// n = tanh(gx_n + r gh_n) = 1 - 2 / (e^{2a} + 1), h = (1 - z) n + z h.
void gru_gates(const float* gx, const float* gh, float* h, int64_t H) {
  int64_t j = 0;
  auto load = [](const float* p) { return *reinterpret_cast<const v8u*>(p); };
  for (; j + 8 <= H; j += 8) {
    const v8 r = 1.f / (1.f + exp8(-(load(gx + j) + load(gh + j))));
    const v8 z = 1.f / (1.f + exp8(-(load(gx + H + j) + load(gh + H + j))));
    const v8 n = 1.f - 2.f / (exp8(2.f * (load(gx + 2 * H + j) + r * load(gh + 2 * H + j))) + 1.f);
    *reinterpret_cast<v8u*>(h + j) = (1.f - z) * n + z * load(h + j);
  }
  for (; j < H; ++j) {
    const float r = 1.f / (1.f + std::exp(-(gx[j] + gh[j])));
    const float z = 1.f / (1.f + std::exp(-(gx[H + j] + gh[H + j])));
    const float n = std::tanh(gx[2 * H + j] + r * gh[2 * H + j]);
    h[j] = (1.f - z) * n + z * h[j];
  }
}

// Index of the first cumulative weight above u * total (softmax(logits / temperature) in
// double); the last id when rounding leaves none above.
int64_t draw(const float* logits, int64_t V, double temperature, double u,
             std::vector<double>& cdf) {
  float top = logits[0];
  for (int64_t j = 1; j < V; ++j) top = std::max(top, logits[j]);
  double total = 0.0;
  for (int64_t j = 0; j < V; ++j) {
    total += std::exp((static_cast<double>(logits[j]) - top) / temperature);
    cdf[j] = total;
  }
  const double target = u * total;
  for (int64_t j = 0; j < V; ++j)
    if (cdf[j] > target) return j;
  return V - 1;
}

}  // namespace

// mats: per layer [ih, hh], then the output layer; each [weight] or [crow, col, values].
// biases: one per matrix (None allowed). embed: (V, E) float32. state: (layers, hidden)
// float32, updated in place. prompt: int64 ids fed first; uniforms: float64 (length,), one
// per sampled id. Returns the sampled ids (length,) int64.
at::Tensor gru_generate(const std::vector<std::vector<at::Tensor>>& mats,
                        const std::vector<c10::optional<at::Tensor>>& biases,
                        const at::Tensor& embed, at::Tensor state, const at::Tensor& prompt,
                        const at::Tensor& uniforms, double temperature) {
  TORCH_CHECK(embed.dim() == 2 && embed.scalar_type() == at::kFloat && embed.is_contiguous(),
              "gru_generate: embed must be a contiguous float32 (vocab, embed) table");
  TORCH_CHECK(state.dim() == 2 && state.scalar_type() == at::kFloat && state.is_contiguous(),
              "gru_generate: state must be a contiguous float32 (layers, hidden) tensor");
  TORCH_CHECK(prompt.dim() == 1 && prompt.scalar_type() == at::kLong && prompt.numel() > 0,
              "gru_generate: prompt must be a non-empty int64 (P,) tensor");
  TORCH_CHECK(uniforms.dim() == 1 && uniforms.scalar_type() == at::kDouble &&
                  uniforms.is_contiguous(),
              "gru_generate: uniforms must be a contiguous float64 (length,) tensor");
  TORCH_CHECK(temperature > 0, "gru_generate: temperature must be positive");
  const int64_t layers = state.size(0), H = state.size(1), V = embed.size(0);
  TORCH_CHECK(static_cast<int64_t>(mats.size()) == 2 * layers + 1 &&
                  biases.size() == mats.size(),
              "gru_generate: expected ", 2 * layers + 1, " matrices and biases for ", layers,
              " layers");
  std::vector<GruMatrix> m;
  for (int64_t k = 0; k < layers; ++k) {
    m.push_back(gru_matrix(mats[2 * k], biases[2 * k], 3 * H, k == 0 ? embed.size(1) : H, "ih"));
    m.push_back(gru_matrix(mats[2 * k + 1], biases[2 * k + 1], 3 * H, H, "hh"));
  }
  m.push_back(gru_matrix(mats.back(), biases.back(), V, H, "output"));
  const int64_t* ids = prompt.data_ptr<int64_t>();
  for (int64_t i = 0; i < prompt.numel(); ++i)
    TORCH_CHECK(ids[i] >= 0 && ids[i] < V, "gru_generate: prompt id ", ids[i],
                " is outside the vocabulary of ", V);
  const int64_t P = prompt.numel(), length = uniforms.numel();
  const double* u = uniforms.data_ptr<double>();
  const float* table = embed.data_ptr<float>();
  float* h = state.data_ptr<float>();
  std::vector<float> gx(3 * H), gh(3 * H), logits(V);
  std::vector<double> cdf(V);
  at::Tensor out = at::empty({length}, prompt.options());
  int64_t* sampled = out.data_ptr<int64_t>();
  int64_t id = ids[0];
  for (int64_t step = 0; step < P - 1 + length; ++step) {
    const float* x = table + id * embed.size(1);
    for (int64_t k = 0; k < layers; ++k) {
      float* hk = h + k * H;
      gru_matvec(m[2 * k], x, gx.data());
      gru_matvec(m[2 * k + 1], hk, gh.data());
      gru_gates(gx.data(), gh.data(), hk, H);
      x = hk;
    }
    if (step + 1 < P) {  // still reading the prompt: its next id, no draw
      id = ids[step + 1];
      continue;
    }
    gru_matvec(m.back(), x, logits.data());
    const int64_t s = step - (P - 1);
    id = draw(logits.data(), V, temperature, u[s], cdf);
    sampled[s] = id;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The weight gradient of a sparse training step at the kept positions only (SDDMM):
// out[k] = sum_b dY[b, row_k] * X[b, col_k], for W in CSR (issue 27).
//
// The batch is taken TB rows at a time (the slice of xT, in x TB, kept in L2); X's slice is
// transposed to xT (in, TB), so each nonzero adds a dot product of two contiguous rows of TB
// floats: a 16-row group of dY's columns transposed into a small buffer (16 x TB, read again
// by every nonzero of those rows), and the row col_k of xT.

namespace {

constexpr int64_t kSddmmGroup = 16;  // output rows whose dY columns are transposed together
// Batch rows per pass: a pass's slice of xT (in x TB floats) is read by every nonzero, so it
// should stay in L2; but short dot products cost their reductions. -1 chooses TB from in:
// about 512 KB of xT, at least 128 rows (measured with set_sddmm_batch_block: 4096 tokens
// by a 128-wide input 1.6x faster in passes of 512-1024 than whole; batch 128 by 4096 inputs
// 1.5-3x slower in passes of 16-32 than whole). 0 takes the whole batch.
std::atomic<int64_t> g_sddmm_batch_block{-1};

inline int64_t sddmm_batch_block(int64_t in, int64_t B) {
  int64_t tb = g_sddmm_batch_block.load();
  if (tb < 0) tb = std::max<int64_t>(128, (131072 / std::max<int64_t>(in, 1)) / 16 * 16);
  return tb == 0 ? B : std::min(tb, B);
}

// Adds the dot products over batch rows [b0, b0 + tb) to dst for the rows [r0, r1).
template <typename I>
void sddmm_rows(int64_t r0, int64_t r1, const int32_t* rp, const I* ci, const float* gy,
                int64_t out, const float* xT, int64_t tb, float* buf, float* dst) {
  for (int64_t g0 = r0; g0 < r1; g0 += kSddmmGroup) {
    const int64_t g1 = std::min(g0 + kSddmmGroup, r1);
    if (rp[g1] == rp[g0]) continue;  // no kept weight in these rows
    transpose_into(gy + g0, tb, g1 - g0, out, buf, tb);
    for (int64_t r = g0; r < g1; ++r) {
      const float* gr = buf + (r - g0) * tb;
      for (int64_t j = rp[r]; j < rp[r + 1]; ++j)
        dst[j] += dense_dot(gr, xT + static_cast<int64_t>(ci[j]) * tb, tb);
    }
  }
}

}  // namespace

// grad_out: (B, out) float32; x: (B, in) float32; crow (out + 1,) int32; col (nnz,) int16 or
// int32. Returns (nnz,) float32: (grad_out.T @ x) at the kept positions, in CSR order.
at::Tensor csr_sddmm(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& crow,
                     const at::Tensor& col, int64_t threading) {
  TORCH_CHECK(grad_out.dim() == 2 && x.dim() == 2 && grad_out.size(0) == x.size(0),
              "csr_sddmm: grad_out (B, out) and x (B, in) must share their batch, got ",
              grad_out.sizes(), " and ", x.sizes());
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat,
              "csr_sddmm: float32 only");
  TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous() &&
                  crow.numel() == grad_out.size(1) + 1,
              "csr_sddmm: crow must be int32 (out + 1,)");
  TORCH_CHECK(col.is_contiguous() &&
                  (col.scalar_type() == at::kShort || col.scalar_type() == at::kInt),
              "csr_sddmm: col must be contiguous int16 or int32");
  const int64_t B = x.size(0), in = x.size(1), out = grad_out.size(1);
  const int32_t* rp = crow.data_ptr<int32_t>();
  TORCH_CHECK(rp[out] == col.numel(), "csr_sddmm: crow ends at ", rp[out], " but col holds ",
              col.numel(), " indices");
  at::Tensor dst = at::zeros({col.numel()}, grad_out.options());
  if (B == 0 || col.numel() == 0) return dst;
  const at::Tensor gy = grad_out.contiguous(), xc = x.contiguous();
  const int64_t TB = sddmm_batch_block(in, B);
  at::Tensor xT = at::empty({in, TB}, x.options());
  if (threading < 0) threading = kAdaptive;
  const int64_t threads = at::get_num_threads();
  const int64_t work = static_cast<int64_t>(rp[out]) * B;
  const int64_t chunks =
      work < kSerialWork || threads <= 1 || threading == kSerial
          ? 1
          : std::max<int64_t>(1, std::min<int64_t>((out + kSddmmGroup - 1) / kSddmmGroup,
                                                   threads * kChunksPerThread));
  const auto splits = balanced_splits(rp, out, chunks);
  float* xt = xT.data_ptr<float>();
  float* d = dst.data_ptr<float>();
  std::vector<float> bufs(static_cast<size_t>(chunks * kSddmmGroup * TB));
  for (int64_t b0 = 0; b0 < B; b0 += TB) {
    const int64_t tb = std::min(TB, B - b0);
    transpose_into(xc.data_ptr<float>() + b0 * in, tb, in, in, xt, tb);
    const float* g = gy.data_ptr<float>() + b0 * out;
    parallel_chunks(chunks, threading, [&](int64_t c) {
      float* buf = bufs.data() + c * kSddmmGroup * TB;
      if (col.scalar_type() == at::kShort)
        sddmm_rows<int16_t>(splits[c], splits[c + 1], rp, col.data_ptr<int16_t>(), g, out, xt,
                            tb, buf, d);
      else
        sddmm_rows<int32_t>(splits[c], splits[c + 1], rp, col.data_ptr<int32_t>(), g, out, xt,
                            tb, buf, d);
    });
  }
  return dst;
}

// ---------------------------------------------------------------------------------------
// y = g @ W for W in CSR (out, in) and g (B, out): the input gradient of a sparse Linear read
// from W's own rows (issue 27). The transposed layout (CSR of W^T) gathers: each of its rows
// sums over up to `out` inputs, and with out in the thousands (a vocabulary projection) the
// packed input panels no longer fit in cache. Here each nonzero W[r, c] scatters
// g[:, r] * W[r, c] into the accumulator row c, for 16 batch rows at a time: g's block is
// transposed to gT (out, 16), the accumulators (in, 16) stay in L1 when in is small, and the
// block's result is transposed into y. Used where in * 16 floats fit in L1 (in <= 512).

namespace {

constexpr int64_t kScatterRows = 16;

template <typename I>
void scatter_block(const float* gT, const int32_t* rp, const I* ci, const float* v,
                   int64_t out, float* acc) {
  for (int64_t r = 0; r < out; ++r) {
    const int64_t e = rp[r + 1];
    int64_t j = rp[r];
    if (j == e) continue;
    const v8 g0 = *reinterpret_cast<const v8u*>(gT + r * kScatterRows);
    const v8 g1 = *reinterpret_cast<const v8u*>(gT + r * kScatterRows + 8);
    for (; j < e; ++j) {
      float* a = acc + static_cast<int64_t>(ci[j]) * kScatterRows;
      const float w = v[j];
      *reinterpret_cast<v8u*>(a) = *reinterpret_cast<v8u*>(a) + w * g0;
      *reinterpret_cast<v8u*>(a + 8) = *reinterpret_cast<v8u*>(a + 8) + w * g1;
    }
  }
}

}  // namespace

// g: (B, out) float32; crow (out + 1,) int32; col (nnz,) int16/int32; values (nnz,) float32.
// Returns y = g @ W: (B, in_features) float32.
at::Tensor csr_matmul_scatter(const at::Tensor& g, const at::Tensor& crow, const at::Tensor& col,
                              const at::Tensor& values, int64_t in_features, int64_t threading) {
  TORCH_CHECK(g.dim() == 2 && g.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat,
              "csr_matmul_scatter: g must be 2-D float32 (batch, out)");
  TORCH_CHECK(crow.scalar_type() == at::kInt && crow.is_contiguous() &&
                  crow.numel() == g.size(1) + 1,
              "csr_matmul_scatter: crow must be int32 (out + 1,)");
  TORCH_CHECK(col.is_contiguous() && values.is_contiguous() && col.numel() == values.numel() &&
                  (col.scalar_type() == at::kShort || col.scalar_type() == at::kInt),
              "csr_matmul_scatter: col (int16/int32) and values must be contiguous, one per "
              "nonzero");
  const int64_t B = g.size(0), out = g.size(1), in = in_features;
  at::Tensor y = at::empty({B, in}, g.options());
  if (B == 0 || in == 0) return y;
  const at::Tensor gc = g.contiguous();
  const int64_t blocks = (B + kScatterRows - 1) / kScatterRows;
  if (threading < 0) threading = kAdaptive;
  const int64_t threads = at::get_num_threads();
  const int64_t work = (values.numel() + out) * B;
  const int64_t chunks = work < kSerialWork || threads <= 1 || threading == kSerial
                             ? 1
                             : std::min<int64_t>(blocks, threads * kChunksPerThread);
  const int32_t* rp = crow.data_ptr<int32_t>();
  const float* v = values.data_ptr<float>();
  const float* gp = gc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  parallel_chunks(chunks, threading, [&](int64_t c) {
    std::vector<float> gT(static_cast<size_t>(out * kScatterRows), 0.f);
    std::vector<float> acc(static_cast<size_t>(in * kScatterRows));
    for (int64_t blk = blocks * c / chunks; blk < blocks * (c + 1) / chunks; ++blk) {
      const int64_t b0 = blk * kScatterRows, nb = std::min(kScatterRows, B - b0);
      transpose_into(gp + b0 * out, nb, out, out, gT.data(), kScatterRows);
      std::fill(acc.begin(), acc.end(), 0.f);
      if (col.scalar_type() == at::kShort)
        scatter_block<int16_t>(gT.data(), rp, col.data_ptr<int16_t>(), v, out, acc.data());
      else
        scatter_block<int32_t>(gT.data(), rp, col.data_ptr<int32_t>(), v, out, acc.data());
      transpose_into(acc.data(), in, nb, kScatterRows, yp + b0 * in, in);
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("csr_linear", &csr_linear, "y = x @ W.T + b with W in CSR (fp32)", py::arg("x"),
        py::arg("crow"), py::arg("col"), py::arg("values"), py::arg("bias"),
        py::arg("in_features"), py::arg("variant") = -1, py::arg("threading") = -1,
        py::arg("activation") = 0, py::arg("layout") = std::vector<at::Tensor>{},
        py::arg("residual") = py::none(), py::arg("norm_weight") = py::none(),
        py::arg("norm_bias") = py::none(), py::arg("eps") = -1.0);
  m.def("csr_panel_layout", &csr_panel_layout,
        "The count-class layout of a CSR weight for products of 128 rows or more",
        py::arg("crow"), py::arg("col"), py::arg("values"), py::arg("in_features"),
        py::arg("kblock") = -1, py::arg("parts") = 1);
  m.def("csr_pattern_chain", &csr_pattern_chain,
        "y[:rows] = act2(W2 act1(W1 x + b1) + b2) through two compiled pattern kernels",
        py::arg("x"), py::arg("first"), py::arg("bias1"), py::arg("act1"), py::arg("second"),
        py::arg("bias2"), py::arg("act2"), py::arg("y"), py::arg("rows"), py::arg("threading"),
        py::arg("residual") = py::none(), py::arg("norm_weight") = py::none(),
        py::arg("norm_bias") = py::none(), py::arg("eps") = -1.0);
  m.def("csr_pattern_kernel", &csr_pattern_kernel,
        "Code compiled for a CSR weight's pattern, for products of 64 rows or more; "
        "csr_linear takes it as its layout",
        py::arg("crow"), py::arg("col"), py::arg("values"), py::arg("in_features"),
        py::arg("group_rows") = -1, py::arg("kblock") = -1, py::arg("parts") = 1);
  m.attr("HAVE_PATTERN_KERNEL") = static_cast<bool>(SB_HAVE_PATTERN_JIT);
  // csr_conv2d takes a compiled pattern kernel as its layout (conv_pattern.h).
  m.attr("HAVE_CONV_PATTERN") = static_cast<bool>(SB_HAVE_PATTERN_JIT);
  // csr_linear and csr_pattern_chain apply LayerNorm(y + residual) to their rows (eps >= 0).
  m.attr("HAVE_NORM_EPILOGUE") = static_cast<bool>(SB_HAVE_AVX512);
  m.def("pool_stats", [] { return WorkPool::instance().stats(); },
        "(pooled jobs, stalls detected, jobs run serially while backing off from a stall)");
  m.def("adaptive_stats", [] {
          Adaptive& a = adaptive();
          return std::make_tuple(a.jobs.load(), a.stalls.load(), a.serial_jobs.load());
        },
        "(parallel jobs, stalls detected, jobs run serially while backing off), adaptive mode");
  m.def("set_spmm_panel", [](int64_t width) { g_spmm_panel.store(width); },
        "Batch columns per packed panel of the CSR SpMM (0: no panels, -1: chosen from in).");
  m.def("set_bsr_few_rows", [](bool on) { g_few_rows.store(on); },
        "whether 16x1 blocks at 2-16 batch rows run the kernel that vectorizes over the rows",
        py::arg("on"));
  m.def("set_stream_min_bytes", [](int64_t n) { g_stream_min_bytes.store(n); },
        "outputs above this many bytes are written by non-temporal stores (-1: the default)",
        py::arg("bytes"));
  m.def("set_spmm_kblock", [](int64_t kb) { g_spmm_kblock.store(kb); },
        "Input features per block of a packed panel (0: no blocks, -1: chosen from the panel).");
  m.def("set_pool_spin_us", [](int64_t us) { WorkPool::spin_us.store(us); },
        "How long an idle pool helper spins before it sleeps (microseconds).");
  m.def("bsr_linear", &bsr_linear, "y = x @ W.T + b with W in BSR (fp32)", py::arg("x"),
        py::arg("brp"), py::arg("bci"), py::arg("values"), py::arg("bias"), py::arg("out"),
        py::arg("in_features"), py::arg("threading") = -1);
  m.def("bsr_matmul_cols", &bsr_matmul_cols, "Y[n] = W @ X[n] + b with W in BSR (fp32)",
        py::arg("X"), py::arg("brp"), py::arg("bci"), py::arg("values"), py::arg("bias"),
        py::arg("out"), py::arg("threading") = -1);
  m.def("bsr_conv2d_s1", &bsr_conv2d_s1, "direct stride-1 convolution with a BSR weight",
        py::arg("x"), py::arg("brp"), py::arg("bci"), py::arg("values"), py::arg("bias"),
        py::arg("out"), py::arg("kh"), py::arg("kw"), py::arg("ph"), py::arg("pw"),
        py::arg("dh"), py::arg("dw"), py::arg("threading") = -1);
  m.def("conv_offsets", &conv_offsets,
        "Input offset of each nonzero of a CSR conv weight, for C x H x W images",
        py::arg("col"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("geometry"));
  m.def("attention_forward", &attention_forward,
        "softmax(q k^T * scale) v per (batch, head), (B, H, S, D) float32, S and D multiples of 16",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("scale"), py::arg("threading") = -1);
  m.def("layer_norm_rows", &layer_norm_rows,
        "layer norm over the last dimension of contiguous float32 rows (a multiple of 16 wide)",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("threading") = -1);
  m.def("max_pool2d_nchw", &max_pool2d_nchw, "max pooling of NCHW float32 images",
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("threading") = -1);
  m.def("csr_conv2d", &csr_conv2d, "direct convolution (any stride) with a CSR weight",
        py::arg("x"), py::arg("crow"), py::arg("offsets"), py::arg("values"), py::arg("bias"),
        py::arg("out"), py::arg("geometry"), py::arg("relu") = false, py::arg("threading") = -1,
        py::arg("residual") = py::none(), py::arg("layout") = std::vector<at::Tensor>{});
  m.def("conv_layout_pays",
        [](int64_t nnz, int64_t C, int64_t H, int64_t W, std::vector<int64_t> geometry) {
#if SB_HAVE_AVX512
          const ConvGeometry g = conv_geometry(C, H, W, geometry);
          return conv_layout_pays(g, nnz, conv_feature_offsets(g));
#else
          return false;
#endif
        },
        "whether csr_conv2d would run this convolution through a panel layout",
        py::arg("nnz"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("geometry"));
  m.def("csr_sddmm", &csr_sddmm,
        "(grad_out.T @ x) at the kept positions of a CSR pattern, in CSR order (fp32)",
        py::arg("grad_out"), py::arg("x"), py::arg("crow"), py::arg("col"),
        py::arg("threading") = -1);
  m.def("csr_matmul_scatter", &csr_matmul_scatter,
        "y = g @ W with W in CSR (out, in): each nonzero scatters into its input's column",
        py::arg("g"), py::arg("crow"), py::arg("col"), py::arg("values"),
        py::arg("in_features"), py::arg("threading") = -1);
  m.def("set_sddmm_batch_block", [](int64_t tb) { g_sddmm_batch_block.store(tb); },
        "Batch rows per pass of csr_sddmm (-1: chosen from the input width, 0: all).");
  m.def("gru_generate", &gru_generate,
        "Sample a GRU language model at batch 1: prompt, then one id per uniform",
        py::arg("mats"), py::arg("biases"), py::arg("embed"), py::arg("state"),
        py::arg("prompt"), py::arg("uniforms"), py::arg("temperature"));
  m.attr("SPMV_VARIANTS") = py::make_tuple("scalar", "gather16", "gather8");
  m.attr("THREADING") = py::make_tuple("serial", "openmp", "pool", "adaptive");
  m.attr("HAVE_AVX512") = static_cast<bool>(SB_HAVE_AVX512);
}
