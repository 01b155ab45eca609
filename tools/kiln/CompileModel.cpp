//===- CompileModel.cpp - kiln compile-model ------------------------------===//
//
// The compile pipeline in named phases: import (checkpoint -> kiln IR),
// optimize (graph passes), plan (execution plan and buffer plan), emit (the
// `.kiln` artifact). `--compile-to` stops after a phase and prints its IR.
//
//===----------------------------------------------------------------------===//
#include "tools/kiln/Commands.h"
#include "tools/kiln/Progress.h"
#include "tools/kiln/QuantizeOptions.h"

#include "codegen/ArtifactWriter.h"
#include "codegen/FusedKernelEmitter.h"
#include "codegen/GpuModule.h"
#include "codegen/HostModule.h"
#include "codegen/PlanBuilder.h"
#include "models/Import.h"
#include "passes/Pipeline.h"
#include "support/AtomicFile.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/Timing.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/raw_ostream.h"

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

namespace kiln::tools {
namespace {

struct CompileModelOptions {
  std::string model;
  std::string emit = "auto";
  std::string output = "-";
  std::string compileTo = "emit";
  std::string activationDtype = "f32";
  std::string weights = "embed";
  bool noMtp = false;
  bool noFuse = false;
  bool noFuseHorizontal = false;
  bool noFuseKvAppend = false;
  bool noFuseGatedLinear = false;
  bool noFoldHeadSlices = false;
  bool noGroupLinears = false;
  std::string mla = "auto";
  uint32_t maxBatch = 8;
  uint32_t maxPrefillBatch = 0;
  uint32_t maxContext = 0; // 0: min(config max positions, 4096)
  uint32_t maxPrefill = 0; // 0: min(max context, 512)
  QuantizeFlags quantize;
  std::vector<std::string> targets{"cpu"};
  bool report = false;
  std::string dumpKernels;
  std::vector<std::string> mlirOptions;
};

/// `-o x.kiln` (or --emit=artifact) writes an artifact; anything else IR.
bool emitsArtifact(const CompileModelOptions &opts) {
  if (opts.emit != "auto")
    return opts.emit == "artifact";
  return opts.compileTo == "emit" &&
         std::filesystem::path(opts.output).extension() == ".kiln";
}

/// Hands `--mlir-*` options (pass-manager instrumentation such as
/// --mlir-print-ir-after-all and --mlir-timing) to MLIR's own parser.
absl::Status applyMlirOptions(const std::vector<std::string> &options) {
  static bool registered = false;
  if (!registered) {
    mlir::registerPassManagerCLOptions();
    mlir::registerMLIRContextCLOptions();
    mlir::registerDefaultTimingManagerCLOptions();
    registered = true;
  }
  std::vector<const char *> argv{"kiln compile-model"};
  for (const std::string &o : options)
    argv.push_back(o.c_str());
  std::string errors;
  llvm::raw_string_ostream os(errors);
  if (!llvm::cl::ParseCommandLineOptions(static_cast<int>(argv.size()),
                                         argv.data(), "", &os))
    return absl::InvalidArgumentError(os.str());
  return absl::OkStatus();
}

/// `--target=cpu`: the fused groups' host builds. Without a host C++
/// compiler the artifact still runs on the CPU, each group as its ops.
absl::Status addHostKernels(mlir::ModuleOp module, artifact::ModelT &plan,
                            Progress &progress) {
  progress.begin("compile fused kernels for the CPU");
  absl::StatusOr<codegen::HostModuleReport> report =
      codegen::addHostModule(module, plan);
  progress.end();
  if (!report.ok() && absl::IsUnavailable(report.status())) {
    std::cerr << "kiln: warning: " << report.status().message()
              << "; the CPU runs each fused group as its ops\n";
    return absl::OkStatus();
  }
  if (!report.ok())
    return report.status();
  if (!report->skipped.empty()) {
    std::cerr << "kiln: " << report->skipped.size()
              << " fused group(s) have no CPU kernel and run as their ops:\n";
    for (const std::string &why : report->skipped)
      std::cerr << "  " << why << "\n";
  }
  return absl::OkStatus();
}

absl::Status printModule(mlir::ModuleOp module, const std::string &output) {
  std::string text;
  llvm::raw_string_ostream os(text);
  module.print(os);
  os.flush();
  if (output == "-") {
    std::cout << text;
    return absl::OkStatus();
  }
  return writeFileAtomically(output, text);
}

/// Writes each fused group's generated source to `dir`/<name>.cu, with the
/// prelude they include.
absl::Status dumpKernels(mlir::ModuleOp module, const std::string &dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return absl::InvalidArgumentError("--dump-kernels: cannot create " + dir +
                                      ": " + ec.message());
  std::filesystem::path root(dir);
  if (absl::Status s = writeFileAtomically(root / codegen::kFusedPreludeName,
                                           codegen::fusedPreludeSource());
      !s.ok())
    return s;
  std::string diagnostics;
  mlir::ScopedDiagnosticHandler handler(
      module.getContext(), [&](mlir::Diagnostic &d) {
        llvm::raw_string_ostream os(diagnostics);
        os << d.getLocation() << ": " << d << "\n";
        return mlir::success();
      });
  absl::Status status;
  module.walk([&](mlir::kiln::FusedOp fused) {
    mlir::FailureOr<codegen::FusedKernel> kernel =
        codegen::emitFusedKernel(fused);
    if (mlir::failed(kernel)) {
      status = absl::InvalidArgumentError("--dump-kernels: cannot generate " +
                                          fused.getName().str() + ":\n" +
                                          diagnostics);
      return mlir::WalkResult::interrupt();
    }
    status = writeFileAtomically(root / (kernel->name + ".cu"), kernel->source);
    return status.ok() ? mlir::WalkResult::advance()
                       : mlir::WalkResult::interrupt();
  });
  return status;
}

absl::Status compileModel(const CompileModelOptions &opts) {
  if (absl::Status s = applyMlirOptions(opts.mlirOptions); !s.ok())
    return s;
  bool artifact = emitsArtifact(opts);
  if (artifact && opts.output == "-")
    return absl::InvalidArgumentError(
        "an artifact needs an output file (-o model.kiln)");

  mlir::MLIRContext context;
  Progress progress;
  // Phases are timed with MLIR's timing manager (--mlir-timing).
  mlir::DefaultTimingManager timing;
  mlir::applyDefaultTimingManagerCLOptions(timing);
  mlir::TimingScope rootTimer = timing.getRootScope();
  mlir::TimingScope importTimer = rootTimer.nest("import");
  models::BuildOptions build;
  build.bf16Activations = opts.activationDtype == "bf16";
  build.includeMtp = !opts.noMtp;
  progress.begin("import " + opts.model);
  absl::StatusOr<models::ImportedModel> model =
      models::importModel(context, opts.model, build);
  if (!model.ok())
    return model.status();
  progress.end();
  importTimer.stop();
  std::error_code ec;
  if (!model->checkpoint && std::filesystem::is_directory(opts.model, ec))
    std::cerr << "kiln compile-model: note: " << opts.model
              << " has no model.safetensors or model.safetensors.index.json; "
                 "compiling shape-only\n";
  mlir::ModuleOp module = *model->module;
  if (opts.compileTo == "import")
    return printModule(module, opts.output);

  // The plan's bounds also feed the optimize phase's cost models.
  codegen::PlanOptions plan;
  plan.maxBatch = opts.maxBatch;
  plan.maxPrefillBatch = std::min(opts.maxPrefillBatch, opts.maxBatch);
  plan.maxContext = opts.maxContext
                        ? opts.maxContext
                        : static_cast<uint32_t>(std::min<int64_t>(
                              model->config.maxPositionEmbeddings, 4096));
  plan.maxPrefill = opts.maxPrefill ? opts.maxPrefill
                                    : std::min<uint32_t>(plan.maxContext, 512);
  mlir::PassManager pm(&context);
  if (mlir::failed(mlir::applyPassManagerCLOptions(pm)))
    return absl::InvalidArgumentError("invalid --mlir pass-manager options");
  mlir::TimingScope optimizeTimer = rootTimer.nest("optimize");
  pm.enableTiming(optimizeTimer);
  mlir::kiln::OptimizeOptions optimize;
  optimize.mla = opts.mla;
  optimize.batch = plan.maxBatch;
  optimize.prefillTokens = plan.maxPrefill;
  optimize.context = plan.maxContext;
  optimize.fuse = !opts.noFuse;
  optimize.fuseHorizontal = !opts.noFuseHorizontal;
  optimize.fuseKvAppend = !opts.noFuseKvAppend;
  optimize.fuseGatedLinear = !opts.noFuseGatedLinear;
  optimize.foldHeadSlices = !opts.noFoldHeadSlices;
  optimize.groupLinears = !opts.noGroupLinears;
  if (absl::Status s =
          applyQuantizeFlags(opts.quantize, model->config, optimize);
      !s.ok())
    return s;
  mlir::kiln::buildOptimizePipeline(pm, optimize);
  WeightBytes before = weightBytes(module);
  progress.begin("optimize");
  if (mlir::failed(pm.run(module)))
    return absl::InternalError("the optimize phase failed on " + opts.model);
  progress.end();
  optimizeTimer.stop();
  if (absl::Status s = checkKvCacheDtype(opts.quantize, module, opts.model);
      !s.ok())
    return s;
  if (opts.report)
    printWeightReport(opts.output == "-" ? std::cerr : std::cout, before,
                      weightBytes(module));
  if (!opts.dumpKernels.empty())
    if (absl::Status s = dumpKernels(module, opts.dumpKernels); !s.ok())
      return s;
  if (opts.compileTo == "optimize" || !artifact)
    return printModule(module, opts.output);

  if (!model->checkpoint)
    return absl::InvalidArgumentError(
        opts.model + " has no weights: an artifact needs a model directory "
                     "with safetensors (a config alone compiles with "
                     "--emit=mlir)");
  progress.begin("plan");
  mlir::TimingScope planTimer = rootTimer.nest("plan");
  std::string diagnostics;
  mlir::ScopedDiagnosticHandler handler(&context, [&](mlir::Diagnostic &d) {
    llvm::raw_string_ostream os(diagnostics);
    os << d.getLocation() << ": " << d << "\n";
    return mlir::success();
  });
  mlir::FailureOr<std::unique_ptr<artifact::ModelT>> built =
      codegen::buildPlan(module, plan);
  if (mlir::failed(built))
    return absl::InvalidArgumentError("cannot plan " + opts.model + ":\n" +
                                      diagnostics);
  progress.end();
  planTimer.stop();
  if (opts.compileTo == "plan")
    return printModule(module, opts.output);
  for (const std::string &target : opts.targets) {
    if (target == "cpu") {
      if (absl::Status s = addHostKernels(module, **built, progress); !s.ok())
        return absl::Status(s.code(), "cannot compile " + opts.model + ": " +
                                          std::string(s.message()));
      continue;
    }
    progress.begin("compile fused kernels for " + target);
    if (absl::Status s = codegen::addGpuModule(module, **built, target);
        !s.ok())
      return absl::Status(s.code(), "cannot compile " + opts.model + ":\n" +
                                        diagnostics + std::string(s.message()));
    progress.end();
  }

  progress.begin("write " + opts.output);
  mlir::TimingScope emitTimer = rootTimer.nest("emit");
  absl::Status written = codegen::writeArtifact(
      opts.output, **built, module, *model->checkpoint,
      opts.weights == "external" ? codegen::WeightsMode::External
                                 : codegen::WeightsMode::Embed);
  if (written.ok())
    progress.end();
  return written;
}

} // namespace

CommandRunner registerCompileModel(CLI::App &app) {
  auto opts = std::make_shared<CompileModelOptions>();
  app.add_option("model", opts->model,
                 "A Hugging Face model directory (config.json and safetensors "
                 "weights), or a config.json to compile shape-only")
      ->required();
  app.add_option("--emit", opts->emit,
                 "What to produce: the `.kiln` artifact, or kiln IR (auto: "
                 "an artifact when -o ends in .kiln)")
      ->check(CLI::IsMember({"auto", "mlir", "artifact"}))
      ->capture_default_str();
  app.add_option("-o,--output", opts->output,
                 "Output file (written atomically); '-' for stdout")
      ->capture_default_str();
  app.add_option("--compile-to", opts->compileTo,
                 "Stop after this phase and print the IR")
      ->check(CLI::IsMember({"import", "optimize", "plan", "emit"}))
      ->capture_default_str();
  app.add_option("--activation-dtype", opts->activationDtype,
                 "Element type of activations (an artifact's plan needs f32; "
                 "bf16 is for the IR)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_option("--weights", opts->weights,
                 "Embed the weights in the artifact, or reference the "
                 "checkpoint's safetensors, resolved at load")
      ->check(CLI::IsMember({"embed", "external"}))
      ->capture_default_str();
  app.add_option("--max-batch", opts->maxBatch, "Sequences per step")
      ->check(CLI::Range(1u, 4096u))
      ->capture_default_str();
  app.add_option("--max-prefill-batch", opts->maxPrefillBatch,
                 "Sequences per prefill step (default: max-batch); more "
                 "prompts are prefilled in groups")
      ->check(CLI::Range(1u, 4096u));
  app.add_option("--max-context", opts->maxContext,
                 "KV-cache positions per sequence (default: the model's, at "
                 "most 4096)")
      ->check(CLI::Range(1u, 1u << 24));
  app.add_option("--max-prefill", opts->maxPrefill,
                 "Prompt tokens per sequence in one prefill step (default: "
                 "max-context, at most 512)")
      ->check(CLI::Range(1u, 1u << 24));
  app.add_option("--mla", opts->mla,
                 "MLA attention form: auto (cost model per entry point), "
                 "naive (per-head K/V cache) or absorbed (latent cache)")
      ->check(CLI::IsMember({"auto", "naive", "absorbed"}))
      ->capture_default_str();
  app.add_flag("--no-mtp", opts->noMtp,
               "Leave out the multi-token-prediction module(s)");
  app.add_flag("--no-fuse", opts->noFuse,
               "Do not group row-local ops into kiln.fused kernels");
  app.add_flag("--no-fuse-horizontal", opts->noFuseHorizontal,
               "Keep independent fused kernels of the same tokens apart (no "
               "merged kiln.fused)");
  app.add_flag("--no-fuse-kv-append", opts->noFuseKvAppend,
               "Keep KV-cache writes in their own kernels (no kiln.kv_append "
               "in a kiln.fused)");
  app.add_flag("--no-fuse-gated-linear", opts->noFuseGatedLinear,
               "Keep a SwiGLU's gate and up projections as two GEMMs "
               "(no kiln.gated_linear)");
  app.add_flag("--no-fold-head-slices", opts->noFoldHeadSlices,
               "Keep a head projection's input slice as its own kernel "
               "(no head_linear input_offset)");
  app.add_flag("--no-group-linears", opts->noGroupLinears,
               "Launch every GEMM on its own (no kiln.linear_group of "
               "independent GEMMs)");
  addQuantizeOptions(app, opts->quantize);
  app.add_option("--target", opts->targets,
                 "Code to put in the artifact, a comma list: cpu (the fused "
                 "kernels built with the host C++ compiler, $KILN_HOST_CXX, "
                 "into a shared object the CPU runtime loads) and sm_90a "
                 "(compiled with NVRTC for Hopper, plus PTX). Every artifact "
                 "runs on the CPU; without cpu code each fused group runs as "
                 "its ops")
      ->delimiter(',')
      ->check(CLI::IsMember({"cpu", "sm_90a"}))
      ->capture_default_str();
  app.add_option("--dump-kernels", opts->dumpKernels,
                 "Write each fused group's generated C++/CUDA source to "
                 "DIR/<name>.cu, with the prelude it includes")
      ->type_name("DIR");
  app.add_flag("--report", opts->report,
               "Print weight bytes per dtype before and after the optimize "
               "phase, and the FP8 scale overhead");
  app.allow_extras();
  app.callback([opts, &app] {
    for (const std::string &extra : app.remaining()) {
      if (extra.rfind("--mlir-", 0) != 0)
        throw CLI::ExtrasError({extra});
      opts->mlirOptions.push_back(extra);
    }
  });
  return [opts] { return compileModel(*opts); };
}

} // namespace kiln::tools
