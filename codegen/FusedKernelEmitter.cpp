//===- FusedKernelEmitter.cpp - kiln.fused -> portable C++ ----------------===//
//
// The body of a group becomes a function of one token that calls the
// prelude's row functions op by op (all threads of a block together, a
// KILN_SYNC() between ops); values the group yields are computed straight
// into the results, the others into a per-token scratch row whose slots are
// reused once their last reader has run. Two entry points wrap that
// function: the CUDA kernel (a block per token) and the host loop.
//
//===----------------------------------------------------------------------===//
#include "codegen/FusedKernelEmitter.h"

#include "runtime/src/cpu/Kernels.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

using namespace mlir;
using namespace mlir::kiln;

namespace kiln::codegen {
namespace {

/// Shared memory a block may declare statically; kiln-fuse bounds a
/// group's widest row well below it.
constexpr int64_t kScratchLimitBytes = 48 * 1024;
/// Scratch slots start on 16-byte boundaries (vector loads on the GPU).
constexpr int64_t kSlotAlignFloats = 4;

int64_t staticElements(RankedTensorType type) {
  int64_t n = 1;
  for (int64_t d : type.getShape().drop_front(leadingDynamicDims(type)))
    n *= d;
  return n;
}

int64_t perToken(Value value) {
  return staticElements(cast<RankedTensorType>(value.getType()));
}

int64_t lastDim(Value value) {
  return cast<RankedTensorType>(value.getType()).getShape().back();
}

FailureOr<KernelElement> kernelElement(Type type) {
  if (type.isF32())
    return KernelElement::F32;
  if (type.isBF16())
    return KernelElement::BF16;
  if (type.isF16())
    return KernelElement::F16;
  if (type.isInteger(32))
    return KernelElement::I32;
  if (isa<Float8E4M3FNType>(type))
    return KernelElement::F8E4M3;
  return failure();
}

const char *cppType(KernelElement element) {
  switch (element) {
  case KernelElement::F32:
    return "float";
  case KernelElement::BF16:
    return "kiln::Bf16";
  case KernelElement::F16:
    return "kiln::F16";
  case KernelElement::I32:
    return "int32_t";
  case KernelElement::F8E4M3:
    return "unsigned char";
  }
  return "float";
}

int64_t elementBytes(KernelElement element) {
  switch (element) {
  case KernelElement::BF16:
  case KernelElement::F16:
    return 2;
  case KernelElement::F8E4M3:
    return 1;
  case KernelElement::F32:
  case KernelElement::I32:
    return 4;
  }
  return 4;
}

const char *elementName(KernelElement element) {
  switch (element) {
  case KernelElement::F32:
    return "f32";
  case KernelElement::BF16:
    return "bf16";
  case KernelElement::F16:
    return "f16";
  case KernelElement::I32:
    return "i32";
  case KernelElement::F8E4M3:
    return "f8e4m3";
  }
  return "f32";
}

/// A literal that reads back as exactly `value`.
std::string floatLiteral(float value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.9g", static_cast<double>(value));
  std::string s = text;
  if (s.find_first_of(".e") == std::string::npos)
    s += ".0";
  return s + "f";
}

std::string doubleLiteral(double value) {
  char text[40];
  std::snprintf(text, sizeof(text), "%.17g", value);
  std::string s = text;
  if (s.find_first_of(".e") == std::string::npos)
    s += ".0";
  return s;
}

/// The Hugging Face module path an op was built for, when it has one.
std::string locName(Location loc) {
  if (auto name = dyn_cast<NameLoc>(loc))
    return name.getName().str();
  if (auto fusedLoc = dyn_cast<FusedLoc>(loc))
    for (Location inner : fusedLoc.getLocations())
      if (std::string name = locName(inner); !name.empty())
        return name;
  return "";
}

/// `leading` names the leading dynamic dimensions: tokens, or routed rows.
std::string shapeText(RankedTensorType type, StringRef leadingName) {
  std::string s = "[";
  size_t leading = leadingDynamicDims(type);
  if (leading)
    s += leadingName;
  for (int64_t d : type.getShape().drop_front(leading)) {
    if (s.size() > 1)
      s += ", ";
    s += std::to_string(d);
  }
  return s + "]";
}

class Emitter {
public:
  explicit Emitter(FusedOp fused) : fused_(fused), name_(fused.getName()) {}

  FailureOr<FusedKernel> emit();

private:
  LogicalResult collectArgs();
  void planStorage();
  LogicalResult emitOp(Operation &op);
  /// The C++ expression of `value`'s row for the current token.
  std::string row(Value value) { return names_.lookup(value); }
  /// A whole input's kernel parameter.
  FailureOr<std::string> whole(Operation &op, Value value);
  /// Marks `value`, a whole input (whole() accepted it), prefetched.
  void prefetchWhole(Value value) {
    prefetched_.insert(cast<BlockArgument>(value).getArgNumber());
  }
  int64_t wholeBytes(unsigned arg) const {
    return kernel_.args[arg].elements * elementBytes(kernel_.args[arg].element);
  }
  std::string newName(Operation &op, StringRef suffix = "");

  FusedOp fused_;
  std::string name_;
  FusedKernel kernel_;
  /// The group has a router: its kernel runs one block per token, which
  /// may take every register it needs for the router's loads in flight
  /// (`__launch_bounds__(threads, 1)`; ptxas otherwise spills DeepSeek-V3's
  /// at 64 registers to fit four blocks).
  bool routerBlock_ = false;
  std::string tables_;
  std::string body_;
  llvm::raw_string_ostream os_{body_};
  llvm::DenseMap<Value, std::string> names_;
  /// Whole inputs every token's block reads all of (a norm's weight, a
  /// router's): the blocks ask the L2 for them before awaiting the kernels
  /// before (prefetchShareToL2). Argument indices, in order.
  llvm::SetVector<unsigned> prefetched_;
  /// Parameter names of kernel_.args, in order.
  std::vector<std::string> argNames_;
  /// A kv_append of the body: its (rows<k>, slot<k>) parameters, and its
  /// slot's packed layout (null for f32) and bytes per row.
  struct CacheStore {
    unsigned k;
    PackedCacheAttr packed;
    int64_t rowBytes;
  };
  llvm::DenseMap<Operation *, CacheStore> appends_;
  /// Values computed into results: result index.
  llvm::DenseMap<Value, unsigned> inResult_;
  /// Values computed into the scratch row: float offset.
  llvm::DenseMap<Value, int64_t> inScratch_;
  unsigned counter_ = 0;
};

LogicalResult Emitter::collectArgs() {
  Block &body = fused_.getBody().front();
  for (auto [i, input] : llvm::enumerate(fused_.getInputs())) {
    auto type = cast<RankedTensorType>(input.getType());
    FailureOr<KernelElement> element = kernelElement(type.getElementType());
    if (failed(element) || *element == KernelElement::F8E4M3)
      return fused_.emitOpError("generated kernels take f32, bf16, f16 or i32 "
                                "inputs, not ")
             << type.getElementType() << " (input " << i << ")";
    Value blockArg = body.getArgument(i);
    KernelArg arg;
    arg.indexedRows =
        !blockArg.use_empty() &&
        llvm::all_of(blockArg.getUses(), FusedOp::readsIndexedRows);
    arg.perToken = leadingDynamicDims(type) > 0 && !arg.indexedRows;
    arg.element = *element;
    arg.elements = staticElements(type);
    if ((arg.perToken || arg.indexedRows) && *element != KernelElement::F32 &&
        *element != KernelElement::I32)
      return fused_.emitOpError("generated kernels compute f32 activations; "
                                "input ")
             << i << " is " << type.getElementType()
             << " (compile with --activation-dtype f32)";
    if (auto param = input.getDefiningOp<GetParameterOp>())
      arg.parameter = param.getName().str();
    kernel_.args.push_back(arg);
    std::string param = "in" + std::to_string(i);
    argNames_.push_back(param);
    names_[blockArg] =
        arg.perToken ? param + " + token * " + std::to_string(arg.elements)
                     : param;
  }
  for (auto append : body.getOps<KVAppendOp>()) {
    auto slot = SymbolTable::lookupNearestSymbolFrom<KVCacheOp>(
        fused_, append.getCacheAttr());
    auto value = cast<RankedTensorType>(append.getValue().getType());
    if (!slot || !value.getElementType().isF32() ||
        leadingDynamicDims(value) != 2)
      return append.emitOpError("generated kernels store [batch, seq] f32 "
                                "rows only");
    unsigned k = static_cast<unsigned>(appends_.size());
    appends_[append] = {k, slot.getStorageAttr(),
                        slot.getStoredBytesPerToken()};
    KernelArg rows;
    rows.role = ArgRole::CacheRows;
    rows.perToken = true;
    rows.element = KernelElement::I32;
    rows.elements = 1;
    rows.parameter = append.getCache().str();
    // A packed slot's rows are bytes in its layout (KVCacheOp's storage).
    KernelArg rowsOfSlot = rows;
    rowsOfSlot.role = ArgRole::CacheSlot;
    rowsOfSlot.perToken = false;
    rowsOfSlot.element =
        slot.getStorage() ? KernelElement::F8E4M3 : KernelElement::F32;
    rowsOfSlot.elements = slot.getStorage() ? slot.getStoredBytesPerToken()
                                            : staticElements(value);
    kernel_.args.push_back(rows);
    kernel_.args.push_back(rowsOfSlot);
    argNames_.push_back("rows" + std::to_string(k));
    argNames_.push_back("slot" + std::to_string(k));
  }
  for (auto [j, result] : llvm::enumerate(fused_.getResults())) {
    auto type = cast<RankedTensorType>(result.getType());
    FailureOr<KernelElement> element = kernelElement(type.getElementType());
    if (succeeded(element) && leadingDynamicDims(type) > 0 &&
        (*element == KernelElement::BF16 || *element == KernelElement::F16))
      return fused_.emitOpError("generated kernels compute f32 activations; "
                                "result ")
             << j << " is " << type.getElementType()
             << " (compile with --activation-dtype f32)";
    if (failed(element) || *element == KernelElement::BF16 ||
        *element == KernelElement::F16 || leadingDynamicDims(type) == 0)
      return fused_.emitOpError("generated kernels yield per-token f32, i32 "
                                "or f8E4M3FN values, not ")
             << type;
    KernelArg arg;
    arg.role = ArgRole::Result;
    arg.perToken = true;
    arg.element = *element;
    arg.elements = staticElements(type);
    kernel_.args.push_back(arg);
    argNames_.push_back("out" + std::to_string(j));
  }
  return success();
}

void Emitter::planStorage() {
  Block &body = fused_.getBody().front();
  Operation *yield = body.getTerminator();
  // Yielded values are computed in their result (the first, when one is
  // yielded twice); a reshape is a view, so its input is computed there.
  for (auto [j, value] : llvm::enumerate(yield->getOperands())) {
    Operation *producer = value.getDefiningOp();
    if (!producer || isa<ReshapeOp>(producer) || inResult_.count(value))
      continue;
    inResult_[value] = static_cast<unsigned>(j);
  }
  // Scratch slots: values that are neither inputs nor results, alive from
  // their op to their last reader (through reshapes, which alias them).
  std::vector<Operation *> ops;
  llvm::DenseMap<Operation *, size_t> position;
  for (Operation &op : body) {
    position[&op] = ops.size();
    ops.push_back(&op);
  }
  auto root = [](Value v) {
    while (auto reshape = v.getDefiningOp<ReshapeOp>())
      v = reshape.getInput();
    return v;
  };
  llvm::DenseMap<Value, size_t> lastUse;
  for (Operation *op : ops)
    for (Value operand : op->getOperands()) {
      size_t &last = lastUse[root(operand)];
      last = std::max(last, position[op]);
    }
  struct Slot {
    int64_t offset, size;
    size_t last;
  };
  std::vector<Slot> active;
  for (Operation *op : ops) {
    if (isa<ReshapeOp, YieldOp>(op))
      continue;
    size_t here = position[op];
    std::erase_if(active, [&](const Slot &s) { return s.last < here; });
    for (Value result : op->getResults()) {
      if (inResult_.count(result))
        continue;
      int64_t size = (perToken(result) + kSlotAlignFloats - 1) /
                     kSlotAlignFloats * kSlotAlignFloats;
      llvm::sort(active, [](const Slot &a, const Slot &b) {
        return a.offset < b.offset;
      });
      int64_t offset = 0;
      for (const Slot &s : active) {
        if (s.offset >= offset + size)
          break;
        offset = std::max(offset, s.offset + s.size);
      }
      inScratch_[result] = offset;
      kernel_.scratchFloats = std::max(kernel_.scratchFloats, offset + size);
      active.push_back({offset, size, lastUse.lookup(result)});
    }
  }
}

std::string Emitter::newName(Operation &op, StringRef suffix) {
  std::string name =
      op.getName().stripDialect().str() + "_" + std::to_string(counter_);
  if (!suffix.empty())
    name += "_" + suffix.str();
  return name;
}

FailureOr<std::string> Emitter::whole(Operation &op, Value value) {
  auto arg = dyn_cast<BlockArgument>(value);
  if (!arg || kernel_.args[arg.getArgNumber()].perToken)
    return op.emitOpError("generated kernels read this operand as a whole "
                          "group input");
  return names_.lookup(value);
}

LogicalResult Emitter::emitOp(Operation &op) {
  if (auto reshape = dyn_cast<ReshapeOp>(op)) {
    names_[reshape.getResult()] = row(reshape.getInput());
    return success();
  }
  std::string where = locName(op.getLoc());
  os_ << "  // " << op.getName().getStringRef();
  if (!where.empty())
    os_ << " (" << where << ")";
  os_ << "\n";
  // The results' rows: in a result or in the scratch row.
  for (auto [k, result] : llvm::enumerate(op.getResults())) {
    StringRef suffix;
    if (op.getNumResults() > 1)
      suffix = isa<QuantizeFp8Op>(op) ? (k == 0 ? "codes" : "scales")
                                      : (k == 0 ? "weights" : "indices");
    std::string name = newName(op, suffix);
    Type element = getElementTypeOrSelf(result.getType());
    if (auto it = inResult_.find(result); it != inResult_.end()) {
      os_ << "  " << cppType(*kernelElement(element)) << " *" << name
          << " = out" << it->second << " + token * " << perToken(result)
          << ";\n";
    } else if (!element.isF32()) {
      return op.emitOpError("generated kernels write i32 and f8E4M3FN values "
                            "only to the group's results");
    } else {
      os_ << "  float *" << name << " = scratch + " << inScratch_.lookup(result)
          << ";\n";
    }
    names_[result] = name;
  }
  ++counter_;

  LogicalResult emitted =
      llvm::TypeSwitch<Operation *, LogicalResult>(&op)
          .Case([&](KVAppendOp append) {
            // The token's row, unless it has no cache row (padding).
            auto [k, packed, bytes] = appends_.lookup(append);
            int64_t n = perToken(append.getValue());
            if (packed) {
              os_ << llvm::formatv(
                  "  if (rows{0}[token] >= 0)\n"
                  "    kiln::storePackedRow({1}, kiln::PackedRows{{{2}, {3}}, "
                  "slot{0} + int64_t{{rows{0}[token]} * {4});\n",
                  k, row(append.getValue()), packed.getFp8Columns(),
                  n - packed.getFp8Columns(), bytes);
              return success();
            }
            os_ << llvm::formatv(
                "  if (rows{0}[token] >= 0)\n"
                "    kiln::copy({1}, {2}, slot{0} + int64_t{{rows{0}[token]} * "
                "{2});\n",
                k, row(append.getValue()), n);
            return success();
          })
          .Case([&](QuantizeFp8Op quantize) {
            // One call per row of the last dimension (e.g. per head).
            int64_t n = lastDim(quantize.getInput());
            int64_t blocks =
                (n + quantize.getBlockCols() - 1) / quantize.getBlockCols();
            os_ << llvm::formatv(
                "  for (int64_t r = 0; r < {0}; ++r)\n"
                "    kiln::quantizeFp8({1} + r * {2}, {2}, {3}, {4}, "
                "{5} + r * {2}, {6} + r * {7});\n",
                perToken(quantize.getInput()) / n, row(quantize.getInput()), n,
                quantize.getBlockCols(), quantize.getUe8m0() ? 1 : 0,
                row(quantize.getCodes()), row(quantize.getScales()), blocks);
            return success();
          })
          .Case([&](EmbeddingOp embedding) -> LogicalResult {
            FailureOr<std::string> table = whole(op, embedding.getTable());
            if (failed(table))
              return failure();
            os_ << llvm::formatv("  kiln::embedding({0}, {1}, {2}, {3});\n",
                                 row(embedding.getTokens()), *table,
                                 lastDim(embedding.getResult()),
                                 row(embedding.getResult()));
            return success();
          })
          .Case([&](MoECombineOp combine) -> LogicalResult {
            FailureOr<std::string> rows = whole(op, combine.getExpertOutputs());
            if (failed(rows))
              return failure();
            os_ << llvm::formatv(
                "  kiln::moeCombine({0}, {1}, {2}, {3}, {4}, {5});\n", *rows,
                row(combine.getWeights()), row(combine.getSelectionRows()),
                lastDim(combine.getWeights()), lastDim(combine.getResult()),
                row(combine.getResult()));
            return success();
          })
          .Case([&](AddOp add) {
            os_ << llvm::formatv("  kiln::add({0}, {1}, {2}, {3});\n",
                                 row(add.getLhs()), row(add.getRhs()),
                                 perToken(add.getResult()),
                                 row(add.getResult()));
            return success();
          })
          .Case([&](SwiGLUOp swiglu) {
            os_ << llvm::formatv("  kiln::swiglu({0}, {1}, {2}, {3});\n",
                                 row(swiglu.getGate()), row(swiglu.getUp()),
                                 perToken(swiglu.getResult()),
                                 row(swiglu.getResult()));
            return success();
          })
          .Case([&](RMSNormOp norm) -> LogicalResult {
            FailureOr<std::string> weight = whole(op, norm.getWeight());
            if (failed(weight))
              return failure();
            prefetchWhole(norm.getWeight());
            int64_t dim = lastDim(norm.getInput());
            float epsilon =
                static_cast<float>(norm.getEpsilon().convertToDouble());
            os_ << llvm::formatv(
                "  kiln::rmsNorm({0}, {1}, {2}, {3}, {4}, {5});\n",
                row(norm.getInput()), perToken(norm.getInput()) / dim, dim,
                *weight, floatLiteral(epsilon), row(norm.getResult()));
            return success();
          })
          .Case([&](SliceOp slice) {
            int64_t inDim = lastDim(slice.getInput());
            os_ << llvm::formatv(
                "  kiln::slice({0}, {1}, {2}, {3}, {4}, {5});\n",
                row(slice.getInput()), perToken(slice.getInput()) / inDim,
                inDim, slice.getOffset(), slice.getSize(),
                row(slice.getResult()));
            return success();
          })
          .Case([&](ConcatOp concat) {
            int64_t outDim = lastDim(concat.getResult());
            int64_t rows = perToken(concat.getResult()) / outDim;
            int64_t offset = 0;
            for (Value input : concat.getInputs()) {
              int64_t dim = lastDim(input);
              os_ << llvm::formatv(
                  "  kiln::concatPart({0}, {1}, {2}, {3}, {4}, {5});\n",
                  row(input), rows, dim, outDim, offset,
                  row(concat.getResult()));
              offset += dim;
            }
            return success();
          })
          .Case([&](BroadcastOp broadcast) -> LogicalResult {
            auto from = cast<RankedTensorType>(broadcast.getInput().getType());
            auto to = cast<RankedTensorType>(broadcast.getResult().getType());
            size_t leading = leadingDynamicDims(to);
            int64_t outer = 1, repeat = 1, inner = 1;
            std::optional<size_t> axis;
            for (size_t d = leading; d < static_cast<size_t>(to.getRank());
                 ++d) {
              bool grows = from.getDimSize(d) != to.getDimSize(d);
              if (grows && axis)
                return op.emitOpError("generated kernels broadcast one "
                                      "dimension");
              if (grows)
                axis = d;
              (grows ? repeat : axis ? inner : outer) *= to.getDimSize(d);
            }
            os_ << llvm::formatv(
                "  kiln::broadcast({0}, {1}, {2}, {3}, {4});\n",
                row(broadcast.getInput()), outer, repeat, inner,
                row(broadcast.getResult()));
            return success();
          })
          .Case([&](RopeOp rope) -> LogicalResult {
            auto positions = dyn_cast<BlockArgument>(rope.getPositions());
            if (!positions || perToken(positions) != 1)
              return op.emitOpError("generated kernels read rope positions "
                                    "as a per-token group input");
            int64_t dim = lastDim(rope.getInput());
            ::kiln::cpu::RopeParams params = ropeParams(rope.getRope());
            std::vector<double> invFreq(dim / 2);
            ::kiln::cpu::ropeInverseFrequencies(params, dim, invFreq.data());
            std::string table =
                name_ + "_" + names_.lookup(rope.getResult()) + "_inv_freq";
            tables_ += "// Inverse frequencies of " +
                       names_.lookup(rope.getResult()) + " (" +
                       stringifyRopeKind(rope.getRope().getKind()).str() +
                       ", dim " + std::to_string(dim) + ").\n";
            tables_ += "KILN_TABLE double " + table + "[" +
                       std::to_string(dim / 2) + "] = {";
            for (auto [i, f] : llvm::enumerate(invFreq))
              tables_ += (i ? ", " : "") + doubleLiteral(f);
            tables_ += "};\n\n";
            os_ << llvm::formatv(
                "  kiln::rope<{0}>({1}, {2}, in{3}[token], {4}, {5}, {6}, "
                "{7});\n",
                dim / 2, row(rope.getInput()), perToken(rope.getInput()) / dim,
                positions.getArgNumber(), table,
                doubleLiteral(::kiln::cpu::ropeAttentionFactor(params)),
                params.interleaved ? "true" : "false", row(rope.getResult()));
            return success();
          })
          .Case([&](MoEGateOp gate) -> LogicalResult {
            FailureOr<std::string> weight = whole(op, gate.getWeight());
            if (failed(weight))
              return failure();
            prefetchWhole(gate.getWeight());
            std::string bias = "static_cast<const float *>(nullptr)";
            if (Value b = gate.getCorrectionBias()) {
              FailureOr<std::string> name = whole(op, b);
              if (failed(name))
                return failure();
              bias = *name;
            }
            auto weightType =
                cast<RankedTensorType>(gate.getWeight().getType());
            int64_t warps =
                (weightType.getDimSize(0) + kRouterExpertsPerWarp - 1) /
                kRouterExpertsPerWarp;
            routerBlock_ = true;
            kernel_.blockThreads = std::max(
                kernel_.blockThreads,
                std::clamp<uint32_t>(static_cast<uint32_t>(warps) * 32,
                                     kFusedBlockThreads, kRouterMaxThreads));
            const char *scoring = gate.getScoringFunc() == ScoringFunc::softmax
                                      ? "kiln::Softmax"
                                      : "kiln::Sigmoid";
            const char *method =
                gate.getTopkMethod() == TopkMethod::greedy ? "kiln::Greedy"
                : gate.getTopkMethod() == TopkMethod::group_limited_greedy
                    ? "kiln::GroupLimitedGreedy"
                    : "kiln::NoauxTc";
            os_ << llvm::formatv(
                "  kiln::moeGate<{0}, {1}>(\n"
                "      {2}, {3}, {4}, {5},\n"
                "      kiln::MoeGateConfig{{{6}, {7}, {8}, {9}, {10}, {11}},\n"
                "      {12}, {13});\n",
                weightType.getDimSize(0), gate.getTopK(), row(gate.getInput()),
                weightType.getDimSize(1), *weight, bias, scoring, method,
                gate.getNGroup(), gate.getTopkGroup(),
                gate.getNormTopkProb() ? "true" : "false",
                floatLiteral(static_cast<float>(
                    gate.getRoutedScalingFactor().convertToDouble())),
                row(gate.getWeights()), row(gate.getIndices()));
            return success();
          })
          .Default([&](Operation *other) {
            return other->emitOpError("has no generated kernel code");
          });
  if (failed(emitted))
    return failure();
  os_ << "  KILN_SYNC();\n";
  return success();
}

FailureOr<FusedKernel> Emitter::emit() {
  kernel_.name = name_;
  kernel_.hostEntry = name_ + "_host";
  kernel_.cudaEntry = name_;
  kernel_.blockThreads = kFusedBlockThreads;
  if (failed(collectArgs()))
    return failure();
  planStorage();
  if (kernel_.scratchFloats * 4 > kScratchLimitBytes)
    return fused_.emitOpError("generated kernels keep at most ")
           << kScratchLimitBytes << " bytes of intermediates per token, not "
           << kernel_.scratchFloats * 4;
  Block &body = fused_.getBody().front();
  for (Operation &op : body.without_terminator())
    if (failed(emitOp(op)))
      return failure();
  // Yielded values not computed in their result (a second yield of one
  // value, a view of an input).
  for (auto [j, value] : llvm::enumerate(body.getTerminator()->getOperands())) {
    auto it = inResult_.find(value);
    if (it != inResult_.end() && it->second == j)
      continue;
    if (!getElementTypeOrSelf(value.getType()).isF32())
      return fused_.emitOpError("generated kernels yield an i32 value once");
    os_ << llvm::formatv("  kiln::copy({0}, {1}, out{2} + token * {1});\n",
                         row(value), perToken(value), j);
  }

  // Parameters, their comments, and the host entry's casts.
  size_t inputs = fused_.getInputs().size();
  size_t firstResult = kernel_.args.size() - fused_.getNumResults();
  std::string params, argComments, casts, forward;
  for (auto [i, arg] : llvm::enumerate(kernel_.args)) {
    const std::string &name = argNames_[i];
    bool writes = arg.role == ArgRole::Result || arg.role == ArgRole::CacheSlot;
    std::string type =
        std::string(writes ? "" : "const ") + cppType(arg.element) + " *";
    params += ", " + type + name;
    forward += ", " + name;
    casts +=
        "\n        static_cast<" + type + ">(args[" + std::to_string(i) + "]),";
    std::string shape;
    if (arg.role == ArgRole::CacheRows)
      shape = "[tokens]";
    else if (arg.role == ArgRole::CacheSlot)
      shape = "[cache rows, " + std::to_string(arg.elements) +
              (arg.element == KernelElement::F8E4M3 ? " bytes]" : "]");
    else
      shape =
          shapeText(cast<RankedTensorType>(
                        (i < inputs ? Value(fused_.getInputs()[i])
                                    : Value(fused_.getResult(i - firstResult)))
                            .getType()),
                    arg.indexedRows ? "rows" : "tokens");
    argComments += llvm::formatv(
        "//   {0,-5} {1,-4} {2}{3}\n", name, elementName(arg.element), shape,
        arg.parameter.empty() ? "" : "  " + arg.parameter);
  }
  casts.pop_back(); // the last comma
  bool scratch = kernel_.scratchFloats > 0;
  std::string scratchParam = scratch ? ", float *scratch" : "";
  std::string scratchArg = scratch ? ", scratch" : "";
  std::string scratchDecl =
      "float scratch[" + std::to_string(kernel_.scratchFloats) + "];";

  std::string where = locName(fused_.getLoc());
  std::string &s = kernel_.source;
  llvm::raw_string_ostream out(s);
  out << "// Generated by kiln (codegen/FusedKernelEmitter.cpp) from\n"
      << "// kiln.fused \"" << name_ << "\""
      << (where.empty() ? "" : " at " + where) << ".\n"
      << "// Builds as a CUDA kernel (" << name_ << ": one block of "
      << kernel_.blockThreads << " threads per token) and as host code ("
      << kernel_.hostEntry << ").\n"
      << "// Arguments, after the token count:\n"
      << argComments << "#include \"" << kFusedPreludeName << "\"\n\n"
      << tables_;
  out << "KILN_FN void " << name_ << "_token(int64_t token" << params
      << scratchParam << ") {\n"
      << body_ << "}\n\n";
  out << "#if defined(__CUDACC__)\n"
      << "extern \"C\" __global__ void __launch_bounds__("
      << kernel_.blockThreads << (routerBlock_ ? ", 1" : "") << ")\n"
      << name_ << "(int64_t tokens" << params << ") {\n";
  if (prefetched_.empty()) {
    out << "  kiln::awaitPrecedingKernels();\n";
  } else {
    out << "  kiln::launchDependentKernels();\n";
    for (unsigned i : prefetched_)
      out << llvm::formatv("  kiln::prefetchShareToL2({0}, {1}, blockIdx.x, "
                           "gridDim.x);\n",
                           argNames_[i], wholeBytes(i));
    out << "  kiln::awaitPrecedingWrites();\n";
  }
  if (scratch)
    out << "  __shared__ " << scratchDecl << "\n";
  out << "  for (int64_t token = blockIdx.x; token < tokens; token += "
         "gridDim.x)\n"
      << "    " << name_ << "_token(token" << forward << scratchArg << ");\n"
      << "}\n"
      << "#else\n"
      // One block per token: the body once, or with CUDA's threads under
      // KILN_HOST_SIMT (tests only; HostSimt.h).
      << "extern \"C\" void " << kernel_.hostEntry
      << "(int64_t tokens, void **args) {\n"
      << "#pragma omp parallel for schedule(static)\n"
      << "  for (int64_t n = 0; n < tokens; ++n) {\n"
      << "    int64_t token = kiln::hostBlockIndex(n, tokens);\n"
      << "    kiln::runHostBlock(" << kernel_.blockThreads
      << ", token, [&] {\n";
  if (scratch)
    out << "      KILN_SHARED " << scratchDecl << "\n";
  for (unsigned i : prefetched_)
    out << llvm::formatv(
        "      kiln::prefetchShareToL2(args[{0}], {1}, token, tokens);\n", i,
        wholeBytes(i));
  out << "      " << name_ << "_token(token," << casts << scratchArg << ");\n"
      << "    });\n"
      << "  }\n"
      << "}\n"
      << "#endif\n";
  return kernel_;
}

} // namespace

::kiln::cpu::RopeParams ropeParams(RopeAttr rope) {
  ::kiln::cpu::RopeParams p;
  switch (rope.getKind()) {
  case RopeKind::plain:
    p.kind = ::kiln::cpu::RopeKind::Plain;
    break;
  case RopeKind::yarn:
    p.kind = ::kiln::cpu::RopeKind::Yarn;
    break;
  case RopeKind::llama3:
    p.kind = ::kiln::cpu::RopeKind::Llama3;
    break;
  }
  p.theta = rope.getTheta().convertToDouble();
  p.factor = rope.getFactor().convertToDouble();
  p.originalMaxPosition = rope.getOriginalMaxPosition();
  p.betaFast = rope.getBetaFast().convertToDouble();
  p.betaSlow = rope.getBetaSlow().convertToDouble();
  p.mscale = rope.getMscale().convertToDouble();
  p.mscaleAllDim = rope.getMscaleAllDim().convertToDouble();
  p.lowFreqFactor = rope.getLowFreqFactor().convertToDouble();
  p.highFreqFactor = rope.getHighFreqFactor().convertToDouble();
  p.interleaved = rope.getInterleaved();
  return p;
}

FailureOr<FusedKernel> emitFusedKernel(FusedOp fused) {
  return Emitter(fused).emit();
}

llvm::SmallVector<FusedOp> entryFusedGroups(ModuleOp module) {
  llvm::SmallVector<FusedOp> groups;
  bool split = module.lookupSymbol("prefill") || module.lookupSymbol("decode");
  for (llvm::StringRef name : {"prefill", "decode", "forward"}) {
    auto func = module.lookupSymbol<func::FuncOp>(name);
    if (!func || (name == "forward" && split))
      continue;
    func.walk([&](FusedOp fused) { groups.push_back(fused); });
  }
  return groups;
}

} // namespace kiln::codegen
