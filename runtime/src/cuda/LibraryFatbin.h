// The fatbin of runtime/src/cuda/LibraryKernels.cu, embedded at build time.
#ifndef KILN_RUNTIME_CUDA_LIBRARYFATBIN_H
#define KILN_RUNTIME_CUDA_LIBRARYFATBIN_H

#include <cstddef>

namespace kiln::cuda {

/// The fatbin's bytes (a cuModuleLoadData image).
const void *libraryFatbin();
size_t libraryFatbinBytes();

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_LIBRARYFATBIN_H
