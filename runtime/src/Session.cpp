// Sessions: initialize (arena, KV cache, launches bound to memory), then
// run entry points. The hot path resolves the step's dimensions, checks the
// run-time values a launch indexes with, and calls the kernel; it never
// allocates.
#include "ModelImpl.h"

#include "KernelTimes.h"
#include "LaunchAttributes.h"
#include "LogitRows.h"
#include "PagedKvCache.h"
#include "cpu/Kernels.h"
#include "cpu/PagedPacked.h"
#include "kiln/PlanShapes.h"
#ifdef KILN_HAVE_CUDA_EXECUTOR
#include "cuda/CudaExecutor.h"
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

namespace kiln {
namespace {

namespace art = artifact;

/// Run-time sizes of the dimension symbols for one step.
struct StepDims {
  int64_t batch = 0, seq = 0, kvLen = 0, routed = 0;
  int64_t of(const art::Dim &d) const {
    return static_cast<int64_t>(art::SymbolSizes{
        static_cast<uint64_t>(batch), static_cast<uint64_t>(seq),
        static_cast<uint64_t>(kvLen), static_cast<uint64_t>(routed)}
                                    .of(d));
  }
};

struct BoundArg {
  std::byte *data = nullptr;
  const art::TensorRef *ref = nullptr;
};

struct BoundLaunch {
  const art::Launch *launch = nullptr;
  std::vector<BoundArg> args;
};

/// A fused group the artifact's CPU kernel runs in place of launches
/// [first, first + count).
struct BoundFused {
  size_t first = 0, count = 0;
  cpu::HostKernels::Entry kernel = nullptr;
  std::vector<void *> args;
  /// Its last result, whose symbolic dimensions count the tokens.
  const art::TensorRef *tokens = nullptr;
};

struct BoundEntry {
  const art::EntryPoint *entry = nullptr;
  std::vector<BoundLaunch> launches;
  std::vector<BoundFused> fused; // in launch order
  int32_t *tokens = nullptr, *positions = nullptr, *kvLengths = nullptr;
  float *logits = nullptr;
};

struct FreeDeleter {
  void operator()(std::byte *p) const { std::free(p); }
};

int64_t numel(const art::TensorRef *ref, const StepDims &dims) {
  int64_t n = 1;
  for (const art::Dim *d : *ref->shape())
    n *= dims.of(*d);
  return n;
}

int64_t lastDim(const art::TensorRef *ref) {
  return ref->shape()->Get(ref->shape()->size() - 1)->size();
}

int64_t staticDim(const art::TensorRef *ref, unsigned i) {
  return ref->shape()->Get(i)->size();
}

cpu::ElementType kernelType(art::ElementType type) {
  switch (type) {
  case art::ElementType::BF16:
    return cpu::ElementType::BF16;
  case art::ElementType::F16:
    return cpu::ElementType::F16;
  case art::ElementType::F8E4M3:
    return cpu::ElementType::F8E4M3;
  case art::ElementType::I32:
    return cpu::ElementType::I32;
  default:
    return cpu::ElementType::F32;
  }
}

cpu::Weight weight(const BoundArg &arg) {
  return {arg.data, kernelType(arg.ref->type())};
}

/// A GEMM weight: with its block scale `scale` when ints[at...] holds the
/// FP8 block [rows, cols, ue8m0] (see the planner).
cpu::Weight gemmWeight(const art::Launch &l, const std::vector<BoundArg> &a,
                       size_t scale, unsigned at) {
  cpu::Weight w = weight(a[1]);
  if (l.ints() && l.ints()->size() == at + 3) {
    w.scale = reinterpret_cast<const float *>(a[scale].data);
    w.blockRows = l.ints()->Get(at);
    w.blockCols = l.ints()->Get(at + 1);
  }
  return w;
}

/// Whether an FP8 GEMM rounds activation scales to powers of two.
bool ue8m0Activations(const art::Launch &l, unsigned at) {
  return l.ints() && l.ints()->size() == at + 3 && l.ints()->Get(at + 2) == 1;
}

/// The most elements `ref` holds within `bounds`.
uint64_t maxElements(const art::TensorRef *ref,
                     const art::SymbolSizes &bounds) {
  uint64_t n = 1;
  for (const art::Dim *d : *ref->shape())
    n *= bounds.of(*d);
  return n;
}

template <typename T> T *as(const BoundArg &arg) {
  return reinterpret_cast<T *>(arg.data);
}

/// Every value in [0, limit).
bool allBelow(const int32_t *values, int64_t count, int64_t limit) {
  for (int64_t i = 0; i < count; ++i)
    if (values[i] < 0 || values[i] >= limit)
      return false;
  return true;
}

} // namespace

struct Session::Impl {
  const Model::Impl *model = nullptr;
  std::unique_ptr<std::byte[], FreeDeleter> arena;
  std::unique_ptr<PagedKvCache> kv;
  std::vector<int64_t> cacheEntry; // floats per token per slot
  // Packed slots' row layout (no columns: an f32 slot).
  std::vector<cpu::PackedRowLayout> packedLayout;
  BoundEntry prefill, decode;
  uint32_t maxBatch = 0;
  int64_t vocab = 0;
  bool promptLogits = true;      // SessionOptions::promptLogits
  bool stepLogits = true;        // SessionOptions::stepLogits
  std::vector<int64_t> lengths;  // per sequence id; -1: not alive
  std::vector<float> lastLogits; // [maxBatch, vocab] per sequence id
  // The step being run: batch row b is sequence stepIds[b].
  std::vector<int> stepIds;
  std::vector<int64_t> stepLengths;
  const int32_t *stepTables = nullptr;
  std::vector<float> attentionScratch;
  // Kernel scratch, sized at creation so that steps never allocate.
  std::vector<float> gateScratch; // router logits [tokens, experts]
  std::vector<float> headScratch; // per-head gathered rows
  std::vector<float> fp8Scratch;  // FP8 GEMMs' quantized activations
  std::vector<float> upScratch;   // gated GEMMs' up projections
  // The selection rows the last dispatch wrote: the only ones a combine may
  // take as row indices.
  const int32_t *dispatchedRows = nullptr;
  // The rows whose logits the step computes, when not all (run's
  // logitRows): the output head runs over those alone.
  const std::vector<int64_t> *logitRows = nullptr;
  int64_t lastChunkStart = 0, lastChunkSeq = 0;
  std::vector<int> lastPrefill; // sequences of the last prefill, by row
  /// A sequence's prompt logits are no longer held (released, or extended
  /// past them): its row keeps its place, as -1, so that the rows after it
  /// still index the logits.
  void forgetPromptLogits(int sequence) {
    std::replace(lastPrefill.begin(), lastPrefill.end(), sequence, -1);
  }
  std::string device = "cpu";
  // Declared before `gpu`, which page-locks it: destroyed after it.
  std::vector<std::byte> staging;
#ifdef KILN_HAVE_CUDA_EXECUTOR
  // Set when the steps run on a GPU; the host then keeps only the step's
  // inputs and logits (`staging`) and the cache's bookkeeping.
  std::unique_ptr<cuda::Executor> gpu;
  std::vector<int32_t> heldTokens;
  std::vector<int32_t> cacheRows; // the step's, for EntryPoint.cache_rows
#endif
  // The kernel profile (Session::setKernelProfiling) of CPU steps: time
  // per kernel kind. KILN_PROFILE=1 turns it on (on either device) and
  // prints it when the session ends.
  struct Profile {
    double seconds = 0;
    int64_t launches = 0;
  };
  bool profile = false, printProfile = false;
  std::array<Profile, static_cast<size_t>(art::KernelKind::MAX) + 1>
      profileByKernel{};
  Profile fusedProfile; // the artifact's CPU kernels
  std::vector<KernelTime> kernelProfile() const;
  ~Impl() {
    if (!printProfile)
      return;
    std::fprintf(stderr, "kiln profile (seconds, launches, kernel):\n");
    for (const KernelTime &t : kernelProfile())
      std::fprintf(stderr, "  %10.6f %8lld  %s\n", t.seconds,
                   static_cast<long long>(t.launches), t.kernel.c_str());
  }

  bool alive(int sequence) const {
    return sequence >= 0 && static_cast<size_t>(sequence) < lengths.size() &&
           lengths[sequence] >= 0;
  }
  /// Reserves cache blocks so that each of `ids` can hold `lengths`
  /// positions, then binds the step's block tables.
  absl::Status beginStep(std::span<const int> ids,
                         std::span<const int64_t> newLengths);

  /// Picks the GPU or the CPU for the session (`device` says which, and why
  /// not the GPU when the artifact has GPU code).
  absl::Status chooseDevice(const SessionOptions &options,
                            const PagedKvCache::Options &cache,
                            int64_t tableStride, uint64_t arenaBytes);
  bool onGpu() const {
#ifdef KILN_HAVE_CUDA_EXECUTOR
    return gpu != nullptr;
#else
    return false;
#endif
  }

  absl::Status bind(const art::EntryPoint *entry, BoundEntry &bound);
  std::byte *resolve(const art::TensorRef *ref);
  /// Runs a step. With `logitRows` (strictly increasing indices into batch x
  /// seq) the output head computes those rows alone: row i of the logits
  /// buffer holds row logitRows[i]'s logits.
  absl::Status run(const BoundEntry &bound, const StepDims &dims,
                   const std::vector<int64_t> *logitRows = nullptr);
  absl::Status launch(const BoundLaunch &bl, const StepDims &dims);
  /// The output head (the entry's last launch, PlanVerifier checks) over
  /// `logitRows` alone, their logits in rows 0, 1, ... of its output.
  absl::Status logitsOfRows(const BoundLaunch &bl, const StepDims &dims);
  /// Each token's row in the cache slots (its position through its
  /// sequence's block table), -1 for a negative position: where fused
  /// kernels store cache rows (EntryPoint.cache_rows).
  absl::Status mapCacheRows(const BoundEntry &bound, const StepDims &dims,
                            int32_t *rows) const;
};

std::byte *Session::Impl::resolve(const art::TensorRef *ref) {
  switch (ref->storage()) {
  case art::Storage::Parameter:
    return const_cast<std::byte *>(model->parameterData[ref->index()]);
  case art::Storage::KvCache:
    // The slot's block storage; `offset` (a column of the entry, for
    // column-range views) is applied by the kernels.
  case art::Storage::KvRows:
    return reinterpret_cast<std::byte *>(kv->slotData(ref->index()));
  default:
    return arena.get() + ref->offset();
  }
}

absl::Status Session::Impl::bind(const art::EntryPoint *entry,
                                 BoundEntry &bound) {
  bound.entry = entry;
  bound.tokens = reinterpret_cast<int32_t *>(resolve(entry->tokens()));
  bound.positions = reinterpret_cast<int32_t *>(resolve(entry->positions()));
  bound.kvLengths = reinterpret_cast<int32_t *>(resolve(entry->kv_lengths()));
  bound.logits = reinterpret_cast<float *>(resolve(entry->logits()));
  for (const art::Launch *launch : *entry->launches()) {
    BoundLaunch bl;
    bl.launch = launch;
    for (const art::TensorRef *ref : *launch->args())
      bl.args.push_back({resolve(ref), ref});
    bound.launches.push_back(std::move(bl));
  }
  if (model->hostKernels && entry->fused())
    for (const art::FusedLaunch *group : *entry->fused()) {
      BoundFused bf;
      bf.kernel = model->hostKernels->find(group->kernel()->string_view());
      if (!bf.kernel)
        continue;
      bf.first = group->first();
      bf.count = group->count();
      for (const art::TensorRef *ref : *group->args())
        bf.args.push_back(resolve(ref));
      bf.tokens = group->args()->Get(group->args()->size() - 1);
      bound.fused.push_back(std::move(bf));
    }
  return absl::OkStatus();
}

absl::Status Session::Impl::launch(const BoundLaunch &bl,
                                   const StepDims &dims) {
  const art::Launch &l = *bl.launch;
  const std::vector<BoundArg> &a = bl.args;
  auto ints = [&](unsigned i) { return l.ints()->Get(i); };
  auto floats = [&](unsigned i) { return l.floats()->Get(i); };
  auto error = [&](const std::string &what) {
    return absl::InvalidArgumentError(
        std::string(art::EnumNameKernelKind(l.kernel())) + " (" +
        (l.name() ? l.name()->str() : "?") + "): " + what);
  };

  switch (l.kernel()) {
  case art::KernelKind::Embedding: {
    int64_t n = numel(a[0].ref, dims);
    if (!allBelow(as<int32_t>(a[0]), n, staticDim(a[1].ref, 0)))
      return error("token id out of range");
    cpu::embedding(as<int32_t>(a[0]), n, weight(a[1]), staticDim(a[1].ref, 1),
                   as<float>(a[2]));
    return absl::OkStatus();
  }
  case art::KernelKind::RMSNorm: {
    int64_t d = lastDim(a[0].ref);
    cpu::rmsNorm(as<float>(a[0]), numel(a[0].ref, dims) / d, d, weight(a[1]),
                 static_cast<float>(floats(0)), as<float>(a[2]));
    return absl::OkStatus();
  }
  case art::KernelKind::Logits:
    if (logitRows)
      return logitsOfRows(bl, dims);
    [[fallthrough]];
  case art::KernelKind::Linear: {
    bool bias = l.kernel() == art::KernelKind::Linear && ints(0) == 1;
    int64_t in = lastDim(a[0].ref), out = staticDim(a[1].ref, 0);
    int64_t rows = numel(a[0].ref, dims) / in;
    if (a[0].ref->type() == art::ElementType::F8E4M3) {
      // Quantized by a fused group's epilogue; scales before the output.
      cpu::linearQuantized(as<uint8_t>(a[0]), as<float>(a[a.size() - 2]), rows,
                           in, gemmWeight(l, a, a.size() - 3, 1), out,
                           bias ? weight(a[2]) : cpu::Weight{},
                           as<float>(a.back()), fp8Scratch.data());
      return absl::OkStatus();
    }
    cpu::linear(as<float>(a[0]), rows, in, gemmWeight(l, a, a.size() - 2, 1),
                out, bias ? weight(a[2]) : cpu::Weight{}, as<float>(a.back()),
                {fp8Scratch.data(), ue8m0Activations(l, 1)});
    return absl::OkStatus();
  }
  case art::KernelKind::QuantizeFp8: {
    int64_t in = lastDim(a[0].ref);
    cpu::quantizeFp8(as<float>(a[0]), numel(a[0].ref, dims) / in, in, ints(0),
                     ints(1) == 1, as<uint8_t>(a[1]), as<float>(a[2]));
    return absl::OkStatus();
  }
  case art::KernelKind::Add:
    cpu::add(as<float>(a[0]), as<float>(a[1]), numel(a[0].ref, dims),
             as<float>(a[2]));
    return absl::OkStatus();
  case art::KernelKind::SwiGLU:
    cpu::swiglu(as<float>(a[0]), as<float>(a[1]), numel(a[0].ref, dims),
                as<float>(a[2]));
    return absl::OkStatus();
  case art::KernelKind::Slice: {
    int64_t d = lastDim(a[0].ref);
    cpu::slice(as<float>(a[0]), numel(a[0].ref, dims) / d, d, ints(0), ints(1),
               as<float>(a[1]));
    return absl::OkStatus();
  }
  case art::KernelKind::Concat: {
    size_t count = a.size() - 1;
    const float *inputs[16];
    int64_t widths[16];
    if (count > 16)
      return error("more than 16 inputs");
    for (size_t i = 0; i < count; ++i) {
      inputs[i] = as<float>(a[i]);
      widths[i] = lastDim(a[i].ref);
    }
    int64_t out = lastDim(a.back().ref);
    cpu::concat(inputs, widths, static_cast<int64_t>(count),
                numel(a.back().ref, dims) / out, as<float>(a.back()));
    return absl::OkStatus();
  }
  case art::KernelKind::Broadcast: {
    const auto &to = *a[1].ref->shape();
    unsigned axis = broadcastAxis(*a[0].ref, *a[1].ref);
    int64_t rows = 1, repeat = 1, inner = 1;
    for (unsigned i = 0; i < to.size(); ++i) {
      int64_t n = dims.of(*to.Get(i));
      (i < axis ? rows : i == axis ? repeat : inner) *= n;
    }
    cpu::broadcast(as<float>(a[0]), rows, repeat, inner, as<float>(a[1]));
    return absl::OkStatus();
  }
  case art::KernelKind::Rope: {
    cpu::RopeParams p = ropeParams(l);
    int64_t tokens = dims.batch * dims.seq, d = lastDim(a[0].ref);
    int64_t heads = numel(a[0].ref, dims) / (tokens * d);
    cpu::rope(as<float>(a[0]), as<int32_t>(a[1]), tokens, heads, d, p,
              as<float>(a[2]));
    return absl::OkStatus();
  }
  case art::KernelKind::KvAppend: {
    const int32_t *positions = as<int32_t>(a[1]);
    for (int64_t b = 0; b < dims.batch; ++b)
      for (int64_t j = 0; j < dims.seq; ++j)
        if (positions[b * dims.seq + j] >= kv->tokenCapacity(stepIds[b]))
          return error(
              "position " + std::to_string(positions[b * dims.seq + j]) +
              " beyond the blocks of sequence " + std::to_string(stepIds[b]));
    unsigned slot = static_cast<unsigned>(ints(0));
    if (packedLayout[slot].packed()) {
      cpu::kvAppendPagedPacked(
          as<float>(a[0]), positions, dims.batch, dims.seq, packedLayout[slot],
          reinterpret_cast<std::byte *>(kv->slotData(slot)), stepTables,
          kv->tableStride(), kv->blockTokens());
      return absl::OkStatus();
    }
    cpu::kvAppendPaged(as<float>(a[0]), positions, dims.batch, dims.seq,
                       cacheEntry[slot], kv->slotData(slot), stepTables,
                       kv->tableStride(), kv->blockTokens());
    return absl::OkStatus();
  }
  case art::KernelKind::Attention: {
    const art::TensorRef *q = a[0].ref, *k = a[1].ref, *v = a[2].ref;
    int64_t heads = staticDim(q, 2), kvHeads = staticDim(k, 2);
    int64_t dk = staticDim(q, 3), dv = staticDim(v, 3);
    const int32_t *kvLengths = as<int32_t>(a[4]);
    if (k->storage() == art::Storage::KvCache) {
      // Keys and values read in place from the paged cache.
      for (int64_t b = 0; b < dims.batch; ++b)
        if (kvLengths[b] < 0 || kvLengths[b] > kv->tokenCapacity(stepIds[b]))
          return error("kv length out of range");
      if (const cpu::PackedRowLayout &layout = packedLayout[k->index()];
          layout.packed()) {
        cpu::attentionPagedPacked(
            as<float>(a[0]),
            reinterpret_cast<const std::byte *>(kv->slotData(k->index())),
            layout, {stepTables, kv->tableStride(), kv->blockTokens()},
            as<int32_t>(a[3]), kvLengths, dims.batch, dims.seq, heads, dk, dv,
            static_cast<float>(floats(0)), as<float>(a[5]),
            attentionScratch.data(),
            static_cast<int64_t>(attentionScratch.size()));
        return absl::OkStatus();
      }
      cpu::PagedView kView{kv->slotData(k->index()), cacheEntry[k->index()], dk,
                           static_cast<int64_t>(k->offset())};
      cpu::PagedView vView{kv->slotData(v->index()), cacheEntry[v->index()], dv,
                           static_cast<int64_t>(v->offset())};
      cpu::attentionPaged(as<float>(a[0]), kView, vView,
                          {stepTables, kv->tableStride(), kv->blockTokens()},
                          as<int32_t>(a[3]), kvLengths, dims.batch, dims.seq,
                          heads, kvHeads, dk, dv, static_cast<float>(floats(0)),
                          as<float>(a[5]), attentionScratch.data(),
                          static_cast<int64_t>(attentionScratch.size()));
      return absl::OkStatus();
    }
    // Keys and values the step computed: [batch, kv_len, heads, d].
    for (int64_t b = 0; b < dims.batch; ++b)
      if (kvLengths[b] < 0 || kvLengths[b] > dims.kvLen)
        return error("kv length out of range");
    cpu::attention(as<float>(a[0]), as<float>(a[1]), as<float>(a[2]),
                   as<int32_t>(a[3]), kvLengths, dims.batch, dims.seq, heads,
                   kvHeads, dk, dv, dims.kvLen * kvHeads * dk,
                   dims.kvLen * kvHeads * dv, static_cast<float>(floats(0)),
                   as<float>(a[5]));
    return absl::OkStatus();
  }
  case art::KernelKind::HeadLinear: {
    const art::TensorRef *w = a[1].ref;
    int64_t heads = staticDim(w, 0), out = staticDim(w, 1);
    int64_t in = staticDim(w, 2);
    int64_t width = lastDim(a[0].ref);
    cpu::headLinear(
        as<float>(a[0]), numel(a[0].ref, dims) / (heads * width), heads, in,
        gemmWeight(l, a, 2, 1), out, as<float>(a.back()), headScratch.data(),
        {fp8Scratch.data(), ue8m0Activations(l, 1)}, ints(0), width);
    return absl::OkStatus();
  }
  case art::KernelKind::KvGather: {
    // [Batch, KvLen, rows..., n] out of the paged cache's rows.
    const art::TensorRef *view = a[0].ref;
    int64_t entry = cacheEntry[view->index()], n = lastDim(view);
    int64_t rowsPerToken = numel(view, dims) / (dims.batch * dims.kvLen * n);
    int64_t width = entry / rowsPerToken;
    int64_t blockTokens = kv->blockTokens(), stride = kv->tableStride();
    float *dst = as<float>(a[1]);
    if (const cpu::PackedRowLayout &layout = packedLayout[view->index()];
        layout.packed()) {
      // Packed slots hold one row per token (checked by the verifier).
      for (int64_t b = 0; b < dims.batch; ++b) {
        int64_t held = std::min(kv->tokenCapacity(stepIds[b]), dims.kvLen);
        float *rows = dst + b * dims.kvLen * n;
        cpu::gatherPagedPacked(
            reinterpret_cast<const std::byte *>(kv->slotData(view->index())),
            layout, stepTables + b * stride, blockTokens, held,
            static_cast<int64_t>(view->offset()), n, rows);
        std::fill(rows + held * n, rows + dims.kvLen * n, 0.0f);
      }
      return absl::OkStatus();
    }
    const float *slot = kv->slotData(view->index()) + view->offset();
    for (int64_t b = 0; b < dims.batch; ++b) {
      int64_t held = kv->tokenCapacity(stepIds[b]);
      for (int64_t t = 0; t < dims.kvLen; ++t) {
        float *row = dst + (b * dims.kvLen + t) * rowsPerToken * n;
        if (t >= held) { // beyond this sequence: masked by kv_lengths
          std::fill_n(row, rowsPerToken * n, 0.0f);
          continue;
        }
        const float *src = slot + kv->row(stepTables, b, t) * entry;
        for (int64_t r = 0; r < rowsPerToken; ++r)
          std::memcpy(row + r * n, src + r * width,
                      sizeof(float) * static_cast<size_t>(n));
      }
    }
    return absl::OkStatus();
  }
  case art::KernelKind::MoeGate: {
    bool bias = ints(6) == 1;
    cpu::MoeGateParams p;
    p.scoring = static_cast<cpu::ScoringFunc>(ints(0));
    p.method = static_cast<cpu::TopkMethod>(ints(1));
    p.topK = ints(2);
    p.nGroup = ints(3);
    p.topkGroup = ints(4);
    p.normTopkProb = ints(5) == 1;
    p.routedScalingFactor = floats(0);
    cpu::moeGate(
        as<float>(a[0]), dims.batch * dims.seq, lastDim(a[0].ref), weight(a[1]),
        staticDim(a[1].ref, 0), bias ? weight(a[2]) : cpu::Weight{}, p,
        as<float>(a[a.size() - 2]), as<int32_t>(a.back()), gateScratch.data());
    return absl::OkStatus();
  }
  case art::KernelKind::MoeDispatch: {
    int64_t experts = ints(0), tokens = dims.batch * dims.seq;
    int64_t topK = lastDim(a[1].ref);
    if (!allBelow(as<int32_t>(a[1]), tokens * topK, experts))
      return error("expert index out of range");
    cpu::moeDispatch(as<float>(a[0]), as<int32_t>(a[1]), tokens, topK,
                     lastDim(a[0].ref), experts, as<float>(a[2]),
                     as<int32_t>(a[3]), as<int32_t>(a[4]), as<int32_t>(a[5]));
    dispatchedRows = as<int32_t>(a[5]);
    return absl::OkStatus();
  }
  case art::KernelKind::GroupedLinear: {
    int64_t experts = staticDim(a[1].ref, 0);
    const int32_t *offsets = as<int32_t>(a[2]);
    if (offsets[0] != 0 || offsets[experts] > dims.routed ||
        !std::is_sorted(offsets, offsets + experts + 1))
      return error("bad expert offsets");
    cpu::groupedLinear(as<float>(a[0]), staticDim(a[1].ref, 2),
                       gemmWeight(l, a, 3, 0), experts, staticDim(a[1].ref, 1),
                       offsets, as<float>(a.back()),
                       {fp8Scratch.data(), ue8m0Activations(l, 0)});
    return absl::OkStatus();
  }
  case art::KernelKind::GatedLinear: {
    // The gate projection into the result, the up projection into scratch,
    // then SwiGLU in place: the unfused ops' arithmetic.
    GatedLinearArgs g = GatedLinearArgs::of(l, a.size());
    const art::TensorRef *w = a[1].ref;
    int rank = static_cast<int>(w->shape()->size());
    int64_t out = staticDim(w, rank - 2), in = staticDim(w, rank - 1);
    auto projection = [&](size_t at, int scale) {
      cpu::Weight weights = weight(a[at]);
      if (g.fp8) {
        weights.scale = as<float>(a[scale]);
        weights.blockRows = ints(1);
        weights.blockCols = ints(2);
      }
      return weights;
    };
    float *gate = as<float>(a[g.out]);
    cpu::Fp8Activations fp8{fp8Scratch.data(), ue8m0Activations(l, 1)};
    int64_t rows;
    if (g.offsets >= 0) {
      int64_t experts = staticDim(w, 0);
      const int32_t *offsets = as<int32_t>(a[g.offsets]);
      if (offsets[0] != 0 || offsets[experts] > dims.routed ||
          !std::is_sorted(offsets, offsets + experts + 1))
        return error("bad expert offsets");
      rows = offsets[experts];
      cpu::groupedLinear(as<float>(a[0]), in, projection(1, g.gateScale),
                         experts, out, offsets, gate, fp8);
      cpu::groupedLinear(as<float>(a[0]), in, projection(2, g.upScale), experts,
                         out, offsets, upScratch.data(), fp8);
    } else if (g.inputScale >= 0) {
      rows = numel(a[0].ref, dims) / in;
      for (auto [at, scale, y] :
           {std::tuple{1, g.gateScale, gate}, {2, g.upScale, upScratch.data()}})
        cpu::linearQuantized(as<uint8_t>(a[0]), as<float>(a[g.inputScale]),
                             rows, in, projection(at, scale), out,
                             cpu::Weight{}, y, fp8Scratch.data());
    } else {
      rows = numel(a[0].ref, dims) / in;
      cpu::linear(as<float>(a[0]), rows, in, projection(1, g.gateScale), out,
                  cpu::Weight{}, gate, fp8);
      cpu::linear(as<float>(a[0]), rows, in, projection(2, g.upScale), out,
                  cpu::Weight{}, upScratch.data(), fp8);
    }
    cpu::swiglu(gate, upScratch.data(), rows * out, gate);
    return absl::OkStatus();
  }
  case art::KernelKind::MoeCombine: {
    int64_t tokens = dims.batch * dims.seq, topK = lastDim(a[1].ref);
    if (as<int32_t>(a[2]) != dispatchedRows)
      return error("the combine reads selection rows no dispatch before it "
                   "wrote");
    cpu::moeCombine(as<float>(a[0]), as<float>(a[1]), as<int32_t>(a[2]), tokens,
                    topK, lastDim(a[0].ref), as<float>(a[3]));
    return absl::OkStatus();
  }
  }
  return error("unknown kernel");
}

absl::Status Session::Impl::logitsOfRows(const BoundLaunch &bl,
                                         const StepDims &dims) {
  const std::vector<BoundArg> &a = bl.args;
  int64_t in = lastDim(a[0].ref), vocabSize = staticDim(a[1].ref, 0);
  const std::vector<int64_t> &rows = *logitRows;
  if (absl::Status s = checkLogitRows(rows, numel(a[0].ref, dims) / in);
      !s.ok())
    return s;
  float *x = as<float>(a[0]), *out = as<float>(a[2]);
  auto n = static_cast<int64_t>(rows.size());
  if (n == 0)
    return absl::OkStatus(); // no sequence's last prompt token in this chunk
  for (int64_t i = 0; i < n; ++i)
    if (rows[i] != i)
      std::memcpy(x + i * in, x + rows[i] * in, sizeof(float) * in);
  cpu::linear(x, n, in, weight(a[1]), vocabSize, cpu::Weight{}, out);
  return absl::OkStatus();
}

absl::Status Session::Impl::mapCacheRows(const BoundEntry &bound,
                                         const StepDims &dims,
                                         int32_t *rows) const {
  for (int64_t b = 0; b < dims.batch; ++b)
    for (int64_t j = 0; j < dims.seq; ++j) {
      int64_t t = b * dims.seq + j;
      int32_t position = bound.positions[t];
      if (position < 0) {
        rows[t] = -1;
        continue;
      }
      if (position >= kv->tokenCapacity(stepIds[b]))
        return absl::InvalidArgumentError(
            model->info.path + ": entry point " + bound.entry->name()->str() +
            ": position " + std::to_string(position) +
            " beyond the blocks of sequence " + std::to_string(stepIds[b]));
      // Below numBlocks * blockTokens, which the session checked fits.
      rows[t] = static_cast<int32_t>(kv->row(stepTables, b, position));
    }
  return absl::OkStatus();
}

absl::Status Session::Impl::run(const BoundEntry &bound, const StepDims &dims,
                                const std::vector<int64_t> *logitRows) {
#ifdef KILN_HAVE_CUDA_EXECUTOR
  if (gpu) {
    heldTokens.resize(static_cast<size_t>(dims.batch));
    for (int64_t b = 0; b < dims.batch; ++b)
      heldTokens[b] = static_cast<int32_t>(kv->tokenCapacity(stepIds[b]));
    cuda::StepInputs inputs{bound.tokens, bound.positions, bound.kvLengths,
                            stepTables, heldTokens.data()};
    if (bound.entry->cache_rows()) {
      cacheRows.resize(static_cast<size_t>(dims.batch * dims.seq));
      if (absl::Status s = mapCacheRows(bound, dims, cacheRows.data()); !s.ok())
        return s;
      inputs.cacheRows = cacheRows.data();
    }
    absl::Status s =
        gpu->run(bound.entry->name()->str(),
                 {dims.batch, dims.seq, dims.kvLen, dims.routed}, inputs,
                 stepLogits ? bound.logits : nullptr, logitRows);
    if (!s.ok())
      return absl::Status(s.code(), model->info.path + ": entry point " +
                                        bound.entry->name()->str() + ": " +
                                        std::string(s.message()));
    return absl::OkStatus();
  }
#endif
  this->logitRows = logitRows;
  if (const art::TensorRef *rows = bound.entry->cache_rows())
    if (absl::Status s = mapCacheRows(
            bound, dims,
            reinterpret_cast<int32_t *>(arena.get() + rows->offset()));
        !s.ok())
      return s;
  auto fused = bound.fused.begin();
  for (size_t i = 0; i < bound.launches.size(); ++i) {
    auto start = profile ? std::chrono::steady_clock::now()
                         : std::chrono::steady_clock::time_point();
    if (fused != bound.fused.end() && fused->first == i) {
      int64_t tokens = 1;
      for (const art::Dim *d : *fused->tokens->shape())
        if (d->symbol() != art::DimSymbol::Static)
          tokens *= dims.of(*d);
      fused->kernel(tokens, const_cast<void **>(fused->args.data()));
      i += fused->count - 1;
      ++fused;
      if (profile) {
        fusedProfile.seconds += std::chrono::duration<double>(
                                    std::chrono::steady_clock::now() - start)
                                    .count();
        ++fusedProfile.launches;
      }
      continue;
    }
    const BoundLaunch &bl = bound.launches[i];
    absl::Status s = launch(bl, dims);
    if (profile) {
      Profile &p = profileByKernel[static_cast<size_t>(bl.launch->kernel())];
      p.seconds += std::chrono::duration<double>(
                       std::chrono::steady_clock::now() - start)
                       .count();
      ++p.launches;
    }
    if (!s.ok())
      return absl::Status(s.code(), model->info.path + ": entry point " +
                                        bound.entry->name()->str() + ": " +
                                        std::string(s.message()));
  }
  return absl::OkStatus();
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;

const std::string &Session::device() const { return impl_->device; }

std::vector<KernelTime> Session::Impl::kernelProfile() const {
#ifdef KILN_HAVE_CUDA_EXECUTOR
  if (gpu)
    return gpu->profile();
#endif
  std::vector<KernelTime> times;
  if (fusedProfile.launches)
    times.push_back(
        {"fused (generated)", fusedProfile.launches, fusedProfile.seconds, -1});
  for (size_t k = 0; k < profileByKernel.size(); ++k)
    if (profileByKernel[k].launches)
      times.push_back({art::EnumNameKernelKind(static_cast<art::KernelKind>(k)),
                       profileByKernel[k].launches, profileByKernel[k].seconds,
                       -1});
  sortLongestFirst(times);
  return times;
}

void Session::setKernelProfiling(bool on) {
#ifdef KILN_HAVE_CUDA_EXECUTOR
  if (impl_->gpu) {
    impl_->gpu->setProfiling(on);
    return;
  }
#endif
  impl_->profile = on;
}

std::vector<KernelTime> Session::kernelProfile() const {
  return impl_->kernelProfile();
}

void Session::resetKernelProfile() {
#ifdef KILN_HAVE_CUDA_EXECUTOR
  if (impl_->gpu)
    impl_->gpu->resetProfile();
#endif
  impl_->profileByKernel = {};
  impl_->fusedProfile = {};
}

int64_t Session::kernelLaunches() const {
#ifdef KILN_HAVE_CUDA_EXECUTOR
  if (impl_->gpu)
    return impl_->gpu->kernelLaunches();
#endif
  return 0;
}

absl::StatusOr<std::unique_ptr<Session>>
Session::create(const Model &model, const SessionOptions &options) {
  // A verified plan can still ask for more memory than the machine has.
  try {
    return createSession(model, options);
  } catch (const std::bad_alloc &) {
    return absl::ResourceExhaustedError(model.info().path +
                                        ": not enough memory for a session");
  }
}

absl::StatusOr<std::unique_ptr<Session>>
Session::createSession(const Model &model, const SessionOptions &options) {
  if (options.kvBlocks < 0)
    return absl::InvalidArgumentError(
        "SessionOptions::kvBlocks is " + std::to_string(options.kvBlocks) +
        "; it takes a number of blocks, or 0 for the default size");
  auto impl = std::make_unique<Impl>();
  const Model::Impl &m = *model.impl_;
  const art::Model &plan = *m.plan;
  impl->model = &m;
  impl->vocab = plan.vocab_size();
  impl->promptLogits = options.promptLogits;
  impl->stepLogits = options.stepLogits;
  const art::EntryPoint *prefill = nullptr, *decode = nullptr;
  // Without prompt logits an output head computes a row per sequence, so
  // the logits take max_batch rows of the arena, not max_batch x max_seq.
  uint64_t arenaBytes = 64;
  for (size_t i = 0; i < plan.entry_points()->size(); ++i) {
    const art::EntryPoint *e = plan.entry_points()->Get(i);
    if (e->name()->str() == "prefill")
      prefill = e;
    else if (e->name()->str() == "decode")
      decode = e;
    arenaBytes = std::max<uint64_t>(
        arenaBytes, options.promptLogits ? e->arena_bytes()
                                         : m.arenaBytesRowPerSequence[i]);
  }
  if (!prefill || !decode)
    return absl::InvalidArgumentError(
        m.info.path + ": needs prefill and decode entry points");
  // Sequences a session holds: a decode step's; prefill takes them in
  // groups of its own batch.
  impl->maxBatch = decode->max_batch();

  for (const art::KvSlot *slot : *plan.kv_slots()) {
    int64_t entry = 1;
    for (int64_t d : *slot->entry_shape())
      entry *= d;
    // The pool counts floats per token; packed rows are whole floats too.
    cpu::PackedRowLayout layout;
    if (slot->packed()) {
      layout = {slot->fp8_columns(), entry - slot->fp8_columns()};
      entry = layout.rowBytes() / static_cast<int64_t>(sizeof(float));
    }
    impl->packedLayout.push_back(layout);
    impl->cacheEntry.push_back(entry);
  }
  // By default as many blocks as max batch sequences of full context; the
  // pool is shared, so short sequences leave room for long ones.
  PagedKvCache::Options cacheOptions;
  cacheOptions.slotEntries = impl->cacheEntry;
  cacheOptions.maxSequences = static_cast<int>(impl->maxBatch);
  cacheOptions.maxSequenceTokens = plan.max_context();
  int64_t perSequence = (plan.max_context() + cacheOptions.blockTokens - 1) /
                        cacheOptions.blockTokens;
  cacheOptions.numBlocks =
      options.kvBlocks > 0 ? options.kvBlocks : perSequence * impl->maxBatch;
  if ((prefill->cache_rows() || decode->cache_rows()) &&
      cacheOptions.numBlocks >
          std::numeric_limits<int32_t>::max() / cacheOptions.blockTokens)
    return absl::InvalidArgumentError(
        m.info.path + ": a KV cache of " +
        std::to_string(cacheOptions.numBlocks) +
        " blocks has more rows than the fused kernels that store cache rows "
        "index (2^31)");
  if (absl::Status s =
          impl->chooseDevice(options, cacheOptions, perSequence, arenaBytes);
      !s.ok())
    return s;
  cacheOptions.hostStorage = !impl->onGpu();
  const char *profile = std::getenv("KILN_PROFILE");
  impl->printProfile = profile && *profile && std::string(profile) != "0";
  absl::StatusOr<PagedKvCache> cache = PagedKvCache::create(cacheOptions);
  if (!cache.ok())
    return cache.status();
  impl->kv = std::make_unique<PagedKvCache>(*std::move(cache));
  impl->lengths.assign(impl->maxBatch, -1);
  impl->lastLogits.resize(static_cast<size_t>(impl->maxBatch * impl->vocab));
  impl->stepIds.reserve(impl->maxBatch);
  impl->stepLengths.reserve(impl->maxBatch);
  if (impl->onGpu()) {
    // The host holds the step's inputs and logits only: per entry point
    // tokens and positions [B, S], kv lengths [B], then 16-byte aligned
    // logits: [B, S, vocab] of a prefill with prompt logits, a row per
    // sequence otherwise, none without step logits. (At a 4K prefill of 8
    // sequences and a 129K vocabulary, 17 GB of page-locked memory against
    // 4 MB.)
    auto inputBytes = [](const art::EntryPoint *e) {
      size_t tokens = size_t{e->max_batch()} * e->max_seq();
      return ((2 * tokens + e->max_batch()) * sizeof(int32_t) + 15) / 16 * 16;
    };
    auto entryBytes = [&](const art::EntryPoint *e) {
      size_t rows = !impl->stepLogits ? 0
                    : e == prefill && impl->promptLogits
                        ? size_t{e->max_batch()} * e->max_seq()
                        : size_t{e->max_batch()};
      return inputBytes(e) +
             rows * static_cast<size_t>(impl->vocab) * sizeof(float);
    };
    impl->staging.resize(entryBytes(prefill) + entryBytes(decode));
    std::byte *base = impl->staging.data();
    for (auto [e, bound] :
         {std::pair{prefill, &impl->prefill}, {decode, &impl->decode}}) {
      size_t tokens = size_t{e->max_batch()} * e->max_seq();
      bound->entry = e;
      bound->tokens = reinterpret_cast<int32_t *>(base);
      bound->positions = bound->tokens + tokens;
      bound->kvLengths = bound->positions + tokens;
      bound->logits = reinterpret_cast<float *>(base + inputBytes(e));
      base += entryBytes(e);
    }
#ifdef KILN_HAVE_CUDA_EXECUTOR
    impl->gpu->pinHostBuffer(impl->staging.data(), impl->staging.size());
    impl->gpu->setProfiling(impl->printProfile);
    impl->cacheRows.reserve(
        std::max(size_t{prefill->max_batch()} * prefill->max_seq(),
                 size_t{decode->max_batch()} * decode->max_seq()));
#endif
    return std::unique_ptr<Session>(new Session(std::move(impl)));
  }
  arenaBytes = (arenaBytes + 63) / 64 * 64;
  impl->arena.reset(
      static_cast<std::byte *>(std::aligned_alloc(64, arenaBytes)));
  if (!impl->arena)
    return absl::ResourceExhaustedError(
        "cannot allocate the " + std::to_string(arenaBytes) + "-byte arena");
  std::memset(impl->arena.get(), 0, arenaBytes);
  impl->profile = impl->printProfile;
  int64_t heads = 0, dv = 0;
  for (const art::EntryPoint *e : *plan.entry_points())
    for (const art::Launch *l : *e->launches())
      if (l->kernel() == art::KernelKind::Attention) {
        heads = std::max(heads, staticDim(l->args()->Get(0), 2));
        dv = std::max(dv, staticDim(l->args()->Get(2), 3));
      }
  impl->attentionScratch.resize(static_cast<size_t>(
      cpu::attentionPagedScratch(impl->maxBatch, heads, dv)));
  size_t gateScratch = 0;
  for (const art::EntryPoint *e : *plan.entry_points()) {
    size_t tokens = size_t{e->max_batch()} * e->max_seq();
    for (const art::Launch *l : *e->launches())
      if (l->kernel() == art::KernelKind::MoeGate)
        gateScratch = std::max<size_t>(
            gateScratch,
            tokens * static_cast<size_t>(staticDim(l->args()->Get(1), 0)));
  }
  size_t headScratch = 0;
  for (const art::EntryPoint *e : *plan.entry_points()) {
    int64_t tokens = int64_t{e->max_batch()} * e->max_seq();
    for (const art::Launch *l : *e->launches())
      if (l->kernel() == art::KernelKind::HeadLinear) {
        const art::TensorRef *w = l->args()->Get(1);
        headScratch = std::max<size_t>(
            headScratch, static_cast<size_t>(cpu::headLinearScratch(
                             tokens, staticDim(w, 2), staticDim(w, 1))));
      }
  }
  // FP8 GEMMs quantize their input rows into scratch; gated GEMMs keep
  // their up projections there.
  size_t fp8Scratch = 0, upScratch = 0;
  for (const art::EntryPoint *e : *plan.entry_points()) {
    art::SymbolSizes bounds{e->max_batch(), e->max_seq(), plan.max_context(),
                            uint64_t{e->max_batch()} * e->max_seq() *
                                plan.moe_top_k()};
    for (const art::Launch *l : *e->launches()) {
      const art::TensorRef *x = l->args()->Get(0);
      bool withFlag = l->kernel() == art::KernelKind::Linear ||
                      l->kernel() == art::KernelKind::GatedLinear ||
                      l->kernel() == art::KernelKind::HeadLinear;
      unsigned at = withFlag ? 1 : 0;
      bool gemm = withFlag || l->kernel() == art::KernelKind::GroupedLinear;
      if (l->kernel() == art::KernelKind::GatedLinear)
        upScratch = std::max<size_t>(
            upScratch,
            maxElements(l->args()->Get(l->args()->size() - 1), bounds));
      if (!gemm || !l->ints() || l->ints()->size() != at + 3)
        continue;
      int64_t in = lastDim(x);
      fp8Scratch = std::max<size_t>(
          fp8Scratch, static_cast<size_t>(cpu::fp8ActivationScratch(
                          static_cast<int64_t>(maxElements(x, bounds)) / in, in,
                          l->ints()->Get(at + 1))));
    }
  }
  impl->fp8Scratch.resize(fp8Scratch);
  impl->upScratch.resize(upScratch);
  impl->headScratch.resize(headScratch);
  impl->gateScratch.resize(gateScratch);
  if (absl::Status s = impl->bind(prefill, impl->prefill); !s.ok())
    return s;
  if (absl::Status s = impl->bind(decode, impl->decode); !s.ok())
    return s;
  return std::unique_ptr<Session>(new Session(std::move(impl)));
}

absl::Status Session::Impl::chooseDevice(const SessionOptions &options,
                                         const PagedKvCache::Options &cache,
                                         int64_t tableStride,
                                         uint64_t arenaBytes) {
  const art::Model &plan = *model->plan;
  bool gpuCode = plan.gpu_modules() && plan.gpu_modules()->size() > 0;
  if (options.device == Device::Cpu) {
    device =
        gpuCode ? "cpu (chosen; the artifact's GPU code is not used)" : "cpu";
    return absl::OkStatus();
  }
  if (options.device == Device::Auto && !gpuCode) {
    device = "cpu";
    return absl::OkStatus();
  }
#ifdef KILN_HAVE_CUDA_EXECUTOR
  cuda::CacheLayout layout;
  layout.slotFloats = cache.slotEntries;
  layout.packed = packedLayout;
  layout.numBlocks = cache.numBlocks;
  layout.blockTokens = cache.blockTokens;
  layout.tableStride = tableStride;
  layout.maxBatch = static_cast<int>(maxBatch);
  absl::StatusOr<std::unique_ptr<cuda::Executor>> executor =
      cuda::Executor::create(*model, layout, arenaBytes,
                             /*requireGpuCode=*/options.device == Device::Auto,
                             /*emulate=*/options.device == Device::Emulated);
  if (executor.ok()) {
    gpu = *std::move(executor);
    device = "cuda: " + gpu->description();
    return absl::OkStatus();
  }
  absl::Status why = executor.status();
#else
  (void)cache;
  (void)tableStride;
  (void)arenaBytes;
  absl::Status why =
      absl::UnavailableError("this runtime was built without CUDA");
#endif
  if (options.device == Device::Cuda || options.device == Device::Emulated)
    return absl::Status(
        why.code(), model->info.path +
                        ": cannot run on a GPU: " + std::string(why.message()));
  device = "cpu (the artifact's GPU code is not used: " +
           std::string(why.message()) + ")";
  return absl::OkStatus();
}

absl::Status Session::Impl::beginStep(std::span<const int> ids,
                                      std::span<const int64_t> newLengths) {
  for (size_t b = 0; b < ids.size(); ++b)
    if (absl::Status st = kv->reserve(ids[b], newLengths[b]); !st.ok())
      return absl::Status(st.code(), "sequence " + std::to_string(ids[b]) +
                                         ": " + std::string(st.message()));
  stepIds.assign(ids.begin(), ids.end());
  absl::StatusOr<const int32_t *> tables = kv->batchTables(ids);
  if (!tables.ok())
    return tables.status();
  stepTables = *tables;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int>>
Session::prefill(const std::vector<std::vector<int32_t>> &prompts,
                 const PromptLogitsVisitor &visit) {
  Impl &s = *impl_;
  if (visit && (!s.promptLogits || !s.stepLogits))
    return absl::FailedPreconditionError(
        "prompt logits are not computed: the session was created without "
        "SessionOptions::promptLogits (or stepLogits)");
  const art::EntryPoint &entry = *s.prefill.entry;
  int64_t context = s.model->plan->max_context();
  int liveNow = static_cast<int>(sequences().size());
  if (prompts.empty() ||
      liveNow + prompts.size() > static_cast<size_t>(s.maxBatch))
    return absl::ResourceExhaustedError(
        "prefill of " + std::to_string(prompts.size()) + " prompts with " +
        std::to_string(liveNow) + " sequences alive exceeds the session's " +
        std::to_string(s.maxBatch) + " sequences");
  for (size_t b = 0; b < prompts.size(); ++b) {
    const std::vector<int32_t> &p = prompts[b];
    if (p.empty() || static_cast<int64_t>(p.size()) > context)
      return absl::InvalidArgumentError(
          "prompt " + std::to_string(b) + " has " + std::to_string(p.size()) +
          " tokens; it needs 1 to " + std::to_string(context));
    if (!allBelow(p.data(), static_cast<int64_t>(p.size()), s.vocab))
      return absl::InvalidArgumentError("prompt " + std::to_string(b) +
                                        " has a token outside [0, " +
                                        std::to_string(s.vocab) + ")");
  }

  // New sequences; on any failure they are released again.
  std::vector<int> ids;
  auto abandon = [&](absl::Status st) {
    for (int id : ids) {
      (void)s.kv->release(id);
      s.lengths[id] = -1;
    }
    return st;
  };
  for (size_t b = 0; b < prompts.size(); ++b) {
    absl::StatusOr<int> id = s.kv->addSequence();
    if (!id.ok())
      return abandon(id.status());
    ids.push_back(*id);
    s.lengths[*id] = 0;
  }

  // Its chunks overwrite the prompt logits the last prefill held, even
  // where it fails part way (a full cache at a later chunk).
  s.lastPrefill.clear();
  // Groups of at most the prefill entry point's batch, each in chunks of
  // its max_seq tokens.
  int64_t chunk = entry.max_seq();
  int64_t groupSize = entry.max_batch();
  for (int64_t g0 = 0; g0 < static_cast<int64_t>(prompts.size());
       g0 += groupSize) {
    int64_t batch =
        std::min<int64_t>(groupSize, static_cast<int64_t>(prompts.size()) - g0);
    std::span<const int> group(ids.data() + g0, static_cast<size_t>(batch));
    auto prompt = [&](int64_t b) -> const std::vector<int32_t> & {
      return prompts[static_cast<size_t>(g0 + b)];
    };
    int64_t longest = 0;
    for (int64_t b = 0; b < batch; ++b)
      longest =
          std::max<int64_t>(longest, static_cast<int64_t>(prompt(b).size()));
    std::vector<int64_t> reach(static_cast<size_t>(batch));
    for (int64_t start = 0; start < longest; start += chunk) {
      StepDims dims;
      dims.batch = batch;
      dims.seq = std::min(chunk, longest - start);
      for (int64_t b = 0; b < batch; ++b)
        reach[b] = std::min<int64_t>(static_cast<int64_t>(prompt(b).size()),
                                     start + dims.seq);
      if (absl::Status st = s.beginStep(group, reach); !st.ok())
        return abandon(st);
      for (int64_t b = 0; b < batch; ++b) {
        int64_t len = static_cast<int64_t>(prompt(b).size());
        for (int64_t j = 0; j < dims.seq; ++j) {
          int64_t pos = start + j;
          bool real = pos < len;
          s.prefill.tokens[b * dims.seq + j] = real ? prompt(b)[pos] : 0;
          // Padding rows write no cache entry and attend to nothing.
          s.prefill.positions[b * dims.seq + j] =
              real ? static_cast<int32_t>(pos) : -1;
        }
        s.prefill.kvLengths[b] = static_cast<int32_t>(reach[b]);
        dims.kvLen = std::max<int64_t>(dims.kvLen, reach[b]);
      }
      dims.routed = dims.batch * dims.seq * s.model->plan->moe_top_k();
      // The batch rows holding a sequence's last prompt token (b, row):
      // without prompt logits the only logits read back.
      std::vector<int64_t> lastRows, lastOf;
      for (int64_t b = 0; b < batch; ++b) {
        int64_t last = static_cast<int64_t>(prompt(b).size()) - 1;
        if (last >= start && last < start + dims.seq) {
          lastOf.push_back(b);
          lastRows.push_back(b * dims.seq + last - start);
        }
      }
      if (absl::Status st =
              s.run(s.prefill, dims, s.promptLogits ? nullptr : &lastRows);
          !st.ok())
        return abandon(st);
      for (int64_t b = 0; visit && b < batch; ++b)
        for (int64_t pos = start; pos < reach[b]; ++pos)
          visit(group[b], static_cast<size_t>(pos),
                std::span<const float>(
                    s.prefill.logits + (b * dims.seq + pos - start) * s.vocab,
                    static_cast<size_t>(s.vocab)));
      // Keep each sequence's last-token logits from the chunk holding it
      // (without prompt logits, the i-th row the step computed).
      for (size_t i = 0; s.stepLogits && i < lastRows.size(); ++i)
        std::memcpy(s.lastLogits.data() + group[lastOf[i]] * s.vocab,
                    s.prefill.logits +
                        (s.promptLogits ? lastRows[i] : int64_t(i)) * s.vocab,
                    sizeof(float) * static_cast<size_t>(s.vocab));
      s.lastChunkStart = start;
      s.lastChunkSeq = dims.seq;
    }
    s.lastPrefill.assign(group.begin(), group.end());
  }
  for (size_t b = 0; b < prompts.size(); ++b)
    s.lengths[ids[b]] = static_cast<int64_t>(prompts[b].size());
  return ids;
}

absl::Status Session::decode(std::span<const int> sequences,
                             std::span<const int32_t> tokens) {
  Impl &s = *impl_;
  int64_t context = s.model->plan->max_context();
  if (sequences.empty() || sequences.size() != tokens.size())
    return absl::InvalidArgumentError(
        "decode needs one token per sequence (" +
        std::to_string(sequences.size()) + " sequences, " +
        std::to_string(tokens.size()) + " tokens)");
  if (sequences.size() > s.maxBatch)
    return absl::InvalidArgumentError(
        "decode of " + std::to_string(sequences.size()) +
        " sequences exceeds the session's " + std::to_string(s.maxBatch));
  std::vector<int64_t> &newLengths = s.stepLengths;
  newLengths.resize(sequences.size()); // within the reserved capacity
  StepDims dims;
  dims.batch = static_cast<int64_t>(sequences.size());
  dims.seq = 1;
  for (int64_t b = 0; b < dims.batch; ++b) {
    int id = sequences[b];
    if (!s.alive(id))
      return absl::InvalidArgumentError("sequence " + std::to_string(id) +
                                        " is not alive");
    for (int64_t c = 0; c < b; ++c)
      if (sequences[c] == id)
        return absl::InvalidArgumentError("sequence " + std::to_string(id) +
                                          " appears twice in one step");
    if (tokens[b] < 0 || tokens[b] >= s.vocab)
      return absl::InvalidArgumentError("token " + std::to_string(tokens[b]) +
                                        " is outside [0, " +
                                        std::to_string(s.vocab) + ")");
    if (s.lengths[id] + 1 > context)
      return absl::OutOfRangeError("sequence " + std::to_string(id) +
                                   " has reached the maximum context of " +
                                   std::to_string(context) + " tokens");
    newLengths[b] = s.lengths[id] + 1;
  }
  if (absl::Status st = s.beginStep(sequences, newLengths); !st.ok())
    return st;
  for (int64_t b = 0; b < dims.batch; ++b) {
    int id = sequences[b];
    s.decode.tokens[b] = tokens[b];
    s.decode.positions[b] = static_cast<int32_t>(s.lengths[id]);
    s.decode.kvLengths[b] = static_cast<int32_t>(s.lengths[id] + 1);
    dims.kvLen = std::max<int64_t>(dims.kvLen, s.lengths[id] + 1);
  }
  dims.routed = dims.batch * s.model->plan->moe_top_k();
  if (absl::Status st = s.run(s.decode, dims); !st.ok())
    return st;
  // Batch 128 of a 102400-token vocabulary is 52 MB: copied by every
  // thread, not one.
  if (s.stepLogits) {
#pragma omp parallel for if (dims.batch >= 8) schedule(static)
    for (int64_t b = 0; b < dims.batch; ++b)
      std::memcpy(s.lastLogits.data() + sequences[b] * s.vocab,
                  s.decode.logits + b * s.vocab,
                  sizeof(float) * static_cast<size_t>(s.vocab));
  }
  for (int64_t b = 0; b < dims.batch; ++b)
    ++s.lengths[sequences[b]];
  s.lastPrefill.clear();
  return absl::OkStatus();
}

absl::Status Session::decode(std::span<const int32_t> tokens) {
  std::vector<int> live = sequences();
  return decode(live, tokens);
}

absl::Status Session::release(int sequence) {
  Impl &s = *impl_;
  if (!s.alive(sequence))
    return absl::InvalidArgumentError("sequence " + std::to_string(sequence) +
                                      " is not alive");
  s.lengths[sequence] = -1;
  s.forgetPromptLogits(sequence);
  return s.kv->release(sequence);
}

absl::Status Session::extendUncomputed(int sequence, int64_t tokens) {
  Impl &s = *impl_;
  if (!s.alive(sequence) || tokens < 0)
    return absl::InvalidArgumentError("sequence " + std::to_string(sequence) +
                                      " is not alive");
  int64_t length = s.lengths[sequence] + tokens;
  if (length > s.model->plan->max_context())
    return absl::OutOfRangeError("sequence " + std::to_string(sequence) +
                                 " would exceed the maximum context");
  if (absl::Status st = s.kv->reserve(sequence, length); !st.ok())
    return st;
  s.lengths[sequence] = length;
  s.forgetPromptLogits(sequence);
  return absl::OkStatus();
}

std::vector<int> Session::sequences() const {
  std::vector<int> ids;
  for (size_t id = 0; id < impl_->lengths.size(); ++id)
    if (impl_->lengths[id] >= 0)
      ids.push_back(static_cast<int>(id));
  return ids;
}

size_t Session::numSequences() const { return sequences().size(); }

size_t Session::length(int sequence) const {
  return impl_->alive(sequence) ? static_cast<size_t>(impl_->lengths[sequence])
                                : 0;
}

int64_t Session::freeCacheTokens() const {
  return impl_->kv->freeBlocks() * impl_->kv->blockTokens();
}

std::span<const float> Session::logits(int sequence) const {
  const Impl &s = *impl_;
  if (!s.stepLogits || !s.alive(sequence))
    return {};
  return {s.lastLogits.data() + sequence * static_cast<size_t>(s.vocab),
          static_cast<size_t>(s.vocab)};
}

absl::StatusOr<std::span<const float>>
Session::promptLogits(int sequence, size_t position) const {
  const Impl &s = *impl_;
  if (!s.promptLogits || !s.stepLogits)
    return absl::FailedPreconditionError(
        "prompt logits are not kept: the session was created without "
        "SessionOptions::promptLogits (or stepLogits)");
  if (!s.alive(sequence))
    return absl::InvalidArgumentError("sequence " + std::to_string(sequence) +
                                      " is not alive");
  int64_t pos = static_cast<int64_t>(position);
  auto row = std::find(s.lastPrefill.begin(), s.lastPrefill.end(), sequence);
  if (row == s.lastPrefill.end() || pos >= s.lengths[sequence] ||
      pos < s.lastChunkStart || pos >= s.lastChunkStart + s.lastChunkSeq)
    return absl::OutOfRangeError(
        "prompt logits of sequence " + std::to_string(sequence) +
        ", position " + std::to_string(position) +
        " are not held (only the last prefill chunk's are, until the next "
        "step)");
  int64_t b = row - s.lastPrefill.begin();
  return std::span<const float>(
      s.prefill.logits +
          (b * s.lastChunkSeq + (pos - s.lastChunkStart)) * s.vocab,
      static_cast<size_t>(s.vocab));
}

} // namespace kiln
