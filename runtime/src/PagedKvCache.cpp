#include "runtime/src/PagedKvCache.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

namespace kiln {

absl::StatusOr<PagedKvCache> PagedKvCache::create(Options options) {
  constexpr int64_t kMaxInt32 = std::numeric_limits<int32_t>::max();
  // Block ids and positions are int32 in the kernels' tables.
  if (options.numBlocks <= 0 || options.numBlocks > kMaxInt32)
    return absl::InvalidArgumentError("paged KV cache: block count " +
                                      std::to_string(options.numBlocks) +
                                      " must be in [1, 2^31)");
  if (options.blockTokens <= 0 || options.blockTokens > kMaxInt32)
    return absl::InvalidArgumentError("paged KV cache: tokens per block " +
                                      std::to_string(options.blockTokens) +
                                      " must be in [1, 2^31)");
  if (options.maxSequences <= 0)
    return absl::InvalidArgumentError(
        "paged KV cache: max sequences must be positive");
  if (options.maxSequenceTokens <= 0 || options.maxSequenceTokens > kMaxInt32)
    return absl::InvalidArgumentError(
        "paged KV cache: max sequence tokens " +
        std::to_string(options.maxSequenceTokens) + " must be in [1, 2^31)");
  if (options.slotEntries.empty())
    return absl::InvalidArgumentError("paged KV cache: no slots");

  PagedKvCache cache;
  cache.numBlocks_ = options.numBlocks;
  cache.blockTokens_ = options.blockTokens;
  cache.maxSequences_ = options.maxSequences;
  cache.maxSequenceTokens_ = options.maxSequenceTokens;
  cache.tableStride_ = (options.maxSequenceTokens + options.blockTokens - 1) /
                       options.blockTokens;
  for (int64_t entry : options.slotEntries) {
    int64_t floats = 0;
    size_t bytes = 0;
    if (entry <= 0 ||
        __builtin_mul_overflow(options.numBlocks * options.blockTokens, entry,
                               &floats) ||
        __builtin_mul_overflow(static_cast<size_t>(floats), sizeof(float),
                               &bytes))
      return absl::InvalidArgumentError(
          "paged KV cache: slot entry " + std::to_string(entry) +
          " is not positive or the slot's size overflows");
    cache.slotEntries_.push_back(entry);
    if (!options.hostStorage) {
      cache.storage_.emplace_back(nullptr);
      continue;
    }
    // Cache-line aligned so that rows of 16-float multiples are too.
    size_t aligned = (bytes + 63) / 64 * 64;
    float *data = static_cast<float *>(std::aligned_alloc(64, aligned));
    if (!data)
      return absl::ResourceExhaustedError("paged KV cache: cannot allocate " +
                                          std::to_string(aligned) +
                                          " bytes for a slot");
    // Touch the pages now rather than in the first decode steps.
    std::memset(data, 0, aligned);
    cache.storage_.emplace_back(data);
  }
  // The lowest ids are handed out first.
  cache.free_.resize(static_cast<size_t>(options.numBlocks));
  for (int64_t i = 0; i < options.numBlocks; ++i)
    cache.free_[static_cast<size_t>(i)] =
        static_cast<int32_t>(options.numBlocks - 1 - i);
  cache.freeIds_.resize(static_cast<size_t>(options.maxSequences));
  for (int i = 0; i < options.maxSequences; ++i)
    cache.freeIds_[static_cast<size_t>(i)] = options.maxSequences - 1 - i;
  size_t seqs = static_cast<size_t>(options.maxSequences);
  cache.live_.assign(seqs, 0);
  cache.held_.assign(seqs, 0);
  cache.tables_.assign(seqs * static_cast<size_t>(cache.tableStride_), -1);
  cache.batch_.assign(seqs * static_cast<size_t>(cache.tableStride_), -1);
  cache.batchFilled_.assign(seqs, 0);
  return cache;
}

absl::StatusOr<int> PagedKvCache::addSequence() {
  if (freeIds_.empty())
    return absl::ResourceExhaustedError("paged KV cache: all " +
                                        std::to_string(maxSequences_) +
                                        " sequences are in use");
  int seq = freeIds_.back();
  freeIds_.pop_back();
  live_[static_cast<size_t>(seq)] = 1;
  return seq;
}

absl::Status PagedKvCache::checkLive(int seq) const {
  if (!isLive(seq))
    return absl::InvalidArgumentError("paged KV cache: sequence " +
                                      std::to_string(seq) + " is not alive");
  return absl::OkStatus();
}

bool PagedKvCache::isLive(int seq) const {
  return seq >= 0 && seq < maxSequences_ && live_[static_cast<size_t>(seq)];
}

int PagedKvCache::liveSequences() const {
  return maxSequences_ - static_cast<int>(freeIds_.size());
}

absl::Status PagedKvCache::reserve(int seq, int64_t tokens) {
  if (absl::Status s = checkLive(seq); !s.ok())
    return s;
  if (tokens < 0 || tokens > maxSequenceTokens_)
    return absl::OutOfRangeError("paged KV cache: sequence " +
                                 std::to_string(seq) + " cannot hold " +
                                 std::to_string(tokens) + " tokens (at most " +
                                 std::to_string(maxSequenceTokens_) + ")");
  int64_t &held = held_[static_cast<size_t>(seq)];
  int64_t needed = (tokens + blockTokens_ - 1) / blockTokens_ - held;
  if (needed <= 0)
    return absl::OkStatus();
  if (needed > freeBlocks())
    return absl::ResourceExhaustedError(
        "paged KV cache: sequence " + std::to_string(seq) + " needs " +
        std::to_string(needed) + " more blocks of " +
        std::to_string(blockTokens_) + " tokens for " + std::to_string(tokens) +
        " tokens, " + std::to_string(freeBlocks()) + " of " +
        std::to_string(numBlocks_) + " blocks are free");
  int32_t *table = tables_.data() + seq * tableStride_;
  for (int64_t i = 0; i < needed; ++i) {
    table[held++] = free_.back();
    free_.pop_back();
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::release(int seq) {
  if (absl::Status s = checkLive(seq); !s.ok())
    return s;
  int64_t &held = held_[static_cast<size_t>(seq)];
  int32_t *table = tables_.data() + seq * tableStride_;
  // Returned in reverse so that the next sequence gets them in the same
  // order (its blocks ascend when this one's did).
  for (int64_t i = held - 1; i >= 0; --i) {
    free_.push_back(table[i]);
    table[i] = -1;
  }
  held = 0;
  live_[static_cast<size_t>(seq)] = 0;
  freeIds_.push_back(seq);
  return absl::OkStatus();
}

absl::StatusOr<const int32_t *>
PagedKvCache::batchTables(std::span<const int> sequences) {
  if (sequences.size() > static_cast<size_t>(maxSequences_))
    return absl::InvalidArgumentError(
        "paged KV cache: a batch of " + std::to_string(sequences.size()) +
        " rows exceeds " + std::to_string(maxSequences_));
  for (int seq : sequences)
    if (seq >= 0)
      if (absl::Status s = checkLive(seq); !s.ok())
        return s;
  for (size_t b = 0; b < sequences.size(); ++b) {
    int32_t *row = batch_.data() + static_cast<int64_t>(b) * tableStride_;
    int64_t n = sequences[b] < 0 ? 0 : held_[static_cast<size_t>(sequences[b])];
    if (n > 0)
      std::memcpy(row, blockTable(sequences[b]),
                  static_cast<size_t>(n) * sizeof(int32_t));
    // Only what earlier batches wrote beyond n needs clearing.
    int64_t &filled = batchFilled_[b];
    if (filled > n)
      std::fill(row + n, row + filled, -1);
    filled = n;
  }
  return batch_.data();
}

} // namespace kiln
