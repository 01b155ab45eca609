// A paged KV cache: tokens live in fixed-size blocks taken from one pool
// shared by all sequences, so a session holds as many tokens as the pool has
// in total instead of max batch x max context, and a finished sequence's
// blocks go to the next one (continuous batching).
//
// The cache has several slots (one per cached tensor of the plan: per layer
// the MLA latent, or K and V). Every slot has storage for all the blocks, and
// a block id names the same block in every slot: a sequence has a single
// block table that serves all its slots. Block `id` of slot `s` holds
// `blockTokens` rows of `slotEntry(s)` floats at slotData(s) + id *
// blockTokens * slotEntry(s); position p of a sequence is in block
// blockTable(seq)[p / blockTokens], row p % blockTokens (cpu::kvAppendPaged,
// cpu::attentionPaged).
//
// All memory (the blocks and every table) is allocated by `create`; nothing
// later allocates, so the cache can be used between decode steps. Not
// thread-safe: one caller manages the sequences, kernels only read the
// tables.
#ifndef KILN_RUNTIME_PAGEDKVCACHE_H
#define KILN_RUNTIME_PAGEDKVCACHE_H

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <vector>

namespace kiln {

class PagedKvCache {
public:
  struct Options {
    /// Floats per token of each slot (e.g. 576 for an MLA latent, or
    /// kvHeads * headDim for K or V).
    std::vector<int64_t> slotEntries;
    /// Blocks in the pool (each in every slot).
    int64_t numBlocks = 0;
    int64_t blockTokens = 64;
    /// Sequences alive at once; also the most rows of a batch table.
    int maxSequences = 1;
    /// Positions one sequence may reach (the model's context); sizes the
    /// block tables.
    int64_t maxSequenceTokens = 0;
    /// false: only the bookkeeping (blocks, tables); the slots' storage
    /// lives elsewhere (device memory) and slotData() is null.
    bool hostStorage = true;
  };

  static absl::StatusOr<PagedKvCache> create(Options options);

  PagedKvCache(PagedKvCache &&) = default;
  PagedKvCache &operator=(PagedKvCache &&) = default;

  /// Starts an empty sequence; returns its id, in [0, maxSequences()).
  /// ResourceExhausted when maxSequences() are alive.
  absl::StatusOr<int> addSequence();

  /// Makes sequence `seq` hold blocks for positions [0, tokens), taking the
  /// missing blocks from the free list (a sequence never shrinks). When the
  /// pool has too few free blocks (ResourceExhausted) or tokens exceeds
  /// maxSequenceTokens (OutOfRange), nothing changes.
  absl::Status reserve(int seq, int64_t tokens);

  /// Ends sequence `seq`: its blocks return to the free list and its id may
  /// be handed out again.
  absl::Status release(int seq);

  int64_t numBlocks() const { return numBlocks_; }
  int64_t freeBlocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t blockTokens() const { return blockTokens_; }
  int maxSequences() const { return maxSequences_; }
  int liveSequences() const;
  bool isLive(int seq) const;

  int numSlots() const { return static_cast<int>(slotEntries_.size()); }
  int64_t slotEntry(int slot) const { return slotEntries_[slot]; }
  float *slotData(int slot) { return storage_[slot].get(); }
  const float *slotData(int slot) const { return storage_[slot].get(); }

  /// Blocks held by `seq` and the positions they cover.
  int64_t blocksHeld(int seq) const { return held_[seq]; }
  int64_t tokenCapacity(int seq) const { return held_[seq] * blockTokens_; }
  /// The block ids of `seq`, blocksHeld(seq) of them (then -1). The tables
  /// of sequences 0, 1, ... are consecutive rows tableStride() apart, so a
  /// batch whose row b is sequence b can pass blockTable(0) to the kernels.
  const int32_t *blockTable(int seq) const {
    return tables_.data() + seq * tableStride_;
  }
  /// Entries per table row: the blocks of maxSequenceTokens positions.
  int64_t tableStride() const { return tableStride_; }
  /// The row of every slot that `position` of batch row `b` of `tables`
  /// (from batchTables) lies in.
  int64_t row(const int32_t *tables, int64_t b, int64_t position) const {
    return int64_t{tables[b * tableStride_ + position / blockTokens_]} *
               blockTokens_ +
           position % blockTokens_;
  }

  /// Gathers the tables of a batch, row b for sequences[b] (a negative id is
  /// a padding row, all -1), rows tableStride() apart, for the kernels. The
  /// table lives in the cache and is valid until the next call.
  /// InvalidArgument for more rows than maxSequences() or a sequence that is
  /// not alive.
  absl::StatusOr<const int32_t *> batchTables(std::span<const int> sequences);

private:
  struct Free {
    void operator()(float *p) const { std::free(p); }
  };

  PagedKvCache() = default;
  absl::Status checkLive(int seq) const;

  std::vector<int64_t> slotEntries_;
  std::vector<std::unique_ptr<float[], Free>> storage_;
  int64_t numBlocks_ = 0, blockTokens_ = 0, maxSequenceTokens_ = 0;
  int64_t tableStride_ = 0;
  int maxSequences_ = 0;
  std::vector<int32_t> free_;        // free block ids, next one at the back
  std::vector<int> freeIds_;         // free sequence ids, next one at the back
  std::vector<uint8_t> live_;        // per sequence id
  std::vector<int64_t> held_;        // blocks per sequence id
  std::vector<int32_t> tables_;      // [maxSequences, tableStride]
  std::vector<int32_t> batch_;       // [maxSequences, tableStride]
  std::vector<int64_t> batchFilled_; // ids written per batch row
};

} // namespace kiln

#endif // KILN_RUNTIME_PAGEDKVCACHE_H
