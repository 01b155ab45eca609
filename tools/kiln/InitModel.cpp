//===- InitModel.cpp - kiln init-model ------------------------------------===//
#include "tools/kiln/Commands.h"

#include "frontend/DType.h"
#include "models/InitModel.h"
#include "models/Presets.h"

#include "mlir/IR/MLIRContext.h"

#include <fstream>
#include <memory>
#include <sstream>
#include <string>

namespace kiln::tools {
namespace {

struct InitModelCommand {
  std::string preset;
  std::string config;
  uint64_t seed = 0;
  std::string output;
  std::string dtype;
  int64_t maxBytes = int64_t{4} << 30;
};

absl::Status initModel(const InitModelCommand &cmd) {
  models::InitModelOptions options;
  if (!cmd.preset.empty()) {
    std::optional<std::string_view> json = models::findPreset(cmd.preset);
    if (!json)
      return absl::InvalidArgumentError("unknown preset '" + cmd.preset + "'");
    options.configJson = std::string(*json);
    options.configName = "preset '" + cmd.preset + "'";
  } else {
    std::ifstream in(cmd.config, std::ios::binary);
    if (!in)
      return absl::NotFoundError("cannot read " + cmd.config);
    std::ostringstream text;
    text << in.rdbuf();
    options.configJson = text.str();
    options.configName = cmd.config;
  }
  if (!cmd.dtype.empty())
    options.dtype = frontend::parseDType(cmd.dtype);
  options.seed = cmd.seed;
  options.outputDir = cmd.output;
  options.maxBytes = cmd.maxBytes;
  mlir::MLIRContext context;
  return models::initModel(context, options);
}

} // namespace

CommandRunner registerInitModel(CLI::App &app) {
  auto cmd = std::make_shared<InitModelCommand>();
  std::vector<std::string> presets;
  for (std::string_view name : models::presetNames())
    presets.emplace_back(name);
  auto *preset = app.add_option("--preset", cmd->preset, "A built-in config")
                     ->check(CLI::IsMember(presets));
  auto *config = app.add_option("--config", cmd->config,
                                "A config.json to use instead of a preset")
                     ->check(CLI::ExistingFile);
  preset->excludes(config);
  app.add_option("--seed", cmd->seed, "Random seed")->capture_default_str();
  app.add_option("-o,--output", cmd->output, "Directory to write")->required();
  app.add_option("--dtype", cmd->dtype,
                 "Weight dtype (default: the config's torch_dtype)")
      ->check(CLI::IsMember({"F32", "BF16", "F16"}));
  app.add_option("--max-bytes", cmd->maxBytes,
                 "Refuse to write more weight bytes than this")
      ->capture_default_str();
  app.callback([preset, config] {
    if (preset->count() + config->count() != 1)
      throw CLI::ValidationError("init-model", "give --preset or --config");
  });
  return [cmd] { return initModel(*cmd); };
}

} // namespace kiln::tools
