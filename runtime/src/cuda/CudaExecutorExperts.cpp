// A prefill's grouped (expert) GEMMs one expert at a time: the expert
// offsets read back once per dispatch, each expert's GEMMs on cuBLASLt
// where it takes them, bf16 experts side by side on the expert streams.
#include "runtime/src/cuda/CudaExecutorImpl.h"

namespace kiln::cuda {

namespace art = artifact;

absl::StatusOr<bool> Executor::Impl::fewRowsPerExpert(const GemmParams &p) {
  std::vector<int32_t> &offsets = expertOffsets;
  if (offsets.empty()) {
    offsets.assign(static_cast<size_t>(p.experts) + 1, 0);
    if (profiling)
      queuedForProfile();
    absl::Status s = check(api().cuStreamSynchronize(stream), "routing");
    if (s.ok())
      s = check(api().cuMemcpyDtoH(offsets.data(),
                                   reinterpret_cast<CUdeviceptr>(p.offsets),
                                   offsets.size() * sizeof(int32_t)),
                "reading the expert offsets");
    if (s.ok() && profiling)
      s = holdForProfile();
    if (!s.ok()) {
      offsets.clear();
      return s;
    }
  }
  int64_t rows = offsets.back(), active = 0;
  for (int e = 0; e < p.experts; ++e)
    active += offsets[e + 1] > offsets[e];
  return expertGemms == ExpertGemms::Auto && rows < kBlasMinRows * active;
}

absl::Status Executor::Impl::runExperts(std::span<const GemmCall> calls) {
  const GemmCall &c = calls.front();
  const GemmParams &p = c.p;
  // Few rows per expert: one grouped launch of the library GEMM reads each
  // expert's weights once for all its rows, cheaper than a call per expert.
  absl::StatusOr<bool> few = fewRowsPerExpert(p);
  if (!few.ok())
    return few.status();
  if (*few) {
    for (const GemmCall &call : calls)
      if (absl::Status s = runGemm(call); !s.ok())
        return s;
    return absl::OkStatus();
  }
  const std::vector<int32_t> &offsets = expertOffsets;
  int64_t rows = offsets.back();
  uint64_t weightBytes = art::elementBytes(c.weightType);
  CUdeviceptr bf16 = c.bf16X;
  if (!bf16 && blas && c.weightType == art::ElementType::BF16) {
    // Every routed row converted once; each expert's GEMMs read its slice.
    absl::StatusOr<CUdeviceptr> converted = toBf16(p.x, rows * p.k);
    if (!converted.ok())
      return converted.status();
    bf16 = *converted;
  }
  int64_t nBlocks = c.fp8 ? (p.n + p.blockRows - 1) / p.blockRows : 0;
  int64_t kBlocks = c.fp8 ? (p.k + p.blockCols - 1) / p.blockCols : 0;
  // bf16 experts share no scratch (their rows are converted above, each
  // GEMM writes its own rows of its output), so they may run side by side,
  // an expert's GEMMs on one stream; FP8 ones quantize into shared buffers
  // and stay on `stream`.
  // Profiled steps time their launches on `stream` alone.
  bool spread = bf16 != 0 && expertStreamCount > 0 && !profiling;
  if (spread)
    if (absl::Status s = forkExpertStreams(); !s.ok())
      return s;
  CUstream own = stream;
  CUdeviceptr ownWorkspace = blasWorkspace;
  size_t turn = 0;
  for (int e = 0; e < p.experts; ++e) {
    int64_t first = offsets[e], count = offsets[e + 1] - first;
    if (count <= 0)
      continue;
    if (spread) {
      const SideStream &side = expertStreams[turn++ % expertStreams.size()];
      stream = side.stream;
      blasWorkspace = side.workspace;
      onExpertStream = true;
    }
    absl::Status s;
    for (const GemmCall &call : calls) {
      GemmCall sub = call;
      sub.dense = true;
      sub.p.offsets = nullptr;
      sub.p.activeExperts = nullptr;
      sub.p.experts = 0;
      sub.p.rows = count;
      if (call.quantized) {
        // e4m3 codes and their [rows, kBlocks] scales from a fused kernel.
        sub.p.xCodes = p.xCodes + first * p.k;
        sub.p.xScale = p.xScale + first * kBlocks;
      } else {
        sub.p.x = p.x + first * p.k;
      }
      sub.p.out = call.p.out + first * p.n;
      sub.p.w =
          static_cast<const char *>(call.p.w) + e * p.n * p.k * weightBytes;
      if (call.fp8)
        sub.p.wScale = call.p.wScale + e * nBlocks * kBlocks;
      if (bf16)
        sub.bf16X = bf16 + first * p.k * 2;
      if (s = runGemm(sub); !s.ok())
        break;
    }
    stream = own;
    blasWorkspace = ownWorkspace;
    onExpertStream = false;
    if (!s.ok())
      return s;
  }
  return spread ? joinExpertStreams() : absl::OkStatus();
}

absl::Status Executor::Impl::makeExpertStreams() {
  const DriverApi &a = api();
  absl::Status made = check(
      a.cuEventCreate(&expertsReady, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
  for (int i = 0; made.ok() && i < expertStreamCount; ++i) {
    SideStream &side = expertStreams.emplace_back();
    absl::StatusOr<CUdeviceptr> workspace =
        allocate(kBlasWorkspaceBytes, "an expert stream's cuBLASLt workspace");
    made = workspace.status();
    if (made.ok()) {
      side.workspace = *workspace;
      made = check(a.cuStreamCreate(&side.stream, CU_STREAM_NON_BLOCKING),
                   "cuStreamCreate");
    }
    if (made.ok())
      made = check(a.cuEventCreate(&side.done, CU_EVENT_DISABLE_TIMING),
                   "cuEventCreate");
  }
  if (made.ok())
    return made;
  // None or all: a later prefill tries again from nothing (the workspaces
  // stay with the allocations).
  releaseExpertStreams();
  return made;
}

void Executor::Impl::releaseExpertStreams() {
  const DriverApi &a = api();
  for (SideStream &side : expertStreams) {
    if (side.done)
      a.cuEventDestroy(side.done);
    if (side.stream)
      a.cuStreamDestroy(side.stream);
  }
  expertStreams.clear();
  if (expertsReady)
    a.cuEventDestroy(expertsReady);
  expertsReady = nullptr;
}

absl::Status Executor::Impl::forkExpertStreams() {
  const DriverApi &a = api();
  if (expertStreams.empty())
    if (absl::Status s = makeExpertStreams(); !s.ok())
      return s;
  if (absl::Status s =
          check(a.cuEventRecord(expertsReady, stream), "cuEventRecord");
      !s.ok())
    return s;
  for (const SideStream &side : expertStreams)
    if (absl::Status s =
            check(a.cuStreamWaitEvent(side.stream, expertsReady, 0),
                  "cuStreamWaitEvent");
        !s.ok())
      return s;
  return absl::OkStatus();
}

absl::Status Executor::Impl::joinExpertStreams() {
  const DriverApi &a = api();
  for (const SideStream &side : expertStreams) {
    if (absl::Status s =
            check(a.cuEventRecord(side.done, side.stream), "cuEventRecord");
        !s.ok())
      return s;
    if (absl::Status s = check(a.cuStreamWaitEvent(stream, side.done, 0),
                               "cuStreamWaitEvent");
        !s.ok())
      return s;
  }
  return absl::OkStatus();
}

} // namespace kiln::cuda
