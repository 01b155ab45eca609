// Runs a kernel test with each kernel ISA level the CPU has: the AVX2
// kernels with their AVX-512 entries, the AVX2 kernels alone, and the
// portable ones.
#ifndef KILN_TESTS_RUNTIME_FOREACHISA_H
#define KILN_TESTS_RUNTIME_FOREACHISA_H

#include "runtime/src/cpu/Kernels.h"

#include "gtest/gtest.h"

namespace kiln::cpu {

template <typename F> void forEachIsa(F body) {
  setVectorKernels(true);
  setAvx512Kernels(true);
  bool hasVector = vectorKernelsActive();
  if (avx512KernelsActive()) {
    SCOPED_TRACE("avx512");
    body();
    setAvx512Kernels(false);
  }
  {
    SCOPED_TRACE(hasVector ? "avx2" : "portable");
    body();
  }
  setAvx512Kernels(true);
  if (hasVector) {
    setVectorKernels(false);
    SCOPED_TRACE("portable");
    body();
    setVectorKernels(true);
  }
}

} // namespace kiln::cpu

#endif // KILN_TESTS_RUNTIME_FOREACHISA_H
