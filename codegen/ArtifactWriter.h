//===- ArtifactWriter.h - plan + weights -> .kiln file ----------*- C++ -*-===//
#ifndef KILN_CODEGEN_ARTIFACTWRITER_H
#define KILN_CODEGEN_ARTIFACTWRITER_H

#include "frontend/Checkpoint.h"
#include "runtime/schema/kiln_generated.h"

#include "absl/status/status.h"
#include "mlir/IR/BuiltinOps.h"

#include <filesystem>

namespace kiln::codegen {

enum class WeightsMode { Embed, External };

/// Writes `plan` as a `.kiln` file at `path` (atomically). The weights of
/// every parameter come from `checkpoint`, located through the
/// `kiln.parameter` ops of `module`: copied into the 4 KiB-aligned weights
/// section (Embed), or recorded as checkpoint file + tensor names resolved
/// by the runtime at load (External).
absl::Status writeArtifact(const std::filesystem::path &path,
                           artifact::ModelT &plan, mlir::ModuleOp module,
                           const frontend::Checkpoint &checkpoint,
                           WeightsMode mode);

} // namespace kiln::codegen

#endif // KILN_CODEGEN_ARTIFACTWRITER_H
