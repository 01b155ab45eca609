// Feeds arbitrary bytes to the artifact loader as a `.kiln` file. To get
// past the checksums, the header's plan and weights checksums are recomputed
// over the mutated bytes first, so mutations reach the FlatBuffers verifier
// and the plan verifier. An artifact that loads must also run: a prefill and
// a decode step (when its arena and cache are small) must not crash; they
// may fail with an error. The artifact's CPU kernels are not loaded.
#include "kiln/ArtifactFormat.h"
#include "kiln/Runtime.h"

#include <cstring>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

void fixChecksums(std::vector<uint8_t> &bytes) {
  namespace art = kiln::artifact;
  if (bytes.size() < sizeof(art::FileHeader))
    return;
  art::FileHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  auto inRange = [&](uint64_t offset, uint64_t size) {
    return offset <= bytes.size() && size <= bytes.size() - offset;
  };
  if (inRange(h.planOffset, h.planSize))
    h.planChecksum = art::checksum64(bytes.data() + h.planOffset, h.planSize);
  if (inRange(h.weightsOffset, h.weightsSize))
    h.weightsChecksum =
        art::checksum64(bytes.data() + h.weightsOffset, h.weightsSize);
  std::memcpy(bytes.data(), &h, sizeof(h));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const std::string path =
      "/tmp/kiln-fuzz-artifact-" + std::to_string(::getpid()) + ".kiln";
  std::vector<uint8_t> bytes(data, data + size);
  fixChecksums(bytes);
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char *>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
  // An artifact's CPU kernels are native code, trusted like a library (see
  // LoadOptions::hostKernels): mutating them would run arbitrary code, not
  // test the loader.
  kiln::LoadOptions options;
  options.hostKernels = false;
  auto model = kiln::Model::open(path, options);
  if (!model.ok())
    return 0;
  const kiln::ModelInfo &info = (*model)->info();
  uint64_t arena = 0;
  for (const kiln::EntryPointInfo &e : info.entryPoints)
    arena = std::max(arena, e.arenaBytes);
  uint64_t cache = info.kvCacheBytesPerToken * info.maxContext * info.maxBatch;
  // Legal but large sessions would only test the allocator.
  if (arena > (64u << 20) || cache > (64u << 20) ||
      uint64_t{info.maxBatch} * info.maxContext > (1u << 20))
    return 0;
  auto session = kiln::Session::create(**model);
  if (!session.ok())
    return 0;
  auto ids = (*session)->prefill({{0, 1}});
  if (!ids.ok())
    return 0;
  int32_t next = 1;
  (void)(*session)->decode(*ids, {&next, 1});
  return 0;
}
