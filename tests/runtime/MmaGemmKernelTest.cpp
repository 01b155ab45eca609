// Host builds of the tensor-core GEMMs (runtime/kernels/MmaGemm.h) against
// the CPU kernels: dense, per head and grouped by expert, bf16 and FP8
// weights (FP8 activations as floats or as e4m3 bytes). The host build runs
// the kernel's per-lane fragment loads and stores and a host mma that
// multiplies by the PTX fragment layout, so a wrong lane, register or k
// permutation puts products in the wrong place, far outside the bound.
//
// bf16: the kernel rounds activations to bf16, so the reference is
// cpu::linear on the rounded activations (fp32 products of the same
// operands; only the summation order differs). FP8: the codes of both are
// exact in bf16, so the reference is the CPU's FP8 GEMM itself.
#include "MmaGemm.h"
#include "tests/runtime/GemmTestUtil.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

namespace kiln {
namespace {

using namespace kiln::testing;

enum class Fp8Input { None, Floats, Codes };

void runMma(Fp8Input input, Dim3 grid, const GemmParams &p) {
  switch (input) {
  case Fp8Input::None:
    return kiln_gemm_mma_bf16_host(grid, p);
  case Fp8Input::Floats:
    return kiln_gemm_mma_f8e4m3_host(grid, p);
  case Fp8Input::Codes:
    return kiln_gemm_mma_f8e4m3_q8_host(grid, p);
  }
}

/// FP8 activations as a fused epilogue leaves them: e4m3 bytes, scales.
struct Codes {
  std::vector<unsigned char> bytes;
  std::vector<float> scales;
};
Codes quantizeToBytes(const std::vector<float> &x, int64_t rows, int64_t k) {
  Codes c{std::vector<unsigned char>(rows * k),
          std::vector<float>(rows * ((k + 127) / 128))};
  kiln_quantize_fp8_host(
      {static_cast<int>(rows), 1, 1},
      {x.data(), c.bytes.data(), c.scales.data(), k, 128, 0, 0});
  return c;
}

/// p's activations for `input`: x rounded by the kernel (bf16), FP8 codes
/// as floats, or e4m3 bytes. Returns the operands as multiplied, for the
/// error bound.
std::vector<float> setActivations(GemmParams &p, Fp8Input input,
                                  const std::vector<float> &x, int64_t rows,
                                  int64_t k, Quantized &q, Codes &codes) {
  switch (input) {
  case Fp8Input::None:
    p.x = x.data();
    return roundedToBf16(x);
  case Fp8Input::Floats:
    q = quantize(x, rows, k, false);
    p.x = q.codes.data();
    p.xScale = q.scales.data();
    break;
  case Fp8Input::Codes:
    codes = quantizeToBytes(x, rows, k);
    q = quantize(x, rows, k, false); // the same codes, decoded
    p.x = nullptr;
    p.xCodes = codes.bytes.data();
    p.xScale = codes.scales.data();
    break;
  }
  std::vector<float> xs(x.size());
  int64_t kBlocks = (k + 127) / 128;
  for (size_t i = 0; i < xs.size(); ++i)
    xs[i] = q.codes[i] * q.scales[i / k * kBlocks + i % k / 128];
  return xs;
}

const char *inputName(Fp8Input input) {
  return input == Fp8Input::None     ? "bf16"
         : input == Fp8Input::Floats ? "fp8"
                                     : "fp8 codes";
}

TEST(MmaGemmKernel, LinearMatchesCpu) {
  // Rows: one mma column of 8 (1, 5, 8), two (9), four (17, 32), and a
  // second pass (40, 70). n: one block, a partial one (40, 200). k: a
  // partial slab (72), whole steps (256), a partial step split unevenly
  // over the warps (1000).
  for (Fp8Input input : {Fp8Input::None, Fp8Input::Floats, Fp8Input::Codes})
    for (auto [rows, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 16, 256},
                              {5, 40, 72},
                              {8, 200, 1000},
                              {9, 64, 256},
                              {17, 48, 1000},
                              {32, 16, 128},
                              {40, 200, 256},
                              {70, 33, 384}})
      for (bool bias : {false, true}) {
        std::string what = std::string(inputName(input)) + " " +
                           std::to_string(rows) + "x" + std::to_string(n) +
                           "x" + std::to_string(k) + (bias ? " bias" : "");
        bool fp8 = input != Fp8Input::None;
        cpu::ElementType type =
            fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16;
        Weights w = makeWeights(type, 1, n, k, 31);
        std::vector<float> x = randomRows(rows, k, 32);
        std::vector<float> b = randomRows(1, n, 33);
        std::vector<float> want(rows * n), got(rows * n, -1e30f);
        GemmParams p = gemmParams(w, got.data(), rows, n, k);
        Quantized q;
        Codes codes;
        std::vector<float> xs = setActivations(p, input, x, rows, k, q, codes);
        std::vector<float> scratch(
            static_cast<size_t>(cpu::fp8ActivationScratch(rows, k, 128)));
        cpu::Weight cpuBias =
            bias ? cpu::Weight{b.data(), cpu::ElementType::F32} : cpu::Weight{};
        if (fp8)
          cpu::linear(x.data(), rows, k, cpuWeight(w), n, cpuBias, want.data(),
                      {scratch.data(), false});
        else
          cpu::linear(xs.data(), rows, k, cpuWeight(w), n, cpuBias,
                      want.data());
        p.bias = bias ? b.data() : nullptr;
        p.biasType = bias ? BiasF32 : NoBias;
        ASSERT_TRUE(
            mmaGemmFits(k, fp8, input == Fp8Input::Codes, 128, 128, k, 0))
            << what;
        runMma(input, mmaGemmGrid(n, 1), p);
        expectClose(
            got, want, xs, k, w.values, k, [&](int64_t i) { return i / n; },
            [&](int64_t i) { return i % n; }, what);
      }
}

TEST(MmaGemmKernel, HeadLinearMatchesCpu) {
  // Absorbed MLA's per-head GEMMs: x [tokens, heads, k], w [heads, n, k].
  const int64_t tokens = 11, heads = 4, k = 256, n = 160;
  for (Fp8Input input : {Fp8Input::None, Fp8Input::Floats}) {
    bool fp8 = input != Fp8Input::None;
    cpu::ElementType type =
        fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16;
    Weights w = makeWeights(type, heads, n, k, 34);
    std::vector<float> x = randomRows(tokens * heads, k, 35);
    std::vector<float> want(tokens * heads * n), got(want.size(), -1e30f);
    GemmParams p = gemmParams(w, got.data(), tokens, n, k);
    setHeadLayout(p, heads, k);
    Quantized q;
    Codes codes;
    std::vector<float> xs =
        setActivations(p, input, x, tokens * heads, k, q, codes);
    std::vector<float> scratch(
        static_cast<size_t>(cpu::headLinearScratch(tokens, k, n)));
    std::vector<float> act(
        static_cast<size_t>(cpu::fp8ActivationScratch(tokens * heads, k, 128)));
    cpu::headLinear(fp8 ? x.data() : xs.data(), tokens, heads, k, cpuWeight(w),
                    n, want.data(), scratch.data(), {act.data(), false});
    runMma(input, mmaGemmGrid(n, heads), p);
    expectClose(
        got, want, xs, k, w.values, k, [&](int64_t i) { return i / n; },
        [&](int64_t i) { return (i / n % heads) * n + i % n; },
        inputName(input));
  }
}

TEST(MmaGemmKernel, GroupedLinearReadsExpertOffsetsOnTheDevice) {
  const int64_t experts = 6, n = 96, k = 384;
  // Empty experts, a run of 40 rows (a pass of 32, then 8), one row, 7;
  // then fewer rows than experts (a grid over the active experts is
  // smaller).
  for (const std::vector<int32_t> &offsets :
       {std::vector<int32_t>{0, 0, 40, 40, 41, 48, 48},
        std::vector<int32_t>{0, 0, 2, 2, 3, 3, 3}}) {
    int64_t rows = offsets.back();
    std::vector<int32_t> active = activeExpertsOf(offsets);
    for (Fp8Input input : {Fp8Input::None, Fp8Input::Floats, Fp8Input::Codes})
      for (bool compact : {false, true}) {
        bool fp8 = input != Fp8Input::None;
        cpu::ElementType type =
            fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16;
        Weights w = makeWeights(type, experts, n, k, 36);
        std::vector<float> x = randomRows(rows, k, 37);
        std::vector<float> want(rows * n), got(rows * n, -1e30f);
        // offsets[experts] counts the rows; p.rows bounds them (the grid).
        GemmParams p = gemmParams(w, got.data(), rows, n, k);
        Quantized q;
        Codes codes;
        std::vector<float> xs = setActivations(p, input, x, rows, k, q, codes);
        std::vector<float> act(
            static_cast<size_t>(cpu::fp8ActivationScratch(rows, k, 128)));
        cpu::groupedLinear(fp8 ? x.data() : xs.data(), k, cpuWeight(w), experts,
                           n, offsets.data(), want.data(), {act.data(), false});
        setExperts(p, offsets, compact ? active.data() : nullptr);
        runMma(input, mmaGemmGrid(n, gemmGridMatrices(p, experts)), p);
        expectClose(
            got, want, xs, k, w.values, k, [&](int64_t i) { return i / n; },
            [&](int64_t i) { return expertOfRow(offsets, i / n) * n + i % n; },
            std::string(inputName(input)) + " rows " + std::to_string(rows) +
                (compact ? " over the active experts" : ""));
      }
  }
}

void runGatedMma(Fp8Input input, Dim3 grid, const GemmParams &p) {
  switch (input) {
  case Fp8Input::None:
    return kiln_gemm_mma_gated_bf16_host(grid, p);
  case Fp8Input::Floats:
    return kiln_gemm_mma_gated_f8e4m3_host(grid, p);
  case Fp8Input::Codes:
    return kiln_gemm_mma_gated_f8e4m3_q8_host(grid, p);
  }
}

// The gated kernel is the gate's GEMM, the up projection's GEMM and SwiGLU
// over them, to the bit: each sum in the order a plain GEMM takes it.
// Dense (one and two passes, a partial block of n) and grouped by expert.
TEST(MmaGemmKernel, GatedIsGateAndUpThenSwiglu) {
  const int64_t k = 384;
  for (Fp8Input input : {Fp8Input::None, Fp8Input::Floats, Fp8Input::Codes})
    for (auto [rows, n, experts] :
         {std::tuple<int64_t, int64_t, int64_t>{5, 40, 1},
          {40, 96, 1},
          {48, 96, 6}}) {
      std::string what = std::string(inputName(input)) + " " +
                         std::to_string(rows) + "x" + std::to_string(n) +
                         " experts " + std::to_string(experts);
      bool fp8 = input != Fp8Input::None;
      cpu::ElementType type =
          fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16;
      Weights gate = makeWeights(type, experts, n, k, 41);
      Weights up = makeWeights(type, experts, n, k, 42);
      std::vector<float> x = randomRows(rows, k, 43);
      std::vector<int32_t> offsets{0, 0, 20, 20, 21, 30, 48};
      std::vector<int32_t> active = activeExpertsOf(offsets);
      std::vector<float> g(rows * n), u(rows * n), got(rows * n, -1e30f);
      Quantized q;
      Codes codes;
      GemmParams p = gemmParams(gate, got.data(), rows, n, k);
      setActivations(p, input, x, rows, k, q, codes);
      if (experts > 1)
        setExperts(p, offsets, active.data());
      Dim3 grid = mmaGemmGrid(n, gemmGridMatrices(p, experts));
      // The plain GEMMs: the same activations, one weight each.
      GemmParams gateOnly = p, upOnly = p;
      gateOnly.out = g.data();
      upOnly.out = u.data();
      upOnly.w = up.bytes.data();
      upOnly.wScale = fp8 ? up.scales.data() : nullptr;
      runMma(input, grid, gateOnly);
      runMma(input, grid, upOnly);
      p.wUp = up.bytes.data();
      p.wUpScale = fp8 ? up.scales.data() : nullptr;
      runGatedMma(input, grid, p);
      for (int64_t i = 0; i < rows * n; ++i)
        ASSERT_EQ(got[i], swiglu(g[i], u[i])) << what << " element " << i;
    }
}

TEST(MmaGemmKernel, FitsOnlyWholeLoadsAndScaleBlocks) {
  EXPECT_TRUE(mmaGemmFits(2048, false, false, 0, 0, 2048, 0));
  EXPECT_FALSE(mmaGemmFits(2044, false, false, 0, 0, 2044, 0)); // k % 8
  EXPECT_FALSE(mmaGemmFits(2048, false, false, 0, 0, 2050, 0)); // row stride
  EXPECT_FALSE(mmaGemmFits(128, false, false, 0, 0, 512, 130)); // per head
  EXPECT_TRUE(mmaGemmFits(2048, true, true, 128, 128, 2056, 0));
  EXPECT_FALSE(mmaGemmFits(2048, true, true, 128, 128, 2052, 0)); // codes: 8
  EXPECT_FALSE(mmaGemmFits(2048, true, false, 8, 128, 2048, 0));  // rows < 16
  EXPECT_FALSE(mmaGemmFits(2048, true, false, 128, 64, 2048, 0)); // k block
}

// A GPU stops on an 8- or 16-byte load from an address that is not a
// multiple of its size; the host builds load element by element, and stop
// there too (requireAlignedLoad), so that a misaligned operand shows in CI.
TEST(MmaGemmKernelDeathTest, VectorLoadsFromMisalignedAddressesStop) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  int64_t rows = 8, n = 16, k = 256;
  Weights w = makeWeights(cpu::ElementType::BF16, 1, n, k, 41);
  std::vector<float> x = randomRows(rows + 1, k, 42), out(rows * n);
  GemmParams p = gemmParams(w, out.data(), rows, n, k);
  p.x = x.data();
  runMma(Fp8Input::None, mmaGemmGrid(n, 1), p); // aligned: runs

  p.x = x.data() + 1; // 4 bytes past a 16-byte boundary
  EXPECT_DEATH(runMma(Fp8Input::None, mmaGemmGrid(n, 1), p),
               "16-byte vector load from .* is misaligned");
  std::vector<uint8_t> shifted(w.bytes.size() + 2);
  std::copy(w.bytes.begin(), w.bytes.end(), shifted.begin() + 2);
  p.x = x.data();
  p.w = shifted.data() + 2; // one bf16 past
  EXPECT_DEATH(runMma(Fp8Input::None, mmaGemmGrid(n, 1), p),
               "16-byte vector load from .* is misaligned");
  // The GEMVs' and the router's whole loads (FusedPrelude.h).
  float eight[8];
  EXPECT_DEATH(loadEightWhole(x.data() + 2, eight),
               "16-byte vector load from .* is misaligned");
  EXPECT_DEATH(loadEightWhole(shifted.data() + 4, eight),
               "8-byte vector load from .* is misaligned");
}

} // namespace
} // namespace kiln
