//===- PlanBuilder.cpp - kiln IR -> execution plan ------------------------===//
#include "codegen/PlanBuilder.h"

#include "ir/KilnOps.h"
#include "kiln/PlanShapes.h"

#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/ADT/TypeSwitch.h"

#include <algorithm>

using namespace mlir;
using namespace mlir::kiln;
namespace art = ::kiln::artifact;

namespace kiln::codegen {
namespace {

constexpr uint64_t kArenaAlignment = 64;

uint64_t alignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

FailureOr<art::ElementType> elementType(Operation *op, Type type) {
  if (type.isF32())
    return art::ElementType::F32;
  if (type.isBF16())
    return art::ElementType::BF16;
  if (type.isF16())
    return art::ElementType::F16;
  if (isa<Float8E4M3FNType>(type))
    return art::ElementType::F8E4M3;
  if (type.isInteger(32))
    return art::ElementType::I32;
  return op->emitOpError("has an element type the runtime cannot hold: ")
         << type;
}

using art::elementBytes;
/// Run-time bounds of the dimension symbols for one entry point.
using Bounds = art::SymbolSizes;

/// Symbols of a value's leading dynamic dimensions (batch and sequence,
/// batch and cached positions, or routed rows).
using Leading = SmallVector<art::DimSymbol, 2>;

std::vector<art::Dim> symbolicShape(RankedTensorType type,
                                    ArrayRef<art::DimSymbol> leading) {
  std::vector<art::Dim> dims;
  for (art::DimSymbol symbol : leading)
    dims.emplace_back(symbol, 0);
  for (int64_t d : type.getShape().drop_front(leading.size()))
    dims.emplace_back(art::DimSymbol::Static, d);
  return dims;
}

/// Where a value lives and how it is shaped.
struct ValueInfo {
  art::Storage storage = art::Storage::Arena;
  uint32_t index = 0;  // parameter or cache slot
  uint64_t column = 0; // cache views: first column of the entry read
  int buffer = -1;     // arena buffer
  art::ElementType type = art::ElementType::F32;
  std::vector<art::Dim> shape;
  Leading leading;
};

struct Buffer {
  uint64_t bytes = 0;
  size_t first = 0, last = 0;
  uint64_t offset = 0;
};

class EntryPlanner {
public:
  EntryPlanner(func::FuncOp func, const Bounds &bounds,
               const llvm::StringMap<uint32_t> &parameters,
               const llvm::StringMap<uint32_t> &slots)
      : func_(func), bounds_(bounds), parameters_(parameters), slots_(slots) {}

  LogicalResult plan(art::EntryPointT &entry);

private:
  /// The ops to launch, in order: groups (kiln.fused, kiln.linear_group)
  /// contribute their members.
  void flatten();
  /// A group's block argument as the group's operand, its result as the
  /// value its body yields.
  Value resolve(Value value) const {
    auto it = aliases_.find(value);
    return it == aliases_.end() ? value : it->second;
  }
  LogicalResult assignValues();
  FailureOr<Leading> leadingOf(Operation &op, RankedTensorType type);
  void assignOffsets(art::EntryPointT &entry);
  LogicalResult addLaunch(Operation *op, art::EntryPointT &entry);
  /// The ops that read `dispatch`'s routed rows, where all of them are
  /// grouped GEMMs (kiln.grouped_linear, kiln.gated_linear) reading them as
  /// their input outside fused groups; none otherwise. A GPU may run those
  /// GEMMs in selection order, from the dispatch's own input and indices.
  SmallVector<Operation *> findRoutedReaders(MoEDispatchOp dispatch) const;
  /// How `user` sees `value`: attention reads cache views in place; any
  /// other op reads the arena copy a KvGather launch makes.
  const ValueInfo &infoFor(Value value, Operation *user) const;
  std::unique_ptr<art::TensorRefT> ref(Value value,
                                       Operation *user = nullptr) const;
  std::unique_ptr<art::TensorRefT> ref(const ValueInfo &info) const;
  int newBuffer(Value value, const ValueInfo &info, size_t position);

  func::FuncOp func_;
  Bounds bounds_;
  const llvm::StringMap<uint32_t> &parameters_;
  const llvm::StringMap<uint32_t> &slots_;
  std::vector<Operation *> ops_;
  /// A group (kiln.fused or kiln.linear_group) and its members' positions
  /// in ops_, [first, last].
  struct Group {
    Operation *op;
    size_t first = 0, last = 0;
  };
  std::vector<Group> groups_;
  llvm::DenseMap<Operation *, size_t> groupOf_;
  llvm::DenseMap<Value, Value> aliases_;
  /// The cache rows fused kv_appends write at ([Batch, Seq] i32), when a
  /// group has one.
  std::optional<ValueInfo> cacheRows_;
  /// findRoutedReaders of each dispatch that has them (assignValues).
  llvm::DenseMap<Operation *, SmallVector<Operation *>> routedReaders_;
  llvm::DenseMap<Value, ValueInfo> values_;
  llvm::DenseMap<Value, ValueInfo> gathered_;
  std::vector<Buffer> buffers_;
};

int EntryPlanner::newBuffer(Value value, const ValueInfo &info,
                            size_t position) {
  uint64_t bytes = elementBytes(info.type);
  for (const art::Dim &d : info.shape)
    bytes *= bounds_.of(d);
  buffers_.push_back({alignUp(bytes, kArenaAlignment), position, position, 0});
  return static_cast<int>(buffers_.size() - 1);
}

void EntryPlanner::flatten() {
  // The CPU executor runs each member as its own library kernel; a GPU
  // executor runs a fused group's generated kernel instead (FusedLaunch),
  // and may run a linear group as one GEMV (LinearGroup).
  for (Operation &op : func_.getBody().front()) {
    if (!isa<FusedOp, LinearGroupOp>(op)) {
      ops_.push_back(&op);
      continue;
    }
    Block &body = op.getRegion(0).front();
    for (auto [arg, input] :
         llvm::zip_equal(body.getArguments(), op.getOperands()))
      aliases_[arg] = resolve(input);
    Group group{&op, ops_.size(), ops_.size()};
    for (Operation &member : body.without_terminator()) {
      groupOf_[&member] = groups_.size();
      ops_.push_back(&member);
      if (isa<KVAppendOp>(member))
        cacheRows_.emplace();
    }
    group.last = ops_.size() - 1;
    groups_.push_back(group);
    for (auto [result, yielded] :
         llvm::zip_equal(op.getResults(), body.getTerminator()->getOperands()))
      aliases_[result] = resolve(yielded);
  }
}

const ValueInfo &EntryPlanner::infoFor(Value value, Operation *user) const {
  value = resolve(value);
  auto gathered = gathered_.find(value);
  if (gathered != gathered_.end() && user && !isa<AttentionOp>(user))
    return gathered->second;
  return values_.find(value)->second;
}

FailureOr<Leading> EntryPlanner::leadingOf(Operation &op,
                                           RankedTensorType type) {
  size_t n = leadingDynamicDims(type);
  if (n == 0)
    return Leading{};
  if (isa<KVReadOp>(op) && n == 2)
    return Leading{art::DimSymbol::Batch, art::DimSymbol::KvLen};
  if (isa<MoEDispatchOp>(op) && n == 1)
    return Leading{art::DimSymbol::RoutedRows};
  // Otherwise the dimensions carry over from the first operand that has as
  // many (e.g. a linear over cached positions keeps KvLen).
  for (Value operand : op.getOperands()) {
    auto it = values_.find(resolve(operand));
    if (it != values_.end() && it->second.leading.size() >= n)
      return Leading(it->second.leading.begin(),
                     it->second.leading.begin() + n);
  }
  return op.emitOpError("has dynamic dimensions the planner cannot relate "
                        "to batch, sequence, cached positions or routed "
                        "rows");
}

LogicalResult EntryPlanner::assignValues() {
  Block &body = func_.getBody().front();
  size_t end = ops_.size() + 1;

  // Entry arguments: tokens [B, S], positions [B, S], kv_lengths [B]; live
  // throughout (the caller writes them before the first launch).
  for (auto [i, arg] : llvm::enumerate(body.getArguments())) {
    ValueInfo info;
    info.type = art::ElementType::I32;
    info.leading = i == 2 ? Leading{art::DimSymbol::Batch}
                          : Leading{art::DimSymbol::Batch, art::DimSymbol::Seq};
    info.shape =
        symbolicShape(cast<RankedTensorType>(arg.getType()), info.leading);
    info.buffer = newBuffer(arg, info, 0);
    buffers_[info.buffer].last = end;
    values_[arg] = info;
    if (i == 1 && cacheRows_) {
      // Shaped as the positions, which the runtime maps to rows.
      cacheRows_->type = info.type;
      cacheRows_->leading = info.leading;
      cacheRows_->shape = info.shape;
      cacheRows_->buffer = newBuffer(arg, info, 0);
      buffers_[cacheRows_->buffer].last = end;
    }
  }

  // A group runs as one kernel on a GPU, which reads its inputs and writes
  // its results in any order: every value a member reads lives to the
  // group's end and every value it defines from the group's start, so no
  // two of them share bytes.
  auto span = [&](Operation &op, size_t position) {
    auto it = groupOf_.find(&op);
    if (it == groupOf_.end())
      return std::pair(position, position);
    const Group &g = groups_[it->second];
    return std::pair(g.first + 1, g.last + 1);
  };
  size_t position = 1;
  for (Operation &op : llvm::make_pointee_range(ops_)) {
    auto [defined, used] = span(op, position);
    for (Value operand : op.getOperands())
      if (int b = infoFor(operand, &op).buffer; b >= 0)
        buffers_[b].last = std::max(buffers_[b].last, used);
    if (isa<func::ReturnOp>(op)) {
      for (Value operand : op.getOperands())
        if (int b = infoFor(operand, &op).buffer; b >= 0)
          buffers_[b].last = end;
      continue;
    }
    for (Value result : op.getResults()) {
      auto type = cast<RankedTensorType>(result.getType());
      ValueInfo info;
      FailureOr<art::ElementType> element =
          elementType(&op, type.getElementType());
      FailureOr<Leading> leading = leadingOf(op, type);
      if (failed(element) || failed(leading))
        return failure();
      info.type = *element;
      info.leading = *leading;
      info.shape = symbolicShape(type, info.leading);
      if (auto get = dyn_cast<GetParameterOp>(op)) {
        info.storage = art::Storage::Parameter;
        info.index = parameters_.lookup(get.getName());
      } else if (auto read = dyn_cast<KVReadOp>(op)) {
        info.storage = art::Storage::KvCache;
        info.index = slots_.lookup(read.getCache());
        if (std::optional<ArrayRef<int64_t>> columns = read.getColumns())
          info.column = static_cast<uint64_t>((*columns)[0]);
        // Ops other than attention read a contiguous copy.
        if (llvm::any_of(result.getUsers(),
                         [](Operation *u) { return !isa<AttentionOp>(u); })) {
          ValueInfo copy = info;
          copy.storage = art::Storage::Arena;
          copy.column = 0;
          copy.buffer = newBuffer(result, copy, defined);
          gathered_[result] = copy;
        }
      } else if (auto reshape = dyn_cast<ReshapeOp>(op)) {
        // A view: same bytes, new shape.
        const ValueInfo &input = infoFor(reshape.getInput(), &op);
        info.storage = input.storage;
        info.index = input.index;
        info.column = input.column;
        info.buffer = input.buffer;
      } else {
        info.buffer = newBuffer(result, info, defined);
      }
      values_[result] = info;
    }
    ++position;
  }
  // A GPU may run a decode step's few routed rows through the grouped GEMMs
  // straight from the dispatch's input and indices (selection order, no
  // route launch), so both live as long as the expert offsets do.
  for (Operation *op : ops_)
    if (auto dispatch = dyn_cast<MoEDispatchOp>(op)) {
      SmallVector<Operation *> readers = findRoutedReaders(dispatch);
      if (readers.empty())
        continue;
      routedReaders_[op] = std::move(readers);
      size_t last =
          buffers_[infoFor(dispatch.getExpertOffsets(), op).buffer].last;
      for (Value operand : dispatch->getOperands())
        if (int b = infoFor(operand, op).buffer; b >= 0)
          buffers_[b].last = std::max(buffers_[b].last, last);
    }
  return success();
}

SmallVector<Operation *>
EntryPlanner::findRoutedReaders(MoEDispatchOp dispatch) const {
  Value routed = dispatch.getRouted();
  auto offsetsOf = [&](Operation *op) -> Value {
    if (auto grouped = dyn_cast<GroupedLinearOp>(op))
      return resolve(grouped.getExpertOffsets());
    if (auto gated = dyn_cast<GatedLinearOp>(op))
      return gated.getExpertOffsets() ? resolve(gated.getExpertOffsets())
                                      : Value();
    return Value();
  };
  SmallVector<Operation *> readers;
  for (Operation *op : ops_) {
    bool reads = false;
    for (auto [i, operand] : llvm::enumerate(op->getOperands()))
      if (resolve(operand) == routed) {
        if (i != 0)
          return {}; // only as a GEMM's input
        reads = true;
      }
    if (!reads)
      continue;
    auto group = groupOf_.find(op);
    bool fused =
        group != groupOf_.end() && isa<FusedOp>(groups_[group->second].op);
    // A grouped GEMM of the rows this dispatch grouped.
    if (fused || offsetsOf(op) != dispatch.getExpertOffsets())
      return {};
    readers.push_back(op);
  }
  return readers;
}

void EntryPlanner::assignOffsets(art::EntryPointT &entry) {
  // Greedy first fit in definition order: a buffer may reuse the bytes of
  // any buffer whose last use came before its definition.
  std::vector<size_t> order(buffers_.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return buffers_[a].first < buffers_[b].first;
  });
  std::vector<size_t> active;
  uint64_t arena = 0;
  for (size_t id : order) {
    Buffer &buffer = buffers_[id];
    std::erase_if(active,
                  [&](size_t a) { return buffers_[a].last < buffer.first; });
    std::sort(active.begin(), active.end(), [&](size_t a, size_t b) {
      return buffers_[a].offset < buffers_[b].offset;
    });
    uint64_t candidate = 0;
    for (size_t a : active) {
      if (buffers_[a].offset >= candidate + buffer.bytes)
        break;
      candidate = std::max(candidate, buffers_[a].offset + buffers_[a].bytes);
    }
    buffer.offset = candidate;
    arena = std::max(arena, candidate + buffer.bytes);
    active.push_back(id);
  }
  entry.arena_bytes = arena;
}

std::unique_ptr<art::TensorRefT> EntryPlanner::ref(Value value,
                                                   Operation *user) const {
  return ref(infoFor(value, user));
}

std::unique_ptr<art::TensorRefT>
EntryPlanner::ref(const ValueInfo &info) const {
  auto t = std::make_unique<art::TensorRefT>();
  t->storage = info.storage;
  t->index = info.index;
  t->offset = info.buffer >= 0 ? buffers_[info.buffer].offset : info.column;
  t->type = info.type;
  t->shape = info.shape;
  return t;
}

LogicalResult EntryPlanner::addLaunch(Operation *op, art::EntryPointT &entry) {
  auto launch = std::make_unique<art::LaunchT>();
  if (auto loc = dyn_cast<NameLoc>(op->getLoc()))
    launch->name = loc.getName().str();
  for (Value operand : op->getOperands())
    launch->args.push_back(ref(operand, op));
  for (Value result : op->getResults())
    launch->args.push_back(ref(result));
  auto &ints = launch->ints;
  auto &floats = launch->floats;
  // FP8 GEMMs: the block scale follows the weight (and bias) among the
  // operands; ints gain [block rows, block cols, ue8m0 activations].
  auto fp8 = [&](std::optional<ArrayRef<int64_t>> block, bool ue8m0) {
    if (!block)
      return;
    ints.push_back((*block)[0]);
    ints.push_back((*block)[1]);
    ints.push_back(ue8m0 ? 1 : 0);
  };

  LogicalResult result =
      llvm::TypeSwitch<Operation *, LogicalResult>(op)
          .Case([&](EmbeddingOp) {
            launch->kernel = art::KernelKind::Embedding;
            return success();
          })
          .Case([&](RMSNormOp norm) {
            launch->kernel = art::KernelKind::RMSNorm;
            floats.push_back(norm.getEpsilon().convertToDouble());
            return success();
          })
          .Case([&](LinearOp linear) {
            launch->kernel = art::KernelKind::Linear;
            ints.push_back(linear.getBias() ? 1 : 0);
            fp8(linear.getBlockSize(), linear.getActUe8m0());
            return success();
          })
          .Case([&](QuantizeFp8Op quantize) {
            launch->kernel = art::KernelKind::QuantizeFp8;
            ints.push_back(quantize.getBlockCols());
            ints.push_back(quantize.getUe8m0() ? 1 : 0);
            return success();
          })
          .Case([&](HeadLinearOp head) {
            launch->kernel = art::KernelKind::HeadLinear;
            ints.push_back(head.getInputOffset().value_or(0));
            fp8(head.getBlockSize(), head.getActUe8m0());
            return success();
          })
          .Case([&](LogitsOp) {
            launch->kernel = art::KernelKind::Logits;
            return success();
          })
          .Case([&](AddOp) {
            launch->kernel = art::KernelKind::Add;
            return success();
          })
          .Case([&](SwiGLUOp) {
            launch->kernel = art::KernelKind::SwiGLU;
            return success();
          })
          .Case([&](SliceOp slice) {
            launch->kernel = art::KernelKind::Slice;
            ints.push_back(slice.getOffset());
            ints.push_back(slice.getSize());
            return success();
          })
          .Case([&](ConcatOp) {
            launch->kernel = art::KernelKind::Concat;
            return success();
          })
          .Case([&](BroadcastOp) {
            launch->kernel = art::KernelKind::Broadcast;
            return success();
          })
          .Case([&](RopeOp rope) {
            launch->kernel = art::KernelKind::Rope;
            RopeAttr a = rope.getRope();
            ints.push_back(static_cast<int64_t>(a.getKind()));
            ints.push_back(a.getOriginalMaxPosition());
            ints.push_back(a.getInterleaved() ? 1 : 0);
            for (const APFloat &f :
                 {a.getTheta(), a.getFactor(), a.getBetaFast(), a.getBetaSlow(),
                  a.getMscale(), a.getMscaleAllDim(), a.getLowFreqFactor(),
                  a.getHighFreqFactor()})
              floats.push_back(f.convertToDouble());
            return success();
          })
          .Case([&](KVAppendOp append) {
            launch->kernel = art::KernelKind::KvAppend;
            ints.push_back(slots_.lookup(append.getCache()));
            return success();
          })
          .Case([&](AttentionOp attention) {
            launch->kernel = art::KernelKind::Attention;
            floats.push_back(attention.getScale().convertToDouble());
            return success();
          })
          .Case([&](MoEGateOp gate) {
            launch->kernel = art::KernelKind::MoeGate;
            ints.push_back(static_cast<int64_t>(gate.getScoringFunc()));
            ints.push_back(static_cast<int64_t>(gate.getTopkMethod()));
            ints.push_back(gate.getTopK());
            ints.push_back(gate.getNGroup());
            ints.push_back(gate.getTopkGroup());
            ints.push_back(gate.getNormTopkProb() ? 1 : 0);
            ints.push_back(gate.getCorrectionBias() ? 1 : 0);
            floats.push_back(gate.getRoutedScalingFactor().convertToDouble());
            return success();
          })
          .Case([&](MoEDispatchOp dispatch) {
            launch->kernel = art::KernelKind::MoeDispatch;
            ints.push_back(dispatch.getNumExperts());
            // Then whether a GPU may skip the dispatch (its routed rows read
            // only by grouped GEMMs, its input and indices alive while they
            // run); plan() appends where those GEMMs are.
            ints.push_back(routedReaders_.count(dispatch) ? 1 : 0);
            return success();
          })
          .Case([&](GroupedLinearOp grouped) {
            launch->kernel = art::KernelKind::GroupedLinear;
            fp8(grouped.getBlockSize(), grouped.getActUe8m0());
            return success();
          })
          .Case([&](GatedLinearOp gated) {
            launch->kernel = art::KernelKind::GatedLinear;
            ints.push_back(gated.getExpertOffsets() ? 1 : 0);
            fp8(gated.getBlockSize(), gated.getActUe8m0());
            return success();
          })
          .Case([&](MoECombineOp) {
            launch->kernel = art::KernelKind::MoeCombine;
            return success();
          })
          .Default([&](Operation *other) {
            return other->emitOpError("has no runtime kernel");
          });
  if (failed(result))
    return failure();
  entry.launches.push_back(std::move(launch));
  return success();
}

LogicalResult EntryPlanner::plan(art::EntryPointT &entry) {
  flatten();
  if (failed(assignValues()))
    return failure();
  assignOffsets(entry);
  Block &body = func_.getBody().front();
  entry.tokens = ref(body.getArgument(0));
  entry.positions = ref(body.getArgument(1));
  entry.kv_lengths = ref(body.getArgument(2));
  entry.logits = ref(body.getTerminator()->getOperand(0));
  if (cacheRows_)
    entry.cache_rows = ref(*cacheRows_);
  llvm::DenseMap<Operation *, uint32_t> launchOf;
  // Each group's launches, [first, end), from its first member on.
  std::vector<std::optional<std::pair<uint32_t, uint32_t>>> spans(
      groups_.size());
  for (Operation &op : llvm::make_pointee_range(ops_)) {
    auto it = groupOf_.find(&op);
    if (it != groupOf_.end() && !spans[it->second]) {
      auto at = static_cast<uint32_t>(entry.launches.size());
      spans[it->second] = {at, at};
    }
    if (auto read = dyn_cast<KVReadOp>(op); read && gathered_.count(read)) {
      auto gather = std::make_unique<art::LaunchT>();
      gather->kernel = art::KernelKind::KvGather;
      gather->name = "kv_gather " + read.getCache().str();
      // From the cache view to the copy that non-attention users read.
      gather->args.push_back(ref(read));
      gather->args.push_back(ref(read, /*user=*/read));
      entry.launches.push_back(std::move(gather));
      continue;
    }
    if (isa<GetParameterOp, KVReadOp, ReshapeOp, func::ReturnOp>(op))
      continue;
    if (failed(addLaunch(&op, entry)))
      return failure();
    launchOf[&op] = static_cast<uint32_t>(entry.launches.size() - 1);
    if (it != groupOf_.end())
      spans[it->second]->second = static_cast<uint32_t>(entry.launches.size());
  }
  // Each skippable dispatch's ints end with the launches that read its
  // routed rows, as distances after the dispatch's own.
  for (auto &[dispatch, readers] : routedReaders_)
    for (Operation *reader : readers)
      entry.launches[launchOf.at(dispatch)]->ints.push_back(
          launchOf.at(reader) - launchOf.at(dispatch));
  for (auto [group, span] : llvm::zip_equal(groups_, spans)) {
    auto [first, end] = span.value_or(std::pair<uint32_t, uint32_t>());
    if (end == first)
      continue;
    if (auto fusedOp = dyn_cast<FusedOp>(group.op)) {
      auto fused = std::make_unique<art::FusedLaunchT>();
      fused->kernel = fusedOp.getName().str();
      fused->first = first;
      fused->count = end - first;
      for (Value input : fusedOp.getInputs())
        fused->args.push_back(ref(input, fusedOp));
      for (auto append : fusedOp.getBody().getOps<KVAppendOp>()) {
        fused->args.push_back(ref(*cacheRows_));
        ValueInfo slot;
        slot.storage = art::Storage::KvRows;
        slot.index = slots_.lookup(append.getCache());
        // A packed slot's rows are its stored bytes (typed e4m3, its
        // narrowest element).
        auto cache = SymbolTable::lookupNearestSymbolFrom<KVCacheOp>(
            append, append.getCacheAttr());
        if (cache && cache.getStorage())
          slot.type = art::ElementType::F8E4M3;
        slot.shape = symbolicShape(
            cast<RankedTensorType>(append.getValue().getType()), {});
        slot.shape.erase(slot.shape.begin(), slot.shape.begin() + 2);
        fused->args.push_back(ref(slot));
      }
      for (Value result : fusedOp.getResults())
        fused->args.push_back(ref(result));
      entry.fused.push_back(std::move(fused));
    } else {
      auto linears = std::make_unique<art::LinearGroupT>();
      linears->first = first;
      linears->count = end - first;
      entry.linear_groups.push_back(std::move(linears));
    }
  }
  return success();
}

/// How an entry function's attention was compiled, for `kiln inspect`.
std::string describeAttention(func::FuncOp func) {
  std::string form;
  func.walk([&](AttentionOp attention) {
    if (auto mla = attention->getAttrOfType<StringAttr>("kiln.mla"))
      form = "mla " + mla.str() + ", latent cache";
  });
  if (!form.empty())
    return form;
  if (auto choice = func->getAttrOfType<DictionaryAttr>("kiln.mla"))
    if (auto mode = choice.getAs<StringAttr>("mode"))
      return "mla " + mode.str() + ", per-head k/v cache";
  return "standard, per-head k/v cache";
}

int64_t intAttr(DictionaryAttr dict, StringRef name) {
  auto attr = dict ? dict.getAs<IntegerAttr>(name) : IntegerAttr();
  return attr ? attr.getInt() : 0;
}

} // namespace

FailureOr<std::unique_ptr<art::ModelT>> buildPlan(ModuleOp module,
                                                  const PlanOptions &options) {
  // Each entry point runs @prefill / @decode when a pass split them (e.g.
  // MLA absorption choosing per entry point), else @forward.
  auto entryFunction = [&](StringRef name) {
    auto func = module.lookupSymbol<func::FuncOp>(name);
    return func ? func : module.lookupSymbol<func::FuncOp>("forward");
  };
  func::FuncOp prefillFn = entryFunction("prefill");
  func::FuncOp decodeFn = entryFunction("decode");
  for (func::FuncOp fn : {prefillFn, decodeFn})
    if (!fn || fn.getNumArguments() != 3 || fn.getNumResults() < 1)
      return module.emitError("expected @forward (or @prefill and @decode) "
                              "taking (tokens, positions, kv_lengths) and "
                              "returning (logits, ...)");
  if (!options.maxBatch || !options.maxPrefill || !options.maxContext ||
      options.maxPrefillBatch > options.maxBatch ||
      options.maxPrefill > options.maxContext)
    return module.emitError("plan bounds need 0 < max-prefill <= "
                            "max-context and max-batch > 0");

  // Only what the entry points use goes into the artifact (not, e.g., the
  // MTP module's weights, which no entry point runs yet).
  llvm::StringSet<> used;
  for (func::FuncOp fn : {prefillFn, decodeFn})
    fn.walk([&](Operation *op) {
      if (auto get = dyn_cast<GetParameterOp>(op))
        used.insert(get.getName());
      else if (auto append = dyn_cast<KVAppendOp>(op))
        used.insert(append.getCache());
    });

  auto model = std::make_unique<art::ModelT>();
  llvm::StringMap<uint32_t> parameters, slots;
  for (Operation &op : module.getBody()->getOperations()) {
    auto symbol = dyn_cast<SymbolOpInterface>(op);
    if (!symbol || !used.contains(symbol.getName()))
      continue;
    if (auto param = dyn_cast<ParameterOp>(op)) {
      auto p = std::make_unique<art::ParameterT>();
      p->name = param.getSymName().str();
      FailureOr<art::ElementType> type =
          elementType(param, param.getTensorType().getElementType());
      if (failed(type))
        return failure();
      p->type = *type;
      p->shape.assign(param.getTensorType().getShape().begin(),
                      param.getTensorType().getShape().end());
      p->bytes = elementBytes(p->type) *
                 static_cast<uint64_t>(param.getTensorType().getNumElements());
      if (HeadSliceAttr slice = param.getTransformAttr()) {
        p->transform = std::make_unique<art::HeadSliceT>();
        p->transform->heads = slice.getHeads();
        p->transform->rows = slice.getRows();
        p->transform->offset = slice.getOffset();
        p->transform->size = slice.getSize();
        p->transform->transpose = slice.getTranspose();
      }
      if (Fp8QuantAttr quant = param.getQuantizeAttr()) {
        p->quantize = std::make_unique<art::Fp8QuantT>();
        p->quantize->block_rows = quant.getBlockRows();
        p->quantize->block_cols = quant.getBlockCols();
        p->quantize->scale = quant.getScale();
        p->quantize->ue8m0 = quant.getUe8m0();
      }
      parameters[p->name] = model->parameters.size();
      model->parameters.push_back(std::move(p));
    } else if (auto slot = dyn_cast<KVCacheOp>(op)) {
      auto s = std::make_unique<art::KvSlotT>();
      s->name = slot.getSymName().str();
      FailureOr<art::ElementType> type =
          elementType(slot, slot.getEntryTensorType().getElementType());
      if (failed(type))
        return failure();
      if (*type != art::ElementType::F32)
        return slot.emitOpError("the runtime's KV cache holds f32 entries; "
                                "compile with f32 activations");
      s->type = *type;
      if (PackedCacheAttr storage = slot.getStorageAttr()) {
        s->packed = true;
        s->fp8_columns = storage.getFp8Columns();
      }
      s->entry_shape.assign(slot.getEntryTensorType().getShape().begin(),
                            slot.getEntryTensorType().getShape().end());
      slots[s->name] = model->kv_slots.size();
      model->kv_slots.push_back(std::move(s));
    }
  }

  // Activations are f32 in the CPU runtime.
  auto walkEntries = [&](auto callback) {
    for (func::FuncOp fn : {prefillFn, decodeFn})
      if (fn.walk(callback).wasInterrupted())
        return true;
    return false;
  };
  bool bf16 = walkEntries([&](Operation *op) {
    for (Type t : op->getResultTypes())
      if (auto tensor = dyn_cast<RankedTensorType>(t);
          tensor && tensor.getElementType().isBF16() &&
          !isa<GetParameterOp>(op)) {
        op->emitOpError("produces bf16 activations; the runtime executes "
                        "f32 activations (--activation-dtype f32)");
        return WalkResult::interrupt();
      }
    return WalkResult::advance();
  });
  if (bf16)
    return failure();

  uint32_t topK = 0;
  walkEntries([&](MoEGateOp gate) {
    topK = std::max<uint32_t>(topK, gate.getTopK());
    return WalkResult::advance();
  });
  if (walkEntries([&](MoEGateOp gate) {
        if (gate.getTopK() == topK)
          return WalkResult::advance();
        gate.emitOpError("top_k differs from other MoE layers (")
            << topK << ")";
        return WalkResult::interrupt();
      }))
    return failure();

  auto info = module->getAttrOfType<DictionaryAttr>("kiln.model");
  if (auto arch = info ? info.getAs<StringAttr>("architecture") : StringAttr())
    model->architecture = arch.str();
  model->vocab_size = intAttr(info, "vocab_size");
  model->hidden_size = intAttr(info, "hidden_size");
  model->num_layers = intAttr(info, "num_hidden_layers");
  model->max_context = options.maxContext;
  model->moe_top_k = topK;

  struct EntrySpec {
    const char *name;
    uint32_t batch, seq;
    func::FuncOp func;
  };
  uint32_t prefillBatch =
      options.maxPrefillBatch ? options.maxPrefillBatch : options.maxBatch;
  for (EntrySpec spec :
       {EntrySpec{"prefill", prefillBatch, options.maxPrefill, prefillFn},
        EntrySpec{"decode", options.maxBatch, 1u, decodeFn}}) {
    auto entry = std::make_unique<art::EntryPointT>();
    entry->name = spec.name;
    entry->attention = describeAttention(spec.func);
    entry->max_batch = spec.batch;
    entry->max_seq = spec.seq;
    Bounds bounds{spec.batch, spec.seq, options.maxContext,
                  uint64_t{spec.batch} * spec.seq * topK};
    EntryPlanner planner(spec.func, bounds, parameters, slots);
    if (failed(planner.plan(*entry)))
      return failure();
    model->entry_points.push_back(std::move(entry));
  }
  return model;
}

} // namespace kiln::codegen
