//===- ArtifactWriter.cpp - plan + weights -> .kiln file ------------------===//
#include "codegen/ArtifactWriter.h"

#include "ir/KilnOps.h"
#include "kiln/ArtifactFormat.h"
#include "kiln/ParameterRecipe.h"
#include "support/AtomicFile.h"

#include <cstring>
#include <map>
#include <vector>

namespace kiln::codegen {
namespace {

namespace art = ::kiln::artifact;

/// Padding between parameters in the weights section.
constexpr char kZeros[art::kParameterAlignment] = {};

uint64_t alignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

ParameterRecipe recipeOf(const art::ParameterT &p) {
  ParameterRecipe recipe;
  if (const art::Fp8QuantT *q = p.quantize.get()) {
    recipe.quantize = Fp8BlockQuant{q->block_rows, q->block_cols, q->ue8m0};
    recipe.scales = q->scale;
  }
  if (const art::HeadSliceT *t = p.transform.get())
    recipe.slice =
        HeadSlice{t->heads, t->rows, t->offset, t->size, t->transpose};
  return recipe;
}

/// The checkpoint tensors holding one parameter, in stacking order.
absl::StatusOr<std::vector<frontend::CheckpointTensor>>
sourcesOf(mlir::kiln::ParameterOp param,
          const frontend::Checkpoint &checkpoint) {
  std::string source = param.getSourceName().str();
  std::vector<std::string> names;
  if (param.isStacked()) {
    size_t at = source.find("{}");
    for (int64_t e = 0; e < param.getTensorType().getDimSize(0); ++e)
      names.push_back(source.substr(0, at) + std::to_string(e) +
                      source.substr(at + 2));
  } else {
    names.push_back(source);
  }
  std::vector<frontend::CheckpointTensor> tensors;
  for (const std::string &name : names) {
    std::optional<frontend::CheckpointTensor> t = checkpoint.find(name);
    if (!t)
      return absl::NotFoundError("checkpoint " +
                                 checkpoint.directory().string() +
                                 " has no tensor '" + name + "'");
    tensors.push_back(*t);
  }
  return tensors;
}

} // namespace

absl::Status writeArtifact(const std::filesystem::path &path, art::ModelT &plan,
                           mlir::ModuleOp module,
                           const frontend::Checkpoint &checkpoint,
                           WeightsMode mode) {
  // Resolve every parameter's bytes and lay out the weights section.
  std::vector<std::vector<frontend::CheckpointTensor>> sources;
  std::map<size_t, std::string> derived; // parameter index -> bytes
  uint64_t weightsSize = 0;
  for (size_t i = 0; i < plan.parameters.size(); ++i) {
    std::unique_ptr<art::ParameterT> &p = plan.parameters[i];
    auto param = module.lookupSymbol<mlir::kiln::ParameterOp>(p->name);
    if (!param)
      return absl::InternalError("the plan names an undeclared parameter " +
                                 p->name);
    absl::StatusOr<std::vector<frontend::CheckpointTensor>> tensors =
        sourcesOf(param, checkpoint);
    if (!tensors.ok())
      return tensors.status();
    ParameterRecipe recipe = recipeOf(*p);
    ParameterSource source;
    const frontend::TensorInfo &first = *tensors->front().info;
    source.type =
        artifactElementType(first.dtype).value_or(art::ElementType::I32);
    source.shape = first.shape;
    for (const frontend::CheckpointTensor &t : *tensors) {
      if (t.info->dtype != first.dtype || t.info->shape != first.shape)
        return absl::InvalidArgumentError(
            "parameter " + p->name + ": checkpoint tensor '" + t.info->name +
            "' differs in dtype or shape from '" + first.name + "'");
      source.tensors.push_back(t.file->data(*t.info));
    }
    // Embedded weights are stored derived (the runtime applies nothing);
    // external ones are only checked here and derived at load.
    std::string *out = nullptr;
    if (recipe.derived() && mode == WeightsMode::Embed) {
      out = &derived[i];
      out->resize(p->bytes);
    }
    if (absl::Status s = deriveParameter(
            recipe, source, p->type, p->shape, p->name,
            out ? reinterpret_cast<std::byte *>(out->data()) : nullptr);
        !s.ok())
      return s;
    if (out) {
      p->transform.reset();
      p->quantize.reset();
    }

    if (mode == WeightsMode::Embed) {
      weightsSize = alignUp(weightsSize, art::kParameterAlignment);
      p->offset = weightsSize;
      weightsSize += p->bytes;
    } else {
      std::filesystem::path dir = checkpoint.directory();
      for (const frontend::CheckpointTensor &t : *tensors) {
        auto source = std::make_unique<art::WeightSourceT>();
        source->file = t.file->path().lexically_relative(dir).string();
        source->tensor = t.info->name;
        p->sources.push_back(std::move(source));
      }
    }
    sources.push_back(*std::move(tensors));
  }
  plan.schema_version = art::kFormatVersion;
  plan.weights_mode = mode == WeightsMode::Embed ? art::WeightsMode::Embedded
                                                 : art::WeightsMode::External;
  plan.required_features = mode == WeightsMode::Embed
                               ? art::kFeatureEmbeddedWeights
                               : art::kFeatureExternalWeights;
  bool fp8 = false;
  for (const auto &p : plan.parameters)
    fp8 |= p->type == art::ElementType::F8E4M3;
  if (fp8)
    plan.required_features |= art::kFeatureFp8Weights;
  for (const auto &slot : plan.kv_slots)
    if (slot->packed)
      plan.required_features |= art::kFeaturePackedKvCache;
  if (mode == WeightsMode::External) {
    std::error_code ec;
    plan.weights_dir =
        std::filesystem::absolute(checkpoint.directory(), ec).string();
  }

  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(art::Model::Pack(fbb, &plan), art::ModelIdentifier());

  art::FileHeader header{};
  std::memcpy(header.magic, art::kMagic, sizeof(header.magic));
  header.formatVersion = art::kFormatVersion;
  header.planOffset = sizeof(art::FileHeader);
  header.planSize = fbb.GetSize();
  header.planChecksum = art::checksum64(fbb.GetBufferPointer(), fbb.GetSize());
  if (mode == WeightsMode::Embed) {
    header.weightsOffset =
        alignUp(header.planOffset + header.planSize, art::kWeightsAlignment);
    header.weightsSize = weightsSize;
  }

  // Streams the weights section (parameters at their offsets, zero padding
  // between) to `sink`; run once for the checksum and once to write.
  auto streamWeights = [&](auto &&sink) -> absl::Status {
    uint64_t at = 0;
    for (size_t i = 0; i < plan.parameters.size(); ++i) {
      if (absl::Status s =
              sink(std::string_view(kZeros, plan.parameters[i]->offset - at));
          !s.ok())
        return s;
      at = plan.parameters[i]->offset;
      if (auto it = derived.find(i); it != derived.end()) {
        if (absl::Status s = sink(it->second); !s.ok())
          return s;
        at += it->second.size();
        continue;
      }
      for (const frontend::CheckpointTensor &t : sources[i]) {
        std::span<const std::byte> data = t.file->data(*t.info);
        if (absl::Status s = sink(std::string_view(
                reinterpret_cast<const char *>(data.data()), data.size()));
            !s.ok())
          return s;
        at += data.size();
      }
    }
    return absl::OkStatus();
  };
  if (mode == WeightsMode::Embed) {
    art::Checksum64 sum;
    (void)streamWeights([&](std::string_view bytes) {
      sum.update(bytes.data(), bytes.size());
      return absl::OkStatus();
    });
    header.weightsChecksum = sum.finish();
  }

  return writeFileAtomically(
      path,
      [&](const std::function<absl::Status(std::string_view)> &append)
          -> absl::Status {
        if (absl::Status s = append(std::string_view(
                reinterpret_cast<const char *>(&header), sizeof(header)));
            !s.ok())
          return s;
        if (absl::Status s = append(std::string_view(
                reinterpret_cast<const char *>(fbb.GetBufferPointer()),
                fbb.GetSize()));
            !s.ok())
          return s;
        if (mode == WeightsMode::External)
          return absl::OkStatus();
        std::string padding(
            header.weightsOffset - (header.planOffset + header.planSize), '\0');
        if (absl::Status s = append(padding); !s.ok())
          return s;
        return streamWeights(append);
      });
}

} // namespace kiln::codegen
