// Launches of the library kernels (Library.h) and of attention and the
// paged cache's kernels (KvAttention.h, MmaAttention.h): their parameters
// from the plan's references and the step's shape. GEMMs go to
// CudaExecutorGemms.cpp.
#include "runtime/src/cuda/CudaExecutorImpl.h"

#include "LaunchAttributes.h"
#include "runtime/kernels/KvAttention.h"
#include "runtime/kernels/Library.h"
#include "runtime/kernels/MmaAttention.h"

namespace kiln::cuda {

namespace art = artifact;

absl::Status Executor::Impl::launchLibrary(const art::Launch &l) {
  const auto &refs = *l.args();
  auto ptr = [&](unsigned i) { return resolve(refs.Get(i)); };
  auto f32 = [&](unsigned i) { return reinterpret_cast<float *>(ptr(i)); };
  auto i32 = [&](unsigned i) { return reinterpret_cast<int32_t *>(ptr(i)); };
  auto raw = [&](unsigned i) { return reinterpret_cast<const void *>(ptr(i)); };
  auto ints = [&](unsigned i) { return l.ints()->Get(i); };
  auto floats = [&](unsigned i) { return l.floats()->Get(i); };
  const art::TensorRef *x = refs.Get(0);
  std::string suffix = detail::elementTypeName(
      refs.size() > 1 ? refs.Get(1)->type() : art::ElementType::F32);

  switch (l.kernel()) {
  case art::KernelKind::Embedding: {
    int64_t n = numel(x);
    return launch(
        "kiln_embedding_" + suffix, tokenGrid(n),
        EmbeddingParams{i32(0), raw(1), f32(2), staticDim(refs.Get(1), 1)});
  }
  case art::KernelKind::RMSNorm: {
    int64_t d = lastDim(x);
    return launch("kiln_rms_norm_" + suffix, tokenGrid(numel(x) / d),
                  RmsNormParams{f32(0), raw(1), f32(2), static_cast<int>(d),
                                static_cast<float>(floats(0))});
  }
  case art::KernelKind::Add:
  case art::KernelKind::SwiGLU: {
    int64_t n = numel(x);
    return launch(l.kernel() == art::KernelKind::Add ? "kiln_add"
                                                     : "kiln_swiglu",
                  elementwiseGrid(n), BinaryParams{f32(0), f32(1), f32(2), n});
  }
  case art::KernelKind::Slice: {
    int64_t d = lastDim(x), rows = numel(x) / d;
    return launch("kiln_slice", elementwiseGrid(rows * ints(1)),
                  SliceParams{f32(0), f32(1), rows, d, ints(0), ints(1)});
  }
  case art::KernelKind::Concat: {
    ConcatParams p{};
    p.count = static_cast<int>(refs.size() - 1);
    for (int i = 0; i < p.count; ++i) {
      p.inputs[i] = f32(static_cast<unsigned>(i));
      p.dims[i] = lastDim(refs.Get(static_cast<unsigned>(i)));
    }
    const art::TensorRef *out = refs.Get(refs.size() - 1);
    p.out = reinterpret_cast<float *>(resolve(out));
    p.outDim = lastDim(out);
    p.rows = numel(out) / p.outDim;
    return launch("kiln_concat", elementwiseGrid(p.rows * p.outDim), p);
  }
  case art::KernelKind::Broadcast: {
    const auto &to = *refs.Get(1)->shape();
    unsigned axis = broadcastAxis(*x, *refs.Get(1));
    int64_t rows = 1, repeat = 1, inner = 1;
    for (unsigned i = 0; i < to.size(); ++i)
      (i < axis ? rows : i == axis ? repeat : inner) *= of(*to.Get(i));
    return launch("kiln_broadcast", elementwiseGrid(rows * repeat * inner),
                  BroadcastParams{f32(0), f32(1), rows, repeat, inner});
  }
  case art::KernelKind::Rope: {
    int64_t count = shape.batch * shape.seq, d = lastDim(x);
    int64_t heads = numel(x) / (count * d);
    cpu::RopeParams p = ropeParams(l);
    return launch(
        "kiln_rope", tokenGrid(count),
        RopeParams{f32(0), i32(1),
                   reinterpret_cast<const double *>(ropeTables.at(&l)), f32(2),
                   static_cast<int>(heads), static_cast<int>(d / 2),
                   cpu::ropeAttentionFactor(p), p.interleaved ? 1 : 0});
  }
  case art::KernelKind::MoeGate: {
    bool bias = ints(6) == 1;
    int64_t experts = staticDim(refs.Get(1), 0);
    MoeGateConfig config{static_cast<ScoringFunc>(ints(0)),
                         static_cast<TopkMethod>(ints(1)),
                         static_cast<int>(ints(3)),
                         static_cast<int>(ints(4)),
                         ints(5) == 1,
                         static_cast<float>(floats(0))};
    std::string name =
        "kiln_moe_gate_" + suffix + "_" +
        (bias ? detail::elementTypeName(refs.Get(2)->type()) : "f32");
    int64_t count = shape.batch * shape.seq;
    return launch(name, tokenGrid(count),
                  MoeGateParams{f32(0), raw(1), bias ? raw(2) : nullptr,
                                f32(refs.size() - 2), i32(refs.size() - 1),
                                static_cast<int>(lastDim(x)),
                                static_cast<int>(experts),
                                static_cast<int>(ints(2)), config});
  }
  case art::KernelKind::MoeDispatch: {
    expertOffsets.clear(); // recounted on the device
    routedOffsets = i32(3);
    routedSelectionRows = i32(5);
    int64_t topK = lastDim(refs.Get(1));
    int64_t n = shape.batch * shape.seq * topK;
    selections = {};
    auto readers = routedReaders.find(&l);
    if (selectionDispatch && readers != routedReaders.end() && shape.seq == 1 &&
        n <= kSelectionRows) {
      selections = {
          i32(1), f32(0), &readers->second, i32(5), static_cast<int>(topK), n};
      return absl::OkStatus();
    }
    bool gather = n * lastDim(x) > kRouteGatherElements;
    if (absl::Status s =
            launch("kiln_moe_route", Dim3{1, 1, 1},
                   MoeRouteParams{i32(1), i32(3), i32(4), static_cast<int>(n),
                                  static_cast<int>(ints(0)),
                                  reinterpret_cast<int32_t *>(activeExperts),
                                  i32(5), gather ? nullptr : f32(0), f32(2),
                                  lastDim(x), static_cast<int>(topK)});
        !s.ok())
      return s;
    if (!gather)
      return absl::OkStatus();
    return launch("kiln_moe_gather", tokenGrid(n),
                  MoeGatherParams{f32(0), i32(4), i32(3) + ints(0), f32(2),
                                  lastDim(x), static_cast<int>(topK)});
  }
  case art::KernelKind::MoeCombine: {
    if (i32(2) != routedSelectionRows)
      return absl::InvalidArgumentError(
          "the combine reads selection rows no dispatch before it wrote");
    int64_t count = shape.batch * shape.seq, topK = lastDim(refs.Get(1));
    return launch("kiln_moe_combine", tokenGrid(count),
                  MoeCombineParams{f32(0), f32(1), i32(2), f32(3), lastDim(x),
                                   static_cast<int>(topK)});
  }
  case art::KernelKind::QuantizeFp8: {
    int64_t k = lastDim(x);
    return launch(
        "kiln_quantize_fp8", tokenGrid(numel(x) / k),
        QuantizeFp8Params{f32(0), reinterpret_cast<unsigned char *>(ptr(1)),
                          f32(2), k, ints(0), ints(1) == 1 ? 1 : 0, 0});
  }
  case art::KernelKind::Linear:
  case art::KernelKind::Logits:
  case art::KernelKind::HeadLinear:
  case art::KernelKind::GroupedLinear:
    return launchGemm(l);
  case art::KernelKind::GatedLinear:
    return launchGated(l);
  case art::KernelKind::KvAppend:
  case art::KernelKind::Attention:
  case art::KernelKind::KvGather:
    return launchAttention(l);
  }
  return absl::InternalError("GPU: unknown kernel kind");
}

absl::Status Executor::Impl::launchAttention(const art::Launch &l) {
  const auto &refs = *l.args();
  auto f32 = [&](unsigned i) {
    return reinterpret_cast<float *>(resolve(refs.Get(i)));
  };
  auto i32 = [&](unsigned i) {
    return reinterpret_cast<const int32_t *>(resolve(refs.Get(i)));
  };
  KvTables paged{reinterpret_cast<const int32_t *>(tables), cache.tableStride,
                 cache.blockTokens, 0};
  auto packedOf = [&](size_t slot) {
    return PackedRows{cache.packed[slot].quantColumns,
                      cache.packed[slot].bf16Columns};
  };
  switch (l.kernel()) {
  case art::KernelKind::KvAppend: {
    size_t slot = static_cast<size_t>(l.ints()->Get(0));
    KvAppendParams p{
        f32(0),        i32(1),    reinterpret_cast<void *>(slots[slot]),
        paged,         shape.seq, cache.slotFloats[slot],
        packedOf(slot)};
    return launch(isPacked(p.packed) ? "kiln_kv_append_packed"
                                     : "kiln_kv_append",
                  tokenGrid(shape.batch * shape.seq), p);
  }
  case art::KernelKind::KvGather: {
    const art::TensorRef *view = refs.Get(0);
    size_t slot = view->index();
    int64_t entry = cache.slotFloats[slot], n = lastDim(view);
    int64_t rowsPerToken = numel(view) / (shape.batch * shape.kvLen * n);
    KvGatherParams p{reinterpret_cast<const void *>(slots[slot]),
                     paged,
                     reinterpret_cast<const int32_t *>(held),
                     f32(1),
                     shape.kvLen,
                     rowsPerToken,
                     entry / rowsPerToken,
                     static_cast<int64_t>(view->offset()),
                     n,
                     entry,
                     packedOf(slot)};
    return launch("kiln_kv_gather", tokenGrid(shape.batch * shape.kvLen), p);
  }
  default:
    break;
  }
  // Attention: q, k, v, positions, kv lengths, out.
  const art::TensorRef *q = refs.Get(0), *k = refs.Get(1), *v = refs.Get(2);
  AttentionParams p{};
  p.q = f32(0);
  p.positions = i32(3);
  p.kvLengths = i32(4);
  // Decode blocks read positions and lengths before awaiting the kernels
  // before them (prefetchAttentionBlock): only the step's inputs, which
  // the host copies before its first kernel, may be read there.
  auto stepInput = [&](const art::TensorRef *input, const int32_t *read) {
    return input && reinterpret_cast<const int32_t *>(resolve(input)) == read;
  };
  p.noPrefetch = !prefetch || !runningEntry ||
                 !stepInput(runningEntry->positions(), p.positions) ||
                 !stepInput(runningEntry->kv_lengths(), p.kvLengths);
  p.out = f32(5);
  p.seq = shape.seq;
  p.heads = staticDim(q, 2);
  p.kvHeads = staticDim(k, 2);
  p.dk = staticDim(q, 3);
  p.dv = staticDim(v, 3);
  p.scale = static_cast<float>(l.floats()->Get(0));
  if (k->storage() == art::Storage::KvCache) {
    p.tables = paged;
    if (cache.packed[k->index()].packed()) {
      p.packedSlot = reinterpret_cast<const unsigned char *>(slots[k->index()]);
      p.packed = packedOf(k->index());
    } else {
      p.k = {reinterpret_cast<const float *>(slots[k->index()]),
             cache.slotFloats[k->index()], p.dk,
             static_cast<int64_t>(k->offset())};
      p.v = {reinterpret_cast<const float *>(slots[v->index()]),
             cache.slotFloats[v->index()], p.dv,
             static_cast<int64_t>(v->offset())};
    }
  } else {
    // Keys and values the step computed: [batch, kvLen, kvHeads, d].
    p.tables = {nullptr, 0, 0, shape.kvLen};
    p.k = {f32(1), p.kvHeads * p.dk, p.dk, 0};
    p.v = {f32(2), p.kvHeads * p.dv, p.dv, 0};
  }
  int64_t rows = shape.batch * shape.seq;
  p.splits = attentionSplits(
      shape.kvLen, attentionBlocks(shape.batch, shape.seq, p.heads, p.kvHeads),
      multiprocessors);
  p.splitTokens = attentionSplitTokens(shape.kvLen, p.splits);
  p.scratch = reinterpret_cast<float *>(attentionScratch);
  if (p.splits > 1 &&
      size_t(rows * p.heads * p.splits * (2 + p.dv)) > attentionScratchFloats)
    return absl::InternalError("GPU attention: split scratch too small");
  // float2 loads of query and key pairs; of packed rows only a bf16 cache's
  // (no e4m3 columns), loaded as stored.
  bool pairs =
      (reinterpret_cast<uintptr_t>(p.q) & 7) == 0 &&
      (p.packedSlot ? p.packed.quantColumns == 0
                    : p.k.rowStride % 2 == 0 && p.k.headStride % 2 == 0 &&
                          p.k.offset % 2 == 0 &&
                          (reinterpret_cast<uintptr_t>(p.k.data) & 7) == 0);
  // Query vectors a block takes: Auto wants most of the mma's 16 rows
  // used (prefill tiles; decode where 8+ heads share a kv head, as MLA's
  // 16 share the latent row), where the model is bf16 already: its
  // weights, or a bf16 latent cache (a packed row without e4m3 columns).
  int64_t group = p.heads / p.kvHeads;
  int64_t vectors = attentionTileRows(shape.seq, p.heads, p.kvHeads) *
                    std::min<int64_t>(group, kAttentionHeadsPerBlock);
  const char *kernel = "kiln_attention";
  if (pairs && (mmaAttention == MmaAttention::On ||
                (mmaAttention == MmaAttention::Auto &&
                 (bf16Weights || p.packedSlot) && vectors >= 8))) {
    if (mmaAttentionFits(p.dk, p.dv))
      kernel =
          p.packedSlot ? "kiln_attention_mma_bf16_rows" : "kiln_attention_mma";
    else if (mmaAttentionWideFits(p.dk, p.dv))
      kernel = p.packedSlot ? "kiln_attention_mma_wide_bf16_rows"
                            : "kiln_attention_mma_wide";
  }
  if (absl::Status s = launch(
          kernel,
          attentionGrid(shape.batch, shape.seq, p.heads, p.kvHeads, p.splits),
          p);
      !s.ok())
    return s;
  if (p.splits == 1)
    return absl::OkStatus();
  return launch("kiln_attention_merge", attentionMergeGrid(rows, p.heads, p.dv),
                p);
}

} // namespace kiln::cuda
