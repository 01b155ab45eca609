#include "kiln/ArtifactFormat.h"

#include <algorithm>
#include <cstring>

namespace kiln::artifact {
namespace {

uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

} // namespace

void Checksum64::block(const unsigned char *bytes) {
  // Four independent lanes keep the multiplies pipelined.
  for (int l = 0; l < 4; ++l) {
    uint64_t word;
    std::memcpy(&word, bytes + 8 * l, 8);
    lanes_[l] = (lanes_[l] ^ word) * 0x100000001b3ull;
    lanes_[l] ^= lanes_[l] >> 29;
  }
}

void Checksum64::update(const void *data, size_t size) {
  const auto *bytes = static_cast<const unsigned char *>(data);
  total_ += size;
  if (pendingSize_) {
    size_t take = std::min(size, sizeof(pending_) - pendingSize_);
    std::memcpy(pending_ + pendingSize_, bytes, take);
    pendingSize_ += take;
    bytes += take;
    size -= take;
    if (pendingSize_ < sizeof(pending_))
      return;
    block(pending_);
    pendingSize_ = 0;
  }
  for (; size >= 32; bytes += 32, size -= 32)
    block(bytes);
  std::memcpy(pending_, bytes, size);
  pendingSize_ = size;
}

uint64_t Checksum64::finish() const {
  uint64_t h = total_;
  for (uint64_t lane : lanes_)
    h = mix(h ^ lane);
  for (size_t i = 0; i < pendingSize_; ++i)
    h = (h ^ pending_[i]) * 0x100000001b3ull;
  return mix(h);
}

uint64_t checksum64(const void *data, size_t size) {
  Checksum64 sum;
  sum.update(data, size);
  return sum.finish();
}

} // namespace kiln::artifact
