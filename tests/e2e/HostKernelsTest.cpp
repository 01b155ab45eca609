// The artifact's CPU kernels (codegen/HostModule.cpp, runtime/src/cpu/
// HostKernels.cpp): the build cache, a missing compiler, groups the emitter
// leaves out, and the runtime's handling of modules for another machine,
// broken shared objects and kernel tables that disagree with the plan.
// GoldenTest checks the kernels' numerics against Hugging Face.
#include "kiln/ArtifactFormat.h"
#include "kiln/Runtime.h"
#include "support/AtomicFile.h"
#include "tests/e2e/E2eUtil.h"

#include "gtest/gtest.h"

namespace kiln {
namespace {

using frontend::testing::errorOf;
using frontend::testing::freshTempDir;
using testing::kGolden;

struct Compiled {
  std::filesystem::path artifact;
  std::unique_ptr<artifact::ModelT> plan; // a copy, as written
};

/// Compiles the tiny DeepSeek-V3 with `settings` to `name` in `dir`,
/// keeping the plan.
Compiled compileV3(const std::filesystem::path &dir,
                   testing::CompileSettings settings,
                   const std::string &name = "model.kiln") {
  Compiled out;
  auto edit = settings.editPlan;
  settings.editPlan = [&](artifact::ModelT &plan) {
    if (edit)
      edit(plan);
    out.plan = std::make_unique<artifact::ModelT>(plan);
  };
  out.artifact =
      testing::compileArtifact(kGolden / "deepseek-v3", dir / name, settings);
  return out;
}

struct Planned {
  mlir::OwningOpRef<mlir::ModuleOp> module;
  std::unique_ptr<artifact::ModelT> plan;
};

/// A golden model through import, the default optimize pipeline and the
/// planner (no artifact); empty after reporting a failure.
Planned plan(mlir::MLIRContext &context, const std::string &name) {
  Planned out;
  auto model = models::importModel(context, kGolden / name);
  EXPECT_TRUE(model.ok()) << errorOf(model);
  if (!model.ok())
    return out;
  mlir::PassManager pm(&context);
  mlir::kiln::buildOptimizePipeline(pm, {});
  if (mlir::failed(pm.run(*model->module)))
    return out;
  auto built = codegen::buildPlan(*model->module, {});
  if (mlir::failed(built))
    return out;
  out.plan = *std::move(built);
  out.module = std::move(model->module);
  return out;
}

/// Greedy tokens of a short prompt and 4 decode steps.
std::vector<int32_t> greedy(const Model &model) {
  auto session = Session::create(model);
  EXPECT_TRUE(session.ok()) << errorOf(session);
  if (!session.ok())
    return {};
  auto ids = (*session)->prefill({{3, 1, 4, 1, 5}});
  EXPECT_TRUE(ids.ok()) << errorOf(ids);
  std::vector<int32_t> tokens;
  for (int step = 0; step < 4 && ids.ok(); ++step) {
    tokens.push_back(testing::argmax((*session)->logits((*ids)[0])));
    std::vector<int32_t> next{tokens.back()};
    EXPECT_TRUE((*session)->decode(*ids, next).ok());
  }
  return tokens;
}

TEST(HostKernels, BuildsAreCachedByContent) {
  std::filesystem::path dir = freshTempDir();
  testing::CompileSettings settings;
  settings.host.cacheDir = dir / "cache";
  Compiled first = compileV3(dir, settings, "first.kiln");
  Compiled second = compileV3(dir, settings, "second.kiln");
  ASSERT_TRUE(first.plan && second.plan);
  ASSERT_EQ(first.plan->host_modules.size(), 1u);
  ASSERT_EQ(second.plan->host_modules.size(), 1u);
  EXPECT_EQ(first.plan->host_modules[0]->shared_object,
            second.plan->host_modules[0]->shared_object);
  size_t entries = 0;
  for (const auto &e : std::filesystem::directory_iterator(
           settings.host.cacheDir / "host-kernels"))
    entries += e.path().extension() == ".so";
  EXPECT_EQ(entries, 1u);
}

TEST(HostKernels, CacheHitReportedAndKeyChecked) {
  mlir::MLIRContext context;
  Planned planned = plan(context, "deepseek-v3");
  ASSERT_TRUE(planned.module && planned.plan);
  mlir::ModuleOp module = *planned.module;
  artifact::ModelT &plan = *planned.plan;
  codegen::HostModuleOptions options;
  options.cacheDir = freshTempDir() / "cache";
  auto cold = codegen::addHostModule(module, plan, options);
  ASSERT_TRUE(cold.ok()) << errorOf(cold);
  EXPECT_FALSE(cold->cached);
  EXPECT_GT(cold->kernels, 0u);
  EXPECT_TRUE(cold->skipped.empty());
  auto warm = codegen::addHostModule(module, plan, options);
  ASSERT_TRUE(warm.ok()) << errorOf(warm);
  EXPECT_TRUE(warm->cached);
  // A key file that does not match (as after a hash collision) is a miss.
  for (const auto &e :
       std::filesystem::directory_iterator(options.cacheDir / "host-kernels"))
    if (e.path().extension() == ".key") {
      ASSERT_TRUE(writeFileAtomically(e.path(), "another key").ok());
    }
  auto collided = codegen::addHostModule(module, plan, options);
  ASSERT_TRUE(collided.ok()) << errorOf(collided);
  EXPECT_FALSE(collided->cached);
}

TEST(HostKernels, MissingCompilerIsUnavailableAndNamed) {
  mlir::MLIRContext context;
  Planned planned = plan(context, "qwen2");
  ASSERT_TRUE(planned.module && planned.plan);
  mlir::ModuleOp module = *planned.module;
  artifact::ModelT &plan = *planned.plan;
  codegen::HostModuleOptions options;
  options.compiler = "/nonexistent/kiln-test-c++";
  auto report = codegen::addHostModule(module, plan, options);
  ASSERT_TRUE(absl::IsUnavailable(report.status())) << errorOf(report);
  EXPECT_NE(report.status().message().find("/nonexistent/kiln-test-c++"),
            std::string::npos);
  EXPECT_NE(report.status().message().find("KILN_HOST_CXX"), std::string::npos);
  EXPECT_TRUE(plan.host_modules.empty());
}

TEST(HostKernels, UnsupportedGroupsAreSkippedWithTheReason) {
  mlir::MLIRContext context;
  models::BuildOptions build;
  build.bf16Activations = true;
  auto model = models::importModel(context, kGolden / "qwen2", build);
  ASSERT_TRUE(model.ok()) << errorOf(model);
  mlir::PassManager pm(&context);
  mlir::kiln::buildOptimizePipeline(pm, {});
  ASSERT_TRUE(mlir::succeeded(pm.run(*model->module)));
  // (The CPU plan needs f32 activations; the module alone shows the skip.)
  artifact::ModelT plan;
  auto report = codegen::addHostModule(*model->module, plan);
  ASSERT_TRUE(report.ok()) << errorOf(report);
  EXPECT_EQ(report->kernels, 0u);
  ASSERT_FALSE(report->skipped.empty());
  EXPECT_NE(report->skipped.front().find("f32 activations"), std::string::npos)
      << report->skipped.front();
  EXPECT_TRUE(plan.host_modules.empty());
}

TEST(HostKernels, ModuleForAnotherMachineRunsTheOps) {
  std::filesystem::path dir = freshTempDir();
  testing::CompileSettings settings;
  Compiled native = compileV3(dir, settings, "native.kiln");
  settings.editPlan = [](artifact::ModelT &plan) {
    plan.host_modules.at(0)->target = "riscv64-linux-gnu";
  };
  Compiled foreign = compileV3(dir, settings, "foreign.kiln");
  auto a = Model::open(native.artifact);
  auto b = Model::open(foreign.artifact);
  ASSERT_TRUE(a.ok()) << errorOf(a);
  ASSERT_TRUE(b.ok()) << errorOf(b);
  ASSERT_EQ((*b)->info().hostCode.size(), 1u);
  EXPECT_EQ((*b)->info().hostCode[0].status,
            std::string("not used (this machine is ") + artifact::kHostTarget +
                ")");
  EXPECT_EQ((*a)->info().hostCode[0].status, "loaded");
  EXPECT_EQ(greedy(**a), greedy(**b));
}

// The loader knows objects by path; a module opened after another was
// closed must still get its own kernels (the in-memory file's path is
// reused by the next one).
TEST(HostKernels, EachModelGetsItsOwnObject) {
  std::filesystem::path dir = freshTempDir();
  std::filesystem::path v3 = compileV3(dir, {}).artifact;
  std::filesystem::path qwen = testing::compileArtifact(
      kGolden / "qwen2", dir / "qwen2.kiln", testing::CompileSettings{});
  for (int round = 0; round < 2; ++round)
    for (const auto &path : {v3, qwen, v3}) {
      auto model = Model::open(path);
      ASSERT_TRUE(model.ok()) << errorOf(model);
      EXPECT_EQ((*model)->info().hostCode.at(0).status, "loaded");
      EXPECT_FALSE(greedy(**model).empty());
    }
  // Open at the same time, too.
  auto a = Model::open(v3), b = Model::open(qwen);
  ASSERT_TRUE(a.ok() && b.ok());
}

TEST(HostKernels, BrokenSharedObjectIsAnErrorNamingTheFile) {
  std::filesystem::path dir = freshTempDir();
  testing::CompileSettings settings;
  settings.editPlan = [](artifact::ModelT &plan) {
    auto &object = plan.host_modules.at(0)->shared_object;
    object.resize(64); // an ELF header and nothing after it
  };
  Compiled broken = compileV3(dir, settings);
  auto model = Model::open(broken.artifact);
  ASSERT_FALSE(model.ok());
  std::string message(model.status().message());
  EXPECT_NE(message.find(broken.artifact.string()), std::string::npos)
      << message;
  EXPECT_NE(message.find("dlopen"), std::string::npos) << message;
  // Switched off, the module is not loaded and the model runs.
  LoadOptions off;
  off.hostKernels = false;
  auto unused = Model::open(broken.artifact, off);
  ASSERT_TRUE(unused.ok()) << errorOf(unused);
  EXPECT_FALSE(greedy(**unused).empty());
}

TEST(HostKernels, KernelTableMustMatchThePlan) {
  std::filesystem::path dir = freshTempDir();
  testing::CompileSettings settings;
  settings.editPlan = [](artifact::ModelT &plan) {
    plan.host_modules.at(0)->kernels.at(0)->args += 1;
  };
  Compiled bad = compileV3(dir, settings);
  auto model = Model::open(bad.artifact);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("CPU module's kernel"),
            std::string::npos)
      << model.status().message();

  settings.editPlan = [](artifact::ModelT &plan) {
    plan.host_modules.at(0)->shared_object.assign({'M', 'Z', 0, 0});
  };
  Compiled notElf = compileV3(dir, settings, "not-elf.kiln");
  model = Model::open(notElf.artifact);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("ELF shared object"),
            std::string::npos)
      << model.status().message();
}

} // namespace
} // namespace kiln
