//===- GpuModule.h - fused kernels compiled for a GPU -----------*- C++ -*-===//
#ifndef KILN_CODEGEN_GPUMODULE_H
#define KILN_CODEGEN_GPUMODULE_H

#include "runtime/schema/kiln_generated.h"

#include "absl/status/status.h"
#include "mlir/IR/BuiltinOps.h"

#include <string>

namespace kiln::codegen {

/// Emits every `kiln.fused` group of the entry functions (@prefill,
/// @decode, or @forward) and compiles them with NVRTC as one program for
/// `arch` (e.g. "sm_90a"), adding the cubin, the PTX and the kernel table
/// to `plan`. Fails when a group cannot be emitted or NVRTC is unavailable
/// or rejects the source.
absl::Status addGpuModule(mlir::ModuleOp module, artifact::ModelT &plan,
                          const std::string &arch);

} // namespace kiln::codegen

#endif // KILN_CODEGEN_GPUMODULE_H
