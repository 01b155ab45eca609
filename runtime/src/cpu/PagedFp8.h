// Kernels over an FP8 paged latent cache (`--kv-cache-dtype=fp8`): absorbed
// MLA caches one row per token, [c_kv | k_pe], and this cache stores c_kv as
// e4m3 codes with one fp32 scale per 128 of them and k_pe as bf16 (656 bytes
// per token and layer for DeepSeek-V3's 512 + 64, against 2,304 in fp32).
// Paging is as in Kernels.h's paged kernels, with rows of
// Fp8LatentLayout::rowBytes() bytes: row r of block `id` starts at slotData +
// (id * blockTokens + r) * rowBytes().
#ifndef KILN_RUNTIME_CPU_PAGEDFP8_H
#define KILN_RUNTIME_CPU_PAGEDFP8_H

#include "runtime/src/cpu/Kernels.h"

#include <cstddef>
#include <cstdint>

namespace kiln::cpu {

/// Most columns (dk) attentionPagedFp8 takes: its key tile is on the stack.
inline constexpr int64_t kMaxFp8LatentColumns = 10240;

/// Row layout of an FP8 latent cache slot: `quantColumns` e4m3 codes, then
/// one fp32 dequantization scale per 128 codes (the last group may be
/// partial), then `bf16Columns` bf16 values, padded to a multiple of 4 bytes
/// so that the scales of every row stay aligned.
struct Fp8LatentLayout {
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
};

/// kvAppendPaged for an FP8 latent slot: x[b, s, :] (columns() floats) is
/// quantized into position positions[b, s] of sequence b; negative positions
/// (padding) are skipped. Each group of up to 128 quantized values gets the
/// scale s = max(amax, 1e-4) / 448 and codes floatToE4m3(x / s); the bf16
/// columns are rounded to nearest even.
void kvAppendPagedFp8(const float *x, const int32_t *positions, int64_t batch,
                      int64_t seq, Fp8LatentLayout layout, std::byte *slotData,
                      const int32_t *blockTables, int64_t tableStride,
                      int64_t blockTokens);

/// Dequantizes columns [column, column + count) of positions [0, tokens) of
/// one sequence (its block-table row `table`) into out[t * count + c].
void gatherPagedFp8(const std::byte *slotData, Fp8LatentLayout layout,
                    const int32_t *table, int64_t blockTokens, int64_t tokens,
                    int64_t column, int64_t count, float *out);

/// attentionPaged over an FP8 latent slot with one kv head: keys are whole
/// dequantized rows (dk == layout.columns() <= kMaxFp8LatentColumns), values
/// their first dv <= quantColumns columns. Same semantics, scratch
/// (attentionPagedScratch) and context splitting as attentionPaged; the result
/// matches attention in fp32 on the dequantized rows.
void attentionPagedFp8(const float *q, const std::byte *slotData,
                       Fp8LatentLayout layout, BlockTables tables,
                       const int32_t *positions, const int32_t *kvLengths,
                       int64_t batch, int64_t seq, int64_t heads, int64_t dk,
                       int64_t dv, float scale, float *out, float *scratch,
                       int64_t scratchFloats);

} // namespace kiln::cpu

#endif // KILN_RUNTIME_CPU_PAGEDFP8_H
