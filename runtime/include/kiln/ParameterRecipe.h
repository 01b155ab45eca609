// How a parameter's bytes follow from its checkpoint tensors: copied, or
// quantized to FP8 (codes or block scales) and/or sliced per head. The
// compiler runs it on embedded weights and the runtime at load on external
// ones, so both produce the same bytes.
#ifndef KILN_RUNTIME_PARAMETERRECIPE_H
#define KILN_RUNTIME_PARAMETERRECIPE_H

#include "frontend/DType.h"
#include "kiln/WeightTransforms.h"
#include "runtime/schema/kiln_generated.h"

#include "absl/status/status.h"

#include <cstddef>
#include <optional>
#include <span>
#include <vector>

namespace kiln {

struct ParameterRecipe {
  /// Quantize the source first; `scales` picks the block scales instead of
  /// the codes.
  std::optional<Fp8BlockQuant> quantize;
  bool scales = false;
  /// Then take a per-head slice.
  std::optional<HeadSlice> slice;

  bool derived() const { return quantize || slice; }
};

/// The checkpoint side: equally shaped tensors (one, or one per expert of a
/// stacked parameter), concatenated in order.
struct ParameterSource {
  std::vector<std::span<const std::byte>> tensors;
  artifact::ElementType type = artifact::ElementType::F32;
  std::vector<int64_t> shape; // of one tensor
};

/// The artifact element type of a checkpoint dtype, if it has one.
std::optional<artifact::ElementType> artifactElementType(frontend::DType type);

/// Writes the parameter of `type` and `shape` made from `source` by
/// `recipe` into `out` (its bytes). Fails, naming `name`, when the source's
/// dtype or shape cannot produce that parameter; a null `out` only checks
/// that.
absl::Status deriveParameter(const ParameterRecipe &recipe,
                             const ParameterSource &source,
                             artifact::ElementType type,
                             std::span<const int64_t> shape,
                             const std::string &name, std::byte *out);

} // namespace kiln

#endif // KILN_RUNTIME_PARAMETERRECIPE_H
