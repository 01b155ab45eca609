// The library kernels built with CUDA's threads on the host (HostSimt.h):
// the emulated driver runs them under KILN_EMULATE_SIMT=1. Their
// parameter structs are the plain build's, in the kiln::host_simt inline
// namespace: the driver passes the launch's bytes.
#if defined(__x86_64__)
#define KILN_HOST_SIMT 1
#endif

#include "runtime/src/cuda/EmulatedKernels.h"

#include "runtime/kernels/GemmGroup.h"
#include "runtime/kernels/KvAttention.h"
#include "runtime/kernels/Library.h"
#include "runtime/kernels/Matmul.h"
#include "runtime/kernels/MmaAttention.h"
#include "runtime/kernels/MmaGemm.h"

namespace kiln::cuda {

const std::vector<HostKernel> &simtHostKernels() {
#if defined(KILN_HOST_SIMT)
  static const std::vector<HostKernel> kernels = {
#include "runtime/src/cuda/EmulatedKernels.def"
  };
#else
  static const std::vector<HostKernel> kernels;
#endif
  return kernels;
}

} // namespace kiln::cuda
