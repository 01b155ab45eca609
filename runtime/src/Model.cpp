// Loading an artifact: map the file, verify the header, the checksums, the
// FlatBuffer and the plan, then bind every parameter to its bytes.
#include "ModelImpl.h"

#include "kiln/ArtifactFormat.h"
#include "kiln/ParameterRecipe.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace kiln {
namespace {

namespace art = artifact;

absl::Status fail(const std::filesystem::path &path, const std::string &what) {
  return absl::InvalidArgumentError(path.string() + ": " + what);
}

/// [offset, offset + size) lies within [0, limit) without overflow.
bool inRange(uint64_t offset, uint64_t size, uint64_t limit) {
  return offset <= limit && size <= limit - offset;
}

absl::Status checkHeader(const art::FileHeader &h, uint64_t fileSize,
                         const std::filesystem::path &path) {
  if (std::memcmp(h.magic, art::kMagic, sizeof(h.magic)) != 0)
    return fail(path, "not a Kiln artifact (bad magic)");
  if (h.formatVersion > art::kFormatVersion)
    return fail(path, "artifact format version " +
                          std::to_string(h.formatVersion) +
                          " is newer than this runtime's (" +
                          std::to_string(art::kFormatVersion) +
                          "); rebuild it or update Kiln");
  if (h.formatVersion != art::kFormatVersion)
    return fail(path, "artifact format version " +
                          std::to_string(h.formatVersion) +
                          " is older than this runtime's (" +
                          std::to_string(art::kFormatVersion) +
                          "); recompile it with kiln compile-model");
  // FlatBuffers checks alignment relative to the buffer's start, so the
  // start itself must be aligned (the writer puts it right after the header).
  if (h.planOffset % 16 != 0)
    return fail(path, "plan section at offset " + std::to_string(h.planOffset) +
                          " is misaligned");
  if (h.planOffset < sizeof(art::FileHeader) ||
      !inRange(h.planOffset, h.planSize, fileSize))
    return fail(path, "plan section [" + std::to_string(h.planOffset) + ", +" +
                          std::to_string(h.planSize) +
                          ") runs past the end of the file (size " +
                          std::to_string(fileSize) + "): truncated?");
  if (h.weightsSize && (h.weightsOffset % art::kWeightsAlignment != 0 ||
                        h.weightsOffset < h.planOffset + h.planSize ||
                        !inRange(h.weightsOffset, h.weightsSize, fileSize)))
    return fail(path, "weights section [" + std::to_string(h.weightsOffset) +
                          ", +" + std::to_string(h.weightsSize) +
                          ") is misplaced or runs past the end of the file "
                          "(size " +
                          std::to_string(fileSize) + "): truncated?");
  return absl::OkStatus();
}

std::string shapeString(const flatbuffers::Vector<int64_t> *shape) {
  std::string s = "[";
  for (size_t i = 0; shape && i < shape->size(); ++i)
    s += (i ? "," : "") + std::to_string(shape->Get(i));
  return s + "]";
}

frontend::DType frontendType(art::ElementType type) {
  switch (type) {
  case art::ElementType::BF16:
    return frontend::DType::BF16;
  case art::ElementType::F16:
    return frontend::DType::F16;
  case art::ElementType::F8E4M3:
    return frontend::DType::F8_E4M3;
  case art::ElementType::I32:
    return frontend::DType::I32;
  default:
    return frontend::DType::F32;
  }
}

/// Resolves external parameters from the source checkpoint's safetensors:
/// one tensor maps zero-copy; a stacked parameter is gathered into one
/// buffer.
absl::Status bindExternal(Model::Impl &impl, const std::filesystem::path &path,
                          const std::filesystem::path &weightsDir) {
  const art::Model &plan = *impl.plan;
  std::filesystem::path dir =
      !weightsDir.empty()  ? weightsDir
      : plan.weights_dir() ? std::filesystem::path(plan.weights_dir()->str())
                           : std::filesystem::path();
  std::map<std::string, frontend::SafetensorsFile *> files;
  for (const art::Parameter *p : *plan.parameters()) {
    const auto *sources = p->sources();
    if (!sources || sources->size() == 0)
      return fail(path, "external parameter " + p->name()->str() +
                            " names no checkpoint tensor");
    std::vector<std::span<const std::byte>> parts;
    std::vector<const frontend::TensorInfo *> infos;
    uint64_t total = 0;
    ParameterRecipe recipe;
    if (const art::Fp8Quant *q = p->quantize()) {
      recipe.quantize =
          Fp8BlockQuant{q->block_rows(), q->block_cols(), q->ue8m0()};
      recipe.scales = q->scale();
    }
    if (const art::HeadSlice *t = p->transform())
      recipe.slice = HeadSlice{t->heads(), t->rows(), t->offset(), t->size(),
                               t->transpose()};
    for (const art::WeightSource *source : *sources) {
      if (!source->file() || !source->tensor())
        return fail(path, "incomplete weight source of " + p->name()->str());
      std::string fileName = source->file()->str();
      auto it = files.find(fileName);
      if (it == files.end()) {
        auto opened = frontend::SafetensorsFile::open(dir / fileName);
        if (!opened.ok())
          return absl::Status(opened.status().code(),
                              path.string() + ": external weights: " +
                                  std::string(opened.status().message()));
        impl.externalFiles.push_back(*std::move(opened));
        it = files.emplace(fileName, impl.externalFiles.back().get()).first;
      }
      const frontend::TensorInfo *tensor =
          it->second->find(source->tensor()->str());
      if (!tensor)
        return fail(path, "external weights: " + (dir / fileName).string() +
                              " has no tensor '" + source->tensor()->str() +
                              "' (the checkpoint changed since compiling?)");
      if (!recipe.quantize && tensor->dtype != frontendType(p->type()))
        return fail(path, "external weights: " + (dir / fileName).string() +
                              ": tensor '" + tensor->name + "' is " +
                              std::string(frontend::dtypeName(tensor->dtype)) +
                              " but the artifact was compiled for " +
                              detail::elementTypeName(p->type()));
      parts.push_back(it->second->data(*tensor));
      infos.push_back(tensor);
      total += parts.back().size();
    }
    if (recipe.derived()) {
      // Derived at load from the whole source (e.g. W_UK out of kv_b_proj,
      // or FP8 codes and scales out of a bf16 weight).
      ParameterSource source;
      source.type = artifactElementType(infos.front()->dtype)
                        .value_or(art::ElementType::I32);
      source.shape = infos.front()->shape;
      source.tensors = parts;
      for (const frontend::TensorInfo *info : infos)
        if (info->dtype != infos.front()->dtype ||
            info->shape != infos.front()->shape)
          return fail(path, "external weights of " + p->name()->str() +
                                ": tensor '" + info->name +
                                "' differs in dtype or shape from '" +
                                infos.front()->name + "'");
      auto derived = std::make_unique<std::byte[]>(p->bytes());
      std::vector<int64_t> shape(p->shape()->begin(), p->shape()->end());
      if (absl::Status s = deriveParameter(recipe, source, p->type(), shape,
                                           p->name()->str(), derived.get());
          !s.ok())
        return fail(path, "external weights: " + std::string(s.message()));
      impl.parameterData.push_back(derived.get());
      impl.ownedWeights.push_back(std::move(derived));
      continue;
    }
    if (total != p->bytes())
      return fail(path, "external weights of " + p->name()->str() + " hold " +
                            std::to_string(total) + " bytes, the artifact " +
                            "expects " + std::to_string(p->bytes()) +
                            " (shape " + shapeString(p->shape()) + ")");
    // Zero-copy when the tensor is aligned for its element type (the
    // safetensors format does not promise it); otherwise gathered below.
    if (parts.size() == 1 && reinterpret_cast<uintptr_t>(parts.front().data()) %
                                     artifact::elementBytes(p->type()) ==
                                 0) {
      impl.parameterData.push_back(parts.front().data());
      continue;
    }
    auto gathered = std::make_unique<std::byte[]>(total);
    std::byte *at = gathered.get();
    for (std::span<const std::byte> part : parts) {
      std::memcpy(at, part.data(), part.size());
      at += part.size();
    }
    impl.parameterData.push_back(gathered.get());
    impl.ownedWeights.push_back(std::move(gathered));
  }
  return absl::OkStatus();
}

void describe(Model::Impl &impl, const std::filesystem::path &path) {
  const art::Model &plan = *impl.plan;
  ModelInfo &info = impl.info;
  info.path = path.string();
  info.architecture = plan.architecture() ? plan.architecture()->str() : "";
  info.vocabSize = plan.vocab_size();
  info.hiddenSize = plan.hidden_size();
  info.numLayers = plan.num_layers();
  info.maxContext = plan.max_context();
  info.externalWeights = plan.weights_mode() == art::WeightsMode::External;
  for (const art::Parameter *p : *plan.parameters()) {
    uint64_t count = 1;
    for (int64_t d : *p->shape())
      count *= static_cast<uint64_t>(d);
    info.parameterCount += count;
    info.parameterBytes[detail::elementTypeName(p->type())] += p->bytes();
  }
  for (const art::KvSlot *slot : *plan.kv_slots()) {
    info.kvCacheBytesPerToken += detail::slotBytesPerToken(*slot);
    if (slot->packed())
      info.kvCacheStorage =
          slot->fp8_columns() > 0 ? "fp8 latent with bf16 rope" : "bf16 latent";
  }
  if (plan.gpu_modules())
    for (const art::GpuModule *m : *plan.gpu_modules())
      info.gpuCode.push_back({m->arch()->str(), m->kernels()->size(),
                              m->cubin()->size(), m->ptx()->size()});
  for (const art::EntryPoint *e : *plan.entry_points()) {
    size_t storing = 0;
    if (e->fused())
      for (const art::FusedLaunch *group : *e->fused())
        storing += std::any_of(group->args()->begin(), group->args()->end(),
                               [](const art::TensorRef *arg) {
                                 return arg->storage() == art::Storage::KvRows;
                               });
    info.entryPoints.push_back(
        {e->name()->str(), e->max_batch(), e->max_seq(), e->arena_bytes(),
         e->launches()->size(), e->fused() ? e->fused()->size() : 0,
         e->linear_groups() ? e->linear_groups()->size() : 0, storing,
         e->attention() ? e->attention()->str() : ""});
    info.maxBatch = std::max(info.maxBatch, e->max_batch());
  }
}

/// The CPU module for this machine, unless switched off; a module for
/// another machine is reported, not an error (the groups run as their ops).
absl::Status loadHostKernels(Model::Impl &impl, const LoadOptions &options) {
  const art::Model &plan = *impl.plan;
  if (!plan.host_modules())
    return absl::OkStatus();
  const char *env = std::getenv("KILN_HOST_KERNELS");
  bool enabled = options.hostKernels && !(env && std::string(env) == "0");
  for (const art::HostModule *m : *plan.host_modules()) {
    ModelInfo::HostCode code{m->target()->str(), m->kernels()->size(),
                             m->shared_object()->size(), ""};
    if (!enabled) {
      code.status = "not used (switched off)";
    } else if (code.target != art::kHostTarget) {
      code.status =
          "not used (this machine is " + std::string(art::kHostTarget) + ")";
    } else if (!impl.hostKernels) {
      absl::StatusOr<std::unique_ptr<cpu::HostKernels>> kernels =
          cpu::HostKernels::load(*m, impl.info.path);
      if (!kernels.ok())
        return kernels.status();
      impl.hostKernels = *std::move(kernels);
      code.status = "loaded";
    }
    impl.info.hostCode.push_back(std::move(code));
  }
  return absl::OkStatus();
}

} // namespace

Model::Impl::~Impl() {
  if (mapping)
    ::munmap(const_cast<std::byte *>(mapping), mappingSize);
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

const ModelInfo &Model::info() const { return impl_->info; }

absl::StatusOr<std::unique_ptr<Model>>
Model::open(const std::filesystem::path &path, const LoadOptions &options) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::NotFoundError("cannot open " + path.string() + ": " +
                               std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return fail(path, std::string("cannot stat: ") + std::strerror(errno));
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < sizeof(art::FileHeader)) {
    ::close(fd);
    return fail(path, "file of " + std::to_string(size) +
                          " bytes is too short for a Kiln artifact "
                          "(truncated?)");
  }
  void *mapped = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapped == MAP_FAILED)
    return fail(path, std::string("cannot map: ") + std::strerror(errno));
  auto impl = std::make_unique<Impl>();
  impl->mapping = static_cast<const std::byte *>(mapped);
  impl->mappingSize = size;

  art::FileHeader header;
  std::memcpy(&header, impl->mapping, sizeof(header));
  if (absl::Status s = checkHeader(header, size, path); !s.ok())
    return s;
  const std::byte *planBytes = impl->mapping + header.planOffset;
  if (art::checksum64(planBytes, header.planSize) != header.planChecksum)
    return fail(path, "plan checksum mismatch: the file is corrupted");
  flatbuffers::Verifier verifier(reinterpret_cast<const uint8_t *>(planBytes),
                                 header.planSize);
  if (!art::VerifyModelBuffer(verifier))
    return fail(path, "the plan is not a valid kiln.artifact.Model");
  impl->plan = art::GetModel(planBytes);
  const art::Model &plan = *impl->plan;
  if (plan.schema_version() != art::kFormatVersion)
    return fail(path, "plan schema version " +
                          std::to_string(plan.schema_version()) +
                          " is not this runtime's (" +
                          std::to_string(art::kFormatVersion) + ")");
  if (uint64_t unknown = plan.required_features() & ~art::kKnownFeatures)
    return fail(
        path, "the artifact needs features this runtime lacks "
              "(bits 0x" +
                  [&] {
                    char buf[32];
                    std::snprintf(buf, sizeof(buf), "%llx",
                                  static_cast<unsigned long long>(unknown));
                    return std::string(buf);
                  }() +
                  "); update Kiln");
  if (absl::Status s = detail::verifyPlan(plan, path.string(),
                                          impl->arenaBytesRowPerSequence);
      !s.ok())
    return s;

  if (plan.weights_mode() == art::WeightsMode::Embedded) {
    const std::byte *weights = impl->mapping + header.weightsOffset;
    if (options.verifyWeights &&
        art::checksum64(weights, header.weightsSize) != header.weightsChecksum)
      return fail(path, "weights checksum mismatch: the file is corrupted");
    for (const art::Parameter *p : *plan.parameters()) {
      if (!inRange(p->offset(), p->bytes(), header.weightsSize) ||
          p->offset() % art::kParameterAlignment != 0)
        return fail(path, "parameter " + p->name()->str() +
                              " lies outside the weights section or is "
                              "misaligned");
      impl->parameterData.push_back(weights + p->offset());
    }
  } else if (absl::Status s = bindExternal(*impl, path, options.weightsDir);
             !s.ok()) {
    return s;
  }
  describe(*impl, path);
  if (absl::Status s = loadHostKernels(*impl, options); !s.ok())
    return s;
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

} // namespace kiln
