// Host builds of the CUDA executor's KV-cache kernels
// (runtime/kernels/KvAttention.h) against the CPU kernels: appends exactly
// (packed rows byte for byte), gathers exactly, attention (paged MLA latent,
// FP8 and bf16 latent, contiguous GQA; split contexts merged) within fp32
// rounding.
//
// Attention tolerance: both compute the same softmax in fp32 with other
// summation orders and exponent offsets; each output is a convex
// combination of values, so its error is bounded by a few ulps of the
// largest |value| per summed term: 4 * keys * eps * max|v|.
#include "KvAttention.h"

#include "runtime/src/cpu/Kernels.h"
#include "runtime/src/cpu/PagedPacked.h"
#include "tests/runtime/GemmTestUtil.h"
#include "tests/runtime/PagedTestUtil.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace kiln {
namespace {

using cpu::pagedtest::prefixPositions;
using cpu::pagedtest::shuffledBlockTables;
using cpu::pagedtest::TestBlockTables;
using kiln::testing::maxAbs;

constexpr int64_t kBlockTokens = 64;

std::vector<float> normal(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

/// A batch with ragged lengths and one padding-only row, appended into a
/// shuffled paged slot through the device kernel (checked against the CPU
/// append).
struct PagedBatch {
  std::vector<int32_t> kvLengths{130, 1, 64, 200};
  int64_t maxTokens = 200;
  TestBlockTables tables;
  std::vector<float> slot;
};

PagedBatch appendBatch(int64_t entry, uint32_t seed) {
  PagedBatch p;
  std::mt19937 rng(seed);
  p.tables = shuffledBlockTables(rng, p.kvLengths, p.maxTokens, kBlockTokens);
  int64_t batch = static_cast<int64_t>(p.kvLengths.size());
  std::vector<float> x = normal(batch * p.maxTokens * entry, seed + 1);
  std::vector<int32_t> positions = prefixPositions(p.kvLengths, p.maxTokens);
  size_t floats = p.tables.numBlocks * kBlockTokens * entry;
  std::vector<float> want(floats, 0.0f);
  p.slot.assign(floats, 0.0f);
  cpu::kvAppendPaged(x.data(), positions.data(), batch, p.maxTokens, entry,
                     want.data(), p.tables.ids.data(), p.tables.stride,
                     kBlockTokens);
  KvAppendParams a{
      x.data(),      positions.data(),
      p.slot.data(), {p.tables.ids.data(), p.tables.stride, kBlockTokens, 0},
      p.maxTokens,   entry,
      {0, 0}};
  kiln_kv_append_host({static_cast<int>(batch * p.maxTokens), 1, 1}, a);
  EXPECT_EQ(p.slot, want);
  return p;
}

/// Runs the device attention with `splits` and merges when split.
void attend(AttentionParams p, int64_t rows, int64_t maxKv, int splits,
            std::vector<float> &scratch) {
  p.splits = splits;
  p.splitTokens = attentionSplitTokens(maxKv, splits);
  scratch.assign(rows * p.heads * splits * (2 + p.dv), 0.0f);
  p.scratch = scratch.data();
  kiln_attention_host(
      attentionGrid(rows / p.seq, p.seq, p.heads, p.kvHeads, splits), p);
  if (splits > 1)
    kiln_attention_merge_host(attentionMergeGrid(rows, p.heads, p.dv), p);
}

void expectAttention(const std::vector<float> &got,
                     const std::vector<float> &want, float maxValue,
                     int64_t keys, const std::string &what) {
  float bound = 4.0f * static_cast<float>(keys) * 0x1p-24f * maxValue + 1e-6f;
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], bound) << what << " element " << i;
}

TEST(KvAttentionKernel, PagedMlaLatentMatchesCpuForEverySplit) {
  const int64_t heads = 16, dk = 576, dv = 512, seq = 2;
  PagedBatch b = appendBatch(dk, 21);
  int64_t batch = static_cast<int64_t>(b.kvLengths.size());
  // Two query rows per sequence at its last positions; one padding row.
  std::vector<int32_t> positions;
  for (int32_t len : b.kvLengths) {
    positions.push_back(len - 2);
    positions.push_back(len - 1);
  }
  positions[2] = -1;
  std::vector<float> q = normal(batch * seq * heads * dk, 22);
  for (float &v : q)
    v *= 0.05f;
  std::vector<float> want(batch * seq * heads * dv);
  std::vector<float> cpuScratch(
      static_cast<size_t>(cpu::attentionPagedScratch(batch * seq, heads, dv)));
  cpu::PagedView k{b.slot.data(), dk, dk, 0}, v{b.slot.data(), dk, dv, 0};
  cpu::attentionPaged(
      q.data(), k, v, {b.tables.ids.data(), b.tables.stride, kBlockTokens},
      positions.data(), b.kvLengths.data(), batch, seq, heads, 1, dk, dv, 0.07f,
      want.data(), cpuScratch.data(), static_cast<int64_t>(cpuScratch.size()));
  AttentionParams p{};
  p.q = q.data();
  p.k = {b.slot.data(), dk, dk, 0};
  p.v = {b.slot.data(), dk, dv, 0};
  p.tables = {b.tables.ids.data(), b.tables.stride, kBlockTokens, 0};
  p.positions = positions.data();
  p.kvLengths = b.kvLengths.data();
  p.seq = seq;
  p.heads = heads;
  p.kvHeads = 1;
  p.dk = dk;
  p.dv = dv;
  p.scale = 0.07f;
  std::vector<float> scratch;
  // More splits than keys of the short sequences: empty splits merge away.
  for (int splits : {1, 3, 8}) {
    std::vector<float> got(want.size(), -1.0f);
    p.out = got.data();
    attend(p, batch * seq, b.maxTokens, splits, scratch);
    expectAttention(got, want, maxAbs(b.slot), b.maxTokens,
                    "splits " + std::to_string(splits));
  }
}

class ContiguousGqa
    : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

// Query heads per kv head: 4 (one block of 4), 1, and 20 (a block of 16
// and one of 4).
INSTANTIATE_TEST_SUITE_P(HeadGroups, ContiguousGqa,
                         ::testing::Values(std::pair<int64_t, int64_t>{8, 2},
                                           std::pair<int64_t, int64_t>{3, 3},
                                           std::pair<int64_t, int64_t>{40, 2}));

TEST_P(ContiguousGqa, PrefillMatchesCpu) {
  const auto [heads, kvHeads] = GetParam();
  // Query tiles (up to 16 rows of one sequence) whose rows end at
  // different keys, across key tiles and context splits; padding rows.
  const int64_t batch = 2, seq = 150, dk = 64, dv = 48;
  const int64_t kvLen = 150;
  std::vector<float> q = normal(batch * seq * heads * dk, 31);
  std::vector<float> k = normal(batch * kvLen * kvHeads * dk, 32);
  std::vector<float> v = normal(batch * kvLen * kvHeads * dv, 33);
  for (float &x : q)
    x *= 0.2f;
  std::vector<int32_t> positions(batch * seq), kvLengths = {150, 90};
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s)
      positions[b * seq + s] = s < kvLengths[b] ? static_cast<int32_t>(s) : -1;
  std::vector<float> want(batch * seq * heads * dv);
  cpu::attention(q.data(), k.data(), v.data(), positions.data(),
                 kvLengths.data(), batch, seq, heads, kvHeads, dk, dv,
                 kvLen * kvHeads * dk, kvLen * kvHeads * dv, 0.125f,
                 want.data());
  AttentionParams p{};
  p.q = q.data();
  p.k = {k.data(), kvHeads * dk, dk, 0};
  p.v = {v.data(), kvHeads * dv, dv, 0};
  p.tables = {nullptr, 0, 0, kvLen};
  p.positions = positions.data();
  p.kvLengths = kvLengths.data();
  p.seq = seq;
  p.heads = heads;
  p.kvHeads = kvHeads;
  p.dk = dk;
  p.dv = dv;
  p.scale = 0.125f;
  std::vector<float> scratch;
  for (int splits : {1, 2, 3}) {
    std::vector<float> got(want.size(), -1.0f);
    p.out = got.data();
    attend(p, batch * seq, kvLen, splits, scratch);
    expectAttention(got, want, maxAbs(v), kvLen,
                    "splits " + std::to_string(splits));
  }
}

/// Append, gather and attention over a packed latent slot of `quant` e4m3
/// columns (the rest bf16) against the CPU's packed kernels.
void expectPackedLatentMatchesCpu(int64_t quant) {
  const int64_t heads = 4, dk = 576, dv = 512;
  cpu::PackedRowLayout layout{quant, dk - quant};
  PackedRows rows{quant, dk - quant};
  ASSERT_EQ(packedRowBytes(rows), layout.rowBytes());
  std::vector<int32_t> kvLengths{70, 3};
  int64_t batch = 2, maxTokens = 70;
  std::mt19937 rng(41);
  TestBlockTables t =
      shuffledBlockTables(rng, kvLengths, maxTokens, kBlockTokens);
  std::vector<float> x = normal(batch * maxTokens * dk, 42);
  for (size_t i = 0; i < x.size(); i += 97)
    x[i] *= 300.0f; // outliers set a group's scale
  std::vector<int32_t> positions = prefixPositions(kvLengths, maxTokens);
  size_t bytes = t.numBlocks * kBlockTokens * layout.rowBytes();
  std::vector<std::byte> want(bytes, std::byte{0x5a});
  std::vector<std::byte> got = want;
  cpu::kvAppendPagedPacked(x.data(), positions.data(), batch, maxTokens, layout,
                           want.data(), t.ids.data(), t.stride, kBlockTokens);
  KvAppendParams a{x.data(),   positions.data(),
                   got.data(), {t.ids.data(), t.stride, kBlockTokens, 0},
                   maxTokens,  0,
                   rows};
  kiln_kv_append_packed_host({static_cast<int>(batch * maxTokens), 1, 1}, a);
  ASSERT_EQ(0, std::memcmp(got.data(), want.data(), bytes));

  // Gather columns [500, 576) of sequence 0, tokens past its blocks zero.
  const int64_t kvLen = 140, column = 500, n = 76;
  std::vector<float> gathered(batch * kvLen * n, -1.0f);
  std::vector<int32_t> held = {128, 64};
  KvGatherParams g{got.data(),  {t.ids.data(), t.stride, kBlockTokens, 0},
                   held.data(), gathered.data(),
                   kvLen,       1,
                   n,           column,
                   n,           0,
                   rows};
  kiln_kv_gather_host({static_cast<int>(batch * kvLen), 1, 1}, g);
  std::vector<float> reference(128 * n);
  cpu::gatherPagedPacked(want.data(), layout, t.ids.data(), kBlockTokens, 128,
                         column, n, reference.data());
  for (int64_t i = 0; i < 128 * n; ++i)
    ASSERT_EQ(gathered[i], reference[i]) << i;
  for (int64_t i = 128 * n; i < kvLen * n; ++i)
    ASSERT_EQ(gathered[i], 0.0f) << i;

  // Decode attention over the packed latent.
  std::vector<int32_t> queryPositions = {69, 2};
  std::vector<float> q = normal(batch * heads * dk, 43);
  for (float &v : q)
    v *= 0.02f;
  std::vector<float> wantOut(batch * heads * dv);
  std::vector<float> cpuScratch(
      static_cast<size_t>(cpu::attentionPagedScratch(batch, heads, dv)));
  cpu::attentionPagedPacked(
      q.data(), want.data(), layout, {t.ids.data(), t.stride, kBlockTokens},
      queryPositions.data(), kvLengths.data(), batch, 1, heads, dk, dv, 0.06f,
      wantOut.data(), cpuScratch.data(),
      static_cast<int64_t>(cpuScratch.size()));
  AttentionParams p{};
  p.q = q.data();
  p.tables = {t.ids.data(), t.stride, kBlockTokens, 0};
  p.packedSlot = reinterpret_cast<const unsigned char *>(got.data());
  p.packed = rows;
  p.positions = queryPositions.data();
  p.kvLengths = kvLengths.data();
  p.seq = 1;
  p.heads = heads;
  p.kvHeads = 1;
  p.dk = dk;
  p.dv = dv;
  p.scale = 0.06f;
  std::vector<float> scratch;
  for (int splits : {1, 2}) {
    std::vector<float> out(wantOut.size(), -1.0f);
    p.out = out.data();
    attend(p, batch, maxTokens, splits, scratch);
    expectAttention(out, wantOut, maxAbs(x), maxTokens,
                    "packed splits " + std::to_string(splits));
  }
}

TEST(KvAttentionKernel, Fp8LatentAppendGatherAndAttentionMatchCpu) {
  expectPackedLatentMatchesCpu(512);
}

TEST(KvAttentionKernel, Bf16LatentAppendGatherAndAttentionMatchCpu) {
  expectPackedLatentMatchesCpu(0);
}

TEST(KvAttentionKernel, GatherF32ZeroFillsPastTheBlocks) {
  const int64_t entry = 2 * 32; // two rows of 32 per token (per-head K)
  PagedBatch b = appendBatch(entry, 51);
  int64_t batch = static_cast<int64_t>(b.kvLengths.size()), kvLen = 210;
  std::vector<int32_t> held;
  for (int32_t len : b.kvLengths)
    held.push_back(static_cast<int32_t>((len + 63) / 64 * 64));
  // Columns [8, 24) of each of the two 32-wide rows.
  const int64_t n = 16;
  std::vector<float> out(batch * kvLen * 2 * n, -1.0f);
  KvGatherParams g{b.slot.data(),
                   {b.tables.ids.data(), b.tables.stride, kBlockTokens, 0},
                   held.data(),
                   out.data(),
                   kvLen,
                   2,
                   32,
                   8,
                   n,
                   entry,
                   {0, 0}};
  kiln_kv_gather_host({static_cast<int>(batch * kvLen), 1, 1}, g);
  for (int64_t s = 0; s < batch; ++s)
    for (int64_t t = 0; t < kvLen; ++t)
      for (int64_t r = 0; r < 2; ++r)
        for (int64_t c = 0; c < n; ++c) {
          float value = out[((s * kvLen + t) * 2 + r) * n + c];
          if (t >= held[s]) {
            ASSERT_EQ(value, 0.0f);
            continue;
          }
          int64_t block = b.tables.ids[s * b.tables.stride + t / kBlockTokens];
          ASSERT_EQ(value,
                    b.slot[(block * kBlockTokens + t % kBlockTokens) * entry +
                           r * 32 + 8 + c]);
        }
}

// Context splits: about two blocks per multiprocessor (132), in whole
// chunks of kAttentionSplitKeys keys, at most kMaxDeviceAttentionSplits.
TEST(KvAttentionKernel, SplitsFillTheMultiprocessors) {
  // Batch-1 decode at 1K (one block per split): 64 splits of 16 keys.
  EXPECT_EQ(attentionSplits(1024, 1, 132), 64);
  EXPECT_EQ(attentionSplitTokens(1024, 64), 16);
  // At 8K the cap: 128 splits of 64 keys.
  EXPECT_EQ(attentionSplits(8192, 1, 132), kMaxDeviceAttentionSplits);
  EXPECT_EQ(attentionSplitTokens(8192, 128), 64);
  // Batch 32: 9 splits; 1K / 9 rounded up to a whole chunk.
  EXPECT_EQ(attentionSplits(1024, 32, 132), 9);
  EXPECT_EQ(attentionSplitTokens(1024, 9), 128);
  // Enough blocks (prefill): no split.
  EXPECT_EQ(attentionSplits(2048, 264, 132), 1);
  // Fewer keys than chunks wanted: a split per chunk.
  EXPECT_EQ(attentionSplits(40, 1, 132), 3);
}

} // namespace
} // namespace kiln
