// PagedKvCache's block management: allocation, release and reuse, block
// tables, out-of-capacity errors that change nothing, and continuous
// batching, with an invariant check that every block is either free or held
// by exactly one live sequence.
#include "runtime/src/PagedKvCache.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace kiln {
namespace {

PagedKvCache makeCache(int64_t numBlocks, int maxSequences,
                       int64_t maxSequenceTokens, int64_t blockTokens = 64) {
  absl::StatusOr<PagedKvCache> cache =
      PagedKvCache::create({.slotEntries = {576, 8, 3},
                            .numBlocks = numBlocks,
                            .blockTokens = blockTokens,
                            .maxSequences = maxSequences,
                            .maxSequenceTokens = maxSequenceTokens});
  EXPECT_TRUE(cache.ok()) << cache.status();
  return std::move(*cache);
}

/// Every block is free or held by one live sequence, never both or twice;
/// dead sequences hold nothing; table entries past the held ones are -1.
void checkInvariants(const PagedKvCache &cache) {
  std::vector<int> owner(static_cast<size_t>(cache.numBlocks()), -1);
  int64_t held = 0;
  for (int seq = 0; seq < cache.maxSequences(); ++seq) {
    if (!cache.isLive(seq)) {
      ASSERT_EQ(cache.blocksHeld(seq), 0) << "sequence " << seq;
      continue;
    }
    const int32_t *table = cache.blockTable(seq);
    for (int64_t i = 0; i < cache.blocksHeld(seq); ++i) {
      ASSERT_GE(table[i], 0);
      ASSERT_LT(table[i], cache.numBlocks());
      ASSERT_EQ(owner[static_cast<size_t>(table[i])], -1)
          << "block " << table[i] << " held by sequences "
          << owner[static_cast<size_t>(table[i])] << " and " << seq;
      owner[static_cast<size_t>(table[i])] = seq;
    }
    for (int64_t i = cache.blocksHeld(seq); i < cache.tableStride(); ++i)
      ASSERT_EQ(table[i], -1);
    held += cache.blocksHeld(seq);
  }
  ASSERT_EQ(held + cache.freeBlocks(), cache.numBlocks());
}

TEST(PagedKvCache, CreateRejectsBadOptions) {
  auto bad = [](PagedKvCache::Options o) {
    return PagedKvCache::create(std::move(o)).status().code();
  };
  PagedKvCache::Options ok{.slotEntries = {4},
                           .numBlocks = 2,
                           .blockTokens = 16,
                           .maxSequences = 1,
                           .maxSequenceTokens = 32};
  EXPECT_TRUE(PagedKvCache::create(ok).ok());
  auto with = [&](auto edit) {
    PagedKvCache::Options o = ok;
    edit(o);
    return bad(o);
  };
  using enum absl::StatusCode;
  EXPECT_EQ(with([](auto &o) { o.numBlocks = 0; }), kInvalidArgument);
  EXPECT_EQ(with([](auto &o) { o.blockTokens = 0; }), kInvalidArgument);
  EXPECT_EQ(with([](auto &o) { o.maxSequences = 0; }), kInvalidArgument);
  EXPECT_EQ(with([](auto &o) { o.maxSequenceTokens = 0; }), kInvalidArgument);
  EXPECT_EQ(with([](auto &o) { o.slotEntries = {}; }), kInvalidArgument);
  EXPECT_EQ(with([](auto &o) { o.slotEntries = {4, 0}; }), kInvalidArgument);
  EXPECT_EQ(with([](auto &o) { o.slotEntries = {int64_t{1} << 62}; }),
            kInvalidArgument);
}

TEST(PagedKvCache, LayoutAndAllocation) {
  PagedKvCache cache = makeCache(10, 3, 300);
  EXPECT_EQ(cache.numSlots(), 3);
  EXPECT_EQ(cache.slotEntry(0), 576);
  EXPECT_EQ(cache.slotEntry(2), 3);
  EXPECT_EQ(cache.tableStride(), 5); // ceil(300 / 64)
  EXPECT_EQ(cache.freeBlocks(), 10);
  // Storage is zeroed and every slot has room for every block.
  for (int slot = 0; slot < cache.numSlots(); ++slot) {
    float *data = cache.slotData(slot);
    int64_t floats = 10 * 64 * cache.slotEntry(slot);
    EXPECT_EQ(data[0], 0.0f);
    EXPECT_EQ(data[floats - 1], 0.0f);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(data) % 64, 0u);
  }

  absl::StatusOr<int> a = cache.addSequence();
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, 0);
  EXPECT_EQ(cache.blocksHeld(*a), 0);
  ASSERT_TRUE(cache.reserve(*a, 0).ok());
  EXPECT_EQ(cache.blocksHeld(*a), 0);
  ASSERT_TRUE(cache.reserve(*a, 1).ok());
  EXPECT_EQ(cache.blocksHeld(*a), 1);
  ASSERT_TRUE(cache.reserve(*a, 64).ok());
  EXPECT_EQ(cache.blocksHeld(*a), 1);
  ASSERT_TRUE(cache.reserve(*a, 65).ok());
  EXPECT_EQ(cache.blocksHeld(*a), 2);
  EXPECT_EQ(cache.tokenCapacity(*a), 128);
  // A sequence never shrinks.
  ASSERT_TRUE(cache.reserve(*a, 3).ok());
  EXPECT_EQ(cache.blocksHeld(*a), 2);
  EXPECT_EQ(cache.blockTable(*a)[0], 0);
  EXPECT_EQ(cache.blockTable(*a)[1], 1);
  EXPECT_EQ(cache.freeBlocks(), 8);

  absl::StatusOr<int> b = cache.addSequence();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, 1);
  ASSERT_TRUE(cache.reserve(*b, 200).ok());
  EXPECT_EQ(cache.blocksHeld(*b), 4);
  EXPECT_EQ(cache.blockTable(*b)[0], 2);
  EXPECT_EQ(cache.blockTable(*b)[3], 5);
  // Tables are consecutive rows of one array.
  EXPECT_EQ(cache.blockTable(*b), cache.blockTable(*a) + cache.tableStride());
  EXPECT_EQ(cache.liveSequences(), 2);
  checkInvariants(cache);

  ASSERT_TRUE(cache.release(*a).ok());
  EXPECT_EQ(cache.freeBlocks(), 6);
  EXPECT_FALSE(cache.isLive(*a));
  EXPECT_EQ(cache.release(*a).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.reserve(*a, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.reserve(7, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.reserve(-1, 1).code(), absl::StatusCode::kInvalidArgument);
  checkInvariants(cache);
}

TEST(PagedKvCache, FreeListReuse) {
  PagedKvCache cache = makeCache(6, 2, 64 * 6);
  int a = *cache.addSequence();
  ASSERT_TRUE(cache.reserve(a, 3 * 64).ok());
  std::vector<int32_t> first(cache.blockTable(a), cache.blockTable(a) + 3);
  ASSERT_TRUE(cache.release(a).ok());
  // The id and the blocks come back, in the same order.
  int c = *cache.addSequence();
  EXPECT_EQ(c, a);
  ASSERT_TRUE(cache.reserve(c, 3 * 64).ok());
  EXPECT_EQ(std::vector<int32_t>(cache.blockTable(c), cache.blockTable(c) + 3),
            first);
  // The whole pool can be used by one sequence, then by another.
  ASSERT_TRUE(cache.reserve(c, 6 * 64).ok());
  EXPECT_EQ(cache.freeBlocks(), 0);
  ASSERT_TRUE(cache.release(c).ok());
  int d = *cache.addSequence();
  ASSERT_TRUE(cache.reserve(d, 6 * 64).ok());
  EXPECT_EQ(cache.freeBlocks(), 0);
  checkInvariants(cache);
}

TEST(PagedKvCache, OutOfCapacityLeavesStateUnchanged) {
  PagedKvCache cache = makeCache(5, 2, 1000);
  int a = *cache.addSequence(), b = *cache.addSequence();
  ASSERT_TRUE(cache.reserve(a, 130).ok()); // 3 blocks
  ASSERT_TRUE(cache.reserve(b, 10).ok());  // 1 block
  std::vector<int32_t> before(cache.blockTable(a),
                              cache.blockTable(a) + cache.tableStride());
  absl::Status s = cache.reserve(a, 64 * 5); // needs 2 more, 1 free
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("needs 2 more blocks"), std::string::npos) << s;
  EXPECT_NE(s.message().find("1 of 5 blocks are free"), std::string::npos) << s;
  EXPECT_EQ(cache.blocksHeld(a), 3);
  EXPECT_EQ(cache.freeBlocks(), 1);
  EXPECT_EQ(std::vector<int32_t>(cache.blockTable(a),
                                 cache.blockTable(a) + cache.tableStride()),
            before);
  // Beyond the per-sequence limit: out of range, nothing taken.
  EXPECT_EQ(cache.reserve(b, 1001).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache.blocksHeld(b), 1);
  // The last free block still goes to whoever fits.
  ASSERT_TRUE(cache.reserve(b, 128).ok());
  EXPECT_EQ(cache.freeBlocks(), 0);
  EXPECT_EQ(cache.reserve(b, 129).code(), absl::StatusCode::kResourceExhausted);
  // No more sequence ids.
  EXPECT_EQ(cache.addSequence().status().code(),
            absl::StatusCode::kResourceExhausted);
  checkInvariants(cache);
}

TEST(PagedKvCache, ManySequencesOfMixedLengths) {
  // Sequences grow token by token in an interleaved order (as in decode),
  // finish at random lengths and are replaced; the pool runs near full.
  constexpr int kSeqs = 24;
  PagedKvCache cache = makeCache(200, kSeqs, 2000, 16);
  std::mt19937 rng(3);
  std::vector<int64_t> length(kSeqs, -1), target(kSeqs, 0);
  int64_t exhausted = 0, finished = 0;
  for (int step = 0; step < 4000; ++step) {
    int slot = static_cast<int>(rng() % kSeqs);
    if (length[slot] < 0) {
      absl::StatusOr<int> id = cache.addSequence();
      ASSERT_TRUE(id.ok()) << id.status();
      ASSERT_EQ(length[*id], -1);
      length[*id] = 0;
      target[*id] = 1 + rng() % 400;
      continue;
    }
    int64_t grow = 1 + rng() % 40;
    int64_t want = std::min(length[slot] + grow, target[slot]);
    int64_t heldBefore = cache.blocksHeld(slot);
    absl::Status s = cache.reserve(slot, want);
    if (s.ok()) {
      length[slot] = want;
      ASSERT_GE(cache.tokenCapacity(slot), want);
      ASSERT_LT(cache.tokenCapacity(slot), want + 16);
    } else {
      ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
      ASSERT_EQ(cache.blocksHeld(slot), heldBefore);
      ++exhausted;
    }
    if (length[slot] == target[slot] || !s.ok()) {
      ASSERT_TRUE(cache.release(slot).ok());
      length[slot] = -1;
      ++finished;
    }
    if (step % 50 == 0)
      checkInvariants(cache);
  }
  checkInvariants(cache);
  EXPECT_GT(exhausted, 0); // the pool did run out
  EXPECT_GT(finished, 100);
  for (int seq = 0; seq < kSeqs; ++seq)
    if (length[seq] >= 0) {
      ASSERT_TRUE(cache.release(seq).ok());
    }
  EXPECT_EQ(cache.freeBlocks(), 200);
  EXPECT_EQ(cache.liveSequences(), 0);
}

TEST(PagedKvCache, BatchTablesWithReplacementMidBatch) {
  PagedKvCache cache = makeCache(12, 4, 64 * 8);
  int a = *cache.addSequence(), b = *cache.addSequence(),
      c = *cache.addSequence();
  ASSERT_TRUE(cache.reserve(a, 100).ok());
  ASSERT_TRUE(cache.reserve(b, 300).ok());
  ASSERT_TRUE(cache.reserve(c, 10).ok());
  std::vector<int> batch = {c, -1, a, b};
  absl::StatusOr<const int32_t *> t = cache.batchTables(batch);
  ASSERT_TRUE(t.ok()) << t.status();
  int64_t stride = cache.tableStride();
  auto row = [&](const int32_t *table, int64_t r) {
    return std::vector<int32_t>(table + r * stride, table + (r + 1) * stride);
  };
  auto own = [&](int seq) {
    return std::vector<int32_t>(cache.blockTable(seq),
                                cache.blockTable(seq) + stride);
  };
  EXPECT_EQ(row(*t, 0), own(c));
  EXPECT_EQ(row(*t, 1), std::vector<int32_t>(stride, -1));
  EXPECT_EQ(row(*t, 2), own(a));
  EXPECT_EQ(row(*t, 3), own(b));

  // Sequence b (row 3, the longest) finishes; d takes its place in the same
  // row and reuses its blocks; the others keep theirs.
  std::vector<int32_t> aBefore = own(a), cBefore = own(c);
  ASSERT_TRUE(cache.release(b).ok());
  int d = *cache.addSequence();
  ASSERT_TRUE(cache.reserve(d, 20).ok());
  batch[3] = d;
  ASSERT_TRUE(cache.reserve(a, 200).ok()); // a grows in the same step
  t = cache.batchTables(batch);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(row(*t, 3), own(d)); // the stale tail of b is cleared
  EXPECT_EQ(row(*t, 0), cBefore);
  EXPECT_EQ(row(*t, 2), own(a));
  EXPECT_TRUE(std::equal(aBefore.begin(), aBefore.begin() + 2, own(a).begin()));
  checkInvariants(cache);

  // Errors: a dead sequence, too many rows.
  ASSERT_FALSE(cache.isLive(3));
  batch[1] = 3;
  EXPECT_EQ(cache.batchTables(batch).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<int> tooMany(5, -1);
  EXPECT_EQ(cache.batchTables(tooMany).status().code(),
            absl::StatusCode::kInvalidArgument);
}

} // namespace
} // namespace kiln
