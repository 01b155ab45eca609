// Executor::Impl's creation (driver, modules, device memory), the step's
// launch loop, decode graphs, the kernel profile and Executor::run. The
// launches themselves are in CudaExecutorLaunches.cpp, CudaExecutorGemms.cpp
// and CudaExecutorExperts.cpp (CudaExecutorImpl.h lists them).
#include "runtime/src/cuda/CudaExecutorImpl.h"

#include "LaunchAttributes.h"
#include "cpu/Kernels.h"
#include "runtime/src/cuda/EmulatedBlasLt.h"
#include "runtime/src/cuda/LibraryFatbin.h"

#include "runtime/kernels/KvAttention.h"
#include "runtime/kernels/Library.h"

#include <algorithm>
#include <cstdlib>
#include <initializer_list>

namespace kiln::cuda {

namespace art = artifact;

Executor::Impl::~Impl() {
  if (!driver)
    return;
  const DriverApi &a = api();
  // Nothing queued may outlive the memory it reads (a step that failed
  // part way leaves work behind).
  if (stream)
    a.cuStreamSynchronize(stream);
  for (SideStream &side : expertStreams)
    if (side.stream)
      a.cuStreamSynchronize(side.stream);
  profiler.reset(); // its events, before the context goes
  if (pinned)
    a.cuMemHostUnregister(pinned);
  for (auto &[key, graph] : graphs)
    a.cuGraphExecDestroy(graph.exec);
  releaseExpertStreams();
  for (DeviceBuffer &b : allocations)
    a.cuMemFree(b.ptr);
  if (generated)
    a.cuModuleUnload(generated);
  if (library)
    a.cuModuleUnload(library);
  if (stream)
    a.cuStreamDestroy(stream);
  if (context)
    a.cuDevicePrimaryCtxRelease(device);
}

absl::StatusOr<CUdeviceptr> Executor::Impl::allocate(size_t bytes,
                                                     const std::string &what) {
  CUdeviceptr ptr = 0;
  // 256-byte aligned by the driver; never zero bytes.
  CUresult r = api().cuMemAlloc(&ptr, std::max<size_t>(bytes, 256));
  if (r != CUDA_SUCCESS)
    return absl::ResourceExhaustedError(
        "GPU: cannot allocate " + std::to_string(bytes) + " bytes for " + what +
        ": " + std::string(check(r, "cuMemAlloc").message()));
  allocations.push_back({ptr, bytes});
  if (absl::Status s = check(api().cuMemsetD8Async(ptr, 0, bytes, stream),
                             "cuMemsetD8Async");
      !s.ok())
    return s;
  return ptr;
}

absl::StatusOr<CUfunction> Executor::Impl::function(const std::string &name) {
  auto it = functions.find(name);
  if (it != functions.end())
    return it->second;
  // Each name is looked up in its own module only: a failed lookup is an
  // API error compute-sanitizer reports.
  CUmodule module = fusedThreads.count(name) ? generated : library;
  CUfunction f = nullptr;
  CUresult r = api().cuModuleGetFunction(&f, module, name.c_str());
  if (r != CUDA_SUCCESS)
    return absl::InternalError("GPU: no kernel " + name +
                               (module == generated
                                    ? " in the artifact's module"
                                    : " in the library"));
  functions.emplace(name, f);
  return f;
}

absl::Status Executor::Impl::loadModules(bool requireGpuCode) {
  if (absl::Status s =
          check(api().cuModuleLoadData(&library, libraryFatbin()),
                "loading the library kernels (built for sm_90a / compute_90)");
      !s.ok())
    return s;
  int major = 0, minor = 0;
  api().cuDeviceGetAttribute(
      &major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
  api().cuDeviceGetAttribute(
      &minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
  std::string arch = "sm_" + std::to_string(major) + std::to_string(minor);
  const art::Model &plan = *model->plan;
  std::string used = "none";
  if (emulated && model->hostKernels) {
    // The emulated driver has no code for the cubin; it runs the same
    // groups' host builds, launched as the GPU kernels are.
    emulatedImage.kernels = model->hostKernels.get();
    if (api().cuModuleLoadData(&generated, &emulatedImage) == CUDA_SUCCESS) {
      std::string missing;
      for (const art::EntryPoint *e : *plan.entry_points()) {
        if (!e->fused())
          continue;
        for (const art::FusedLaunch *g : *e->fused()) {
          fusedThreads[g->kernel()->str()] = kLibraryThreads;
          if (missing.empty() && !function(g->kernel()->str()).ok())
            missing = g->kernel()->str();
        }
      }
      used = "host builds (emulated)";
      if (!missing.empty()) {
        for (const auto &[name, threads] : fusedThreads)
          functions.erase(name);
        fusedThreads.clear();
        generated = nullptr;
        used = "none (the host module lacks " + missing + ")";
      }
    }
  }
  if (!generated && plan.gpu_modules())
    for (const art::GpuModule *m : *plan.gpu_modules()) {
      std::string moduleArch = m->arch()->str();
      // sm_90a code runs on sm_90 only; PTX of an older virtual
      // architecture is JIT-compiled by the driver for newer GPUs.
      bool exact = moduleArch == arch || moduleArch == arch + "a";
      CUresult r = CUDA_ERROR_NO_BINARY_FOR_GPU;
      if (exact)
        r = api().cuModuleLoadData(&generated, m->cubin()->data());
      if (r != CUDA_SUCCESS)
        r = api().cuModuleLoadData(&generated, m->ptx()->c_str());
      if (r == CUDA_SUCCESS) {
        used = moduleArch + (exact ? "" : " (PTX, JIT-compiled)");
        for (const art::GpuKernel *k : *m->kernels())
          fusedThreads[k->name()->str()] = k->block_threads();
        break;
      }
      generated = nullptr;
    }
  if (!generated && requireGpuCode)
    return absl::UnavailableError(
        "the artifact has no generated kernels for this " + arch +
        " GPU (compile with --target=cpu," + arch +
        "a, or choose the device explicitly)");
  description += " (" + arch + ", " + std::to_string(multiprocessors) +
                 " SMs, generated kernels: " + used + ")";
  return absl::OkStatus();
}

absl::Status Executor::Impl::checkSupported() const {
  for (const art::EntryPoint *e : *model->plan->entry_points())
    for (const art::Launch *l : *e->launches()) {
      const auto &refs = *l->args();
      std::string why;
      switch (l->kernel()) {
      case art::KernelKind::MoeGate:
        if (staticDim(refs.Get(1), 0) > kDeviceMaxExperts)
          why = "more than " + std::to_string(kDeviceMaxExperts) + " experts";
        break;
      case art::KernelKind::MoeDispatch:
        if (l->ints()->Get(0) > kDeviceMaxExperts)
          why = "more than " + std::to_string(kDeviceMaxExperts) + " experts";
        break;
      case art::KernelKind::Concat:
        if (refs.size() - 1 > kDeviceMaxConcat)
          why = "a concat of more than " + std::to_string(kDeviceMaxConcat) +
                " inputs";
        break;
      case art::KernelKind::Rope:
        if (lastDim(refs.Get(0)) > 2 * kDeviceMaxRotaryHalf)
          why = "a rotary dimension above " +
                std::to_string(2 * kDeviceMaxRotaryHalf);
        break;
      case art::KernelKind::Linear:
      case art::KernelKind::GroupedLinear:
      case art::KernelKind::HeadLinear:
      case art::KernelKind::GatedLinear:
        // The 8 weights a lane loads share one FP8 scale block.
        if (fp8Gemm(*l)) {
          if (l->ints()->Get(fp8IntsAt(*l) + 1) % 8 != 0)
            why = "FP8 scale blocks of a width that is not a multiple of 8";
        }
        break;
      case art::KernelKind::Attention:
        if (staticDim(refs.Get(0), 3) > kDeviceMaxHeadDim ||
            staticDim(refs.Get(2), 3) > kDeviceMaxValueDim)
          why = "attention head dims above " +
                std::to_string(kDeviceMaxHeadDim) + " / " +
                std::to_string(kDeviceMaxValueDim);
        break;
      default:
        break;
      }
      if (!why.empty())
        return absl::UnimplementedError(
            "the GPU library kernels do not take " + why + " (" +
            e->name()->str() + ", " +
            (l->name() ? l->name()->str() : "a launch") + ")");
    }
  return absl::OkStatus();
}

absl::Status Executor::Impl::uploadParameters() {
  const art::Model &plan = *model->plan;
  parameters.resize(plan.parameters()->size());
  for (size_t i = 0; i < parameters.size(); ++i) {
    const art::Parameter *p = plan.parameters()->Get(i);
    absl::StatusOr<CUdeviceptr> ptr =
        allocate(p->bytes(), "parameter " + p->name()->str());
    if (!ptr.ok())
      return ptr.status();
    // On `stream`, after allocate's zero fill: a synchronous copy is not
    // ordered with a non-blocking stream's work, and the fill could land
    // after it.
    if (absl::Status s =
            check(api().cuMemcpyHtoDAsync(*ptr, model->parameterData[i],
                                          p->bytes(), stream),
                  "uploading parameter " + p->name()->str());
        !s.ok())
      return s;
    parameters[i] = *ptr;
  }
  return absl::OkStatus();
}

absl::Status Executor::Impl::allocateState() {
  const art::Model &plan = *model->plan;
  size_t heads = 0, dv = 0, experts = 0;
  for (const art::EntryPoint *e : *plan.entry_points()) {
    for (const art::Launch *l : *e->launches())
      if (l->kernel() == art::KernelKind::Attention) {
        heads = std::max<size_t>(heads, staticDim(l->args()->Get(0), 2));
        dv = std::max<size_t>(dv, staticDim(l->args()->Get(2), 3));
      } else if (l->kernel() == art::KernelKind::MoeDispatch) {
        experts = std::max<size_t>(experts, l->ints()->Get(0));
      }
  }
  absl::StatusOr<CUdeviceptr> a =
      allocate(std::max<uint64_t>(arenaBytes, 256), "the arena");
  if (!a.ok())
    return a.status();
  arena = *a;
  for (size_t s = 0; s < cache.slotFloats.size(); ++s) {
    absl::StatusOr<CUdeviceptr> slot =
        allocate(static_cast<size_t>(cache.numBlocks * cache.blockTokens *
                                     cache.slotFloats[s]) *
                     sizeof(float),
                 "KV cache slot " + std::to_string(s));
    if (!slot.ok())
      return slot.status();
    slots.push_back(*slot);
  }
  for (auto [ptr, bytes, what] :
       {std::tuple{&tables,
                   size_t(cache.maxBatch * cache.tableStride) * sizeof(int32_t),
                   "block tables"},
        {&held, size_t(cache.maxBatch) * sizeof(int32_t), "held tokens"},
        {&activeExperts, (1 + experts) * sizeof(int32_t), "routed experts"}}) {
    absl::StatusOr<CUdeviceptr> p = allocate(bytes, what);
    if (!p.ok())
      return p.status();
    *ptr = *p;
  }
  attentionScratchFloats =
      static_cast<size_t>(kiln::attentionScratchFloats(multiprocessors, dv));
  absl::StatusOr<CUdeviceptr> scratch =
      allocate(attentionScratchFloats * sizeof(float), "attention splits");
  if (!scratch.ok())
    return scratch.status();
  attentionScratch = *scratch;
  // FP8 GEMMs' quantized activations: codes (as floats) then scales;
  // gated GEMMs' up projections.
  size_t codes = 0, ups = 0;
  for (const art::EntryPoint *e : *plan.entry_points()) {
    art::SymbolSizes bounds{e->max_batch(), e->max_seq(), plan.max_context(),
                            uint64_t{e->max_batch()} * e->max_seq() *
                                plan.moe_top_k()};
    auto elements = [&](const art::TensorRef *t) {
      uint64_t n = 1;
      for (const art::Dim *d : *t->shape())
        n *= bounds.of(*d);
      return static_cast<size_t>(n);
    };
    for (const art::Launch *l : *e->launches()) {
      if (fp8Gemm(*l))
        codes = std::max(codes, elements(l->args()->Get(0)));
      if (l->kernel() == art::KernelKind::GatedLinear)
        ups = std::max(ups, elements(l->args()->Get(l->args()->size() - 1)));
    }
  }
  if (ups > 0) {
    absl::StatusOr<CUdeviceptr> u =
        allocate(ups * sizeof(float), "gated GEMMs' up projections");
    if (!u.ok())
      return u.status();
    upProjections = *u;
  }
  if (blas) {
    size_t bf16 = 0;
    for (const art::EntryPoint *e : *plan.entry_points()) {
      art::SymbolSizes bounds{e->max_batch(), e->max_seq(), plan.max_context(),
                              uint64_t{e->max_batch()} * e->max_seq() *
                                  plan.moe_top_k()};
      for (const art::Launch *l : *e->launches())
        if (blasGemm(*l) ||
            ((l->kernel() == art::KernelKind::GroupedLinear ||
              l->kernel() == art::KernelKind::GatedLinear) &&
             l->args()->Get(1)->type() == art::ElementType::BF16)) {
          uint64_t n = 1;
          for (const art::Dim *d : *l->args()->Get(0)->shape())
            n *= bounds.of(*d);
          bf16 = std::max<size_t>(bf16, n);
        }
    }
    absl::StatusOr<CUdeviceptr> w =
        allocate(kBlasWorkspaceBytes, "the cuBLASLt workspace");
    absl::StatusOr<CUdeviceptr> x =
        w.ok() ? allocate(bf16 * 2, "bf16 activations") : w;
    if (!x.ok())
      return x.status();
    blasWorkspace = *w;
    bf16Activations = *x;
  }
  if (codes > 0) {
    // One scale per row per 128 or more values: at most codes / 128 + rows.
    absl::StatusOr<CUdeviceptr> q =
        allocate(2 * codes * sizeof(float), "FP8 activations");
    if (!q.ok())
      return q.status();
    fp8Codes = *q;
    fp8Scales = *q + codes * sizeof(float);
  }
  // Rope tables: the same inverse frequencies the CPU kernels compute.
  for (const art::EntryPoint *e : *plan.entry_points())
    for (const art::Launch *l : *e->launches()) {
      if (l->kernel() != art::KernelKind::Rope)
        continue;
      cpu::RopeParams p = ropeParams(*l);
      int64_t dim = lastDim(l->args()->Get(0));
      std::vector<double> inv(static_cast<size_t>(dim / 2));
      cpu::ropeInverseFrequencies(p, dim, inv.data());
      absl::StatusOr<CUdeviceptr> t =
          allocate(inv.size() * sizeof(double), "rope table");
      if (!t.ok())
        return t.status();
      if (absl::Status s =
              check(api().cuMemcpyHtoDAsync(
                        *t, inv.data(), inv.size() * sizeof(double), stream),
                    "uploading a rope table");
          !s.ok())
        return s;
      ropeTables[l] = *t;
    }
  return absl::OkStatus();
}

CUdeviceptr Executor::Impl::resolve(const art::TensorRef *ref) const {
  switch (ref->storage()) {
  case art::Storage::Parameter:
    return parameters[ref->index()];
  case art::Storage::KvCache:
  case art::Storage::KvRows:
    return slots[ref->index()];
  default:
    return arena + ref->offset();
  }
}

int64_t Executor::Impl::of(const art::Dim &d) const {
  switch (d.symbol()) {
  case art::DimSymbol::Batch:
    return shape.batch;
  case art::DimSymbol::Seq:
    return shape.seq;
  case art::DimSymbol::KvLen:
    return shape.kvLen;
  case art::DimSymbol::RoutedRows:
    return shape.routed;
  default:
    return d.size();
  }
}

int64_t Executor::Impl::numel(const art::TensorRef *ref) const {
  int64_t n = 1;
  for (const art::Dim *d : *ref->shape())
    n *= of(*d);
  return n;
}

int64_t Executor::Impl::tokens(const art::TensorRef *ref) const {
  int64_t n = 1;
  for (const art::Dim *d : *ref->shape())
    if (d->symbol() != art::DimSymbol::Static)
      n *= of(*d);
  return n;
}

absl::Status Executor::Impl::launchFused(const art::FusedLaunch &group) {
  absl::StatusOr<CUfunction> f = function(group.kernel()->str());
  if (!f.ok())
    return f.status();
  const auto &refs = *group.args();
  int64_t count = tokens(refs.Get(refs.size() - 1));
  if (count == 0)
    return absl::OkStatus();
  // The generated signature: (int64_t tokens, T *arg...), each by value.
  std::vector<CUdeviceptr> pointers(refs.size());
  std::vector<void *> args(refs.size() + 1);
  args[0] = &count;
  for (size_t i = 0; i < refs.size(); ++i) {
    pointers[i] = resolve(refs.Get(static_cast<flatbuffers::uoffset_t>(i)));
    args[i + 1] = &pointers[i];
  }
  // One block per token, the grid capped (blocks then stride over tokens).
  Dim3 grid{static_cast<int>(std::min<int64_t>(count, 1 << 20)), 1, 1};
  return launchKernel(*f, grid, fusedThreads.at(group.kernel()->str()),
                      args.data(), group.kernel()->str());
}

absl::Status Executor::Impl::launchKernel(CUfunction f, Dim3 grid,
                                          unsigned threads, void **args,
                                          const std::string &name) {
  const DriverApi &a = api();
  auto x = static_cast<unsigned>(grid.x), y = static_cast<unsigned>(grid.y),
       z = static_cast<unsigned>(grid.z);
  auto what = [&] {
    return name + " grid " + std::to_string(x) + "," + std::to_string(y) + "," +
           std::to_string(z);
  };
  if (!programmaticLaunch)
    return counted(check(a.cuLaunchKernel(f, x, y, z, threads, 1, 1, 0, stream,
                                          args, nullptr),
                         name),
                   name, what);
  CUlaunchAttribute attribute{};
  attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
  attribute.value.programmaticStreamSerializationAllowed = 1;
  CUlaunchConfig config{};
  config.gridDimX = x;
  config.gridDimY = y;
  config.gridDimZ = z;
  config.blockDimX = threads;
  config.blockDimY = config.blockDimZ = 1;
  config.hStream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return counted(check(a.cuLaunchKernelEx(&config, f, args, nullptr), name),
                 name, what);
}

bool Executor::Impl::graphable(const art::EntryPoint &entry) {
  for (const art::Launch *l : *entry.launches())
    for (const art::TensorRef *ref : *l->args())
      if (ref->storage() == art::Storage::Arena)
        for (const art::Dim *d : *ref->shape())
          if (d->symbol() == art::DimSymbol::KvLen)
            return false;
  return true;
}

int64_t Executor::Impl::contextBucket(int64_t kvLen) const {
  int64_t bucket = 256;
  while (bucket < kvLen)
    bucket *= 2;
  return bucket;
}

absl::Status Executor::Impl::runLaunches(const art::EntryPoint &entry) {
  const auto &launches = *entry.launches();
  size_t group = 0, linearGroup = 0;
  for (size_t i = 0; i < launches.size(); ++i) {
    const art::FusedLaunch *fused =
        generated && entry.fused() && group < entry.fused()->size()
            ? entry.fused()->Get(static_cast<flatbuffers::uoffset_t>(group))
            : nullptr;
    const art::LinearGroup *linears =
        entry.linear_groups() && linearGroup < entry.linear_groups()->size()
            ? entry.linear_groups()->Get(
                  static_cast<flatbuffers::uoffset_t>(linearGroup))
            : nullptr;
    absl::Status s;
    if (fused && fused->first() == i) {
      s = launchFused(*fused);
      i += fused->count() - 1;
      ++group;
    } else if (linears && linears->first() == i) {
      s = launchLinearGroup(entry, *linears);
      i += linears->count() - 1;
      ++linearGroup;
    } else {
      s = launchLibrary(*launches.Get(static_cast<flatbuffers::uoffset_t>(i)));
    }
    if (!s.ok()) {
      const art::Launch *l =
          launches.Get(static_cast<flatbuffers::uoffset_t>(i));
      return absl::Status(s.code(),
                          std::string(art::EnumNameKernelKind(l->kernel())) +
                              " (" + (l->name() ? l->name()->str() : "?") +
                              "): " + std::string(s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Executor::Impl::holdForProfile() {
  absl::StatusOr<CUfunction> hold = function("kiln_hold");
  if (!hold.ok())
    return hold.status();
  auto queued = longestQueueSeconds.find(runningEntry);
  double seconds = queued == longestQueueSeconds.end()
                       ? kFirstHoldSeconds
                       : std::min(1.5 * queued->second, kMaxHoldSeconds);
  HoldParams params{static_cast<long long>(seconds * 1e9)};
  void *args[] = {&params};
  // Not a step's kernel: neither counted nor logged.
  if (absl::Status s =
          check(api().cuLaunchKernel(*hold, 1, 1, 1, kLibraryThreads, 1, 1, 0,
                                     stream, args, nullptr),
                "kiln_hold");
      !s.ok())
    return s;
  heldAt = std::chrono::steady_clock::now();
  return profiler->mark(stream, "");
}

void Executor::Impl::queuedForProfile() {
  double queued =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - heldAt)
          .count();
  double &longest = longestQueueSeconds[runningEntry];
  longest = std::max(longest, queued);
}

Executor::Executor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Executor::~Executor() = default;

const std::string &Executor::description() const { return impl_->description; }

int64_t Executor::kernelLaunches() const { return impl_->launchesRun; }

void Executor::setProfiling(bool on) {
  Impl &s = *impl_;
  if (on && !s.profiling) {
    if (!s.profiler)
      s.profiler = std::make_unique<KernelProfiler>(*s.driver);
    s.longestQueueSeconds.clear();
  }
  s.profiling = on;
}

std::vector<KernelTime> Executor::profile() const {
  return impl_->profiler ? impl_->profiler->totals()
                         : std::vector<KernelTime>{};
}

void Executor::resetProfile() {
  if (impl_->profiler)
    impl_->profiler->reset();
}

void Executor::pinHostBuffer(void *data, size_t bytes) {
  Impl &s = *impl_;
  if (s.pinned || bytes == 0)
    return;
  if (s.api().cuMemHostRegister(data, bytes, 0) == CUDA_SUCCESS)
    s.pinned = data;
}

namespace {
/// Environment variable `name` as the index of one of `modes`: unset or
/// empty is the first.
absl::StatusOr<int> environmentMode(const char *name,
                                    std::initializer_list<const char *> modes) {
  const char *value = std::getenv(name);
  if (!value || !*value)
    return 0;
  std::string expected;
  int index = 0;
  for (const char *mode : modes) {
    if (std::string(value) == mode)
      return index;
    expected += (index ? index + 1 == int(modes.size()) ? " or " : ", " : "") +
                std::string(mode);
    ++index;
  }
  return absl::InvalidArgumentError(std::string(name) + " is \"" + value +
                                    "\"; expected " + expected);
}
/// Environment variable `name` as a count in [0, most]: unset or empty is
/// `fallback`.
absl::StatusOr<int> environmentCount(const char *name, int fallback, int most) {
  const char *value = std::getenv(name);
  if (!value || !*value)
    return fallback;
  char *end = nullptr;
  long count = std::strtol(value, &end, 10);
  if (*end != '\0' || count < 0 || count > most)
    return absl::InvalidArgumentError(std::string(name) + " is \"" + value +
                                      "\"; expected a count from 0 to " +
                                      std::to_string(most));
  return static_cast<int>(count);
}
} // namespace

absl::StatusOr<std::unique_ptr<Executor>>
Executor::create(const Model::Impl &model, const CacheLayout &cache,
                 uint64_t arenaBytes, bool requireGpuCode, bool emulate) {
  auto impl = std::make_unique<Impl>();
  impl->model = &model;
  impl->cache = cache;
  impl->arenaBytes = arenaBytes;
  impl->emulated = emulate;
  if (absl::Status s = impl->checkSupported(); !s.ok())
    return s;
  absl::StatusOr<Driver> driver =
      emulate ? absl::StatusOr<Driver>(emulatedDriver()) : Driver::load();
  if (!driver.ok())
    return driver.status();
  impl->driver.emplace(*std::move(driver));
  absl::StatusOr<std::vector<DeviceInfo>> devices = impl->driver->devices();
  if (!devices.ok())
    return devices.status();
  if (devices->empty())
    return absl::UnavailableError("the NVIDIA driver sees no GPU");
  const DriverApi &a = impl->api();
  if (absl::Status s =
          impl->check(a.cuDeviceGet(&impl->device, 0), "cuDeviceGet");
      !s.ok())
    return s;
  if (absl::Status s =
          impl->check(a.cuDevicePrimaryCtxRetain(&impl->context, impl->device),
                      "cuDevicePrimaryCtxRetain");
      !s.ok())
    return s;
  if (absl::Status s =
          impl->check(a.cuCtxSetCurrent(impl->context), "cuCtxSetCurrent");
      !s.ok())
    return s;
  if (absl::Status s =
          impl->check(a.cuStreamCreate(&impl->stream, CU_STREAM_NON_BLOCKING),
                      "cuStreamCreate");
      !s.ok())
    return s;
  impl->multiprocessors = devices->front().multiprocessors;
  impl->description = devices->front().name;
  if (absl::Status s = impl->loadModules(requireGpuCode); !s.ok())
    return s;
  // The enums list their modes in this order, the default first.
  absl::StatusOr<int> experts =
      environmentMode("KILN_EXPERT_GEMMS", {"auto", "per-expert", "grouped"});
  absl::StatusOr<int> mmaGemms =
      environmentMode("KILN_MMA_GEMMS", {"auto", "on", "off"});
  absl::StatusOr<int> mmaAttention =
      environmentMode("KILN_MMA_ATTENTION", {"auto", "on", "off"});
  absl::StatusOr<int> pdl = environmentMode("KILN_PDL", {"auto", "on", "off"});
  absl::StatusOr<int> logLaunches =
      environmentMode("KILN_LOG_LAUNCHES", {"0", "1"});
  absl::StatusOr<int> graphs =
      environmentMode("KILN_CUDA_GRAPHS", {"on", "off"});
  absl::StatusOr<int> expertStreams =
      environmentCount("KILN_EXPERT_STREAMS", 4, 16);
  absl::StatusOr<int> selections =
      environmentMode("KILN_MOE_SELECTIONS", {"auto", "off"});
  absl::StatusOr<int> prefetch =
      environmentMode("KILN_PREFETCH", {"on", "off"});
  for (const absl::StatusOr<int> *mode :
       {&experts, &mmaGemms, &mmaAttention, &pdl, &logLaunches, &graphs,
        &expertStreams, &selections, &prefetch})
    if (!mode->ok())
      return mode->status();
  impl->prefetch = *prefetch == 0;
  impl->decodeGraphs = *graphs == 0;
  impl->expertStreamCount = *expertStreams;
  impl->expertGemms = static_cast<Impl::ExpertGemms>(*experts);
  impl->mmaGemms = static_cast<Impl::MmaGemms>(*mmaGemms);
  impl->mmaAttention = static_cast<Impl::MmaAttention>(*mmaAttention);
  std::string noPdl = devices->front().computeMajor < 9 ? "a GPU before sm_90"
                      : !a.cuLaunchKernelEx             ? "no cuLaunchKernelEx"
                      : impl->driver->version() < 12030
                          ? "a driver before CUDA 12.3"
                          : "";
  if (*pdl == 1 && !noPdl.empty())
    return absl::FailedPreconditionError(
        "KILN_PDL=on, but programmatic dependent launch needs sm_90+ and a "
        "CUDA 12.3+ driver: this is " +
        noPdl);
  impl->programmaticLaunch = *pdl != 2 && noPdl.empty();
  impl->logLaunches = *logLaunches == 1;
  if (impl->programmaticLaunch)
    impl->description += ", programmatic dependent launch";
  if (!impl->decodeGraphs)
    impl->description += ", no CUDA graphs (KILN_CUDA_GRAPHS=off)";
  impl->selectionDispatch =
      *selections == 0 && impl->mmaGemms != Impl::MmaGemms::On;
  for (const art::EntryPoint *e : *model.plan->entry_points()) {
    if (Impl::graphable(*e))
      impl->graphableEntries.insert(e);
    for (flatbuffers::uoffset_t i = 0; i < e->launches()->size(); ++i) {
      const art::Launch *l = e->launches()->Get(i);
      if ((l->kernel() == art::KernelKind::Linear ||
           l->kernel() == art::KernelKind::HeadLinear ||
           l->kernel() == art::KernelKind::GroupedLinear ||
           l->kernel() == art::KernelKind::GatedLinear) &&
          l->args()->Get(1)->type() == art::ElementType::BF16)
        impl->bf16Weights = true;
      if (l->kernel() == art::KernelKind::MoeDispatch)
        for (flatbuffers::uoffset_t k = 2; k < l->ints()->size(); ++k)
          impl->routedReaders[l].insert(e->launches()->Get(
              i + static_cast<flatbuffers::uoffset_t>(l->ints()->Get(k))));
    }
  }
  // KILN_CUBLASLT=0 keeps every GEMM in the library kernels (fp32
  // activations): the numerics check compares both paths.
  const char *useBlas = std::getenv("KILN_CUBLASLT");
  if (useBlas && std::string(useBlas) == "0") {
    impl->description += ", no cuBLASLt (KILN_CUBLASLT=0)";
  } else if (emulate) {
    // KILN_EMULATE_CUBLASLT=1: the host emulation of cuBLASLt, so that the
    // paths through it (and their glue) run without a GPU; =decline: one
    // with no algorithm for any GEMM, so that the fallbacks run.
    absl::StatusOr<int> emulateBlas =
        environmentMode("KILN_EMULATE_CUBLASLT", {"0", "1", "decline"});
    if (!emulateBlas.ok())
      return emulateBlas.status();
    if (*emulateBlas != 0) {
      bool decline = *emulateBlas == 2;
      absl::StatusOr<BlasLt> blas = BlasLt::fromApi(emulatedBlasLtApi(decline));
      if (!blas.ok())
        return blas.status();
      impl->blas.emplace(*std::move(blas));
      impl->description += decline ? ", cuBLASLt (emulated, declining every "
                                     "GEMM)"
                                   : ", cuBLASLt (emulated)";
    }
  } else {
    absl::StatusOr<BlasLt> blas = BlasLt::load();
    if (blas.ok())
      impl->blas.emplace(*std::move(blas));
    impl->description +=
        blas.ok()
            ? ", cuBLASLt"
            : ", no cuBLASLt (" + std::string(blas.status().message()) + ")";
  }
  if (absl::Status s = impl->uploadParameters(); !s.ok())
    return s;
  if (absl::Status s = impl->allocateState(); !s.ok())
    return s;
  if (absl::Status s = impl->check(a.cuStreamSynchronize(impl->stream),
                                   "initializing device memory");
      !s.ok())
    return s;
  return std::unique_ptr<Executor>(new Executor(std::move(impl)));
}

absl::Status Executor::run(const std::string &name, const StepShape &shape,
                           const StepInputs &inputs, float *logits,
                           const std::vector<int64_t> *rows) {
  Impl &s = *impl_;
  const DriverApi &a = s.api();
  const art::EntryPoint *entry = nullptr;
  for (const art::EntryPoint *e : *s.model->plan->entry_points())
    if (e->name()->str() == name)
      entry = e;
  if (!entry)
    return absl::InvalidArgumentError("no entry point " + name);
  s.shape = shape;
  s.runningEntry = entry;
  int64_t tokens = shape.batch * shape.seq;
  auto upload = [&](CUdeviceptr dst, const void *src, size_t bytes) {
    return s.check(a.cuMemcpyHtoDAsync(dst, src, bytes, s.stream),
                   "copying the step's inputs");
  };
  for (absl::Status st :
       {upload(s.resolve(entry->tokens()), inputs.tokens,
               size_t(tokens) * sizeof(int32_t)),
        upload(s.resolve(entry->positions()), inputs.positions,
               size_t(tokens) * sizeof(int32_t)),
        upload(s.resolve(entry->kv_lengths()), inputs.kvLengths,
               size_t(shape.batch) * sizeof(int32_t)),
        upload(s.tables, inputs.tables,
               size_t(shape.batch * s.cache.tableStride) * sizeof(int32_t)),
        upload(s.held, inputs.heldTokens,
               size_t(shape.batch) * sizeof(int32_t))})
    if (!st.ok())
      return st;
  if (const art::TensorRef *rows = entry->cache_rows()) {
    if (!inputs.cacheRows)
      return absl::InvalidArgumentError(
          name + " stores cache rows, but the step has none");
    if (absl::Status st = upload(s.resolve(rows), inputs.cacheRows,
                                 size_t(tokens) * sizeof(int32_t));
        !st.ok())
      return st;
  }

  bool graph =
      shape.seq == 1 && s.decodeGraphs && s.graphableEntries.count(entry);
  // A graph replays its head over every row; elsewhere the head (the
  // entry's last launch, PlanVerifier checks) computes `rows` alone.
  bool headOverRows = rows && !graph;
  s.logitRows = headOverRows ? rows : nullptr;
  if (graph && !s.profiling) {
    // The graph's kernels read every per-step value from device memory;
    // its launches depend only on the entry point, the batch size and the
    // context bucket.
    Impl::GraphKey key{entry, shape.batch, s.contextBucket(shape.kvLen)};
    auto it = s.graphs.find(key);
    if (it == s.graphs.end()) {
      s.shape.kvLen = key.bucket;
      s.capturing = s.graphStep = true;
      s.launchesCaptured = 0;
      if (absl::Status st =
              s.check(a.cuStreamBeginCapture(
                          s.stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                      "cuStreamBeginCapture");
          !st.ok())
        return st;
      absl::Status launched = s.runLaunches(*entry);
      CUgraph graph = nullptr;
      absl::Status ended =
          s.check(a.cuStreamEndCapture(s.stream, &graph), "capturing decode");
      s.capturing = s.graphStep = false;
      if (!launched.ok() || !ended.ok()) {
        if (graph)
          a.cuGraphDestroy(graph);
        return launched.ok() ? ended : launched;
      }
      CUgraphExec exec = nullptr;
      absl::Status made =
          s.check(a.cuGraphInstantiateWithFlags(&exec, graph, 0),
                  "instantiating the decode graph");
      a.cuGraphDestroy(graph);
      if (!made.ok())
        return made;
      it = s.graphs.emplace(key, Impl::DecodeGraph{exec, s.launchesCaptured})
               .first;
    }
    if (absl::Status st =
            s.check(a.cuGraphLaunch(it->second.exec, s.stream), "decode graph");
        !st.ok())
      return st;
    s.launchesRun += it->second.launches;
  } else {
    // Profiled, a graph's step runs its launches one by one.
    if (graph) {
      s.shape.kvLen = s.contextBucket(shape.kvLen);
      s.graphStep = true;
    }
    absl::Status st = s.profiling ? s.holdForProfile() : absl::OkStatus();
    if (st.ok())
      st = s.runLaunches(*entry);
    s.graphStep = false;
    if (!st.ok()) {
      if (s.profiling)
        s.profiler->discard();
      return st;
    }
  }
  s.logitRows = nullptr;
  if (s.profiling)
    s.queuedForProfile();
  if (absl::Status st =
          s.check(a.cuStreamSynchronize(s.stream), "running " + name);
      !st.ok())
    return st;
  if (s.profiling)
    if (absl::Status st = s.profiler->collect(); !st.ok())
      return st;
  if (!logits)
    return absl::OkStatus(); // left on the device (SessionOptions::stepLogits)
  size_t rowBytes = size_t(s.model->plan->vocab_size()) * sizeof(float);
  CUdeviceptr device = s.resolve(entry->logits());
  if (!rows)
    return s.check(a.cuMemcpyDtoH(logits, device, size_t(tokens) * rowBytes),
                   "copying the logits");
  if (rows->empty())
    return absl::OkStatus();
  if (headOverRows) // it wrote them as rows 0, 1, ...
    return s.check(a.cuMemcpyDtoH(logits, device, rows->size() * rowBytes),
                   "copying the logits");
  for (size_t i = 0; i < rows->size(); ++i)
    if (absl::Status st = s.check(
            a.cuMemcpyDtoH(reinterpret_cast<char *>(logits) + i * rowBytes,
                           device + (*rows)[i] * rowBytes, rowBytes),
            "copying the logits");
        !st.ok())
      return st;
  return absl::OkStatus();
}

} // namespace kiln::cuda
