// Host builds of the grouped GEMMs (kiln_gemv_group_* and kiln_gemm_group_*,
// runtime/kernels/GemmGroup.h) against what kiln.linear_group replaces: each
// member's GEMV or tensor-core GEMM (plain or gated, dense or grouped by
// expert) launched on its own. A member's blocks run that launch's code over
// the same weights and activations, so the results must agree to the bit; the
// GEMVs and mma GEMMs themselves are checked against the CPU kernels in
// MatmulKernelTest.cpp and MmaGemmKernelTest.cpp.
#include "GemmGroup.h"
#include "tests/runtime/GemmTestUtil.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace kiln {
namespace {

using namespace kiln::testing;

/// The grouped GEMV of the same kernel family.
void runGroup(cpu::ElementType type, bool codes, GemmGroupParams &p) {
  Dim3 grid = gemmGroupGrid(p);
  switch (type) {
  case cpu::ElementType::BF16:
    return kiln_gemv_group_bf16_host(grid, p);
  case cpu::ElementType::F16:
    return kiln_gemv_group_f16_host(grid, p);
  case cpu::ElementType::F8E4M3:
    return codes ? kiln_gemv_group_f8e4m3_q8_host(grid, p)
                 : kiln_gemv_group_f8e4m3_host(grid, p);
  default:
    return kiln_gemv_group_f32_host(grid, p);
  }
}

/// Members of `widths` output columns over one [rows, k] input; every
/// other member has an f32 bias.
void expectGroupIsTheMembers(cpu::ElementType type, bool codes, int64_t rows,
                             int64_t k, const std::vector<int64_t> &widths) {
  std::string what = std::string(name(type)) + (codes ? " codes " : " ") +
                     std::to_string(rows) + " rows, k " + std::to_string(k) +
                     ", " + std::to_string(widths.size()) + " members";
  SCOPED_TRACE(what);
  std::vector<float> x = randomRows(rows, k, 31);
  bool fp8 = type == cpu::ElementType::F8E4M3;
  Quantized q = fp8 ? quantize(x, rows, k, false) : Quantized{};
  std::vector<unsigned char> bytes = e4m3Bytes(q);

  size_t members = widths.size();
  std::vector<Weights> weights;
  std::vector<std::vector<float>> biases(members), want(members), got(members);
  GemmGroupParams group{};
  group.members = static_cast<int>(members);
  for (size_t m = 0; m < members; ++m) {
    int64_t n = widths[m];
    weights.push_back(makeWeights(type, 1, n, k, 40 + static_cast<int>(m)));
    want[m].assign(rows * n, 0.0f);
    got[m].assign(rows * n, -7.0f);
    GemmParams p = gemmParams(weights[m], want[m].data(), rows, n, k);
    if (codes)
      p.xCodes = bytes.data();
    else
      p.x = fp8 ? q.codes.data() : x.data();
    p.xScale = q.scales.data();
    if (m % 2 == 1) {
      biases[m] = randomRows(1, n, 50 + static_cast<int>(m));
      p.bias = biases[m].data();
      p.biasType = BiasF32;
    }
    runGemv(type, gemvGrid(n, 1), p, codes);
    p.out = got[m].data();
    group.member[m] = p;
  }
  runGroup(type, codes, group);
  for (size_t m = 0; m < members; ++m)
    for (size_t i = 0; i < want[m].size(); ++i)
      ASSERT_EQ(std::memcmp(&got[m][i], &want[m][i], sizeof(float)), 0)
          << "member " << m << " row " << i / widths[m] << " column "
          << i % widths[m] << ": " << got[m][i] << " (grouped) vs "
          << want[m][i];
}

TEST(GemmGroupKernel, EachMemberIsItsOwnGemvToTheBit) {
  // MLA's q and latent projections in small (a member of one block and a
  // ragged one), a dense attention's q, k and v, and the most members a
  // group takes; one decode row, a few rows, more rows than a pass takes,
  // and k not a multiple of 8.
  for (cpu::ElementType type :
       {cpu::ElementType::F32, cpu::ElementType::BF16, cpu::ElementType::F16,
        cpu::ElementType::F8E4M3}) {
    expectGroupIsTheMembers(type, false, 1, 256, {192, 72});
    expectGroupIsTheMembers(type, false, 3, 300, {64, 32, 32});
    expectGroupIsTheMembers(type, false, 11, 136, {8, 129, 40, 200});
  }
}

TEST(GemmGroupKernel, TakesActivationCodesAFusedKernelQuantized) {
  expectGroupIsTheMembers(cpu::ElementType::F8E4M3, true, 1, 256, {192, 72});
  expectGroupIsTheMembers(cpu::ElementType::F8E4M3, true, 5, 384,
                          {130, 64, 64});
}

/// A MoE layer's pair: the routed experts' GEMM (rows grouped by expert
/// over the experts that have rows) and the shared expert's (dense, other
/// rows), plain or gated, against each one's own GEMV launch. bf16, or FP8
/// as an FP8 model's decode step runs them: the routed rows in f32, which
/// the group quantizes (kiln_gemv_*f8e4m3_qin), beside the e4m3 codes the
/// norm's kernel wrote for the shared expert (kiln_gemv_*f8e4m3_q8).
void expectExpertsAndSharedExpert(bool gated, bool fp8) {
  SCOPED_TRACE(std::string(gated ? "gated" : "plain") + (fp8 ? " fp8" : ""));
  const int64_t k = 384, n = 96, sharedN = 160, tokens = 2;
  cpu::ElementType type =
      fp8 ? cpu::ElementType::F8E4M3 : cpu::ElementType::BF16;
  std::vector<int32_t> offsets = {0, 0, 3, 3, 5, 6, 6};
  int64_t experts = static_cast<int64_t>(offsets.size()) - 1;
  int64_t routed = offsets.back();
  std::vector<int32_t> active = activeExpertsOf(offsets);
  std::vector<float> rows = randomRows(routed, k, 91),
                     tokenRows = randomRows(tokens, k, 92);
  Quantized tokenCodes = quantize(tokenRows, tokens, k, false);
  std::vector<unsigned char> tokenBytes = e4m3Bytes(tokenCodes);
  Weights w = makeWeights(type, experts, n, k, 93),
          wUp = makeWeights(type, experts, n, k, 94),
          shared = makeWeights(type, 1, sharedN, k, 95),
          sharedUp = makeWeights(type, 1, sharedN, k, 96);
  std::vector<float> wantRouted(routed * n), wantShared(tokens * sharedN),
      gotRouted(routed * n, -7.0f), gotShared(tokens * sharedN, -7.0f);
  GemmParams r = gemmParams(w, wantRouted.data(), routed, n, k);
  r.x = rows.data();
  setExperts(r, offsets, active.data());
  GemmParams d = gemmParams(shared, wantShared.data(), tokens, sharedN, k);
  if (fp8) {
    d.xCodes = tokenBytes.data();
    d.xScale = tokenCodes.scales.data();
  } else {
    d.x = tokenRows.data();
  }
  if (gated) {
    r.wUp = wUp.bytes.data();
    r.wUpScale = wUp.scales.data();
    d.wUp = sharedUp.bytes.data();
    d.wUpScale = sharedUp.scales.data();
  }
  Dim3 routedGrid = gemvGrid(r.n, gemmGridMatrices(r, r.experts)),
       sharedGrid = gemvGrid(d.n, 1);
  if (!fp8) {
    gated ? kiln_gemv_gated_bf16_host(routedGrid, r)
          : kiln_gemv_bf16_host(routedGrid, r);
    gated ? kiln_gemv_gated_bf16_host(sharedGrid, d)
          : kiln_gemv_bf16_host(sharedGrid, d);
  } else if (gated) {
    kiln_gemv_gated_f8e4m3_qin_host(routedGrid, r);
    kiln_gemv_gated_f8e4m3_q8_host(sharedGrid, d);
  } else {
    kiln_gemv_f8e4m3_qin_host(routedGrid, r);
    kiln_gemv_f8e4m3_q8_host(sharedGrid, d);
  }
  GemmGroupParams group{};
  group.members = 2;
  group.member[0] = r;
  group.member[0].out = gotRouted.data();
  group.member[1] = d;
  group.member[1].out = gotShared.data();
  Dim3 grid = gemmGroupGrid(group);
  if (!fp8)
    gated ? kiln_gemv_group_gated_bf16_host(grid, group)
          : kiln_gemv_group_bf16_host(grid, group);
  else
    gated ? kiln_gemv_group_gated_f8e4m3_qin_host(grid, group)
          : kiln_gemv_group_f8e4m3_qin_host(grid, group);
  for (size_t i = 0; i < wantRouted.size(); ++i)
    ASSERT_EQ(std::memcmp(&gotRouted[i], &wantRouted[i], sizeof(float)), 0)
        << "routed " << i << ": " << gotRouted[i] << " vs " << wantRouted[i];
  for (size_t i = 0; i < wantShared.size(); ++i)
    ASSERT_EQ(std::memcmp(&gotShared[i], &wantShared[i], sizeof(float)), 0)
        << "shared " << i << ": " << gotShared[i] << " vs " << wantShared[i];
}

TEST(GemmGroupKernel, RoutedAndSharedExpertsShareALaunch) {
  for (bool fp8 : {false, true}) {
    expectExpertsAndSharedExpert(false, fp8);
    expectExpertsAndSharedExpert(true, fp8);
  }
}

/// A bf16 member's own launch: its GEMV or (mma) its tensor-core GEMM,
/// plain or gated (p.wUp).
void runAlone(bool mma, const GemmParams &p) {
  int64_t matrices = gemmGridMatrices(p, p.offsets ? p.experts : 1);
  if (mma) {
    Dim3 grid = mmaGemmGrid(p.n, matrices);
    return p.wUp ? kiln_gemm_mma_gated_bf16_host(grid, p)
                 : kiln_gemm_mma_bf16_host(grid, p);
  }
  Dim3 grid = gemvGrid(p.n, matrices);
  return p.wUp ? kiln_gemv_gated_bf16_host(grid, p)
               : kiln_gemv_bf16_host(grid, p);
}

/// A decode step of a few tokens: a MoE layer's routed experts (a row or
/// two each, over the experts that have rows: GEMVs) beside its shared
/// expert (every token: the mma GEMM), and a dense member of more rows than
/// one mma pass takes with a partial block of columns; plain and gated.
/// Each member against its own launch, to the bit.
void expectMixedGroupIsTheMembers(bool gated) {
  SCOPED_TRACE(gated ? "gated" : "plain");
  const int64_t k = 384;
  std::vector<int32_t> offsets = {0, 1, 1, 3, 4, 6};
  std::vector<int32_t> active = activeExpertsOf(offsets);
  struct Member {
    int64_t rows, n, experts;
    bool mma;
  };
  const std::vector<Member> shapes = {
      {offsets.back(), 96, static_cast<int64_t>(offsets.size()) - 1, false},
      {3, 160, 1, true},
      {40, 40, 1, true}};
  std::vector<std::vector<float>> x(shapes.size()), want(shapes.size()),
      got(shapes.size());
  std::vector<Weights> weights, ups;
  std::vector<float> bias = randomRows(1, shapes[2].n, 69);
  GemmGroupParams group{};
  group.members = static_cast<int>(shapes.size());
  for (size_t m = 0; m < shapes.size(); ++m) {
    auto [rows, n, experts, mma] = shapes[m];
    int seed = 60 + 3 * static_cast<int>(m);
    x[m] = randomRows(rows, k, seed);
    weights.push_back(
        makeWeights(cpu::ElementType::BF16, experts, n, k, seed + 1));
    ups.push_back(makeWeights(cpu::ElementType::BF16, experts, n, k, seed + 2));
    want[m].assign(rows * n, 0.0f);
    got[m].assign(rows * n, -7.0f);
    GemmParams p = gemmParams(weights[m], want[m].data(), rows, n, k);
    p.x = x[m].data();
    if (experts > 1)
      setExperts(p, offsets, active.data());
    if (gated) {
      p.wUp = ups[m].bytes.data();
    } else if (m == 2) {
      p.bias = bias.data();
      p.biasType = BiasF32;
    }
    runAlone(mma, p);
    p.out = got[m].data();
    group.member[m] = p;
    group.mma[m] = mma;
  }
  Dim3 grid = gemmGroupGrid(group);
  gated ? kiln_gemm_group_gated_bf16_host(grid, group)
        : kiln_gemm_group_bf16_host(grid, group);
  for (size_t m = 0; m < shapes.size(); ++m)
    for (size_t i = 0; i < want[m].size(); ++i)
      ASSERT_EQ(std::memcmp(&got[m][i], &want[m][i], sizeof(float)), 0)
          << "member " << m << " element " << i << ": " << got[m][i]
          << " (grouped) vs " << want[m][i];
}

TEST(GemmGroupKernel, MembersOnTheTensorCoresBesideGemvs) {
  expectMixedGroupIsTheMembers(false);
  expectMixedGroupIsTheMembers(true);
}

TEST(GemmGroupKernel, MembersTakeConsecutiveBlocks) {
  GemmGroupParams p{};
  p.members = 3;
  p.member[0].n = 1;
  p.member[1].n = kGemvCols + 1;
  p.member[2].n = kGemvCols;
  Dim3 grid = gemmGroupGrid(p);
  EXPECT_EQ(grid.x, 4);
  EXPECT_EQ(grid.y, 1);
  EXPECT_EQ(grid.z, 1);
  EXPECT_EQ(std::vector<int>(p.firstBlock, p.firstBlock + 4),
            (std::vector<int>{0, 1, 3, 4}));
  // A member on the tensor cores takes a block per kMmaRows columns.
  p.mma[1] = 1;
  p.member[1].n = 2 * kMmaRows + 1;
  EXPECT_EQ(gemmGroupGrid(p).x, 5);
  EXPECT_EQ(std::vector<int>(p.firstBlock, p.firstBlock + 4),
            (std::vector<int>{0, 1, 4, 5}));
}

} // namespace
} // namespace kiln
