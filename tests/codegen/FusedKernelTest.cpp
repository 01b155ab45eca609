// Generated fused kernels (codegen/FusedKernelEmitter.cpp) against the
// reference CPU kernels: every kiln.fused group of the tiny models (presets
// and the golden checkpoints, through import and the default optimize
// pipeline) and a few hand-written groups covering what those lack (SwiGLU,
// f16/f32 weights, llama3 and plain rotate_half RoPE, softmax routers). The
// host build of each source is compiled with the host C++ compiler into a
// shared object, loaded and run on random inputs; the group's member ops run
// one by one with kiln::cpu. The same sources compile with NVRTC for
// sm_90a when NVRTC is there.
#include "codegen/FusedKernelEmitter.h"
#include "codegen/Nvrtc.h"
#include "ir/KilnDialect.h"
#include "kiln/Float.h"
#include "models/Import.h"
#include "passes/Pipeline.h"
#include "runtime/src/cpu/Kernels.h"
#include "runtime/src/cpu/PagedPacked.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/ADT/DenseMap.h"
#include "gtest/gtest.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <unistd.h>

namespace {

using namespace mlir;
using namespace mlir::kiln;
namespace cpu = ::kiln::cpu;
namespace fs = std::filesystem;
using ::kiln::codegen::FusedKernel;
using ::kiln::codegen::KernelElement;

/// Tokens per run; positions cover the start, YaRN's and llama3's scaled
/// ranges, and padding (-1, which copies the row).
constexpr int64_t kTokens = 5;
constexpr int32_t kPositions[kTokens] = {0, 7, 100, 4097, -1};
constexpr double kUnit = 0x1p-24; // fp32 unit roundoff

int64_t perToken(Value value) {
  auto type = cast<RankedTensorType>(value.getType());
  int64_t n = 1;
  for (int64_t d : type.getShape().drop_front(leadingDynamicDims(type)))
    n *= d;
  return n;
}

int64_t lastDim(Value value) {
  return cast<RankedTensorType>(value.getType()).getShape().back();
}

cpu::ElementType cpuElement(KernelElement element) {
  switch (element) {
  case KernelElement::F32:
    return cpu::ElementType::F32;
  case KernelElement::BF16:
    return cpu::ElementType::BF16;
  case KernelElement::F16:
    return cpu::ElementType::F16;
  case KernelElement::I32:
    return cpu::ElementType::I32;
  case KernelElement::F8E4M3:
    return cpu::ElementType::F8E4M3;
  }
  return cpu::ElementType::F32;
}

/// One kernel argument's memory: tokens * elements (per token) or elements.
struct Buffer {
  KernelElement element = KernelElement::F32;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<int32_t> i32;
  std::vector<uint8_t> u8;
  void *data() {
    switch (element) {
    case KernelElement::F8E4M3:
      return u8.data();
    case KernelElement::F32:
      return f32.data();
    case KernelElement::BF16:
    case KernelElement::F16:
      return half.data();
    case KernelElement::I32:
      return i32.data();
    }
    return nullptr;
  }
};

/// What an input's integers index, or how many rows it has.
struct InputRange {
  /// > 0: token ids of an embedding table of that many rows.
  int64_t vocab = 0;
  /// > 0: a kiln.moe_combine's selection rows (a permutation of that many
  /// routed rows), or the number of rows of its indexed expert outputs.
  int64_t routedRows = 0;
};

Buffer randomBuffer(const ::kiln::codegen::KernelArg &arg, std::mt19937 &rng,
                    InputRange range) {
  Buffer b;
  b.element = arg.element;
  int64_t n = arg.perToken      ? kTokens * arg.elements
              : arg.indexedRows ? range.routedRows * arg.elements
                                : arg.elements;
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  switch (arg.element) {
  case KernelElement::F8E4M3: // only results (the emitter rejects inputs)
    break;
  case KernelElement::F32:
    b.f32.resize(n);
    for (float &v : b.f32)
      v = uniform(rng);
    break;
  case KernelElement::BF16:
  case KernelElement::F16:
    b.half.resize(n);
    for (uint16_t &v : b.half)
      v = arg.element == KernelElement::BF16 ? ::kiln::floatToBf16(uniform(rng))
                                             : ::kiln::floatToF16(uniform(rng));
    break;
  case KernelElement::I32:
    // The per-token integers a group reads: token ids, selection rows, or
    // positions.
    b.i32.resize(n);
    if (range.routedRows > 0) {
      std::iota(b.i32.begin(), b.i32.end(), 0);
      std::shuffle(b.i32.begin(), b.i32.end(), rng);
      break;
    }
    for (int64_t i = 0; i < n; ++i)
      b.i32[i] = range.vocab > 0
                     ? static_cast<int32_t>((i * 37 + 3) % range.vocab)
                     : kPositions[i % kTokens];
    break;
  }
  return b;
}

Buffer resultBuffer(const ::kiln::codegen::KernelArg &arg) {
  Buffer b;
  b.element = arg.element;
  if (arg.element == KernelElement::I32)
    b.i32.assign(kTokens * arg.elements, -7);
  else if (arg.element == KernelElement::F8E4M3)
    b.u8.assign(kTokens * arg.elements, 0x7f); // NaN
  else
    b.f32.assign(kTokens * arg.elements,
                 std::numeric_limits<float>::quiet_NaN());
  return b;
}

/// The paged cache a group's kv_appends store into: each token its own
/// sequence (batch kTokens, seq 1) whose table maps block k to block
/// (b + k) % kCacheBlocks, so the tokens of kPositions land in distinct
/// rows of a small pool.
constexpr int64_t kCacheBlockTokens = 64;
constexpr int64_t kCacheBlocks = 8;
constexpr int64_t kTableStride = 4097 / kCacheBlockTokens + 1;

std::vector<int32_t> cacheTables() {
  std::vector<int32_t> tables(kTokens * kTableStride);
  for (int64_t b = 0; b < kTokens; ++b)
    for (int64_t k = 0; k < kTableStride; ++k)
      tables[b * kTableStride + k] =
          static_cast<int32_t>((b + k) % kCacheBlocks);
  return tables;
}

/// A value of the reference run: kTokens rows, or a weight.
struct RefValue {
  std::vector<float> f32;
  std::vector<int32_t> i32;
  cpu::Weight weight;
};

/// Runs `fused`'s members one by one with the reference CPU kernels and
/// returns the values it yields; its kv_appends store into `caches` (one
/// per append, in order, the slots' bytes, 0xff where no row went) through
/// cacheTables().
std::vector<RefValue> runReference(FusedOp fused, std::vector<Buffer> &inputs,
                                   const FusedKernel &kernel,
                                   std::vector<std::vector<uint8_t>> &caches) {
  Block &body = fused.getBody().front();
  llvm::DenseMap<Value, RefValue> values;
  for (auto [i, arg] : llvm::enumerate(body.getArguments())) {
    RefValue v;
    const auto &info = kernel.args[i];
    if ((info.perToken || info.indexedRows) &&
        info.element == KernelElement::F32)
      v.f32 = inputs[i].f32;
    else if (info.perToken)
      v.i32 = inputs[i].i32;
    else
      v.weight = {inputs[i].data(), cpuElement(info.element)};
    values[arg] = std::move(v);
  }
  auto f = [&](Value v) -> std::vector<float> & { return values[v].f32; };
  auto rows = [](Value v) { return kTokens * perToken(v) / lastDim(v); };
  for (Operation &op : body.without_terminator()) {
    for (Value r : op.getResults()) {
      values[r].f32.assign(kTokens * perToken(r), 0.0f);
      values[r].i32.assign(kTokens * perToken(r), 0);
    }
    if (auto embedding = dyn_cast<EmbeddingOp>(op)) {
      cpu::embedding(values[embedding.getTokens()].i32.data(), kTokens,
                     values[embedding.getTable()].weight,
                     lastDim(embedding.getResult()),
                     f(embedding.getResult()).data());
    } else if (auto combine = dyn_cast<MoECombineOp>(op)) {
      cpu::moeCombine(
          f(combine.getExpertOutputs()).data(), f(combine.getWeights()).data(),
          values[combine.getSelectionRows()].i32.data(), kTokens,
          lastDim(combine.getWeights()), lastDim(combine.getResult()),
          f(combine.getResult()).data());
    } else if (auto add = dyn_cast<AddOp>(op)) {
      cpu::add(f(add.getLhs()).data(), f(add.getRhs()).data(),
               kTokens * perToken(add.getResult()), f(add.getResult()).data());
    } else if (auto swiglu = dyn_cast<SwiGLUOp>(op)) {
      cpu::swiglu(f(swiglu.getGate()).data(), f(swiglu.getUp()).data(),
                  kTokens * perToken(swiglu.getResult()),
                  f(swiglu.getResult()).data());
    } else if (auto norm = dyn_cast<RMSNormOp>(op)) {
      cpu::rmsNorm(f(norm.getInput()).data(), rows(norm.getInput()),
                   lastDim(norm.getInput()), values[norm.getWeight()].weight,
                   static_cast<float>(norm.getEpsilon().convertToDouble()),
                   f(norm.getResult()).data());
    } else if (auto slice = dyn_cast<SliceOp>(op)) {
      cpu::slice(f(slice.getInput()).data(), rows(slice.getInput()),
                 lastDim(slice.getInput()), slice.getOffset(), slice.getSize(),
                 f(slice.getResult()).data());
    } else if (auto concat = dyn_cast<ConcatOp>(op)) {
      std::vector<const float *> parts;
      std::vector<int64_t> dims;
      for (Value input : concat.getInputs()) {
        parts.push_back(f(input).data());
        dims.push_back(lastDim(input));
      }
      cpu::concat(parts.data(), dims.data(), static_cast<int64_t>(parts.size()),
                  rows(concat.getResult()), f(concat.getResult()).data());
    } else if (auto broadcast = dyn_cast<BroadcastOp>(op)) {
      auto from = cast<RankedTensorType>(broadcast.getInput().getType());
      auto to = cast<RankedTensorType>(broadcast.getResult().getType());
      int64_t outer = kTokens, repeat = 1, inner = 1;
      bool seen = false;
      for (size_t d = leadingDynamicDims(to); d < size_t(to.getRank()); ++d) {
        bool grows = from.getDimSize(d) != to.getDimSize(d);
        (grows ? repeat : seen ? inner : outer) *= to.getDimSize(d);
        seen |= grows;
      }
      cpu::broadcast(f(broadcast.getInput()).data(), outer, repeat, inner,
                     f(broadcast.getResult()).data());
    } else if (auto rope = dyn_cast<RopeOp>(op)) {
      int64_t dim = lastDim(rope.getInput());
      cpu::rope(f(rope.getInput()).data(),
                values[rope.getPositions()].i32.data(), kTokens,
                perToken(rope.getInput()) / dim, dim,
                ::kiln::codegen::ropeParams(rope.getRope()),
                f(rope.getResult()).data());
    } else if (auto gate = dyn_cast<MoEGateOp>(op)) {
      auto w = cast<RankedTensorType>(gate.getWeight().getType());
      int64_t experts = w.getDimSize(0), dim = w.getDimSize(1);
      cpu::MoeGateParams p;
      p.scoring = gate.getScoringFunc() == ScoringFunc::softmax
                      ? cpu::ScoringFunc::Softmax
                      : cpu::ScoringFunc::Sigmoid;
      p.method = gate.getTopkMethod() == TopkMethod::greedy
                     ? cpu::TopkMethod::Greedy
                 : gate.getTopkMethod() == TopkMethod::group_limited_greedy
                     ? cpu::TopkMethod::GroupLimitedGreedy
                     : cpu::TopkMethod::NoauxTc;
      p.topK = gate.getTopK();
      p.nGroup = gate.getNGroup();
      p.topkGroup = gate.getTopkGroup();
      p.normTopkProb = gate.getNormTopkProb();
      p.routedScalingFactor = gate.getRoutedScalingFactor().convertToDouble();
      std::vector<float> logits(kTokens * experts);
      cpu::moeGate(f(gate.getInput()).data(), kTokens, dim,
                   values[gate.getWeight()].weight, experts,
                   gate.getCorrectionBias()
                       ? values[gate.getCorrectionBias()].weight
                       : cpu::Weight{},
                   p, f(gate.getWeights()).data(),
                   values[gate.getIndices()].i32.data(), logits.data());
    } else if (auto quantize = dyn_cast<QuantizeFp8Op>(op)) {
      // Codes compared as the values they stand for.
      std::vector<uint8_t> codes(kTokens * perToken(quantize.getCodes()));
      cpu::quantizeFp8(f(quantize.getInput()).data(), rows(quantize.getInput()),
                       lastDim(quantize.getInput()), quantize.getBlockCols(),
                       quantize.getUe8m0(), codes.data(),
                       f(quantize.getScales()).data());
      std::vector<float> &decoded = f(quantize.getCodes());
      for (size_t i = 0; i < codes.size(); ++i)
        decoded[i] = ::kiln::e4m3ToFloat(codes[i]);
    } else if (auto reshape = dyn_cast<ReshapeOp>(op)) {
      values[reshape.getResult()] = values[reshape.getInput()];
    } else if (auto append = dyn_cast<KVAppendOp>(op)) {
      std::vector<int32_t> tables = cacheTables();
      auto slot = SymbolTable::lookupNearestSymbolFrom<KVCacheOp>(
          fused, append.getCacheAttr());
      int64_t n = perToken(append.getValue());
      std::vector<uint8_t> &cache = caches.emplace_back(
          kCacheBlocks * kCacheBlockTokens * slot.getStoredBytesPerToken(),
          0xff);
      const int32_t *positions = values[append.getPositions()].i32.data();
      if (PackedCacheAttr fp8 = slot.getStorageAttr())
        cpu::kvAppendPagedPacked(
            f(append.getValue()).data(), positions, kTokens, 1,
            {fp8.getFp8Columns(), n - fp8.getFp8Columns()},
            reinterpret_cast<std::byte *>(cache.data()), tables.data(),
            kTableStride, kCacheBlockTokens);
      else
        cpu::kvAppendPaged(f(append.getValue()).data(), positions, kTokens, 1,
                           n, reinterpret_cast<float *>(cache.data()),
                           tables.data(), kTableStride, kCacheBlockTokens);
    } else {
      ADD_FAILURE() << "no reference for " << op.getName().getStringRef().str();
    }
  }
  std::vector<RefValue> results;
  for (Value v : body.getTerminator()->getOperands())
    results.push_back(values[v]);
  return results;
}

/// How far the fused kernel may be from the reference, per element: the
/// only differences are the order of fp32 sums. A sum of n terms has an
/// error of at most (n - 1) u sum|terms| in any order, so two orders
/// differ by at most 2 (n - 1) u sum|terms|.
///  - rms_norm: the sum of squares (nonnegative) differs relatively by
///    2 (n - 1) u; the rsqrt halves that and adds a few roundings (div,
///    add, sqrt, reciprocal, the two products: 6 u), so outputs differ by
///    ((n - 1) + 6) u relatively.
///  - moe_gate logits differ by 2 (d - 1) u sum_i |x_i w_i| plus what the
///    normed input carries; scores are 1-Lipschitz in the logits (sigmoid
///    1/4, softmax 1/2), renormalized weights at most doubled by dividing
///    by their sum (near 1 for softmax, >= top_k sigmoid(-|l|) otherwise;
///    bounded below by the data), then scaled by routed_scaling_factor.
/// Values computed only by exact ops (add, copies, RoPE's products of the
/// same fp32 operands) must be equal.
struct Bound {
  double relative = 0; // of |reference|
  double absolute = 0;
};

Bound bound(FusedOp fused, Value yielded) {
  Block &body = fused.getBody().front();
  Bound b;
  int64_t normDim = 0;
  body.walk([&](RMSNormOp norm) {
    normDim = std::max(normDim, lastDim(norm.getInput()));
  });
  if (normDim)
    b.relative = (normDim - 1 + 6) * kUnit;
  if (auto gate = yielded.getDefiningOp<MoEGateOp>()) {
    // sum_i |x_i w_ei| <= d max|x| max|w|; inputs are within [-2, 2] and
    // normed rows within sqrt(d) max|weight|, so take a generous magnitude:
    // sum |x_i w_ei| <= d * 4 * sqrt(d) * 4.
    int64_t d =
        cast<RankedTensorType>(gate.getWeight().getType()).getDimSize(1);
    double magnitude = static_cast<double>(d) * 16.0 * std::sqrt(double(d));
    double logit = (2.0 * (d - 1) + normDim + 6) * kUnit * magnitude;
    b.absolute = 2.0 * logit * gate.getRoutedScalingFactor().convertToDouble();
  }
  return b;
}

/// Row `r` of a cache slot's bytes as the values it holds: f32, or an FP8
/// row's codes times their group's scale and its bf16 tail.
std::vector<float> cacheRow(const uint8_t *bytes, int64_t r, KVCacheOp slot) {
  int64_t rowBytes = slot.getStoredBytesPerToken();
  int64_t n = slot.getEntryTensorType().getNumElements();
  const uint8_t *row = bytes + r * rowBytes;
  std::vector<float> values(n);
  PackedCacheAttr fp8 = slot.getStorageAttr();
  if (!fp8) {
    std::memcpy(values.data(), row, 4 * n);
    return values;
  }
  cpu::PackedRowLayout l{fp8.getFp8Columns(), n - fp8.getFp8Columns()};
  for (int64_t c = 0; c < n; ++c) {
    float scale, value;
    uint16_t tail;
    if (c < l.quantColumns) {
      std::memcpy(&scale, row + l.scaleOffset() + 4 * (c / l.kGroup), 4);
      value = ::kiln::e4m3ToFloat(row[c]) * scale;
    } else {
      std::memcpy(&tail, row + l.bf16Offset() + 2 * (c - l.quantColumns), 2);
      value = ::kiln::bf16ToFloat(tail);
    }
    values[c] = value;
  }
  return values;
}

/// The rows a kernel stored against the reference's: a row no token went
/// to untouched (every byte 0xff) in both; the others' values within `b`
/// (for an FP8 slot, plus a code step: an input off by the bound may round
/// to the neighbouring code, or its bf16 to the neighbouring value).
void expectSameCacheRows(const uint8_t *got, const std::vector<uint8_t> &want,
                         KVCacheOp slot, Bound b, double &maxError,
                         const std::string &what) {
  int64_t rowBytes = slot.getStoredBytesPerToken();
  if (slot.getStorage()) {
    b.relative += 0x1p-3;
    b.absolute += 0x1p-9;
  }
  for (int64_t r = 0; r < kCacheBlocks * kCacheBlockTokens; ++r) {
    const uint8_t *wantRow = want.data() + r * rowBytes;
    if (std::all_of(wantRow, wantRow + rowBytes,
                    [](uint8_t byte) { return byte == 0xff; })) {
      ASSERT_EQ(std::memcmp(got + r * rowBytes, wantRow, rowBytes), 0)
          << what << ": row " << r << " written, but no token goes there";
      continue;
    }
    std::vector<float> values = cacheRow(got, r, slot),
                       reference = cacheRow(want.data(), r, slot);
    for (size_t c = 0; c < values.size(); ++c) {
      double error = std::abs(double{values[c]} - reference[c]);
      maxError = std::max(maxError, error);
      ASSERT_LE(error, b.relative * std::abs(reference[c]) + b.absolute)
          << what << ": row " << r << " column " << c << ": " << values[c]
          << " vs reference " << reference[c];
    }
  }
}

struct GroupReport {
  int groups = 0;
  int cacheWrites = 0; // kv_appends the groups did
  double maxError = 0;
};

/// Emits every group of `module`, builds the host code, runs and compares.
/// simt: the host build with CUDA's threads (KILN_HOST_SIMT, HostSimt.h),
/// so that the kernels' split over threads and warps, shared memory,
/// barriers and shuffles run too.
void checkGroups(ModuleOp module, const std::string &label, GroupReport &report,
                 bool simt = false) {
  std::vector<FusedOp> groups;
  std::vector<FusedKernel> kernels;
  module.walk([&](FusedOp fused) {
    FailureOr<FusedKernel> kernel = ::kiln::codegen::emitFusedKernel(fused);
    ASSERT_TRUE(succeeded(kernel)) << fused.getName().str();
    groups.push_back(fused);
    kernels.push_back(std::move(*kernel));
  });
  ASSERT_FALSE(groups.empty()) << label;

  fs::path dir = fs::path(::testing::TempDir()) /
                 ("kiln-fused-" + label + (simt ? "-simt-" : "-") +
                  std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / ::kiln::codegen::kFusedPreludeName)
      << ::kiln::codegen::fusedPreludeSource();
  if (simt)
    fs::copy_file(fs::path(KILN_PROJECT_SOURCE_DIR) /
                      "runtime/kernels/HostSimt.h",
                  dir / "HostSimt.h", fs::copy_options::overwrite_existing);
  {
    std::ofstream all(dir / "all.cpp");
    for (const FusedKernel &k : kernels) {
      std::ofstream(dir / (k.name + ".cpp")) << k.source;
      all << "#include \"" << k.name << ".cpp\"\n";
    }
  }
  fs::path library = dir / "kernels.so";
  // -ffp-contract=off: no FMA contraction, as the CUDA build (--fmad=false)
  // and the reference kernels' portable code.
  std::string command = std::string(KILN_HOST_CXX) +
                        " -std=c++17 -O2 -fPIC -shared -fopenmp "
                        "-ffp-contract=off -Wall -Werror " +
                        (simt ? "-DKILN_HOST_SIMT=1 " : "") + "-I" +
                        dir.string() + " " + (dir / "all.cpp").string() +
                        " -o " + library.string() + " 2> " +
                        (dir / "build.log").string();
  if (std::system(command.c_str()) != 0) {
    std::ifstream log(dir / "build.log");
    std::stringstream text;
    text << log.rdbuf();
    FAIL() << "host build failed: " << command << "\n" << text.str();
  }
  void *handle = ::dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(handle, nullptr) << ::dlerror();

  std::mt19937 rng(1234);
  for (auto [fused, kernel] : llvm::zip_equal(groups, kernels)) {
    SCOPED_TRACE(label + " " + kernel.name);
    using Entry = void (*)(int64_t, void **);
    auto entry =
        reinterpret_cast<Entry>(::dlsym(handle, kernel.hostEntry.c_str()));
    ASSERT_NE(entry, nullptr) << kernel.hostEntry;
    size_t numInputs = fused.getInputs().size();
    std::vector<Buffer> buffers;
    // Token ids in range of the table that embeds them; selection rows a
    // permutation of the routed rows the combine reads.
    std::vector<InputRange> ranges(kernel.args.size());
    fused.walk([&](EmbeddingOp embedding) {
      auto table = cast<RankedTensorType>(embedding.getTable().getType());
      ranges[cast<BlockArgument>(embedding.getTokens()).getArgNumber()].vocab =
          table.getDimSize(0);
    });
    fused.walk([&](MoECombineOp combine) {
      int64_t routed = kTokens * lastDim(combine.getWeights());
      for (Value v : {combine.getExpertOutputs(), combine.getSelectionRows()})
        ranges[cast<BlockArgument>(v).getArgNumber()].routedRows = routed;
    });
    // Each kv_append's cache rows: its positions through cacheTables().
    std::vector<int32_t> tables = cacheTables();
    auto appends = fused.getBody().getOps<KVAppendOp>();
    auto append = appends.begin();
    std::vector<size_t> slots;
    for (auto [i, arg] : llvm::enumerate(kernel.args)) {
      using ::kiln::codegen::ArgRole;
      if (arg.role == ArgRole::Result) {
        buffers.push_back(resultBuffer(arg));
      } else if (arg.role == ArgRole::CacheRows) {
        unsigned at =
            cast<BlockArgument>((*append).getPositions()).getArgNumber();
        Buffer rows;
        rows.element = KernelElement::I32;
        for (int64_t t = 0; t < kTokens; ++t) {
          int32_t position = buffers[at].i32[t];
          rows.i32.push_back(
              position < 0
                  ? -1
                  : tables[t * kTableStride + position / kCacheBlockTokens] *
                            kCacheBlockTokens +
                        position % kCacheBlockTokens);
        }
        buffers.push_back(std::move(rows));
        ++append;
      } else if (arg.role == ArgRole::CacheSlot) {
        // f32 rows or an FP8 slot's bytes, all 0xff (an f32 NaN) to start.
        Buffer cache;
        cache.element = arg.element;
        int64_t n = kCacheBlocks * kCacheBlockTokens * arg.elements;
        if (arg.element == KernelElement::F32)
          cache.f32.resize(n);
        else
          cache.u8.resize(n);
        std::memset(cache.data(), 0xff,
                    arg.element == KernelElement::F32 ? 4 * n : n);
        slots.push_back(buffers.size());
        buffers.push_back(std::move(cache));
      } else {
        buffers.push_back(randomBuffer(arg, rng, ranges[i]));
      }
    }
    std::vector<void *> args;
    for (Buffer &b : buffers)
      args.push_back(b.data());
    entry(kTokens, args.data());

    std::vector<Buffer> inputs(buffers.begin(), buffers.begin() + numInputs);
    std::vector<std::vector<uint8_t>> caches;
    std::vector<RefValue> expected =
        runReference(fused, inputs, kernel, caches);
    ASSERT_EQ(caches.size(), slots.size());
    for (auto [k, append] : llvm::enumerate(appends)) {
      auto slot = SymbolTable::lookupNearestSymbolFrom<KVCacheOp>(
          fused, append.getCacheAttr());
      expectSameCacheRows(
          static_cast<const uint8_t *>(buffers[slots[k]].data()), caches[k],
          slot, bound(fused, append.getValue()), report.maxError,
          "kv_append " + std::to_string(k));
    }
    report.cacheWrites += static_cast<int>(caches.size());
    size_t firstResult = kernel.args.size() - fused.getNumResults();
    Operation *yield = fused.getBody().front().getTerminator();
    for (size_t j = 0; j < expected.size(); ++j) {
      Buffer &got = buffers[firstResult + j];
      if (got.element == KernelElement::I32) {
        EXPECT_EQ(got.i32, expected[j].i32) << "result " << j;
        continue;
      }
      Bound b = bound(fused, yield->getOperand(j));
      if (got.element == KernelElement::F8E4M3) {
        // An input off by the bound may round to the neighbouring code.
        for (uint8_t code : got.u8)
          got.f32.push_back(::kiln::e4m3ToFloat(code));
        b.relative += 0x1p-3;
        b.absolute += 0x1p-9;
      }
      for (size_t i = 0; i < got.f32.size(); ++i) {
        double ref = expected[j].f32[i], value = got.f32[i];
        double error = std::abs(value - ref);
        report.maxError = std::max(report.maxError, error);
        ASSERT_LE(error, b.relative * std::abs(ref) + b.absolute)
            << "result " << j << " element " << i << ": " << value
            << " vs reference " << ref;
      }
    }
    ++report.groups;
  }
  ::dlclose(handle);
  fs::remove_all(dir);
}

OwningOpRef<ModuleOp> optimizedModel(MLIRContext &context, const fs::path &path,
                                     bool fp8, bool fp8Cache) {
  absl::StatusOr<::kiln::models::ImportedModel> model =
      ::kiln::models::importModel(context, path);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok())
    return nullptr;
  PassManager pm(&context);
  mlir::kiln::OptimizeOptions options;
  // "<model>-fp8": FP8 weights in blocks of 16, so the groups feeding FP8
  // linears end with their activation quantization.
  options.quantizeFp8 = fp8;
  options.fp8Block = 16;
  // "<model>-fp8kv": MLA's latent cache in FP8, which the kernels that
  // store its rows quantize.
  if (fp8Cache)
    options.latentCacheDtype = "fp8";
  mlir::kiln::buildOptimizePipeline(pm, options);
  EXPECT_TRUE(succeeded(pm.run(*model->module))) << path;
  return std::move(model->module);
}

class TinyModels : public ::testing::TestWithParam<std::string> {
protected:
  void checkModel(bool simt);
};

void TinyModels::checkModel(bool simt) {
  MLIRContext context;
  std::string name = GetParam();
  bool fp8 = name.ends_with("-fp8"), fp8Cache = name.ends_with("-fp8kv");
  std::string model = fp8        ? name.substr(0, name.size() - 4)
                      : fp8Cache ? name.substr(0, name.size() - 6)
                                 : name;
  fs::path source = KILN_PROJECT_SOURCE_DIR;
  fs::path path = model.rfind("tiny-", 0) == 0
                      ? source / "models/presets" / (model + ".json")
                      : source / "tests/golden" / model;
  OwningOpRef<ModuleOp> module = optimizedModel(context, path, fp8, fp8Cache);
  ASSERT_TRUE(module);
  GroupReport report;
  checkGroups(*module, name, report, simt);
  std::cout << name << (simt ? " (host SIMT)" : "") << ": " << report.groups
            << " fused groups compared (" << report.cacheWrites
            << " storing cache rows), max |error| " << report.maxError << "\n";
  // MLA's latent-cache row goes to the cache from its fused kernel.
  if (model.find("deepseek") != std::string::npos) {
    EXPECT_GT(report.cacheWrites, 0);
  }
}

TEST_P(TinyModels, HostBuildMatchesReferenceKernels) { checkModel(false); }

TEST_P(TinyModels, HostSimtBuildMatchesReferenceKernels) { checkModel(true); }

INSTANTIATE_TEST_SUITE_P(
    Models, TinyModels,
    ::testing::Values("tiny-deepseek-v3", "tiny-deepseek-v2",
                      "tiny-deepseek-v2-lite", "tiny-qwen2", "tiny-llama",
                      "deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "qwen2",
                      "llama", "deepseek-v3-fp8", "qwen2-fp8",
                      "deepseek-v2-lite-fp8kv"),
    [](const ::testing::TestParamInfo<std::string> &info) {
      std::string name = info.param;
      for (char &c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)))
          c = '_';
      return name;
    });

/// Groups the tiny models do not form: SwiGLU with a residual add, f16 and
/// f32 norm weights, per-head norms, llama3 and plain rotate_half RoPE, a
/// broadcast, softmax routers with greedy and group-limited selection.
constexpr const char *kHandWritten = R"mlir(
func.func @groups(%g: tensor<?x?x32xf32>, %u: tensor<?x?x32xf32>,
                  %x: tensor<?x?x32xf32>, %w16: tensor<32xf16>,
                  %q: tensor<?x?x2x16xf32>, %w32: tensor<16xf32>,
                  %pos: tensor<?x?xi32>, %k: tensor<?x?x1x8xf32>,
                  %router: tensor<8x32xbf16>) {
  %0:2 = kiln.fused "hand_swiglu_add_rms_norm"(%g, %u, %x, %w16)
      : (tensor<?x?x32xf32>, tensor<?x?x32xf32>, tensor<?x?x32xf32>, tensor<32xf16>)
      -> (tensor<?x?x32xf32>, tensor<?x?x32xf32>) {
  ^bb0(%a: tensor<?x?x32xf32>, %b: tensor<?x?x32xf32>, %c: tensor<?x?x32xf32>, %d: tensor<32xf16>):
    %s = kiln.swiglu %a, %b : tensor<?x?x32xf32>
    %t = kiln.add %s, %c : tensor<?x?x32xf32>
    %n = kiln.rms_norm %t, %d {epsilon = 1.0e-05 : f64}
        : (tensor<?x?x32xf32>, tensor<32xf16>) -> tensor<?x?x32xf32>
    kiln.yield %t, %n : tensor<?x?x32xf32>, tensor<?x?x32xf32>
  }
  %1 = kiln.fused "hand_rms_norm_rope_llama3"(%q, %w32, %pos)
      : (tensor<?x?x2x16xf32>, tensor<16xf32>, tensor<?x?xi32>) -> tensor<?x?x2x16xf32> {
  ^bb0(%a: tensor<?x?x2x16xf32>, %b: tensor<16xf32>, %p: tensor<?x?xi32>):
    %n = kiln.rms_norm %a, %b {epsilon = 1.0e-06 : f64}
        : (tensor<?x?x2x16xf32>, tensor<16xf32>) -> tensor<?x?x2x16xf32>
    %r = kiln.rope %n, %p {rope = #kiln.rope<kind = llama3, theta = 500000.0, factor = 8.0, original_max_position = 64>}
        : (tensor<?x?x2x16xf32>, tensor<?x?xi32>) -> tensor<?x?x2x16xf32>
    kiln.yield %r : tensor<?x?x2x16xf32>
  }
  %2 = kiln.fused "hand_rope_plain_broadcast_concat"(%k, %pos, %q)
      : (tensor<?x?x1x8xf32>, tensor<?x?xi32>, tensor<?x?x2x16xf32>) -> tensor<?x?x2x24xf32> {
  ^bb0(%a: tensor<?x?x1x8xf32>, %p: tensor<?x?xi32>, %b: tensor<?x?x2x16xf32>):
    %r = kiln.rope %a, %p {rope = #kiln.rope<kind = plain, theta = 10000.0>}
        : (tensor<?x?x1x8xf32>, tensor<?x?xi32>) -> tensor<?x?x1x8xf32>
    %e = kiln.broadcast %r : tensor<?x?x1x8xf32> -> tensor<?x?x2x8xf32>
    %c = kiln.concat %b, %e : tensor<?x?x2x16xf32>, tensor<?x?x2x8xf32> -> tensor<?x?x2x24xf32>
    kiln.yield %c : tensor<?x?x2x24xf32>
  }
  %3:2 = kiln.fused "hand_moe_gate_softmax_greedy"(%x, %router)
      : (tensor<?x?x32xf32>, tensor<8x32xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>) {
  ^bb0(%a: tensor<?x?x32xf32>, %b: tensor<8x32xbf16>):
    %w, %i = kiln.moe_gate %a, %b softmax greedy
        {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64,
         routed_scaling_factor = 1.0 : f64}
        : (tensor<?x?x32xf32>, tensor<8x32xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
    kiln.yield %w, %i : tensor<?x?x2xf32>, tensor<?x?x2xi32>
  }
  %4:2 = kiln.fused "hand_moe_gate_softmax_group_limited"(%x, %router)
      : (tensor<?x?x32xf32>, tensor<8x32xbf16>) -> (tensor<?x?x3xf32>, tensor<?x?x3xi32>) {
  ^bb0(%a: tensor<?x?x32xf32>, %b: tensor<8x32xbf16>):
    %w, %i = kiln.moe_gate %a, %b softmax group_limited_greedy
        {top_k = 3 : i64, n_group = 4 : i64, topk_group = 2 : i64,
         norm_topk_prob, routed_scaling_factor = 16.0 : f64}
        : (tensor<?x?x32xf32>, tensor<8x32xbf16>) -> (tensor<?x?x3xf32>, tensor<?x?x3xi32>)
    kiln.yield %w, %i : tensor<?x?x3xf32>, tensor<?x?x3xi32>
  }
  return
}
)mlir";

TEST(FusedKernels, HandWrittenGroupsMatchReferenceKernels) {
  MLIRContext context;
  context.loadDialect<KilnDialect, func::FuncDialect>();
  OwningOpRef<ModuleOp> module =
      parseSourceString<ModuleOp>(kHandWritten, &context);
  ASSERT_TRUE(module);
  GroupReport report;
  checkGroups(*module, "hand-written", report);
  EXPECT_EQ(report.groups, 5);
  GroupReport simt;
  checkGroups(*module, "hand-written", simt, /*simt=*/true);
  EXPECT_EQ(simt.groups, 5);
  std::cout << "hand-written: " << report.groups
            << " fused groups compared, max |error| " << report.maxError
            << "\n";
}

/// Every group's source compiles with NVRTC to an sm_90a CUBIN (an ELF) and
/// compute_90 PTX. One program per model holds all its groups (NVRTC takes
/// about a second a program); one group also compiles alone.
TEST(FusedKernels, SourcesCompileWithNvrtcForSm90a) {
  MLIRContext context;
  std::vector<::kiln::codegen::CudaHeader> headers = {
      {::kiln::codegen::kFusedPreludeName,
       ::kiln::codegen::fusedPreludeSource()}};
  fs::path source = KILN_PROJECT_SOURCE_DIR;
  // FP8 weights: groups ending in kiln.quantize_fp8; an FP8 latent cache:
  // groups storing its quantized rows.
  struct Variant {
    const char *name;
    bool fp8, fp8Cache;
  };
  for (auto [name, fp8, fp8Cache] : {Variant{"tiny-deepseek-v3", false, false},
                                     {"tiny-deepseek-v2", false, false},
                                     {"tiny-deepseek-v2-lite", false, false},
                                     {"tiny-qwen2", false, false},
                                     {"tiny-deepseek-v3", true, false},
                                     {"tiny-deepseek-v2-lite", false, true}}) {
    SCOPED_TRACE(std::string(name) + (fp8 ? " fp8" : "") +
                 (fp8Cache ? " fp8 cache" : ""));
    OwningOpRef<ModuleOp> module = optimizedModel(
        context, source / "models/presets" / (std::string(name) + ".json"), fp8,
        fp8Cache);
    ASSERT_TRUE(module);
    std::string all, first, firstName;
    int count = 0;
    module->walk([&](FusedOp fused) {
      FailureOr<FusedKernel> kernel = ::kiln::codegen::emitFusedKernel(fused);
      ASSERT_TRUE(succeeded(kernel));
      all += kernel->source;
      if (first.empty()) {
        first = kernel->source;
        firstName = kernel->name;
      }
      ++count;
    });
    absl::StatusOr<::kiln::codegen::CudaBinary> binary =
        ::kiln::codegen::compileCuda(all, std::string(name) + ".cu", "sm_90a",
                                     headers);
    if (absl::IsUnavailable(binary.status()))
      GTEST_SKIP() << "NVRTC unavailable: " << binary.status().message();
    ASSERT_TRUE(binary.ok()) << binary.status();
    ASSERT_GT(binary->cubin.size(), 4u);
    EXPECT_EQ(binary->cubin.substr(0, 4), "\x7f"
                                          "ELF");
    EXPECT_NE(binary->ptx.find(".target sm_90"), std::string::npos);
    // Every kernel is an entry of the CUBIN and the PTX.
    module->walk([&](FusedOp fused) {
      EXPECT_NE(binary->cubin.find(fused.getName().str()), std::string::npos);
      EXPECT_NE(binary->ptx.find(".entry " + fused.getName().str()),
                std::string::npos);
    });
    std::cout << name << ": " << count << " kernels, cubin "
              << binary->cubin.size() << " bytes, ptx " << binary->ptx.size()
              << " bytes\n";
    if (std::string(name) == "tiny-deepseek-v3") {
      absl::StatusOr<::kiln::codegen::CudaBinary> one =
          ::kiln::codegen::compileCuda(first, firstName + ".cu", "sm_90a",
                                       headers);
      ASSERT_TRUE(one.ok()) << one.status();
      EXPECT_EQ(one->cubin.substr(0, 4), "\x7f"
                                         "ELF");
    }
  }
}

/// Every fused group of the full-size models has a kernel: kiln-fuse keeps
/// each group's scratch row within what a generated kernel holds, at
/// DeepSeek-V3's 128 heads too (whose query RoPE group once did not).
TEST(FusedKernels, EveryGroupOfTheFullSizeModelsHasAKernel) {
  MLIRContext context;
  fs::path presets = fs::path(KILN_PROJECT_SOURCE_DIR) / "models/presets";
  for (const char *name : {"deepseek-v3", "deepseek-v2", "deepseek-v2-lite"})
    for (bool fp8 : {false, true}) {
      OwningOpRef<ModuleOp> module =
          optimizedModel(context, presets / (std::string(name) + ".json"), fp8,
                         /*fp8Cache=*/false);
      ASSERT_TRUE(module) << name;
      int groups = 0;
      module->walk([&](FusedOp fused) {
        ++groups;
        EXPECT_TRUE(succeeded(::kiln::codegen::emitFusedKernel(fused)))
            << name << (fp8 ? " fp8 " : " ") << fused.getName().str();
      });
      EXPECT_GT(groups, 0) << name;
    }
}

/// A group with a router gets a warp per 8 of its experts (at least the
/// usual 128 threads, at most 256) and one block per multiprocessor's worth
/// of registers, in the kernel's launch bounds and its launch
/// (blockThreads); other groups keep 128.
TEST(FusedKernels, RouterGroupsGetAWarpPerEightExperts) {
  MLIRContext context;
  context.loadDialect<KilnDialect, func::FuncDialect>();
  for (auto [experts, threads] :
       {std::pair{8, 128u}, {40, 160u}, {64, 256u}, {256, 256u}}) {
    std::string source = "func.func @f(%x: tensor<?x?x32xf32>, %r: tensor<" +
                         std::to_string(experts) + R"(x32xbf16>) {
  %0:2 = kiln.fused "router"(%x, %r)
      : (tensor<?x?x32xf32>, tensor<)" +
                         std::to_string(experts) + R"(x32xbf16>)
        -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>) {
  ^bb0(%a: tensor<?x?x32xf32>, %b: tensor<)" +
                         std::to_string(experts) + R"(x32xbf16>):
    %w, %i = kiln.moe_gate %a, %b softmax greedy
        {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64,
         routed_scaling_factor = 1.0 : f64}
        : (tensor<?x?x32xf32>, tensor<)" +
                         std::to_string(experts) + R"(x32xbf16>)
        -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
    kiln.yield %w, %i : tensor<?x?x2xf32>, tensor<?x?x2xi32>
  }
  return
}
)";
    OwningOpRef<ModuleOp> module =
        parseSourceString<ModuleOp>(source, &context);
    ASSERT_TRUE(module) << experts;
    module->walk([&](FusedOp fused) {
      FailureOr<FusedKernel> kernel = ::kiln::codegen::emitFusedKernel(fused);
      ASSERT_TRUE(succeeded(kernel));
      EXPECT_EQ(kernel->blockThreads, threads) << experts << " experts";
      EXPECT_NE(kernel->source.find("__launch_bounds__(" +
                                    std::to_string(threads) + ", 1)"),
                std::string::npos)
          << kernel->source;
    });
  }
}

TEST(FusedKernels, NvrtcReportsCompileErrorsWithTheLog) {
  absl::StatusOr<::kiln::codegen::CudaBinary> binary =
      ::kiln::codegen::compileCuda("__global__ void broken() { nope; }",
                                   "broken.cu", "sm_90a");
  if (absl::IsUnavailable(binary.status()))
    GTEST_SKIP() << "NVRTC unavailable: " << binary.status().message();
  ASSERT_TRUE(absl::IsInvalidArgument(binary.status())) << binary.status();
  EXPECT_NE(binary.status().message().find("nope"), std::string::npos)
      << binary.status();
}

} // namespace
