//===- Nvrtc.h - CUDA source -> CUBIN and PTX with NVRTC --------*- C++ -*-===//
//
// NVRTC is loaded at run time with dlopen (libnvrtc.so.13, then
// libnvrtc.so) through a table of entry points, so the compiler builds and
// runs without the CUDA toolkit and says why it cannot compile CUDA there.
// Only nvrtc.h's types are used at build time.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_CODEGEN_NVRTC_H
#define KILN_CODEGEN_NVRTC_H

#include "absl/status/statusor.h"

#include <string>
#include <utility>
#include <vector>

namespace kiln::codegen {

struct CudaBinary {
  /// ELF for `arch` (sm_90a: Hopper's arch-specific features).
  std::string cubin;
  /// PTX for the matching virtual architecture (compute_90), which the
  /// driver can JIT for later GPUs.
  std::string ptx;
  /// NVRTC's log of the CUBIN compile (warnings).
  std::string log;
};

/// A header the source includes, by the name it includes it with.
using CudaHeader = std::pair<std::string, std::string>;

/// Compiles `source` (program name `name`, used in diagnostics) for `arch`
/// ("sm_90a") to a CUBIN, and for its virtual architecture ("compute_90")
/// to PTX. Unavailable when NVRTC cannot be loaded; InvalidArgument with
/// the program log when the source does not compile. Multiply-adds are not
/// contracted into FMAs (--fmad=false), so kernels round as their host
/// build does.
absl::StatusOr<CudaBinary>
compileCuda(const std::string &source, const std::string &name,
            const std::string &arch,
            const std::vector<CudaHeader> &headers = {});

} // namespace kiln::codegen

#endif // KILN_CODEGEN_NVRTC_H
