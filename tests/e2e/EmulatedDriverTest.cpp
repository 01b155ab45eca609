// The host emulation itself: the driver (launch checks, streams, capture,
// events, device copies) and cuBLASLt (bf16 and block-scaled FP8 GEMMs
// against the CPU, decode graphs that replay them, declined GEMMs).
#include "runtime/src/cuda/EmulatedDriver.h"
#include "models/InitModel.h"
#include "models/Presets.h"
#include "runtime/src/cuda/EmulatedBlasLt.h"
#include "runtime/src/cuda/EmulatedKernels.h"
#include "runtime/src/cuda/LibraryFatbin.h"
#include "tests/e2e/E2eUtil.h"
#include "tests/e2e/EmulatedGpuUtil.h"
#include "tests/runtime/DeviceSteps.h"

#include "kiln/Runtime.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace kiln {
namespace {

using testing::compileArtifact;
using testing::CompileSettings;
using testing::kGolden;
using testing::scratchFile;
using testing::writeModel;

/// The CPU executor's steps against the emulated CUDA executor's with
/// cuBLASLt emulated (KILN_EMULATE_CUBLASLT=1), the experts' GEMMs grouped
/// or not (KILN_EXPERT_GEMMS auto and per-expert, the latter on the side
/// streams, run late and early (KILN_EMULATE_STREAMS=early-side: a missing
/// join, then a missing fork, reads too early), and on the executor's one,
/// KILN_EXPERT_STREAMS=0); each run must
/// have made GEMMs of the emulation's `kind`, and bf16 experts' per-expert
/// GEMMs (only they) must have run on the side streams where there are
/// some.
void expectEmulatedCublasLtMatches(const std::filesystem::path &artifact,
                                   int64_t cuda::EmulatedBlasLtCalls::*kind,
                                   float tolerance,
                                   const std::vector<std::vector<int32_t>>
                                       &prompts = testing::raggedPrompts()) {
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << model.status().message();
  struct Run {
    const char *experts, *streams, *order;
  };
  for (auto [experts, streams, order] :
       {Run{"auto", "", ""}, Run{"per-expert", "", ""},
        Run{"per-expert", "", "early-side"}, Run{"per-expert", "0", ""}}) {
    SCOPED_TRACE(std::string(experts) + " streams " + streams + " " + order);
    int64_t before = cuda::emulatedBlasLtCalls().*kind;
    ::setenv("KILN_EMULATE_CUBLASLT", "1", 1);
    ::setenv("KILN_EXPERT_GEMMS", experts, 1);
    ::setenv("KILN_EXPERT_STREAMS", streams, 1);
    ::setenv("KILN_EMULATE_STREAMS", order, 1);
    // What cuBLASLt declines runs on the tensor cores, every such GEMM (see
    // the bf16 cases of EmulatedGpu for why not by rows).
    ::setenv("KILN_MMA_GEMMS", "on", 1);
    std::string cpuWhere, gpuWhere;
    std::vector<std::vector<float>> cpu = testing::runDeviceSteps(
        **model, Device::Cpu, cpuWhere, nullptr, prompts);
    int64_t routes = cuda::emulatedLaunches("kiln_moe_route");
    ::setenv("KILN_LOG_LAUNCHES", "1", 1);
    ::testing::internal::CaptureStderr();
    std::vector<std::vector<float>> gpu = testing::runDeviceSteps(
        **model, Device::Emulated, gpuWhere, &cpu, prompts);
    std::string log = ::testing::internal::GetCapturedStderr();
    ::unsetenv("KILN_LOG_LAUNCHES");
    bool moe = cuda::emulatedLaunches("kiln_moe_route") > routes;
    bool spread = moe && kind == &cuda::EmulatedBlasLtCalls::bf16 &&
                  std::string_view(experts) == "per-expert" && !*streams;
    EXPECT_EQ(log.find("cuBLASLt bf16 GEMM") != std::string::npos &&
                  log.find(" (expert stream)") != std::string::npos,
              spread);
    ::unsetenv("KILN_EMULATE_CUBLASLT");
    ::unsetenv("KILN_EXPERT_GEMMS");
    ::unsetenv("KILN_EXPERT_STREAMS");
    ::unsetenv("KILN_EMULATE_STREAMS");
    ::unsetenv("KILN_MMA_GEMMS");
    EXPECT_NE(gpuWhere.find("cuBLASLt (emulated)"), std::string::npos)
        << gpuWhere;
    EXPECT_GT(cuda::emulatedBlasLtCalls().*kind, before);
    testing::expectSameSteps(cpu, gpu, tolerance);
  }
}

// The emulated driver refuses what a GPU refuses at launch
// (CUDA_ERROR_INVALID_VALUE), before running anything, so that a grid or
// block the executor gets wrong fails here and not on a GPU.
TEST(EmulatedDriver, RefusesLaunchConfigurationsAGpuRefuses) {
  cuda::Driver driver = cuda::emulatedDriver();
  const cuda::DriverApi &a = driver.api();
  CUmodule module = nullptr;
  ASSERT_EQ(a.cuModuleLoadData(&module, cuda::libraryFatbin()), CUDA_SUCCESS);
  CUfunction f = nullptr;
  ASSERT_EQ(a.cuModuleGetFunction(&f, module, "kiln_slice"), CUDA_SUCCESS);
  struct Config {
    unsigned gx, gy, gz, bx, by, shared;
    const char *what;
  };
  for (Config c : {Config{0, 1, 1, 128, 1, 0, "no blocks"},
                   Config{1, 65536, 1, 128, 1, 0, "grid y past 65,535"},
                   Config{1, 1, 65536, 128, 1, 0, "grid z past 65,535"},
                   Config{0x80000000u, 1, 1, 128, 1, 0, "grid x of 2^31"},
                   Config{1, 1, 1, 256, 1, 0, "a library block of 256"},
                   Config{1, 1, 1, 64, 2, 0, "a block along y"},
                   Config{1, 1, 1, 128, 1, 16, "dynamic shared memory"}}) {
    // No parameters: a launch that got past the check would crash.
    EXPECT_EQ(a.cuLaunchKernel(f, c.gx, c.gy, c.gz, c.bx, c.by, 1, c.shared,
                               nullptr, nullptr, nullptr),
              CUDA_ERROR_INVALID_VALUE)
        << c.what;
    CUlaunchConfig config{};
    config.gridDimX = c.gx, config.gridDimY = c.gy, config.gridDimZ = c.gz;
    config.blockDimX = c.bx, config.blockDimY = c.by, config.blockDimZ = 1;
    config.sharedMemBytes = c.shared;
    EXPECT_EQ(a.cuLaunchKernelEx(&config, f, nullptr, nullptr),
              CUDA_ERROR_INVALID_VALUE)
        << c.what << " (cuLaunchKernelEx)";
  }
  const char *text = nullptr;
  a.cuGetErrorString(CUDA_ERROR_INVALID_VALUE, &text);
  EXPECT_NE(std::string(text).find("a GPU refuses"), std::string::npos);
  a.cuModuleUnload(module);
}

// A kernel's parameters are one struct passed by value, which CUDA takes up
// to 4 KiB on every driver (32 KiB only from CUDA 12.1 drivers on).
TEST(EmulatedDriver, LibraryKernelParametersFitFourKiB) {
  ASSERT_FALSE(cuda::plainHostKernels().empty());
  for (const cuda::HostKernel &kernel : cuda::plainHostKernels())
    EXPECT_LE(kernel.paramBytes, 4096u) << kernel.name;
}

// Capture as CUDA does it: asynchronous copies become the graph's nodes
// (run by each replay, not by the capture), and a call that waits for the
// device fails and invalidates the capture.
TEST(EmulatedDriver, CaptureRecordsStreamWorkAndRefusesWaits) {
  cuda::Driver driver = cuda::emulatedDriver();
  const cuda::DriverApi &a = driver.api();
  CUstream stream = nullptr;
  ASSERT_EQ(a.cuStreamCreate(&stream, 0), CUDA_SUCCESS);
  CUdeviceptr device = 0;
  ASSERT_EQ(a.cuMemAlloc(&device, sizeof(int32_t)), CUDA_SUCCESS);
  int32_t value = 5, back = 0;
  ASSERT_EQ(a.cuMemsetD8Async(device, 0, sizeof(int32_t), stream),
            CUDA_SUCCESS);

  ASSERT_EQ(a.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyHtoDAsync(device, &value, sizeof(value), stream),
            CUDA_SUCCESS);
  CUgraph graph = nullptr;
  ASSERT_EQ(a.cuStreamEndCapture(stream, &graph), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(&back, device, sizeof(back)), CUDA_SUCCESS);
  EXPECT_EQ(back, 0) << "the capture ran the copy";
  CUgraphExec exec = nullptr;
  ASSERT_EQ(a.cuGraphInstantiateWithFlags(&exec, graph, 0), CUDA_SUCCESS);
  value = 7; // a replay reads the source when it runs
  ASSERT_EQ(a.cuGraphLaunch(exec, stream), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(&back, device, sizeof(back)), CUDA_SUCCESS);
  EXPECT_EQ(back, 7);
  a.cuGraphExecDestroy(exec);
  a.cuGraphDestroy(graph);

  ASSERT_EQ(a.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
            CUDA_SUCCESS);
  EXPECT_EQ(a.cuStreamSynchronize(stream),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(a.cuMemcpyDtoH(&back, device, sizeof(back)),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  EXPECT_EQ(a.cuMemcpyHtoD(device, &value, sizeof(value)),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  graph = reinterpret_cast<CUgraph>(uintptr_t{1});
  EXPECT_EQ(a.cuStreamEndCapture(stream, &graph),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  EXPECT_EQ(graph, nullptr);
  EXPECT_EQ(a.cuStreamSynchronize(stream), CUDA_SUCCESS); // capture is over
  a.cuMemFree(device);
  a.cuStreamDestroy(stream);
}

// Streams as CUDA orders them: work on a stream runs no earlier than
// something waits for it. A synchronous copy waits for blocking streams
// only; a non-blocking stream's work is seen after a stream
// synchronization, or by another stream that waited on one of its events.
TEST(EmulatedDriver, StreamWorkRunsWhenWaitedFor) {
  cuda::Driver driver = cuda::emulatedDriver();
  const cuda::DriverApi &a = driver.api();
  CUstream blocking = nullptr, side = nullptr, main = nullptr;
  ASSERT_EQ(a.cuStreamCreate(&blocking, 0), CUDA_SUCCESS);
  ASSERT_EQ(a.cuStreamCreate(&side, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  ASSERT_EQ(a.cuStreamCreate(&main, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUdeviceptr device = 0;
  ASSERT_EQ(a.cuMemAlloc(&device, 2), CUDA_SUCCESS);
  uint8_t back[2] = {0, 0};
  ASSERT_EQ(a.cuMemsetD8Async(device, 1, 2, blocking), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(back, device, 2), CUDA_SUCCESS);
  EXPECT_EQ(back[0], 1) << "a synchronous copy waits for blocking streams";

  ASSERT_EQ(a.cuMemsetD8Async(device, 2, 1, side), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(back, device, 2), CUDA_SUCCESS);
  EXPECT_EQ(back[0], 1) << "nothing waited for the non-blocking stream";
  CUevent written = nullptr;
  ASSERT_EQ(a.cuEventCreate(&written, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
  ASSERT_EQ(a.cuEventRecord(written, side), CUDA_SUCCESS);
  // Work after the event is not waited for.
  ASSERT_EQ(a.cuMemsetD8Async(device + 1, 3, 1, side), CUDA_SUCCESS);
  ASSERT_EQ(a.cuStreamWaitEvent(main, written, 0), CUDA_SUCCESS);
  ASSERT_EQ(a.cuStreamSynchronize(main), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(back, device, 2), CUDA_SUCCESS);
  EXPECT_EQ(back[0], 2) << "the wait ran the side stream up to the event";
  EXPECT_EQ(back[1], 1) << "and no further";
  ASSERT_EQ(a.cuStreamSynchronize(side), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(back, device, 2), CUDA_SUCCESS);
  EXPECT_EQ(back[1], 3);
  a.cuEventDestroy(written);
  a.cuMemFree(device);
  for (CUstream s : {blocking, side, main})
    a.cuStreamDestroy(s);
}

// A device-to-device copy is stream work, and copies between overlapping
// ranges (undefined in CUDA) are refused.
TEST(EmulatedDriver, DeviceCopiesRunOnTheirStreamAndRefuseOverlaps) {
  cuda::Driver driver = cuda::emulatedDriver();
  const cuda::DriverApi &a = driver.api();
  CUstream stream = nullptr;
  ASSERT_EQ(a.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUdeviceptr device = 0;
  ASSERT_EQ(a.cuMemAlloc(&device, 8), CUDA_SUCCESS);
  uint8_t start[8] = {1, 2, 3, 4, 5, 6, 7, 8}, back[8] = {};
  ASSERT_EQ(a.cuMemcpyHtoD(device, start, 8), CUDA_SUCCESS);
  EXPECT_EQ(a.cuMemcpyDtoDAsync(device, device + 2, 4, stream),
            CUDA_ERROR_INVALID_VALUE);
  EXPECT_EQ(a.cuMemcpyDtoDAsync(device + 2, device, 4, stream),
            CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(a.cuMemcpyDtoDAsync(device, device + 4, 4, stream), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(back, device, 8), CUDA_SUCCESS);
  EXPECT_EQ(back[0], 1) << "nothing waited for the non-blocking stream";
  ASSERT_EQ(a.cuStreamSynchronize(stream), CUDA_SUCCESS);
  ASSERT_EQ(a.cuMemcpyDtoH(back, device, 8), CUDA_SUCCESS);
  EXPECT_EQ(std::vector<uint8_t>(back, back + 8),
            (std::vector<uint8_t>{5, 6, 7, 8, 5, 6, 7, 8}));
  a.cuMemFree(device);
  a.cuStreamDestroy(stream);
}

// Event timing as CUDA's: a record is stream work, so the time between two
// records is known once both have run, and covers the work between them.
TEST(EmulatedDriver, EventsTimeTheWorkBetweenThem) {
  cuda::Driver driver = cuda::emulatedDriver();
  const cuda::DriverApi &a = driver.api();
  CUstream stream = nullptr;
  ASSERT_EQ(a.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  CUevent before = nullptr, after = nullptr, never = nullptr;
  for (CUevent *e : {&before, &after, &never})
    ASSERT_EQ(a.cuEventCreate(e, 0), CUDA_SUCCESS);
  float ms = -1;
  EXPECT_EQ(a.cuEventElapsedTime(&ms, before, after), CUDA_ERROR_INVALID_HANDLE)
      << "neither was recorded";
  ASSERT_EQ(a.cuEventRecord(before, stream), CUDA_SUCCESS);
  cuda::emulatedEnqueue(
      [] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); },
      stream);
  ASSERT_EQ(a.cuEventRecord(after, stream), CUDA_SUCCESS);
  EXPECT_EQ(a.cuEventElapsedTime(&ms, before, after), CUDA_ERROR_NOT_READY)
      << "nothing waited for the stream, so its work has not run";
  ASSERT_EQ(a.cuStreamSynchronize(stream), CUDA_SUCCESS);
  ASSERT_EQ(a.cuEventElapsedTime(&ms, before, after), CUDA_SUCCESS);
  EXPECT_GE(ms, 20.0f);
  EXPECT_LT(ms, 10000.0f);
  EXPECT_EQ(a.cuEventElapsedTime(&ms, before, never),
            CUDA_ERROR_INVALID_HANDLE);
  // Recorded again: the time is of the new record, unknown until it runs.
  ASSERT_EQ(a.cuEventRecord(after, stream), CUDA_SUCCESS);
  EXPECT_EQ(a.cuEventElapsedTime(&ms, before, after), CUDA_ERROR_NOT_READY);
  // Destroyed before its record ran, as CUDA permits.
  ASSERT_EQ(a.cuEventDestroy(after), CUDA_SUCCESS);
  ASSERT_EQ(a.cuStreamSynchronize(stream), CUDA_SUCCESS);
  for (CUevent e : {before, never})
    a.cuEventDestroy(e);
  a.cuStreamDestroy(stream);
}

// cuBLASLt's block-scaled FP8 GEMMs through its host emulation: a
// one-layer DeepSeek-V3-style model with hidden size 512 (k a multiple of
// 512 everywhere; both experts take every token), FP8 weights. The
// activations are quantized as the library GEMV quantizes them, so only
// summation order differs (1e-4 of the row maximum).
TEST(EmulatedCublasLt, BlockScaledFp8MatchesTheCpu) {
  nlohmann::json config =
      nlohmann::json::parse(*models::findPreset("tiny-deepseek-v3"));
  for (auto [key, value] : std::initializer_list<std::pair<const char *, int>>{
           {"hidden_size", 512},
           {"intermediate_size", 512},
           {"moe_intermediate_size", 512},
           {"kv_lora_rank", 128},
           {"qk_nope_head_dim", 64},
           {"qk_rope_head_dim", 64},
           {"v_head_dim", 128},
           {"num_hidden_layers", 1},
           {"first_k_dense_replace", 0},
           {"n_routed_experts", 2},
           {"num_experts_per_tok", 2},
           {"n_group", 1},
           {"topk_group", 1},
           {"num_nextn_predict_layers", 0}})
    config[key] = value;
  config["q_lora_rank"] = nullptr;
  std::filesystem::path dir = writeModel(config, "fp8_probe", 3);
  ASSERT_FALSE(dir.empty());
  CompileSettings settings;
  settings.optimize.mla = "absorbed";
  settings.optimize.quantizeFp8 = true;
  std::filesystem::path artifact =
      compileArtifact(dir, scratchFile("fp8_probe.kiln"), settings);
  ASSERT_FALSE(artifact.empty());
  expectEmulatedCublasLtMatches(artifact, &cuda::EmulatedBlasLtCalls::fp8,
                                1e-4f);
}

// bf16 GEMMs through the emulation, on activations rounded to bf16 (so
// within bf16 resolution of the CPU's fp32 activations).
TEST(EmulatedCublasLt, Bf16MatchesTheCpu) {
  std::filesystem::path artifact = compileArtifact(
      kGolden / "deepseek-v2-lite-bf16", scratchFile("emulated_blas_bf16.kiln"),
      CompileSettings{});
  ASSERT_FALSE(artifact.empty());
  expectEmulatedCublasLtMatches(artifact, &cuda::EmulatedBlasLtCalls::bf16,
                                1e-2f);
}

/// Golden model `golden` compiled for decode batches of 20 (the wide
/// tests' artifact).
std::filesystem::path wideBatchArtifact(const std::string &golden) {
  CompileSettings settings;
  settings.plan.maxBatch = 20;
  return compileArtifact(kGolden / golden,
                         scratchFile("emulated_wide_" + golden + ".kiln"),
                         settings);
}

// Decode steps of 20 sequences: cuBLASLt takes the dense GEMMs (16+ rows)
// inside the captured decode graph. Each replay must run them, as a GPU
// runs a graph's GEMM nodes: the steps with graphs give the logits of the
// steps launched kernel by kernel (KILN_CUDA_GRAPHS=off) bit for bit, after
// as many cuBLASLt GEMMs, more than the prefill alone made.
TEST(EmulatedCublasLt, DecodeGraphsReplayTheirGemms) {
  std::filesystem::path artifact = wideBatchArtifact("deepseek-v2-lite-bf16");
  ASSERT_FALSE(artifact.empty());
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << model.status().message();
  std::vector<std::vector<int32_t>> prompts = testing::widePrompts(20);
  ::setenv("KILN_EMULATE_CUBLASLT", "1", 1);
  auto bf16Calls = [] { return cuda::emulatedBlasLtCalls().bf16; };
  int64_t before = bf16Calls();
  {
    SessionOptions options;
    options.device = Device::Emulated;
    absl::StatusOr<std::unique_ptr<Session>> session =
        Session::create(**model, options);
    ASSERT_TRUE(session.ok()) << session.status().message();
    ASSERT_TRUE((*session)->prefill(prompts).ok());
  }
  int64_t prefillCalls = bf16Calls() - before;
  std::string eagerWhere, graphWhere;
  ::setenv("KILN_CUDA_GRAPHS", "off", 1);
  before = bf16Calls();
  std::vector<std::vector<float>> eager = testing::runDeviceSteps(
      **model, Device::Emulated, eagerWhere, nullptr, prompts);
  int64_t eagerCalls = bf16Calls() - before;
  ::unsetenv("KILN_CUDA_GRAPHS");
  before = bf16Calls();
  std::vector<std::vector<float>> graphs = testing::runDeviceSteps(
      **model, Device::Emulated, graphWhere, &eager, prompts);
  int64_t graphCalls = bf16Calls() - before;
  ::unsetenv("KILN_EMULATE_CUBLASLT");
  EXPECT_NE(eagerWhere.find("no CUDA graphs"), std::string::npos) << eagerWhere;
  EXPECT_EQ(graphWhere.find("no CUDA graphs"), std::string::npos) << graphWhere;
  EXPECT_GT(eagerCalls, prefillCalls);
  EXPECT_EQ(graphCalls, eagerCalls);
  ASSERT_EQ(graphs.size(), eager.size());
  for (size_t i = 0; i < eager.size(); ++i)
    ASSERT_EQ(graphs[i], eager[i]) << "step row " << i;
}

// A decode batch of 20 against the CPU executor: the path of a serving
// batch (cuBLASLt's GEMMs inside the decode graph, the tensor-core GEMMs of
// several rows per matrix). Tolerance: bf16 resolution for the dense model.
// The MoE model's 120 rows of logits differ from the CPU's fp32 activations
// by up to 1.0% of the row's largest logit (0.6-0.8% typical, spread
// evenly: bf16 activations through routed layers), so it gets 2%; the
// GEMMs a replay once skipped put rows off by 20-50x their largest logit.
TEST(EmulatedCublasLt, WideDecodeMatchesTheCpu) {
  std::vector<std::vector<int32_t>> prompts = testing::widePrompts(20);
  for (auto [golden, tolerance] :
       {std::pair<const char *, float>{"llama-bf16", 1e-2f},
        {"deepseek-v2-lite-bf16", 2e-2f}}) {
    SCOPED_TRACE(golden);
    std::filesystem::path artifact = wideBatchArtifact(golden);
    ASSERT_FALSE(artifact.empty());
    expectEmulatedCublasLtMatches(artifact, &cuda::EmulatedBlasLtCalls::bf16,
                                  tolerance, prompts);
  }
}

// A cuBLASLt without an algorithm for a GEMM (a shape or configuration it
// has no kernel for) leaves the GEMM to the library kernels: prefill and
// decode batches of 20 (each bf16 GEMM of 16+ rows asks, in the captured
// step too) run with no cuBLASLt GEMM, in fp32 as the CPU (the tensor-core
// kernels off).
TEST(EmulatedCublasLt, DeclinedGemmsRunInTheLibraryKernels) {
  std::filesystem::path artifact = wideBatchArtifact("deepseek-v2-lite-bf16");
  ASSERT_FALSE(artifact.empty());
  absl::StatusOr<std::unique_ptr<Model>> model = Model::open(artifact);
  ASSERT_TRUE(model.ok()) << model.status().message();
  std::vector<std::vector<int32_t>> prompts = testing::widePrompts(20);
  ::setenv("KILN_EMULATE_CUBLASLT", "decline", 1);
  ::setenv("KILN_MMA_GEMMS", "off", 1);
  ::setenv("KILN_MMA_ATTENTION", "off", 1);
  std::string cpuWhere, gpuWhere;
  std::vector<std::vector<float>> cpu =
      testing::runDeviceSteps(**model, Device::Cpu, cpuWhere, nullptr, prompts);
  cuda::EmulatedBlasLtCalls before = cuda::emulatedBlasLtCalls();
  std::vector<std::vector<float>> gpu = testing::runDeviceSteps(
      **model, Device::Emulated, gpuWhere, &cpu, prompts);
  cuda::EmulatedBlasLtCalls after = cuda::emulatedBlasLtCalls();
  for (const char *name :
       {"KILN_EMULATE_CUBLASLT", "KILN_MMA_GEMMS", "KILN_MMA_ATTENTION"})
    ::unsetenv(name);
  EXPECT_NE(gpuWhere.find("declining every GEMM"), std::string::npos)
      << gpuWhere;
  EXPECT_EQ(after.bf16, before.bf16);
  EXPECT_EQ(after.fp8, before.fp8);
  testing::expectSameSteps(cpu, gpu, 1e-4f);
}

} // namespace
} // namespace kiln
