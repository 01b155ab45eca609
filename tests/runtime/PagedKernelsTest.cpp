// The paged and contiguous attention kernels against a naive
// double-precision reference on the same data: paged caches are scattered
// into randomly permuted blocks of a pool whose unused rows (and a guard
// block before it, which a -1 table entry would hit) hold NaN, so any read
// outside the keys a query may see shows up in the output.
//
// Tolerance: queries, keys and values are in [-1, 1], so scaled scores are
// below sqrt(dk) / 3 in magnitude for typical draws and outputs are convex
// combinations of values in [-1, 1]. fp32 score dot products (up to 576
// terms), the 2-ulp exp and the sums over up to 20000 keys (in 64-key
// blocks, rescaled per block) stay within a few 1e-6 of the exact result;
// 2e-5 absolute (relative to the output scale) leaves a margin while any
// wrong key, mask or row lands far outside it.
#include "runtime/src/PagedKvCache.h"
#include "runtime/src/cpu/Kernels.h"
#include "tests/runtime/ForEachIsa.h"
#include "tests/runtime/PagedTestUtil.h"

#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace kiln::cpu {
namespace {

constexpr double kTol = 2e-5;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> randomFloats(std::mt19937 &rng, size_t n) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

/// Runs `body` with `threads` OpenMP threads (0: the default), which sets
/// how far attentionPaged splits the context.
template <typename F> void withThreads(int threads, F body) {
  int before = omp_get_max_threads();
  if (threads > 0)
    omp_set_num_threads(threads);
  SCOPED_TRACE("threads " + std::to_string(omp_get_max_threads()));
  body();
  omp_set_num_threads(before);
}

/// A pool of `numBlocks` blocks of `entry` floats per row, all NaN, after a
/// NaN guard block (what block id -1 addresses).
struct Pool {
  std::vector<float> storage;
  int64_t blockFloats;
  Pool(int64_t numBlocks, int64_t blockTokens, int64_t entry)
      : storage((numBlocks + 1) * blockTokens * entry, kNaN),
        blockFloats(blockTokens * entry) {}
  float *data() { return storage.data() + blockFloats; }
};

/// How K and V are stored.
enum class Layout {
  Separate, // a K slot [kvHeads, dk] and a V slot [kvHeads, dv]
  Fused,    // one slot [kvHeads, dk] ++ [kvHeads, dv]: V at a column offset
  Latent,   // absorbed MLA: one slot of dk, V its first dv columns
};

struct PagedCase {
  int64_t batch, seq, heads, kvHeads, dk, dv, maxTokens;
  std::vector<int32_t> positions, kvLengths;
  Layout layout = Layout::Separate;
  int64_t blockTokens = 64;
};

/// Attention in double precision over contiguous caches [batch, maxTokens,
/// kvHeads, d], straight from the definition.
std::vector<double> naiveAttention(const PagedCase &c,
                                   const std::vector<float> &q,
                                   const std::vector<float> &k,
                                   const std::vector<float> &v, double scale) {
  std::vector<double> out(c.batch * c.seq * c.heads * c.dv, 0.0);
  int64_t group = c.heads / c.kvHeads;
  for (int64_t b = 0; b < c.batch; ++b)
    for (int64_t s = 0; s < c.seq; ++s) {
      int64_t row = b * c.seq + s, pos = c.positions[row];
      int64_t n = pos < 0 ? 0 : std::min<int64_t>(pos + 1, c.kvLengths[b]);
      for (int64_t h = 0; h < c.heads; ++h) {
        int64_t g = h / group;
        const float *qh = q.data() + (row * c.heads + h) * c.dk;
        std::vector<double> scores(n);
        double max = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < n; ++j) {
          const float *kj =
              k.data() + ((b * c.maxTokens + j) * c.kvHeads + g) * c.dk;
          double dot = 0.0;
          for (int64_t i = 0; i < c.dk; ++i)
            dot += static_cast<double>(qh[i]) * kj[i];
          scores[j] = dot * scale;
          max = std::max(max, scores[j]);
        }
        double sum = 0.0;
        for (double &x : scores) {
          x = std::exp(x - max);
          sum += x;
        }
        double *o = out.data() + (row * c.heads + h) * c.dv;
        for (int64_t j = 0; j < n; ++j) {
          const float *vj =
              v.data() + ((b * c.maxTokens + j) * c.kvHeads + g) * c.dv;
          for (int64_t i = 0; i < c.dv; ++i)
            o[i] += scores[j] / sum * vj[i];
        }
      }
    }
  return out;
}

void checkPaged(const PagedCase &c, uint32_t seed,
                std::initializer_list<int> threadCounts = {0}) {
  std::mt19937 rng(seed);
  int64_t kRowFloats = c.kvHeads * c.dk, vRowFloats = c.kvHeads * c.dv;
  // Contiguous caches [batch, maxTokens, kvHeads, d], as `attention` reads.
  std::vector<float> q = randomFloats(rng, c.batch * c.seq * c.heads * c.dk);
  std::vector<float> k = randomFloats(rng, c.batch * c.maxTokens * kRowFloats);
  std::vector<float> v(c.batch * c.maxTokens * vRowFloats);
  if (c.layout == Layout::Latent) {
    ASSERT_EQ(c.kvHeads, 1);
    for (int64_t t = 0; t < c.batch * c.maxTokens; ++t)
      std::copy_n(k.begin() + t * c.dk, c.dv, v.begin() + t * c.dv);
  } else {
    v = randomFloats(rng, v.size());
  }
  float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dk)));
  std::vector<double> ref = naiveAttention(c, q, k, v, scale);
  auto compare = [&](const std::vector<float> &out) {
    for (size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(out[i], ref[i], kTol) << "at " << i;
  };
  forEachIsa([&] {
    std::vector<float> out(ref.size(), -7.0f);
    attention(q.data(), k.data(), v.data(), c.positions.data(),
              c.kvLengths.data(), c.batch, c.seq, c.heads, c.kvHeads, c.dk,
              c.dv, c.maxTokens * kRowFloats, c.maxTokens * vRowFloats, scale,
              out.data());
    SCOPED_TRACE("contiguous");
    compare(out);
  });

  int64_t bt = c.blockTokens;
  pagedtest::TestBlockTables t =
      pagedtest::shuffledBlockTables(rng, c.kvLengths, c.maxTokens, bt);
  std::vector<int32_t> &tables = t.ids;
  int64_t stride = t.stride, numBlocks = t.numBlocks;

  // Append each sequence's first kvLengths[b] tokens: the rest stays NaN.
  std::vector<int32_t> appendPos =
      pagedtest::prefixPositions(c.kvLengths, c.maxTokens);
  int64_t kEntry =
      c.layout == Layout::Fused ? kRowFloats + vRowFloats : kRowFloats;
  Pool kPool(numBlocks, bt, kEntry), vPool(numBlocks, bt, vRowFloats);
  PagedView kView{kPool.data(), kEntry, c.dk, 0};
  PagedView vView;
  if (c.layout == Layout::Fused) {
    std::vector<float> fused(c.batch * c.maxTokens * kEntry);
    for (int64_t t = 0; t < c.batch * c.maxTokens; ++t) {
      std::copy_n(k.begin() + t * kRowFloats, kRowFloats,
                  fused.begin() + t * kEntry);
      std::copy_n(v.begin() + t * vRowFloats, vRowFloats,
                  fused.begin() + t * kEntry + kRowFloats);
    }
    kvAppendPaged(fused.data(), appendPos.data(), c.batch, c.maxTokens, kEntry,
                  kPool.data(), tables.data(), stride, bt);
    vView = {kPool.data(), kEntry, c.dv, kRowFloats};
  } else {
    kvAppendPaged(k.data(), appendPos.data(), c.batch, c.maxTokens, kEntry,
                  kPool.data(), tables.data(), stride, bt);
    if (c.layout == Layout::Latent) {
      vView = {kPool.data(), kEntry, c.dv, 0};
    } else {
      kvAppendPaged(v.data(), appendPos.data(), c.batch, c.maxTokens,
                    vRowFloats, vPool.data(), tables.data(), stride, bt);
      vView = {vPool.data(), vRowFloats, c.dv, 0};
    }
  }

  BlockTables bts{tables.data(), stride, bt};
  SCOPED_TRACE("paged");
  forEachIsa([&] {
    // No scratch: never split.
    std::vector<float> out(ref.size(), -7.0f);
    attentionPaged(q.data(), kView, vView, bts, c.positions.data(),
                   c.kvLengths.data(), c.batch, c.seq, c.heads, c.kvHeads, c.dk,
                   c.dv, scale, out.data(), nullptr, 0);
    compare(out);
    for (int threads : threadCounts)
      withThreads(threads, [&] {
        std::vector<float> scratch(
            attentionPagedScratch(c.batch * c.seq, c.heads, c.dv), kNaN);
        std::vector<float> split(ref.size(), -7.0f);
        attentionPaged(q.data(), kView, vView, bts, c.positions.data(),
                       c.kvLengths.data(), c.batch, c.seq, c.heads, c.kvHeads,
                       c.dk, c.dv, scale, split.data(), scratch.data(),
                       static_cast<int64_t>(scratch.size()));
        compare(split);
      });
  });
}

TEST(PagedKernels, KvAppendPagedPlacesRows) {
  std::mt19937 rng(1);
  int64_t batch = 3, seq = 5, entry = 7, bt = 4, stride = 6, numBlocks = 20;
  std::vector<float> x = randomFloats(rng, batch * seq * entry);
  // A prefill continuing at 2, a padded row, a decode-like row crossing a
  // block boundary.
  std::vector<int32_t> positions = {2,  3,  4,  5,  6,  -1, 0, 1,
                                    -1, -1, 20, 21, 22, 23, 3};
  std::vector<int32_t> tables(batch * stride, -1);
  tables[0 * stride + 0] = 7;
  tables[0 * stride + 1] = 2;
  tables[1 * stride + 0] = 11;
  tables[2 * stride + 0] = 0;
  tables[2 * stride + 5] = 19;
  Pool pool(numBlocks, bt, entry);
  kvAppendPaged(x.data(), positions.data(), batch, seq, entry, pool.data(),
                tables.data(), stride, bt);
  std::vector<bool> written(numBlocks * bt, false);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s) {
      int32_t p = positions[b * seq + s];
      if (p < 0)
        continue;
      int64_t row = tables[b * stride + p / bt] * bt + p % bt;
      written[row] = true;
      for (int64_t i = 0; i < entry; ++i)
        ASSERT_EQ(pool.data()[row * entry + i], x[(b * seq + s) * entry + i])
            << "b " << b << " s " << s;
    }
  for (size_t i = 0; i < pool.storage.size(); ++i) {
    int64_t row = static_cast<int64_t>(i) / entry - bt; // after the guard
    if (row < 0 || !written[row]) {
      ASSERT_TRUE(std::isnan(pool.storage[i])) << "at " << i;
    }
  }
}

TEST(PagedKernels, MhaMatchesContiguous) {
  // Sequence 1 is a prefill continuing a cache; sequence 0 has a padded
  // query. Small blocks so that keys span several.
  checkPaged({2, 3, 4, 4, 32, 24, 50, {40, 41, -1, 0, 1, 2}, {42, 3}}, 2,
             {0, 3});
  checkPaged({2,
              3,
              4,
              4,
              32,
              24,
              50,
              {40, 41, -1, 0, 1, 2},
              {42, 3},
              Layout::Separate,
              16},
             3);
}

TEST(PagedKernels, GqaMatchesContiguous) {
  // K and V of all heads in one slot: V at a column offset.
  checkPaged({2,
              2,
              8,
              2,
              16,
              12,
              200,
              {150, 151, 70, 71},
              {152, 72},
              Layout::Fused,
              16},
             4, {0, 5});
  checkPaged({1, 1, 12, 3, 37, 29, 300, {250}, {251}, Layout::Separate, 64}, 5,
             {0, 8});
}

TEST(PagedKernels, MqaAbsorbedMla) {
  // kvHeads = 1, dk = 576, V the first 512 columns of the latent, more
  // heads than one work item holds, more keys than one softmax block.
  checkPaged({1, 2, 20, 1, 576, 512, 300, {268, 269}, {270}, Layout::Latent}, 6,
             {0, 4});
  checkPaged(
      {2, 1, 16, 1, 576, 512, 700, {650, 99}, {651, 100}, Layout::Latent, 64},
      7, {0, 3, 16});
}

TEST(PagedKernels, PaddingAndMixedKvLengths) {
  // kvLengths shorter than positions + 1 cap the keys; negative positions
  // and an empty cache (a table of -1 only) give zeros.
  checkPaged({4,
              2,
              4,
              2,
              8,
              8,
              300,
              {9, 12, -1, -5, 3, 7, 280, 281},
              {5, 300, 0, 282},
              Layout::Separate,
              16},
             8, {0, 7});
  checkPaged({3,
              1,
              16,
              1,
              64,
              48,
              2000,
              {1999, -1, 700},
              {2000, 0, 701},
              Layout::Latent,
              32},
             9, {0, 2, 5, 64});
}

TEST(PagedKernels, LongContextSplits) {
  // Decode at batch 1 with 16 heads over 20000 tokens of absorbed MLA: one
  // work item, so the context is split by the thread count (64 reaches the
  // split cap).
  checkPaged({1, 1, 16, 1, 576, 512, 20000, {19999}, {20000}, Layout::Latent},
             10, {0, 2, 7, 64});
  // Two queries of a prefill chunk and a short sequence beside a long one.
  checkPaged({2,
              2,
              16,
              2,
              64,
              64,
              9000,
              {8998, 8999, 600, -1},
              {9000, 601},
              Layout::Separate,
              64},
             11, {0, 16});
}

std::vector<int32_t> range(int32_t from, int32_t count) {
  std::vector<int32_t> r(count);
  std::iota(r.begin(), r.end(), from);
  return r;
}

std::vector<int32_t> concatenated(std::vector<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const std::vector<int32_t> &p : parts)
    all.insert(all.end(), p.begin(), p.end());
  return all;
}

TEST(PagedKernels, PrefillTilesRaggedAndStraddling) {
  // The tiny model's prefill heads (one query head per kv head): tiles of 32
  // positions, so 45 is one whole tile and a partial one. Sequence 0 starts
  // a cache, sequence 1 continues one across the 64-key block boundary (its
  // tiles straddle the causal diagonal mid-block), sequence 2 is a shorter
  // prompt padded at the end.
  PagedCase c{3,
              45,
              4,
              4,
              24,
              16,
              200,
              concatenated({range(0, 45), range(50, 45), range(0, 20),
                            std::vector<int32_t>(25, -1)}),
              {45, 95, 20},
              Layout::Separate,
              16};
  checkPaged(c, 13, {0, 3});
  // Positions out of order within a tile, some repeated, one padded.
  checkPaged({1, 6, 2, 2, 8, 8, 16, {7, 2, -1, 9, 0, 7}, {10}}, 14);
}

TEST(PagedKernels, OneRowTilesUseDotProducts) {
  // Decode of one query head per kv head: the contiguous kernel's tiles have
  // a single row. An odd head dimension leaves a scalar tail.
  checkPaged({2, 1, 4, 4, 45, 24, 100, {70, 99}, {71, 100}}, 18, {0, 3});
}

TEST(PagedKernels, PrefillTilesGqaGroups) {
  // Groups of 6 query heads: tiles of 5 positions x 6 heads, seq 7 leaves a
  // tile of 2 positions. Odd head dimensions exercise the column tails;
  // sequence 1's kv length caps its later positions.
  checkPaged({2,
              7,
              12,
              2,
              37,
              29,
              150,
              concatenated({range(100, 7), range(0, 7)}),
              {107, 5},
              Layout::Fused,
              16},
             15, {0, 4});
  // 40 heads on one kv head: a tile of 32 heads and one of 8, one position
  // each.
  checkPaged({1, 3, 40, 1, 64, 48, 100, range(70, 3), {73}}, 16);
}

TEST(PagedKernels, PrefillTilesAbsorbedMla) {
  // 16 heads x 2 positions per tile: 32 rows of 576 dimensions are packed
  // in two chunks per key block.
  checkPaged({2,
              5,
              16,
              1,
              576,
              512,
              200,
              concatenated({range(130, 5), range(0, 3), {-1, -1}}),
              {135, 3},
              Layout::Latent,
              64},
             17, {0, 2});
}

/// Decode driven by PagedKvCache: sequences of mixed lengths share a pool;
/// one finishes mid-batch and a new one takes its row (and blocks). Every
/// step's attention equals the contiguous kernel over per-row caches.
TEST(PagedKernels, ContinuousBatchingThroughTheCache) {
  constexpr int64_t kHeads = 4, kKvHeads = 2, kD = 16, kMax = 120, kBt = 8;
  constexpr int64_t kBatch = 3, kEntry = kKvHeads * kD;
  absl::StatusOr<PagedKvCache> made =
      PagedKvCache::create({.slotEntries = {kEntry, kEntry},
                            .numBlocks = 40,
                            .blockTokens = kBt,
                            .maxSequences = 4,
                            .maxSequenceTokens = kMax});
  ASSERT_TRUE(made.ok()) << made.status();
  PagedKvCache &cache = *made;
  std::mt19937 rng(12);
  // Contiguous mirrors per batch row.
  std::vector<float> kRef(kBatch * kMax * kEntry), vRef(kRef.size());
  std::vector<int> rows(kBatch);
  std::vector<int32_t> lengths = {30, 5, 61};
  for (int64_t b = 0; b < kBatch; ++b)
    rows[b] = *cache.addSequence();

  // Appends `count` tokens to every row from position lengths[b] - count
  // (rows with fewer get padding), as prefill or decode.
  auto append = [&](std::vector<int32_t> counts) {
    int64_t seq = *std::max_element(counts.begin(), counts.end());
    std::vector<int32_t> positions(kBatch * seq, -1);
    for (int64_t b = 0; b < kBatch; ++b) {
      ASSERT_TRUE(cache.reserve(rows[b], lengths[b]).ok());
      for (int64_t s = 0; s < counts[b]; ++s)
        positions[b * seq + s] = lengths[b] - counts[b] + s;
    }
    absl::StatusOr<const int32_t *> tables = cache.batchTables(rows);
    ASSERT_TRUE(tables.ok());
    for (int slot = 0; slot < 2; ++slot) {
      std::vector<float> x = randomFloats(rng, kBatch * seq * kEntry);
      std::vector<float> &mirror = slot == 0 ? kRef : vRef;
      for (int64_t t = 0; t < kBatch * seq; ++t)
        if (positions[t] >= 0)
          std::copy_n(x.begin() + t * kEntry, kEntry,
                      mirror.begin() +
                          ((t / seq) * kMax + positions[t]) * kEntry);
      kvAppendPaged(x.data(), positions.data(), kBatch, seq, kEntry,
                    cache.slotData(slot), *tables, cache.tableStride(), kBt);
    }
  };
  auto decodeAndCheck = [&] {
    std::vector<int32_t> positions(kBatch);
    for (int64_t b = 0; b < kBatch; ++b)
      positions[b] = lengths[b] - 1;
    std::vector<float> q = randomFloats(rng, kBatch * kHeads * kD);
    std::vector<float> ref(kBatch * kHeads * kD), out(ref.size());
    attention(q.data(), kRef.data(), vRef.data(), positions.data(),
              lengths.data(), kBatch, 1, kHeads, kKvHeads, kD, kD,
              kMax * kEntry, kMax * kEntry, 0.25f, ref.data());
    absl::StatusOr<const int32_t *> tables = cache.batchTables(rows);
    ASSERT_TRUE(tables.ok());
    std::vector<float> scratch(attentionPagedScratch(kBatch, kHeads, kD));
    attentionPaged(q.data(), {cache.slotData(0), kEntry, kD, 0},
                   {cache.slotData(1), kEntry, kD, 0},
                   {*tables, cache.tableStride(), kBt}, positions.data(),
                   lengths.data(), kBatch, 1, kHeads, kKvHeads, kD, kD, 0.25f,
                   out.data(), scratch.data(),
                   static_cast<int64_t>(scratch.size()));
    for (size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(out[i], ref[i], kTol) << "at " << i;
  };

  append({30, 5, 61}); // prefill
  for (int step = 0; step < 20; ++step) {
    if (step == 8) {
      // Row 1 finishes; a new sequence with a 40-token prompt takes it.
      ASSERT_TRUE(cache.release(rows[1]).ok());
      rows[1] = *cache.addSequence();
      lengths[1] = 40;
      append({0, 40, 0});
    }
    for (int32_t &n : lengths)
      ++n;
    append({1, 1, 1});
    decodeAndCheck();
  }
}

} // namespace
} // namespace kiln::cpu
