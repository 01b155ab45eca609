// The host builds of the CUDA executor's library kernels (runtime/kernels/
// Library.h) against the CPU kernels. Elementwise, copy and routing kernels
// must match exactly; reductions (RMSNorm, the router's logits, the combine)
// only differ by summation order, bounded below.
#include "Library.h"

#include "kiln/Float.h"
#include "runtime/src/cpu/Kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string_view>
#include <vector>

namespace kiln {
namespace {

/// Records the order in which a host build runs a launch's blocks.
struct BlockOrderParams {
  std::atomic<int> *next;
  int *ran;
};
KILN_FN void test_block_order_block(Dim3 block, const BlockOrderParams &p) {
  if (KILN_THREAD == 0)
    p.ran[p.next->fetch_add(1)] = block.x + 4 * block.y;
}
KILN_KERNEL(test_block_order, BlockOrderParams)

// Every block once; under KILN_HOST_BLOCK_ORDER=reverse (CTest's
// reverse-blocks. runs, one OpenMP thread) the last block first.
TEST(HostBlockOrder, EveryBlockOnceAndLastFirstInReverse) {
  const char *order = std::getenv("KILN_HOST_BLOCK_ORDER");
  const char *threads = std::getenv("OMP_NUM_THREADS");
  bool reverse = order && std::string_view(order) == "reverse";
  bool serial = threads && std::string_view(threads) == "1";
  std::atomic<int> next{0};
  std::vector<int> ran(12, -1);
  test_block_order_host(Dim3{4, 3, 1}, {&next, ran.data()});
  ASSERT_EQ(next.load(), 12);
  std::vector<int> sorted = ran, blocks(12);
  std::sort(sorted.begin(), sorted.end());
  std::iota(blocks.begin(), blocks.end(), 0);
  EXPECT_EQ(sorted, blocks);
  if (serial) {
    EXPECT_EQ(ran, reverse ? std::vector<int>(blocks.rbegin(), blocks.rend())
                           : blocks);
  }
}

std::vector<float> randomFloats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

std::vector<uint16_t> toBf16(const std::vector<float> &v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = floatToBf16(v[i]);
  return out;
}

TEST(DeviceLibrary, EmbeddingCopiesRowsOfEveryType) {
  const int64_t vocab = 37, dim = 300;
  std::vector<float> table = randomFloats(vocab * dim, 1);
  std::vector<uint16_t> table16 = toBf16(table);
  std::vector<int32_t> tokens = {5, 0, 36, 5, 17};
  int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> want(n * dim), got(n * dim);
  cpu::embedding(tokens.data(), n, {table16.data(), cpu::ElementType::BF16},
                 dim, want.data());
  kiln_embedding_bf16_host(tokenGrid(n),
                           {tokens.data(), table16.data(), got.data(), dim});
  EXPECT_EQ(got, want);
  cpu::embedding(tokens.data(), n, {table.data(), cpu::ElementType::F32}, dim,
                 want.data());
  kiln_embedding_f32_host(tokenGrid(n),
                          {tokens.data(), table.data(), got.data(), dim});
  EXPECT_EQ(got, want);
}

TEST(DeviceLibrary, RmsNormMatchesWithinSummationOrder) {
  const int64_t rows = 6, dim = 7168 / 4 + 3;
  std::vector<float> x = randomFloats(rows * dim, 2, 3.0f);
  std::vector<uint16_t> w = toBf16(randomFloats(dim, 3));
  std::vector<float> want(rows * dim), got(rows * dim);
  cpu::rmsNorm(x.data(), rows, dim, {w.data(), cpu::ElementType::BF16}, 1e-6f,
               want.data());
  kiln_rms_norm_bf16_host(tokenGrid(rows), {x.data(), w.data(), got.data(),
                                            static_cast<int>(dim), 1e-6f});
  // The mean square of `dim` terms in another order: relative error of the
  // sum <= dim * eps, halved by the square root, plus the final products.
  float bound = (static_cast<float>(dim) / 2 + 4) * 0x1p-24f;
  for (int64_t i = 0; i < rows * dim; ++i)
    EXPECT_NEAR(got[i], want[i], bound * std::fabs(want[i]) + 1e-30f) << i;
}

TEST(DeviceLibrary, ElementwiseKernelsAreExact) {
  const int64_t n = 3 * kElementsPerBlock + 77;
  std::vector<float> a = randomFloats(n, 4), b = randomFloats(n, 5);
  std::vector<float> want(n), got(n);
  cpu::add(a.data(), b.data(), n, want.data());
  kiln_add_host(elementwiseGrid(n), {a.data(), b.data(), got.data(), n});
  EXPECT_EQ(got, want);
  cpu::swiglu(a.data(), b.data(), n, want.data());
  kiln_swiglu_host(elementwiseGrid(n), {a.data(), b.data(), got.data(), n});
  // expf may differ from the CPU kernel's vectorized exp by a few ulps.
  for (int64_t i = 0; i < n; ++i)
    EXPECT_NEAR(got[i], want[i], 8 * 0x1p-23f * std::fabs(want[i]) + 1e-37f);
}

TEST(DeviceLibrary, ToBf16RoundsAsTheRuntime) {
  std::vector<float> x = randomFloats(3 * kElementsPerBlock + 5, 14, 100.0f);
  // Ties, NaN, infinities, the largest finite values.
  for (uint32_t bits : {0x3f808000u, 0x3f818000u, 0x7fc00001u, 0xff800000u,
                        0x7f7fffffu, 0x00000001u, 0x80008000u}) {
    float v;
    std::memcpy(&v, &bits, sizeof(v));
    x.push_back(v);
  }
  int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint16_t> got(n);
  kiln_to_bf16_host(elementwiseGrid(n), {x.data(), got.data(), n});
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(got[i], floatToBf16(x[i])) << i;
}

TEST(DeviceLibrary, SliceConcatBroadcastAreExact) {
  const int64_t rows = 1000, in = 576;
  std::vector<float> x = randomFloats(rows * in, 6);
  std::vector<float> want(rows * 64), got(rows * 64);
  cpu::slice(x.data(), rows, in, 512, 64, want.data());
  kiln_slice_host(elementwiseGrid(rows * 64),
                  {x.data(), got.data(), rows, in, 512, 64});
  EXPECT_EQ(got, want);

  std::vector<float> y = randomFloats(rows * 64, 7), z = randomFloats(rows, 8);
  const float *inputs[] = {x.data(), y.data(), z.data()};
  const int64_t dims[] = {in, 64, 1};
  const int64_t out = in + 64 + 1;
  std::vector<float> wantCat(rows * out), gotCat(rows * out);
  cpu::concat(inputs, dims, 3, rows, wantCat.data());
  ConcatParams p{};
  for (int i = 0; i < 3; ++i) {
    p.inputs[i] = inputs[i];
    p.dims[i] = dims[i];
  }
  p.count = 3;
  p.out = gotCat.data();
  p.rows = rows;
  p.outDim = out;
  kiln_concat_host(elementwiseGrid(rows * out), p);
  EXPECT_EQ(gotCat, wantCat);

  const int64_t repeat = 16, inner = 64;
  std::vector<float> wantB(rows * repeat * inner), gotB(rows * repeat * inner);
  cpu::broadcast(y.data(), rows, repeat, inner, wantB.data());
  kiln_broadcast_host(elementwiseGrid(rows * repeat * inner),
                      {y.data(), gotB.data(), rows, repeat, inner});
  EXPECT_EQ(gotB, wantB);
}

TEST(DeviceLibrary, RopeMatchesEveryScheme) {
  const int64_t tokens = 9, heads = 3, dim = 64;
  std::vector<float> x = randomFloats(tokens * heads * dim, 9);
  std::vector<int32_t> positions = {0, 1, 7, -1, 4095, 100000, 3, 3, 65};
  cpu::RopeParams yarn;
  yarn.kind = cpu::RopeKind::Yarn;
  yarn.factor = 40;
  yarn.originalMaxPosition = 4096;
  yarn.mscale = 1.0;
  yarn.mscaleAllDim = 0.707;
  cpu::RopeParams llama;
  llama.kind = cpu::RopeKind::Llama3;
  llama.factor = 8;
  llama.originalMaxPosition = 8192;
  llama.theta = 500000;
  for (cpu::RopeParams params : {cpu::RopeParams{}, yarn, llama})
    for (bool interleaved : {false, true}) {
      params.interleaved = interleaved;
      std::vector<double> invFreq(dim / 2);
      cpu::ropeInverseFrequencies(params, dim, invFreq.data());
      std::vector<float> want(x.size()), got(x.size());
      cpu::rope(x.data(), positions.data(), tokens, heads, dim, params,
                want.data());
      kiln_rope_host(tokenGrid(tokens),
                     {x.data(), positions.data(), invFreq.data(), got.data(),
                      static_cast<int>(heads), static_cast<int>(dim / 2),
                      cpu::ropeAttentionFactor(params), interleaved ? 1 : 0});
      // Same angles and fp32 cos/sin; a*c - b*s may or may not be fused.
      for (size_t i = 0; i < x.size(); ++i)
        EXPECT_NEAR(got[i], want[i], 4e-6f * (1 + std::fabs(want[i]))) << i;
    }
}

TEST(DeviceLibrary, MoeGateDispatchCombineMatchTheCpuRouter) {
  const int64_t tokens = 13, experts = 64, topK = 6;
  // dim: whole 8-weight router steps; then a partial last one.
  for (int64_t dim : {96, 100}) {
    std::vector<float> x = randomFloats(tokens * dim, 10);
    std::vector<uint16_t> w = toBf16(randomFloats(experts * dim, 11, 0.2f));
    std::vector<float> bias = randomFloats(experts, 12, 0.1f);
    struct Case {
      cpu::ScoringFunc scoring;
      cpu::TopkMethod method;
      int64_t nGroup, topkGroup;
      bool norm, bias;
    };
    for (Case c :
         {Case{cpu::ScoringFunc::Softmax, cpu::TopkMethod::Greedy, 1, 1, false,
               false},
          Case{cpu::ScoringFunc::Softmax, cpu::TopkMethod::GroupLimitedGreedy,
               8, 3, false, false},
          Case{cpu::ScoringFunc::Sigmoid, cpu::TopkMethod::NoauxTc, 8, 4, true,
               true}}) {
      cpu::MoeGateParams params;
      params.scoring = c.scoring;
      params.method = c.method;
      params.topK = topK;
      params.nGroup = c.nGroup;
      params.topkGroup = c.topkGroup;
      params.normTopkProb = c.norm;
      params.routedScalingFactor = 2.5;
      std::vector<float> wantW(tokens * topK), gotW(tokens * topK),
          logits(tokens * experts);
      std::vector<int32_t> wantI(tokens * topK), gotI(tokens * topK);
      cpu::Weight b = c.bias ? cpu::Weight{bias.data(), cpu::ElementType::F32}
                             : cpu::Weight{};
      cpu::moeGate(x.data(), tokens, dim, {w.data(), cpu::ElementType::BF16},
                   experts, b, params, wantW.data(), wantI.data(),
                   logits.data());
      MoeGateConfig config{static_cast<ScoringFunc>(c.scoring),
                           static_cast<TopkMethod>(c.method),
                           static_cast<int>(c.nGroup),
                           static_cast<int>(c.topkGroup),
                           c.norm,
                           2.5f};
      kiln_moe_gate_bf16_f32_host(
          tokenGrid(tokens),
          {x.data(), w.data(), c.bias ? bias.data() : nullptr, gotW.data(),
           gotI.data(), static_cast<int>(dim), static_cast<int>(experts),
           static_cast<int>(topK), config});
      // Random logits have no near ties, so the selections agree exactly.
      EXPECT_EQ(gotI, wantI);
      for (size_t i = 0; i < gotW.size(); ++i)
        EXPECT_NEAR(gotW[i], wantW[i], 1e-5f * (1 + std::fabs(wantW[i])));

      // Dispatch: offsets, slots, selection rows and routed rows exactly.
      int64_t n = tokens * topK;
      std::vector<float> wantRouted(n * dim), gotRouted(n * dim);
      std::vector<int32_t> wantOff(experts + 1), gotOff(experts + 1),
          wantSlots(n), gotSlots(n), wantRows(n), gotRows(n, -1);
      cpu::moeDispatch(x.data(), wantI.data(), tokens, topK, dim, experts,
                       wantRouted.data(), wantOff.data(), wantSlots.data(),
                       wantRows.data());
      std::vector<int32_t> active(1 + experts, -1);
      kiln_moe_route_host({1, 1, 1},
                          {wantI.data(), gotOff.data(), gotSlots.data(),
                           static_cast<int>(n), static_cast<int>(experts),
                           active.data(), gotRows.data(), nullptr, nullptr, dim,
                           static_cast<int>(topK)});
      // The experts with rows, in order, after their count.
      std::vector<int32_t> wantActive;
      for (int e = 0; e < experts; ++e)
        if (wantOff[e + 1] > wantOff[e])
          wantActive.push_back(e);
      ASSERT_EQ(active[0], static_cast<int32_t>(wantActive.size()));
      EXPECT_EQ(std::vector<int32_t>(active.begin() + 1,
                                     active.begin() + 1 + active[0]),
                wantActive);
      kiln_moe_gather_host(tokenGrid(n),
                           {x.data(), gotSlots.data(), gotOff.data() + experts,
                            gotRouted.data(), dim, static_cast<int>(topK)});
      EXPECT_EQ(gotOff, wantOff);
      EXPECT_EQ(gotSlots, wantSlots);
      EXPECT_EQ(gotRows, wantRows);
      EXPECT_EQ(gotRouted, wantRouted);
      // The route kernel's own gather (a decode step's few rows): the same
      // rows.
      std::vector<float> routedByRoute(n * dim, -1.0f);
      std::vector<int32_t> rowsByRoute(n, -1), slotsByRoute(n);
      kiln_moe_route_host({1, 1, 1},
                          {wantI.data(), gotOff.data(), slotsByRoute.data(),
                           static_cast<int>(n), static_cast<int>(experts),
                           nullptr, rowsByRoute.data(), x.data(),
                           routedByRoute.data(), dim, static_cast<int>(topK)});
      EXPECT_EQ(slotsByRoute, wantSlots);
      EXPECT_EQ(rowsByRoute, wantRows);
      EXPECT_EQ(routedByRoute, wantRouted);

      // Combine: the same products summed in the same k order, neither
      // contracted to multiply-adds (a portable CPU build, the host build
      // with -ffp-contract=off as the CUDA one with --fmad=false).
      std::vector<float> y = randomFloats(n * dim, 13);
      std::vector<float> wantOut(tokens * dim), gotOut(tokens * dim);
      cpu::moeCombine(y.data(), wantW.data(), wantRows.data(), tokens, topK,
                      dim, wantOut.data());
      kiln_moe_combine_host(tokenGrid(tokens),
                            {y.data(), wantW.data(), gotRows.data(),
                             gotOut.data(), dim, static_cast<int>(topK)});
      EXPECT_EQ(gotOut, wantOut);
    }
  }
}

// The route's counting sort against the plain stable sort, where each warp
// sorts many 32-selection steps and their chunks meet: a prefill's count of
// selections, DeepSeek-V3's 256 experts, counts that are no multiple of the
// warps or of 32, every selection on one expert, and out-of-range indices
// (left out, as the CPU dispatch leaves no row for them).
TEST(DeviceLibrary, MoeRouteSortsManySelectionsStably) {
  struct Case {
    int n, experts;
    bool oneExpert, outOfRange;
  };
  for (Case c : {Case{12288, 64, false, false}, Case{4099, 256, false, true},
                 Case{777, 160, true, false}, Case{1, 8, false, false},
                 Case{37, 3, false, true}}) {
    SCOPED_TRACE(::testing::Message()
                 << "n " << c.n << ", experts " << c.experts);
    std::mt19937 rng(c.n);
    std::uniform_int_distribution<int> expert(0, c.experts - 1);
    std::vector<int32_t> indices(c.n);
    for (int i = 0; i < c.n; ++i) {
      indices[i] = c.oneExpert ? c.experts / 2 : expert(rng);
      if (c.outOfRange && i % 7 == 3)
        indices[i] = i % 2 ? -1 : c.experts + i;
    }
    std::vector<int32_t> wantOff(c.experts + 1, 0), wantSlots,
        wantRows(c.n, -1);
    for (int e = 0; e < c.experts; ++e) {
      for (int i = 0; i < c.n; ++i)
        if (indices[i] == e) {
          wantRows[i] = static_cast<int32_t>(wantSlots.size());
          wantSlots.push_back(i);
        }
      wantOff[e + 1] = static_cast<int32_t>(wantSlots.size());
    }
    std::vector<int32_t> wantActive{0};
    for (int e = 0; e < c.experts; ++e)
      if (wantOff[e + 1] > wantOff[e]) {
        ++wantActive[0];
        wantActive.push_back(e);
      }
    std::vector<int32_t> off(c.experts + 1, -1), slots(c.n, -1), rows(c.n, -1),
        active(1 + c.experts, -1);
    kiln_moe_route_host({1, 1, 1}, {indices.data(), off.data(), slots.data(),
                                    c.n, c.experts, active.data(), rows.data(),
                                    nullptr, nullptr, 1, 1});
    EXPECT_EQ(off, wantOff);
    EXPECT_EQ(
        std::vector<int32_t>(slots.begin(), slots.begin() + wantSlots.size()),
        wantSlots);
    EXPECT_EQ(rows, wantRows);
    EXPECT_EQ(std::vector<int32_t>(active.begin(),
                                   active.begin() + wantActive.size()),
              wantActive);
  }
}

TEST(DeviceLibrary, MoeCombineTakesSelectionsBeyondOneChunk) {
  // 11 selections: a chunk of 8 in registers, then the sum carried on.
  const int64_t tokens = 3, topK = 11, dim = 70, n = tokens * topK;
  std::vector<float> y = randomFloats(n * dim, 31);
  std::vector<float> weights = randomFloats(n, 32);
  std::vector<int32_t> rows(n);
  for (int64_t i = 0; i < n; ++i)
    rows[i] = static_cast<int32_t>((i * 7) % n); // a permutation: 7, 33 coprime
  std::vector<float> want(tokens * dim), got(tokens * dim);
  cpu::moeCombine(y.data(), weights.data(), rows.data(), tokens, topK, dim,
                  want.data());
  kiln_moe_combine_host(tokenGrid(tokens),
                        {y.data(), weights.data(), rows.data(), got.data(), dim,
                         static_cast<int>(topK)});
  EXPECT_EQ(got, want);
}

} // namespace
} // namespace kiln
