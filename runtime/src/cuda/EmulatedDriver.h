// A host emulation of the driver entry points the CUDA executor calls:
// device memory is host memory, the library module is the library kernels'
// host builds (runtime/kernels, one call per block), stream capture records
// the launches with a copy of their parameters and a graph launch replays
// them. The artifact's generated module cannot load, so fused groups run as
// their members. This runs the executor's whole plan walk (argument
// binding, grids, splits, graphs) on the CPU, so that CI checks it against
// the Hugging Face goldens without a GPU; it is not a way to run fast.
#ifndef KILN_RUNTIME_CUDA_EMULATEDDRIVER_H
#define KILN_RUNTIME_CUDA_EMULATEDDRIVER_H

#include "runtime/src/cuda/CudaDriver.h"

namespace kiln::cuda {

/// The emulated device: "host emulation", sm_90, 132 multiprocessors (as an
/// H100 SXM, so that the executor makes the same launch decisions).
Driver emulatedDriver();

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_EMULATEDDRIVER_H
