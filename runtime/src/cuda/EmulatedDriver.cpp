#include "runtime/src/cuda/EmulatedDriver.h"

#include "runtime/src/cuda/LibraryFatbin.h"

#include "runtime/src/cuda/EmulatedKernels.h"

#include "runtime/kernels/FusedPrelude.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace kiln::cuda {
namespace {

bool simtRequested() {
  const char *simt = std::getenv("KILN_EMULATE_SIMT");
  return simt && std::string_view(simt) == "1";
}

/// The library kernels' host builds: with CUDA's threads
/// (KILN_EMULATE_SIMT=1, tests only; HostSimt.h) or plain.
const std::vector<HostKernel> &hostKernels() {
  static const std::vector<HostKernel> &kernels =
      simtRequested() && !simtHostKernels().empty() ? simtHostKernels()
                                                    : plainHostKernels();
  return kernels;
}

/// A CUfunction: a library kernel's host build, or a generated (fused)
/// kernel's entry in the model's host module with its pointer count.
struct Function {
  const HostKernel *library = nullptr;
  cpu::HostKernels::Entry fused = nullptr;
  uint32_t arguments = 0;
};

/// The library kernels' functions, one per hostKernels() entry.
const std::vector<Function> &libraryFunctions() {
  static const std::vector<Function> functions = [] {
    std::vector<Function> f;
    for (const HostKernel &k : hostKernels())
      f.push_back({&k, nullptr, 0});
    return f;
  }();
  return functions;
}

/// Functions of generated modules, made on lookup and kept for the
/// process (a few per fused group of each model loaded).
Function *newFusedFunction(cpu::HostKernels::Entry entry, uint32_t arguments) {
  static std::mutex mutex;
  static std::deque<Function> functions;
  std::lock_guard<std::mutex> lock(mutex);
  return &functions.emplace_back(Function{nullptr, entry, arguments});
}

/// A launch, ready to run: a library kernel with a copy of its parameter
/// struct, or a fused kernel with its token count and pointers.
using Launch = std::function<void()>;
using Graph = std::vector<Launch>;

std::mutex launchCountMutex;
std::map<std::string, int64_t, std::less<>> &launchCounts() {
  static std::map<std::string, int64_t, std::less<>> counts;
  return counts;
}

Launch bind(const Function &f, Dim3 grid, void **params) {
  if (f.library) {
    const auto *bytes = static_cast<const std::byte *>(params[0]);
    std::vector<std::byte> copy(bytes, bytes + f.library->paramBytes);
    const HostKernel *kernel = f.library;
    return [kernel, grid, copy = std::move(copy)] {
      {
        std::lock_guard<std::mutex> lock(launchCountMutex);
        ++launchCounts()[kernel->name];
      }
      kernel->run(grid.x, grid.y, grid.z, copy.data());
    };
  }
  // (int64_t tokens, T *arg...): each parameter by value, as on the GPU.
  int64_t tokens = *static_cast<const int64_t *>(params[0]);
  std::vector<void *> pointers(f.arguments);
  for (uint32_t i = 0; i < f.arguments; ++i)
    pointers[i] = reinterpret_cast<void *>(static_cast<uintptr_t>(
        *static_cast<const CUdeviceptr *>(params[i + 1])));
  cpu::HostKernels::Entry entry = f.fused;
  return [entry, tokens, pointers = std::move(pointers)]() mutable {
    entry(tokens, pointers.data());
  };
}

/// A stream's work not yet run. Stream work runs as late as CUDA lets a
/// GPU run it: when something waits for it (a stream synchronization;
/// another stream's wait on one of its events, which runs it up to the
/// event; a synchronous copy, for blocking streams only, as CUDA's legacy
/// stream does not wait for CU_STREAM_NON_BLOCKING ones; a free). So a read
/// of device memory that no wait orders after the work writing it reads
/// what was there before, as it may on a GPU. KILN_EMULATE_STREAMS=
/// early-side takes the other extreme for the streams a thread makes beside
/// its first (the executor's expert streams): their work runs as soon as it
/// is queued, after what it waits for, so work that does not wait for what
/// it reads reads it too early.
struct Stream {
  bool blocking = true;
  /// Runs its work as soon as it is queued (KILN_EMULATE_STREAMS=early-side).
  bool early = false;
  std::thread::id owner = std::this_thread::get_id();
  std::deque<Launch> pending;
  uint64_t enqueued = 0, ran = 0;
};
/// An event: the point of its stream's work the last record marked, and
/// when the work up to it ran (the host's clock, once it has: a record is
/// itself stream work, as on a GPU). Shared with the queued record, which
/// may run after the event is destroyed, as CUDA allows.
struct Event {
  Stream *stream = nullptr;
  uint64_t mark = 0;
  struct Time {
    uint64_t record = 0; // which record the time is of
    bool reached = false;
    std::chrono::steady_clock::time_point at;
  };
  std::shared_ptr<Time> time = std::make_shared<Time>();
};

/// The null stream (per host thread) and the created streams. Waits run
/// only the calling thread's streams: an executor and its streams live on
/// one thread, and another thread's queue is not this one's to run.
thread_local Stream nullStream;
std::mutex streamsMutex;
std::vector<Stream *> &liveStreams() {
  static std::vector<Stream *> streams;
  return streams;
}
Stream *streamOf(CUstream s) {
  return s ? reinterpret_cast<Stream *>(s) : &nullStream;
}

/// Runs `s`'s work up to its `upTo`-th item (a wait runs the stream it
/// waits for first).
void runUpTo(Stream *s, uint64_t upTo) {
  while (s->ran < upTo && !s->pending.empty()) {
    Launch work = std::move(s->pending.front());
    s->pending.pop_front();
    ++s->ran;
    work();
  }
}
void runAll(Stream *s) { runUpTo(s, s->enqueued); }
/// What a synchronous copy waits for: the null and blocking streams (all
/// streams: a free or a graph's destruction, so no work outlives what it
/// reads).
void runBlockingStreams(bool all) {
  runAll(&nullStream);
  std::vector<Stream *> mine;
  {
    std::lock_guard<std::mutex> lock(streamsMutex);
    for (Stream *s : liveStreams())
      if (s->owner == std::this_thread::get_id() && (all || s->blocking))
        mine.push_back(s);
  }
  for (Stream *s : mine)
    runAll(s);
}

/// Host memory the executor page-locked (cuMemHostRegister): an
/// asynchronous copy from it reads it when the copy runs. From pageable
/// memory CUDA stages the source when the call is made, so the caller may
/// reuse it at once; the emulation copies it then too.
std::mutex pinnedMutex;
std::map<uintptr_t, size_t> &pinnedRanges() {
  static std::map<uintptr_t, size_t> ranges;
  return ranges;
}
bool pinned(const void *p, size_t bytes) {
  std::lock_guard<std::mutex> lock(pinnedMutex);
  auto address = reinterpret_cast<uintptr_t>(p);
  auto it = pinnedRanges().upper_bound(address);
  if (it == pinnedRanges().begin())
    return false;
  --it;
  return address + bytes <= it->first + it->second;
}

/// Device allocations and their sizes. Each is followed by guard bytes (to
/// the next 256 and kGuardBytes more) that a free finds unchanged, or the
/// process stops: a kernel or copy wrote past the end of its buffer.
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kGuardByte = 0xA5;
std::mutex allocationMutex;
std::map<unsigned char *, size_t> &allocations() {
  static std::map<unsigned char *, size_t> sizes;
  return sizes;
}
void checkGuard(const unsigned char *memory, size_t bytes) {
  size_t end = (bytes + 255) / 256 * 256 + kGuardBytes;
  for (size_t i = bytes; i < end; ++i)
    if (memory[i] != kGuardByte) {
      std::fprintf(stderr,
                   "kiln emulated device: byte %zu past the end of a "
                   "%zu-byte allocation was written\n",
                   i - bytes, bytes);
      std::abort();
    }
}

// Capture of one stream at a time: into which graph, and whether a call
// CUDA refuses during capture has invalidated it.
thread_local Graph *capturing = nullptr;
thread_local Stream *captured = nullptr;
thread_local bool captureInvalidated = false;
std::atomic<int64_t> programmaticLaunches{0};
bool isCaptured(CUstream s) { return capturing && streamOf(s) == captured; }

/// Work on stream `s`: recorded in the graph while `s` is captured (a CUDA
/// graph's node, so that each replay runs it and capture itself runs
/// nothing), else queued.
void enqueue(Launch work, CUstream stream) {
  if (isCaptured(stream)) {
    capturing->push_back(std::move(work));
    return;
  }
  Stream *s = streamOf(stream);
  s->pending.push_back(std::move(work));
  ++s->enqueued;
  if (s->early)
    runAll(s);
}

/// Whether a call that waits for the device (a synchronous copy, a stream
/// synchronization) comes during capture. CUDA refuses those on the
/// capturing thread (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) and invalidates
/// the capture, so the emulation does too.
bool refusedInCapture() {
  if (!capturing)
    return false;
  captureInvalidated = true;
  return true;
}

/// Whether a GPU takes this launch configuration (else cuLaunchKernel
/// fails with CUDA_ERROR_INVALID_VALUE, and the emulated driver does too):
/// a grid of at least one block, x below 2^31 and y, z at most 65,535; a
/// block along x of whole warps, at most 1,024 threads, and for a library
/// kernel exactly KILN_BLOCK_THREADS (its __launch_bounds__, and the thread
/// count its host builds run); no dynamic shared memory (no kernel declares
/// any). The host builds would run any grid and ignore the block.
bool launchConfigValid(const Function &f, unsigned gx, unsigned gy, unsigned gz,
                       unsigned bx, unsigned by, unsigned bz,
                       unsigned sharedBytes) {
  bool grid = gx >= 1 && gx <= 0x7fffffffu && gy >= 1 && gy <= 65535 &&
              gz >= 1 && gz <= 65535;
  bool block = by == 1 && bz == 1 && bx % 32 == 0 && bx >= 32 && bx <= 1024 &&
               (!f.library || bx == KILN_BLOCK_THREADS);
  return grid && block && sharedBytes == 0;
}

CUresult launchOrCapture(CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                         unsigned bx, unsigned by, unsigned bz,
                         unsigned sharedBytes, CUstream stream, void **params) {
  const auto *function = reinterpret_cast<const Function *>(f);
  if (!launchConfigValid(*function, gx, gy, gz, bx, by, bz, sharedBytes))
    return CUDA_ERROR_INVALID_VALUE;
  Dim3 grid{static_cast<int>(gx), static_cast<int>(gy), static_cast<int>(gz)};
  enqueue(bind(*function, grid, params), stream);
  return CUDA_SUCCESS;
}

CUdeviceptr toDevice(void *p) {
  return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
}
void *toHost(CUdeviceptr p) {
  return reinterpret_cast<void *>(static_cast<uintptr_t>(p));
}

// The library module's handle; a generated module's is its host kernels
// (an EmulatedImage); any other image (the artifact's cubin or PTX) has no
// code for the host.
CUmodule const kLibraryModule = reinterpret_cast<CUmodule>(uintptr_t{1});

CUresult ok() { return CUDA_SUCCESS; }

DriverApi table() {
  DriverApi a{};
  a.cuInit = [](unsigned) { return ok(); };
  a.cuDriverGetVersion = [](int *v) {
    *v = 13000;
    return ok();
  };
  a.cuGetErrorString = [](CUresult r, const char **text) {
    *text = r == CUDA_ERROR_NO_BINARY_FOR_GPU
                ? "no host code for this image (emulated driver)"
            : r == CUDA_ERROR_NOT_FOUND ? "no such kernel (emulated driver)"
            : r == CUDA_ERROR_OUT_OF_MEMORY
                ? "out of host memory (emulated driver)"
            : r == CUDA_ERROR_INVALID_VALUE
                ? "a grid, block or shared memory size a GPU refuses "
                  "(emulated driver)"
            : r == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
                ? "operation not permitted when stream is capturing "
                  "(emulated driver)"
            : r == CUDA_ERROR_NOT_READY
                ? "the event's work has not run yet (emulated driver)"
            : r == CUDA_ERROR_INVALID_HANDLE
                ? "an event never recorded (emulated driver)"
            : r == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
                ? "capture invalidated by an operation it does not permit "
                  "(emulated driver)"
                : "emulated driver error";
    return ok();
  };
  a.cuDeviceGetCount = [](int *n) {
    *n = 1;
    return ok();
  };
  a.cuDeviceGet = [](CUdevice *d, int) {
    *d = 0;
    return ok();
  };
  a.cuDeviceGetName = [](char *name, int size, CUdevice) {
    const char *what = &hostKernels() == &simtHostKernels()
                           ? "host emulation, library kernels with CUDA threads"
                           : "host emulation";
    std::strncpy(name, what, static_cast<size_t>(size) - 1);
    return ok();
  };
  a.cuDeviceGetAttribute = [](int *value, CUdevice_attribute attr, CUdevice) {
    *value = attr == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR   ? 9
             : attr == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR ? 0
             : attr == CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT     ? 132
                                                                    : 0;
    return ok();
  };
  a.cuDeviceTotalMem = [](size_t *bytes, CUdevice) {
    *bytes = size_t{1} << 34;
    return ok();
  };
  a.cuDevicePrimaryCtxRetain = [](CUcontext *c, CUdevice) {
    *c = reinterpret_cast<CUcontext>(uintptr_t{1});
    return ok();
  };
  a.cuDevicePrimaryCtxRelease = [](CUdevice) { return ok(); };
  a.cuCtxSetCurrent = [](CUcontext) { return ok(); };
  a.cuMemAlloc = [](CUdeviceptr *p, size_t bytes) {
    size_t rounded = (bytes + 255) / 256 * 256;
    auto *memory = static_cast<unsigned char *>(
        std::aligned_alloc(256, rounded + kGuardBytes));
    if (!memory)
      return CUDA_ERROR_OUT_OF_MEMORY;
    std::memset(memory + bytes, kGuardByte, rounded + kGuardBytes - bytes);
    std::lock_guard<std::mutex> lock(allocationMutex);
    allocations()[memory] = bytes;
    *p = toDevice(memory);
    return ok();
  };
  a.cuMemFree = [](CUdeviceptr p) {
    if (!p)
      return ok();
    runBlockingStreams(true); // a free waits for the device
    auto *memory = static_cast<unsigned char *>(toHost(p));
    {
      std::lock_guard<std::mutex> lock(allocationMutex);
      auto it = allocations().find(memory);
      if (it == allocations().end())
        return CUDA_ERROR_INVALID_VALUE;
      checkGuard(memory, it->second);
      allocations().erase(it);
    }
    std::free(memory);
    return ok();
  };
  a.cuMemcpyHtoD = [](CUdeviceptr dst, const void *src, size_t bytes) {
    if (refusedInCapture())
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    runBlockingStreams(false);
    std::memcpy(toHost(dst), src, bytes);
    return ok();
  };
  a.cuMemcpyDtoH = [](void *dst, CUdeviceptr src, size_t bytes) {
    if (refusedInCapture())
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    runBlockingStreams(false);
    std::memcpy(dst, toHost(src), bytes);
    return ok();
  };
  // Asynchronous copies and fills are stream work: captured, they are the
  // graph's nodes, reading their source when a replay reaches them.
  a.cuMemcpyHtoDAsync = [](CUdeviceptr dst, const void *src, size_t bytes,
                           CUstream stream) {
    if (pinned(src, bytes) || isCaptured(stream)) {
      enqueue([dst, src, bytes] { std::memcpy(toHost(dst), src, bytes); },
              stream);
      return ok();
    }
    const auto *from = static_cast<const std::byte *>(src);
    enqueue(
        [dst, staged = std::vector<std::byte>(from, from + bytes)] {
          std::memcpy(toHost(dst), staged.data(), staged.size());
        },
        stream);
    return ok();
  };
  // CUDA leaves a copy between overlapping ranges undefined: refused here.
  a.cuMemcpyDtoDAsync = [](CUdeviceptr dst, CUdeviceptr src, size_t bytes,
                           CUstream stream) {
    if (dst < src + bytes && src < dst + bytes)
      return CUDA_ERROR_INVALID_VALUE;
    enqueue([dst, src, bytes] { std::memcpy(toHost(dst), toHost(src), bytes); },
            stream);
    return ok();
  };
  a.cuMemsetD8Async = [](CUdeviceptr dst, unsigned char value, size_t bytes,
                         CUstream stream) {
    enqueue([dst, value, bytes] { std::memset(toHost(dst), value, bytes); },
            stream);
    return ok();
  };
  // Host memory is host memory: nothing to page-lock, but copies from it
  // read it when they run.
  a.cuMemHostRegister = [](void *p, size_t bytes, unsigned) {
    std::lock_guard<std::mutex> lock(pinnedMutex);
    pinnedRanges()[reinterpret_cast<uintptr_t>(p)] = bytes;
    return ok();
  };
  a.cuMemHostUnregister = [](void *p) {
    std::lock_guard<std::mutex> lock(pinnedMutex);
    pinnedRanges().erase(reinterpret_cast<uintptr_t>(p));
    return ok();
  };
  a.cuModuleLoadData = [](CUmodule *m, const void *image) {
    if (image == libraryFatbin()) {
      *m = kLibraryModule;
      return ok();
    }
    // Cubins start with an ELF header and PTX with text, neither with the
    // magic.
    const auto *emulated = static_cast<const EmulatedImage *>(image);
    uint64_t magic = 0;
    std::memcpy(&magic, image, sizeof(magic));
    if (magic != EmulatedImage::kMagic || !emulated->kernels)
      return CUDA_ERROR_NO_BINARY_FOR_GPU;
    *m = reinterpret_cast<CUmodule>(
        const_cast<cpu::HostKernels *>(emulated->kernels));
    return ok();
  };
  a.cuModuleUnload = [](CUmodule) { return ok(); };
  a.cuModuleGetFunction = [](CUfunction *f, CUmodule m, const char *name) {
    if (m != kLibraryModule) {
      const auto *kernels = reinterpret_cast<const cpu::HostKernels *>(m);
      cpu::HostKernels::Entry entry = kernels->find(name);
      if (!entry)
        return CUDA_ERROR_NOT_FOUND;
      *f = reinterpret_cast<CUfunction>(
          newFusedFunction(entry, kernels->arguments(name)));
      return ok();
    }
    const std::vector<HostKernel> &kernels = hostKernels();
    for (size_t i = 0; i < kernels.size(); ++i)
      if (std::string_view(kernels[i].name) == name) {
        *f = reinterpret_cast<CUfunction>(
            const_cast<Function *>(&libraryFunctions()[i]));
        return ok();
      }
    return CUDA_ERROR_NOT_FOUND;
  };
  a.cuFuncSetAttribute = [](CUfunction, CUfunction_attribute, int) {
    return ok();
  };
  a.cuLaunchKernel = [](CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                        unsigned bx, unsigned by, unsigned bz,
                        unsigned sharedBytes, CUstream stream, void **params,
                        void **) {
    return launchOrCapture(f, gx, gy, gz, bx, by, bz, sharedBytes, stream,
                           params);
  };
  a.cuLaunchKernelEx = [](const CUlaunchConfig *config, CUfunction f,
                          void **params, void **) {
    for (unsigned i = 0; i < config->numAttrs; ++i)
      if (config->attrs[i].id ==
              CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION &&
          config->attrs[i].value.programmaticStreamSerializationAllowed)
        ++programmaticLaunches;
    return launchOrCapture(f, config->gridDimX, config->gridDimY,
                           config->gridDimZ, config->blockDimX,
                           config->blockDimY, config->blockDimZ,
                           config->sharedMemBytes, config->hStream, params);
  };
  a.cuStreamCreate = [](CUstream *s, unsigned flags) {
    auto *stream = new Stream;
    stream->blocking = (flags & CU_STREAM_NON_BLOCKING) == 0;
    const char *order = std::getenv("KILN_EMULATE_STREAMS");
    bool earlySide = order && std::string_view(order) == "early-side";
    std::lock_guard<std::mutex> lock(streamsMutex);
    for (Stream *other : liveStreams())
      stream->early |= earlySide && other->owner == stream->owner;
    liveStreams().push_back(stream);
    *s = reinterpret_cast<CUstream>(stream);
    return ok();
  };
  a.cuStreamDestroy = [](CUstream s) {
    // Work already queued still runs, as CUDA finishes it.
    Stream *stream = streamOf(s);
    runAll(stream);
    {
      std::lock_guard<std::mutex> lock(streamsMutex);
      std::erase(liveStreams(), stream);
    }
    delete stream;
    return ok();
  };
  a.cuStreamSynchronize = [](CUstream s) {
    if (refusedInCapture())
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    runAll(streamOf(s));
    return ok();
  };
  a.cuStreamBeginCapture = [](CUstream s, CUstreamCaptureMode) {
    capturing = new Graph;
    captured = streamOf(s);
    captureInvalidated = false;
    return ok();
  };
  a.cuStreamEndCapture = [](CUstream, CUgraph *graph) {
    std::unique_ptr<Graph> recorded(capturing);
    capturing = nullptr;
    captured = nullptr;
    *graph = nullptr;
    if (captureInvalidated)
      return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    *graph = reinterpret_cast<CUgraph>(recorded.release());
    return ok();
  };
  a.cuEventCreate = [](CUevent *e, unsigned) {
    *e = reinterpret_cast<CUevent>(new Event);
    return ok();
  };
  a.cuEventDestroy = [](CUevent e) {
    delete reinterpret_cast<Event *>(e);
    return ok();
  };
  a.cuEventRecord = [](CUevent e, CUstream s) {
    Stream *stream = streamOf(s);
    if (isCaptured(s))
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; // not emulated
    auto *event = reinterpret_cast<Event *>(e);
    std::shared_ptr<Event::Time> time = event->time;
    uint64_t record = ++time->record;
    time->reached = false;
    enqueue(
        [time, record] {
          if (time->record != record)
            return; // recorded again since
          time->reached = true;
          time->at = std::chrono::steady_clock::now();
        },
        s);
    event->stream = stream;
    event->mark = stream->enqueued;
    return ok();
  };
  a.cuEventElapsedTime = [](float *ms, CUevent start, CUevent end) {
    const Event::Time &from = *reinterpret_cast<Event *>(start)->time;
    const Event::Time &to = *reinterpret_cast<Event *>(end)->time;
    if (!from.record || !to.record)
      return CUDA_ERROR_INVALID_HANDLE;
    if (!from.reached || !to.reached)
      return CUDA_ERROR_NOT_READY;
    *ms = std::chrono::duration<float, std::milli>(to.at - from.at).count();
    return ok();
  };
  a.cuStreamWaitEvent = [](CUstream s, CUevent e, unsigned) {
    Event event = *reinterpret_cast<Event *>(e);
    if (!event.stream)
      return ok(); // never recorded: nothing to wait for
    if (isCaptured(s))
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED; // not emulated
    enqueue([event] { runUpTo(event.stream, event.mark); }, s);
    return ok();
  };
  a.cuGraphInstantiateWithFlags = [](CUgraphExec *exec, CUgraph graph,
                                     unsigned long long) {
    *exec = reinterpret_cast<CUgraphExec>(
        new Graph(*reinterpret_cast<Graph *>(graph)));
    return ok();
  };
  a.cuGraphLaunch = [](CUgraphExec exec, CUstream s) {
    const Graph *graph = reinterpret_cast<Graph *>(exec);
    enqueue(
        [graph] {
          for (const Launch &launch : *graph)
            launch();
        },
        s);
    return ok();
  };
  a.cuGraphExecDestroy = [](CUgraphExec exec) {
    runBlockingStreams(true); // no queued replay outlives its graph
    delete reinterpret_cast<Graph *>(exec);
    return ok();
  };
  a.cuGraphDestroy = [](CUgraph graph) {
    delete reinterpret_cast<Graph *>(graph);
    return ok();
  };
  return a;
}

} // namespace

int64_t emulatedLaunches(std::string_view kernel) {
  std::lock_guard<std::mutex> lock(launchCountMutex);
  auto it = launchCounts().find(kernel);
  return it == launchCounts().end() ? 0 : it->second;
}

void emulatedEnqueue(std::function<void()> work, CUstream stream) {
  enqueue(std::move(work), stream);
}

int64_t emulatedProgrammaticLaunches() { return programmaticLaunches; }

/// The sizes in `ranges` added up, under the lock that guards it.
template <class Key>
size_t totalBytes(std::mutex &guard, const std::map<Key, size_t> &ranges) {
  std::lock_guard<std::mutex> lock(guard);
  size_t bytes = 0;
  for (const auto &[start, size] : ranges)
    bytes += size;
  return bytes;
}

size_t emulatedDeviceBytes() {
  return totalBytes(allocationMutex, allocations());
}

size_t emulatedPinnedBytes() { return totalBytes(pinnedMutex, pinnedRanges()); }

Driver emulatedDriver() { return Driver::fromTable(table(), 13000); }

} // namespace kiln::cuda
