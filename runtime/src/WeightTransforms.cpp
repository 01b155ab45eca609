#include "kiln/WeightTransforms.h"

#include <cstring>

namespace kiln {

void applyHeadSlice(const HeadSlice &s, const std::byte *source, int64_t in,
                    size_t elementBytes, std::byte *out) {
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t r = 0; r < s.size; ++r) {
      const std::byte *row =
          source + ((h * s.rows + s.offset + r) * in) * elementBytes;
      if (!s.transpose) {
        std::memcpy(out + ((h * s.size + r) * in) * elementBytes, row,
                    static_cast<size_t>(in) * elementBytes);
        continue;
      }
      for (int64_t c = 0; c < in; ++c)
        std::memcpy(out + ((h * in + c) * s.size + r) * elementBytes,
                    row + c * elementBytes, elementBytes);
    }
}

} // namespace kiln
