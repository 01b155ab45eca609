#include "frontend/DType.h"

#include <array>

namespace kiln::frontend {

namespace {

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  int64_t size;
};

// Indexed by the enum's value; the static_assert below keeps them in step.
constexpr std::array<DTypeEntry, 12> kDTypes = {{
    {DType::F64, "F64", 8},
    {DType::F32, "F32", 4},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::I64, "I64", 8},
    {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
}};

constexpr bool tableMatchesEnum() {
  for (size_t i = 0; i < kDTypes.size(); ++i)
    if (static_cast<size_t>(kDTypes[i].dtype) != i)
      return false;
  return true;
}
static_assert(tableMatchesEnum());

const DTypeEntry &entry(DType dtype) {
  return kDTypes[static_cast<size_t>(dtype)];
}

} // namespace

std::string_view dtypeName(DType dtype) { return entry(dtype).name; }

std::optional<DType> parseDType(std::string_view name) {
  for (const DTypeEntry &e : kDTypes)
    if (e.name == name)
      return e.dtype;
  return std::nullopt;
}

int64_t dtypeSize(DType dtype) { return entry(dtype).size; }

bool isWeightFloat(DType dtype) {
  return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16 ||
         dtype == DType::F8_E4M3;
}

} // namespace kiln::frontend
