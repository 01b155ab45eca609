// CUDA's thread model on the host, for a third build of the kernels
// (KILN_HOST_SIMT, tests only): each block runs its threads as fibers on
// the OS thread that runs the block, in warps of 32.
//
// The plain host build runs one thread per block, so a kernel's split of
// its work over threads and warps, its shared memory, its barriers and its
// shuffles never run on a machine without a GPU. Here they do:
//
// - KILN_THREAD is the fiber's index and KILN_THREADS the block's size
//   (KILN_BLOCK_THREADS for the library kernels, a generated kernel's own);
// - KILN_SHARED is `static thread_local`: one copy per OS thread, which
//   runs one block at a time;
// - a fiber runs until it waits: at KILN_SYNC() (every live thread of the
//   block), KILN_SYNCWARP() or a shuffle (every lane of its warp);
// - the order fibers take turns is KILN_SIMT_ORDER: `forward` (the
//   default), `reverse`, or `shuffle` (a new permutation every round, the
//   same in every run: seeded by the block and the round). A missing
//   barrier shows as a stale read in one order or another.
//
// Errors a GPU may not report are fatal here, with the block and thread:
//
// - a barrier that can never complete (threads of the block wait at a
//   block barrier while others of it wait at a warp barrier);
// - a warp barrier or shuffle after lanes of the warp have returned;
// - lanes of a warp at different warp operations (a shuffle, a __syncwarp).
//
// Under AddressSanitizer every switch is announced to it
// (__sanitizer_start/finish_switch_fiber), so that it knows which stack
// runs and checks the kernels' fibers as any other code.
#ifndef KILN_KERNELS_HOST_SIMT_H
#define KILN_KERNELS_HOST_SIMT_H

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#if !defined(__x86_64__)
#error "KILN_HOST_SIMT switches fibers with x86-64 code"
#endif

#if defined(__SANITIZE_ADDRESS__)
#define KILN_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KILN_SIMT_ASAN 1
#endif
#endif
#if defined(KILN_SIMT_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

// kiln_simt_switch(from, to): saves the callee-saved registers and the
// floating-point control words on the current stack, stores the stack
// pointer in *from and resumes the stack `to` saved (or one that
// prepareStack laid out, which enters kiln_simt_start). swapcontext does
// the same plus two system calls for the signal mask, which made a block's
// barriers cost more than its work. In a COMDAT group, weak: every test
// translation unit that includes this header may define it.
asm(R"(
  .pushsection .text.kiln_simt_switch,"axG",@progbits,kiln_simt_switch,comdat
  .weak kiln_simt_switch
  .type kiln_simt_switch, @function
kiln_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kiln_simt_switch, .-kiln_simt_switch
  .weak kiln_simt_start
  .type kiln_simt_start, @function
kiln_simt_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size kiln_simt_start, .-kiln_simt_start
  .popsection
)");
extern "C" void kiln_simt_switch(void **from, void *to);
extern "C" void kiln_simt_start();

namespace kiln::simt {

constexpr int kWarpSize = 32;

/// Where a switch goes, for AddressSanitizer: the stack about to run.
/// `fakeStack` keeps the leaving stack's fake frames (nullptr: it never
/// runs again).
struct StackRange {
  const void *bottom = nullptr;
  size_t size = 0;
};
inline void switchingTo(void **fakeStack, StackRange to) {
#if defined(KILN_SIMT_ASAN)
  __sanitizer_start_switch_fiber(fakeStack, to.bottom, to.size);
#else
  (void)fakeStack, (void)to;
#endif
}
/// After a switch, on the stack it went to: `from` becomes the stack that
/// ran before (where given).
inline void switched(void *fakeStack, StackRange *from) {
#if defined(KILN_SIMT_ASAN)
  __sanitizer_finish_switch_fiber(fakeStack, from ? &from->bottom : nullptr,
                                  from ? &from->size : nullptr);
#else
  (void)fakeStack, (void)from;
#endif
}

/// A new stack's saved state for kiln_simt_switch: it enters
/// kiln_simt_start, which calls entry(argument) with the stack aligned as
/// a call wants it.
inline void *prepareStack(char *top, void (*entry)(void *), void *argument) {
  auto *a = reinterpret_cast<uint64_t *>(
      (reinterpret_cast<uintptr_t>(top) & ~uintptr_t{15}) - 16);
  uint32_t mxcsr = __builtin_ia32_stmxcsr();
  uint16_t controlWord;
  asm volatile("fnstcw %0" : "=m"(controlWord));
  a[-1] = reinterpret_cast<uint64_t>(&kiln_simt_start); // ret
  a[-2] = 0;                                            // rbp
  a[-3] = 0;                                            // rbx
  a[-4] = reinterpret_cast<uint64_t>(argument);         // r12
  a[-5] = reinterpret_cast<uint64_t>(entry);            // r13
  a[-6] = 0;                                            // r14
  a[-7] = 0;                                            // r15
  a[-8] = mxcsr | uint64_t{controlWord} << 32;
  return a - 8;
}

/// Runs blocks of `threads` fibers, one block at a time (one runner per OS
/// thread).
class BlockRunner {
public:
  explicit BlockRunner(int threads) : threads_(threads) {
    page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t bytes = static_cast<size_t>(threads_) * (kStackBytes + page_);
    void *stacks = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stacks == MAP_FAILED)
      fail("cannot map the fibers' stacks");
    stacks_ = static_cast<char *>(stacks);
    // A guard page below each stack: an overflow faults, never corrupts.
    for (int t = 0; t < threads_; ++t)
      mprotect(stacks_ + t * (kStackBytes + page_), page_, PROT_NONE);
    fibers_ = std::make_unique<Fiber[]>(threads_);
    exchange_ = std::make_unique<Slot[]>(threads_);
    turns_ = std::make_unique<int[]>(threads_);
    const char *order = std::getenv("KILN_SIMT_ORDER");
    order_ = !order                               ? Order::Forward
             : std::strcmp(order, "reverse") == 0 ? Order::Reverse
             : std::strcmp(order, "shuffle") == 0 ? Order::Shuffle
                                                  : Order::Forward;
  }
  ~BlockRunner() {
    munmap(stacks_, static_cast<size_t>(threads_) * (kStackBytes + page_));
  }
  BlockRunner(const BlockRunner &) = delete;
  BlockRunner &operator=(const BlockRunner &) = delete;

  /// Runs body() on every thread of block `block` (x, y, z: for messages).
  template <class Body> void run(const Body &body, int bx, int by, int bz) {
    block_[0] = bx, block_[1] = by, block_[2] = bz;
    body_ = &body;
    invoke_ = [](const void *b) { (*static_cast<const Body *>(b))(); };
    for (int t = 0; t < threads_; ++t) {
      Fiber &f = fibers_[t];
      f.stack = prepareStack(stacks_ + (t + 1) * (kStackBytes + page_),
                             &BlockRunner::entry, this);
      f.state = State::Ready;
    }
    for (uint64_t round = 0;; ++round) {
      orderTurns(round);
      for (int i = 0; i < threads_; ++i) {
        int t = turns_[i];
        if (fibers_[t].state != State::Ready)
          continue;
        current_ = t;
        void *fakeStack = nullptr;
        switchingTo(&fakeStack, fiberStack(t));
        kiln_simt_switch(&scheduler_, fibers_[t].stack);
        switched(fakeStack, nullptr);
      }
      if (!release())
        break;
    }
    current_ = -1;
  }

  int thread() const { return current_; }
  int threads() const { return threads_; }

  void syncThreads() { wait(State::AtBlockBarrier); }
  void syncWarp() { wait(State::AtWarpBarrier); }

  /// The value of lane (this lane ^ laneMask) of the warp.
  template <class T> T shuffleXor(T value, int laneMask) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(Slot));
    std::memcpy(exchange_[current_].bytes, &value, sizeof(T));
    exchangeBarrier();
    int source = (current_ & ~(kWarpSize - 1)) | ((current_ ^ laneMask) & 31);
    T other;
    std::memcpy(&other, exchange_[source].bytes, sizeof(T));
    exchangeBarrier(); // the slots are free again
    return other;
  }

  /// Every lane's `value`, in lane order.
  template <class T> void allGather(const T &value, T *lanes) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(Slot));
    std::memcpy(exchange_[current_].bytes, &value, sizeof(T));
    exchangeBarrier();
    int first = current_ & ~(kWarpSize - 1);
    for (int lane = 0; lane < kWarpSize; ++lane)
      std::memcpy(&lanes[lane], exchange_[first + lane].bytes, sizeof(T));
    exchangeBarrier();
  }

private:
  enum class State : unsigned char {
    Ready,
    AtBlockBarrier,
    AtWarpBarrier,
    AtExchange,
    Done
  };
  struct Fiber {
    void *stack = nullptr; // where kiln_simt_switch resumes it
    State state = State::Done;
  };
  struct Slot {
    alignas(16) unsigned char bytes[32];
  };
  static constexpr size_t kStackBytes = size_t{256} << 10;

  static void entry(void *runner) {
    auto &r = *static_cast<BlockRunner *>(runner);
    switched(nullptr, &r.schedulerStack_);
    r.invoke_(r.body_);
    r.fibers_[r.current_].state = State::Done;
    switchingTo(nullptr, r.schedulerStack_);
    void *unused;
    kiln_simt_switch(&unused, r.scheduler_);
  }

  /// Fiber t's stack, above its guard page.
  StackRange fiberStack(int t) const {
    return {stacks_ + t * (kStackBytes + page_) + page_, kStackBytes};
  }

  enum class Order { Forward, Reverse, Shuffle };

  /// turns_: the order the threads take turns in this round.
  void orderTurns(uint64_t round) {
    for (int i = 0; i < threads_; ++i)
      turns_[i] = order_ == Order::Reverse ? threads_ - 1 - i : i;
    if (order_ != Order::Shuffle)
      return;
    // Fisher-Yates with splitmix64 of (block, round): reproducible.
    uint64_t state = (uint64_t(block_[0]) * 0x9e3779b97f4a7c15ull) ^
                     (uint64_t(block_[1]) << 20) ^ (uint64_t(block_[2]) << 40) ^
                     (round * 0xbf58476d1ce4e5b9ull);
    for (int i = threads_ - 1; i > 0; --i) {
      state += 0x9e3779b97f4a7c15ull;
      uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      int j = static_cast<int>(z % static_cast<uint64_t>(i + 1));
      int swap = turns_[i];
      turns_[i] = turns_[j];
      turns_[j] = swap;
    }
  }

  /// A warp barrier of an exchange (shuffle, gather): every lane of the
  /// warp must be at one, not at a plain __syncwarp.
  void exchangeBarrier() { wait(State::AtExchange); }

  void wait(State state) {
    fibers_[current_].state = state;
    void *fakeStack = nullptr;
    switchingTo(&fakeStack, schedulerStack_);
    kiln_simt_switch(&fibers_[current_].stack, scheduler_);
    switched(fakeStack, &schedulerStack_);
  }

  /// Lets the threads waiting at a barrier that is complete go on; false
  /// when every thread has returned. A barrier that can never complete is
  /// fatal.
  bool release() {
    bool released = false;
    for (int first = 0; first < threads_; first += kWarpSize) {
      int syncing = 0, exchanging = 0, done = 0;
      for (int t = first; t < first + kWarpSize; ++t) {
        syncing += fibers_[t].state == State::AtWarpBarrier;
        exchanging += fibers_[t].state == State::AtExchange;
        done += fibers_[t].state == State::Done;
      }
      int waiting = syncing + exchanging;
      if (waiting == 0 || waiting + done != kWarpSize)
        continue;
      if (done > 0)
        fail("a warp barrier or shuffle after lanes of the warp returned",
             first);
      if (syncing > 0 && exchanging > 0)
        fail("lanes of the warp meet at different warp operations (a "
             "shuffle and a __syncwarp)",
             first);
      for (int t = first; t < first + kWarpSize; ++t)
        fibers_[t].state = State::Ready;
      released = true;
    }
    if (released)
      return true;
    bool live = false, allAtBlockBarrier = true;
    for (int t = 0; t < threads_; ++t) {
      if (fibers_[t].state == State::Done)
        continue;
      live = true;
      allAtBlockBarrier &= fibers_[t].state == State::AtBlockBarrier;
    }
    if (!live)
      return false;
    if (!allAtBlockBarrier) {
      for (int t = 0; t < threads_; ++t)
        if (fibers_[t].state == State::AtWarpBarrier ||
            fibers_[t].state == State::AtExchange)
          fail("a barrier that can never complete: this thread waits at a "
               "warp barrier while others wait at the block's",
               t);
      fail("a barrier that can never complete");
    }
    for (int t = 0; t < threads_; ++t)
      if (fibers_[t].state == State::AtBlockBarrier)
        fibers_[t].state = State::Ready;
    return true;
  }

  [[noreturn]] void fail(const char *what, int thread = -1) const {
    std::fprintf(stderr, "kiln host SIMT: block (%d, %d, %d)%s%d: %s\n",
                 block_[0], block_[1], block_[2],
                 thread >= 0 ? ", thread " : "", thread >= 0 ? thread : 0,
                 what);
    std::abort();
  }

  int threads_;
  size_t page_ = 0;
  char *stacks_ = nullptr;
  std::unique_ptr<Fiber[]> fibers_;
  std::unique_ptr<Slot[]> exchange_;
  void *scheduler_ = nullptr;
  /// The stack run() is on (AddressSanitizer's, as a fiber first sees it).
  StackRange schedulerStack_;
  int current_ = -1;
  Order order_ = Order::Forward;
  std::unique_ptr<int[]> turns_;
  int block_[3] = {0, 0, 0};
  const void *body_ = nullptr;
  void (*invoke_)(const void *) = nullptr;
};

/// This OS thread's runner for blocks of `threads` threads (a multiple of
/// the warp size, at most 1024).
inline BlockRunner &runner(int threads) {
  static thread_local std::unique_ptr<BlockRunner> runners[32];
  if (threads <= 0 || threads % kWarpSize != 0 || threads > 1024) {
    std::fprintf(stderr, "kiln host SIMT: blocks of %d threads\n", threads);
    std::abort();
  }
  std::unique_ptr<BlockRunner> &r = runners[threads / kWarpSize - 1];
  if (!r)
    r = std::make_unique<BlockRunner>(threads);
  return *r;
}

inline thread_local BlockRunner *active = nullptr;

/// Runs body() as each of the `threads` threads of one block.
template <class Body>
void runBlock(int threads, int bx, int by, int bz, const Body &body) {
  BlockRunner &r = runner(threads);
  BlockRunner *outer = active;
  active = &r;
  r.run(body, bx, by, bz);
  active = outer;
}

inline int threadIndex() { return active->thread(); }
inline int threadCount() { return active->threads(); }
inline void syncThreads() { active->syncThreads(); }
inline void syncWarp() { active->syncWarp(); }
template <class T> T shuffleXor(T value, int laneMask) {
  return active->shuffleXor(value, laneMask);
}
template <class T> void allGather(const T &value, T *lanes) {
  active->allGather(value, lanes);
}

} // namespace kiln::simt

#endif // KILN_KERNELS_HOST_SIMT_H
