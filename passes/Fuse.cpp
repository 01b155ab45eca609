//===- Fuse.cpp - row-local op chains into fused kernels ------------------===//
//
// Groups chains of row-local ops (norms, residual adds, SwiGLU, RoPE, MoE
// routing and the slices, concats, broadcasts and reshapes between them)
// into `kiln.fused` ops, one kernel each. The rules and the cost measure are
// in the pass description (Passes.td).
//
//===----------------------------------------------------------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

#include <map>
#include <set>
#include <tuple>

namespace mlir::kiln {
#define GEN_PASS_DEF_KILNFUSE
#include "passes/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// Fused kernels compute in fp32 whatever the activation type.
constexpr int64_t kOnChipElementBytes = 4;

/// A tensor's shape as fusion sees it: the leading dynamic dimensions index
/// tokens (or cached positions, or routed rows), the static rest holds
/// `perToken` elements in rows of the last dimension (`row` elements; one
/// per token when every dimension is dynamic).
struct Rows {
  size_t leading = 0;
  int64_t perToken = 1;
  int64_t row = 1;
};

std::optional<Rows> rowsOf(Type type) {
  auto tensor = dyn_cast<RankedTensorType>(type);
  if (!tensor)
    return std::nullopt;
  ArrayRef<int64_t> shape = tensor.getShape();
  Rows rows;
  while (rows.leading < shape.size() &&
         ShapedType::isDynamic(shape[rows.leading]))
    ++rows.leading;
  for (int64_t d : shape.drop_front(rows.leading)) {
    if (ShapedType::isDynamic(d))
      return std::nullopt;
    rows.perToken *= d;
    rows.row = d;
  }
  return rows;
}

/// Bytes one token of `value` takes in memory.
int64_t tokenBytes(Value value) {
  Type element = getElementTypeOrSelf(value.getType());
  return rowsOf(value.getType())->perToken * element.getIntOrFloatBitWidth() /
         8;
}

/// The widest row (in elements) `op` reads or writes, or nullopt when `op`
/// may not be fused: it must be a kind a fused body holds, its results and
/// its operands with dynamic dimensions must share the same token
/// dimensions (but those it reads as indexed rows), and its other operands
/// must be fully static (weights, which every row reads whole).
std::optional<int64_t> rowElements(Operation *op) {
  if (!FusedOp::canContain(op) || op->getNumResults() == 0)
    return std::nullopt;
  std::optional<Rows> first = rowsOf(op->getResult(0).getType());
  if (!first || first->leading == 0)
    return std::nullopt;
  int64_t widest = 0;
  for (Value result : op->getResults()) {
    std::optional<Rows> rows = rowsOf(result.getType());
    if (!rows || rows->leading != first->leading)
      return std::nullopt;
    widest = std::max(widest, rows->row);
  }
  for (OpOperand &use : op->getOpOperands()) {
    std::optional<Rows> rows = rowsOf(use.get().getType());
    if (!rows)
      return std::nullopt;
    if (FusedOp::readsIndexedRows(use))
      continue;
    if (rows->leading != 0 && rows->leading != first->leading)
      return std::nullopt;
    if (rows->leading != 0)
      widest = std::max(widest, rows->row);
  }
  return widest;
}

/// The activation quantization an FP8 GEMM applies to `value` when it is
/// the GEMM's input, looking through reshapes (views), as "fp8 1x<cols>"
/// (" ue8m0" with power-of-two scales).
void collectFp8Quantization(Value value, std::set<std::string> &out) {
  for (OpOperand &use : value.getUses()) {
    Operation *user = use.getOwner();
    if (auto reshape = dyn_cast<ReshapeOp>(user)) {
      collectFp8Quantization(reshape.getResult(), out);
      continue;
    }
    if (use.getOperandNumber() != 0)
      continue;
    auto quant =
        llvm::TypeSwitch<Operation *,
                         std::pair<std::optional<ArrayRef<int64_t>>, bool>>(
            user)
            .Case<LinearOp, HeadLinearOp, GroupedLinearOp, GatedLinearOp>(
                [](auto gemm) {
                  return std::make_pair(gemm.getBlockSize(),
                                        gemm.getActUe8m0());
                })
            .Default([](Operation *) {
              return std::make_pair(std::optional<ArrayRef<int64_t>>(), false);
            });
    if (quant.first)
      out.insert(llvm::formatv("fp8 1x{0}{1}", (*quant.first)[1],
                               quant.second ? " ue8m0" : "")
                     .str());
  }
}

/// Bytes a token's results of `op` would take in a fused kernel's scratch
/// row: fp32 elements, each value in a 16-byte aligned slot (as the
/// generated kernels lay it out).
int64_t scratchBytes(Operation *op) {
  if (isa<ReshapeOp>(op)) // a view
    return 0;
  int64_t bytes = 0;
  for (Value result : op->getResults())
    bytes +=
        (rowsOf(result.getType())->perToken + 3) / 4 * 4 * kOnChipElementBytes;
  return bytes;
}

/// A `kiln.fused` op named `name` over `inputs` at `b`'s insertion point,
/// described by `fusion`, with an entry block whose arguments stand for the
/// inputs; `b` is left at the start of that block.
FusedOp createFused(OpBuilder &b, Location loc, TypeRange results,
                    StringRef name, ArrayRef<Value> inputs,
                    DictionaryAttr fusion) {
  auto fused = b.create<FusedOp>(loc, results, name, inputs);
  fused->setAttr("kiln.fusion", fusion);
  SmallVector<Location> argLocs;
  for (Value input : inputs)
    argLocs.push_back(input.getLoc());
  b.createBlock(&fused.getBody(), {}, ValueRange(inputs).getTypes(), argLocs);
  return fused;
}

struct Group {
  SmallVector<Operation *> members;
  /// The latest member in block order, where the fused op goes.
  Operation *last;
  int64_t rowElements;
  /// The members' scratchBytes but the first's (whose results the kernel
  /// writes to memory: the group seeds at an op with users after it): an
  /// upper bound of the kernel's scratch row.
  int64_t scratchBytes = 0;
};

class BlockFuser {
public:
  BlockFuser(Block &block, int64_t rowBytesBudget)
      : block_(block), budget_(rowBytesBudget) {}

  /// Forms the groups of `block_`, latest op first, each growing upwards
  /// through its members' producers.
  void formGroups() {
    for (auto [i, op] : llvm::enumerate(block_))
      position_[&op] = i;
    for (Operation &op : llvm::reverse(block_)) {
      // A reshape is a view: a group ending in one would copy it.
      if (groupOf_.count(&op) || isa<ReshapeOp>(op))
        continue;
      std::optional<int64_t> width = rowElements(&op);
      if (!width || *width * kOnChipElementBytes > budget_)
        continue;
      size_t id = groups_.size();
      groups_.push_back({{&op}, &op, *width, 0});
      groupOf_[&op] = id;
      SmallVector<Operation *> worklist{&op};
      while (!worklist.empty()) {
        Operation *member = worklist.pop_back_val();
        for (OpOperand &use : member->getOpOperands()) {
          Operation *producer = use.get().getDefiningOp();
          if (!producer || producer->getBlock() != &block_ ||
              FusedOp::readsIndexedRows(use) || groupOf_.count(producer) ||
              !canJoin(producer, id))
            continue;
          Group &group = groups_[id];
          group.members.push_back(producer);
          group.rowElements =
              std::max(group.rowElements, *rowElements(producer));
          group.scratchBytes += scratchBytes(producer);
          groupOf_[producer] = id;
          worklist.push_back(producer);
        }
      }
    }
  }

  /// Replaces every group worth a kernel by a `kiln.fused` op, in block
  /// order, naming them from `counter` on.
  void materialize(unsigned &counter) {
    for (Group &group : llvm::reverse(groups_)) {
      llvm::sort(group.members, [&](Operation *a, Operation *b) {
        return position_.lookup(a) < position_.lookup(b);
      });
      if (DictionaryAttr fusion = describe(group))
        replace(group, counter++, fusion);
    }
  }

private:
  bool inGroup(Operation *op, size_t id) const {
    auto it = groupOf_.find(op);
    return it != groupOf_.end() && it->second == id;
  }

  /// Whether `producer` may join group `id`: it is row-local, the group's
  /// widest row and its scratch row stay within the budget, and every use
  /// outside the group
  /// comes after the group's last op (the fused op takes that op's place,
  /// so no op moves; an op that consumed a group value and fed the group —
  /// a cycle — would come before it). A reshape joins only when all its uses
  /// are in the group: outside users read its input for free.
  bool canJoin(Operation *producer, size_t id) const {
    const Group &group = groups_[id];
    std::optional<int64_t> width = rowElements(producer);
    if (!width ||
        std::max(group.rowElements, *width) * kOnChipElementBytes > budget_ ||
        group.scratchBytes + scratchBytes(producer) > budget_)
      return false;
    size_t last = position_.lookup(group.last);
    for (Operation *user : producer->getUsers()) {
      if (inGroup(user, id))
        continue;
      Operation *outside = block_.findAncestorOpInBlock(*user);
      if (isa<ReshapeOp>(producer) || !outside ||
          position_.lookup(outside) <= last)
        return false;
    }
    return true;
  }

  /// Whether the fused kernel holds `value` on chip rather than reading it
  /// from memory: a member computes it (a reshape only re-labels its input).
  bool onChip(Value value, size_t id) const {
    Operation *producer = value.getDefiningOp();
    if (!producer || !inGroup(producer, id))
      return false;
    if (auto reshape = dyn_cast<ReshapeOp>(producer))
      return onChip(reshape.getInput(), id);
    return true;
  }

  /// `kiln.fusion` for a group worth a kernel, else null: a group needs two
  /// ops that compute (reshapes are views), or one whose result an FP8 GEMM
  /// quantizes (the kernel then does that too).
  DictionaryAttr describe(const Group &group) const {
    size_t id = groupOf_.lookup(group.last);
    // Per token: the writes of values no one outside reads, and every read
    // of a value a member computed, which unfused kernels would make.
    int64_t saved = 0;
    std::set<std::string> quantizes;
    for (Operation *member : group.members) {
      for (Value result : member->getResults()) {
        bool yielded = llvm::any_of(result.getUsers(), [&](Operation *user) {
          return !inGroup(user, id);
        });
        if (yielded)
          collectFp8Quantization(result, quantizes);
        else if (!isa<ReshapeOp>(member))
          saved += tokenBytes(result);
      }
      if (isa<ReshapeOp>(member))
        continue;
      for (Value operand : member->getOperands())
        if (onChip(operand, id))
          saved += isa<SliceOp>(member) ? tokenBytes(member->getResult(0))
                                        : tokenBytes(operand);
    }
    size_t computing = llvm::count_if(
        group.members, [](Operation *op) { return !isa<ReshapeOp>(op); });
    if (computing < 2 && quantizes.empty())
      return nullptr;
    Builder b(block_.getParentOp()->getContext());
    SmallVector<NamedAttribute> fields{
        b.getNamedAttr("kind", b.getStringAttr("row")),
        b.getNamedAttr("row_bytes", b.getI64IntegerAttr(group.rowElements *
                                                        kOnChipElementBytes)),
        b.getNamedAttr("saved_bytes", b.getI64IntegerAttr(saved)),
    };
    if (!quantizes.empty()) {
      SmallVector<Attribute> names;
      for (const std::string &q : quantizes)
        names.push_back(b.getStringAttr(q));
      fields.push_back(b.getNamedAttr("quantizes_for", b.getArrayAttr(names)));
    }
    return b.getDictionaryAttr(fields);
  }

  void replace(const Group &group, unsigned index, DictionaryAttr fusion) {
    llvm::SmallPtrSet<Operation *, 8> members(group.members.begin(),
                                              group.members.end());
    llvm::SetVector<Value> inputs;
    SmallVector<Value> yielded;
    SmallVector<Location> locs;
    std::string name = llvm::formatv("fused_{0}", index).str();
    llvm::SetVector<StringRef> kinds;
    for (Operation *member : group.members) {
      for (Value operand : member->getOperands())
        if (!members.contains(operand.getDefiningOp()))
          inputs.insert(operand);
      for (Value result : member->getResults())
        if (llvm::any_of(result.getUsers(), [&](Operation *user) {
              return !members.contains(user);
            }))
          yielded.push_back(result);
      locs.push_back(member->getLoc());
      kinds.insert(member->getName().stripDialect());
    }
    for (StringRef kind : kinds)
      name += ("_" + kind).str();

    OpBuilder b(group.last);
    FusedOp fused =
        createFused(b, b.getFusedLoc(locs), ValueRange(yielded).getTypes(),
                    name, inputs.getArrayRef(), fusion);
    Block *body = &fused.getBody().front();
    IRMapping mapping;
    mapping.map(inputs.getArrayRef(), body->getArguments());
    for (Operation *member : group.members)
      b.clone(*member, mapping);
    SmallVector<Value> results;
    for (Value value : yielded)
      results.push_back(mapping.lookup(value));
    b.create<YieldOp>(fused.getLoc(), results);

    for (auto [value, result] : llvm::zip_equal(yielded, fused.getResults()))
      value.replaceUsesWithIf(result, [&](OpOperand &use) {
        return !members.contains(use.getOwner());
      });
    for (Operation *member : llvm::reverse(group.members)) {
      // New ops may reuse the address.
      groupOf_.erase(member);
      member->erase();
    }
  }

  Block &block_;
  int64_t budget_;
  llvm::DenseMap<Operation *, size_t> position_;
  llvm::DenseMap<Operation *, size_t> groupOf_;
  SmallVector<Group> groups_;
};

/// Ops whose results index the same tokens as their first operand with as
/// many leading dynamic dimensions: GEMMs over tokens, attention (its
/// queries'), reshapes and fused or fusable row-local ops.
bool keepsTokens(Operation *op) {
  if (auto gated = dyn_cast<GatedLinearOp>(op))
    return !gated.getExpertOffsets();
  return isa<FusedOp, LinearGroupOp, LinearOp, HeadLinearOp, AttentionOp>(op) ||
         FusedOp::canContain(op);
}

/// Where `value`'s `leading` (token) dimensions come from: followed back
/// through ops that keep them to a function argument or an op that makes
/// them (a dispatch's routed rows, a cache read's positions). Two values of
/// one origin index the same rows.
Value tokenOrigin(Value value, size_t leading) {
  while (Operation *def = value.getDefiningOp()) {
    if (!keepsTokens(def))
      break;
    Value next;
    for (OpOperand &use : def->getOpOperands()) {
      std::optional<Rows> rows = rowsOf(use.get().getType());
      if (rows && rows->leading == leading && !FusedOp::readsIndexedRows(use)) {
        next = use.get();
        break;
      }
    }
    if (!next)
      break;
    value = next;
  }
  return value;
}

/// The token origins of `fused`'s inputs with `leading` dynamic dimensions.
llvm::SmallPtrSet<Value, 4> tokenOrigins(FusedOp fused, size_t leading) {
  llvm::SmallPtrSet<Value, 4> origins;
  for (Value input : fused.getInputs())
    if (std::optional<Rows> rows = rowsOf(input.getType());
        rows && rows->leading == leading)
      origins.insert(tokenOrigin(input, leading));
  return origins;
}

/// Leading dynamic dimensions of `fused`'s rows (those of its results);
/// none when its results do not all have the same rows.
std::optional<size_t> leadingDims(FusedOp fused) {
  std::optional<size_t> leading;
  for (Type type : fused->getResultTypes()) {
    std::optional<Rows> rows = rowsOf(type);
    if (!rows || rows->leading == 0 || (leading && *leading != rows->leading))
      return std::nullopt;
    leading = rows->leading;
  }
  return leading;
}

/// Scratch bytes per token `fused`'s kernel keeps for values it does not
/// yield (fp32, 16-byte slots), as kiln-fuse bounds a group's.
int64_t bodyScratchBytes(FusedOp fused) {
  Block &body = fused.getBody().front();
  llvm::SmallPtrSet<Value, 8> yielded;
  for (Value v : body.getTerminator()->getOperands())
    yielded.insert(v);
  int64_t bytes = 0;
  for (Operation &op : body.without_terminator()) {
    if (isa<ReshapeOp>(op))
      continue;
    for (Value result : op.getResults())
      if (std::optional<Rows> rows = rowsOf(result.getType());
          rows && !yielded.contains(result))
        bytes += (rows->perToken + 3) / 4 * 4 * kOnChipElementBytes;
  }
  return bytes;
}

/// Fused kernels this many ops apart or more are not merged.
constexpr size_t kHorizontalLookahead = 32;

/// Merges `later` into `earlier` when they can run as one kernel
/// (kiln-fuse's horizontal step, Passes.td): their rows index the same
/// tokens, `later` reads nothing computed from `earlier`, the ops between
/// them that `later` needs are free of memory effects (they move up before
/// `earlier`), and the merged scratch row stays within `budget`. Returns
/// the merged op, or null.
FusedOp mergeHorizontally(FusedOp earlier, FusedOp later, int64_t budget,
                          unsigned index) {
  std::optional<size_t> leading = leadingDims(earlier);
  // `later`'s body moves up to `earlier`: a cache write in it would move
  // across whatever lies between.
  if (!leading || leadingDims(later) != leading || !isMemoryEffectFree(later))
    return nullptr;
  llvm::SmallPtrSet<Value, 4> origins = tokenOrigins(earlier, *leading);
  if (llvm::none_of(tokenOrigins(later, *leading),
                    [&](Value origin) { return origins.contains(origin); }))
    return nullptr;
  int64_t rowBytes = 0, saved = 0;
  int64_t chains = 0;
  for (FusedOp op : {earlier, later}) {
    // Only kernels this pass described (hand-written ones keep their own).
    auto fusion = op->getAttrOfType<DictionaryAttr>("kiln.fusion");
    auto row = fusion ? fusion.getAs<IntegerAttr>("row_bytes") : nullptr;
    auto savedBytes =
        fusion ? fusion.getAs<IntegerAttr>("saved_bytes") : nullptr;
    if (!row || !savedBytes)
      return nullptr;
    rowBytes = std::max(rowBytes, row.getInt());
    saved += savedBytes.getInt();
    auto merged = fusion.getAs<IntegerAttr>("chains");
    chains += merged ? merged.getInt() : 1;
  }
  if (bodyScratchBytes(earlier) + bodyScratchBytes(later) > budget)
    return nullptr;

  // The ops between them: those computed from `earlier`, and those `later`
  // needs (which move up).
  llvm::SmallPtrSet<Operation *, 16> fromEarlier{earlier}, needed;
  SmallVector<Operation *> between;
  for (Operation *op = earlier->getNextNode(); op != later;
       op = op->getNextNode()) {
    if (!op || between.size() >= kHorizontalLookahead)
      return nullptr;
    between.push_back(op);
    for (Value operand : op->getOperands())
      if (Operation *def = operand.getDefiningOp();
          def && fromEarlier.contains(def)) {
        fromEarlier.insert(op);
        break;
      }
  }
  SmallVector<Operation *> worklist{later};
  while (!worklist.empty()) {
    Operation *op = worklist.pop_back_val();
    for (Value operand : op->getOperands()) {
      Operation *def = operand.getDefiningOp();
      if (!def || def->getBlock() != earlier->getBlock() ||
          def->isBeforeInBlock(earlier) || needed.contains(def))
        continue;
      if (fromEarlier.contains(def) || !isMemoryEffectFree(def))
        return nullptr;
      needed.insert(def);
      worklist.push_back(def);
    }
  }
  for (Operation *op : between)
    if (needed.contains(op))
      op->moveBefore(earlier);

  llvm::SetVector<Value> inputs;
  inputs.insert(earlier.getInputs().begin(), earlier.getInputs().end());
  inputs.insert(later.getInputs().begin(), later.getInputs().end());
  SmallVector<Type> types(earlier->getResultTypes());
  types.append(later->getResultTypes().begin(), later->getResultTypes().end());
  // "fused_<n>_<kinds>" -> "<kinds>".
  auto kinds = [](FusedOp op) {
    return op.getName().split('_').second.split('_').second;
  };
  std::string name = llvm::formatv("fused_{0}_{1}_and_{2}", index,
                                   kinds(earlier), kinds(later))
                         .str();
  OpBuilder b(earlier);
  NamedAttrList fusion(
      earlier->getAttrOfType<DictionaryAttr>("kiln.fusion").getValue());
  fusion.set("row_bytes", b.getI64IntegerAttr(rowBytes));
  fusion.set("saved_bytes", b.getI64IntegerAttr(saved));
  fusion.set("chains", b.getI64IntegerAttr(chains));
  FusedOp merged = createFused(
      b, b.getFusedLoc({earlier.getLoc(), later.getLoc()}), types, name,
      inputs.getArrayRef(), fusion.getDictionary(b.getContext()));
  Block *body = &merged.getBody().front();
  llvm::DenseMap<Value, unsigned> position;
  for (auto [i, input] : llvm::enumerate(inputs))
    position[input] = static_cast<unsigned>(i);
  SmallVector<Value> results;
  for (FusedOp op : {earlier, later}) {
    Block &from = op.getBody().front();
    IRMapping mapping;
    for (auto [arg, input] :
         llvm::zip_equal(from.getArguments(), op.getInputs()))
      mapping.map(arg, body->getArgument(position.lookup(input)));
    for (Operation &inner : from.without_terminator())
      b.clone(inner, mapping);
    for (Value v : from.getTerminator()->getOperands())
      results.push_back(mapping.lookup(v));
  }
  b.create<YieldOp>(merged.getLoc(), results);
  unsigned at = 0;
  for (FusedOp op : {earlier, later})
    for (Value result : op->getResults())
      result.replaceAllUsesWith(merged->getResult(at++));
  later.erase();
  earlier.erase();
  return merged;
}

/// Merges the block's fused kernels horizontally, each with the next one
/// after it while they merge.
void mergeHorizontally(Block &block, unsigned &counter, int64_t budget) {
  auto nextFused = [](Operation *op) -> FusedOp {
    for (op = op->getNextNode(); op; op = op->getNextNode())
      if (auto fused = dyn_cast<FusedOp>(op))
        return fused;
    return nullptr;
  };
  FusedOp current;
  for (Operation &op : block)
    if ((current = dyn_cast<FusedOp>(op)))
      break;
  while (current) {
    FusedOp next = nextFused(current);
    if (!next)
      return;
    if (FusedOp merged = mergeHorizontally(current, next, budget, counter)) {
      ++counter;
      current = merged;
    } else {
      current = next;
    }
  }
}

/// Whether `op` may read or write the KV cache (or has effects it does not
/// declare): a cache write does not move across it.
bool mayTouchCache(Operation *op) {
  std::optional<SmallVector<MemoryEffects::EffectInstance>> effects =
      getEffectsRecursively(op);
  if (!effects)
    return true;
  return llvm::any_of(*effects, [](const MemoryEffects::EffectInstance &e) {
    return e.getResource() == KVCacheResource::get();
  });
}

/// The `kiln.kv_append`s of `fused`'s results that its kernel can do: the
/// row goes to the cache from on chip (quantized there for an FP8 slot),
/// and the append's launch (and its read of the row) goes. The append must
/// store a whole result of the kernel's [batch, seq] rows (or a view of
/// one), its positions must exist at the kernel, and no op between the kernel
/// and the append may touch the cache, as the write moves up to the kernel. A
/// result only such appends read is no longer yielded while the scratch row
/// stays within `budget` and the kernel keeps a result (whose rows give its
/// token count).
void storeCacheRowsInKernel(FusedOp fused, int64_t budget) {
  // Only kernels this pass described (hand-written ones keep their own).
  auto described = fused->getAttrOfType<DictionaryAttr>("kiln.fusion");
  if (!described || !described.getAs<IntegerAttr>("saved_bytes"))
    return;
  Block *block = fused->getBlock();
  struct Write {
    KVAppendOp append;
    unsigned result;
    ReshapeOp view; // between the result and the append, if any
  };
  SmallVector<Write> writes;
  auto consider = [&](KVAppendOp append, unsigned result, ReshapeOp view) {
    if (append->getBlock() != block)
      return;
    if (!SymbolTable::lookupNearestSymbolFrom<KVCacheOp>(append,
                                                         append.getCacheAttr()))
      return;
    Value positions = append.getPositions();
    Operation *def = positions.getDefiningOp();
    if (def ? def->getBlock() != block || !def->isBeforeInBlock(fused)
            : cast<BlockArgument>(positions).getOwner() != block)
      return;
    for (Operation *op = fused->getNextNode(); op != append.getOperation();
         op = op->getNextNode())
      if (mayTouchCache(op))
        return;
    writes.push_back({append, result, view});
  };
  for (auto [j, result] : llvm::enumerate(fused.getResults())) {
    std::optional<Rows> rows = rowsOf(result.getType());
    if (!rows || rows->leading != 2)
      continue;
    for (Operation *user : result.getUsers()) {
      if (auto append = dyn_cast<KVAppendOp>(user);
          append && append.getValue() == result)
        consider(append, static_cast<unsigned>(j), nullptr);
      if (auto view = dyn_cast<ReshapeOp>(user))
        for (Operation *viewUser : view->getUsers())
          if (auto append = dyn_cast<KVAppendOp>(viewUser);
              append && append.getValue() == view.getResult())
            consider(append, static_cast<unsigned>(j), view);
    }
  }
  if (writes.empty())
    return;

  // What goes from outside the kernel: the appends, and the views only
  // they read.
  llvm::SmallPtrSet<Operation *, 4> moved;
  for (Write &w : writes)
    moved.insert(w.append);
  auto isMoved = [&](Operation *user) {
    return moved.contains(user) ||
           (isa<ReshapeOp>(user) &&
            llvm::all_of(user->getUsers(), [&](Operation *viewUser) {
              return moved.contains(viewUser);
            }));
  };
  SmallVector<unsigned> kept, dropped;
  for (auto [j, result] : llvm::enumerate(fused.getResults()))
    (llvm::all_of(result.getUsers(), isMoved) ? dropped : kept)
        .push_back(static_cast<unsigned>(j));
  int64_t scratch = bodyScratchBytes(fused);
  for (unsigned j : dropped)
    scratch += (rowsOf(fused.getResult(j).getType())->perToken + 3) / 4 * 4 *
               kOnChipElementBytes;
  if (kept.empty() || scratch > budget) {
    kept.clear();
    dropped.clear();
    for (unsigned j = 0; j < fused.getNumResults(); ++j)
      kept.push_back(j);
  }

  Block &body = fused.getBody().front();
  auto yield = cast<YieldOp>(body.getTerminator());
  SmallVector<Value> inputs(fused.getInputs());
  OpBuilder b(fused.getContext());
  int64_t saved = 0;
  for (Write &w : writes) {
    Value positions = w.append.getPositions();
    Value inner;
    if (auto *it = llvm::find(inputs, positions); it != inputs.end()) {
      inner = body.getArgument(static_cast<unsigned>(it - inputs.begin()));
    } else {
      inputs.push_back(positions);
      inner = body.addArgument(positions.getType(), positions.getLoc());
    }
    // Right after the row, whose scratch slot it then frees.
    Value row = yield.getOperand(w.result);
    b.setInsertionPointAfterValue(row);
    if (w.view)
      row = b.create<ReshapeOp>(w.view.getLoc(), w.view.getType(), row);
    b.create<KVAppendOp>(w.append.getLoc(), w.append.getCacheAttr(), row,
                         inner);
    // The append's read of the row; and its write, when no longer yielded.
    saved += tokenBytes(w.append.getValue()) *
             (llvm::is_contained(dropped, w.result) ? 2 : 1);
  }
  SmallVector<Value> newYield;
  for (unsigned j : kept)
    newYield.push_back(yield.getOperand(j));
  yield->setOperands(newYield);

  OpBuilder outer(fused);
  auto replacement = outer.create<FusedOp>(
      fused.getLoc(), ValueRange(newYield).getTypes(), fused.getName(), inputs);
  replacement->setAttrs(fused->getAttrs());
  replacement.setName((fused.getName() + "_kv_append").str());
  NamedAttrList fusion(described.getValue());
  saved += described.getAs<IntegerAttr>("saved_bytes").getInt();
  fusion.set("saved_bytes", outer.getI64IntegerAttr(saved));
  replacement->setAttr("kiln.fusion", fusion.getDictionary(fused.getContext()));
  replacement.getBody().takeBody(fused.getBody());
  for (Write &w : writes) {
    w.append->erase();
    if (w.view && w.view->use_empty())
      w.view->erase();
  }
  for (auto [position, j] : llvm::enumerate(kept))
    fused.getResult(j).replaceAllUsesWith(replacement.getResult(position));
  fused.erase();
}

/// The FP8 activation quantization a GEMM applies to its input.
struct Fp8Input {
  int64_t blockCols;
  bool ue8m0;
  bool operator<(const Fp8Input &o) const {
    return std::tie(blockCols, ue8m0) < std::tie(o.blockCols, o.ue8m0);
  }
};

/// FP8 GEMMs that read `value` whole and quantize it themselves (f32 in
/// and out): `kiln.linear`s and dense `kiln.gated_linear`s, by the
/// quantization they apply.
std::map<Fp8Input, SmallVector<Operation *>> quantizingLinears(Value value) {
  std::map<Fp8Input, SmallVector<Operation *>> out;
  if (!getElementTypeOrSelf(value.getType()).isF32())
    return out;
  for (OpOperand &use : value.getUses()) {
    if (use.getOperandNumber() != 0)
      continue;
    Operation *owner = use.getOwner();
    if (auto linear = dyn_cast<LinearOp>(owner)) {
      if (linear.getBlockSize() && !linear.getInputScale())
        out[{(*linear.getBlockSize())[1], linear.getActUe8m0()}].push_back(
            owner);
    } else if (auto gated = dyn_cast<GatedLinearOp>(owner)) {
      if (gated.getBlockSize() && !gated.getInputScale() &&
          !gated.getExpertOffsets())
        out[{(*gated.getBlockSize())[1], gated.getActUe8m0()}].push_back(owner);
    }
  }
  return out;
}

/// `gemm` (from quantizingLinears) reading e4m3 `codes` and their `scales`
/// in place of its f32 input.
Operation *readingQuantized(Operation *gemm, Value codes, Value scales) {
  OpBuilder at(gemm);
  Operation *quantized;
  if (auto linear = dyn_cast<LinearOp>(gemm))
    quantized = at.create<LinearOp>(
        linear.getLoc(), linear.getType(), codes, linear.getWeight(),
        linear.getBias(), linear.getWeightScale(), scales,
        linear.getBlockSizeAttr(), linear.getActUe8m0());
  else {
    auto gated = cast<GatedLinearOp>(gemm);
    quantized = at.create<GatedLinearOp>(
        gated.getLoc(), gated.getType(), codes, gated.getGateWeight(),
        gated.getUpWeight(), Value(), gated.getGateScale(), gated.getUpScale(),
        scales, gated.getBlockSizeAttr(), gated.getActUe8m0());
  }
  quantized->setDiscardableAttrs(gemm->getDiscardableAttrDictionary());
  return quantized;
}

/// Moves the activation quantization of the FP8 `kiln.linear`s a group's
/// results feed into the group: its body quantizes the result and yields
/// codes and scales, the GEMMs read those, and a result only they read is
/// no longer written in f32.
void quantizeInEpilogue(FusedOp fused) {
  Block &body = fused.getBody().front();
  auto yield = cast<YieldOp>(body.getTerminator());
  SmallVector<Value> yielded(yield.getValues());
  struct Rewrite {
    SmallVector<Operation *> linears;
    unsigned codes; // index of the codes among the new results
  };
  SmallVector<Rewrite> rewrites;
  OpBuilder b(yield);
  for (auto [result, inner] :
       llvm::zip_equal(fused.getResults(), SmallVector<Value>(yielded))) {
    for (auto &[quant, linears] : quantizingLinears(result)) {
      auto type = cast<RankedTensorType>(inner.getType());
      SmallVector<int64_t> scaleShape(type.getShape());
      scaleShape.back() =
          (scaleShape.back() + quant.blockCols - 1) / quant.blockCols;
      auto q = b.create<QuantizeFp8Op>(
          linears.front()->getLoc(),
          RankedTensorType::get(type.getShape(), b.getType<Float8E4M3FNType>()),
          RankedTensorType::get(scaleShape, b.getF32Type()), inner,
          quant.blockCols, quant.ue8m0);
      rewrites.push_back({linears, static_cast<unsigned>(yielded.size())});
      yielded.push_back(q.getCodes());
      yielded.push_back(q.getScales());
    }
  }
  if (rewrites.empty())
    return;

  // Results no one outside reads once the GEMMs read codes.
  llvm::SmallPtrSet<Operation *, 8> moved;
  for (const Rewrite &r : rewrites)
    moved.insert(r.linears.begin(), r.linears.end());
  SmallVector<unsigned> kept;
  for (auto [i, result] : llvm::enumerate(fused.getResults()))
    if (llvm::any_of(result.getUsers(),
                     [&](Operation *user) { return !moved.contains(user); }))
      kept.push_back(i);
  for (unsigned i = fused.getNumResults(); i < yielded.size(); ++i)
    kept.push_back(i);
  SmallVector<Value> newYield;
  for (unsigned i : kept)
    newYield.push_back(yielded[i]);
  yield->setOperands(newYield);

  OpBuilder outer(fused);
  auto replacement =
      outer.create<FusedOp>(fused.getLoc(), ValueRange(newYield).getTypes(),
                            fused.getName(), fused.getInputs());
  replacement->setAttrs(fused->getAttrs());
  replacement.getBody().takeBody(fused.getBody());
  DenseMap<unsigned, Value> newResult;
  for (auto [position, i] : llvm::enumerate(kept))
    newResult[i] = replacement.getResult(position);
  for (const Rewrite &r : rewrites)
    for (Operation *linear : r.linears) {
      Operation *quantized =
          readingQuantized(linear, newResult[r.codes], newResult[r.codes + 1]);
      linear->replaceAllUsesWith(quantized->getResults());
      linear->erase();
    }
  for (auto [i, result] : llvm::enumerate(fused.getResults()))
    if (!result.use_empty())
      result.replaceAllUsesWith(newResult.at(i));
  fused.erase();
}

struct FusePass : public mlir::kiln::impl::KilnFuseBase<FusePass> {
  using KilnFuseBase::KilnFuseBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (rowBytes < kOnChipElementBytes) {
      module.emitError("kiln-fuse: row-bytes must be >= ")
          << kOnChipElementBytes;
      return signalPassFailure();
    }
    // Kernel names stay unique when the pass runs again.
    unsigned counter = 0;
    module.walk([&](FusedOp op) {
      StringRef name = op.getName();
      unsigned index;
      if (name.consume_front("fused_") &&
          !name.split('_').first.getAsInteger(10, index))
        counter = std::max(counter, index + 1);
    });
    for (auto func : module.getOps<func::FuncOp>())
      for (Block &block : func.getBody()) {
        BlockFuser fuser(block, rowBytes);
        fuser.formGroups();
        fuser.materialize(counter);
        if (horizontal)
          mergeHorizontally(block, counter, rowBytes);
        if (cacheEpilogue) {
          SmallVector<FusedOp> fused(block.getOps<FusedOp>());
          for (FusedOp op : fused)
            storeCacheRowsInKernel(op, rowBytes);
        }
      }
    if (!quantizeEpilogue)
      return;
    SmallVector<FusedOp> fused;
    module.walk([&](FusedOp op) { fused.push_back(op); });
    for (FusedOp op : fused)
      quantizeInEpilogue(op);
  }
};

} // namespace
