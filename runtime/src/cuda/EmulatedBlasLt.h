// A host emulation of the cuBLASLt entry points BlasLt calls, for the
// emulated driver (EmulatedDriver.h; KILN_EMULATE_CUBLASLT=1): descriptors
// and layouts are host structs, and cublasLtMatmul computes the TN GEMMs
// BlasLt asks for (bf16, or e4m3 with BLK128x128 weight and VEC128
// activation scales in the layouts BlasLt documents) in fp32 on host
// memory. It checks the executor's glue around cuBLASLt (operand slices,
// activation conversion and quantization, scale layouts as BlasLt
// describes them) against the CPU executor without a GPU; whether
// cuBLASLt reads those layouts so is what tests/runtime/CublasLtTest.cpp
// checks on a GPU.
#ifndef KILN_RUNTIME_CUDA_EMULATEDBLASLT_H
#define KILN_RUNTIME_CUDA_EMULATEDBLASLT_H

#include "runtime/src/cuda/CublasLt.h"

#include <cstdint>

namespace kiln::cuda {

/// The emulation; with `declineEverything`, one whose algorithm query
/// finds nothing for any GEMM (KILN_EMULATE_CUBLASLT=decline), as cuBLASLt
/// does for a configuration it has no kernel for.
BlasLtApi emulatedBlasLtApi(bool declineEverything = false);

/// GEMMs the emulation has run in this process, by operand type.
struct EmulatedBlasLtCalls {
  int64_t bf16 = 0, fp8 = 0;
};
EmulatedBlasLtCalls emulatedBlasLtCalls();

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_EMULATEDBLASLT_H
