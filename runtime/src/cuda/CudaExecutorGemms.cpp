// GEMM launches: decoded from the plan (GemmCall) and given to cuBLASLt,
// the tensor-core GEMM (MmaGemm.h) or the GEMV (Matmul.h); linear groups
// as one launch where their members allow (GemmGroup.h); gated FFN GEMMs;
// the output head over the rows whose logits a step keeps.
#include "runtime/src/cuda/CudaExecutorImpl.h"

#include "LaunchAttributes.h"
#include "LogitRows.h"
#include "runtime/kernels/GemmGroup.h"
#include "runtime/kernels/Library.h"
#include "runtime/kernels/MmaGemm.h"

#include <algorithm>

namespace kiln::cuda {

namespace art = artifact;

absl::Status Executor::Impl::launchGemm(const art::Launch &l) {
  GemmCall c = gemmCall(l);
  if (l.kernel() == art::KernelKind::Logits && logitRows) {
    if (logitRows->empty())
      return absl::OkStatus(); // no sequence's last prompt token in the step
    if (absl::Status st = headOverRows(c); !st.ok())
      return st;
  }
  return dispatchGemm(c);
}

absl::Status Executor::Impl::headOverRows(GemmCall &c) {
  const std::vector<int64_t> &rows = *logitRows;
  if (absl::Status st = checkLogitRows(rows, c.p.rows); !st.ok())
    return st;
  auto x = reinterpret_cast<CUdeviceptr>(c.p.x);
  size_t rowBytes = size_t(c.p.xRowStride) * sizeof(float);
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i] != int64_t(i))
      if (absl::Status st =
              check(api().cuMemcpyDtoDAsync(
                        x + i * rowBytes, x + size_t(rows[i]) * rowBytes,
                        size_t(c.p.k) * sizeof(float), stream),
                    "gathering the output head's rows");
          !st.ok())
        return st;
  c.p.rows = static_cast<int64_t>(rows.size());
  return absl::OkStatus();
}

Executor::Impl::GemmCall Executor::Impl::gemmCall(const art::Launch &l) const {
  const auto &refs = *l.args();
  const art::TensorRef *x = refs.Get(0), *w = refs.Get(1);
  const art::TensorRef *out = refs.Get(refs.size() - 1);
  unsigned at = fp8IntsAt(l);
  GemmCall c;
  c.weightType = w->type();
  c.fp8 = fp8Gemm(l);
  c.dense = blasGemm(l) || (c.fp8 && l.kernel() == art::KernelKind::Linear &&
                            l.ints()->Get(0) == 0);
  GemmParams &p = c.p;
  p.noPrefetch = !prefetch;
  p.w = reinterpret_cast<const void *>(resolve(w));
  p.out = reinterpret_cast<float *>(resolve(out));
  p.x = reinterpret_cast<const float *>(resolve(x));
  switch (l.kernel()) {
  case art::KernelKind::HeadLinear: {
    // x [rows, heads, width] read at columns [offset, offset + in) of each
    // head, w [heads, out, in], out [rows, heads, out].
    c.matrices = staticDim(w, 0);
    p.n = staticDim(w, 1);
    p.k = staticDim(w, 2);
    int64_t width = lastDim(x);
    p.x += l.ints()->Get(0);
    p.rows = numel(x) / (c.matrices * width);
    p.xRowStride = c.matrices * width;
    p.xMatrixStride = width;
    p.outRowStride = c.matrices * p.n;
    p.outMatrixStride = p.n;
    break;
  }
  case art::KernelKind::GroupedLinear:
    // Rows grouped by expert; counted on the device (offsets[experts]).
    p.experts = static_cast<int>(staticDim(w, 0));
    p.n = staticDim(w, 1);
    p.k = staticDim(w, 2);
    p.rows = shape.routed;
    p.offsets = reinterpret_cast<const int32_t *>(resolve(refs.Get(2)));
    if (p.offsets == routedOffsets)
      p.activeExperts = reinterpret_cast<const int32_t *>(activeExperts);
    p.xRowStride = p.k;
    p.outRowStride = p.n;
    selectionOrder(c, l);
    break;
  default:
    p.n = staticDim(w, 0);
    p.k = lastDim(x);
    p.rows = numel(x) / p.k;
    p.xRowStride = p.k;
    p.outRowStride = p.n;
    if (l.kernel() == art::KernelKind::Linear && l.ints()->Get(0) == 1) {
      const art::TensorRef *bias = refs.Get(2);
      p.bias = reinterpret_cast<const void *>(resolve(bias));
      p.biasType = bias->type() == art::ElementType::BF16  ? BiasBf16
                   : bias->type() == art::ElementType::F16 ? BiasF16
                                                           : BiasF32;
    }
    break;
  }
  if (c.fp8) {
    p.blockRows = l.ints()->Get(at);
    p.blockCols = l.ints()->Get(at + 1);
    c.pow2 = l.ints()->Get(at + 2) == 1 ? 1 : 0;
    // Activations a fused kernel quantized: e4m3 codes, scales before out.
    c.quantized = x->type() == art::ElementType::F8E4M3;
    p.wScale = reinterpret_cast<const float *>(
        resolve(refs.Get(refs.size() - (c.quantized ? 3 : 2))));
    if (c.quantized) {
      p.x = nullptr;
      p.xCodes = reinterpret_cast<const unsigned char *>(resolve(x));
      p.xScale =
          reinterpret_cast<const float *>(resolve(refs.Get(refs.size() - 2)));
    }
  }
  return c;
}

absl::Status Executor::Impl::launchLinearGroup(const art::EntryPoint &entry,
                                               const art::LinearGroup &group) {
  static_assert(kGemmGroupMembers == kLinearGroupMaxMembers);
  std::vector<const art::Launch *> members;
  std::vector<GemmCall> calls;
  for (uint32_t i = 0; i < group.count(); ++i) {
    const art::Launch *l = entry.launches()->Get(group.first() + i);
    members.push_back(l);
    calls.push_back(l->kernel() == art::KernelKind::GatedLinear ? gatedCall(*l)
                                                                : gemmCall(*l));
  }
  // Members on cuBLASLt, or run expert by expert, launch on their own;
  // otherwise the members share one launch, each as a GEMV or, where the
  // mma GEMM takes its rows, on the tensor cores.
  // FP8 GEMMs of f32 activations: each member's blocks quantize their own
  // rows where they fit the quantizing GEMV (members given e4m3 codes use
  // those); otherwise the activations are quantized into one scratch
  // buffer, so only members of one input share a launch.
  GemmCall &lead = calls.front();
  auto all = [&](auto &&predicate) {
    return std::all_of(calls.begin(), calls.end(), predicate);
  };
  std::vector<int> mma;
  for (const GemmCall &c : calls)
    mma.push_back(mmaTakes(c));
  bool gemvs = std::none_of(mma.begin(), mma.end(), [](int m) { return m; });
  bool codes = all([](const GemmCall &c) { return c.quantized; });
  bool floats = all([](const GemmCall &c) { return !c.quantized; });
  bool quantizeIn =
      lead.fp8 && !codes && gemvs && all([](const GemmCall &c) {
        return c.quantized || gemvQuantizesRows(c.p.k, c.p.blockCols);
      });
  bool quantizeOnce =
      lead.fp8 && floats && !quantizeIn && all([&](const GemmCall &c) {
        return c.p.x == lead.p.x && c.p.k == lead.p.k &&
               c.p.rows == lead.p.rows && !c.p.offsets;
      });
  // Members on the tensor cores share a launch in bf16 (kiln_gemm_group_*).
  bool together =
      all([&](const GemmCall &c) { return libraryKernelsTake(c); }) &&
      (gemvs || lead.weightType == art::ElementType::BF16) &&
      (!lead.fp8 || codes || quantizeIn || quantizeOnce);
  if (!together) {
    // One by one; GEMMs of one input on cuBLASLt share its bf16 copy.
    if (absl::Status s = convertSharedRows(calls); !s.ok())
      return s;
    for (size_t i = 0; i < members.size(); ++i)
      if (absl::Status s = members[i]->kernel() == art::KernelKind::GatedLinear
                               ? launchGated(*members[i])
                               : dispatchGemm(calls[i]);
          !s.ok())
        return s;
    return absl::OkStatus();
  }
  if (quantizeOnce) {
    if (absl::Status s = quantizeRows(lead); !s.ok())
      return s;
    for (GemmCall &c : calls) {
      c.p.x = lead.p.x;
      c.p.xScale = lead.p.xScale;
    }
  }
  GemmGroupParams p{};
  p.members = static_cast<int>(calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    p.member[i] = calls[i].p;
    p.member[i].actPow2 = calls[i].pow2;
    p.mma[i] = mma[i];
  }
  std::string type = lead.fp8 && codes ? "f8e4m3_q8"
                     : quantizeIn      ? "f8e4m3_qin"
                                  : detail::elementTypeName(lead.weightType);
  int64_t bytes = 0;
  for (const GemmCall &c : calls)
    bytes =
        bytes < 0 || weightBytesRead(c) < 0 ? -1 : bytes + weightBytesRead(c);
  launchWeightBytes = bytes;
  return launch(std::string(gemvs ? "kiln_gemv_group_" : "kiln_gemm_group_") +
                    (lead.p.wUp ? "gated_" : "") + type,
                gemmGroupGrid(p), p);
}

bool Executor::Impl::blasWeights(const GemmCall &c) const {
  return blas && (c.weightType == art::ElementType::BF16 || blasFp8Shape(c));
}

bool Executor::Impl::perExpert(const GemmCall &c) const {
  // Auto: only weights cuBLASLt takes gain from a GEMM per expert.
  return c.p.offsets && !graphStep &&
         (expertGemms == ExpertGemms::PerExpert ||
          (expertGemms == ExpertGemms::Auto && blasWeights(c)));
}

absl::Status Executor::Impl::dispatchGemm(const GemmCall &c) {
  return perExpert(c) ? runExperts({&c, 1}) : runGemm(c);
}

bool Executor::Impl::blasDense(const GemmCall &c) const {
  return c.dense && c.p.rows >= kBlasMinRows && blasWeights(c);
}

bool Executor::Impl::libraryKernelsTake(const GemmCall &c) const {
  return !perExpert(c) && !blasDense(c);
}

void Executor::Impl::selectionOrder(GemmCall &c, const art::Launch &l) const {
  GemmParams &p = c.p;
  if (!selections.experts || p.offsets != routedOffsets)
    return;
  p.selections = selections.experts;
  p.selectionRows = selections.selectionRows;
  p.offsets = nullptr;
  p.activeExperts = nullptr;
  p.rows = selections.rows;
  // The first GEMMs read the rows the route would have gathered: the
  // tokens' own rows instead. Later ones read earlier ones' routed rows.
  bool tokens = selections.readers->count(&l) > 0;
  if (tokens)
    p.x = selections.x;
  p.selectionFanOut = tokens ? selections.topK : 1;
}

Executor::Impl::GemmCall Executor::Impl::gatedCall(const art::Launch &l) const {
  const auto &refs = *l.args();
  GatedLinearArgs g = GatedLinearArgs::of(l, refs.size());
  auto at = [&](int i) { return resolve(refs.Get(static_cast<unsigned>(i))); };
  const art::TensorRef *x = refs.Get(0), *w = refs.Get(1);
  int rank = static_cast<int>(w->shape()->size());
  GemmCall c;
  c.weightType = w->type();
  c.fp8 = g.fp8;
  GemmParams &p = c.p;
  p.noPrefetch = !prefetch;
  p.x = reinterpret_cast<const float *>(at(0));
  p.w = reinterpret_cast<const void *>(at(1));
  p.wUp = reinterpret_cast<const void *>(at(2));
  p.out = reinterpret_cast<float *>(at(g.out));
  p.n = staticDim(w, rank - 2);
  p.k = staticDim(w, rank - 1);
  p.xRowStride = p.k;
  p.outRowStride = p.n;
  if (g.offsets >= 0) {
    p.experts = static_cast<int>(staticDim(w, 0));
    p.rows = shape.routed;
    p.offsets = reinterpret_cast<const int32_t *>(at(g.offsets));
    if (p.offsets == routedOffsets)
      p.activeExperts = reinterpret_cast<const int32_t *>(activeExperts);
    selectionOrder(c, l);
  } else {
    p.rows = numel(x) / p.k;
    c.dense = true;
  }
  if (c.fp8) {
    p.blockRows = l.ints()->Get(1);
    p.blockCols = l.ints()->Get(2);
    c.pow2 = l.ints()->Get(3) == 1 ? 1 : 0;
    p.wScale = reinterpret_cast<const float *>(at(g.gateScale));
    p.wUpScale = reinterpret_cast<const float *>(at(g.upScale));
    c.quantized = g.inputScale >= 0;
    if (c.quantized) {
      p.x = nullptr;
      p.xCodes = reinterpret_cast<const unsigned char *>(at(0));
      p.xScale = reinterpret_cast<const float *>(at(g.inputScale));
    }
  }
  return c;
}

absl::Status Executor::Impl::launchGated(const art::Launch &l) {
  GemmCall c = gatedCall(l);
  const GemmParams &p = c.p;
  // The gated GEMV, or the gated tensor-core GEMM: one launch.
  if (!perExpert(c) && !blasDense(c))
    return runGemm(c);
  // A GEMM per expert (runExperts) for each projection.
  bool perExpertGemms = false;
  if (perExpert(c)) {
    // Outside capture, as runExperts: few routed rows (a decode step) stay
    // one grouped launch.
    absl::StatusOr<bool> few = fewRowsPerExpert(p);
    if (!few.ok())
      return few.status();
    if (*few)
      return runGemm(c);
    perExpertGemms = true;
  }
  // cuBLASLt takes the rows: the projections one by one, then SwiGLU over
  // the result in place.
  GemmCall pair[2] = {c, c}; // gate, up
  for (GemmCall &call : pair) {
    call.p.wUp = nullptr;
    call.p.wUpScale = nullptr;
  }
  pair[1].p.w = p.wUp;
  pair[1].p.wScale = p.wUpScale;
  pair[1].p.out = reinterpret_cast<float *>(upProjections);
  // cuBLASLt reads bf16 rows: one conversion serves both projections (of
  // every routed row, where each expert's GEMMs read their slice).
  if (perExpertGemms && blas && c.weightType == art::ElementType::BF16) {
    absl::StatusOr<CUdeviceptr> rows =
        toBf16(p.x, int64_t{expertOffsets.back()} * p.k);
    if (!rows.ok())
      return rows.status();
    pair[0].bf16X = pair[1].bf16X = *rows;
  } else if (absl::Status s = convertSharedRows(pair); !s.ok()) {
    return s;
  }
  // Per expert: an expert's two projections one after the other on one
  // stream, the experts side by side.
  if (perExpertGemms) {
    if (absl::Status s = runExperts(pair); !s.ok())
      return s;
  } else {
    for (const GemmCall &call : pair)
      if (absl::Status s = dispatchGemm(call); !s.ok())
        return s;
  }
  int64_t count = numel(l.args()->Get(l.args()->size() - 1));
  return launch("kiln_swiglu", elementwiseGrid(count),
                BinaryParams{p.out, pair[1].p.out, p.out, count});
}

namespace {
bool aligned16(const void *p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}
/// rows x n x k, as the launch log names a library GEMM.
std::string gemmShape(const GemmParams &p) {
  return std::to_string(p.rows) + "x" + std::to_string(p.n) + "x" +
         std::to_string(p.k);
}
} // namespace

absl::StatusOr<bool> Executor::Impl::blasBf16Takes(const GemmCall &c) {
  const GemmParams &p = c.p;
  // cuBLASLt wants 16-byte aligned operands (an expert's slice of rows is
  // where k is a multiple of 8).
  auto key = std::make_tuple(p.rows, p.n, p.k);
  if (!blasDense(c) || p.wUp || c.weightType != art::ElementType::BF16 ||
      !aligned16(p.w) || !aligned16(p.out) ||
      (c.bf16X && !aligned16(reinterpret_cast<const void *>(c.bf16X))) ||
      bf16BlasUnsupported.count(key))
    return false;
  absl::Status ready = blas->prepareBf16(p.rows, p.n, p.k, kBlasWorkspaceBytes);
  if (absl::IsUnimplemented(ready)) {
    bf16BlasUnsupported.insert(key); // the library kernels take it
    return false;
  }
  if (!ready.ok())
    return ready;
  return true;
}

absl::StatusOr<CUdeviceptr> Executor::Impl::toBf16(const float *x,
                                                   int64_t count) {
  if (absl::Status s =
          launch("kiln_to_bf16", elementwiseGrid(count),
                 ToBf16Params{x, reinterpret_cast<uint16_t *>(bf16Activations),
                              count});
      !s.ok())
    return s;
  return bf16Activations;
}

absl::Status Executor::Impl::convertSharedRows(std::span<GemmCall> calls) {
  const GemmParams &lead = calls.front().p;
  if (calls.size() < 2)
    return absl::OkStatus();
  for (const GemmCall &c : calls) {
    if (c.bf16X || c.p.x != lead.x || c.p.rows != lead.rows || c.p.k != lead.k)
      return absl::OkStatus();
    absl::StatusOr<bool> takes = blasBf16Takes(c);
    if (!takes.ok())
      return takes.status();
    if (!*takes)
      return absl::OkStatus();
  }
  absl::StatusOr<CUdeviceptr> rows = toBf16(lead.x, lead.rows * lead.k);
  if (!rows.ok())
    return rows.status();
  for (GemmCall &c : calls)
    c.bf16X = *rows;
  return absl::OkStatus();
}

absl::Status Executor::Impl::runGemm(GemmCall c) {
  GemmParams &p = c.p;
  absl::StatusOr<bool> blasBf16 = blasBf16Takes(c);
  if (!blasBf16.ok())
    return blasBf16.status();
  if (*blasBf16) {
    CUdeviceptr x = c.bf16X;
    if (!x) {
      absl::StatusOr<CUdeviceptr> rows = toBf16(p.x, p.rows * p.k);
      if (!rows.ok())
        return rows.status();
      x = *rows;
    }
    launchWeightBytes = weightBytesRead(c);
    return counted(blas->gemmBf16(stream, p.rows, p.n, p.k, x,
                                  reinterpret_cast<CUdeviceptr>(p.w),
                                  reinterpret_cast<CUdeviceptr>(p.out),
                                  blasWorkspace, kBlasWorkspaceBytes),
                   "cuBLASLt bf16 GEMM",
                   [&] { return "cuBLASLt bf16 GEMM " + gemmShape(p); });
  }
  if (blasDense(c) && !p.wUp) {
    auto key = std::make_tuple(p.rows, p.n, p.k);
    if (blasFp8Shape(c) && aligned16(p.w) && aligned16(p.out) &&
        aligned16(c.quantized ? static_cast<const void *>(p.xCodes) : p.x) &&
        !fp8BlasUnsupported.count(key)) {
      absl::Status s = blasFp8(c);
      if (s.code() != absl::StatusCode::kUnimplemented)
        return s;
      fp8BlasUnsupported.insert(key); // the library kernels below take it
    }
  }
  bool mma = mmaTakes(c);
  std::string gemv = p.wUp ? "kiln_gemv_gated_" : "kiln_gemv_";
  std::string gemm = p.wUp ? "kiln_gemm_mma_gated_" : "kiln_gemm_mma_";
  int64_t matrices = gemmGridMatrices(p, p.offsets ? p.experts : c.matrices);
  if (c.quantized) {
    launchWeightBytes = weightBytesRead(c);
    return mma ? launch(gemm + "f8e4m3_q8", mmaGemmGrid(p.n, matrices), p)
               : launch(gemv + "f8e4m3_q8", gemvGrid(p.n, matrices), p);
  }
  if (c.fp8 && !mma && gemvQuantizesRows(p.k, p.blockCols)) {
    // The GEMV quantizes its rows itself: no kiln_quantize_rows launch.
    p.actPow2 = c.pow2;
    launchWeightBytes = weightBytesRead(c);
    return launch(gemv + "f8e4m3_qin", gemvGrid(p.n, matrices), p);
  }
  if (c.fp8)
    if (absl::Status s = quantizeRows(c); !s.ok())
      return s;
  std::string type = detail::elementTypeName(c.weightType);
  launchWeightBytes = weightBytesRead(c);
  return mma ? launch(gemm + type, mmaGemmGrid(p.n, matrices), p)
             : launch(gemv + type, gemvGrid(p.n, matrices), p);
}

absl::Status Executor::Impl::quantizeRows(GemmCall &c) {
  GemmParams &p = c.p;
  QuantizeRowsParams q{p.x,
                       reinterpret_cast<float *>(fp8Codes),
                       reinterpret_cast<float *>(fp8Scales),
                       p.offsets ? p.offsets + p.experts : nullptr,
                       p.k,
                       p.blockCols,
                       c.pow2};
  // In selection order x holds a row per selectionFanOut selections.
  int64_t rows = p.selections
                     ? (p.rows + p.selectionFanOut - 1) / p.selectionFanOut
                     : p.rows * c.matrices;
  if (absl::Status s = launch("kiln_quantize_rows", tokenGrid(rows), q);
      !s.ok())
    return s;
  p.x = reinterpret_cast<const float *>(fp8Codes);
  p.xScale = reinterpret_cast<const float *>(fp8Scales);
  return absl::OkStatus();
}

bool Executor::Impl::mmaTakes(const GemmCall &c) const {
  const GemmParams &p = c.p;
  if (p.selections)
    return false; // a row per selection: the GEMV's
  if (mmaGemms == MmaGemms::Off || (c.weightType != art::ElementType::BF16 &&
                                    c.weightType != art::ElementType::F8E4M3))
    return false;
  // Rows per matrix: grouped GEMMs' routed rows spread over the experts.
  int64_t rows = p.offsets ? p.rows / std::max(p.experts, 1) : p.rows;
  if (mmaGemms == MmaGemms::Auto && rows < kMmaMinRows)
    return false;
  // FP8 activations not quantized yet are quantized into fp8Codes (laid
  // out as x) before the GEMM.
  const void *x = c.quantized ? static_cast<const void *>(p.xCodes)
                  : c.fp8     ? reinterpret_cast<const void *>(fp8Codes)
                              : p.x;
  uintptr_t xAlign = c.quantized ? 8 : 16;
  return mmaGemmFits(p.k, c.fp8, c.quantized, p.blockRows, p.blockCols,
                     p.xRowStride, p.xMatrixStride) &&
         aligned16(p.w) && (!p.wUp || aligned16(p.wUp)) &&
         reinterpret_cast<uintptr_t>(x) % xAlign == 0;
}

absl::Status Executor::Impl::blasFp8(const GemmCall &c) {
  const GemmParams &p = c.p;
  int64_t groups = p.k / 128;
  CUdeviceptr codes = fp8Codes;
  absl::Status s;
  if (c.quantized) {
    codes = reinterpret_cast<CUdeviceptr>(p.xCodes);
    s = launch("kiln_fp8_scales_by_block", tokenGrid(p.rows),
               Fp8ScalesByBlockParams{p.xScale,
                                      reinterpret_cast<float *>(fp8Scales),
                                      cublasScaleStride(p.rows), groups});
  } else {
    s = launch("kiln_quantize_fp8", tokenGrid(p.rows),
               QuantizeFp8Params{p.x, reinterpret_cast<unsigned char *>(codes),
                                 reinterpret_cast<float *>(fp8Scales), p.k, 128,
                                 c.pow2, cublasScaleStride(p.rows)});
  }
  if (!s.ok())
    return s;
  // Unimplemented: cuBLASLt declined, and the library kernels run it.
  launchWeightBytes = weightBytesRead(c);
  absl::Status gemm = blas->gemmFp8(stream, p.rows, p.n, p.k, codes, fp8Scales,
                                    reinterpret_cast<CUdeviceptr>(p.w),
                                    reinterpret_cast<CUdeviceptr>(p.wScale),
                                    reinterpret_cast<CUdeviceptr>(p.out),
                                    blasWorkspace, kBlasWorkspaceBytes);
  if (gemm.code() == absl::StatusCode::kUnimplemented) {
    launchWeightBytes = -1; // nothing launched
    return gemm;
  }
  return counted(gemm, "cuBLASLt FP8 GEMM",
                 [&] { return "cuBLASLt FP8 GEMM " + gemmShape(p); });
}

} // namespace kiln::cuda
