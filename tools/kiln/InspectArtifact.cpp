//===- InspectArtifact.cpp - kiln inspect ---------------------------------===//
//
// Describes an artifact through the runtime API, or (InspectModel.cpp) a
// model directory as compile-model would build it.
//
//===----------------------------------------------------------------------===//
#include "tools/kiln/Commands.h"
#include "tools/kiln/QuantizeOptions.h"
#include "tools/kiln/RunSupport.h"

#include "kiln/Runtime.h"

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

namespace kiln::tools {
namespace {

std::string bytesString(uint64_t bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[64];
  std::snprintf(text, sizeof(text), "%.2f %s (%llu bytes)", value, units[unit],
                static_cast<unsigned long long>(bytes));
  return text;
}

absl::Status inspect(const std::string &path, bool verifyWeights) {
  absl::StatusOr<std::unique_ptr<Model>> model = openModel(path, verifyWeights);
  if (!model.ok())
    return model.status();
  const ModelInfo &info = (*model)->info();
  std::cout << "artifact:        " << info.path << "\n"
            << "architecture:    " << info.architecture << "\n"
            << "layers:          " << info.numLayers << "\n"
            << "hidden size:     " << info.hiddenSize << "\n"
            << "vocab size:      " << info.vocabSize << "\n"
            << "max context:     " << info.maxContext << "\n"
            << "max batch:       " << info.maxBatch << "\n"
            << "weights:         "
            << (info.externalWeights ? "external" : "embedded") << "\n"
            << "parameters:      " << info.parameterCount << "\n";
  for (const auto &[type, bytes] : info.parameterBytes)
    std::cout << "  " << type << ":" << std::string(13 - type.size(), ' ')
              << bytesString(bytes) << "\n";
  std::cout << "kv cache:        " << bytesString(info.kvCacheBytesPerToken)
            << " per token (" << info.kvCacheStorage << ")\n"
            << "entry points:\n";
  for (const EntryPointInfo &e : info.entryPoints)
    std::cout << "  " << e.name << ": batch <= " << e.maxBatch
              << ", tokens per sequence <= " << e.maxSeq << ", " << e.launches
              << " launches (" << e.fusedGroups << " fused groups, "
              << e.cacheStoringGroups << " storing cache rows, "
              << e.linearGroups << " linear groups), arena "
              << bytesString(e.arenaBytes) << "\n    attention: " << e.attention
              << "\n";
  for (const ModelInfo::GpuCode &g : info.gpuCode)
    std::cout << "gpu code:        " << g.arch << ": " << g.kernels
              << " fused kernels, cubin " << bytesString(g.cubinBytes)
              << ", ptx " << bytesString(g.ptxBytes) << "\n";
  for (const ModelInfo::HostCode &h : info.hostCode)
    std::cout << "cpu code:        " << h.target << ": " << h.kernels
              << " fused kernels, shared object " << bytesString(h.bytes)
              << ", " << h.status << "\n";
  return absl::OkStatus();
}

} // namespace

CommandRunner registerInspect(CLI::App &app) {
  auto path = std::make_shared<std::string>();
  auto noVerify = std::make_shared<bool>(false);
  auto mla = std::make_shared<std::string>("auto");
  auto activation = std::make_shared<std::string>("auto");
  auto quantize = std::make_shared<QuantizeFlags>();
  app.add_option("artifact", *path,
                 "A .kiln file, or a model directory / config.json to "
                 "inspect shape-only as compile-model would build it")
      ->required();
  app.add_flag("--no-verify-weights", *noVerify,
               "Skip the weights checksum at load");
  app.add_option("--mla", *mla, "Model inspection: MLA form")
      ->check(CLI::IsMember({"auto", "naive", "absorbed"}))
      ->capture_default_str();
  app.add_option("--activation-dtype", *activation,
                 "Model inspection: activation and cache element type "
                 "(auto: the config's torch_dtype)")
      ->check(CLI::IsMember({"auto", "f32", "bf16"}))
      ->capture_default_str();
  addQuantizeOptions(app, *quantize);
  return [path, noVerify, mla, activation, quantize] {
    std::error_code ec;
    if (std::filesystem::is_directory(*path, ec) ||
        std::filesystem::path(*path).extension() == ".json")
      return inspectModel(*path, *mla, *activation, *quantize);
    return inspect(*path, !*noVerify);
  };
}

} // namespace kiln::tools
