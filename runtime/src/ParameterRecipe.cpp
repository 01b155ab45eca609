#include "kiln/ParameterRecipe.h"

#include "kiln/PlanShapes.h"

#include <cstring>
#include <string>

namespace kiln {
namespace {

namespace art = artifact;

std::optional<FloatFormat> floatFormat(art::ElementType type) {
  switch (type) {
  case art::ElementType::F32:
    return FloatFormat::F32;
  case art::ElementType::BF16:
    return FloatFormat::BF16;
  case art::ElementType::F16:
    return FloatFormat::F16;
  default:
    return std::nullopt;
  }
}

uint64_t product(std::span<const int64_t> dims) {
  uint64_t n = 1;
  for (int64_t d : dims)
    n *= static_cast<uint64_t>(d);
  return n;
}

} // namespace

std::optional<art::ElementType> artifactElementType(frontend::DType type) {
  switch (type) {
  case frontend::DType::F32:
    return art::ElementType::F32;
  case frontend::DType::BF16:
    return art::ElementType::BF16;
  case frontend::DType::F16:
    return art::ElementType::F16;
  case frontend::DType::F8_E4M3:
    return art::ElementType::F8E4M3;
  case frontend::DType::I32:
    return art::ElementType::I32;
  default:
    return std::nullopt;
  }
}

absl::Status deriveParameter(const ParameterRecipe &recipe,
                             const ParameterSource &source,
                             art::ElementType type,
                             std::span<const int64_t> shape,
                             const std::string &name, std::byte *out) {
  auto fail = [&](const std::string &why) {
    return absl::InvalidArgumentError("parameter " + name + ": " + why);
  };
  if (source.tensors.empty() || source.shape.empty())
    return fail("no source tensor");
  for (int64_t d : source.shape)
    if (d < 1)
      return fail("a source tensor has an empty dimension");
  uint64_t sourceElements = product(source.shape);
  uint64_t sourceBytes = sourceElements * art::elementBytes(source.type);
  for (std::span<const std::byte> t : source.tensors)
    if (t.size() != sourceBytes)
      return fail("a source tensor holds " + std::to_string(t.size()) +
                  " bytes, its shape needs " + std::to_string(sourceBytes));
  uint64_t outBytes = product(shape) * art::elementBytes(type);

  // The intermediate: [rows, cols] of `stage` elements (the concatenated
  // sources, or their FP8 codes or scales). Shapes first, so that a
  // mismatch fails before any work.
  art::ElementType stage = source.type;
  int64_t cols = source.shape.back();
  uint64_t rows = sourceElements * source.tensors.size() / cols;
  int64_t matrixRows = 0, matrices = 0;
  std::optional<FloatFormat> format;
  if (recipe.quantize) {
    const Fp8BlockQuant &q = *recipe.quantize;
    format = floatFormat(source.type);
    if (!format)
      return fail(std::string("FP8 quantization needs a bf16, f16 or f32 "
                              "source, got ") +
                  art::EnumNameElementType(source.type));
    if (source.shape.size() < 2 || q.blockRows < 1 || q.blockCols < 1)
      return fail("FP8 quantization needs [..., rows, cols] sources and "
                  "positive blocks");
    matrixRows = source.shape[source.shape.size() - 2];
    matrices = static_cast<int64_t>(sourceElements / (matrixRows * cols));
    stage = recipe.scales ? art::ElementType::F32 : art::ElementType::F8E4M3;
    if (recipe.scales) {
      int64_t gridRows = (matrixRows + q.blockRows - 1) / q.blockRows;
      cols = (cols + q.blockCols - 1) / q.blockCols;
      rows = static_cast<uint64_t>(matrices * gridRows) * source.tensors.size();
    }
  }
  if (stage != type)
    return fail(std::string("the checkpoint gives ") +
                art::EnumNameElementType(stage) + ", the artifact expects " +
                art::EnumNameElementType(type));
  size_t elementSize = art::elementBytes(stage);
  if (recipe.slice) {
    const HeadSlice &s = *recipe.slice;
    uint64_t derivedBytes =
        static_cast<uint64_t>(s.heads * s.size * cols) * elementSize;
    if (source.tensors.size() != 1 ||
        rows * cols != static_cast<uint64_t>(s.sourceElements(cols)) ||
        derivedBytes != outBytes)
      return fail("the head_slice transform does not fit its " +
                  std::to_string(rows) + " x " + std::to_string(cols) +
                  " source");
  } else if (rows * cols * elementSize != outBytes) {
    return fail("the checkpoint holds " + std::to_string(rows * cols) +
                " elements, the artifact expects " +
                std::to_string(outBytes / elementSize));
  }
  if (!out)
    return absl::OkStatus();

  // Stage into `out` directly unless a slice follows.
  std::vector<std::byte> staged;
  std::byte *stageAt = out;
  if (recipe.slice && (recipe.quantize || source.tensors.size() > 1)) {
    staged.resize(rows * cols * elementSize);
    stageAt = staged.data();
  }
  const std::byte *data = source.tensors.front().data();
  uint64_t perTensor = rows * cols * elementSize / source.tensors.size();
  if (recipe.quantize) {
    for (size_t i = 0; i < source.tensors.size(); ++i) {
      std::byte *at = stageAt + i * perTensor;
      quantizeFp8Blocks(
          *recipe.quantize, source.tensors[i].data(), *format, matrices,
          matrixRows, source.shape.back(),
          recipe.scales ? nullptr : reinterpret_cast<uint8_t *>(at),
          recipe.scales ? reinterpret_cast<float *>(at) : nullptr);
    }
    data = stageAt;
  } else if (source.tensors.size() > 1 || !recipe.slice) {
    for (size_t i = 0; i < source.tensors.size(); ++i)
      std::memcpy(stageAt + i * perTensor, source.tensors[i].data(),
                  perTensor);
    data = stageAt;
  }
  if (recipe.slice)
    applyHeadSlice(*recipe.slice, data, cols, elementSize, out);
  return absl::OkStatus();
}

} // namespace kiln
