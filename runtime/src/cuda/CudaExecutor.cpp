#include "runtime/src/cuda/CudaExecutor.h"

#include "LaunchAttributes.h"
#include "LogitRows.h"
#include "cpu/Kernels.h"
#include "runtime/src/cuda/CublasLt.h"
#include "runtime/src/cuda/CudaDriver.h"
#include "runtime/src/cuda/EmulatedBlasLt.h"
#include "runtime/src/cuda/EmulatedDriver.h"
#include "runtime/src/cuda/KernelProfiler.h"
#include "runtime/src/cuda/LibraryFatbin.h"

// The library kernels' parameter structs and grids (the host never runs
// their bodies here).
#include "runtime/kernels/GemmGroup.h"
#include "runtime/kernels/KvAttention.h"
#include "runtime/kernels/Library.h"
#include "runtime/kernels/Matmul.h"
#include "runtime/kernels/MmaAttention.h"
#include "runtime/kernels/MmaGemm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

namespace kiln::cuda {
namespace {

namespace art = artifact;

/// Device memory freed with the executor.
struct DeviceBuffer {
  CUdeviceptr ptr = 0;
  size_t bytes = 0;
};

int64_t lastDim(const art::TensorRef *ref) {
  return ref->shape()->Get(ref->shape()->size() - 1)->size();
}

int64_t staticDim(const art::TensorRef *ref, unsigned i) {
  return ref->shape()->Get(i)->size();
}

/// The graph of a decode step: per batch size and context bucket (the
/// attention kernels' split count depends on it).
struct GraphKey {
  int64_t batch, bucket;
  bool operator<(const GraphKey &o) const {
    return batch != o.batch ? batch < o.batch : bucket < o.bucket;
  }
};

} // namespace

struct Executor::Impl {
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
  std::map<const art::Launch *, std::set<const art::Launch *>> routedReaders;
  /// The last dispatch's, while its grouped GEMMs run in selection order.
  struct Selections {
    const int32_t *experts = nullptr; // [tokens, topK]
    const float *x = nullptr;         // the tokens' rows
    /// The GEMMs that read the routed rows: they read x instead. The
    /// others read earlier GEMMs' rows, already in selection order.
    const std::set<const art::Launch *> *readers = nullptr;
    int32_t *selectionRows = nullptr;
    int topK = 0;
    int64_t rows = 0;
  } selections;
  size_t attentionScratchFloats = 0;
  // Rope inverse frequencies per rope launch, uploaded at creation.
  std::map<const art::Launch *, CUdeviceptr> ropeTables;
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
  std::map<const art::EntryPoint *, double> longestQueueSeconds;
  /// The entry point the step runs: its profiled holds' times, and whether
  /// an attention launch reads the step's own positions and lengths.
  const art::EntryPoint *runningEntry = nullptr;
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

  CUdeviceptr resolve(const art::TensorRef *ref) const;
  int64_t of(const art::Dim &d) const;
  int64_t numel(const art::TensorRef *ref) const;
  /// Tokens of a per-token reference: the product of its symbolic dims.
  int64_t tokens(const art::TensorRef *ref) const;

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

  absl::Status launchFused(const art::FusedLaunch &group);
  absl::Status launchLibrary(const art::Launch &launch);
  absl::Status launchAttention(const art::Launch &launch);
  absl::Status launchGemm(const art::Launch &launch);
  /// A LinearGroup: one grouped GEMV (gated or plain) where the GEMV would
  /// take every member (and FP8 activations to quantize are one input),
  /// else the members one by one.
  absl::Status launchLinearGroup(const art::EntryPoint &entry,
                                 const art::LinearGroup &group);
  /// kiln.gated_linear: one gated GEMV where the GEMV would take both
  /// projections, else the two GEMMs (up into upProjections) and SwiGLU.
  absl::Status launchGated(const art::Launch &launch);
  absl::Status runLaunches(const art::EntryPoint &entry);
  /// Whether every launch of `entry` has the same arguments for all steps
  /// of one batch size (no KvLen-shaped arena tensors), so that it can be
  /// captured once and replayed.
  bool graphable(const art::EntryPoint &entry) const;
  /// A GEMM cuBLASLt may take: bf16 weights, no bias (rows decide at run
  /// time).
  static bool blasGemm(const art::Launch &l) {
    bool dense = l.kernel() == art::KernelKind::Logits ||
                 (l.kernel() == art::KernelKind::Linear &&
                  l.ints()->Get(0) == 0 && l.ints()->size() == 1);
    return dense && l.args()->Get(1)->type() == art::ElementType::BF16;
  }
  /// Where a GEMM launch's FP8 block attributes start among its ints
  /// (after Linear's bias flag, GatedLinear's grouped flag and
  /// HeadLinear's input offset).
  static unsigned fp8IntsAt(const art::Launch &l) {
    return l.kernel() == art::KernelKind::Linear ||
                   l.kernel() == art::KernelKind::GatedLinear ||
                   l.kernel() == art::KernelKind::HeadLinear
               ? 1
               : 0;
  }
  /// An FP8 GEMM: ints end with [block rows, block cols, ue8m0].
  static bool fp8Gemm(const art::Launch &l) {
    bool gemm = l.kernel() == art::KernelKind::Linear ||
                l.kernel() == art::KernelKind::GroupedLinear ||
                l.kernel() == art::KernelKind::HeadLinear ||
                l.kernel() == art::KernelKind::GatedLinear;
    return gemm && l.ints() && l.ints()->size() == fp8IntsAt(l) + 3;
  }
  int64_t contextBucket(int64_t kvLen) const;

  /// One GEMM launch decoded: the library kernel's parameters and what
  /// picks its path (cuBLASLt or the library kernels).
  struct GemmCall {
    GemmParams p{};
    int64_t matrices = 1;
    art::ElementType weightType = art::ElementType::F32;
    bool fp8 = false;       // e4m3 weights with block scales
    bool quantized = false; // x given as e4m3 codes (p.xCodes, p.xScale)
    int pow2 = 0;           // FP8 activation scales rounded to powers of two
    bool dense = false;     // one matrix, no bias: cuBLASLt may take it
    CUdeviceptr bf16X = 0;  // x already converted to bf16 (expert slices)
  };
  /// A GEMM launch (Linear, Logits, HeadLinear, GroupedLinear) decoded.
  GemmCall gemmCall(const art::Launch &launch) const;
  /// The weight bytes `c` reads (both projections of a gated call, FP8
  /// scales left out); -1 for a grouped GEMM, whose experts with rows only
  /// the device knows. In selection order each selection reads its
  /// expert's matrix.
  static int64_t weightBytesRead(const GemmCall &c) {
    if (c.p.offsets)
      return -1;
    int64_t matrices = c.p.selections ? c.p.rows : c.matrices;
    return matrices * c.p.n * c.p.k *
           static_cast<int64_t>(art::elementBytes(c.weightType)) *
           (c.p.wUp ? 2 : 1);
  }
  /// Moves the output head's input rows `logitRows` to the front of its
  /// buffer (in increasing order, so that no row is overwritten before it
  /// moves) and narrows `c` to them: the logits of row i are those of the
  /// step's row logitRows[i].
  absl::Status headOverRows(GemmCall &c);
  /// A GatedLinear launch decoded (p.wUp set).
  GemmCall gatedCall(const art::Launch &launch) const;
  /// `c`, launch `l`'s (a grouped GEMM of the last dispatch's rows), in
  /// selection order.
  void selectionOrder(GemmCall &c, const art::Launch &l) const;
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

bool Executor::Impl::graphable(const art::EntryPoint &entry) const {
  for (const art::Launch *l : *entry.launches())
    if (l->kernel() == art::KernelKind::KvGather)
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
  for (const art::EntryPoint *e : *model.plan->entry_points())
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

  bool graph = shape.seq == 1 && s.decodeGraphs && s.graphable(*entry);
  // A graph replays its head over every row; elsewhere the head (the
  // entry's last launch, PlanVerifier checks) computes `rows` alone.
  bool headOverRows = rows && !graph;
  s.logitRows = headOverRows ? rows : nullptr;
  if (graph && !s.profiling) {
    // The graph's kernels read every per-step value from device memory;
    // its launches depend only on the batch size and the context bucket.
    GraphKey key{shape.batch, s.contextBucket(shape.kvLen)};
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
