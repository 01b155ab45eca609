#include "runtime/src/cuda/EmulatedDriver.h"

#include "runtime/src/cuda/LibraryFatbin.h"

#include "runtime/kernels/KvAttention.h"
#include "runtime/kernels/Library.h"
#include "runtime/kernels/Matmul.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

namespace kiln::cuda {
namespace {

/// A library kernel's host build and the size of its parameter struct.
struct HostKernel {
  const char *name;
  void (*run)(Dim3 grid, const void *params);
  size_t paramBytes;
};

template <class Params, void (*Host)(Dim3, const Params &)>
HostKernel hostKernel(const char *name) {
  return {name,
          [](Dim3 grid, const void *params) {
            Host(grid, *static_cast<const Params *>(params));
          },
          sizeof(Params)};
}

#define KILN_HOST_KERNEL(name, Params) hostKernel<Params, name##_host>(#name)

const std::vector<HostKernel> &hostKernels() {
  static const std::vector<HostKernel> kernels = {
      KILN_HOST_KERNEL(kiln_embedding_f32, EmbeddingParams),
      KILN_HOST_KERNEL(kiln_embedding_bf16, EmbeddingParams),
      KILN_HOST_KERNEL(kiln_embedding_f16, EmbeddingParams),
      KILN_HOST_KERNEL(kiln_rms_norm_f32, RmsNormParams),
      KILN_HOST_KERNEL(kiln_rms_norm_bf16, RmsNormParams),
      KILN_HOST_KERNEL(kiln_rms_norm_f16, RmsNormParams),
      KILN_HOST_KERNEL(kiln_add, BinaryParams),
      KILN_HOST_KERNEL(kiln_swiglu, BinaryParams),
      KILN_HOST_KERNEL(kiln_to_bf16, ToBf16Params),
      KILN_HOST_KERNEL(kiln_slice, SliceParams),
      KILN_HOST_KERNEL(kiln_concat, ConcatParams),
      KILN_HOST_KERNEL(kiln_broadcast, BroadcastParams),
      KILN_HOST_KERNEL(kiln_rope, RopeParams),
      KILN_HOST_KERNEL(kiln_moe_gate_f32_f32, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_f32_bf16, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_f32_f16, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_bf16_f32, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_bf16_bf16, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_bf16_f16, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_f16_f32, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_f16_bf16, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_gate_f16_f16, MoeGateParams),
      KILN_HOST_KERNEL(kiln_moe_route, MoeRouteParams),
      KILN_HOST_KERNEL(kiln_moe_gather, MoeGatherParams),
      KILN_HOST_KERNEL(kiln_invert_slots, InvertSlotsParams),
      KILN_HOST_KERNEL(kiln_moe_combine, MoeCombineParams),
      KILN_HOST_KERNEL(kiln_kv_append, KvAppendParams),
      KILN_HOST_KERNEL(kiln_kv_append_fp8, KvAppendParams),
      KILN_HOST_KERNEL(kiln_kv_gather, KvGatherParams),
      KILN_HOST_KERNEL(kiln_attention, AttentionParams),
      KILN_HOST_KERNEL(kiln_attention_merge, AttentionParams),
      KILN_HOST_KERNEL(kiln_gemv_f32, GemmParams),
      KILN_HOST_KERNEL(kiln_gemv_bf16, GemmParams),
      KILN_HOST_KERNEL(kiln_gemv_f16, GemmParams),
      KILN_HOST_KERNEL(kiln_gemv_f8e4m3, GemmParams),
      KILN_HOST_KERNEL(kiln_gemv_f8e4m3_q8, GemmParams),
      KILN_HOST_KERNEL(kiln_quantize_rows, QuantizeRowsParams),
      KILN_HOST_KERNEL(kiln_quantize_fp8, QuantizeFp8Params),
      KILN_HOST_KERNEL(kiln_fp8_scales_by_block, Fp8ScalesByBlockParams),
  };
  return kernels;
}

/// A captured launch: the kernel, its grid and a copy of its parameters.
struct Recorded {
  const HostKernel *kernel;
  Dim3 grid;
  std::vector<std::byte> params;
};
using Graph = std::vector<Recorded>;

// One emulated stream (the executor uses one): whether it is capturing,
// and into which graph.
thread_local Graph *capturing = nullptr;

CUdeviceptr toDevice(void *p) {
  return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(p));
}
void *toHost(CUdeviceptr p) {
  return reinterpret_cast<void *>(static_cast<uintptr_t>(p));
}

// The library module's handle; any other image (the artifact's cubin or
// PTX) has no code for the host.
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
    std::strncpy(name, "host emulation", static_cast<size_t>(size) - 1);
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
    std::memcpy(toHost(dst), src, bytes);
    return ok();
  };
  a.cuMemcpyDtoH = [](void *dst, CUdeviceptr src, size_t bytes) {
    std::memcpy(dst, toHost(src), bytes);
    return ok();
  };
  a.cuMemcpyHtoDAsync = [](CUdeviceptr dst, const void *src, size_t bytes,
                           CUstream) {
    std::memcpy(toHost(dst), src, bytes);
    return ok();
  };
  a.cuMemsetD8Async = [](CUdeviceptr dst, unsigned char value, size_t bytes,
                         CUstream) {
    std::memset(toHost(dst), value, bytes);
    return ok();
  };
  // Host memory is host memory: nothing to page-lock.
  a.cuMemHostRegister = [](void *, size_t, unsigned) { return ok(); };
  a.cuMemHostUnregister = [](void *) { return ok(); };
  a.cuModuleLoadData = [](CUmodule *m, const void *image) {
    if (image != libraryFatbin())
      return CUDA_ERROR_NO_BINARY_FOR_GPU;
    *m = kLibraryModule;
    return ok();
  };
  a.cuModuleUnload = [](CUmodule) { return ok(); };
  a.cuModuleGetFunction = [](CUfunction *f, CUmodule m, const char *name) {
    if (m != kLibraryModule)
      return CUDA_ERROR_NOT_FOUND;
    for (const HostKernel &k : hostKernels())
      if (std::string_view(k.name) == name) {
        *f = reinterpret_cast<CUfunction>(const_cast<HostKernel *>(&k));
        return ok();
      }
    return CUDA_ERROR_NOT_FOUND;
  };
  a.cuFuncSetAttribute = [](CUfunction, CUfunction_attribute, int) {
    return ok();
  };
  a.cuLaunchKernel = [](CUfunction f, unsigned gx, unsigned gy, unsigned gz,
                        unsigned, unsigned, unsigned, unsigned, CUstream,
                        void **params, void **) {
    const auto *kernel = reinterpret_cast<const HostKernel *>(f);
    Dim3 grid{static_cast<int>(gx), static_cast<int>(gy), static_cast<int>(gz)};
    if (capturing) {
      const auto *bytes = static_cast<const std::byte *>(params[0]);
      capturing->push_back({kernel, grid, {bytes, bytes + kernel->paramBytes}});
      return ok();
    }
    kernel->run(grid, params[0]);
    return ok();
  };
  a.cuStreamCreate = [](CUstream *s, unsigned) {
    *s = reinterpret_cast<CUstream>(uintptr_t{1});
    return ok();
  };
  a.cuStreamDestroy = [](CUstream) { return ok(); };
  a.cuStreamSynchronize = [](CUstream) { return ok(); };
  a.cuStreamBeginCapture = [](CUstream, CUstreamCaptureMode) {
    capturing = new Graph;
    return ok();
  };
  a.cuStreamEndCapture = [](CUstream, CUgraph *graph) {
    *graph = reinterpret_cast<CUgraph>(capturing);
    capturing = nullptr;
    return ok();
  };
  a.cuGraphInstantiateWithFlags = [](CUgraphExec *exec, CUgraph graph,
                                     unsigned long long) {
    *exec = reinterpret_cast<CUgraphExec>(
        new Graph(*reinterpret_cast<Graph *>(graph)));
    return ok();
  };
  a.cuGraphLaunch = [](CUgraphExec exec, CUstream) {
    for (const Recorded &r : *reinterpret_cast<Graph *>(exec))
      r.kernel->run(r.grid, r.params.data());
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

Driver emulatedDriver() { return Driver::fromTable(table(), 13000); }

} // namespace kiln::cuda
