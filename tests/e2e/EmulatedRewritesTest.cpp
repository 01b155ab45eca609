// Launch-saving rewrites on the emulated CUDA executor: each keeps the steps
// as they were (to the bit, on either device and every GEMM path) and saves
// the launches it is for: gated FFN GEMMs, linear groups, horizontal fusion,
// fused cache stores, few routed rows in selection order, weight prefetch.
#include "runtime/src/cuda/EmulatedDriver.h"
#include "runtime/src/cuda/EmulatedKernels.h"
#include "tests/e2e/E2eUtil.h"
#include "tests/e2e/EmulatedGpuUtil.h"
#include "tests/runtime/DeviceSteps.h"

#include "kiln/Runtime.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace kiln {
namespace {

using testing::compileAndOpen;
using testing::compileArtifact;
using testing::CompileSettings;
using testing::decodeLaunches;
using testing::kGolden;
using testing::scratchFile;

/// A rewrite that keeps every GEMM sum (and SwiGLU) as it was: `golden`
/// compiled without and with it (`apply(settings, on)`), run on the CPU
/// and on the emulated device, with the GEMVs and with cuBLASLt and the
/// tensor cores taking the rows, gives the same steps to the bit; only the
/// rewritten form launches `kernel` (a library kernel; empty: none to
/// check), and does where the GEMVs take the rows (`name` tells the
/// artifacts apart).
void expectSameStepsWithRewrite(
    const std::string &golden, const std::string &name,
    const std::function<void(CompileSettings &, bool)> &apply,
    const std::string &kernel) {
  std::unique_ptr<Model> models[2];
  for (bool on : {false, true}) {
    CompileSettings settings;
    apply(settings, on);
    std::unique_ptr<Model> model =
        compileAndOpen(kGolden / golden,
                       scratchFile("emulated_" + golden + "_" + name +
                                   (on ? "_on" : "_off") + ".kiln"),
                       settings);
    ASSERT_TRUE(model);
    models[on] = std::move(model);
  }
  struct Run {
    Device device;
    const char *blas, *mma;
  };
  // cuBLASLt with the GEMVs: outside capture (prefill) the experts' few
  // rows are read back and stay one grouped launch.
  for (Run run :
       {Run{Device::Cpu, "0", "off"}, Run{Device::Emulated, "0", "off"},
        Run{Device::Emulated, "1", "off"}, Run{Device::Emulated, "1", "on"}}) {
    SCOPED_TRACE(std::string(run.device == Device::Cpu ? "cpu" : "emulated") +
                 " cuBLASLt " + run.blas + " mma " + run.mma);
    ::setenv("KILN_EMULATE_CUBLASLT", run.blas, 1);
    ::setenv("KILN_MMA_GEMMS", run.mma, 1);
    std::vector<std::vector<float>> steps[2];
    int64_t launches[2];
    for (bool on : {false, true}) {
      int64_t before = cuda::emulatedLaunches(kernel);
      std::string where;
      steps[on] = testing::runDeviceSteps(*models[on], run.device, where);
      launches[on] = cuda::emulatedLaunches(kernel) - before;
    }
    ::unsetenv("KILN_EMULATE_CUBLASLT");
    ::unsetenv("KILN_MMA_GEMMS");
    ASSERT_FALSE(steps[0].empty());
    EXPECT_EQ(steps[0], steps[1]);
    if (kernel.empty())
      continue;
    EXPECT_EQ(launches[0], 0);
    if (run.device == Device::Emulated && std::string(run.mma) == "off") {
      EXPECT_GT(launches[1], 0) << kernel;
    }
  }
}

/// A rewrite (`toggle` turns it on or off) that saves a decode launch per
/// attention layer (3 in DeepSeek-V3's golden) and leaves the steps the same
/// to the bit on either device and every GEMM path, for DeepSeek-V3's and
/// V2-Lite's goldens.
void expectALaunchSavedPerAttentionLayer(
    const std::string &name,
    const std::function<void(CompileSettings &, bool)> &toggle) {
  std::vector<int64_t> launches[2];
  for (bool on : {false, true}) {
    CompileSettings settings;
    toggle(settings, on);
    launches[on] = decodeLaunches(Device::Emulated, settings,
                                  name + (on ? "_on" : "_off"));
    ASSERT_EQ(launches[on].size(), 3u);
  }
  EXPECT_EQ(launches[0][0] - launches[1][0], 3);
  EXPECT_EQ(launches[0][2] - launches[1][2], 3);
  for (const char *golden : {"deepseek-v3", "deepseek-v2-lite-bf16"})
    expectSameStepsWithRewrite(golden, name, toggle, "");
}

// Horizontal fusion: each attention layer's latent-cache entry and query
// RoPE run as one kernel.
TEST(EmulatedGpuSession, HorizontalFusionSavesALaunchPerAttentionLayer) {
  expectALaunchSavedPerAttentionLayer("horizontal",
                                      [](CompileSettings &settings, bool on) {
                                        settings.optimize.fuseHorizontal = on;
                                      });
}

// Cache rows stored by the kernel that computes them: each attention
// layer's latent-cache row goes to the cache from its merged kernel, whose
// kv_append launch goes, f32 or FP8. The steps read back what earlier
// steps stored (prompts of 22, 3 and 1 tokens, so padded positions too).
TEST(EmulatedGpuSession, FusedCacheWritesSaveALaunchPerAttentionLayer) {
  expectALaunchSavedPerAttentionLayer("kv_append",
                                      [](CompileSettings &settings, bool on) {
                                        settings.optimize.fuseKvAppend = on;
                                      });
  // An FP8 latent cache: the kernel quantizes the row as the append kernel
  // does, byte for byte, so the steps that read it back are the same too.
  expectSameStepsWithRewrite(
      "deepseek-v2-lite-bf16", "kv_append_fp8",
      [](CompileSettings &settings, bool on) {
        settings.optimize.latentCacheDtype = "fp8";
        settings.optimize.fuseKvAppend = on;
      },
      "");
  // No append kernel runs where the fused kernels store the rows.
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(
      scratchFile("emulated_deepseek-v2-lite-bf16_kv_append_fp8_on.kiln"));
  ASSERT_TRUE(model.ok()) << model.status().message();
  int64_t appends = cuda::emulatedLaunches("kiln_kv_append_packed");
  std::string where;
  ASSERT_FALSE(
      testing::runDeviceSteps(**model, Device::Emulated, where).empty());
  EXPECT_EQ(cuda::emulatedLaunches("kiln_kv_append_packed"), appends);
}

/// kiln.gated_linear against the unfused FFN (kiln-fuse-gated-linear off):
/// the decode graph's gated GEMVs (`gemv` the gated kernel it must launch),
/// or each projection on its own, then SwiGLU, where library GEMMs take
/// the rows.
void expectGatedLinearIsTheUnfusedFfn(const std::string &golden, bool fp8,
                                      const std::string &gemv) {
  // Where the tensor cores take the rows (mma on), the gated GEMM is one
  // launch of the gated mma kernel, the same bits as the projections' two
  // mma GEMMs and SwiGLU.
  auto gatedMma = [] {
    return cuda::emulatedLaunches("kiln_gemm_mma_gated_bf16") +
           cuda::emulatedLaunches("kiln_gemm_mma_gated_f8e4m3") +
           cuda::emulatedLaunches("kiln_gemm_mma_gated_f8e4m3_q8");
  };
  int64_t before = gatedMma();
  expectSameStepsWithRewrite(
      golden, fp8 ? "gated_fp8" : "gated",
      [&](CompileSettings &settings, bool on) {
        settings.optimize.quantizeFp8 = fp8;
        settings.optimize.fuseGatedLinear = on;
        // Each gated GEMM in its own launch (LinearGroupsAreTheLinears*
        // covers their groups).
        settings.optimize.groupLinears = false;
      },
      gemv);
  EXPECT_GT(gatedMma(), before);
}

// A dispatch of few routed rows is one launch: the route kernel also
// gathers the rows and writes each selection's row (the tiny models' steps
// all route fewer than kRouteGatherElements values). The combine runs in the
// fused kernel of the residual add and norm after it, not as a launch of
// its own. The steps match the CPU executor's in
// EmulatedGpu.MatchesTheCpuExecutor.
TEST(EmulatedGpuSession, FewRoutedRowsAreDispatchedInOneLaunch) {
  CompileSettings settings;
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / "deepseek-v3", scratchFile("emulated_route.kiln"), settings);
  ASSERT_TRUE(model);
  auto launches = [](const char *kernel) {
    return cuda::emulatedLaunches(kernel);
  };
  int64_t routes = launches("kiln_moe_route"),
          gathers = launches("kiln_moe_gather"),
          combines = launches("kiln_moe_combine");
  std::string where;
  ASSERT_FALSE(
      testing::runDeviceSteps(*model, Device::Emulated, where).empty());
  EXPECT_GT(launches("kiln_moe_route"), routes);
  EXPECT_EQ(launches("kiln_moe_gather"), gathers);
  EXPECT_EQ(launches("kiln_moe_combine"), combines);
}

/// The steps of `golden` (its default artifact, or with --quantize fp8,
/// `edit`ed) on the emulated device for `prompts` with
/// KILN_MOE_SELECTIONS=auto (first) and =off, and the route launches each
/// ran.
struct SelectionRuns {
  std::vector<std::vector<float>> steps[2];
  int64_t routes[2] = {0, 0};
};
SelectionRuns
runWithAndWithoutSelections(const std::string &golden, const std::string &name,
                            const std::vector<std::vector<int32_t>> &prompts,
                            std::function<void(artifact::ModelT &)> edit = {},
                            bool fp8 = false) {
  CompileSettings settings;
  settings.editPlan = std::move(edit);
  settings.optimize.quantizeFp8 = fp8;
  std::filesystem::path artifact =
      compileArtifact(kGolden / golden, scratchFile(name), settings);
  EXPECT_FALSE(artifact.empty());
  absl::StatusOr<std::unique_ptr<Model>> model =
      artifact.empty() ? absl::NotFoundError(name) : Model::open(artifact);
  EXPECT_TRUE(model.ok()) << model.status().message();
  SelectionRuns runs;
  if (!model.ok())
    return runs;
  for (int off : {0, 1}) {
    ::setenv("KILN_MOE_SELECTIONS", off ? "off" : "auto", 1);
    int64_t before = cuda::emulatedLaunches("kiln_moe_route");
    std::string where;
    runs.steps[off] = testing::runDeviceSteps(**model, Device::Emulated, where,
                                              nullptr, prompts);
    runs.routes[off] = cuda::emulatedLaunches("kiln_moe_route") - before;
    ::unsetenv("KILN_MOE_SELECTIONS");
  }
  return runs;
}

std::atomic<int64_t> prefetchedRanges{0};

// The GEMMs' and the decode attention's blocks ask the L2 for what they will
// read before awaiting the kernels before them (L2PrefetchTest checks each
// kernel's ranges): in a session's prefill and decode steps, and not with
// KILN_PREFETCH=off. The host builds read each range's ends (under ASan, a
// range past its tensor fails), and the steps are the same either way.
TEST(EmulatedGpuSession, StepsPrefetchUnlessTurnedOff) {
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / "deepseek-v2-lite-bf16", scratchFile("prefetch.kiln"), {});
  ASSERT_TRUE(model);
  std::vector<std::vector<float>> steps[2];
  int64_t ranges[2] = {0, 0};
  cuda::observePlainKernelPrefetches(
      [](const void *, long long) { ++prefetchedRanges; });
  for (int off : {0, 1}) {
    ::setenv("KILN_PREFETCH", off ? "off" : "on", 1);
    prefetchedRanges = 0;
    std::string where;
    steps[off] = testing::runDeviceSteps(*model, Device::Emulated, where,
                                         nullptr, {{5, 17, 3}, {9, 2}});
    ranges[off] = prefetchedRanges;
    ::unsetenv("KILN_PREFETCH");
  }
  cuda::observePlainKernelPrefetches(nullptr);
  ASSERT_FALSE(steps[0].empty());
  EXPECT_GT(ranges[0], 0);
  EXPECT_EQ(ranges[1], 0);
  ASSERT_EQ(steps[0].size(), steps[1].size());
  for (size_t i = 0; i < steps[0].size(); ++i)
    EXPECT_EQ(steps[0][i], steps[1][i]) << "step " << i;
}

// A decode step of 8 or fewer selections runs the grouped GEMVs in
// selection order (each routed row its token's row against its expert) and
// launches no route; the sums are the routed order's, so the steps are the
// same to the bit. The prefills (several tokens) still route. Checked for
// f32, bf16 and FP8 weights (whose GEMVs quantize the rows they read), a
// dense gated GEMV and linear groups (the routed with the shared experts),
// batch 1 of top-4 and batch 3 of top-2; the MatchesTheCpuExecutor cases
// check such steps against the CPU executor.
TEST(EmulatedGpuSession, FewSelectionsRunInSelectionOrder) {
  struct Check {
    const char *golden;
    std::vector<std::vector<int32_t>> prompts;
    bool fp8 = false;
  };
  for (const Check &c :
       {Check{"deepseek-v3", {{5, 17, 3}}},
        Check{"deepseek-v2-lite-bf16", {{5, 17, 3}}},
        Check{"deepseek-v2-lite", testing::raggedPrompts()},
        Check{"deepseek-v3", {{5, 17, 3}}, true},
        Check{"deepseek-v2-lite", testing::raggedPrompts(), true}}) {
    SCOPED_TRACE(std::string(c.golden) + (c.fp8 ? " fp8" : ""));
    SelectionRuns runs = runWithAndWithoutSelections(
        c.golden,
        std::string("selections_") + c.golden + (c.fp8 ? "_fp8" : "") + ".kiln",
        c.prompts, {}, c.fp8);
    ASSERT_FALSE(runs.steps[0].empty());
    EXPECT_EQ(runs.steps[0], runs.steps[1]);
    EXPECT_GT(runs.routes[0], 0); // the prefill's
    EXPECT_LT(runs.routes[0], runs.routes[1]);
  }
}

// A skippable dispatch's ints name the GEMMs that read its routed rows (a
// MoE layer's gated routed-expert GEMM here), and the plan keeps its x and
// indices alive while they run; an artifact without them (as before they
// existed) may reuse those bytes, so its steps route every dispatch, and
// are still right.
TEST(EmulatedGpuSession, DispatchesWithoutRoutedReadersRoute) {
  int64_t edited = 0;
  SelectionRuns runs = runWithAndWithoutSelections(
      "deepseek-v3", "selections_old_plan.kiln", {{5, 17, 3}},
      [&](artifact::ModelT &plan) {
        for (auto &entry : plan.entry_points)
          for (size_t i = 0; i < entry->launches.size(); ++i) {
            auto &launch = entry->launches[i];
            if (launch->kernel != artifact::KernelKind::MoeDispatch)
              continue;
            EXPECT_EQ(launch->ints.size(), 3u);
            EXPECT_EQ(launch->ints[1], 1);
            if (launch->ints.size() == 3) {
              EXPECT_EQ(entry->launches[i + launch->ints[2]]->kernel,
                        artifact::KernelKind::GatedLinear);
            }
            launch->ints.resize(1);
            ++edited;
          }
      });
  EXPECT_GT(edited, 0);
  ASSERT_FALSE(runs.steps[0].empty());
  EXPECT_EQ(runs.steps[0], runs.steps[1]);
  EXPECT_EQ(runs.routes[0], runs.routes[1]);
}

TEST(EmulatedGpuSession, GatedLinearIsTheUnfusedFfnBf16) {
  expectGatedLinearIsTheUnfusedFfn("deepseek-v2-lite-bf16", false,
                                   "kiln_gemv_gated_bf16");
}

// FP8: the dense FFNs' gated GEMVs read the codes the norm's kernel
// quantized, the experts' quantize their routed rows themselves.
TEST(EmulatedGpuSession, GatedLinearIsTheUnfusedFfnFp8) {
  expectGatedLinearIsTheUnfusedFfn("deepseek-v3", true,
                                   "kiln_gemv_gated_f8e4m3_q8");
  EXPECT_GT(cuda::emulatedLaunches("kiln_gemv_gated_f8e4m3_qin"), 0);
}

/// kiln.linear_group against its GEMMs launched one by one
/// (kiln-group-linears off): the grouped GEMV (`group` the kernel the decode
/// steps must launch), or the members where library GEMMs take the rows.
void expectLinearGroupsAreTheLinears(const std::string &golden, bool fp8,
                                     const std::string &group,
                                     bool fuse = true) {
  expectSameStepsWithRewrite(
      golden,
      std::string("grouped") + (fp8 ? "_fp8" : "") + (fuse ? "" : "_unfused"),
      [&](CompileSettings &settings, bool on) {
        settings.optimize.quantizeFp8 = fp8;
        settings.optimize.fuse = fuse;
        settings.optimize.groupLinears = on;
      },
      group);
}

// MLA's q_proj and kv_a_proj_with_mqa.
TEST(EmulatedGpuSession, LinearGroupsAreTheLinearsBf16) {
  expectLinearGroupsAreTheLinears("deepseek-v2-lite-bf16", false,
                                  "kiln_gemv_group_bf16");
}

// A MoE layer's routed and shared experts' gated GEMMs.
TEST(EmulatedGpuSession, LinearGroupsAreTheLinearsExperts) {
  expectLinearGroupsAreTheLinears("deepseek-v2-lite-bf16", false,
                                  "kiln_gemv_group_gated_bf16");
}

// q, k and v with their biases.
TEST(EmulatedGpuSession, LinearGroupsAreTheLinearsWithBiases) {
  expectLinearGroupsAreTheLinears("qwen2", false, "kiln_gemv_group_f32");
}

// FP8: q_a_proj and kv_a_proj_with_mqa read the codes the norm's kernel
// quantized once for both. A MoE layer's routed experts (f32 rows, which
// the group quantizes) share a launch with its shared expert (the norm
// kernel's codes): their gated GEMMs, then their down projections.
TEST(EmulatedGpuSession, LinearGroupsAreTheLinearsFp8) {
  int64_t gated = cuda::emulatedLaunches("kiln_gemv_group_gated_f8e4m3_qin"),
          down = cuda::emulatedLaunches("kiln_gemv_group_f8e4m3_qin");
  expectLinearGroupsAreTheLinears("deepseek-v3", true,
                                  "kiln_gemv_group_f8e4m3_q8");
  EXPECT_GT(cuda::emulatedLaunches("kiln_gemv_group_gated_f8e4m3_qin"), gated);
  EXPECT_GT(cuda::emulatedLaunches("kiln_gemv_group_f8e4m3_qin"), down);
}

// Without kiln-fuse no epilogue quantizes the inputs: each member's blocks
// quantize their own rows in the group's FP8 GEMV.
TEST(EmulatedGpuSession, LinearGroupsAreTheLinearsFp8Unfused) {
  expectLinearGroupsAreTheLinears("deepseek-v3", true,
                                  "kiln_gemv_group_f8e4m3_qin",
                                  /*fuse=*/false);
}

} // namespace
} // namespace kiln
