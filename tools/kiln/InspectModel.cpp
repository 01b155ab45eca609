//===- InspectModel.cpp - kiln inspect on a model or config ---------------===//
//
// `kiln inspect` on a Hugging Face directory or config.json (rather than an
// artifact): imports and optimizes the model shape-only, as compile-model
// would, and reports what the artifact would hold — no weights needed, so it
// serves to plan huge models.
//
//===----------------------------------------------------------------------===//
#include "tools/kiln/Commands.h"
#include "tools/kiln/QuantizeOptions.h"

#include "models/Import.h"
#include "passes/Pipeline.h"

#include "ir/KilnOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"

#include <iostream>

namespace kiln::tools {

absl::Status inspectModel(const std::string &path, const std::string &mla,
                          const std::string &activationDtype,
                          const QuantizeFlags &quantize) {
  mlir::MLIRContext context;
  models::BuildOptions build;
  build.includeMtp = false; // what an artifact executes
  absl::StatusOr<frontend::ModelConfig> config =
      frontend::loadModelConfig(path);
  if (!config.ok())
    return config.status();
  build.bf16Activations = activationDtype == "bf16" ||
                          (activationDtype == "auto" &&
                           config->torchDtype == frontend::DType::BF16);
  absl::StatusOr<models::ImportedModel> model =
      models::importModel(context, path, build);
  if (!model.ok())
    return model.status();
  mlir::PassManager pm(&context);
  mlir::kiln::OptimizeOptions optimize;
  optimize.mla = mla;
  if (absl::Status s = applyQuantizeFlags(quantize, model->config, optimize);
      !s.ok())
    return s;
  mlir::kiln::buildOptimizePipeline(pm, optimize);
  WeightBytes before = weightBytes(*model->module);
  if (mlir::failed(pm.run(*model->module)))
    return absl::InternalError("the optimize phase failed on " + path);
  if (absl::Status s = checkKvCacheDtype(quantize, *model->module, path);
      !s.ok())
    return s;

  mlir::ModuleOp module = *model->module;
  auto summary = module->getAttrOfType<mlir::DictionaryAttr>("kiln.summary");
  auto count = [&](llvm::StringRef key) {
    auto attr = summary.getAs<mlir::IntegerAttr>(key);
    return attr ? attr.getInt() : 0;
  };
  int64_t layers = model->config.numHiddenLayers;
  int64_t cacheBytes = count("kv_cache_bytes_per_token");
  int64_t cacheElements = 0;
  std::string storage = build.bf16Activations ? "bf16" : "f32";
  module.walk([&](mlir::kiln::KVCacheOp slot) {
    cacheElements += slot.getEntryTensorType().getNumElements();
    if (mlir::kiln::PackedCacheAttr packed = slot.getStorageAttr())
      storage = packed.getFp8Columns() > 0 ? "fp8 latent with bf16 rope"
                                           : "bf16 latent";
  });
  std::cout << "model:           " << path << " (shape-only)\n"
            << "architecture:    "
            << frontend::architectureName(model->config.architecture) << "\n"
            << "layers:          " << layers << "\n"
            << "parameters:      " << count("parameters") << "\n";
  for (const mlir::NamedAttribute &entry :
       summary.getAs<mlir::DictionaryAttr>("bytes"))
    std::cout << "  " << entry.getName().str() << ": "
              << mlir::cast<mlir::IntegerAttr>(entry.getValue()).getInt()
              << " bytes\n";
  std::cout << "kv cache:        " << cacheBytes << " bytes per token ("
            << cacheElements / layers << " elements per token per layer, "
            << storage << ")\n"
            << "attention:\n";
  for (llvm::StringRef entry : {"prefill", "decode"}) {
    auto func = module.lookupSymbol<mlir::func::FuncOp>(entry);
    if (!func)
      func = module.lookupSymbol<mlir::func::FuncOp>("forward");
    std::string form = "standard";
    func.walk([&](mlir::kiln::AttentionOp attention) {
      if (auto mlaForm = attention->getAttrOfType<mlir::StringAttr>("kiln.mla"))
        form = "mla " + mlaForm.str() + ", latent cache";
    });
    if (auto choice = func->getAttrOfType<mlir::DictionaryAttr>("kiln.mla"))
      if (auto mode = choice.getAs<mlir::StringAttr>("mode");
          mode && mode.getValue() == "naive")
        form = "mla naive, per-head k/v cache";
    std::cout << "  " << entry.str() << ": " << form << "\n";
  }
  printWeightReport(std::cout, before, weightBytes(module));
  return absl::OkStatus();
}

} // namespace kiln::tools
