// The CUDA executor: runs an artifact's entry points on an NVIDIA GPU.
//
// Created once per session: loads the driver (dlopen), takes device 0's
// primary context, loads the library kernels (embedded fatbin) and the
// artifact's generated kernels (its GpuModule for the device's
// architecture), uploads every parameter once, and allocates the arena and
// the paged KV cache in device memory. A step then copies the step's inputs
// (tokens, positions, kv lengths, block tables) to the device, runs the
// launches (a fused group as its generated kernel, every other launch as a
// library kernel or a cuBLASLt GEMM) on one stream, and copies the logits
// back. Decode steps are captured as CUDA graphs, one per batch size and
// context bucket, and replayed.
//
// The session above keeps the sequences and the cache's block bookkeeping
// (PagedKvCache without host storage); this class only executes.
#ifndef KILN_RUNTIME_CUDA_CUDAEXECUTOR_H
#define KILN_RUNTIME_CUDA_CUDAEXECUTOR_H

#include "ModelImpl.h"
#include "cpu/PagedPacked.h"

#include "absl/status/statusor.h"

#include <memory>
#include <string>
#include <vector>

namespace kiln::cuda {

/// The paged cache the session manages, as the device stores it.
struct CacheLayout {
  /// Floats per token of each slot (an FP8 slot's row bytes / 4).
  std::vector<int64_t> slotFloats;
  /// Packed slots' row layout (no columns: an f32 slot).
  std::vector<cpu::PackedRowLayout> packed;
  int64_t numBlocks = 0, blockTokens = 0, tableStride = 0;
  int maxBatch = 0;
};

/// Run-time sizes of one step.
struct StepShape {
  int64_t batch = 0, seq = 0, kvLen = 0, routed = 0;
};

/// One step's host inputs: [batch, seq] tokens and positions, [batch] kv
/// lengths, the block tables ([batch, tableStride]) and the positions the
/// blocks of each row's sequence cover.
struct StepInputs {
  const int32_t *tokens = nullptr, *positions = nullptr, *kvLengths = nullptr;
  const int32_t *tables = nullptr;
  const int32_t *heldTokens = nullptr;
  /// Each token's row in the cache slots, for EntryPoint.cache_rows.
  const int32_t *cacheRows = nullptr;
};

class Executor {
public:
  /// Unavailable (with the reason) when there is no driver or GPU, or the
  /// artifact has no kernels for this GPU while `requireGpuCode`; other
  /// errors for what fails on a working GPU (e.g. out of memory). With
  /// `emulate`, the driver is EmulatedDriver.h's host emulation. The arena
  /// takes `arenaBytes` (at least every entry point's need for the logits
  /// the session asks for).
  static absl::StatusOr<std::unique_ptr<Executor>>
  create(const Model::Impl &model, const CacheLayout &cache,
         uint64_t arenaBytes, bool requireGpuCode, bool emulate = false);
  ~Executor();

  /// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, generated kernels: sm_90a)".
  const std::string &description() const;

  /// Page-locks the host buffer the steps' inputs and logits pass through
  /// (until the executor is destroyed), so that copies run at full PCIe
  /// speed; a driver that refuses leaves them pageable (still correct).
  void pinHostBuffer(void *data, size_t bytes);

  /// Kernels the steps have run so far: library and generated kernels, a
  /// replayed graph's as many as it holds, each cuBLASLt call as one.
  int64_t kernelLaunches() const;

  /// The kernel profile (Session::setKernelProfiling): while on, steps run
  /// without graphs and side streams, each after a hold (kiln_hold), with
  /// an event after every launch; the times add up per kernel name.
  void setProfiling(bool on);
  /// The times since profiling began or the last reset, the longest first.
  std::vector<KernelTime> profile() const;
  void resetProfile();

  /// Runs entry point `entry` ("prefill" or "decode") and writes the logits
  /// [batch, seq, vocab] to `logits`, or where `rows` (strictly increasing
  /// indices into batch x seq) is given row rows[i]'s logits as row i; none
  /// where `logits` is null. With `rows` the output head computes only
  /// those (outside a decode graph).
  absl::Status run(const std::string &entry, const StepShape &shape,
                   const StepInputs &inputs, float *logits,
                   const std::vector<int64_t> *rows = nullptr);

  struct Impl;

private:
  explicit Executor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_CUDAEXECUTOR_H
