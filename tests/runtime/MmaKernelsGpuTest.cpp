// The tensor-core kernels (runtime/kernels/MmaGemm.h, MmaAttention.h) on a
// GPU, from the runtime's library fatbin, against their host builds on the
// same operands (which MmaGemmKernelTest.cpp and MmaAttentionKernelTest.cpp
// hold to the CPU kernels): the mma.sync fragment layout, the group
// shuffles, the warps' split of k or keys and their merge through shared
// memory are what only the GPU build has. GEMMs: dense of 1 to 70 rows (one
// to three passes), a k the four warps split unevenly, a partial block of
// output columns; grouped by expert; bf16 and FP8 weights (FP8 activations
// as decoded floats and as e4m3 bytes). Attention: prefills with ragged
// lengths, padding rows and context splits: 16-row tiles of V2-Lite's
// naive heads, paged GQA, and absorbed MLA's latent rows (the wide
// variant). Also the grouped GEMV against its members' GEMVs, both on the
// GPU. The outputs are poisoned first.
// Without a GPU the tests are skipped, saying so (label gpu);
// KILN_GPU_TESTS_EMULATE=1 runs them through the emulated driver.
#include "GemmGroup.h"
#include "Library.h"
#include "MmaAttention.h"
#include "runtime/src/cuda/CudaDriver.h"
#include "runtime/src/cuda/EmulatedDriver.h"
#include "runtime/src/cuda/LibraryFatbin.h"
#include "tests/runtime/GemmTestUtil.h"
#include "tests/runtime/GpuBuffers.h"
#include "tests/runtime/PagedTestUtil.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace kiln::cuda {
namespace {

using namespace kiln::testing;

class MmaGpu : public ::testing::Test {
protected:
  void SetUp() override {
    // KILN_GPU_TESTS_EMULATE=1: through the emulated driver (the host build
    // on both sides), to check the test itself without a GPU.
    const char *emulate = std::getenv("KILN_GPU_TESTS_EMULATE");
    std::string skip = openGpu(emulate && std::string(emulate) == "1"
                                   ? absl::StatusOr<Driver>(emulatedDriver())
                                   : Driver::load(),
                               driver_, gpu_);
    if (!skip.empty())
      GTEST_SKIP() << skip;
    ASSERT_TRUE(
        driver_
            ->check(driver_->api().cuModuleLoadData(&module_, libraryFatbin()),
                    "loading the library kernels")
            .ok());
  }
  void TearDown() override {
    if (module_)
      driver_->api().cuModuleUnload(module_);
  }

public:
  /// Runs library kernel `name` over `grid` with `p` (device pointers).
  template <class Params> void launch(const char *name, Dim3 grid, Params p) {
    const DriverApi &a = driver_->api();
    CUfunction f = nullptr;
    ASSERT_TRUE(
        driver_->check(a.cuModuleGetFunction(&f, module_, name), name).ok());
    void *params[] = {&p};
    ASSERT_TRUE(driver_
                    ->check(a.cuLaunchKernel(f, grid.x, grid.y, grid.z,
                                             KILN_BLOCK_THREADS, 1, 1, 0,
                                             gpu_->stream(), params, nullptr),
                            name)
                    .ok());
    ASSERT_TRUE(
        driver_->check(a.cuStreamSynchronize(gpu_->stream()), name).ok());
  }

  template <class T> CUdeviceptr upload(const std::vector<T> &v) {
    return gpu_->upload(v.data(), v.size() * sizeof(T));
  }

  std::optional<Driver> driver_;
  std::optional<Gpu> gpu_;
  CUmodule module_ = nullptr;
};

template <class T> T *device(CUdeviceptr p) { return reinterpret_cast<T *>(p); }

enum class Fp8Input { None, Floats, Codes };

/// x's FP8 forms: its codes as floats with their scales (Fp8Input::Floats),
/// and as e4m3 bytes with theirs (Fp8Input::Codes, as a fused epilogue
/// writes them).
struct Fp8Activations {
  Quantized q;
  std::vector<unsigned char> codes;
  std::vector<float> codeScales;
};
Fp8Activations fp8Activations(Fp8Input input, const std::vector<float> &x,
                              int64_t rows, int64_t k) {
  Fp8Activations a;
  if (input == Fp8Input::None)
    return a;
  a.q = quantize(x, rows, k, false);
  a.codes.resize(rows * k);
  a.codeScales.resize(rows * ((k + 127) / 128));
  if (input == Fp8Input::Codes)
    kiln_quantize_fp8_host(
        {static_cast<int>(rows), 1, 1},
        {x.data(), a.codes.data(), a.codeScales.data(), k, 128, 0, 0});
  return a;
}

/// A GEMM's shape: rows of k (or `offsets`' rows over its experts), n
/// outputs, 128 x 128 FP8 blocks; no operands yet.
GemmParams gemmShape(int64_t rows, int64_t n, int64_t k,
                     const std::vector<int32_t> &offsets) {
  GemmParams p{};
  p.xRowStride = k;
  p.outRowStride = n;
  p.rows = offsets.empty() ? rows : 0;
  p.n = n;
  p.k = k;
  p.blockRows = p.blockCols = 128;
  p.experts = offsets.empty() ? 0 : static_cast<int>(offsets.size() - 1);
  return p;
}

/// One GEMM on the GPU and through the host build: rows of x, weights of
/// `matrices` (grouped by `offsets` when given), the device's outputs held
/// to the summation bound around the host's.
void checkGemm(MmaGpu &t, Gpu &gpu, Fp8Input input, int64_t rows, int64_t n,
               int64_t k, const std::vector<int32_t> &offsets,
               const std::string &what) {
  bool fp8 = input != Fp8Input::None;
  int64_t experts = offsets.empty() ? 1 : int64_t(offsets.size()) - 1;
  Weights w =
      makeWeights(fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16,
                  experts, n, k, 41);
  std::vector<float> x = randomRows(rows, k, 42);
  int64_t kBlocks = (k + 127) / 128;
  auto [q, codes, codeScales] = fp8Activations(input, x, rows, k);
  GemmParams host = gemmShape(rows, n, k, offsets);
  GemmParams dev = host;
  // Host operands.
  host.x = input == Fp8Input::None     ? x.data()
           : input == Fp8Input::Floats ? q.codes.data()
                                       : nullptr;
  host.xCodes = input == Fp8Input::Codes ? codes.data() : nullptr;
  host.xScale = input == Fp8Input::Codes ? codeScales.data() : q.scales.data();
  host.w = w.bytes.data();
  host.wScale = w.scales.data();
  host.offsets = offsets.empty() ? nullptr : offsets.data();
  std::vector<float> want(rows * n, -1e30f);
  host.out = want.data();
  // Device operands.
  if (host.x)
    dev.x = device<const float>(input == Fp8Input::None ? t.upload(x)
                                                        : t.upload(q.codes));
  if (host.xCodes)
    dev.xCodes = device<const unsigned char>(t.upload(codes));
  if (fp8)
    dev.xScale = device<const float>(
        input == Fp8Input::Codes ? t.upload(codeScales) : t.upload(q.scales));
  dev.w = device<const void>(t.upload(w.bytes));
  if (fp8)
    dev.wScale = device<const float>(t.upload(w.scales));
  if (!offsets.empty())
    dev.offsets = device<const int32_t>(t.upload(offsets));
  std::vector<float> poison(rows * n, std::nanf(""));
  CUdeviceptr out = t.upload(poison);
  dev.out = device<float>(out);

  const char *name = input == Fp8Input::None     ? "kiln_gemm_mma_bf16"
                     : input == Fp8Input::Floats ? "kiln_gemm_mma_f8e4m3"
                                                 : "kiln_gemm_mma_f8e4m3_q8";
  Dim3 grid = mmaGemmGrid(n, experts);
  t.launch(name, grid, dev);
  if (input == Fp8Input::None)
    kiln_gemm_mma_bf16_host(grid, host);
  else if (input == Fp8Input::Floats)
    kiln_gemm_mma_f8e4m3_host(grid, host);
  else
    kiln_gemm_mma_f8e4m3_q8_host(grid, host);
  std::vector<float> got = gpu.download(out, rows * n);
  // The operands as multiplied, for the bound.
  std::vector<float> xs = roundedToBf16(x);
  for (size_t i = 0; fp8 && i < xs.size(); ++i)
    xs[i] = q.codes[i] * q.scales[i / k * kBlocks + i % k / 128];
  expectClose(
      got, want, xs, k, w.values, k, [&](int64_t i) { return i / n; },
      [&](int64_t i) { return expertOfRow(offsets, i / n) * n + i % n; }, what);
}

TEST_F(MmaGpu, GemmDenseMatchesTheHostBuild) {
  for (Fp8Input input : {Fp8Input::None, Fp8Input::Floats, Fp8Input::Codes})
    for (auto [rows, n, k] :
         {std::tuple<int64_t, int64_t, int64_t>{1, 200, 1000},
          {7, 2048, 2048},
          {9, 200, 1000},
          {33, 1408, 2048},
          {70, 40, 384}})
      checkGemm(*this, *gpu_, input, rows, n, k, {},
                std::to_string(rows) + "x" + std::to_string(n) + "x" +
                    std::to_string(k) + " input " +
                    std::to_string(static_cast<int>(input)));
}

/// The gated GEMM on the GPU against the plain GEMMs of its two weights and
/// kiln_swiglu over them, all on the GPU: the same sums and the same
/// device SwiGLU, so the same bits.
void checkGatedGemm(MmaGpu &t, Gpu &gpu, Fp8Input input, int64_t rows,
                    int64_t n, int64_t k, const std::vector<int32_t> &offsets,
                    const std::string &what) {
  bool fp8 = input != Fp8Input::None;
  int64_t experts = offsets.empty() ? 1 : int64_t(offsets.size()) - 1;
  cpu::ElementType type =
      fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16;
  Weights gate = makeWeights(type, experts, n, k, 45),
          up = makeWeights(type, experts, n, k, 46);
  std::vector<float> x = randomRows(rows, k, 47);
  auto [q, codes, codeScales] = fp8Activations(input, x, rows, k);
  GemmParams p = gemmShape(rows, n, k, offsets);
  if (input == Fp8Input::Codes) {
    p.xCodes = device<const unsigned char>(t.upload(codes));
    p.xScale = device<const float>(t.upload(codeScales));
  } else {
    p.x = device<const float>(input == Fp8Input::None ? t.upload(x)
                                                      : t.upload(q.codes));
    if (fp8)
      p.xScale = device<const float>(t.upload(q.scales));
  }
  if (!offsets.empty())
    p.offsets = device<const int32_t>(t.upload(offsets));
  std::vector<float> poison(rows * n, std::nanf(""));
  CUdeviceptr outs[4] = {t.upload(poison), t.upload(poison), t.upload(poison),
                         t.upload(poison)};
  const void *w[2] = {device<const void>(t.upload(gate.bytes)),
                      device<const void>(t.upload(up.bytes))};
  const float *scales[2] = {
      fp8 ? device<const float>(t.upload(gate.scales)) : nullptr,
      fp8 ? device<const float>(t.upload(up.scales)) : nullptr};
  std::string suffix = input == Fp8Input::None     ? "bf16"
                       : input == Fp8Input::Floats ? "f8e4m3"
                                                   : "f8e4m3_q8";
  Dim3 grid = mmaGemmGrid(n, experts);
  for (int m = 0; m < 2; ++m) {
    GemmParams plain = p;
    plain.w = w[m];
    plain.wScale = scales[m];
    plain.out = device<float>(outs[m]);
    t.launch(("kiln_gemm_mma_" + suffix).c_str(), grid, plain);
  }
  GemmParams gated = p;
  gated.w = w[0];
  gated.wScale = scales[0];
  gated.wUp = w[1];
  gated.wUpScale = scales[1];
  gated.out = device<float>(outs[2]);
  t.launch(("kiln_gemm_mma_gated_" + suffix).c_str(), grid, gated);
  t.launch("kiln_swiglu", elementwiseGrid(rows * n),
           BinaryParams{device<const float>(outs[0]),
                        device<const float>(outs[1]), device<float>(outs[3]),
                        rows * n});
  std::vector<float> want = gpu.download(outs[3], rows * n),
                     got = gpu.download(outs[2], rows * n);
  for (int64_t i = 0; i < rows * n; ++i)
    ASSERT_EQ(got[i], want[i]) << what << " element " << i;
}

TEST_F(MmaGpu, GemmGatedIsGateAndUpThenSwiglu) {
  std::vector<int32_t> offsets = {0, 0, 40, 40, 41, 48, 48, 49};
  for (Fp8Input input : {Fp8Input::None, Fp8Input::Floats, Fp8Input::Codes}) {
    std::string name = " input " + std::to_string(static_cast<int>(input));
    checkGatedGemm(*this, *gpu_, input, 33, 1408, 2048, {}, "dense" + name);
    checkGatedGemm(*this, *gpu_, input, offsets.back(), 1408, 2048, offsets,
                   "grouped" + name);
  }
}

TEST_F(MmaGpu, GemmGroupedMatchesTheHostBuild) {
  // Empty experts, a run of 40 rows (two passes), single rows, 7 rows.
  std::vector<int32_t> offsets = {0, 0, 40, 40, 41, 48, 48, 49};
  for (Fp8Input input : {Fp8Input::None, Fp8Input::Floats, Fp8Input::Codes})
    checkGemm(*this, *gpu_, input, offsets.back(), 1408, 2048, offsets,
              "grouped input " + std::to_string(static_cast<int>(input)));
}

/// A grouped GEMM (kiln.linear_group) on the GPU against each member's own
/// launch on the GPU: member i's blocks must run that launch's code on the
/// same operands, so the results agree to the bit. The members' output
/// widths `widths`, bf16 weights over f32 rows or FP8 weights over e4m3
/// codes (MLA's q and latent projections at decode); every other member
/// with a bias. Members in `mma` run on the tensor cores (bf16:
/// kiln_gemm_group_* against kiln_gemm_mma_*), the rest as GEMVs.
void checkGemmGroup(MmaGpu &t, Gpu &gpu, bool fp8, int64_t rows, int64_t k,
                    const std::vector<int64_t> &widths,
                    const std::vector<int> &mma) {
  std::string what = std::string(fp8 ? "fp8 codes " : "bf16 ") +
                     std::to_string(rows) + " rows, k " + std::to_string(k) +
                     ", " +
                     std::to_string(std::count(mma.begin(), mma.end(), 1)) +
                     " on the tensor cores";
  SCOPED_TRACE(what);
  std::vector<float> x = randomRows(rows, k, 61);
  int64_t kBlocks = (k + 127) / 128;
  std::vector<unsigned char> codes(rows * k);
  std::vector<float> scales(rows * kBlocks);
  kiln_quantize_fp8_host({static_cast<int>(rows), 1, 1},
                         {x.data(), codes.data(), scales.data(), k, 128, 0, 0});
  CUdeviceptr xDev = fp8 ? t.upload(codes) : t.upload(x);
  CUdeviceptr scalesDev = t.upload(scales);
  GemmGroupParams group{};
  group.members = static_cast<int>(widths.size());
  std::vector<CUdeviceptr> grouped, alone;
  std::string type = fp8 ? "f8e4m3_q8" : "bf16";
  for (size_t m = 0; m < widths.size(); ++m) {
    int64_t n = widths[m];
    Weights w =
        makeWeights(fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16, 1,
                    n, k, 70 + static_cast<int>(m));
    GemmParams p = gemmParams(w, nullptr, rows, n, k);
    p.w = device<const void>(t.upload(w.bytes));
    p.wScale = fp8 ? device<const float>(t.upload(w.scales)) : nullptr;
    if (fp8) {
      p.xCodes = device<const unsigned char>(xDev);
      p.xScale = device<const float>(scalesDev);
    } else {
      p.x = device<const float>(xDev);
    }
    if (m % 2 == 1) {
      p.bias = device<const void>(t.upload(randomRows(1, n, 80)));
      p.biasType = BiasF32;
    }
    std::vector<float> poison(rows * n, std::nanf(""));
    alone.push_back(t.upload(poison));
    grouped.push_back(t.upload(poison));
    p.out = device<float>(alone.back());
    if (mma[m])
      t.launch(("kiln_gemm_mma_" + type).c_str(), mmaGemmGrid(n, 1), p);
    else
      t.launch(("kiln_gemv_" + type).c_str(), gemvGrid(n, 1), p);
    p.out = device<float>(grouped.back());
    group.member[m] = p;
    group.mma[m] = mma[m];
  }
  bool gemvs = std::count(mma.begin(), mma.end(), 1) == 0;
  std::string kernel = (gemvs ? "kiln_gemv_group_" : "kiln_gemm_group_") + type;
  t.launch(kernel.c_str(), gemmGroupGrid(group), group);
  for (size_t m = 0; m < widths.size(); ++m) {
    size_t count = static_cast<size_t>(rows * widths[m]);
    std::vector<float> want = gpu.download(alone[m], count);
    std::vector<float> got = gpu.download(grouped[m], count);
    for (size_t i = 0; i < count; ++i)
      ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
          << "member " << m << " element " << i << ": " << got[i] << " vs "
          << want[i];
  }
}

TEST_F(MmaGpu, GemmGroupIsEachMembersLaunch) {
  for (bool fp8 : {false, true}) {
    checkGemmGroup(*this, *gpu_, fp8, 1, 2048, {3072, 576}, {0, 0});
    checkGemmGroup(*this, *gpu_, fp8, 3, 384, {64, 40, 200, 8}, {0, 0, 0, 0});
  }
  // bf16: a decode step of a few tokens, MLA's projections on the tensor
  // cores, and members of both kinds in one launch.
  checkGemmGroup(*this, *gpu_, false, 4, 2048, {3072, 576}, {1, 1});
  checkGemmGroup(*this, *gpu_, false, 40, 384, {64, 40, 200, 8}, {1, 0, 1, 0});
}

/// A prefill of two ragged sequences (padding rows) through
/// kiln_attention_mma on the GPU and on the host, 1 and 3 context splits.
/// Paged: keys and values of a token in one cache row (values after the
/// keys, so at an offset), in shuffled blocks of 64.
void checkAttention(MmaGpu &t, Gpu &gpu, int64_t heads, int64_t kvHeads,
                    int64_t dk, int64_t dv, bool paged, bool wide = false) {
  const int64_t batch = 2, seq = 300, blockTokens = 64;
  std::string what = std::to_string(heads) + "/" + std::to_string(kvHeads) +
                     " heads, dk " + std::to_string(dk) + ", dv " +
                     std::to_string(dv) + (paged ? ", paged" : "") +
                     (wide ? ", wide" : "");
  std::vector<float> q = randomRows(batch * seq * heads, dk, 51);
  std::vector<float> k = randomRows(batch * seq * kvHeads, dk, 52);
  std::vector<float> v = randomRows(batch * seq * kvHeads, dv, 53);
  for (float &x : q)
    x *= 0.1f;
  std::vector<int32_t> positions(batch * seq), kvLengths = {300, 170};
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s)
      positions[b * seq + s] = s < kvLengths[b] ? static_cast<int32_t>(s) : -1;
  float maxValue = maxAbs(roundedToBf16(v));
  std::mt19937 rng(54);
  cpu::pagedtest::TestBlockTables tables;
  std::vector<float> slot;
  int64_t entry = kvHeads * (dk + dv);
  if (paged) {
    tables =
        cpu::pagedtest::shuffledBlockTables(rng, kvLengths, seq, blockTokens);
    slot = cpu::pagedtest::pagedKeysAndValues(
        tables, kvLengths, seq, blockTokens, k, v, kvHeads, dk, dv, 0.0f);
  }
  CUdeviceptr devSlot = paged ? t.upload(slot) : 0;
  CUdeviceptr devK = paged ? 0 : t.upload(k), devV = paged ? 0 : t.upload(v);
  for (int splits : {1, 3}) {
    AttentionParams host{};
    host.seq = seq;
    host.heads = heads;
    host.kvHeads = kvHeads;
    host.dk = dk;
    host.dv = dv;
    host.scale = 0.07f;
    host.splits = splits;
    host.splitTokens = attentionSplitTokens(seq, splits);
    AttentionParams dev = host;
    std::vector<float> want(batch * seq * heads * dv, -1e30f);
    std::vector<float> scratch(batch * seq * heads * splits * (2 + dv));
    host.q = q.data();
    host.positions = positions.data();
    host.kvLengths = kvLengths.data();
    host.out = want.data();
    host.scratch = scratch.data();
    dev.q = device<const float>(t.upload(q));
    dev.positions = device<const int32_t>(t.upload(positions));
    dev.kvLengths = device<const int32_t>(t.upload(kvLengths));
    if (paged) {
      host.k = {slot.data(), entry, dk, 0};
      host.v = {slot.data(), entry, dv, kvHeads * dk};
      host.tables = {tables.ids.data(), tables.stride, blockTokens, 0};
      dev.k = {device<const float>(devSlot), entry, dk, 0};
      dev.v = {device<const float>(devSlot), entry, dv, kvHeads * dk};
      dev.tables = {device<const int32_t>(t.upload(tables.ids)), tables.stride,
                    blockTokens, 0};
    } else {
      host.k = {k.data(), kvHeads * dk, dk, 0};
      host.v = {v.data(), kvHeads * dv, dv, 0};
      host.tables = {nullptr, 0, 0, seq};
      dev.k = {device<const float>(devK), kvHeads * dk, dk, 0};
      dev.v = {device<const float>(devV), kvHeads * dv, dv, 0};
      dev.tables = host.tables;
    }
    std::vector<float> poison(want.size(), std::nanf(""));
    CUdeviceptr out = t.upload(poison);
    dev.out = device<float>(out);
    dev.scratch = device<float>(t.upload(scratch));
    Dim3 grid = attentionGrid(batch, seq, heads, kvHeads, splits);
    Dim3 merge = attentionMergeGrid(batch * seq, heads, host.dv);
    if (wide) {
      t.launch("kiln_attention_mma_wide", grid, dev);
      kiln_attention_mma_wide_host(grid, host);
    } else {
      t.launch("kiln_attention_mma", grid, dev);
      kiln_attention_mma_host(grid, host);
    }
    if (splits > 1) {
      t.launch("kiln_attention_merge", merge, dev);
      kiln_attention_merge_host(merge, host);
    }
    std::vector<float> got = gpu.download(out, want.size());
    // Both round Q, K, V and the weights to bf16; expf and the sums differ
    // by ulps, which may round a weight to the neighbouring bf16 (2^-8).
    float bound = 0x1p-8f * maxValue +
                  4.0f * static_cast<float>(seq) * 0x1p-24f * maxValue;
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], bound)
          << what << ", splits " << splits << ", element " << i;
  }
}

TEST_F(MmaGpu, AttentionPrefillMatchesTheHostBuild) {
  // V2-Lite's naive prefill heads (16-row tiles); paged GQA groups of 4 (4
  // rows per tile) with a dk that ends half-way through an mma step.
  checkAttention(*this, *gpu_, 16, 16, 192, 128, false);
  checkAttention(*this, *gpu_, 8, 2, 136, 64, true);
  // Absorbed MLA's latent rows: 16 heads on one kv head, dk 576, dv 512.
  checkAttention(*this, *gpu_, 16, 1, 576, 512, true, true);
}

} // namespace
} // namespace kiln::cuda
