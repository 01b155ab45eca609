// Internal state of a loaded artifact, shared by Model, the plan verifier
// and Session.
#ifndef KILN_RUNTIME_MODELIMPL_H
#define KILN_RUNTIME_MODELIMPL_H

#include "frontend/Safetensors.h"
#include "kiln/PlanShapes.h"
#include "kiln/Runtime.h"
#include "runtime/schema/kiln_generated.h"
#include "runtime/src/cpu/HostKernels.h"

#include "absl/status/status.h"

#include <cstddef>
#include <memory>
#include <vector>

namespace kiln {

struct Model::Impl {
  ~Impl();

  ModelInfo info;
  const std::byte *mapping = nullptr;
  size_t mappingSize = 0;
  const artifact::Model *plan = nullptr;
  /// Every parameter's bytes: in the mapping (embedded), in a mapped
  /// checkpoint file (external), or in `ownedWeights` (stacked external).
  std::vector<const std::byte *> parameterData;
  std::vector<std::unique_ptr<std::byte[]>> ownedWeights;
  std::vector<std::unique_ptr<frontend::SafetensorsFile>> externalFiles;
  /// The artifact's CPU kernels when loaded (for this machine's target).
  std::unique_ptr<cpu::HostKernels> hostKernels;
  /// Per entry point, in the plan's order: the arena bytes it needs when its
  /// output head computes a row per sequence (a session without prompt
  /// logits): every other buffer, and the first max_batch rows of its
  /// logits.
  std::vector<uint64_t> arenaBytesRowPerSequence;
};

namespace detail {

const char *elementTypeName(artifact::ElementType type);

/// Bytes one token takes in a cache slot as stored (FP8 slots included).
uint64_t slotBytesPerToken(const artifact::KvSlot &slot);

/// Checks every entry point, launch and tensor reference of `plan` against
/// the parameter and cache tables and the arena bounds, so that a plan that
/// passes can be executed without further checks beyond the run-time
/// values (token ids, positions, expert indices). `source` names the file.
/// Fills `arenaBytesRowPerSequence` (Model::Impl's) for a plan that passes.
absl::Status verifyPlan(const artifact::Model &plan, const std::string &source,
                        std::vector<uint64_t> &arenaBytesRowPerSequence);

} // namespace detail
} // namespace kiln

#endif // KILN_RUNTIME_MODELIMPL_H
