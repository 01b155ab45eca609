// Host builds of the FP8 GEMVs that quantize their f32 activations
// themselves (kiln_gemv_*f8e4m3_qin, runtime/kernels/Matmul.h) against what
// they replace: kiln_quantize_rows, then the GEMV on the decoded codes.
// The codes and scales are the same, and so is the arithmetic after them,
// so the results must agree to the bit. Their grouped forms take members
// given codes beside those they quantize.
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
/// k]), or grouped by expert (offsets).
struct Problem {
  int64_t rows, n, k;
  int64_t heads = 1;
  std::vector<int32_t> offsets = {}; // empty: not grouped
};

void expectQuantizingIsQuantizeThenGemv(const Problem &problem, bool gated,
                                        bool pow2) {
  auto [rows, n, k, heads, offsets] = problem;
  int64_t matrices =
      offsets.empty() ? heads : static_cast<int64_t>(offsets.size()) - 1;
  SCOPED_TRACE(std::to_string(rows) + "x" + std::to_string(n) + "x" +
               std::to_string(k) + " over " + std::to_string(matrices) +
               (offsets.empty() ? " matrices" : " experts") +
               (gated ? ", gated" : "") + (pow2 ? ", ue8m0" : ""));
  Weights w = makeWeights(cpu::ElementType::F8E4M3, matrices, n, k, 31);
  Weights up = makeWeights(cpu::ElementType::F8E4M3, matrices, n, k, 32);
  // Rows of k values (one per head in the head layout).
  std::vector<float> x = randomRows(rows * heads, k, 33);
  std::vector<int32_t> active = activeExpertsOf(offsets);

  GemmParams p = gemmParams(w, nullptr, rows, n, k);
  if (heads > 1)
    setHeadLayout(p, heads, k);
  if (gated) {
    p.wUp = up.bytes.data();
    p.wUpScale = up.scales.data();
  }
  if (!offsets.empty()) {
    p.offsets = offsets.data();
    p.experts = static_cast<int>(matrices);
    p.activeExperts = active.data();
  }
  Dim3 grid = gemvGrid(n, gemmGridMatrices(p, matrices));
  int64_t outputs = rows * matrices * n;
  if (!offsets.empty())
    outputs = rows * n;

  // kiln_quantize_rows over every row of k values, then the GEMV on the
  // decoded codes.
  std::vector<float> codes(rows * heads * k),
      scales(rows * heads * ((k + 127) / 128));
  kiln_quantize_rows_host(
      {static_cast<int>(rows * heads), 1, 1},
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
  };
  for (const Problem &problem : problems)
    for (bool gated : {false, true})
      for (bool pow2 : {false, true})
        expectQuantizingIsQuantizeThenGemv(problem, gated, pow2);
}

/// An FP8 MoE layer's pair in one quantizing group: the routed experts'
/// GEMM of f32 rows (quantized in the group) and the shared expert's of the
/// e4m3 codes a fused kernel wrote, against each one's own launch
/// (kiln_gemv_*f8e4m3_qin and kiln_gemv_*f8e4m3_q8).
void expectMixedGroupIsItsMembers(bool gated) {
  SCOPED_TRACE(gated ? "gated" : "plain");
  const int64_t k = 384, n = 96, sharedN = 160, tokens = 2;
  std::vector<int32_t> offsets = {0, 0, 3, 3, 5, 6, 6};
  int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
  int64_t routed = offsets.back();
  std::vector<int32_t> active = activeExpertsOf(offsets);
  std::vector<float> rows = randomRows(routed, k, 61);
  Quantized tokenCodes = quantize(randomRows(tokens, k, 62), tokens, k, false);
  std::vector<unsigned char> tokenBytes = e4m3Bytes(tokenCodes);
  Weights w = makeWeights(cpu::ElementType::F8E4M3, experts, n, k, 63),
          wUp = makeWeights(cpu::ElementType::F8E4M3, experts, n, k, 64),
          shared = makeWeights(cpu::ElementType::F8E4M3, 1, sharedN, k, 65),
          sharedUp = makeWeights(cpu::ElementType::F8E4M3, 1, sharedN, k, 66);
  std::vector<float> wantRouted(routed * n), wantShared(tokens * sharedN),
      gotRouted(routed * n, -7.0f), gotShared(tokens * sharedN, -7.0f);
  GemmParams r = gemmParams(w, wantRouted.data(), routed, n, k);
  r.x = rows.data();
  r.offsets = offsets.data();
  r.experts = static_cast<int>(experts);
  r.activeExperts = active.data();
  GemmParams d = gemmParams(shared, wantShared.data(), tokens, sharedN, k);
  d.xCodes = tokenBytes.data();
  d.xScale = tokenCodes.scales.data();
  if (gated) {
    r.wUp = wUp.bytes.data();
    r.wUpScale = wUp.scales.data();
    d.wUp = sharedUp.bytes.data();
    d.wUpScale = sharedUp.scales.data();
  }
  Dim3 routedGrid = gemvGrid(r.n, gemmGridMatrices(r, r.experts));
  Dim3 sharedGrid = gemvGrid(d.n, 1);
  if (gated) {
    kiln_gemv_gated_f8e4m3_qin_host(routedGrid, r);
    kiln_gemv_gated_f8e4m3_q8_host(sharedGrid, d);
  } else {
    kiln_gemv_f8e4m3_qin_host(routedGrid, r);
    kiln_gemv_f8e4m3_q8_host(sharedGrid, d);
  }
  GemvGroupParams group{};
  group.members = 2;
  group.member[0] = r;
  group.member[0].out = gotRouted.data();
  group.member[1] = d;
  group.member[1].out = gotShared.data();
  Dim3 grid = gemvGroupGrid(group);
  gated ? kiln_gemv_group_gated_f8e4m3_qin_host(grid, group)
        : kiln_gemv_group_f8e4m3_qin_host(grid, group);
  for (size_t i = 0; i < wantRouted.size(); ++i)
    ASSERT_EQ(std::memcmp(&gotRouted[i], &wantRouted[i], sizeof(float)), 0)
        << "routed " << i << ": " << gotRouted[i] << " vs " << wantRouted[i];
  for (size_t i = 0; i < wantShared.size(); ++i)
    ASSERT_EQ(std::memcmp(&gotShared[i], &wantShared[i], sizeof(float)), 0)
        << "shared " << i << ": " << gotShared[i] << " vs " << wantShared[i];
}

TEST(QuantizingGemvKernel, GroupTakesMembersOfCodesBesideF32Rows) {
  expectMixedGroupIsItsMembers(false);
  expectMixedGroupIsItsMembers(true);
}

TEST(QuantizingGemvKernel, FitsRowsOfUpTo16KiBValues) {
  EXPECT_TRUE(gemvQuantizesRows(7168, 128));
  EXPECT_TRUE(gemvQuantizesRows(16384, 128));
  EXPECT_FALSE(gemvQuantizesRows(18432, 128)); // DeepSeek-V3's dense down
  EXPECT_FALSE(gemvQuantizesRows(8192, 8));    // 1024 scales
}

} // namespace
} // namespace kiln
