// Transforms that derive a parameter from a checkpoint tensor, shared by the
// compiler (applied to embedded weights) and the runtime (applied at load to
// external ones), so both produce the same bytes.
#ifndef KILN_RUNTIME_WEIGHTTRANSFORMS_H
#define KILN_RUNTIME_WEIGHTTRANSFORMS_H

#include <cstddef>
#include <cstdint>

namespace kiln {

/// Rows [offset, offset + size) of every head of a [heads * rows, in]
/// matrix: [heads, size, in], or [heads, in, size] when transposed.
struct HeadSlice {
  int64_t heads = 0, rows = 0, offset = 0, size = 0;
  bool transpose = false;

  /// Elements of the source for a derived parameter with `in` columns.
  int64_t sourceElements(int64_t in) const { return heads * rows * in; }
};

/// Writes the derived [heads, size, in] (or transposed) elements of
/// `elementBytes` bytes each from `source` into `out`.
void applyHeadSlice(const HeadSlice &slice, const std::byte *source, int64_t in,
                    size_t elementBytes, std::byte *out);

} // namespace kiln

#endif // KILN_RUNTIME_WEIGHTTRANSFORMS_H
