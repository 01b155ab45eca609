// A host emulation of the driver entry points the CUDA executor calls:
// device memory is host memory, the library module is the library kernels'
// host builds (runtime/kernels, one call per block), stream capture records
// the launches with a copy of their parameters and a graph launch replays
// them. The artifact's cubin has no host code; in its place the executor
// loads an EmulatedImage naming the model's generated kernels built for
// the host (its HostModule), which the launches of fused groups then call
// with the arguments the GPU kernels get. This runs the executor's whole
// plan walk (argument binding, fused launches, grids, splits, graphs) on
// the CPU, so that CI checks it against the Hugging Face goldens without a
// GPU; it is not a way to run fast.
#ifndef KILN_RUNTIME_CUDA_EMULATEDDRIVER_H
#define KILN_RUNTIME_CUDA_EMULATEDDRIVER_H

#include "runtime/src/cpu/HostKernels.h"
#include "runtime/src/cuda/CudaDriver.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

namespace kiln::cuda {

/// What the executor passes the emulated cuModuleLoadData for the
/// artifact's generated kernels: their host builds.
struct EmulatedImage {
  static constexpr uint64_t kMagic = 0x64657461'6c756d65; // "emulated"
  uint64_t magic = kMagic;
  const cpu::HostKernels *kernels = nullptr;
};

/// The emulated device: "host emulation", sm_90, 132 multiprocessors (as an
/// H100 SXM, so that the executor makes the same launch decisions).
Driver emulatedDriver();

/// How many times the emulated device has run library kernel `kernel`
/// (graph replays included), so that tests can tell which path ran.
int64_t emulatedLaunches(std::string_view kernel);

/// Work on emulated stream `stream` (the cuBLASLt emulation's GEMMs): run
/// when something waits for the stream, or recorded in the graph being
/// captured and run by its replays.
void emulatedEnqueue(std::function<void()> work, CUstream stream);

/// How many kernels were launched (or captured) with programmatic stream
/// serialization. The emulation runs launches in order, which is what
/// awaitPrecedingKernels makes of them on a GPU.
int64_t emulatedProgrammaticLaunches();

/// The host bytes page-locked now (cuMemHostRegister, not yet unregistered).
size_t emulatedPinnedBytes();

/// The device bytes allocated now (cuMemAlloc, not yet freed). A free finds
/// the bytes past each allocation's end as they were left, or stops the
/// process naming the allocation: something wrote past its end.
size_t emulatedDeviceBytes();

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_EMULATEDDRIVER_H
