// Host builds of the CUDA executor's GEMMs (runtime/kernels/Matmul.h)
// against cpu::linear / headLinear / groupedLinear, every weight type, FP8
// with block scales and its activation quantization (tolerance: see
// GemmTestUtil.h).
#include "Matmul.h"
#include "tests/runtime/GemmTestUtil.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

namespace kiln {
namespace {

using namespace kiln::testing;

TEST(MatmulKernel, LinearMatchesCpuForEveryWeightType) {
  for (cpu::ElementType type :
       {cpu::ElementType::F32, cpu::ElementType::BF16, cpu::ElementType::F16,
        cpu::ElementType::F8E4M3})
    for (auto [rows, n, k] :
         {std::tuple<int64_t, int64_t, int64_t>{1, 256, 512},
          {3, 200, 300},
          {9, 129, 130},
          {40, 64, 1000}})
      for (bool bias : {false, true})
        for (bool pow2 : {false, true}) {
          if (pow2 && type != cpu::ElementType::F8E4M3)
            continue;
          std::string what = std::string(name(type)) + " " +
                             std::to_string(rows) + "x" + std::to_string(n) +
                             "x" + std::to_string(k);
          Weights w = makeWeights(type, 1, n, k, 7);
          std::vector<float> x = randomRows(rows, k, 8);
          std::vector<float> b = randomRows(1, n, 9);
          std::vector<float> want(rows * n), got(rows * n);
          std::vector<float> scratch(
              static_cast<size_t>(cpu::fp8ActivationScratch(rows, k, 128)));
          cpu::linear(x.data(), rows, k, cpuWeight(w), n,
                      bias ? cpu::Weight{b.data(), cpu::ElementType::F32}
                           : cpu::Weight{},
                      want.data(), {scratch.data(), pow2});
          bool fp8 = type == cpu::ElementType::F8E4M3;
          Quantized q = fp8 ? quantize(x, rows, k, pow2) : Quantized{};
          GemmParams p = gemmParams(w, got.data(), rows, n, k);
          p.x = fp8 ? q.codes.data() : x.data();
          p.xScale = q.scales.data();
          p.bias = bias ? b.data() : nullptr;
          p.biasType = bias ? BiasF32 : NoBias;
          runGemv(type, gemvGrid(n, 1), p);
          // The bound over the operands as multiplied (FP8: quantized).
          std::vector<float> xs = x;
          if (fp8)
            for (int64_t r = 0; r < rows; ++r)
              for (int64_t j = 0; j < k; ++j)
                xs[r * k + j] = q.codes[r * k + j] *
                                q.scales[r * ((k + 127) / 128) + j / 128];
          expectClose(
              got, want, xs, k, w.values, k, [&](int64_t i) { return i / n; },
              [&](int64_t i) { return i % n; }, what);
        }
}

TEST(MatmulKernel, HeadLinearMatchesCpu) {
  // 11 tokens: a pass of 8 rows, then one of 3.
  const int64_t tokens = 11, heads = 4, k = 192, n = 160;
  for (cpu::ElementType type :
       {cpu::ElementType::BF16, cpu::ElementType::F8E4M3}) {
    Weights w = makeWeights(type, heads, n, k, 11);
    std::vector<float> x = randomRows(tokens * heads, k, 12);
    std::vector<float> want(tokens * heads * n), got(want.size());
    std::vector<float> scratch(
        static_cast<size_t>(cpu::headLinearScratch(tokens, k, n)));
    std::vector<float> act(
        static_cast<size_t>(cpu::fp8ActivationScratch(tokens * heads, k, 128)));
    cpu::headLinear(x.data(), tokens, heads, k, cpuWeight(w), n, want.data(),
                    scratch.data(), {act.data(), false});
    bool fp8 = type == cpu::ElementType::F8E4M3;
    Quantized q = fp8 ? quantize(x, tokens * heads, k, false) : Quantized{};
    GemmParams p = gemmParams(w, got.data(), tokens, n, k);
    setHeadLayout(p, heads, k);
    p.x = fp8 ? q.codes.data() : x.data();
    p.xScale = q.scales.data();
    runGemv(type, gemvGrid(n, heads), p);
    std::vector<float> xs = x;
    if (fp8)
      for (size_t i = 0; i < xs.size(); ++i)
        xs[i] = q.codes[i] * q.scales[i / k * 2 + i % k / 128];
    expectClose(
        got, want, xs, k, w.values, k,
        [&](int64_t i) { return i / n; }, // (token, head) row
        [&](int64_t i) { return (i / n % heads) * n + i % n; }, name(type));
  }
}

// kiln-fold-head-slices: each head's columns [offset, offset + k) of a
// wider row, read in place (CPU: xOffset/xWidth; GEMV: strides), against
// the slice copied out first.
TEST(MatmulKernel, HeadLinearReadsAColumnRangeOfEachHead) {
  const int64_t tokens = 11, heads = 4, width = 192, k = 128, n = 96;
  Weights w = makeWeights(cpu::ElementType::BF16, heads, n, k, 15);
  std::vector<float> x = randomRows(tokens * heads, width, 16);
  std::vector<float> scratch(
      static_cast<size_t>(cpu::headLinearScratch(tokens, k, n)));
  for (int64_t offset : {int64_t{0}, int64_t{64}}) {
    SCOPED_TRACE("offset " + std::to_string(offset));
    std::vector<float> sliced(tokens * heads * k);
    for (int64_t r = 0; r < tokens * heads; ++r)
      std::copy_n(x.begin() + r * width + offset, k, sliced.begin() + r * k);
    std::vector<float> want(tokens * heads * n), cpuGot(want.size()),
        got(want.size());
    cpu::headLinear(sliced.data(), tokens, heads, k, cpuWeight(w), n,
                    want.data(), scratch.data());
    cpu::headLinear(x.data(), tokens, heads, k, cpuWeight(w), n, cpuGot.data(),
                    scratch.data(), {}, offset, width);
    EXPECT_EQ(cpuGot, want);
    GemmParams p = gemmParams(w, got.data(), tokens, n, k);
    setHeadLayout(p, heads, width);
    p.x = x.data() + offset;
    runGemv(cpu::ElementType::BF16, gemvGrid(n, heads), p);
    expectClose(
        got, want, sliced, k, w.values, k, [&](int64_t i) { return i / n; },
        [&](int64_t i) { return (i / n % heads) * n + i % n; }, "bf16");
  }
}

TEST(MatmulKernel, QuantizeFp8WritesScalesTokenMajorOrForCublasLt) {
  // k with a partial last block; pow2 (UE8M0) and plain scales.
  const int64_t rows = 5, k = 300, groups = 3;
  std::vector<float> x = randomRows(rows, k, 21);
  for (int pow2 : {0, 1}) {
    std::vector<uint8_t> wantCodes(rows * k);
    std::vector<float> wantScales(rows * groups);
    cpu::quantizeFp8(x.data(), rows, k, 128, pow2 == 1, wantCodes.data(),
                     wantScales.data());
    std::vector<unsigned char> codes(rows * k);
    std::vector<float> scales(rows * groups, -1.0f);
    kiln_quantize_fp8_host(
        Dim3{static_cast<int>(rows), 1, 1},
        {x.data(), codes.data(), scales.data(), k, 128, pow2, 0});
    EXPECT_TRUE(std::equal(codes.begin(), codes.end(), wantCodes.begin()));
    EXPECT_EQ(scales, wantScales);
    // cuBLASLt's VEC128 layout: scale (row, g) at g * stride + row, the
    // rows rounded up to 4; the same codes.
    int64_t stride = cublasScaleStride(rows);
    ASSERT_EQ(stride, 8);
    std::vector<float> byBlock(stride * groups, -1.0f);
    kiln_quantize_fp8_host(
        Dim3{static_cast<int>(rows), 1, 1},
        {x.data(), codes.data(), byBlock.data(), k, 128, pow2, stride});
    EXPECT_TRUE(std::equal(codes.begin(), codes.end(), wantCodes.begin()));
    std::vector<float> rewritten(stride * groups, -1.0f);
    kiln_fp8_scales_by_block_host(
        Dim3{static_cast<int>(rows), 1, 1},
        {wantScales.data(), rewritten.data(), stride, groups});
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < groups; ++g) {
        EXPECT_EQ(byBlock[g * stride + r], wantScales[r * groups + g]);
        EXPECT_EQ(rewritten[g * stride + r], wantScales[r * groups + g]);
      }
  }
}

TEST(MatmulKernel, GroupedLinearReadsExpertOffsetsOnTheDevice) {
  const int64_t experts = 6, n = 96, k = 256;
  // Empty experts, one long run crossing row tiles, a single row; then
  // fewer rows than experts (a grid over the active experts is smaller).
  for (const std::vector<int32_t> &offsets :
       {std::vector<int32_t>{0, 0, 11, 11, 12, 20, 20},
        std::vector<int32_t>{0, 0, 2, 2, 3, 3, 3}}) {
    int64_t rows = offsets.back();
    std::vector<int32_t> active = activeExpertsOf(offsets);
    for (cpu::ElementType type : {cpu::ElementType::F32, cpu::ElementType::BF16,
                                  cpu::ElementType::F8E4M3})
      for (bool compact : {false, true}) {
        std::string what = std::string(name(type)) + " rows " +
                           std::to_string(rows) +
                           (compact ? " over the active experts" : "");
        Weights w = makeWeights(type, experts, n, k, 13);
        std::vector<float> x = randomRows(rows, k, 14);
        std::vector<float> want(rows * n), got(rows * n, -1.0f);
        std::vector<float> act(
            static_cast<size_t>(cpu::fp8ActivationScratch(rows, k, 128)));
        cpu::groupedLinear(x.data(), k, cpuWeight(w), experts, n,
                           offsets.data(), want.data(), {act.data(), false});
        bool fp8 = type == cpu::ElementType::F8E4M3;
        Quantized q = fp8 ? quantize(x, rows, k, false) : Quantized{};
        // offsets[experts] counts the rows; p.rows bounds them (the grid).
        GemmParams p = gemmParams(w, got.data(), rows, n, k);
        p.x = fp8 ? q.codes.data() : x.data();
        p.xScale = q.scales.data();
        setExperts(p, offsets, compact ? active.data() : nullptr);
        // A block per (column tile, expert), the expert's rows kGemmRows at
        // a time (the 11-row run takes two passes).
        runGemv(type, gemvGrid(n, gemmGridMatrices(p, experts)), p);
        std::vector<float> xs = x;
        if (fp8)
          for (size_t i = 0; i < xs.size(); ++i)
            xs[i] = q.codes[i] * q.scales[i / k * 2 + i % k / 128];
        expectClose(
            got, want, xs, k, w.values, k, [&](int64_t i) { return i / n; },
            [&](int64_t i) { return expertOfRow(offsets, i / n) * n + i % n; },
            what);
      }
  }
}

// A decode step's few selections in selection order: routed row r is token
// r / topK's row (x holds the tokens) against expert selections[r], with no
// route sorting them; each row's entry of selectionRows becomes r. A row of
// an expert out of range gets no output, as the route skips it. Then a GEMM
// of those routed rows (fan-out 1), as the down projection reads the gated
// GEMM's. Against the naive sums in double.
TEST(MatmulKernel, GroupedLinearInSelectionOrder) {
  const int64_t experts = 6, n = 96, k = 256, tokens = 2, topK = 3;
  const int64_t rows = tokens * topK;
  std::vector<int32_t> selections = {4, 0, 5, 5, 2, experts};
  for (cpu::ElementType type : {cpu::ElementType::F32, cpu::ElementType::BF16,
                                cpu::ElementType::F8E4M3})
    for (int fanOut : {static_cast<int>(topK), 1}) {
      std::string what =
          std::string(name(type)) + " fan-out " + std::to_string(fanOut);
      Weights w = makeWeights(type, experts, n, k, 13);
      int64_t xRows = rows / fanOut;
      std::vector<float> x = randomRows(xRows, k, 14);
      // FP8: the GEMV reads the rows quantized (kiln_quantize_rows), and
      // the reference their values.
      bool fp8 = type == cpu::ElementType::F8E4M3;
      Quantized q = fp8 ? quantize(x, xRows, k, false) : Quantized{};
      std::vector<float> xs = x;
      if (fp8)
        for (size_t i = 0; i < xs.size(); ++i)
          xs[i] = q.codes[i] * q.scales[i / k * 2 + i % k / 128];
      std::vector<float> want(rows * n, -1.0f), got(rows * n, -1.0f);
      for (int64_t r = 0; r < rows; ++r)
        if (selections[r] < experts)
          for (int64_t c = 0; c < n; ++c) {
            double sum = 0;
            for (int64_t j = 0; j < k; ++j)
              sum += double(xs[r / fanOut * k + j]) *
                     w.values[(selections[r] * n + c) * k + j];
            want[r * n + c] = static_cast<float>(sum);
          }
      std::vector<int32_t> selectionRows(rows, -7);
      GemmParams p = gemmParams(w, got.data(), rows, n, k);
      p.x = fp8 ? q.codes.data() : x.data();
      p.xScale = q.scales.data();
      p.experts = static_cast<int>(experts);
      p.selections = selections.data();
      p.selectionFanOut = fanOut;
      p.selectionRows = selectionRows.data();
      runGemv(type, gemvGrid(n, gemmGridMatrices(p, experts)), p);
      for (int64_t r = 0; r < rows; ++r)
        EXPECT_EQ(selectionRows[r], r) << what;
      expectClose(
          got, want, xs, k, w.values, k,
          [&](int64_t i) { return i / n / fanOut; },
          [&](int64_t i) {
            int64_t e = selections[i / n];
            return (e < experts ? e : 0) * n + i % n;
          },
          what);
    }
}

} // namespace
} // namespace kiln
