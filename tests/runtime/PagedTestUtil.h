// Block tables and append positions shared by the paged kernel tests.
#ifndef KILN_TESTS_RUNTIME_PAGEDTESTUTIL_H
#define KILN_TESTS_RUNTIME_PAGEDTESTUTIL_H

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <span>
#include <vector>

namespace kiln::cpu::pagedtest {

/// Each sequence holds the blocks of its kv length, drawn from a shuffled
/// pool with spare blocks; its table row is wider than needed (-1 past the
/// blocks held).
struct TestBlockTables {
  std::vector<int32_t> ids;
  int64_t stride = 0, numBlocks = 0;
};

inline TestBlockTables shuffledBlockTables(std::mt19937 &rng,
                                           std::span<const int32_t> kvLengths,
                                           int64_t maxTokens,
                                           int64_t blockTokens) {
  int64_t batch = static_cast<int64_t>(kvLengths.size());
  int64_t perSeq = (maxTokens + blockTokens - 1) / blockTokens;
  TestBlockTables t;
  t.stride = perSeq + 1;
  t.numBlocks = batch * perSeq + 3;
  std::vector<int32_t> pool(t.numBlocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  t.ids.assign(batch * t.stride, -1);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < (kvLengths[b] + blockTokens - 1) / blockTokens; ++i)
      t.ids[b * t.stride + i] = pool[b * perSeq + i];
  return t;
}

/// [batch, maxTokens] positions appending each sequence's first
/// kvLengths[b] tokens (-1, skipped, after them).
inline std::vector<int32_t> prefixPositions(std::span<const int32_t> kvLengths,
                                            int64_t maxTokens) {
  std::vector<int32_t> positions(kvLengths.size() * maxTokens);
  for (size_t b = 0; b < kvLengths.size(); ++b)
    for (int64_t p = 0; p < maxTokens; ++p)
      positions[b * maxTokens + p] = p < kvLengths[b] ? p : -1;
  return positions;
}

/// A paged cache slot holding each token's keys then values in one row
/// (values at offset kvHeads * dk), for contiguous k [batch, maxTokens,
/// kvHeads, dk] and v [.., dv]: rows of the tokens below each sequence's kv
/// length, placed through `tables`; the other rows hold `fill`.
inline std::vector<float>
pagedKeysAndValues(const TestBlockTables &tables,
                   std::span<const int32_t> kvLengths, int64_t maxTokens,
                   int64_t blockTokens, const std::vector<float> &k,
                   const std::vector<float> &v, int64_t kvHeads, int64_t dk,
                   int64_t dv, float fill) {
  int64_t entry = kvHeads * (dk + dv);
  std::vector<float> slot(tables.numBlocks * blockTokens * entry, fill);
  for (size_t b = 0; b < kvLengths.size(); ++b)
    for (int64_t j = 0; j < kvLengths[b]; ++j) {
      int64_t row = int64_t{tables.ids[b * tables.stride + j / blockTokens]} *
                        blockTokens +
                    j % blockTokens;
      int64_t token = static_cast<int64_t>(b) * maxTokens + j;
      std::copy_n(k.begin() + token * kvHeads * dk, kvHeads * dk,
                  slot.begin() + row * entry);
      std::copy_n(v.begin() + token * kvHeads * dv, kvHeads * dv,
                  slot.begin() + row * entry + kvHeads * dk);
    }
  return slot;
}

} // namespace kiln::cpu::pagedtest

#endif // KILN_TESTS_RUNTIME_PAGEDTESTUTIL_H
