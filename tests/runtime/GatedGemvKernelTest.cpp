// Host builds of the gated GEMVs (kiln_gemv_gated_*, runtime/kernels/
// Matmul.h) against what kiln.gated_linear replaces: the plain GEMV of
// each projection, then kiln_swiglu. Both read the same weights and
// activations in the same order, so the results must agree to the bit;
// the plain GEMVs themselves are checked against the CPU kernels in
// MatmulKernelTest.cpp.
#include "Library.h"
#include "Matmul.h"
#include "tests/runtime/GemmTestUtil.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

namespace kiln {
namespace {

using namespace kiln::testing;

/// The gated or the plain GEMV for weights of `type`; FP8 on e4m3 codes
/// with `codes`.
void runGemv(cpu::ElementType type, bool gated, bool codes, Dim3 grid,
             const GemmParams &p) {
  switch (type) {
  case cpu::ElementType::BF16:
    return gated ? kiln_gemv_gated_bf16_host(grid, p)
                 : kiln_gemv_bf16_host(grid, p);
  case cpu::ElementType::F16:
    return gated ? kiln_gemv_gated_f16_host(grid, p)
                 : kiln_gemv_f16_host(grid, p);
  case cpu::ElementType::F8E4M3:
    if (codes)
      return gated ? kiln_gemv_gated_f8e4m3_q8_host(grid, p)
                   : kiln_gemv_f8e4m3_q8_host(grid, p);
    return gated ? kiln_gemv_gated_f8e4m3_host(grid, p)
                 : kiln_gemv_f8e4m3_host(grid, p);
  default:
    return gated ? kiln_gemv_gated_f32_host(grid, p)
                 : kiln_gemv_f32_host(grid, p);
  }
}

/// A gated GEMM's problem: dense (no offsets) or grouped by expert.
struct Problem {
  int64_t rows, n, k;
  std::vector<int32_t> offsets; // empty: dense
};

void expectGatedIsUnfused(cpu::ElementType type, bool codes,
                          const Problem &problem) {
  auto [rows, n, k, offsets] = problem;
  int64_t experts =
      offsets.empty() ? 1 : static_cast<int64_t>(offsets.size()) - 1;
  std::string what =
      std::string(name(type)) + (codes ? " codes " : " ") +
      std::to_string(rows) + "x" + std::to_string(n) + "x" + std::to_string(k) +
      (offsets.empty() ? "" : " over " + std::to_string(experts) + " experts");
  SCOPED_TRACE(what);
  Weights gate = makeWeights(type, experts, n, k, 21);
  Weights up = makeWeights(type, experts, n, k, 22);
  std::vector<float> x = randomRows(rows, k, 23);
  bool fp8 = type == cpu::ElementType::F8E4M3;
  Quantized q = fp8 ? quantize(x, rows, k, false) : Quantized{};
  std::vector<unsigned char> bytes = e4m3Bytes(q);
  std::vector<int32_t> active = activeExpertsOf(offsets);

  // The plain GEMV of the gate; its outputs and the up weights are set
  // below.
  GemmParams p = gemmParams(gate, nullptr, rows, n, k);
  if (codes) {
    p.xCodes = bytes.data();
  } else {
    p.x = fp8 ? q.codes.data() : x.data();
  }
  p.xScale = q.scales.data();
  if (!offsets.empty()) {
    setExperts(p, offsets, active.data());
  }
  Dim3 grid = gemvGrid(n, gemmGridMatrices(p, experts));

  std::vector<float> g(rows * n), u(rows * n), want(rows * n);
  GemmParams plain = p;
  plain.out = g.data();
  runGemv(type, false, codes, grid, plain);
  plain.w = up.bytes.data();
  plain.wScale = up.scales.data();
  plain.out = u.data();
  runGemv(type, false, codes, grid, plain);
  kiln_swiglu_host(elementwiseGrid(rows * n),
                   {g.data(), u.data(), want.data(), rows * n});

  std::vector<float> got(rows * n, -7.0f);
  GemmParams gated = p;
  gated.wUp = up.bytes.data();
  gated.wUpScale = up.scales.data();
  gated.out = got.data();
  runGemv(type, true, codes, grid, gated);
  for (int64_t i = 0; i < rows * n; ++i)
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
        << "row " << i / n << " column " << i % n << ": " << got[i]
        << " (gated) vs " << want[i];
}

TEST(GatedGemvKernel, IsTheTwoGemvsAndSwiGLUToTheBit) {
  // Whole 8-value steps (one row, a decode step), ragged ones (k not a
  // multiple of 8), and more rows than a pass takes.
  std::vector<Problem> problems = {
      {1, 256, 512, {}}, {3, 200, 300, {}}, {11, 129, 136, {}}};
  // Routed rows: empty experts, a run crossing row tiles, a single row.
  problems.push_back({20, 96, 256, {0, 0, 11, 11, 12, 20, 20}});
  problems.push_back({3, 96, 256, {0, 0, 2, 2, 3, 3, 3}});
  for (cpu::ElementType type :
       {cpu::ElementType::F32, cpu::ElementType::BF16, cpu::ElementType::F16,
        cpu::ElementType::F8E4M3})
    for (const Problem &problem : problems)
      expectGatedIsUnfused(type, false, problem);
}

TEST(GatedGemvKernel, TakesActivationCodesAFusedKernelQuantized) {
  for (const Problem &problem :
       {Problem{1, 256, 512, {}}, Problem{5, 130, 256, {}},
        Problem{9, 64, 384, {}}})
    expectGatedIsUnfused(cpu::ElementType::F8E4M3, true, problem);
}

} // namespace
} // namespace kiln
