// Feeds arbitrary bytes to the safetensors header parser. Beyond the
// sanitizers' checks, a header the parser accepts must keep its promises:
// every tensor lies inside the file, is sized to its shape, and overlaps no
// other.
#include "frontend/Safetensors.h"

#include <algorithm>
#include <cstdlib>

using namespace kiln::frontend;

static void check(bool condition) {
  if (!condition)
    std::abort();
}

static void checkAccepted(const SafetensorsHeader &header, size_t fileSize) {
  check(header.dataOffset >= 8 && header.dataOffset <= fileSize);
  uint64_t dataSize = fileSize - header.dataOffset;
  std::vector<const TensorInfo *> byBegin;
  for (const TensorInfo &t : header.tensors) {
    check(t.begin <= t.end && t.end <= dataSize);
    check(t.end - t.begin ==
          static_cast<uint64_t>(t.numElements() * dtypeSize(t.dtype)));
    if (t.begin != t.end)
      byBegin.push_back(&t);
  }
  std::sort(byBegin.begin(), byBegin.end(),
            [](const TensorInfo *a, const TensorInfo *b) {
              return a->begin < b->begin;
            });
  for (size_t i = 1; i < byBegin.size(); ++i)
    check(byBegin[i - 1]->end <= byBegin[i]->begin);
  check(std::is_sorted(header.tensors.begin(), header.tensors.end(),
                       [](const TensorInfo &a, const TensorInfo &b) {
                         return a.name < b.name;
                       }));
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte *>(data),
                                   size);
  absl::StatusOr<SafetensorsHeader> header =
      parseSafetensorsHeader(bytes, "fuzz.safetensors");
  if (header.ok())
    checkAccepted(*header, size);
  else
    check(!header.status().message().empty());
  return 0;
}
