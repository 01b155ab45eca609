// Kiln's runtime API: open a `.kiln` artifact, create a session for a batch
// of sequences, prefill prompts, decode tokens, read logits, sample.
//
//   auto model = kiln::Model::open("model.kiln");          // load + verify
//   auto session = kiln::Session::create(**model);          // initialize
//   (*session)->prefill({{1, 2, 3}, {4, 5}});               // two sequences
//   kiln::Sampler sampler({.temperature = 0});              // greedy
//   for (int step = 0; step < 8; ++step) {
//     std::vector<int32_t> next;
//     for (size_t s = 0; s < (*session)->numSequences(); ++s)
//       next.push_back(sampler.sample((*session)->logits(s)));
//     (*session)->decode(next);                             // one token each
//   }
//
// The three phases follow the artifact's design: `Model::open` maps the file
// and verifies the header, the checksums and every launch of the plan
// before anything runs; `Session::create` allocates the arena and the KV
// cache and binds every launch to its memory; `prefill`/`decode` only run
// launches (no allocation). Errors are returned as absl::Status with a
// message naming the file and what is wrong; nothing throws.
//
// This header includes no MLIR or LLVM header: the runtime builds and runs
// where the compiler does not.
#ifndef KILN_RUNTIME_RUNTIME_H
#define KILN_RUNTIME_RUNTIME_H

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace kiln {

struct LoadOptions {
  /// Check the checksum of the embedded weights at load (reads every byte);
  /// switch off for huge models. The plan is always checked.
  bool verifyWeights = true;
};

struct EntryPointInfo {
  std::string name; // "prefill" or "decode"
  uint32_t maxBatch = 0;
  uint32_t maxSeq = 0;
  uint64_t arenaBytes = 0;
  size_t launches = 0;
  /// How attention was compiled (e.g. "mla absorbed, latent cache").
  std::string attention;
};

struct ModelInfo {
  std::string path;
  std::string architecture;
  int64_t vocabSize = 0;
  int64_t hiddenSize = 0;
  int64_t numLayers = 0;
  uint32_t maxContext = 0;
  uint32_t maxBatch = 0;
  bool externalWeights = false;
  uint64_t parameterCount = 0;
  /// Parameter bytes by element type name ("f32", "bf16", ...).
  std::map<std::string, uint64_t> parameterBytes;
  uint64_t kvCacheBytesPerToken = 0;
  std::vector<EntryPointInfo> entryPoints;
};

class Session;

/// A loaded, verified artifact. Immutable; sessions share it.
class Model {
public:
  static absl::StatusOr<std::unique_ptr<Model>>
  open(const std::filesystem::path &path, const LoadOptions &options = {});
  ~Model();
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  const ModelInfo &info() const;

  struct Impl;

private:
  friend class Session;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The state of up to `maxBatch` sequences: their KV cache and lengths.
class Session {
public:
  static absl::StatusOr<std::unique_ptr<Session>> create(const Model &model);
  ~Session();
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  /// Starts one sequence per prompt (replacing any previous ones) and runs
  /// the prompts through the model, in chunks of the artifact's max prefill
  /// length. Prompts must be non-empty; tokens in [0, vocab).
  absl::Status prefill(const std::vector<std::vector<int32_t>> &prompts);

  /// Appends one token to every sequence and runs one decode step.
  absl::Status decode(std::span<const int32_t> tokens);

  size_t numSequences() const;
  /// Tokens held by sequence `s` (prompt plus decoded).
  size_t length(size_t sequence) const;
  /// The logits of the newest token of `sequence` after the last step.
  std::span<const float> logits(size_t sequence) const;
  /// After `prefill`: the logits of position `position` of the prompt (only
  /// positions of the last prefill chunk are kept).
  absl::StatusOr<std::span<const float>> promptLogits(size_t sequence,
                                                      size_t position) const;

  struct Impl;

private:
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace kiln

#endif // KILN_RUNTIME_RUNTIME_H
