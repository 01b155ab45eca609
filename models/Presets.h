//===- Presets.h - built-in model configs -----------------------*- C++ -*-===//
//
// The reference DeepSeek/R1-distill configs and tiny configs of each
// architecture for tests and demos, compiled into the binary.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_MODELS_PRESETS_H
#define KILN_MODELS_PRESETS_H

#include <optional>
#include <string_view>
#include <vector>

namespace kiln::models {

/// The config.json text of preset `name`, or nullopt if there is none.
std::optional<std::string_view> findPreset(std::string_view name);

/// Every preset name, sorted.
std::vector<std::string_view> presetNames();

} // namespace kiln::models

#endif // KILN_MODELS_PRESETS_H
