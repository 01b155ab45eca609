//===- CompileModel.cpp - kiln compile-model ------------------------------===//
#include "tools/kiln/Commands.h"

#include "models/Import.h"
#include "passes/Passes.h"
#include "support/AtomicFile.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/raw_ostream.h"

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

namespace kiln::tools {
namespace {

struct CompileModelOptions {
  std::string model;
  std::string emit = "mlir";
  std::string output = "-";
  std::string activationDtype = "f32";
  bool noMtp = false;
};

absl::Status compileModel(const CompileModelOptions &opts) {
  mlir::MLIRContext context;
  models::BuildOptions build;
  build.bf16Activations = opts.activationDtype == "bf16";
  build.includeMtp = !opts.noMtp;
  absl::StatusOr<models::ImportedModel> model =
      models::importModel(context, opts.model, build);
  if (!model.ok())
    return model.status();
  std::error_code ec;
  if (!model->checkpoint && std::filesystem::is_directory(opts.model, ec))
    std::cerr << "kiln compile-model: note: " << opts.model
              << " has no model.safetensors or model.safetensors.index.json; "
                 "compiling shape-only\n";

  mlir::PassManager pm(&context);
  pm.addPass(mlir::kiln::createKilnSummarize());
  if (mlir::failed(pm.run(*model->module)))
    return absl::InternalError("the compile pipeline failed on " + opts.model);

  std::string text;
  llvm::raw_string_ostream os(text);
  model->module->print(os);
  os.flush();
  if (opts.output == "-") {
    std::cout << text;
    return absl::OkStatus();
  }
  return writeFileAtomically(opts.output, text);
}

} // namespace

CommandRunner registerCompileModel(CLI::App &app) {
  auto opts = std::make_shared<CompileModelOptions>();
  app.add_option("model", opts->model,
                 "A Hugging Face model directory (config.json and safetensors "
                 "weights), or a config.json to compile shape-only")
      ->required();
  app.add_option("--emit", opts->emit, "What to produce")
      ->check(CLI::IsMember({"mlir"}))
      ->capture_default_str();
  app.add_option("-o,--output", opts->output,
                 "Output file (written atomically); '-' for stdout")
      ->capture_default_str();
  app.add_option("--activation-dtype", opts->activationDtype,
                 "Element type of activations")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_flag("--no-mtp", opts->noMtp,
               "Leave out the multi-token-prediction module(s)");
  return [opts] { return compileModel(*opts); };
}

} // namespace kiln::tools
