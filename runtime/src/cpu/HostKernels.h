// The artifact's fused kernels for the CPU (HostModule, kiln.fbs): a shared
// object the compiler built from the same sources as the GPU kernels,
// loaded from memory (memfd + dlopen) without a file on disk.
#ifndef KILN_RUNTIME_CPU_HOSTKERNELS_H
#define KILN_RUNTIME_CPU_HOSTKERNELS_H

#include "runtime/schema/kiln_generated.h"

#include "absl/status/statusor.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace kiln::cpu {

class HostKernels {
public:
  /// `kernel(tokens, args)`: args are the group's inputs then its results.
  using Entry = void (*)(int64_t tokens, void **args);

  /// Loads `module` and resolves every kernel's entry; errors name
  /// `source` (the artifact) and what failed.
  static absl::StatusOr<std::unique_ptr<HostKernels>>
  load(const artifact::HostModule &module, const std::string &source);
  ~HostKernels();
  HostKernels(const HostKernels &) = delete;
  HostKernels &operator=(const HostKernels &) = delete;

  /// The entry of the group named `kernel`, or null when the module has
  /// none (the group then runs as its ops).
  Entry find(std::string_view kernel) const;
  /// The pointers `kernel` takes in `args` (its table entry; 0 when there
  /// is no such kernel).
  uint32_t arguments(std::string_view kernel) const;
  size_t size() const { return entries_.size(); }

private:
  HostKernels() = default;
  void *handle_ = nullptr;
  int fd_ = -1;      // the in-memory file the object was loaded from
  std::string path_; // its /proc/self/fd path, the loader's name for it
  std::unordered_map<std::string, Entry> entries_;
  std::unordered_map<std::string, uint32_t> arguments_;
};

} // namespace kiln::cpu

#endif // KILN_RUNTIME_CPU_HOSTKERNELS_H
