//===- HostModule.h - fused kernels compiled for the CPU --------*- C++ -*-===//
//
// The host builds of the fused groups (the same sources the GPU module
// compiles) built with the host C++ compiler into one shared object that
// the artifact carries and the CPU runtime loads with dlopen, as IREE's
// system-library loader and Triton's CPU backend do. Builds are cached by
// content, so recompiling an unchanged model does not run the compiler.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_CODEGEN_HOSTMODULE_H
#define KILN_CODEGEN_HOSTMODULE_H

#include "runtime/schema/kiln_generated.h"

#include "absl/status/statusor.h"
#include "mlir/IR/BuiltinOps.h"

#include <filesystem>
#include <string>
#include <vector>

namespace kiln::codegen {

struct HostModuleOptions {
  /// The C++ compiler; empty: $KILN_HOST_CXX, else the compiler Kiln was
  /// built with, else `c++` on PATH.
  std::string compiler;
  /// Where builds are cached; empty: $KILN_CACHE_DIR, else
  /// $XDG_CACHE_HOME/kiln, else ~/.cache/kiln (no cache when none can be
  /// created).
  std::filesystem::path cacheDir;
};

struct HostModuleReport {
  size_t kernels = 0;
  /// Groups left to the library kernels, each with the emitter's reason.
  std::vector<std::string> skipped;
  /// Whether the shared object came from the cache.
  bool cached = false;
};

/// Emits every fused group of the entry points (skipping, with the reason,
/// those the emitter does not support, e.g. bf16 activations), compiles
/// them into one shared object for this machine (kHostTarget) and adds it
/// to `plan.host_modules`. Unavailable when the compiler cannot be run;
/// Internal with the compiler's log when the generated source does not
/// compile (a Kiln bug).
absl::StatusOr<HostModuleReport>
addHostModule(mlir::ModuleOp module, artifact::ModelT &plan,
              const HostModuleOptions &options = {});

} // namespace kiln::codegen

#endif // KILN_CODEGEN_HOSTMODULE_H
