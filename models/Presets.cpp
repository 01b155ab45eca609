//===- Presets.cpp - built-in model configs -------------------------------===//
#include "models/Presets.h"

#include <algorithm>
#include <utility>

namespace kiln::models {
namespace {

constexpr std::pair<std::string_view, std::string_view> kPresets[] = {
#include "models/Presets.inc"
};

} // namespace

std::optional<std::string_view> findPreset(std::string_view name) {
  for (const auto &[presetName, json] : kPresets)
    if (presetName == name)
      return json;
  return std::nullopt;
}

std::vector<std::string_view> presetNames() {
  std::vector<std::string_view> names;
  for (const auto &preset : kPresets)
    names.push_back(preset.first);
  std::sort(names.begin(), names.end());
  return names;
}

} // namespace kiln::models
