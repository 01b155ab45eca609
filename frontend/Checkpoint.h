// A Hugging Face checkpoint directory: config.json plus either a single
// `model.safetensors` or shards listed by `model.safetensors.index.json`.
// Also checks the tensors against the set the model builder expects.
#ifndef KILN_FRONTEND_CHECKPOINT_H
#define KILN_FRONTEND_CHECKPOINT_H

#include "frontend/Config.h"
#include "frontend/Safetensors.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::frontend {

/// A tensor located in one of the checkpoint's files.
struct CheckpointTensor {
  const SafetensorsFile *file = nullptr;
  const TensorInfo *info = nullptr;
};

class Checkpoint {
public:
  /// Opens every safetensors file of the directory `dir`. A directory with
  /// no safetensors at all is an error; use `hasWeights` on a config path to
  /// decide whether to open one.
  static absl::StatusOr<std::unique_ptr<Checkpoint>>
  open(const std::filesystem::path &dir);

  /// True when `dir` holds `model.safetensors` or the sharded index.
  static bool hasWeights(const std::filesystem::path &dir);

  const std::filesystem::path &directory() const { return dir_; }
  /// nullopt when no file of the checkpoint has `name`.
  std::optional<CheckpointTensor> find(std::string_view name) const;
  /// Every tensor name, sorted.
  std::vector<std::string> tensorNames() const;

private:
  Checkpoint() = default;
  /// Opens the shards named by model.safetensors.index.json and checks the
  /// index against their contents.
  absl::Status openSharded();
  /// Opens one safetensors file and indexes its tensors; a name already
  /// indexed from another file is an error.
  absl::Status addFile(const std::filesystem::path &path);

  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  // name -> index into files_
  std::map<std::string, size_t, std::less<>> index_;
};

/// What the model expects of one checkpoint tensor.
struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  /// The dtypes accepted for it (e.g. any weight float, or only F32 for
  /// FP8 scales).
  std::vector<DType> dtypes;
};

/// Checks the checkpoint holds exactly the expected tensors with matching
/// shapes and dtypes. Reports every problem found (up to a limit), each
/// naming the file and the tensor: missing tensors, unexpected tensors, shape
/// and dtype mismatches. Tensors HF never loads (`*.rotary_emb.inv_freq`) are
/// ignored.
absl::Status checkTensors(const Checkpoint &checkpoint,
                          std::span<const ExpectedTensor> expected);

} // namespace kiln::frontend

#endif // KILN_FRONTEND_CHECKPOINT_H
