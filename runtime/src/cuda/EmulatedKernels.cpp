#include "runtime/src/cuda/EmulatedKernels.h"

#include "runtime/kernels/GemmGroup.h"
#include "runtime/kernels/KvAttention.h"
#include "runtime/kernels/Library.h"
#include "runtime/kernels/Matmul.h"
#include "runtime/kernels/MmaAttention.h"
#include "runtime/kernels/MmaGemm.h"

namespace kiln::cuda {

const std::vector<HostKernel> &plainHostKernels() {
  static const std::vector<HostKernel> kernels = {
#include "runtime/src/cuda/EmulatedKernels.def"
  };
  return kernels;
}

void observePlainKernelPrefetches(void (*observe)(const void *at,
                                                  long long bytes)) {
  ::kiln::hostPrefetchObserver = observe;
}

} // namespace kiln::cuda
