// The container of a `.kiln` file, shared by the writer (compiler) and the
// reader (runtime). Layout:
//
//   [0, 64)                 FileHeader
//   [plan_offset, +size)    FlatBuffer `kiln.artifact.Model` (kiln.fbs)
//   [weights_offset, +size) embedded weights, 4 KiB-aligned (may be empty)
//
// All integers are little-endian.
#ifndef KILN_RUNTIME_ARTIFACTFORMAT_H
#define KILN_RUNTIME_ARTIFACTFORMAT_H

#include <cstddef>
#include <cstdint>

namespace kiln::artifact {

inline constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'A', 'R', 'T', '\0'};
/// Bumped on any incompatible change of the header or the schema, including
/// the meaning of a launch's operands or attributes. 2: HeadLinear's ints
/// start with the input column offset; the GatedLinear kernel; linear
/// groups. 3: MoeDispatch also writes each selection's routed row, which
/// MoeCombine reads in place of the slots. 4: fused kernels store KV-cache
/// rows (Storage::KvRows, EntryPoint.cache_rows). 5: KvSlot.packed (bf16
/// latent caches as packed rows without e4m3 columns).
inline constexpr uint32_t kFormatVersion = 5;
inline constexpr uint64_t kWeightsAlignment = 4096;
/// Alignment of each parameter inside the weights section.
inline constexpr uint64_t kParameterAlignment = 64;

/// Feature bits of Model.required_features.
enum Feature : uint64_t {
  kFeatureEmbeddedWeights = 1u << 0,
  kFeatureExternalWeights = 1u << 1,
  /// FP8 GEMMs with block scales (and weights quantized at load).
  kFeatureFp8Weights = 1u << 2,
  /// KV slots with packed e4m3 / bf16 rows (KvSlot.packed).
  kFeaturePackedKvCache = 1u << 3,
};
inline constexpr uint64_t kKnownFeatures =
    kFeatureEmbeddedWeights | kFeatureExternalWeights | kFeatureFp8Weights |
    kFeaturePackedKvCache;

/// The machine a HostModule's shared object runs on (the compiler's own,
/// which builds it with the host C++ compiler): the runtime loads only a
/// module whose target equals its own.
inline constexpr const char *kHostTarget =
#if defined(__x86_64__)
    "x86_64"
#elif defined(__aarch64__)
    "aarch64"
#else
    "unknown"
#endif
#if defined(__linux__)
    "-linux-gnu";
#else
    "-unknown";
#endif

struct FileHeader {
  char magic[8];
  uint32_t formatVersion;
  uint32_t flags; // reserved, zero
  uint64_t planOffset;
  uint64_t planSize;
  uint64_t weightsOffset;
  uint64_t weightsSize;
  uint64_t planChecksum;
  uint64_t weightsChecksum;
};
static_assert(sizeof(FileHeader) == 64);

/// A fast 64-bit checksum (not cryptographic): catches truncation, bit
/// flips and mismatched sections. Incremental: feeding the bytes in any
/// split gives the same value as one `checksum64` call.
class Checksum64 {
public:
  void update(const void *data, size_t size);
  uint64_t finish() const;

private:
  void block(const unsigned char *bytes);
  uint64_t lanes_[4] = {0x9e3779b97f4a7c15ull, 0xbf58476d1ce4e5b9ull,
                        0x94d049bb133111ebull, 0x2545f4914f6cdd1dull};
  unsigned char pending_[32];
  size_t pendingSize_ = 0;
  uint64_t total_ = 0;
};

uint64_t checksum64(const void *data, size_t size);

} // namespace kiln::artifact

#endif // KILN_RUNTIME_ARTIFACTFORMAT_H
