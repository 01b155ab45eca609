//===- QuantizeOptions.h - FP8 options of compile-model and inspect -*- C++
//-*-===//
#ifndef KILN_TOOLS_KILN_QUANTIZEOPTIONS_H
#define KILN_TOOLS_KILN_QUANTIZEOPTIONS_H

#include "frontend/Config.h"
#include "passes/Pipeline.h"

#include "absl/status/status.h"
#include "mlir/IR/BuiltinOps.h"

#include <CLI/CLI.hpp>

#include <map>
#include <ostream>
#include <string>
#include <vector>

namespace kiln::tools {

struct QuantizeFlags {
  std::string quantize = "auto"; // auto: fp8 when config.json declares it
  std::vector<std::string> keep, keepOps;
  bool ue8m0 = false;
  std::string kvCacheDtype = "f32";
};

/// Adds --quantize, --quantize-keep, --quantize-keep-ops, --ue8m0 and
/// --kv-cache-dtype to `app`.
void addQuantizeOptions(CLI::App &app, QuantizeFlags &flags);

/// Sets the optimize phase's FP8 settings from the flags and the config.
absl::Status applyQuantizeFlags(const QuantizeFlags &flags,
                                const frontend::ModelConfig &config,
                                mlir::kiln::OptimizeOptions &optimize);

/// After the optimize phase: fails when --kv-cache-dtype=bf16|fp8 found no
/// latent cache to store that way.
absl::Status checkKvCacheDtype(const QuantizeFlags &flags,
                               mlir::ModuleOp module, const std::string &model);

/// Parameter bytes by element type, FP8 block scales counted apart.
struct WeightBytes {
  std::map<std::string, int64_t> byType;
  int64_t scales = 0;
  int64_t total() const;
};
WeightBytes weightBytes(mlir::ModuleOp module);

/// The `--report` table: weight bytes before and after the optimize phase.
void printWeightReport(std::ostream &os, const WeightBytes &before,
                       const WeightBytes &after);

} // namespace kiln::tools

#endif // KILN_TOOLS_KILN_QUANTIZEOPTIONS_H
