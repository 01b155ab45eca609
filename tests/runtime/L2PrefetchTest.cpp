// What the GEMM and attention kernels' blocks ask the L2 for before they
// await the kernels before them (prefetchToL2, runtime/kernels). Together, a
// dense or per-head GEMM's blocks ask for each byte of its weights once (the
// gate's and the up projection's where gated), whatever the grid's last
// block covers; a grouped GEMM's ask for nothing, as its experts come from
// the kernels it waits for. A linear group's blocks ask for their members'.
// A decode step's attention blocks ask for each cache row of their
// sequences' contexts once. Host builds report each range to
// hostPrefetchObserver and read its first and last bytes, so a range past
// its tensor also fails under ASan.
#include "GemmGroup.h"
#include "KvAttention.h"
#include "MmaAttention.h"
#include "tests/runtime/GemmTestUtil.h"
#include "tests/runtime/PagedTestUtil.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <vector>

namespace kiln {
namespace {

using namespace kiln::testing;

struct Range {
  uintptr_t begin, end;
};

std::mutex observedMutex;
std::vector<Range> observed;

void observe(const void *at, long long bytes) {
  std::lock_guard<std::mutex> lock(observedMutex);
  uintptr_t begin = reinterpret_cast<uintptr_t>(at);
  observed.push_back({begin, begin + static_cast<uintptr_t>(bytes)});
}

/// The ranges `launch` asks the L2 for.
template <class Launch> std::vector<Range> prefetchedBy(Launch launch) {
  observed.clear();
  hostPrefetchObserver = observe;
  launch();
  hostPrefetchObserver = nullptr;
  return observed;
}

Range rangeOf(const Weights &w) {
  uintptr_t begin = reinterpret_cast<uintptr_t>(w.bytes.data());
  return {begin, begin + w.bytes.size()};
}

/// Every byte of `tensors` asked for exactly once, and nothing else.
void expectEachByteOnce(const std::vector<Range> &got,
                        const std::vector<Range> &tensors,
                        const std::string &what) {
  SCOPED_TRACE(what);
  std::vector<std::vector<int>> asked(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t)
    asked[t].assign(tensors[t].end - tensors[t].begin, 0);
  for (const Range &r : got) {
    ASSERT_LT(r.begin, r.end) << "an empty range";
    bool inside = false;
    for (size_t t = 0; t < tensors.size() && !inside; ++t) {
      if (r.begin < tensors[t].begin || r.end > tensors[t].end)
        continue;
      inside = true;
      for (uintptr_t b = r.begin; b < r.end; ++b)
        ++asked[t][b - tensors[t].begin];
    }
    ASSERT_TRUE(inside) << "a range outside the weights";
  }
  for (size_t t = 0; t < tensors.size(); ++t)
    for (size_t b = 0; b < asked[t].size(); ++b)
      ASSERT_EQ(asked[t][b], 1) << "tensor " << t << " byte " << b;
}

/// A dense GEMM of `heads` matrices (per-head when more than one) with
/// `rows` rows: the operands live as long as the test needs them.
struct Problem {
  Weights w, up;
  std::vector<float> x, out;
  GemmParams p;
};

Problem headProblem(cpu::ElementType type, bool gated, int64_t heads,
                    int64_t rows, int64_t n, int64_t k) {
  Problem g;
  g.w = makeWeights(type, heads, n, k, 3);
  if (gated)
    g.up = makeWeights(type, heads, n, k, 4);
  bool fp8 = type == cpu::ElementType::F8E4M3;
  g.x = randomRows(rows, heads * k, 5);
  if (fp8) // decoded codes with unit scales
    for (float &v : g.x)
      v = e4m3ToFloat(encodeE4m3(v));
  g.out.assign(rows * heads * n, 0.0f);
  g.p = gemmParams(g.w, g.out.data(), rows, n, k);
  setHeadLayout(g.p, heads, k);
  g.p.x = g.x.data();
  if (gated) {
    g.p.wUp = g.up.bytes.data();
    g.p.wUpScale = g.up.scales.data();
  }
  return g;
}

std::vector<float> unitScales(int64_t rows, int64_t heads, int64_t k) {
  return std::vector<float>(rows * heads * ((k + 127) / 128), 1.0f);
}

TEST(L2Prefetch, GemvBlocksAskForEachWeightByteOnce) {
  // n of 37: the last column block is partial.
  const int64_t heads = 3, n = 37, k = 256, rows = 2;
  for (cpu::ElementType type : {cpu::ElementType::BF16, cpu::ElementType::F32,
                                cpu::ElementType::F8E4M3})
    for (bool gated : {false, true}) {
      Problem g = headProblem(type, gated, heads, rows, n, k);
      std::vector<float> scales = unitScales(rows, heads, k);
      g.p.xScale = scales.data();
      Dim3 grid = gemvGrid(n, heads);
      std::vector<Range> got = prefetchedBy([&] {
        switch (type) {
        case cpu::ElementType::BF16:
          return gated ? kiln_gemv_gated_bf16_host(grid, g.p)
                       : kiln_gemv_bf16_host(grid, g.p);
        case cpu::ElementType::F8E4M3:
          return gated ? kiln_gemv_gated_f8e4m3_host(grid, g.p)
                       : kiln_gemv_f8e4m3_host(grid, g.p);
        default:
          return gated ? kiln_gemv_gated_f32_host(grid, g.p)
                       : kiln_gemv_f32_host(grid, g.p);
        }
      });
      std::vector<Range> weights{rangeOf(g.w)};
      if (gated)
        weights.push_back(rangeOf(g.up));
      expectEachByteOnce(got, weights,
                         std::string(name(type)) + (gated ? " gated" : ""));
    }
}

TEST(L2Prefetch, NoPrefetchAsksForNothing) {
  // KILN_PREFETCH=off, the benchmark's comparison.
  Problem g = headProblem(cpu::ElementType::BF16, true, 2, 3, 40, 128);
  g.p.noPrefetch = 1;
  EXPECT_TRUE(prefetchedBy([&] {
                kiln_gemv_gated_bf16_host(gemvGrid(40, 2), g.p);
              }).empty());
  EXPECT_TRUE(prefetchedBy([&] {
                kiln_gemm_mma_gated_bf16_host(mmaGemmGrid(40, 2), g.p);
              }).empty());
}

TEST(L2Prefetch, MmaGemmBlocksAskForEachWeightByteOnce) {
  // n of 37: three blocks of 16 rows, the last partial.
  const int64_t heads = 2, n = 37, k = 256, rows = 5;
  for (bool gated : {false, true}) {
    Problem g = headProblem(cpu::ElementType::BF16, gated, heads, rows, n, k);
    Dim3 grid = mmaGemmGrid(n, heads);
    std::vector<Range> got = prefetchedBy([&] {
      return gated ? kiln_gemm_mma_gated_bf16_host(grid, g.p)
                   : kiln_gemm_mma_bf16_host(grid, g.p);
    });
    std::vector<Range> weights{rangeOf(g.w)};
    if (gated)
      weights.push_back(rangeOf(g.up));
    expectEachByteOnce(got, weights, gated ? "gated" : "plain");
  }
}

TEST(L2Prefetch, GroupedGemmsAskForNothing) {
  const int64_t experts = 4, n = 40, k = 128;
  std::vector<int32_t> offsets{0, 2, 2, 5, 6};
  std::vector<int32_t> active = activeExpertsOf(offsets);
  Weights w = makeWeights(cpu::ElementType::BF16, experts, n, k, 7);
  std::vector<float> x = randomRows(offsets.back(), k, 8);
  std::vector<float> out(offsets.back() * n);
  GemmParams p = gemmParams(w, out.data(), offsets.back(), n, k);
  p.x = x.data();
  for (bool compact : {false, true}) {
    setExperts(p, offsets, compact ? active.data() : nullptr);
    int64_t matrices = gemmGridMatrices(p, experts);
    EXPECT_TRUE(prefetchedBy([&] {
                  kiln_gemv_bf16_host(gemvGrid(n, matrices), p);
                }).empty());
    EXPECT_TRUE(prefetchedBy([&] {
                  kiln_gemm_mma_bf16_host(mmaGemmGrid(n, matrices), p);
                }).empty());
  }
  // Selection order: a token's selections, each its own expert.
  std::vector<int32_t> selections{3, 0, 1};
  GemmParams s = gemmParams(w, out.data(), 3, n, k);
  s.x = x.data();
  s.experts = experts;
  s.selections = selections.data();
  s.selectionFanOut = 3;
  EXPECT_TRUE(prefetchedBy([&] {
                kiln_gemv_bf16_host(gemvGrid(n, gemmGridMatrices(s, experts)),
                                    s);
              }).empty());
}

TEST(L2Prefetch, GroupBlocksAskForTheirDenseMembersWeights) {
  // A MoE layer's shape: routed experts (grouped, GEMV), a shared expert
  // on the tensor cores, and a dense GEMV member beside them.
  const int64_t experts = 3, k = 128, tokens = 3;
  std::vector<int32_t> offsets{0, 2, 2, 4};
  Weights routed = makeWeights(cpu::ElementType::BF16, experts, 24, k, 9);
  Problem shared = headProblem(cpu::ElementType::BF16, false, 1, tokens, 40, k);
  Problem dense = headProblem(cpu::ElementType::BF16, false, 1, tokens, 9, k);
  std::vector<float> routedX = randomRows(offsets.back(), k, 10);
  std::vector<float> routedOut(offsets.back() * 24);
  GemmParams r = gemmParams(routed, routedOut.data(), offsets.back(), 24, k);
  r.x = routedX.data();
  setExperts(r, offsets, nullptr);

  for (bool mmaKernel : {false, true}) {
    GemmGroupParams group{};
    group.members = 3;
    group.member[0] = r;
    group.member[1] = shared.p;
    group.member[2] = dense.p;
    group.mma[1] = mmaKernel;
    Dim3 grid = gemmGroupGrid(group);
    std::vector<Range> got = prefetchedBy([&] {
      return mmaKernel ? kiln_gemm_group_bf16_host(grid, group)
                       : kiln_gemv_group_bf16_host(grid, group);
    });
    expectEachByteOnce(got, {rangeOf(shared.w), rangeOf(dense.w)},
                       mmaKernel ? "kiln_gemm_group_bf16"
                                 : "kiln_gemv_group_bf16");
  }
}

TEST(L2Prefetch, DecodeAttentionAsksForItsContextsCacheRows) {
  // MLA decode: 16 heads on one latent row (keys 576 wide, values its first
  // 512), pages of 64 tokens in a shuffled pool, contexts that end inside a
  // page and on its edge, split three ways (one split empty for the short
  // sequence).
  const int64_t heads = 16, dk = 576, dv = 512, pageTokens = 64;
  const std::vector<int32_t> kvLengths{70, 128, 5};
  const int64_t batch = static_cast<int64_t>(kvLengths.size()), maxTokens = 128;
  std::mt19937 rng(11);
  cpu::pagedtest::TestBlockTables tables = cpu::pagedtest::shuffledBlockTables(
      rng, kvLengths, maxTokens, pageTokens);
  std::vector<float> slot(tables.numBlocks * pageTokens * dk, 0.5f);
  std::vector<float> q = randomRows(batch * heads, dk, 12);
  std::vector<int32_t> positions;
  for (int32_t length : kvLengths)
    positions.push_back(length - 1);
  std::vector<float> out(batch * heads * dv);
  AttentionParams p{};
  p.q = q.data();
  p.k = {slot.data(), dk, dk, 0};
  p.v = {slot.data(), dk, dv, 0};
  p.tables = {tables.ids.data(), tables.stride, pageTokens, 0};
  p.positions = positions.data();
  p.kvLengths = kvLengths.data();
  p.out = out.data();
  p.seq = 1;
  p.heads = heads;
  p.kvHeads = 1;
  p.dk = dk;
  p.dv = dv;
  p.scale = 0.05f;
  p.splits = 3;
  p.splitTokens = attentionSplitTokens(maxTokens, p.splits);
  std::vector<float> scratch(batch * heads * p.splits * (2 + dv));
  p.scratch = scratch.data();
  Dim3 grid = attentionGrid(batch, 1, heads, 1, p.splits);

  // How often each row of the slot should be asked for: once for the rows
  // of a context, never for the others (spare pages, past a context's end).
  int64_t slotRows = tables.numBlocks * pageTokens;
  std::vector<int> want(slotRows, 0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < kvLengths[b]; ++j)
      want[tables.ids[b * tables.stride + j / pageTokens] * pageTokens +
           j % pageTokens] = 1;
  const int64_t rowBytes = dk * sizeof(float);
  uintptr_t base = reinterpret_cast<uintptr_t>(slot.data());
  for (bool wide : {false, true}) {
    SCOPED_TRACE(wide ? "mma wide" : "CUDA cores");
    std::vector<Range> got = prefetchedBy([&] {
      return wide ? kiln_attention_mma_wide_host(grid, p)
                  : kiln_attention_host(grid, p);
    });
    // Whole rows (runs of a page's consecutive rows), inside the slot.
    std::vector<int> asked(slotRows, 0);
    for (const Range &r : got) {
      ASSERT_GE(r.begin, base);
      ASSERT_LE(r.end, base + slotRows * rowBytes);
      ASSERT_EQ((r.begin - base) % rowBytes, 0u);
      ASSERT_EQ((r.end - r.begin) % rowBytes, 0u);
      for (uintptr_t row = (r.begin - base) / rowBytes;
           row < (r.end - base) / rowBytes; ++row)
        ++asked[row];
    }
    EXPECT_EQ(asked, want);
  }
  // KILN_PREFETCH=off asks for none.
  p.noPrefetch = 1;
  EXPECT_TRUE(
      prefetchedBy([&] { kiln_attention_mma_wide_host(grid, p); }).empty());
  // Nor do two query rows a sequence (prefill, or verifying drafts).
  p.noPrefetch = 0;
  p.seq = 2;
  std::vector<int32_t> pairs;
  for (int32_t length : kvLengths) {
    pairs.push_back(length - 2);
    pairs.push_back(length - 1);
  }
  std::vector<float> q2 = randomRows(batch * 2 * heads, dk, 13);
  std::vector<float> out2(batch * 2 * heads * dv);
  std::vector<float> scratch2(batch * 2 * heads * p.splits * (2 + dv));
  p.q = q2.data();
  p.positions = pairs.data();
  p.out = out2.data();
  p.scratch = scratch2.data();
  EXPECT_TRUE(prefetchedBy([&] {
                kiln_attention_mma_wide_host(
                    attentionGrid(batch, 2, heads, 1, p.splits), p);
              }).empty());
}

} // namespace
} // namespace kiln
