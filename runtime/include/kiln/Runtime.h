// Kiln's runtime API: open a `.kiln` artifact, create a session for a batch
// of sequences, prefill prompts, decode tokens, read logits, sample.
//
//   auto model = kiln::Model::open("model.kiln");          // load + verify
//   auto session = kiln::Session::create(**model);          // initialize
//   auto ids = (*session)->prefill({{1, 2, 3}, {4, 5}});    // two sequences
//   kiln::Sampler sampler({.temperature = 0});              // greedy
//   for (int step = 0; step < 8; ++step) {
//     std::vector<int32_t> next;
//     for (int id : *ids)
//       next.push_back(sampler.sample((*session)->logits(id).data(), vocab));
//     (*session)->decode(*ids, next);                       // one token each
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
#include <functional>
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
  /// External weights: read the checkpoint from here instead of the
  /// directory the artifact was compiled against (e.g. on another machine).
  std::filesystem::path weightsDir;
  /// Run fused groups with the artifact's CPU kernels (a shared object
  /// built by `kiln compile-model --target=cpu`, loaded with dlopen: it is
  /// native code, trust the artifact as you would a library). Off: each
  /// group runs as its ops with the runtime's own kernels (so does
  /// KILN_HOST_KERNELS=0 in the environment).
  bool hostKernels = true;
};

struct EntryPointInfo {
  std::string name; // "prefill" or "decode"
  uint32_t maxBatch = 0;
  uint32_t maxSeq = 0;
  uint64_t arenaBytes = 0;
  size_t launches = 0;
  /// Launches a GPU executor runs as one kernel: fused groups (generated
  /// kernels) and linear groups (grouped GEMVs).
  size_t fusedGroups = 0, linearGroups = 0;
  /// Fused groups that store KV-cache rows (their kv_appends run in the
  /// kernel).
  size_t cacheStoringGroups = 0;
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
  /// How the cache stores its entries: "f32", or an MLA latent's packed
  /// rows, "bf16 latent" or "fp8 latent with bf16 rope".
  std::string kvCacheStorage = "f32";
  std::vector<EntryPointInfo> entryPoints;
  /// Generated GPU code the artifact carries.
  struct GpuCode {
    std::string arch;
    size_t kernels = 0, cubinBytes = 0, ptxBytes = 0;
  };
  std::vector<GpuCode> gpuCode;
  /// Generated CPU code the artifact carries, and whether it is used.
  struct HostCode {
    std::string target;
    size_t kernels = 0, bytes = 0;
    /// "loaded", or why the fused groups run as their ops instead.
    std::string status;
  };
  std::vector<HostCode> hostCode;
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

/// Where a session runs its steps.
enum class Device {
  /// The GPU when there is one and the artifact has generated kernels for
  /// it; otherwise the CPU (Session::device() says why).
  Auto,
  Cpu,
  /// The GPU even without generated kernels (library kernels only); an
  /// error where there is none.
  Cuda,
  /// The CUDA executor on the host: an emulated driver runs the library
  /// kernels' host builds (fused groups as their members). Slow; it checks
  /// the GPU plan where there is no GPU (tests).
  Emulated,
};

struct SessionOptions {
  /// Blocks of 64 tokens in the session's paged KV cache; 0 sizes it for
  /// max-batch sequences of full context (negative: InvalidArgument). The pool
  /// is shared by all sequences, and a released sequence's blocks serve new
  /// ones.
  int64_t kvBlocks = 0;
  Device device = Device::Auto;
  /// Compute the logits of every prompt position and keep the last prefill
  /// chunk's (promptLogits), as scoring needs. Without them a prefill's
  /// output head computes one row per sequence, its last token's (what
  /// logits() returns), as generation needs and as vLLM and HF's generate
  /// do: at 2K tokens and a 100K vocabulary, 0.4 MB of logits instead of
  /// 0.8 GB (a GPU session's page-locked staging holds that much less, and
  /// the arena up to that, as its layout allows), and a GEMV over the
  /// head's weights instead of a 2K-row GEMM.
  bool promptLogits = true;
  /// Copy each step's logits to the host (what logits() and promptLogits()
  /// return). Off, for benchmarks that feed their own tokens: a GPU
  /// session leaves them on the device (at batch 128 and a 100K
  /// vocabulary, 52 MB a decode step not copied twice), logits() is empty
  /// and promptLogits() FailedPrecondition, on any device.
  bool stepLogits = true;
};

/// The time one kernel took over the steps a kernel profile covered
/// (Session::setKernelProfiling).
struct KernelTime {
  /// GPU: the kernel's name (a library kernel, a generated one, or
  /// "cuBLASLt bf16 GEMM"); CPU: the launch kind, or "fused (generated)".
  std::string kernel;
  int64_t launches = 0;
  double seconds = 0;
  /// The weight bytes its launches read, where the executor knows them for
  /// every launch (GPU GEMMs but grouped expert GEMMs, whose experts with
  /// rows only the device knows); -1 otherwise.
  int64_t weightBytes = -1;
};

/// The state of up to `maxBatch` live sequences, each with a stable id: its
/// tokens in a paged KV cache, its length, and its latest logits. Sequences
/// can start (prefill) and end (release) at any step, so a batch keeps
/// decoding while finished sequences are replaced (continuous batching).
class Session {
public:
  static absl::StatusOr<std::unique_ptr<Session>>
  create(const Model &model, const SessionOptions &options = {});
  ~Session();
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  /// Starts one sequence per prompt, next to any that are alive, and runs
  /// the prompts through the model in batches of the artifact's prefill
  /// batch (in chunks of its max prefill length). Prompts must be non-empty,
  /// tokens in [0, vocab). Returns the new sequences' ids, in prompt order (a
  /// fresh session hands out 0, 1, ...). When the cache has too few free blocks
  /// the error is ResourceExhausted and no sequence is started.
  ///
  /// `visit`, where given, sees every prompt position's logits as its
  /// chunk computes them (promptLogits() holds only the last chunk's): the
  /// new sequence's id, the position, and the row, valid during the call.
  /// It needs SessionOptions::promptLogits and stepLogits
  /// (FailedPrecondition). A prefill that fails part way has shown it the
  /// rows of chunks that ran, of sequences it then did not start.
  using PromptLogitsVisitor = std::function<void(
      int sequence, size_t position, std::span<const float> logits)>;
  absl::StatusOr<std::vector<int>>
  prefill(const std::vector<std::vector<int32_t>> &prompts,
          const PromptLogitsVisitor &visit = {});

  /// Appends `tokens[i]` to sequence `sequences[i]` and runs one decode step
  /// for them together. ResourceExhausted (and nothing done) when the cache
  /// cannot hold the new tokens: release a sequence and retry.
  absl::Status decode(std::span<const int> sequences,
                      std::span<const int32_t> tokens);
  /// One step over every live sequence, in increasing id order.
  absl::Status decode(std::span<const int32_t> tokens);

  /// Ends a sequence; its cache blocks go back to the pool.
  absl::Status release(int sequence);

  /// For benchmarks only: lengthens a live sequence by `tokens` positions
  /// without computing them (their cache entries keep whatever the blocks
  /// hold), so decode can be timed at long contexts without a long prefill.
  absl::Status extendUncomputed(int sequence, int64_t tokens);

  /// Where the steps run: "cuda: <GPU>" or "cpu", with the reason a GPU is
  /// not used when the artifact carries GPU code.
  const std::string &device() const;

  /// GPU kernels the session's steps have run (library and generated
  /// kernels, each cuBLASLt call as one); 0 on the CPU. For benchmarks:
  /// what a step costs in launches.
  int64_t kernelLaunches() const;

  /// Times every kernel of the steps from now on (on), or no longer (off).
  /// On a GPU each launch is timed between CUDA events, so the steps run
  /// without CUDA graphs and on one stream, after a hold that lets the
  /// host queue a step's launches before the GPU reaches them: slower than
  /// unprofiled steps, and without programmatic launch overlap, but each
  /// kernel's share is the GPU's, not the host's. On the CPU each launch is
  /// timed on the host clock. KILN_PROFILE=1 turns it on at creation and
  /// prints the profile when the session ends.
  void setKernelProfiling(bool on);
  /// The kernel times since profiling was turned on or last reset, the
  /// longest first.
  std::vector<KernelTime> kernelProfile() const;
  void resetKernelProfile();

  /// Live sequence ids, increasing.
  std::vector<int> sequences() const;
  size_t numSequences() const;
  /// Tokens held by a live sequence (prompt plus decoded); 0 otherwise.
  size_t length(int sequence) const;
  /// Tokens the free cache blocks can still take.
  int64_t freeCacheTokens() const;
  /// The logits of the newest token of `sequence` after its last step
  /// (empty without SessionOptions::stepLogits, or for a sequence that is
  /// not alive).
  std::span<const float> logits(int sequence) const;
  /// Until the next step: the logits of position `position` of a prompt of
  /// the last prefill (of its last batch, positions of its last chunk
  /// only). FailedPrecondition in a session without
  /// SessionOptions::promptLogits, InvalidArgument for a sequence that is
  /// not alive, OutOfRange for a position not held.
  absl::StatusOr<std::span<const float>> promptLogits(int sequence,
                                                      size_t position) const;

  struct Impl;

private:
  explicit Session(std::unique_ptr<Impl> impl);
  static absl::StatusOr<std::unique_ptr<Session>>
  createSession(const Model &model, const SessionOptions &options);
  std::unique_ptr<Impl> impl_;
};

} // namespace kiln

#endif // KILN_RUNTIME_RUNTIME_H
