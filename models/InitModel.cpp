//===- InitModel.cpp - seeded random Hugging Face checkpoints -------------===//
#include "models/InitModel.h"

#include "frontend/Config.h"
#include "frontend/Safetensors.h"
#include "kiln/Float.h"
#include "models/Import.h"
#include "models/ModelBuilder.h"
#include "support/AtomicFile.h"

#include <cmath>
#include <cstring>
#include <random>
#include <string_view>
#include <vector>

namespace kiln::models {
namespace {

using frontend::DType;

uint64_t fnv1a(std::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : text)
    hash = (hash ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return hash;
}

/// Values like HF's initialization: N(0, range) for matrices and biases,
/// 1 + N(0, range) for norm weights (so they are not trivially 1).
std::vector<float> randomValues(const frontend::ExpectedTensor &tensor,
                                uint64_t seed, double range) {
  int64_t count = 1;
  for (int64_t d : tensor.shape)
    count *= d;
  std::mt19937_64 rng(seed ^ fnv1a(tensor.name));
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  bool isNorm = std::string_view(tensor.name).ends_with("norm.weight");
  std::vector<float> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; i += 2) {
    // Box-Muller: two normals from two uniforms (portable across libraries,
    // unlike std::normal_distribution).
    double u1 = 1.0 - uniform(rng), u2 = uniform(rng);
    double radius = std::sqrt(-2.0 * std::log(u1));
    double pair[2] = {radius * std::cos(2 * M_PI * u2),
                      radius * std::sin(2 * M_PI * u2)};
    for (int64_t j = 0; j < 2 && i + j < count; ++j)
      values[i + j] =
          static_cast<float>((isNorm ? 1.0 : 0.0) + range * pair[j]);
  }
  return values;
}

std::string encode(const std::vector<float> &values, DType dtype) {
  std::string bytes;
  if (dtype == DType::F32) {
    bytes.resize(values.size() * 4);
    std::memcpy(bytes.data(), values.data(), bytes.size());
    return bytes;
  }
  bytes.resize(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    uint16_t half =
        dtype == DType::BF16 ? floatToBf16(values[i]) : floatToF16(values[i]);
    std::memcpy(bytes.data() + 2 * i, &half, 2);
  }
  return bytes;
}

} // namespace

absl::Status initModel(mlir::MLIRContext &context,
                       const InitModelOptions &options) {
  absl::StatusOr<frontend::ModelConfig> config =
      frontend::parseModelConfig(options.configJson, options.configName);
  if (!config.ok())
    return config.status();
  DType dtype = options.dtype.value_or(config->torchDtype);
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    return absl::InvalidArgumentError(
        "init-model writes F32, BF16 or F16 weights, not " +
        std::string(frontend::dtypeName(dtype)));
  if (config->quantization)
    return absl::UnimplementedError(
        options.configName +
        ": init-model does not write FP8 checkpoints (the config has a "
        "quantization_config); remove it to get a " +
        std::string(frontend::dtypeName(dtype)) + " checkpoint");

  BuildOptions build;
  build.checkpointDtype = [dtype](const std::string &) { return dtype; };
  mlir::OwningOpRef<mlir::ModuleOp> module =
      buildModel(context, *config, build);
  std::vector<frontend::ExpectedTensor> tensors = expectedTensors(*module);

  int64_t totalBytes = 0;
  for (const frontend::ExpectedTensor &t : tensors) {
    int64_t count = frontend::dtypeSize(dtype);
    for (int64_t d : t.shape)
      count *= d;
    totalBytes += count;
  }
  if (totalBytes > options.maxBytes)
    return absl::InvalidArgumentError(
        options.configName + ": the weights would take " +
        std::to_string(totalBytes) + " bytes, over the limit of " +
        std::to_string(options.maxBytes) + " (raise it with --max-bytes)");

  std::vector<std::string> data;
  data.reserve(tensors.size());
  std::vector<frontend::TensorToWrite> toWrite;
  for (const frontend::ExpectedTensor &t : tensors) {
    data.push_back(
        encode(randomValues(t, options.seed, config->initializerRange), dtype));
    toWrite.push_back(
        {t.name, dtype, t.shape, std::as_bytes(std::span(data.back()))});
  }

  std::error_code ec;
  std::filesystem::create_directories(options.outputDir, ec);
  if (ec)
    return absl::UnavailableError(
        "cannot create " + options.outputDir.string() + ": " + ec.message());
  if (absl::Status s = frontend::writeSafetensors(
          options.outputDir / "model.safetensors", toWrite, {{"format", "pt"}});
      !s.ok())
    return s;
  return writeFileAtomically(options.outputDir / "config.json",
                             options.configJson);
}

} // namespace kiln::models
