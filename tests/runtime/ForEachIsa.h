// Runs a kernel test with the AVX2 kernels on and, when the CPU has them,
// again with the portable ones.
#ifndef KILN_TESTS_RUNTIME_FOREACHISA_H
#define KILN_TESTS_RUNTIME_FOREACHISA_H

#include "runtime/src/cpu/Kernels.h"

#include "gtest/gtest.h"

namespace kiln::cpu {

template <typename F> void forEachIsa(F body) {
  setVectorKernels(true);
  bool hasVector = vectorKernelsActive();
  {
    SCOPED_TRACE(hasVector ? "avx2" : "portable");
    body();
  }
  if (hasVector) {
    setVectorKernels(false);
    SCOPED_TRACE("portable");
    body();
    setVectorKernels(true);
  }
}

} // namespace kiln::cpu

#endif // KILN_TESTS_RUNTIME_FOREACHISA_H
