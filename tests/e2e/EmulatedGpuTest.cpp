// The CUDA executor's plan walk, run on the host through the emulated driver
// (Device::Emulated: library kernels' host builds, captured decode graphs
// replayed), against the CPU executor on the golden checkpoints of every
// architecture: the same prompts (a ragged batch, prefill in chunks) and
// greedy decode steps, logits within fp32 summation-order differences and
// the same argmax. The CPU executor itself is checked against Hugging Face
// in GoldenTest.cpp. Fused groups are launched as on a GPU, running the
// generated kernels' host builds (the artifact's CPU module;
// tests/codegen/FusedKernelTest.cpp checks those against the reference
// kernels). What this cannot check: the CUDA builds of the kernels, and
// anything only a GPU does (timing, memory limits, real graph capture).
#include "runtime/src/cuda/EmulatedDriver.h"
#include "runtime/src/cuda/EmulatedKernels.h"
#include "tests/e2e/E2eUtil.h"
#include "tests/e2e/EmulatedGpuUtil.h"
#include "tests/runtime/DeviceSteps.h"

#include "kiln/Runtime.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <vector>

namespace kiln {
namespace {

using testing::compileAndOpen;
using testing::CompileSettings;
using testing::kGolden;
using testing::scratchFile;

struct Case {
  std::string model;
  std::string mla = "auto";
  bool fp8Weights = false;
  std::string latentCache = "f32";
  /// KILN_EXPERT_GEMMS: per-expert runs each expert's rows as a dense GEMM
  /// after reading the offsets back (what cuBLASLt takes on a GPU; the
  /// library GEMM here).
  std::string expertGemms = "auto";
  /// KILN_MMA_GEMMS: on runs every bf16 and FP8 GEMM the tensor-core GEMM
  /// takes on it, off none.
  std::string mmaGemms = "auto";
  /// KILN_MMA_ATTENTION: likewise for attention over f32 keys and values
  /// and packed latent rows.
  std::string mmaAttention = "auto";
};

/// bf16 weights on the tensor cores multiply activations rounded to bf16,
/// and bf16 models' prefill attention runs on them in bf16: within bf16
/// resolution of the CPU's fp32. A bf16 latent cache rounds its rows on
/// both devices, but an fp32 ulp of difference in a row (other summation
/// orders) can round to the other bf16 neighbour: bf16 resolution too.
/// Everything else differs from the CPU only in the order of fp32 sums (FP8
/// codes are exact in bf16).
float tolerance(const Case &c) {
  bool bf16 = c.model.find("bf16") != std::string::npos;
  bool bf16Activations =
      c.mmaAttention == "on" ||
      (bf16 && (c.mmaGemms != "off" || c.mmaAttention != "off")) ||
      c.latentCache == "bf16";
  return bf16Activations ? 1e-2f : 1e-4f;
}

void PrintTo(const Case &c, std::ostream *os) {
  *os << c.model << " mla=" << c.mla << (c.fp8Weights ? " fp8" : "")
      << " latent cache " << c.latentCache << " experts " << c.expertGemms
      << " mma gemms " << c.mmaGemms << " attention " << c.mmaAttention;
}

std::string caseName(const ::testing::TestParamInfo<Case> &info) {
  std::string name =
      info.param.model + "_" + info.param.mla +
      (info.param.fp8Weights ? "_fp8" : "") +
      (info.param.latentCache == "f32"
           ? ""
           : "_" + info.param.latentCache + "cache") +
      (info.param.expertGemms == "auto" ? "" : "_" + info.param.expertGemms) +
      (info.param.mmaGemms == "auto" ? "" : "_mma_" + info.param.mmaGemms) +
      (info.param.mmaAttention == "auto"
           ? ""
           : "_attention_" + info.param.mmaAttention);
  for (char &c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)))
      c = '_';
  return name;
}

/// Launches of the tensor-core GEMMs so far.
int64_t mmaLaunches() {
  return cuda::emulatedLaunches("kiln_gemm_mma_bf16") +
         cuda::emulatedLaunches("kiln_gemm_mma_f8e4m3") +
         cuda::emulatedLaunches("kiln_gemm_mma_f8e4m3_q8");
}
int64_t mmaAttentionLaunches() {
  int64_t launches = 0;
  for (const char *kernel :
       {"kiln_attention_mma", "kiln_attention_mma_bf16_rows",
        "kiln_attention_mma_wide", "kiln_attention_mma_wide_bf16_rows"})
    launches += cuda::emulatedLaunches(kernel);
  return launches;
}

class EmulatedGpu : public ::testing::TestWithParam<Case> {};

TEST_P(EmulatedGpu, MatchesTheCpuExecutor) {
  const Case &c = GetParam();
  CompileSettings settings;
  settings.optimize.mla = c.mla;
  settings.optimize.quantizeFp8 = c.fp8Weights;
  settings.optimize.latentCacheDtype = c.latentCache;
  std::unique_ptr<Model> model = compileAndOpen(
      kGolden / c.model, scratchFile("emulated_" + caseName({c, 0}) + ".kiln"),
      settings);
  ASSERT_TRUE(model);
  ::setenv("KILN_EXPERT_GEMMS", c.expertGemms.c_str(), 1);
  ::setenv("KILN_MMA_GEMMS", c.mmaGemms.c_str(), 1);
  ::setenv("KILN_MMA_ATTENTION", c.mmaAttention.c_str(), 1);
  {
    SessionOptions probe;
    probe.device = Device::Emulated;
    absl::StatusOr<std::unique_ptr<Session>> emulated =
        Session::create(*model, probe);
    if (absl::IsUnavailable(emulated.status()))
      GTEST_SKIP() << emulated.status().message();
  }
  std::string cpuWhere, gpuWhere;
  std::vector<std::vector<float>> cpu =
      testing::runDeviceSteps(*model, Device::Cpu, cpuWhere);
  int64_t mmaBefore = mmaLaunches(), attentionBefore = mmaAttentionLaunches();
  std::vector<std::vector<float>> gpu =
      testing::runDeviceSteps(*model, Device::Emulated, gpuWhere, &cpu);
  // The tensor-core GEMMs take bf16 and FP8 weights: in auto, the GEMMs
  // of the multi-row prefill chunks at least. Their attention: bf16 models'
  // prefill in auto (these models' head dimensions all fit it), and the
  // absorbed prefill over a bf16 latent cache (4 heads x 4 rows a block);
  // every attention when on.
  int64_t mma = mmaLaunches() - mmaBefore;
  bool bf16 = c.model.find("bf16") != std::string::npos;
  if (c.mmaGemms == "off" || (!c.fp8Weights && !bf16)) {
    EXPECT_EQ(mma, 0);
  } else {
    EXPECT_GT(mma, 0);
  }
  int64_t attention = mmaAttentionLaunches() - attentionBefore;
  bool bf16Cache = c.latentCache == "bf16";
  if (c.mmaAttention == "off" ||
      (c.mmaAttention == "auto" && !bf16 && !bf16Cache)) {
    EXPECT_EQ(attention, 0);
  } else {
    EXPECT_GT(attention, 0);
  }
  EXPECT_EQ(cpuWhere, "cpu");
  EXPECT_EQ(gpuWhere.rfind("cuda: host emulation", 0), 0u) << gpuWhere;
  // Fused groups launched as the GPU's generated kernels are, running
  // their host builds.
  EXPECT_NE(gpuWhere.find("generated kernels: host builds (emulated)"),
            std::string::npos)
      << gpuWhere;
  // Under KILN_EMULATE_SIMT=1 (CTest's simt. run) the library kernels run
  // with CUDA's threads.
  const char *simt = std::getenv("KILN_EMULATE_SIMT");
  EXPECT_EQ(gpuWhere.find("library kernels with CUDA threads") !=
                std::string::npos,
            simt && std::string(simt) == "1")
      << gpuWhere;
  ::unsetenv("KILN_MMA_GEMMS");
  ::unsetenv("KILN_MMA_ATTENTION");
  // In fp32 with different summation orders: each logit within 1e-4 of the
  // row's largest, far above the fp32 rounding of these short sums and far
  // below what a wrong kernel does (scaling one add's input by 1.001 fails
  // it); bf16 activations: 1e-2 (see tolerance()).
  testing::expectSameSteps(cpu, gpu, tolerance(c));
}

INSTANTIATE_TEST_SUITE_P(
    Architectures, EmulatedGpu,
    ::testing::Values(
        Case{"deepseek-v3"}, Case{"deepseek-v3", "naive"},
        Case{"deepseek-v3", "absorbed", true, "fp8"}, Case{"deepseek-v2"},
        Case{"deepseek-v2-lite"},
        Case{.model = "deepseek-v2-lite-bf16",
             .mmaGemms = "off",
             .mmaAttention = "off"},
        Case{"qwen2"},
        Case{.model = "llama-bf16", .mmaGemms = "off", .mmaAttention = "off"},
        Case{"deepseek-v3", "auto", false, "f32", "per-expert"},
        Case{"deepseek-v3", "absorbed", true, "fp8", "per-expert"},
        Case{.model = "deepseek-v2-lite-bf16",
             .expertGemms = "per-expert",
             .mmaGemms = "off",
             .mmaAttention = "off"},
        // The tensor-core kernels for everything they take (decode's single
        // rows and absorbed-MLA attention too). bf16 MoE in auto (each
        // GEMM on the tensor cores or not by its rows) is not compared: its
        // rounding resolves a router near-tie of this tiny MoE model the
        // other way at one decode step (a different expert for one token:
        // 9% of the row's maximum off, the next step within bf16 resolution
        // again); dense bf16 and FP8 in auto are.
        Case{.model = "deepseek-v2-lite-bf16",
             .mmaGemms = "on",
             .mmaAttention = "on"},
        Case{.model = "llama-bf16", .mmaGemms = "on", .mmaAttention = "on"},
        Case{.model = "llama-bf16"},
        Case{.model = "deepseek-v3",
             .mla = "absorbed",
             .fp8Weights = true,
             .latentCache = "fp8",
             .mmaGemms = "on"},
        Case{.model = "deepseek-v3",
             .mla = "absorbed",
             .fp8Weights = true,
             .expertGemms = "per-expert",
             .mmaGemms = "on"},
        Case{.model = "deepseek-v3", .mmaAttention = "on"},
        // The bf16 latent cache: CUDA-core attention over its packed rows,
        // and the tensor-core attention over them (auto: the prefill; on:
        // decode too). FP8 weights are not compared with the tensor-core
        // attention forced on: each device quantizes its own activations to
        // e4m3, so the bf16-level difference the tensor cores make flips a
        // code now and then (a 6% step), and the logits then differ by 5-10%
        // of the row max (measured): not a comparison at bf16 tolerance.
        Case{.model = "deepseek-v3",
             .mla = "absorbed",
             .latentCache = "bf16",
             .mmaAttention = "off"},
        Case{.model = "deepseek-v3", .mla = "absorbed", .latentCache = "bf16"},
        Case{.model = "deepseek-v3",
             .mla = "absorbed",
             .latentCache = "bf16",
             .mmaAttention = "on"},
        // Shapes the tiny presets leave out (tests/golden/presets): tails
        // of every kernel's tiles and vector widths, odd head counts, GQA
        // 3:1, q_lora, experts in groups of 2, tied embeddings, biases.
        Case{"deepseek-v3-odd"}, Case{"deepseek-v3-odd", "naive"},
        Case{"deepseek-v2-odd"}, Case{"deepseek-v2-odd", "naive"},
        Case{"qwen2-odd"}, Case{"llama-odd"},
        Case{"deepseek-v3-odd", "absorbed", true, "fp8"},
        Case{"deepseek-v3-odd", "absorbed", false, "bf16"},
        Case{"deepseek-v2-odd", "auto", false, "f32", "per-expert"},
        // (Its head_dim of 12 is no multiple of the tensor cores' 16: its
        // attention stays on the CUDA cores.)
        Case{
            .model = "qwen2-odd-bf16", .mmaGemms = "on", .mmaAttention = "off"},
        Case{.model = "llama-odd-bf16", .mmaGemms = "on", .mmaAttention = "on"},
        Case{.model = "llama-odd-bf16",
             .mmaGemms = "off",
             .mmaAttention = "off"}),
    caseName);

} // namespace
} // namespace kiln
