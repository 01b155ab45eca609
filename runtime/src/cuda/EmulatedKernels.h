// The library kernels' host builds as the emulated driver's kernel table
// (EmulatedKernels.def): plain (one thread per block) and with CUDA's
// threads (runtime/kernels/HostSimt.h), for tests.
#ifndef KILN_RUNTIME_CUDA_EMULATED_KERNELS_H
#define KILN_RUNTIME_CUDA_EMULATED_KERNELS_H

#include <cstddef>
#include <vector>

namespace kiln::cuda {

/// A library kernel's host build and the size of its parameter struct.
struct HostKernel {
  const char *name;
  void (*run)(int gridX, int gridY, int gridZ, const void *params);
  size_t paramBytes;
};

/// Each kernel of EmulatedKernels.def, in order, one thread per block.
const std::vector<HostKernel> &plainHostKernels();

/// The same kernels with a block's threads as fibers (HostSimt.h); empty
/// where that build is not available (only x86-64 switches fibers).
const std::vector<HostKernel> &simtHostKernels();

/// Tests: `observe` is called with each range the plain kernels ask the L2
/// for (prefetchToL2); null stops it.
void observePlainKernelPrefetches(void (*observe)(const void *at,
                                                  long long bytes));

} // namespace kiln::cuda

/// The table of EmulatedKernels.def in a translation unit that includes
/// the kernels (plain or SIMT; the grid type is that build's Dim3).
#define KILN_LIBRARY_KERNEL(name, Params)                                      \
  ::kiln::cuda::HostKernel{                                                    \
      #name,                                                                   \
      [](int x, int y, int z, const void *params) {                            \
        ::kiln::name##_host(::kiln::Dim3{x, y, z},                             \
                            *static_cast<const ::kiln::Params *>(params));     \
      },                                                                       \
      sizeof(::kiln::Params)},

#endif // KILN_RUNTIME_CUDA_EMULATED_KERNELS_H
