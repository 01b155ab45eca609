#include "runtime/src/cuda/EmulatedDriver.h"

#include "runtime/src/cuda/LibraryFatbin.h"

#include "runtime/src/cuda/EmulatedKernels.h"

#include "runtime/kernels/FusedPrelude.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
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

// One emulated stream (the executor uses one): whether it is capturing,
// into which graph, and whether a call CUDA refuses during capture has
// invalidated it.
thread_local Graph *capturing = nullptr;
thread_local bool captureInvalidated = false;
std::atomic<int64_t> programmaticLaunches{0};

/// Work on the emulated stream: run now, or, while the stream is captured,
/// recorded in the graph (a CUDA graph's node), so that each replay runs
/// it and capture itself runs nothing.
void enqueue(Launch work) {
  if (capturing)
    capturing->push_back(std::move(work));
  else
    work();
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
                         unsigned sharedBytes, void **params) {
  const auto *function = reinterpret_cast<const Function *>(f);
  if (!launchConfigValid(*function, gx, gy, gz, bx, by, bz, sharedBytes))
    return CUDA_ERROR_INVALID_VALUE;
  Dim3 grid{static_cast<int>(gx), static_cast<int>(gy), static_cast<int>(gz)};
  enqueue(bind(*function, grid, params));
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
    void *memory = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!memory)
      return CUDA_ERROR_OUT_OF_MEMORY;
    *p = toDevice(memory);
    return ok();
  };
  a.cuMemFree = [](CUdeviceptr p) {
    std::free(toHost(p));
    return ok();
  };
  a.cuMemcpyHtoD = [](CUdeviceptr dst, const void *src, size_t bytes) {
    if (refusedInCapture())
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    std::memcpy(toHost(dst), src, bytes);
    return ok();
  };
  a.cuMemcpyDtoH = [](void *dst, CUdeviceptr src, size_t bytes) {
    if (refusedInCapture())
      return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    std::memcpy(dst, toHost(src), bytes);
    return ok();
  };
  // Asynchronous copies and fills are stream work: captured, they are the
  // graph's nodes, reading their source when a replay reaches them.
  a.cuMemcpyHtoDAsync = [](CUdeviceptr dst, const void *src, size_t bytes,
                           CUstream) {
    enqueue([dst, src, bytes] { std::memcpy(toHost(dst), src, bytes); });
    return ok();
  };
  a.cuMemsetD8Async = [](CUdeviceptr dst, unsigned char value, size_t bytes,
                         CUstream) {
    enqueue([dst, value, bytes] { std::memset(toHost(dst), value, bytes); });
    return ok();
  };
  // Host memory is host memory: nothing to page-lock.
  a.cuMemHostRegister = [](void *, size_t, unsigned) { return ok(); };
  a.cuMemHostUnregister = [](void *) { return ok(); };
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
                        unsigned sharedBytes, CUstream, void **params,
                        void **) {
    return launchOrCapture(f, gx, gy, gz, bx, by, bz, sharedBytes, params);
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
                           config->sharedMemBytes, params);
  };
  a.cuStreamCreate = [](CUstream *s, unsigned) {
    *s = reinterpret_cast<CUstream>(uintptr_t{1});
    return ok();
  };
  a.cuStreamDestroy = [](CUstream) { return ok(); };
  a.cuStreamSynchronize = [](CUstream) {
    return refusedInCapture() ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : ok();
  };
  a.cuStreamBeginCapture = [](CUstream, CUstreamCaptureMode) {
    capturing = new Graph;
    captureInvalidated = false;
    return ok();
  };
  a.cuStreamEndCapture = [](CUstream, CUgraph *graph) {
    std::unique_ptr<Graph> captured(capturing);
    capturing = nullptr;
    *graph = nullptr;
    if (captureInvalidated)
      return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    *graph = reinterpret_cast<CUgraph>(captured.release());
    return ok();
  };
  a.cuGraphInstantiateWithFlags = [](CUgraphExec *exec, CUgraph graph,
                                     unsigned long long) {
    *exec = reinterpret_cast<CUgraphExec>(
        new Graph(*reinterpret_cast<Graph *>(graph)));
    return ok();
  };
  a.cuGraphLaunch = [](CUgraphExec exec, CUstream) {
    for (const Launch &launch : *reinterpret_cast<Graph *>(exec))
      launch();
    return ok();
  };
  a.cuGraphExecDestroy = [](CUgraphExec exec) {
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

void emulatedEnqueue(std::function<void()> work) { enqueue(std::move(work)); }

int64_t emulatedProgrammaticLaunches() { return programmaticLaunches; }

Driver emulatedDriver() { return Driver::fromTable(table(), 13000); }

} // namespace kiln::cuda
