// Host builds of the FP8 GEMVs that quantize their f32 activations
// themselves (kiln_gemv_*f8e4m3_qin, runtime/kernels/Matmul.h) against what
// they replace: kiln_quantize_rows, then the GEMV on the decoded codes.
// The codes and scales are the same, and so is the arithmetic after them,
// so the results must agree to the bit, also in a decode step's selection
// order. (Their grouped forms, with members given codes beside those they
// quantize: GemmGroupKernelTest.cpp.)
#include "Library.h"
#include "Matmul.h"
#include "tests/runtime/GemmTestUtil.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace kiln {
namespace {

using namespace kiln::testing;

/// A GEMM's problem: dense, over `heads` head matrices (x [rows, heads,
/// k]), grouped by expert (offsets), or a decode step's selections in
/// selection order (the experts `selections`, x a row per fanOut of them).
struct Problem {
  int64_t rows, n, k;
  int64_t heads = 1;
  std::vector<int32_t> offsets = {}; // empty: not grouped
  std::vector<int32_t> selections = {};
  int fanOut = 1;
};

void expectQuantizingIsQuantizeThenGemv(const Problem &problem, bool gated,
                                        bool pow2) {
  auto [rows, n, k, heads, offsets, selections, fanOut] = problem;
  bool grouped = !offsets.empty() || !selections.empty();
  int64_t matrices = !offsets.empty() ? static_cast<int64_t>(offsets.size()) - 1
                     : selections.empty() ? heads
                                          : 4;
  SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(n) + "x" +
               std::to_string(k) + " over " + std::to_string(matrices) +
               (grouped ? " experts" : " matrices") +
               (selections.empty() ? ""
                                   : " in selection order, fan-out " +
                                         std::to_string(fanOut)) +
               (gated ? ", gated" : "") + (pow2 ? ", ue8m0" : ""));
  Weights w = makeWeights(cpu::ElementType::F8E4M3, matrices, n, k, 31);
  Weights up = makeWeights(cpu::ElementType::F8E4M3, matrices, n, k, 32);
  // Rows of k values (one per head in the head layout, one per fanOut
  // selections in selection order).
  int64_t xRows = rows * heads / fanOut;
  std::vector<float> x = randomRows(xRows, k, 33);
  std::vector<int32_t> active = activeExpertsOf(offsets);

  GemmParams p = gemmParams(w, nullptr, rows, n, k);
  if (heads > 1)
    setHeadLayout(p, heads, k);
  if (gated) {
    p.wUp = up.bytes.data();
    p.wUpScale = up.scales.data();
  }
  if (!offsets.empty()) {
    setExperts(p, offsets, active.data());
  }
  std::vector<int32_t> selectionRows(rows, -1);
  if (!selections.empty()) {
    p.experts = static_cast<int>(matrices);
    p.selections = selections.data();
    p.selectionFanOut = fanOut;
    p.selectionRows = selectionRows.data();
  }
  Dim3 grid = gemvGrid(n, gemmGridMatrices(p, matrices));
  int64_t outputs = grouped ? rows * n : rows * matrices * n;

  // kiln_quantize_rows over every row of k values, then the GEMV on the
  // decoded codes.
  std::vector<float> codes(xRows * k), scales(xRows * ((k + 127) / 128));
  kiln_quantize_rows_host(
      {static_cast<int>(xRows), 1, 1},
      {x.data(), codes.data(), scales.data(), nullptr, k, 128, pow2 ? 1 : 0});
  std::vector<float> want(outputs, -7.0f), got(outputs, -9.0f);
  GemmParams reference = p;
  reference.x = codes.data();
  reference.xScale = scales.data();
  reference.out = want.data();
  if (gated)
    kiln_gemv_gated_f8e4m3_host(grid, reference);
  else
    kiln_gemv_f8e4m3_host(grid, reference);

  GemmParams quantizing = p;
  quantizing.x = x.data();
  quantizing.actPow2 = pow2 ? 1 : 0;
  quantizing.out = got.data();
  if (gated)
    kiln_gemv_gated_f8e4m3_qin_host(grid, quantizing);
  else
    kiln_gemv_f8e4m3_qin_host(grid, quantizing);
  for (int64_t i = 0; i < outputs; ++i)
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
        << "output " << i << ": " << got[i] << " (quantizing) vs " << want[i];
  for (size_t r = 0; r < selections.size(); ++r)
    EXPECT_EQ(selectionRows[r], static_cast<int32_t>(r));
}

TEST(QuantizingGemvKernel, IsQuantizeRowsThenTheGemvToTheBit) {
  std::vector<Problem> problems = {
      // A decode step; a last block of 72 columns; more rows than a pass.
      {1, 256, 512},
      {3, 130, 200},
      {11, 64, 384},
      // Rows of 16384 values: one fits the shared memory, so a pass per row.
      {3, 40, 16384},
      // Head GEMMs: each head's rows quantized apart.
      {2, 48, 256, 4},
      // Routed rows: empty experts, a run past a pass, a single row.
      {20, 96, 256, 1, {0, 0, 11, 11, 12, 20, 20}},
      {3, 96, 256, 1, {0, 0, 2, 2, 3, 3, 3}},
      // A decode step's selections in selection order (no route): each
      // reads its token's row (fan-out 3) or its own (1).
      {6, 96, 256, 1, {}, {3, 0, 2, 2, 1, 0}, 3},
      {6, 96, 256, 1, {}, {3, 0, 2, 2, 1, 0}, 1},
  };
  for (const Problem &problem : problems)
    for (bool gated : {false, true})
      for (bool pow2 : {false, true})
        expectQuantizingIsQuantizeThenGemv(problem, gated, pow2);
}

TEST(QuantizingGemvKernel, FitsRowsOfUpTo16KiBValues) {
  EXPECT_TRUE(gemvQuantizesRows(7168, 128));
  EXPECT_TRUE(gemvQuantizesRows(16384, 128));
  EXPECT_FALSE(gemvQuantizesRows(18432, 128)); // DeepSeek-V3's dense down
  EXPECT_FALSE(gemvQuantizesRows(8192, 8));    // 1024 scales
}

} // namespace
} // namespace kiln
