// What the generated fused kernels (codegen/FusedKernelEmitter.cpp) and the
// runtime's library kernels (runtime/kernels/*.h) build on. One kernel body
// compiles two ways:
//
// - as CUDA (nvcc or NVRTC): one thread block owns one token; the threads of
//   the block stride over the token's row, row reductions go through warp
//   shuffles and shared memory, and KILN_SYNC() is __syncthreads();
// - as host C++: one thread owns one token (the host entry spreads tokens
//   over OpenMP threads); KILN_THREAD is 0, KILN_THREADS 1 and KILN_SYNC()
//   does nothing, so the same loops run the whole row in order;
// - as host C++ with CUDA's threads (KILN_HOST_SIMT, HostSimt.h; tests
//   only): a block's threads are fibers, so that the split over threads
//   and warps, shared memory, barriers and shuffles run without a GPU.
//
// The functions follow the reference CPU kernels (runtime/src/cpu) in what
// they compute, operation for operation, so that the host build matches them
// except for the order of sums. Every function is called by all threads of
// the block with the same arguments; the caller syncs between two calls (an
// output is read by other threads only after a KILN_SYNC()).
//
// NVRTC compiles this without host headers, hence the integer typedefs and
// bit-level conversions instead of <cstdint> and cuda_bf16.h.
#ifndef KILN_FUSED_PRELUDE_H
#define KILN_FUSED_PRELUDE_H

#if defined(__CUDACC_RTC__)
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef unsigned short uint16_t;
#else
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#endif

// KILN_HOST_FN: shape arithmetic both the kernels and the executor call.
#if defined(__CUDACC__)
#define KILN_HOST_FN __host__ __device__ inline
#else
#define KILN_HOST_FN inline
#endif

/// Threads per block of the CUDA kernels: a multiple of the warp size.
#ifndef KILN_BLOCK_THREADS
#define KILN_BLOCK_THREADS 128
#endif

// KILN_SIMT: the kernel runs with CUDA's threads, warps and shared memory:
// on the GPU, or on the host under KILN_HOST_SIMT (HostSimt.h), a build
// for tests only. Without it a host block is one thread.
#if defined(__CUDACC__)
#define KILN_SIMT 1
#define KILN_FN __device__ __forceinline__
#define KILN_THREAD static_cast<int>(threadIdx.x)
#define KILN_THREADS static_cast<int>(blockDim.x)
#define KILN_SYNC() __syncthreads()
#define KILN_SHARED __shared__
#define KILN_TABLE __constant__ const
#define KILN_SHFL_XOR(value, laneMask)                                         \
  __shfl_xor_sync(0xffffffffu, value, laneMask)
#elif defined(KILN_HOST_SIMT)
#include "HostSimt.h"
#define KILN_SIMT 1
#define KILN_FN inline
#define KILN_THREAD (::kiln::simt::threadIndex())
#define KILN_THREADS (::kiln::simt::threadCount())
#define KILN_SYNC() ::kiln::simt::syncThreads()
#define KILN_SHARED static thread_local
#define KILN_TABLE static const
#define KILN_SHFL_XOR(value, laneMask) ::kiln::simt::shuffleXor(value, laneMask)
#else
#define KILN_SIMT 0
#define KILN_FN inline
#define KILN_THREAD 0
#define KILN_THREADS 1
#define KILN_SYNC() ((void)0)
#define KILN_SHARED
#define KILN_TABLE static const
#endif

// The host SIMT build's kernels live in their own inline namespace, so that
// a test binary links them beside the runtime's plain host build.
#if defined(KILN_HOST_SIMT)
#define KILN_KERNELS_BEGIN                                                     \
  namespace kiln {                                                             \
  inline namespace host_simt {
#define KILN_KERNELS_END                                                       \
  }                                                                            \
  }
#else
#define KILN_KERNELS_BEGIN namespace kiln {
#define KILN_KERNELS_END }
#endif

KILN_KERNELS_BEGIN

/// A block's index in its grid (CUDA's blockIdx).
struct Dim3 {
  int x, y, z;
};

/// The first thing every kernel does (library and generated): lets the next
/// kernel in the stream be launched now, then waits until the kernels
/// before this one have finished and their writes are visible. Launched
/// with programmatic stream serialization (sm_90+; CudaExecutor's
/// KILN_PDL), a kernel's launch and block scheduling thus overlap the tail
/// of the one before; launched without it, both instructions do nothing.
/// Kernels that read weights ask for them in between (prefetchToL2), so
/// their first loads overlap that tail too.
KILN_FN void launchDependentKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
KILN_FN void awaitPrecedingWrites() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
KILN_FN void awaitPrecedingKernels() {
  launchDependentKernels();
  awaitPrecedingWrites();
}

#if !defined(__CUDACC__)
/// Tests: called with each range a host build's prefetchToL2 is given.
inline void (*hostPrefetchObserver)(const void *at, long long bytes) = nullptr;
#endif

/// Asks the L2 for the whole 16-byte granules of [at, at + bytes) without
/// waiting for them (sm_90's bulk prefetch), from the block's thread 0.
/// A block calls it for the weights it will read before it awaits the
/// kernels before it: no kernel writes weights, so they may stream in while
/// those kernels finish, the latency-bound ones (a norm, an attention
/// merge) included. A hint: no result depends on it. Host builds read the
/// range's first and last bytes instead, so that a range past its tensor
/// fails under AddressSanitizer.
KILN_FN void prefetchToL2(const void *at, int64_t bytes) {
  if (bytes <= 0 || KILN_THREAD != 0)
    return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint64_t begin = (reinterpret_cast<uint64_t>(at) + 15) & ~uint64_t{15};
  uint64_t end = (reinterpret_cast<uint64_t>(at) + bytes) & ~uint64_t{15};
  // The size operand is 32-bit; a block's weights are far below 4 GiB, and
  // a larger range is asked for in part (a hint either way).
  uint64_t size = end > begin ? end - begin : 0;
  if (size > 0xfffffff0u)
    size = 0xfffffff0u;
  if (size > 0)
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(begin),
                 "r"(static_cast<uint32_t>(size)));
#elif !defined(__CUDACC__)
  const volatile unsigned char *range = static_cast<const unsigned char *>(at);
  (void)range[0];
  (void)range[bytes - 1];
  if (hostPrefetchObserver)
    hostPrefetchObserver(at, bytes);
#else
  (void)at;
#endif
}

/// Part `part` of `parts` of prefetchToL2(at, bytes), cut at 16-byte
/// offsets: the blocks of a generated kernel share a weight every one of
/// them reads (a router's, a norm's), so that at one token it is asked for
/// whole and at many once.
KILN_FN void prefetchShareToL2(const void *at, int64_t bytes, int64_t part,
                               int64_t parts) {
  int64_t begin = bytes * part / parts / 16 * 16;
  int64_t end =
      part + 1 == parts ? bytes : bytes * (part + 1) / parts / 16 * 16;
  prefetchToL2(static_cast<const unsigned char *>(at) + begin, end - begin);
}

#if !defined(__CUDACC__)
/// The i-th of a launch's `blocks` blocks that a host build runs: in order,
/// or last first under KILN_HOST_BLOCK_ORDER=reverse (tests). A GPU runs a
/// launch's blocks in any order and at once, so a block that reads what
/// another block of the same launch writes races there; in reverse order
/// it reads something else, and a test against the CPU kernels fails.
inline long long hostBlockIndex(long long i, long long blocks) {
  static const bool reverse = [] {
    const char *order = getenv("KILN_HOST_BLOCK_ORDER");
    return order && strcmp(order, "reverse") == 0;
  }();
  return reverse ? blocks - 1 - i : i;
}

/// One block on the host: body() once, or as each of `threads` threads
/// under KILN_HOST_SIMT.
template <class Body>
inline void runHostBlock(int threads, Dim3 block, const Body &body) {
#if defined(KILN_HOST_SIMT)
  ::kiln::simt::runBlock(threads, block.x, block.y, block.z, body);
#else
  (void)threads;
  (void)block;
  body();
#endif
}
/// A generated kernel's block for one token.
template <class Body>
inline void runHostBlock(int threads, int64_t token, const Body &body) {
  runHostBlock(threads, Dim3{static_cast<int>(token), 0, 0}, body);
}

/// Every block of `grid` (body(block)), spread over OpenMP threads, each
/// with the library kernels' KILN_BLOCK_THREADS.
template <class Body> inline void runHostGrid(Dim3 grid, const Body &body) {
  long long blocks = 1LL * grid.x * grid.y * grid.z;
#pragma omp parallel for schedule(dynamic, 1)
  for (long long n = 0; n < blocks; ++n) {
    long long i = hostBlockIndex(n, blocks);
    Dim3 block{static_cast<int>(i % grid.x),
               static_cast<int>(i / grid.x % grid.y),
               static_cast<int>(i / (1LL * grid.x * grid.y))};
    runHostBlock(KILN_BLOCK_THREADS, block, [&] { body(block); });
  }
}
#endif

// A library kernel is a function `void <name>_block(Dim3 block, const
// Params &p)` run once per block of a grid, and KILN_KERNEL(name, Params)
// makes its entry: under CUDA `extern "C" __global__ void name(Params)`
// (the whole struct is the one kernel parameter, so the runtime launches it
// with {&params}); on the host `void name_host(Dim3 grid, const Params &)`,
// which runs every block of `grid` (runHostGrid).
#if defined(__CUDACC__)
#define KILN_KERNEL(name, Params)                                              \
  extern "C" __global__ void __launch_bounds__(KILN_BLOCK_THREADS)             \
      name(const Params p) {                                                   \
    ::kiln::awaitPrecedingKernels();                                           \
    name##_block(::kiln::Dim3{static_cast<int>(blockIdx.x),                    \
                              static_cast<int>(blockIdx.y),                    \
                              static_cast<int>(blockIdx.z)},                   \
                 p);                                                           \
  }
#else
#define KILN_KERNEL(name, Params)                                              \
  inline void name##_host(::kiln::Dim3 grid, const Params &p) {                \
    ::kiln::runHostGrid(grid,                                                  \
                        [&](::kiln::Dim3 block) { name##_block(block, p); });  \
  }
#endif

// KILN_KERNEL_PREFETCHING(name, Params, prefetch): KILN_KERNEL for kernels
// that read weights, where `prefetch(block, p)` asks the L2 for the block's
// (prefetchToL2) between letting the next kernel launch and awaiting the
// ones before.
#if defined(__CUDACC__)
#define KILN_KERNEL_PREFETCHING(name, Params, prefetch)                        \
  extern "C" __global__ void __launch_bounds__(KILN_BLOCK_THREADS)             \
      name(const Params p) {                                                   \
    ::kiln::Dim3 block{static_cast<int>(blockIdx.x),                           \
                       static_cast<int>(blockIdx.y),                           \
                       static_cast<int>(blockIdx.z)};                          \
    ::kiln::launchDependentKernels();                                          \
    prefetch(block, p);                                                        \
    ::kiln::awaitPrecedingWrites();                                            \
    name##_block(block, p);                                                    \
  }
#else
#define KILN_KERNEL_PREFETCHING(name, Params, prefetch)                        \
  inline void name##_host(::kiln::Dim3 grid, const Params &p) {                \
    ::kiln::runHostGrid(grid, [&](::kiln::Dim3 block) {                        \
      prefetch(block, p);                                                      \
      name##_block(block, p);                                                  \
    });                                                                        \
  }
#endif

/// A GPU stops on a vector load (8 or 16 bytes) from an address that is
/// not a multiple of its size; the host builds load the same elements one
/// at a time, which works anywhere. Where a host build stands in for a
/// vector load it checks the address, so the kernel tests and the emulated
/// device stop, naming the load, where the executor's fit checks or a
/// kernel's offsets would let a misaligned one reach the GPU.
KILN_FN void requireAlignedLoad(const void *at, unsigned bytes) {
#if defined(__CUDACC__)
  (void)at, (void)bytes;
#else
  if (reinterpret_cast<uintptr_t>(at) % bytes != 0) {
    fprintf(stderr,
            "kiln kernel: a %u-byte vector load from %p is misaligned (a GPU "
            "stops on it)\n",
            bytes, at);
    abort();
  }
#endif
}

/// 16-bit weight elements, stored as their bits.
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

KILN_FN float floatFromBits(uint32_t bits) {
#if defined(__CUDACC__)
  return __uint_as_float(bits);
#else
  float value;
  __builtin_memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

KILN_FN float toFloat(float value) { return value; }

KILN_FN float toFloat(Bf16 value) {
  return floatFromBits(static_cast<uint32_t>(value.bits) << 16);
}

/// Exact, as kiln::f16ToFloat (runtime/src/Float.cpp); one conversion
/// instruction on the GPU.
KILN_FN float toFloat(F16 value) {
#if defined(__CUDACC__)
  float out;
  asm("cvt.f32.f16 %0, %1;" : "=f"(out) : "h"(value.bits));
  return out;
#else
  uint32_t sign = static_cast<uint32_t>(value.bits & 0x8000u) << 16;
  uint32_t exponent = (value.bits >> 10) & 0x1fu;
  uint32_t mantissa = value.bits & 0x3ffu;
  if (exponent == 0x1f) // infinity or NaN
    return floatFromBits(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0)
    return floatFromBits(sign | ((exponent + 112) << 23) | (mantissa << 13));
  float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
  return sign ? -magnitude : magnitude;
#endif
}

/// The sum of every thread's `value`, returned to all threads.
KILN_FN float blockSum(float value) {
#if KILN_SIMT
  KILN_SHARED float partial[32];
  for (int offset = 16; offset > 0; offset >>= 1)
    value += KILN_SHFL_XOR(value, offset);
  int warp = KILN_THREAD / 32, lane = KILN_THREAD % 32;
  if (lane == 0)
    partial[warp] = value;
  KILN_SYNC();
  // Every warp reduces the partial sums, so all threads get the total
  // without another round through shared memory.
  value = lane < (KILN_THREADS + 31) / 32 ? partial[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset >>= 1)
    value += KILN_SHFL_XOR(value, offset);
  KILN_SYNC(); // `partial` is free for the next call
#endif
  return value;
}

// Warps: 32 threads under CUDA and KILN_HOST_SIMT; on the plain host one
// thread is the block's only "warp" and its only lane.
// KILN_UNROLL4 / 8 / 16: that many iterations of a loop of unknown trip count
// in flight (independent loads overlap).
#if defined(__CUDACC__)
#define KILN_UNROLL _Pragma("unroll")
#define KILN_UNROLL4 _Pragma("unroll 4")
#define KILN_UNROLL8 _Pragma("unroll 8")
#define KILN_UNROLL16 _Pragma("unroll 16")
#define KILN_SYNCWARP() __syncwarp()
#define KILN_WARP_SIZE 32
#define KILN_LANE (static_cast<int>(threadIdx.x) % 32)
#define KILN_WARP (static_cast<int>(threadIdx.x) / 32)
#define KILN_WARPS (static_cast<int>(blockDim.x) / 32)
#elif defined(KILN_HOST_SIMT)
#define KILN_UNROLL _Pragma("GCC unroll 8")
#define KILN_UNROLL4 _Pragma("GCC unroll 4")
#define KILN_UNROLL8 _Pragma("GCC unroll 8")
#define KILN_UNROLL16 _Pragma("GCC unroll 16")
#define KILN_SYNCWARP() ::kiln::simt::syncWarp()
#define KILN_WARP_SIZE 32
#define KILN_LANE (KILN_THREAD % 32)
#define KILN_WARP (KILN_THREAD / 32)
#define KILN_WARPS (KILN_THREADS / 32)
#else
#define KILN_UNROLL _Pragma("GCC unroll 8")
#define KILN_UNROLL4 _Pragma("GCC unroll 4")
#define KILN_UNROLL8 _Pragma("GCC unroll 8")
#define KILN_UNROLL16 _Pragma("GCC unroll 16")
#define KILN_SYNCWARP() ((void)0)
#define KILN_WARP_SIZE 1
#define KILN_LANE 0
#define KILN_WARP 0
#define KILN_WARPS 1
#endif

/// Elements a thread of an elementwise loop has in flight.
constexpr int kLoadsInFlight = 4;

/// store(i, load(i)) for the thread's elements i = begin + thread + m *
/// threads below `end`, kLoadsInFlight at a time with every load of a batch
/// issued before its stores. A loop that loads and stores by turns waits a
/// whole memory round trip per element: the compiler may not move a load
/// above a store to memory that might alias it.
template <class Load, class Store>
KILN_FN void forEachElement(int64_t begin, int64_t end, Load load,
                            Store store) {
  using T = decltype(load(begin));
  const int64_t stride = KILN_THREADS;
  for (int64_t i = begin + KILN_THREAD; i < end; i += kLoadsInFlight * stride) {
    T value[kLoadsInFlight] = {};
    if (i + (kLoadsInFlight - 1) * stride < end) {
      // A whole batch: no bounds checks, so no branches between its loads.
      KILN_UNROLL
      for (int u = 0; u < kLoadsInFlight; ++u)
        value[u] = load(i + u * stride);
      KILN_UNROLL
      for (int u = 0; u < kLoadsInFlight; ++u)
        store(i + u * stride, value[u]);
      continue;
    }
    KILN_UNROLL
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (i + u * stride < end)
        value[u] = load(i + u * stride);
    KILN_UNROLL
    for (int u = 0; u < kLoadsInFlight; ++u)
      if (i + u * stride < end)
        store(i + u * stride, value[u]);
  }
}

/// The sum of `value` over the lanes of the calling warp, returned to all
/// of them (no block-wide synchronization).
KILN_FN float warpSum(float value) {
#if KILN_SIMT
  for (int offset = 16; offset > 0; offset >>= 1)
    value += KILN_SHFL_XOR(value, offset);
#endif
  return value;
}

/// The largest `value` of the calling warp's lanes, returned to all of them.
KILN_FN float warpMax(float value) {
#if KILN_SIMT
  for (int offset = 16; offset > 0; offset >>= 1)
    value = fmaxf(value, KILN_SHFL_XOR(value, offset));
#endif
  return value;
}

/// The largest of every thread's `value`, returned to all threads.
KILN_FN float blockMax(float value) {
#if KILN_SIMT
  KILN_SHARED float partial[32];
  for (int offset = 16; offset > 0; offset >>= 1)
    value = fmaxf(value, KILN_SHFL_XOR(value, offset));
  int warp = KILN_THREAD / 32, lane = KILN_THREAD % 32;
  if (lane == 0)
    partial[warp] = value;
  KILN_SYNC();
  value = lane < (KILN_THREADS + 31) / 32 ? partial[lane] : -3.402823466e38f;
  for (int offset = 16; offset > 0; offset >>= 1)
    value = fmaxf(value, KILN_SHFL_XOR(value, offset));
  KILN_SYNC();
#endif
  return value;
}

// FP8 e4m3fn conversions, bit-exact with kiln/Float.h (and so with CUDA's
// __nv_fp8_e4m3): kernels quantize exactly as the CPU kernels do.
KILN_FN uint32_t bitsFromFloat(float value) {
#if defined(__CUDACC__)
  return __float_as_uint(value);
#else
  uint32_t bits;
  __builtin_memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

/// e4m3fn code -> fp32, as kiln::e4m3ToFloat (kiln/Float.h).
KILN_FN float decodeE4m3(unsigned char code) {
  uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  uint32_t magnitude = code & 0x7fu;
  if (magnitude == 0x7fu)
    return floatFromBits(sign | 0x7fc00000u);
  float value = floatFromBits(magnitude << 20) * 0x1p120f;
  return floatFromBits(bitsFromFloat(value) | sign);
}

/// fp32 -> e4m3fn, saturating, as kiln::floatToE4m3.
KILN_FN unsigned char encodeE4m3(float value) {
  uint32_t bits = bitsFromFloat(value);
  uint32_t sign = (bits >> 24) & 0x80u;
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)
    return 0x7f;
  if (magnitude > 0x43e80000u)
    return static_cast<unsigned char>(sign | 0x7eu);
  if (magnitude >= 0x3c800000u) {
    uint32_t rounded = magnitude + 0x7ffffu + ((magnitude >> 20) & 1u);
    return static_cast<unsigned char>(sign | ((rounded >> 20) - (120u << 3)));
  }
  float scaled = floatFromBits(magnitude) * 512.0f;
  float shifted = scaled + 0x1p23f;
  uint32_t steps = static_cast<uint32_t>(shifted - 0x1p23f);
  return static_cast<unsigned char>(sign | steps);
}

/// fp32 -> bf16 bits, round to nearest even, as kiln::floatToBf16.
KILN_FN uint16_t encodeBf16(float value) {
  uint32_t bits = bitsFromFloat(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

/// The smallest power of two >= s (s > 0, normal), as the CPU's ue8m0.
KILN_FN float roundUpPow2(float s) {
  uint32_t bits = bitsFromFloat(s);
  if ((bits & 0x7fffffu) != 0)
    bits = (bits & 0xff800000u) + 0x800000u;
  return floatFromBits(bits & 0xff800000u);
}

/// The activation scale of a block whose largest |x| is amax, as the CPU
/// FP8 GEMMs: s = max(amax, 1e-4) / 448 (a power of two when pow2).
KILN_FN float fp8ScaleOf(float amax, int pow2) {
  float s = (amax > 1e-4f ? amax : 1e-4f) / 448.0f;
  return pow2 ? roundUpPow2(s) : s;
}

/// The activation scale of x[c0, c1) (fp8ScaleOf). Called by every thread
/// of the block (the amax is a block reduction).
KILN_FN float fp8BlockScale(const float *x, int64_t c0, int64_t c1, int pow2) {
  float amax = 0.0f;
  for (int64_t c = c0 + KILN_THREAD; c < c1; c += KILN_THREADS)
    amax = fmaxf(amax, fabsf(x[c]));
  return fp8ScaleOf(blockMax(amax), pow2);
}

/// DeepSeek-V3's activation quantization of one row of `n` values, as
/// kiln.quantize_fp8 and the CPU FP8 GEMMs: per `blockCols` values, codes
/// e4m3(x / s) with s = fp8BlockScale, block g's scale at
/// scales[g * scaleStride]. Called by every thread of the block.
KILN_FN void quantizeFp8(const float *x, int64_t n, int64_t blockCols, int pow2,
                         unsigned char *codes, float *scales,
                         int64_t scaleStride = 1) {
  int64_t groups = (n + blockCols - 1) / blockCols;
  for (int64_t g = 0; g < groups; ++g) {
    int64_t c0 = g * blockCols;
    int64_t c1 = c0 + blockCols < n ? c0 + blockCols : n;
    float s = fp8BlockScale(x, c0, c1, pow2);
    for (int64_t c = c0 + KILN_THREAD; c < c1; c += KILN_THREADS)
      codes[c] = encodeE4m3(x[c] / s);
    if (KILN_THREAD == 0)
      scales[g * scaleStride] = s;
  }
}

/// Values per FP8 scale group of a cache row (cpu::PackedRowLayout::kGroup).
constexpr int kFp8CacheGroup = 128;

/// A packed latent row layout (cpu::PackedRowLayout): quantColumns e4m3
/// codes, their scales, then bf16Columns bf16 values (no e4m3 columns: a
/// bf16 row). No columns at all for f32 rows.
struct PackedRows {
  int64_t quantColumns, bf16Columns;
};
KILN_FN bool isPacked(PackedRows l) {
  return l.quantColumns + l.bf16Columns > 0;
}
KILN_FN int64_t packedScaleOffset(PackedRows l) {
  return (l.quantColumns + 3) / 4 * 4;
}
KILN_FN int64_t packedBf16Offset(PackedRows l) {
  return packedScaleOffset(l) +
         4 * ((l.quantColumns + kFp8CacheGroup - 1) / kFp8CacheGroup);
}
KILN_FN int64_t packedRowBytes(PackedRows l) {
  return (packedBf16Offset(l) + 2 * l.bf16Columns + 3) / 4 * 4;
}
/// One cache row of a packed slot from `x` (quantColumns + bf16Columns
/// values), as cpu::kvAppendPagedPacked stores it, byte for byte: e4m3 codes
/// with an fp32 scale per kFp8CacheGroup of the first quantColumns, the
/// rest in bf16, padding zeroed. Called by every thread of the block.
KILN_FN void storePackedRow(const float *x, PackedRows l, unsigned char *row) {
  float *scales = reinterpret_cast<float *>(row + packedScaleOffset(l));
  for (int64_t g0 = 0; g0 < l.quantColumns; g0 += kFp8CacheGroup) {
    int64_t g1 = g0 + kFp8CacheGroup < l.quantColumns ? g0 + kFp8CacheGroup
                                                      : l.quantColumns;
    float amax = 0.0f;
    for (int64_t c = g0 + KILN_THREAD; c < g1; c += KILN_THREADS)
      amax = fmaxf(amax, fabsf(x[c]));
    amax = blockMax(amax);
    float s = (amax > 1e-4f ? amax : 1e-4f) / 448.0f;
    for (int64_t c = g0 + KILN_THREAD; c < g1; c += KILN_THREADS)
      row[c] = encodeE4m3(x[c] / s);
    if (KILN_THREAD == 0)
      scales[g0 / kFp8CacheGroup] = s;
  }
  uint16_t *tail = reinterpret_cast<uint16_t *>(row + packedBf16Offset(l));
  for (int64_t c = KILN_THREAD; c < l.bf16Columns; c += KILN_THREADS)
    tail[c] = encodeBf16(x[l.quantColumns + c]);
  for (int64_t c = l.quantColumns + KILN_THREAD; c < packedScaleOffset(l);
       c += KILN_THREADS)
    row[c] = 0;
  int64_t used = packedBf16Offset(l) + 2 * l.bf16Columns;
  for (int64_t c = used + KILN_THREAD; c < packedRowBytes(l); c += KILN_THREADS)
    row[c] = 0;
}

/// Two values a forEachElement load returns together.
struct FloatPair {
  float a, b;
};

/// A store of one float element, for forEachElement.
struct StoreTo {
  float *out;
  KILN_FN void operator()(int64_t i, float value) const { out[i] = value; }
};

KILN_FN void copy(const float *x, int count, float *out) {
  forEachElement(
      0, count, [&](int64_t i) { return x[i]; }, StoreTo{out});
}

/// A token's embedding: row `*token` of `table` [vocab, dim] (tokens are
/// checked by the host), as cpu::embedding.
template <class W>
KILN_FN void embedding(const int32_t *token, const W *table, int64_t dim,
                       float *out) {
  const W *row = table + int64_t{*token} * dim;
  forEachElement(
      0, dim, [&](int64_t i) { return toFloat(row[i]); }, StoreTo{out});
}

/// A token's MoE combine: out = sum_k weights[k] * y[selectionRows[k]] over
/// its topK selections, in k order from zero, as cpu::moeCombine. The
/// selections' weights and rows, 8 at a time, are read once into
/// registers: read per element, each would wait behind the last store.
KILN_FN void moeCombine(const float *y, const float *weights,
                        const int32_t *selectionRows, int topK, int64_t dim,
                        float *out) {
  constexpr int kChunk = 8;
  for (int j0 = 0; j0 < topK; j0 += kChunk) {
    int chunk = topK - j0 < kChunk ? topK - j0 : kChunk;
    float weight[kChunk];
    const float *rows[kChunk];
    KILN_UNROLL
    for (int u = 0; u < kChunk; ++u) {
      int j = j0 + (u < chunk ? u : 0);
      weight[u] = weights[j];
      rows[u] = y + int64_t{selectionRows[j]} * dim;
    }
    // A chunk after the first adds to the sum so far, in selection order.
    forEachElement(
        0, dim,
        [&](int64_t i) {
          float sum = j0 == 0 ? 0.0f : out[i];
          // Every row loaded (those past the chunk repeat its first), so
          // that the loads need no branches and go out together.
          float term[kChunk];
          KILN_UNROLL
          for (int u = 0; u < kChunk; ++u)
            term[u] = rows[u][i];
          KILN_UNROLL
          for (int u = 0; u < kChunk; ++u)
            if (u < chunk)
              sum += weight[u] * term[u];
          return sum;
        },
        StoreTo{out});
  }
}

KILN_FN void add(const float *a, const float *b, int count, float *out) {
  forEachElement(
      0, count, [&](int64_t i) { return a[i] + b[i]; }, StoreTo{out});
}

/// silu(gate) * up, as cpu::swiglu.
KILN_FN float swiglu(float gate, float up) {
  return gate / (1.0f + expf(-gate)) * up;
}
KILN_FN void swiglu(const float *gate, const float *up, int count, float *out) {
  forEachElement(
      0, count, [&](int64_t i) { return swiglu(gate[i], up[i]); },
      StoreTo{out});
}

/// `rows` rows of `dim` values, each normalized as cpu::rmsNorm.
template <class W>
KILN_FN void rmsNorm(const float *x, int rows, int dim, const W *weight,
                     float epsilon, float *out) {
  for (int r = 0; r < rows; ++r) {
    const float *xr = x + r * dim;
    float *yr = out + r * dim;
    float sum = 0.0f;
    for (int i = KILN_THREAD; i < dim; i += KILN_THREADS)
      sum += xr[i] * xr[i];
    sum = blockSum(sum);
    float inv = 1.0f / sqrtf(sum / static_cast<float>(dim) + epsilon);
    forEachElement(
        0, dim, [&](int64_t i) { return (xr[i] * inv) * toFloat(weight[i]); },
        StoreTo{yr});
  }
}

/// out[r, :] = x[r, offset : offset + size] over rows of `inDim`.
KILN_FN void slice(const float *x, int rows, int inDim, int offset, int size,
                   float *out) {
  forEachElement(
      0, rows * size,
      [&](int64_t j) { return x[(j / size) * inDim + offset + j % size]; },
      StoreTo{out});
}

/// One input of a concat: rows of `dim` values into columns [offset,
/// offset + dim) of rows of `outDim`.
KILN_FN void concatPart(const float *x, int rows, int dim, int outDim,
                        int offset, float *out) {
  forEachElement(
      0, rows * dim, [&](int64_t j) { return x[j]; },
      [&](int64_t j, float value) {
        out[(j / dim) * outDim + offset + j % dim] = value;
      });
}

/// out[r, k, :] = x[r, 0, :] for k < repeat, rows of `inner` values.
KILN_FN void broadcast(const float *x, int outer, int repeat, int inner,
                       float *out) {
  forEachElement(
      0, outer * repeat * inner,
      [&](int64_t j) { return x[(j / (repeat * inner)) * inner + j % inner]; },
      StoreTo{out});
}

/// RoPE's rotation of `heads` rows of 2 * half values by the angles whose
/// cosines and sines (times the attention factor) are cosv and sinv.
KILN_FN void rotatePairs(const float *x, int heads, int half, const float *cosv,
                         const float *sinv, bool interleaved, float *out) {
  const int64_t dim = 2 * half;
  // Pair j: head j / half, interleaved (2i, 2i + 1), otherwise
  // rotate_half's (i, i + half), i = j % half.
  auto first = [&](int64_t j) {
    int64_t i = j % half;
    return j / half * dim + (interleaved ? 2 * i : i);
  };
  int64_t second = interleaved ? 1 : half;
  forEachElement(
      0, int64_t{heads} * half,
      [&](int64_t j) {
        return FloatPair{x[first(j)], x[first(j) + second]};
      },
      [&](int64_t j, FloatPair v) {
        int64_t i = j % half;
        out[first(j)] = v.a * cosv[i] - v.b * sinv[i];
        out[first(j) + second] = v.b * cosv[i] + v.a * sinv[i];
      });
}

/// Rotates `heads` rows of 2 * Half values by the angles of `position`, as
/// cpu::rope: angle = position * invFreq[i] and its cos/sin in double, times
/// the attention factor, rounded to fp32. A negative position (padding)
/// copies the row.
template <int Half>
KILN_FN void rope(const float *x, int heads, int32_t position,
                  const double *invFreq, double attention, bool interleaved,
                  float *out) {
  const int dim = 2 * Half;
  if (position < 0) {
    copy(x, heads * dim, out);
    return;
  }
  KILN_SHARED float cosv[Half], sinv[Half];
  for (int i = KILN_THREAD; i < Half; i += KILN_THREADS) {
    double angle = static_cast<double>(position) * invFreq[i];
    cosv[i] = static_cast<float>(cos(angle) * attention);
    sinv[i] = static_cast<float>(sin(angle) * attention);
  }
  KILN_SYNC();
  rotatePairs(x, heads, Half, cosv, sinv, interleaved, out);
}

/// Weight elements as floats (e4m3 codes decoded, unscaled).
KILN_FN float loadWeight(const float *w, int64_t i) { return w[i]; }
KILN_FN float loadWeight(const Bf16 *w, int64_t i) { return toFloat(w[i]); }
KILN_FN float loadWeight(const F16 *w, int64_t i) { return toFloat(w[i]); }
KILN_FN float loadWeight(const unsigned char *w, int64_t i) {
  return decodeE4m3(w[i]);
}

/// Weights [0, 8) of a row, as floats, where all 8 are there and
/// wholeLoadAligned: one 16-byte load of bf16 / f16, one 8-byte load of
/// e4m3, two 16-byte loads of f32 on the GPU.
template <class W> KILN_FN void loadEightWhole(const W *w, float *out) {
  requireAlignedLoad(w, sizeof(W) == 1 ? 8 : 16);
  for (int j = 0; j < 8; ++j)
    out[j] = loadWeight(w, j);
}
#if defined(__CUDACC__)
template <class Half>
KILN_FN void loadEightHalvesWhole(const Half *w, float *out) {
  uint4 bits = *reinterpret_cast<const uint4 *>(w);
  const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
  for (int j = 0; j < 4; ++j) {
    out[2 * j] = toFloat(Half{static_cast<uint16_t>(words[j] & 0xffffu)});
    out[2 * j + 1] = toFloat(Half{static_cast<uint16_t>(words[j] >> 16)});
  }
}
template <> KILN_FN void loadEightWhole<Bf16>(const Bf16 *w, float *out) {
  loadEightHalvesWhole(w, out);
}
template <> KILN_FN void loadEightWhole<F16>(const F16 *w, float *out) {
  loadEightHalvesWhole(w, out);
}
template <>
KILN_FN void loadEightWhole<unsigned char>(const unsigned char *w, float *out) {
  uint2 bits = *reinterpret_cast<const uint2 *>(w);
  for (int j = 0; j < 8; ++j)
    out[j] = decodeE4m3(static_cast<unsigned char>(
        ((j < 4 ? bits.x : bits.y) >> (8 * (j % 4))) & 0xffu));
}
template <> KILN_FN void loadEightWhole<float>(const float *w, float *out) {
  float4 a = *reinterpret_cast<const float4 *>(w);
  float4 b = *reinterpret_cast<const float4 *>(w + 4);
  out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
  out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}
#endif

/// Whether loadEightWhole may read at w: 8 bytes for e4m3, 16 otherwise.
template <class W> KILN_FN bool wholeLoadAligned(const W *w) {
  unsigned long long mask = sizeof(W) == 1 ? 7 : 15;
  return (reinterpret_cast<unsigned long long>(w) & mask) == 0;
}

/// Weights [k, k + 8) of a row (zeros past `count`), as floats: one
/// loadEightWhole where the row allows.
template <class W>
KILN_FN void loadEight(const W *w, int64_t count, float *out) {
  if (count >= 8 && wholeLoadAligned(w)) {
    loadEightWhole(w, out);
    return;
  }
  for (int j = 0; j < 8; ++j)
    out[j] = j < count ? loadWeight(w, j) : 0.0f;
}

enum ScoringFunc { Softmax, Sigmoid };
enum TopkMethod { Greedy, GroupLimitedGreedy, NoauxTc };

struct MoeGateConfig {
  ScoringFunc scoring;
  TopkMethod method;
  int nGroup;
  int topkGroup;
  bool normTopkProb;
  float routedScalingFactor;
};

KILN_FN bool isNan(float value) { return value != value; }

/// The indices of the `k` largest of values[0, n) not yet `taken` (which it
/// marks), largest first, the lower index first among equal values; as the
/// reference router's topK.
KILN_FN void topK(const float *values, int n, int k, unsigned char *taken,
                  int32_t *result) {
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int i = 0; i < n; ++i) {
      if (taken[i])
        continue;
      if (best < 0 || values[i] > values[best] ||
          (isNan(values[best]) && !isNan(values[i])))
        best = i;
    }
    if (best < 0)
      best = 0;
    taken[best] = 1;
    result[j] = best;
  }
}

/// Whether (a, i) comes before (b, j) in topK's order: larger values
/// first, NaNs after every number, the lower index first among equals.
KILN_FN bool ranksBefore(float a, int i, float b, int j) {
  if (isNan(a) != isNan(b))
    return isNan(b);
  if (isNan(a) || a == b)
    return i < j;
  return a > b;
}

/// topK by the calling warp: each lane scans every 32nd value, then the
/// lanes' candidates meet in a shuffle reduction under ranksBefore, a
/// total order, so the pick is topK's. Lane 0 writes `taken` and `result`;
/// every lane returns after them.
KILN_FN void warpTopK(const float *values, int n, int k, unsigned char *taken,
                      int32_t *result) {
  for (int j = 0; j < k; ++j) {
    int best = -1;
    for (int i = KILN_LANE; i < n; i += KILN_WARP_SIZE)
      if (!taken[i] &&
          (best < 0 || ranksBefore(values[i], i, values[best], best)))
        best = i;
#if KILN_SIMT
    for (int offset = 16; offset > 0; offset >>= 1) {
      int other = KILN_SHFL_XOR(best, offset);
      if (other >= 0 &&
          (best < 0 || ranksBefore(values[other], other, values[best], best)))
        best = other;
    }
#endif
    if (best < 0)
      best = 0;
    if (KILN_LANE == 0) {
      taken[best] = 1;
      result[j] = best;
    }
    KILN_SYNCWARP();
  }
}

/// logit[u] += the calling lane's share of x . row u of `rows` ([count,
/// dim]; u < min(count, Rows)), 8 consecutive values per lane per step.
/// Whole: Rows rows, wholeLoadAligned, of a dim that is a multiple of 8, so
/// no bounds checks separate a step's loads.
template <bool Whole, int Rows, class W>
KILN_FN void routerDots(const float *x, int dim, const W *rows, int count,
                        float *logit) {
  KILN_UNROLL4
  for (int64_t i = int64_t{KILN_LANE} * 8; i < dim;
       i += int64_t{KILN_WARP_SIZE} * 8) {
    float xv[8];
    KILN_UNROLL
    for (int j = 0; j < 8; ++j)
      xv[j] = Whole || i + j < dim ? x[i + j] : 0.0f;
    KILN_UNROLL
    for (int u = 0; u < Rows; ++u) {
      if (!Whole && u >= count)
        break; // warp-uniform
      float w[8];
      if (Whole)
        loadEightWhole(rows + u * int64_t{dim} + i, w);
      else
        loadEight(rows + u * int64_t{dim} + i, dim - i, w);
      KILN_UNROLL
      for (int j = 0; j < 8; ++j)
        logit[u] += xv[j] * w[j];
    }
  }
}

/// DeepSeekMoE router of one token, as cpu::moeGate: logits x W^T (weight
/// [experts, dim]) by the block's warps, then scores, selection and
/// weights by one thread (the selection is a short serial scan). `bias` is
/// null unless noaux_tc has e_score_correction_bias. experts <= Capacity.
template <int Capacity, class W, class B>
KILN_FN void moeGateN(const float *x, int dim, const W *weight, const B *bias,
                      int experts, int topk, MoeGateConfig config,
                      float *weights, int32_t *indices) {
  KILN_SHARED float scores[Capacity], choice[Capacity], groupScore[Capacity];
  KILN_SHARED unsigned char taken[Capacity];
  KILN_SHARED int32_t picked[2 * Capacity]; // two per group
  // A warp per 8 experts at a time, each lane 8 consecutive weights of
  // each (one 16-byte load of a 16-bit row), 4 x 8 loads in flight per
  // lane. The whole router runs on one multiprocessor per token, so its
  // time is the round trips: a 64 x 2048 bf16 router takes 4 at a time per
  // warp where 2-byte loads took 32.
  constexpr int kPerWarp = 8;
  bool alignedRows = dim % 8 == 0 && wholeLoadAligned(weight);
  for (int e0 = KILN_WARP * kPerWarp; e0 < experts;
       e0 += KILN_WARPS * kPerWarp) {
    float logit[kPerWarp] = {};
    const W *rows = weight + int64_t{e0} * dim;
    if (alignedRows && e0 + kPerWarp <= experts)
      routerDots<true, kPerWarp>(x, dim, rows, kPerWarp, logit);
    else
      routerDots<false, kPerWarp>(x, dim, rows, experts - e0, logit);
    KILN_UNROLL
    for (int u = 0; u < kPerWarp; ++u) {
      float total = warpSum(logit[u]);
      if (KILN_LANE == 0 && e0 + u < experts)
        scores[e0 + u] = total;
    }
  }
  KILN_SYNC();
  // The selection: warp 0, its lanes over the experts (or groups), so that
  // a 256-expert router's serial scans do not hold up the token. Every
  // value is the serial code's: elementwise steps per lane, sums in expert
  // order on lane 0, and warpTopK picks what topK picks.
  if (KILN_WARP != 0)
    return;
  if (config.scoring == Softmax) {
    // Every lane starts from scores[0], as the serial scan: a NaN there
    // stays the maximum (and is every lane's), other NaNs never are.
    float mx = scores[0];
    for (int e = KILN_LANE; e < experts; e += KILN_WARP_SIZE)
      mx = scores[e] > mx ? scores[e] : mx;
    mx = warpMax(mx);
    for (int e = KILN_LANE; e < experts; e += KILN_WARP_SIZE)
      scores[e] = expf(scores[e] - mx);
    KILN_SYNCWARP();
    // Every lane sums in expert order (the same reads, broadcast).
    float sum = 0.0f;
    for (int e = 0; e < experts; ++e)
      sum += scores[e];
    KILN_SYNCWARP();
    for (int e = KILN_LANE; e < experts; e += KILN_WARP_SIZE)
      scores[e] /= sum;
  } else {
    for (int e = KILN_LANE; e < experts; e += KILN_WARP_SIZE)
      scores[e] = 1.0f / (1.0f + expf(-scores[e]));
  }
  bool useBias = config.method == NoauxTc && bias;
  for (int e = KILN_LANE; e < experts; e += KILN_WARP_SIZE) {
    choice[e] = scores[e] + (useBias ? toFloat(bias[e]) : 0.0f);
    taken[e] = 0;
  }
  KILN_SYNCWARP();

  int groups =
      config.method == Greedy ? 1 : (config.nGroup > 1 ? config.nGroup : 1);
  int perGroup = experts / groups;
  if (config.method != Greedy && groups > 1) {
    // A lane per group, over its own slice of `taken` and `picked`.
    for (int g = KILN_LANE; g < groups; g += KILN_WARP_SIZE) {
      const float *c = choice + g * perGroup;
      if (config.method == GroupLimitedGreedy) {
        // V2: a group scores its best expert (the first maximum).
        float best = c[0];
        for (int e = 1; e < perGroup; ++e)
          best = c[e] > best ? c[e] : best;
        groupScore[g] = best;
      } else {
        // V3: a group scores the sum of its two best biased experts.
        int two = perGroup < 2 ? perGroup : 2;
        int32_t *pair = picked + 2 * g;
        topK(c, perGroup, two, taken + g * perGroup, pair);
        float sum = 0.0f;
        for (int j = 0; j < two; ++j)
          sum += c[pair[j]];
        groupScore[g] = sum;
      }
    }
    KILN_SYNCWARP();
    int keep = config.topkGroup < 0        ? 0
               : config.topkGroup > groups ? groups
                                           : config.topkGroup;
    for (int e = KILN_LANE; e < experts; e += KILN_WARP_SIZE)
      taken[e] = 0;
    KILN_SYNCWARP();
    warpTopK(groupScore, groups, keep, taken, picked);
    // Experts of dropped groups: HF masks them with 0 (V2) or -inf (V3).
    float masked = config.method == GroupLimitedGreedy
                       ? 0.0f
                       : -floatFromBits(0x7f800000u);
    for (int e = KILN_LANE; e < groups * perGroup; e += KILN_WARP_SIZE)
      if (!taken[e / perGroup]) {
        choice[e] = masked;
        scores[e] = 0.0f;
      }
    KILN_SYNCWARP();
    for (int e = KILN_LANE; e < experts; e += KILN_WARP_SIZE)
      taken[e] = 0;
    KILN_SYNCWARP();
  }

  warpTopK(choice, experts, topk, taken, indices);
  if (KILN_LANE != 0)
    return;
  float sum = 0.0f;
  for (int j = 0; j < topk; ++j) {
    weights[j] = scores[indices[j]];
    sum += weights[j];
  }
  if (config.normTopkProb) {
    float denominator = sum + 1e-20f;
    for (int j = 0; j < topk; ++j)
      weights[j] /= denominator;
  }
  for (int j = 0; j < topk; ++j)
    weights[j] *= config.routedScalingFactor;
}

/// moeGateN for a router whose sizes the generated kernel knows.
template <int Experts, int TopK, class W, class B>
KILN_FN void moeGate(const float *x, int dim, const W *weight, const B *bias,
                     MoeGateConfig config, float *weights, int32_t *indices) {
  moeGateN<Experts>(x, dim, weight, bias, Experts, TopK, config, weights,
                    indices);
}

KILN_KERNELS_END

#endif // KILN_FUSED_PRELUDE_H
