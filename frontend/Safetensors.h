// Reading and writing the safetensors format: an 8-byte little-endian header
// length, a JSON header mapping tensor names to {dtype, shape, data_offsets},
// then the data section. Files are memory-mapped; nothing is copied.
//
// The reader treats the file as untrusted: the header length, the JSON, every
// dtype, shape and offset pair are checked (in range, sized to match the
// shape, non-overlapping) before any tensor is handed out.
#ifndef KILN_FRONTEND_SAFETENSORS_H
#define KILN_FRONTEND_SAFETENSORS_H

#include "frontend/DType.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::frontend {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  /// Byte range [begin, end) relative to the start of the data section.
  uint64_t begin = 0;
  uint64_t end = 0;

  int64_t numElements() const;
};

/// The parsed header of a safetensors file.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors; // sorted by name
  std::map<std::string, std::string> metadata;
  /// Offset of the data section from the start of the file (8 + header len).
  uint64_t dataOffset = 0;
};

/// Parses and validates the header of a safetensors file held in `bytes`
/// (the whole file). `sourceName` prefixes every error message.
absl::StatusOr<SafetensorsHeader>
parseSafetensorsHeader(std::span<const std::byte> bytes,
                       std::string_view sourceName);

/// A memory-mapped, validated safetensors file.
class SafetensorsFile {
public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>>
  open(const std::filesystem::path &path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  const std::filesystem::path &path() const { return path_; }
  const std::vector<TensorInfo> &tensors() const { return header_.tensors; }
  const std::map<std::string, std::string> &metadata() const {
    return header_.metadata;
  }
  /// nullptr when the file has no tensor of that name.
  const TensorInfo *find(std::string_view name) const;
  /// The tensor's bytes inside the mapping (valid while this object lives).
  std::span<const std::byte> data(const TensorInfo &tensor) const;

private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  SafetensorsHeader header_;
  const std::byte *mapping_ = nullptr;
  size_t mappingSize_ = 0;
};

/// A tensor to write: its bytes must hold exactly numel * dtypeSize bytes.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

/// Writes a safetensors file atomically (a temporary file beside `path`,
/// then rename), so a failure never leaves a partial file behind.
absl::Status
writeSafetensors(const std::filesystem::path &path,
                 std::span<const TensorToWrite> tensors,
                 const std::map<std::string, std::string> &metadata = {});

} // namespace kiln::frontend

#endif // KILN_FRONTEND_SAFETENSORS_H
