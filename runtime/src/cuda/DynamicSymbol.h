// Entry points of a library loaded with dlopen, into a typed table slot.
#ifndef KILN_RUNTIME_CUDA_DYNAMICSYMBOL_H
#define KILN_RUNTIME_CUDA_DYNAMICSYMBOL_H

#include <dlfcn.h>

namespace kiln::cuda {

/// Resolves `name` into `slot`; false when the library lacks it.
template <typename Fn> bool resolve(void *library, const char *name, Fn &slot) {
  slot = reinterpret_cast<Fn>(::dlsym(library, name));
  return slot != nullptr;
}

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_DYNAMICSYMBOL_H
