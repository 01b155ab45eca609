// Executor::Impl: the CUDA executor's state and the steps it launches,
// shared by the files that implement it:
//
// - CudaExecutor.cpp: creation (driver, modules, device memory), the
//   step's launch loop, decode graphs, the kernel profile, Executor::run;
// - CudaExecutorLaunches.cpp: launches of the library kernels, attention
//   and the cache's;
// - CudaExecutorGemms.cpp: GEMM launches and the path each takes
//   (cuBLASLt, the tensor-core GEMM, the GEMV), linear groups, gated GEMMs;
// - CudaExecutorExperts.cpp: a prefill's expert GEMMs one per expert, side
//   by side on the expert streams.
#ifndef KILN_RUNTIME_CUDA_CUDAEXECUTORIMPL_H
#define KILN_RUNTIME_CUDA_CUDAEXECUTORIMPL_H

#include "runtime/src/cuda/CublasLt.h"
#include "runtime/src/cuda/CudaDriver.h"
#include "runtime/src/cuda/CudaExecutor.h"
#include "runtime/src/cuda/EmulatedDriver.h"
#include "runtime/src/cuda/KernelProfiler.h"

// The library kernels' parameter structs and grids (the host never runs
// their bodies here).
#include "runtime/kernels/Matmul.h"

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kiln::cuda {

struct Executor::Impl {
  /// Device memory freed with the executor.
  struct DeviceBuffer {
    CUdeviceptr ptr = 0;
    size_t bytes = 0;
  };
  /// The graph of a step of one token per sequence: per entry point (a
  /// prefill's one-token chunk runs the prefill's launches, not the
  /// decode's), batch size and context bucket (the attention kernels'
  /// split count depends on it).
  struct GraphKey {
    const artifact::EntryPoint *entry;
    int64_t batch, bucket;
    bool operator<(const GraphKey &o) const {
      return std::tie(entry, batch, bucket) <
             std::tie(o.entry, o.batch, o.bucket);
    }
  };
  static int64_t lastDim(const artifact::TensorRef *ref) {
    return ref->shape()->Get(ref->shape()->size() - 1)->size();
  }
  static int64_t staticDim(const artifact::TensorRef *ref, unsigned i) {
    return ref->shape()->Get(i)->size();
  }

  const Model::Impl *model = nullptr;
  CacheLayout cache;
  uint64_t arenaBytes = 0; // Executor::create's
  std::optional<Driver> driver;
  // Dense bf16 GEMMs of many rows; absent (own kernels) where it is not.
  std::optional<BlasLt> blas;
  CUdeviceptr blasWorkspace = 0, bf16Activations = 0;
  static constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;
  /// Rows from which a bf16 GEMM goes to cuBLASLt (fewer: the GEMV-like
  /// kernel reads each weight once for all rows).
  static constexpr int64_t kBlasMinRows = 16;
  /// GEMM shapes (rows, n, k) cuBLASLt has no algorithm for, by operand
  /// type (asked once; the library kernels take them).
  std::set<std::tuple<int64_t, int64_t, int64_t>> bf16BlasUnsupported,
      fp8BlasUnsupported;
  /// How grouped (expert) GEMMs run outside graph capture: Auto takes one
  /// cuBLASLt GEMM per expert where experts average kBlasMinRows rows;
  /// KILN_EXPERT_GEMMS=per-expert or grouped forces either.
  enum class ExpertGemms {
    Auto,
    PerExpert,
    Grouped
  } expertGemms = ExpertGemms::Auto;
  /// GEMMs cuBLASLt does not take, with bf16 or FP8 weights: Auto runs
  /// those of kMmaMinRows+ rows per matrix on the tensor cores
  /// (MmaGemm.h), the rest as GEMVs; KILN_MMA_GEMMS=on or off forces
  /// either (off keeps fp32 activations, as KILN_CUBLASLT=0 does for
  /// cuBLASLt's GEMMs).
  enum class MmaGemms { Auto, On, Off } mmaGemms = MmaGemms::Auto;
  static constexpr int64_t kMmaMinRows = 2;
  /// Attention on the tensor cores (MmaAttention.h: bf16 operands) where
  /// its shapes fit: Auto in models with bf16 layer weights (whose
  /// activations the GEMMs round to bf16 already) where a block has 8+
  /// query vectors (prefill; absorbed-MLA decode); KILN_MMA_ATTENTION=on
  /// or off forces either.
  enum class MmaAttention { Auto, On, Off } mmaAttention = MmaAttention::Auto;
  /// Decode steps captured as a CUDA graph per (batch, context bucket)
  /// and replayed (KILN_CUDA_GRAPHS=on, the default), or launched one
  /// kernel at a time (off: for comparison and debugging).
  bool decodeGraphs = true;
  /// Programmatic dependent launch (KILN_PDL=auto|on|off; auto: sm_90+
  /// with a driver that captures it into graphs, CUDA 12.3+): every kernel
  /// is launched so that it may start while the one before it finishes,
  /// and waits for it first thing (awaitPrecedingKernels). A decode step is
  /// a chain of ~100 short kernels, each otherwise paying the launch gap.
  bool programmaticLaunch = false;
  /// Some layer GEMM of the plan has bf16 weights (the output head of an
  /// FP8 model does not count).
  bool bf16Weights = false;
  /// Whether launches are being captured into a graph.
  bool capturing = false;
  /// Whether the step launches what its decode graph holds: captured, or
  /// profiled as a graph would run it (the context bucket's kvLen, no host
  /// reads such as the expert offsets).
  bool graphStep = false;
  /// The expert offsets runExperts last read back: valid until the next
  /// dispatch (which clears them), so a layer's grouped GEMMs share them.
  std::vector<int32_t> expertOffsets;
  CUdevice device = 0;
  CUcontext context = nullptr;
  /// The stream launches go to (an expert stream while runExperts spreads
  /// its GEMMs, onExpertStream).
  CUstream stream = nullptr;
  bool onExpertStream = false;
  /// Streams beside `stream` that a prefill's per-expert cuBLASLt GEMMs
  /// take turns on (made at the first), so that the GEMMs of a few hundred
  /// rows each, a fraction of the multiprocessors apiece, run side by side;
  /// each has its own cuBLASLt workspace, and `done` joins it back.
  /// KILN_EXPERT_STREAMS=0..16 sets how many (default 4; 0: none, every
  /// GEMM on `stream`).
  int expertStreamCount = 4;
  struct SideStream {
    CUstream stream = nullptr;
    CUdeviceptr workspace = 0;
    CUevent done = nullptr;
  };
  std::vector<SideStream> expertStreams;
  /// Recorded on `stream` where the expert GEMMs fork from it.
  CUevent expertsReady = nullptr;
  CUmodule library = nullptr, generated = nullptr;
  /// Whether the driver is the host emulation, and the module it loads for
  /// the generated kernels there.
  bool emulated = false;
  EmulatedImage emulatedImage;
  std::unordered_map<std::string, CUfunction> functions;
  /// Threads per block of the generated kernels (the module's table).
  std::unordered_map<std::string, unsigned> fusedThreads;
  std::string description;
  int multiprocessors = 0;

  std::vector<DeviceBuffer> allocations;
  std::vector<CUdeviceptr> parameters; // per plan parameter
  CUdeviceptr arena = 0;
  std::vector<CUdeviceptr> slots; // per cache slot
  CUdeviceptr tables = 0, held = 0;
  // Library scratch, sized at creation.
  CUdeviceptr attentionScratch = 0, fp8Codes = 0, fp8Scales = 0;
  /// Gated GEMMs run as two GEMMs: the up projections.
  CUdeviceptr upProjections = 0;
  /// The experts with rows, as the last dispatch routed them
  /// (GemmParams::activeExperts), and the offsets that dispatch wrote: a
  /// grouped GEMM over those offsets spans only those experts.
  CUdeviceptr activeExperts = 0;
  const int32_t *routedOffsets = nullptr;
  /// The selection rows the last dispatch wrote: the only ones a combine
  /// may read (the device trusts them as row indices).
  const int32_t *routedSelectionRows = nullptr;
  /// Routed elements (rows x hidden) up to which the route kernel's one
  /// block gathers the rows itself: a decode step's few rows (batch 1:
  /// V2-Lite 6 x 2048, V3 8 x 7168) cost it less than another launch.
  static constexpr int64_t kRouteGatherElements = int64_t{1} << 16;
  /// A decode step's routed rows up to kSelectionRows (batch 1: V2-Lite's
  /// top-6, V3's top-8) go to the grouped GEMVs in selection order
  /// (GemmParams::selections): each row is its token's row against its
  /// selected expert, so the step runs no route and no gather. Only where
  /// the plan names the GEMMs that read the routed rows (routedReaders;
  /// it then keeps the dispatch's x and indices alive while they run, and
  /// artifacts before it do not); not where KILN_MMA_GEMMS=on puts the
  /// grouped GEMMs on the tensor cores.
  static constexpr int64_t kSelectionRows = 8;
  bool selectionDispatch = false;
  /// KILN_PREFETCH=off: the GEMM and decode attention kernels' blocks do
  /// not ask the L2 for their weights and cache rows before awaiting the
  /// kernels before them (the benchmark's comparison).
  bool prefetch = true;
  /// The launches that read each skippable dispatch's routed rows (from
  /// its ints; the plan keeps its x and indices alive while they run).
  std::map<const artifact::Launch *, std::set<const artifact::Launch *>>
      routedReaders;
  /// The last dispatch's, while its grouped GEMMs run in selection order.
  struct Selections {
    const int32_t *experts = nullptr; // [tokens, topK]
    const float *x = nullptr;         // the tokens' rows
    /// The GEMMs that read the routed rows: they read x instead. The
    /// others read earlier GEMMs' rows, already in selection order.
    const std::set<const artifact::Launch *> *readers = nullptr;
    int32_t *selectionRows = nullptr;
    int topK = 0;
    int64_t rows = 0;
  } selections;
  size_t attentionScratchFloats = 0;
  // Rope inverse frequencies per rope launch, uploaded at creation.
  std::map<const artifact::Launch *, CUdeviceptr> ropeTables;
  /// A captured decode step and the kernels it runs.
  struct DecodeGraph {
    CUgraphExec exec;
    int64_t launches;
  };
  std::map<GraphKey, DecodeGraph> graphs;
  /// Kernels run (launched outside capture, or replayed in a graph) and
  /// launched into the graph being captured.
  int64_t launchesRun = 0, launchesCaptured = 0;
  /// KILN_LOG_LAUNCHES=1: each launch to stderr as it is made (a captured
  /// decode step once, at capture), with its grid or GEMM shape, so that a
  /// step's kernels can be read off on any device, the emulated one too.
  bool logLaunches = false;
  /// The kernel profile (Executor::setProfiling): made at the first, kept
  /// with its totals while profiling is off.
  std::unique_ptr<KernelProfiler> profiler;
  bool profiling = false;
  /// A profiled step's hold keeps the GPU waiting 1.5 times the longest
  /// the host has taken to queue the launches between a hold and a wait in
  /// a step of the same entry point since profiling began (the first hold
  /// guesses), at most kMaxHoldSeconds: a host that found the stream's
  /// queue full waited for the hold itself.
  static constexpr double kFirstHoldSeconds = 0.02, kMaxHoldSeconds = 0.1;
  std::map<const artifact::EntryPoint *, double> longestQueueSeconds;
  /// The entry point the step runs: its profiled holds' times, and whether
  /// an attention launch reads the step's own positions and lengths.
  const artifact::EntryPoint *runningEntry = nullptr;
  /// The rows whose logits the step computes, when not all (run's `rows`):
  /// the output head runs over those alone (headOverRows).
  const std::vector<int64_t> *logitRows = nullptr;
  std::chrono::steady_clock::time_point heldAt;
  /// The weight bytes the next counted launch reads, for the profile: set
  /// by a GEMM just before its launch; -1 where unknown.
  int64_t launchWeightBytes = -1;
  /// `launched`, counting a launch when it succeeded, logging it as
  /// `what()` says and, profiling, marking its end as `kernel`'s.
  template <class What>
  absl::Status counted(absl::Status launched, const std::string &kernel,
                       const What &what) {
    int64_t weightBytes = std::exchange(launchWeightBytes, -1);
    if (!launched.ok())
      return launched;
    ++(capturing ? launchesCaptured : launchesRun);
    if (logLaunches)
      std::fprintf(stderr, "kiln: launch %s%s%s\n", what().c_str(),
                   capturing ? " (captured)" : "",
                   onExpertStream ? " (expert stream)" : "");
    if (profiling && !capturing)
      return profiler->mark(stream, kernel, weightBytes);
    return launched;
  }
  /// Profiling: holds the stream (kiln_hold) while the host queues what
  /// follows, and marks the hold's end as nobody's time.
  absl::Status holdForProfile();
  /// Profiling, before the host waits for the stream: how long it took to
  /// queue the launches since the hold, which sizes the next hold.
  void queuedForProfile();
  void *pinned = nullptr;

  // The step being launched.
  StepShape shape;

  ~Impl();
  const DriverApi &api() const { return driver->api(); }
  absl::Status check(CUresult r, const std::string &what) const {
    return driver->check(r, what);
  }
  absl::StatusOr<CUdeviceptr> allocate(size_t bytes, const std::string &what);
  absl::StatusOr<CUfunction> function(const std::string &name);
  /// Unimplemented, naming the launch, for what the library kernels do not
  /// take (so that `auto` falls back to the CPU before any upload).
  absl::Status checkSupported() const;
  absl::Status loadModules(bool requireGpuCode);
  absl::Status uploadParameters();
  absl::Status allocateState();

  CUdeviceptr resolve(const artifact::TensorRef *ref) const;
  int64_t of(const artifact::Dim &d) const;
  int64_t numel(const artifact::TensorRef *ref) const;
  /// Tokens of a per-token reference: the product of its symbolic dims.
  int64_t tokens(const artifact::TensorRef *ref) const;

  template <class Params>
  absl::Status launch(const std::string &name, Dim3 grid,
                      const Params &params) {
    absl::StatusOr<CUfunction> f = function(name);
    if (!f.ok())
      return f.status();
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) {
      launchWeightBytes = -1; // nothing launched
      return absl::OkStatus();
    }
    void *args[] = {const_cast<Params *>(&params)};
    return launchKernel(*f, grid, kLibraryThreads, args, name);
  }
  static constexpr unsigned kLibraryThreads = KILN_BLOCK_THREADS;
  /// Launches f on the stream, with programmatic stream serialization when
  /// programmaticLaunch is set.
  absl::Status launchKernel(CUfunction f, Dim3 grid, unsigned threads,
                            void **args, const std::string &name);

  absl::Status launchFused(const artifact::FusedLaunch &group);
  absl::Status launchLibrary(const artifact::Launch &launch);
  absl::Status launchAttention(const artifact::Launch &launch);
  absl::Status launchGemm(const artifact::Launch &launch);
  /// A LinearGroup: one grouped GEMV (gated or plain) where the GEMV would
  /// take every member (and FP8 activations to quantize are one input),
  /// else the members one by one.
  absl::Status launchLinearGroup(const artifact::EntryPoint &entry,
                                 const artifact::LinearGroup &group);
  /// kiln.gated_linear: one gated GEMV where the GEMV would take both
  /// projections, else the two GEMMs (up into upProjections) and SwiGLU.
  absl::Status launchGated(const artifact::Launch &launch);
  absl::Status runLaunches(const artifact::EntryPoint &entry);
  /// Whether every launch of `entry` has the same arguments for all steps
  /// of one batch size (no KvLen-shaped arena tensors), so that it can be
  /// captured once and replayed.
  static bool graphable(const artifact::EntryPoint &entry);
  /// The entry points graphable() takes, found at creation: a step only
  /// looks its own up.
  std::set<const artifact::EntryPoint *> graphableEntries;
  /// A GEMM cuBLASLt may take: bf16 weights, no bias (rows decide at run
  /// time).
  static bool blasGemm(const artifact::Launch &l) {
    bool dense = l.kernel() == artifact::KernelKind::Logits ||
                 (l.kernel() == artifact::KernelKind::Linear &&
                  l.ints()->Get(0) == 0 && l.ints()->size() == 1);
    return dense && l.args()->Get(1)->type() == artifact::ElementType::BF16;
  }
  /// Where a GEMM launch's FP8 block attributes start among its ints
  /// (after Linear's bias flag, GatedLinear's grouped flag and
  /// HeadLinear's input offset).
  static unsigned fp8IntsAt(const artifact::Launch &l) {
    return l.kernel() == artifact::KernelKind::Linear ||
                   l.kernel() == artifact::KernelKind::GatedLinear ||
                   l.kernel() == artifact::KernelKind::HeadLinear
               ? 1
               : 0;
  }
  /// An FP8 GEMM: ints end with [block rows, block cols, ue8m0].
  static bool fp8Gemm(const artifact::Launch &l) {
    bool gemm = l.kernel() == artifact::KernelKind::Linear ||
                l.kernel() == artifact::KernelKind::GroupedLinear ||
                l.kernel() == artifact::KernelKind::HeadLinear ||
                l.kernel() == artifact::KernelKind::GatedLinear;
    return gemm && l.ints() && l.ints()->size() == fp8IntsAt(l) + 3;
  }
  int64_t contextBucket(int64_t kvLen) const;

  /// One GEMM launch decoded: the library kernel's parameters and what
  /// picks its path (cuBLASLt or the library kernels).
  struct GemmCall {
    GemmParams p{};
    int64_t matrices = 1;
    artifact::ElementType weightType = artifact::ElementType::F32;
    bool fp8 = false;       // e4m3 weights with block scales
    bool quantized = false; // x given as e4m3 codes (p.xCodes, p.xScale)
    int pow2 = 0;           // FP8 activation scales rounded to powers of two
    bool dense = false;     // one matrix, no bias: cuBLASLt may take it
    CUdeviceptr bf16X = 0;  // x already converted to bf16 (expert slices)
  };
  /// A GEMM launch (Linear, Logits, HeadLinear, GroupedLinear) decoded.
  GemmCall gemmCall(const artifact::Launch &launch) const;
  /// The weight bytes `c` reads (both projections of a gated call, FP8
  /// scales left out); -1 for a grouped GEMM, whose experts with rows only
  /// the device knows. In selection order each selection reads its
  /// expert's matrix.
  static int64_t weightBytesRead(const GemmCall &c) {
    if (c.p.offsets)
      return -1;
    int64_t matrices = c.p.selections ? c.p.rows : c.matrices;
    return matrices * c.p.n * c.p.k *
           static_cast<int64_t>(artifact::elementBytes(c.weightType)) *
           (c.p.wUp ? 2 : 1);
  }
  /// Moves the output head's input rows `logitRows` to the front of its
  /// buffer (in increasing order, so that no row is overwritten before it
  /// moves) and narrows `c` to them: the logits of row i are those of the
  /// step's row logitRows[i].
  absl::Status headOverRows(GemmCall &c);
  /// A GatedLinear launch decoded (p.wUp set).
  GemmCall gatedCall(const artifact::Launch &launch) const;
  /// `c`, launch `l`'s (a grouped GEMM of the last dispatch's rows), in
  /// selection order.
  void selectionOrder(GemmCall &c, const artifact::Launch &l) const;
  /// Runs `c` on cuBLASLt, the tensor cores or the GEMV; a gated call
  /// (p.wUp) on the gated tensor-core GEMM or the gated GEMV.
  absl::Status runGemm(GemmCall c);
  /// Whether cuBLASLt runs `c` on bf16 weights, reading its rows as bf16
  /// (c.bf16X, or a conversion runGemm launches): the operands suit it and
  /// it has an algorithm for the shape (asked before anything is converted,
  /// so a decline inside a captured step leaves no conversion behind).
  absl::StatusOr<bool> blasBf16Takes(const GemmCall &c);
  /// `count` f32 values converted into bf16Activations.
  absl::StatusOr<CUdeviceptr> toBf16(const float *x, int64_t count);
  /// When every one of `calls` is a cuBLASLt bf16 GEMM of the same rows,
  /// converts them once for all (their bf16X); otherwise each converts its
  /// own, as no other conversion may come between.
  absl::Status convertSharedRows(std::span<GemmCall> calls);
  /// An FP8 GEMM's f32 activations quantized per row of k (per head for
  /// head GEMMs) into fp8Codes and fp8Scales, which `c` then reads.
  absl::Status quantizeRows(GemmCall &c);
  /// runGemm, or one GEMM per expert (runExperts) where that pays.
  absl::Status dispatchGemm(const GemmCall &c);
  /// Weights cuBLASLt has kernels for (bf16, or FP8 of its block shapes).
  bool blasWeights(const GemmCall &c) const;
  /// Whether a grouped GEMM runs one GEMM per expert (runExperts).
  bool perExpert(const GemmCall &c) const;
  /// Whether a dense GEMM has the rows and weights cuBLASLt takes.
  bool blasDense(const GemmCall &c) const;
  /// Whether runGemm would give `c` to a library kernel (the GEMV or the
  /// tensor-core GEMM), not to cuBLASLt: a linear group's members may then
  /// share one launch.
  bool libraryKernelsTake(const GemmCall &c) const;
  /// Whether the tensor-core GEMM takes `c` (after cuBLASLt declined it).
  bool mmaTakes(const GemmCall &c) const;
  /// An FP8 GEMM whose shape and scale blocks cuBLASLt's block-scaled
  /// kernels take (operand alignment is checked where it is known).
  static bool blasFp8Shape(const GemmCall &c) {
    return c.fp8 && c.p.blockRows == 128 && c.p.blockCols == 128 &&
           BlasLt::fp8Shape(c.p.n, c.p.k);
  }
  /// cuBLASLt's block-scaled FP8 GEMM: activations quantized (or their
  /// scales rewritten) into its layout first.
  absl::Status blasFp8(const GemmCall &c);
  /// Grouped GEMMs of one input (one, or a gated FFN's two projections)
  /// outside graph capture: the expert offsets read back, then each expert
  /// with rows runs its GEMMs (cuBLASLt where it takes them), bf16 experts
  /// side by side on the expert streams.
  absl::Status runExperts(std::span<const GemmCall> calls);
  /// Whether the experts' rows (read back once per dispatch, into
  /// expertOffsets) are too few for a GEMM per expert to pay (Auto): then
  /// one grouped launch takes them.
  absl::StatusOr<bool> fewRowsPerExpert(const GemmParams &p);
  /// The expert streams, their events and workspaces: all, or none.
  absl::Status makeExpertStreams();
  /// Destroys the expert streams and their events (not the workspaces,
  /// which are allocations).
  void releaseExpertStreams();
  /// Makes the expert streams (once) and lets them start after the work
  /// queued on `stream` so far.
  absl::Status forkExpertStreams();
  /// Makes `stream`'s later work wait for the expert streams'.
  absl::Status joinExpertStreams();
};

} // namespace kiln::cuda

#endif // KILN_RUNTIME_CUDA_CUDAEXECUTORIMPL_H
