// Kernels over a packed paged latent cache (`--kv-cache-dtype=fp8|bf16`):
// absorbed MLA caches one row per token, [c_kv | k_pe], and a packed row
// stores its first quantColumns values as e4m3 codes with one fp32 scale per
// 128 of them and the rest as bf16. FP8 takes c_kv's columns (656 bytes per
// token and layer for DeepSeek-V3's 512 + 64, against 2,304 in fp32); bf16
// takes none (1,152 bytes). Paging is as in Kernels.h's paged kernels, with
// rows of PackedRowLayout::rowBytes() bytes: row r of block `id` starts at
// slotData + (id * blockTokens + r) * rowBytes().
#ifndef KILN_RUNTIME_CPU_PAGEDPACKED_H
#define KILN_RUNTIME_CPU_PAGEDPACKED_H

#include "runtime/src/cpu/Kernels.h"

#include <cstddef>
#include <cstdint>

namespace kiln::cpu {

/// Most columns (dk) attentionPagedPacked takes: its key tile is on the stack.
inline constexpr int64_t kMaxPackedColumns = 10240;

/// Row layout of a packed latent cache slot: `quantColumns` e4m3 codes, then
/// one fp32 dequantization scale per 128 codes (the last group may be
/// partial), then `bf16Columns` bf16 values, padded to a multiple of 4 bytes
/// so that the scales of every row stay aligned. No columns: an f32 slot.
struct PackedRowLayout {
  int64_t quantColumns = 0, bf16Columns = 0;
  /// Codes that share one scale.
  static constexpr int64_t kGroup = 128;

  int64_t scaleGroups() const { return (quantColumns + kGroup - 1) / kGroup; }
  int64_t scaleOffset() const { return (quantColumns + 3) / 4 * 4; }
  int64_t bf16Offset() const { return scaleOffset() + 4 * scaleGroups(); }
  int64_t rowBytes() const {
    return (bf16Offset() + 2 * bf16Columns + 3) / 4 * 4;
  }
  int64_t columns() const { return quantColumns + bf16Columns; }
  bool packed() const { return columns() > 0; }
};

/// kvAppendPaged for a packed latent slot: x[b, s, :] (columns() floats) is
/// quantized into position positions[b, s] of sequence b; negative positions
/// (padding) are skipped. Each group of up to 128 quantized values gets the
/// scale s = max(amax, 1e-4) / 448 and codes floatToE4m3(x / s); the bf16
/// columns are rounded to nearest even.
void kvAppendPagedPacked(const float *x, const int32_t *positions,
                         int64_t batch, int64_t seq, PackedRowLayout layout,
                         std::byte *slotData, const int32_t *blockTables,
                         int64_t tableStride, int64_t blockTokens);

/// Dequantizes columns [column, column + count) of positions [0, tokens) of
/// one sequence (its block-table row `table`) into out[t * count + c].
void gatherPagedPacked(const std::byte *slotData, PackedRowLayout layout,
                       const int32_t *table, int64_t blockTokens,
                       int64_t tokens, int64_t column, int64_t count,
                       float *out);

/// attentionPaged over a packed latent slot with one kv head: keys are whole
/// dequantized rows (dk == layout.columns() <= kMaxPackedColumns), values
/// their first dv columns. Same semantics, scratch
/// (attentionPagedScratch) and context splitting as attentionPaged; the result
/// matches attention in fp32 on the dequantized rows.
void attentionPagedPacked(const float *q, const std::byte *slotData,
                          PackedRowLayout layout, BlockTables tables,
                          const int32_t *positions, const int32_t *kvLengths,
                          int64_t batch, int64_t seq, int64_t heads, int64_t dk,
                          int64_t dv, float scale, float *out, float *scratch,
                          int64_t scratchFloats);

} // namespace kiln::cpu

#endif // KILN_RUNTIME_CPU_PAGEDPACKED_H
