// Host build of the tensor-core attention (runtime/kernels/MmaAttention.h)
// against cpu::attention: prefill tiles of 1, 4 and 16 query vectors per kv
// head whose rows end at different keys, padding rows, ragged lengths,
// context splits merged, contiguous and paged (shuffled blocks) keys and
// values, dk/dv of GQA models and of DeepSeek's heads from the latent
// (192/128), and a bf16 latent cache's rows. The host build runs
// the kernel's per-lane fragment code with a host mma, so a wrong lane,
// register or mask index is an error of the order of the values.
//
// Tolerance: the reference attends over Q, K and V rounded to bf16 as the
// kernel does; the kernel also rounds the softmax weights to bf16 (relative
// error 2^-9 each) before P V, so each output (a convex combination of
// values) is within 2^-9 max|v| plus fp32 summation error (bounded as in
// KvAttentionKernelTest.cpp) of it.
#include "MmaAttention.h"
#include "tests/runtime/GemmTestUtil.h"

#include "kiln/Float.h"
#include "runtime/src/cpu/Kernels.h"
#include "runtime/src/cpu/PagedPacked.h"
#include "tests/runtime/PagedTestUtil.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace kiln {
namespace {

using kiln::testing::maxAbs;
using kiln::testing::randomRows;
using kiln::testing::roundedToBf16;

/// (heads, kvHeads, dk, dv, paged)
using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, bool>;
class MmaAttention : public ::testing::TestWithParam<Shape> {};

// One head per kv head (16-row tiles), GQA groups of 4 (4-row tiles) and
// 20 (a chunk of 16 heads and one of 4); V2-Lite's naive prefill heads; a
// dk that ends half-way through a 16-column mma step.
INSTANTIATE_TEST_SUITE_P(
    Shapes, MmaAttention,
    ::testing::Values(Shape{3, 3, 64, 48, false}, Shape{8, 2, 64, 48, false},
                      Shape{40, 2, 64, 48, false}, Shape{2, 2, 192, 128, false},
                      Shape{3, 3, 64, 48, true}, Shape{8, 2, 192, 128, true},
                      Shape{4, 4, 24, 16, false}));

/// Query positions of the last `seq` tokens of each sequence; -1 (padding)
/// before a sequence shorter than `seq`.
std::vector<int32_t> lastPositions(const std::vector<int32_t> &kvLengths,
                                   int64_t seq) {
  std::vector<int32_t> positions(kvLengths.size() * seq);
  for (size_t b = 0; b < kvLengths.size(); ++b)
    for (int64_t s = 0; s < seq; ++s)
      positions[b * seq + s] =
          s + kvLengths[b] - seq >= 0
              ? static_cast<int32_t>(s + kvLengths[b] - seq)
              : -1;
  return positions;
}

/// Runs the kernel (wide or narrow) over `p`'s queries with each number of
/// context splits (merged by kiln_attention_merge), each output within
/// `bound` of `want`.
void expectSplitsMatch(AttentionParams p, int64_t batch, int64_t kvLen,
                       std::initializer_list<int> splitCounts, bool wide,
                       const std::vector<float> &want, float bound) {
  for (int splits : splitCounts) {
    std::vector<float> got(want.size(), -1.0f);
    std::vector<float> scratch(batch * p.seq * p.heads * splits * (2 + p.dv),
                               0.0f);
    p.out = got.data();
    p.splits = splits;
    p.splitTokens = attentionSplitTokens(kvLen, splits);
    p.scratch = scratch.data();
    Dim3 grid = attentionGrid(batch, p.seq, p.heads, p.kvHeads, splits);
    if (wide && p.packedSlot)
      kiln_attention_mma_wide_bf16_rows_host(grid, p);
    else if (wide)
      kiln_attention_mma_wide_host(grid, p);
    else if (p.packedSlot)
      kiln_attention_mma_bf16_rows_host(grid, p);
    else
      kiln_attention_mma_host(grid, p);
    if (splits > 1)
      kiln_attention_merge_host(
          attentionMergeGrid(batch * p.seq, p.heads, p.dv), p);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], bound)
          << "splits " << splits << " element " << i;
  }
}

/// Queries of the last `seq` positions of two ragged sequences (kv lengths
/// 150 and 90: a prefill when seq is 150, with padding rows before the
/// shorter one's; a decode step when 1), 1 to 3 context splits, contiguous
/// or paged keys and values.
void expectMatchesCpu(int64_t heads, int64_t kvHeads, int64_t dk, int64_t dv,
                      bool paged, int64_t seq, bool wide) {
  const int64_t batch = 2, kvLen = 150, blockTokens = 64;
  std::vector<float> q = randomRows(batch * seq * heads, dk, 41);
  std::vector<float> k = randomRows(batch * kvLen * kvHeads, dk, 42);
  std::vector<float> v = randomRows(batch * kvLen * kvHeads, dv, 43);
  for (float &x : q)
    x *= 0.2f;
  std::vector<int32_t> kvLengths = {150, 90};
  std::vector<int32_t> positions = lastPositions(kvLengths, seq);
  std::vector<float> want(batch * seq * heads * dv);
  std::vector<float> qr = roundedToBf16(q), kr = roundedToBf16(k),
                     vr = roundedToBf16(v);
  cpu::attention(qr.data(), kr.data(), vr.data(), positions.data(),
                 kvLengths.data(), batch, seq, heads, kvHeads, dk, dv,
                 kvLen * kvHeads * dk, kvLen * kvHeads * dv, 0.125f,
                 want.data());

  AttentionParams p{};
  p.q = q.data();
  p.positions = positions.data();
  p.kvLengths = kvLengths.data();
  p.seq = seq;
  p.heads = heads;
  p.kvHeads = kvHeads;
  p.dk = dk;
  p.dv = dv;
  p.scale = 0.125f;
  // Paged: every token's keys and values in one cache row (keys first), in
  // shuffled blocks; contiguous: [batch, kvLen, kvHeads, d].
  std::mt19937 rng(44);
  cpu::pagedtest::TestBlockTables tables;
  std::vector<float> slot;
  if (paged) {
    tables =
        cpu::pagedtest::shuffledBlockTables(rng, kvLengths, kvLen, blockTokens);
    int64_t entry = kvHeads * (dk + dv);
    slot = cpu::pagedtest::pagedKeysAndValues(tables, kvLengths, kvLen,
                                              blockTokens, k, v, kvHeads, dk,
                                              dv, std::nanf(""));
    p.k = {slot.data(), entry, dk, 0};
    p.v = {slot.data(), entry, dv, kvHeads * dk};
    p.tables = {tables.ids.data(), tables.stride, blockTokens, 0};
  } else {
    p.k = {k.data(), kvHeads * dk, dk, 0};
    p.v = {v.data(), kvHeads * dv, dv, 0};
    p.tables = {nullptr, 0, 0, kvLen};
  }
  ASSERT_TRUE(wide ? mmaAttentionWideFits(dk, dv) : mmaAttentionFits(dk, dv));
  float bound = 0x1p-9f * maxAbs(vr) +
                4.0f * static_cast<float>(kvLen) * 0x1p-24f * maxAbs(vr) +
                1e-6f;
  expectSplitsMatch(p, batch, kvLen, {1, 2, 3}, wide, want, bound);
}

TEST_P(MmaAttention, PrefillMatchesCpu) {
  const auto [heads, kvHeads, dk, dv, paged] = GetParam();
  expectMatchesCpu(heads, kvHeads, dk, dv, paged, 150, false);
}

// The wide variant on absorbed MLA's shapes: 16 heads sharing one latent
// row (dk 576, dv 512), decode and prefill, contiguous and paged; and a
// smaller dv split over its 4 parts.
TEST(MmaAttentionWide, MatchesCpu) {
  for (bool paged : {false, true})
    for (int64_t seq : {1, 150}) {
      SCOPED_TRACE(::testing::Message() << "paged " << paged << " seq " << seq);
      expectMatchesCpu(16, 1, 576, 512, paged, seq, true);
    }
  expectMatchesCpu(4, 2, 40, 32, false, 150, true);
}

/// Attention over a bf16 latent slot (packed rows without e4m3 columns;
/// one kv head for all `heads`, values the rows' first dv columns), stored
/// by cpu::kvAppendPagedPacked into shuffled blocks whose unused bytes are
/// 0xff (NaN in bf16: a read past a sequence shows). The reference attends
/// over the rows as cpu::gatherPagedPacked reads them back (bf16 values),
/// with Q rounded to bf16 too.
void expectBf16RowsMatchCpu(int64_t heads, int64_t dk, int64_t dv, int64_t seq,
                            bool wide) {
  const int64_t batch = 2, kvLen = 150, blockTokens = 64;
  std::vector<int32_t> kvLengths = {150, 90};
  cpu::PackedRowLayout layout{0, dk};
  std::mt19937 rng(45);
  cpu::pagedtest::TestBlockTables tables =
      cpu::pagedtest::shuffledBlockTables(rng, kvLengths, kvLen, blockTokens);
  std::vector<std::byte> slot(
      tables.numBlocks * blockTokens * layout.rowBytes(), std::byte{0xff});
  std::vector<float> latent = randomRows(batch * kvLen, dk, 46);
  std::vector<int32_t> cached =
      cpu::pagedtest::prefixPositions(kvLengths, kvLen);
  cpu::kvAppendPagedPacked(latent.data(), cached.data(), batch, kvLen, layout,
                           slot.data(), tables.ids.data(), tables.stride,
                           blockTokens);
  std::vector<float> rows(batch * kvLen * dk, 0.0f);
  for (int64_t b = 0; b < batch; ++b)
    cpu::gatherPagedPacked(slot.data(), layout,
                           tables.ids.data() + b * tables.stride, blockTokens,
                           kvLengths[b], 0, dk, rows.data() + b * kvLen * dk);
  std::vector<float> kr = roundedToBf16(rows), vr(batch * kvLen * dv);
  for (int64_t r = 0; r < batch * kvLen; ++r)
    std::copy_n(kr.begin() + r * dk, dv, vr.begin() + r * dv);

  std::vector<float> q = randomRows(batch * seq * heads, dk, 47);
  for (float &x : q)
    x *= 0.05f;
  std::vector<int32_t> positions = lastPositions(kvLengths, seq);
  std::vector<float> qr = roundedToBf16(q), want(batch * seq * heads * dv);
  cpu::attention(qr.data(), kr.data(), vr.data(), positions.data(),
                 kvLengths.data(), batch, seq, heads, 1, dk, dv, kvLen * dk,
                 kvLen * dv, 0.125f, want.data());

  AttentionParams p{};
  p.q = q.data();
  p.packedSlot = reinterpret_cast<const unsigned char *>(slot.data());
  p.packed = {0, dk};
  p.tables = {tables.ids.data(), tables.stride, blockTokens, 0};
  p.positions = positions.data();
  p.kvLengths = kvLengths.data();
  p.seq = seq;
  p.heads = heads;
  p.kvHeads = 1;
  p.dk = dk;
  p.dv = dv;
  p.scale = 0.125f;
  ASSERT_TRUE(wide ? mmaAttentionWideFits(dk, dv) : mmaAttentionFits(dk, dv));
  float bound = 0x1p-9f * maxAbs(vr) +
                4.0f * static_cast<float>(kvLen) * 0x1p-24f * maxAbs(vr) +
                1e-6f;
  expectSplitsMatch(p, batch, kvLen, {1, 3}, wide, want, bound);
}

// Absorbed MLA over a bf16 latent cache, decode and prefill; the narrow
// kernel on a smaller row and on the tiny DeepSeek-V3's (32 + 8 columns,
// 4 heads).
TEST(MmaAttentionBf16Rows, WideMatchesCpu) {
  for (int64_t seq : {1, 150}) {
    SCOPED_TRACE(::testing::Message() << "seq " << seq);
    expectBf16RowsMatchCpu(16, 576, 512, seq, true);
  }
}

TEST(MmaAttentionBf16Rows, NarrowMatchesCpu) {
  expectBf16RowsMatchCpu(8, 160, 128, 150, false);
  for (int64_t seq : {1, 150}) {
    SCOPED_TRACE(::testing::Message() << "seq " << seq);
    expectBf16RowsMatchCpu(4, 40, 32, seq, false);
  }
}

TEST(MmaAttentionFits, WholeFragmentsOnly) {
  EXPECT_TRUE(mmaAttentionFits(192, 128));
  EXPECT_TRUE(mmaAttentionFits(256, 8));
  EXPECT_FALSE(mmaAttentionFits(576, 512)); // absorbed MLA: the wide one
  EXPECT_TRUE(mmaAttentionWideFits(576, 512));
  EXPECT_FALSE(mmaAttentionWideFits(576, 520)); // dv % 32
  EXPECT_FALSE(mmaAttentionWideFits(584, 512)); // dk past the fragments
  EXPECT_TRUE(mmaAttentionFits(24, 16));        // half a last k step
  EXPECT_FALSE(mmaAttentionFits(20, 64));       // dk % 8
  EXPECT_FALSE(mmaAttentionFits(64, 52));       // dv % 8
}

} // namespace
} // namespace kiln
