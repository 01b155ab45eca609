//===- AbsorbLatentKV.cpp - MLA latent cache and W_UK/W_UV absorption -----===//
//
// Matches the naive MLA attention the builders emit:
//
//   kv_up  = reshape(linear(c_kv, kv_b_proj))          [B, S, H, nope + v]
//   k      = concat(slice(kv_up, 0, nope), broadcast(k_pe))
//   v      = slice(kv_up, nope, v)
//   q      = concat(q_nope, q_pe)
//   kv_append k_cache <- k; kv_append v_cache <- v
//   o      = attention(q, kv_read k_cache, kv_read v_cache)
//
// and replaces it with a form whose cache holds [c_kv | k_pe] per token.
//
//===----------------------------------------------------------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/IR/SymbolTable.h"

#include <cmath>

namespace mlir::kiln {
#define GEN_PASS_DEF_KILNABSORBLATENTKV
#include "passes/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

enum class MlaForm { Naive, Absorbed, NaiveFromLatent };

StringRef formName(MlaForm form) {
  switch (form) {
  case MlaForm::Absorbed:
    return "absorbed";
  case MlaForm::NaiveFromLatent:
    return "naive_from_latent";
  case MlaForm::Naive:
    break;
  }
  return "naive";
}

/// The pieces of one naive MLA attention.
struct MlaSite {
  AttentionOp attention;
  Value qNope, qPe;   // [B, S, H, nope], [B, S, H, rope]
  Value latent;       // normalized c_kv [B, S, kvr]
  Value kPe;          // roped k_pe [B, S, 1, rope]
  GetParameterOp kvB; // kv_b_proj weight [H * (nope + v), kvr]
  // FP8 kv_b_proj: its block scale and block [rows, cols].
  GetParameterOp kvBScale;
  int64_t blockRows = 0, blockCols = 0;
  UnitAttr actUe8m0; // FP8: power-of-two activation scales
  KVAppendOp kAppend, vAppend;
  KVReadOp kRead, vRead;
  int64_t heads, nope, rope, vDim, kvr;
};

template <typename OpT> OpT defOf(Value v) {
  return v ? v.getDefiningOp<OpT>() : OpT();
}

/// The only kv_append of `slot` in `func`, or null.
KVAppendOp appendOf(func::FuncOp func, StringRef slot) {
  KVAppendOp found;
  int count = 0;
  func.walk([&](KVAppendOp append) {
    if (append.getCache() == slot) {
      found = append;
      ++count;
    }
  });
  return count == 1 ? found : KVAppendOp();
}

int64_t lastDim(Value v) {
  return cast<RankedTensorType>(v.getType()).getShape().back();
}

std::optional<MlaSite> matchMla(AttentionOp attention) {
  MlaSite m;
  m.attention = attention;
  m.kRead = defOf<KVReadOp>(attention.getKey());
  m.vRead = defOf<KVReadOp>(attention.getValue());
  if (!m.kRead || !m.vRead || m.kRead.getColumns() || m.vRead.getColumns())
    return std::nullopt;
  auto func = attention->getParentOfType<func::FuncOp>();
  m.kAppend = appendOf(func, m.kRead.getCache());
  m.vAppend = appendOf(func, m.vRead.getCache());
  if (!m.kAppend || !m.vAppend)
    return std::nullopt;

  auto kConcat = defOf<ConcatOp>(m.kAppend.getValue());
  if (!kConcat || kConcat.getInputs().size() != 2)
    return std::nullopt;
  auto kNope = defOf<SliceOp>(kConcat.getInputs()[0]);
  auto kPeHeads = defOf<BroadcastOp>(kConcat.getInputs()[1]);
  auto v = defOf<SliceOp>(m.vAppend.getValue());
  if (!kNope || !kPeHeads || !v || kNope.getOffset() != 0 ||
      v.getInput() != kNope.getInput() || v.getOffset() != kNope.getSize())
    return std::nullopt;
  auto kvUp = defOf<ReshapeOp>(kNope.getInput());
  auto kvLinear = kvUp ? defOf<LinearOp>(kvUp.getInput()) : LinearOp();
  if (!kvLinear || kvLinear.getBias())
    return std::nullopt;
  m.kvB = defOf<GetParameterOp>(kvLinear.getWeight());
  m.actUe8m0 = kvLinear.getActUe8m0Attr();
  if (kvLinear.getWeightScale()) {
    m.kvBScale = defOf<GetParameterOp>(kvLinear.getWeightScale());
    if (!m.kvBScale)
      return std::nullopt;
    m.blockRows = (*kvLinear.getBlockSize())[0];
    m.blockCols = (*kvLinear.getBlockSize())[1];
  }
  m.latent = kvLinear.getInput();
  m.kPe = kPeHeads.getInput();
  auto qConcat = defOf<ConcatOp>(attention.getQuery());
  if (!m.kvB || !qConcat || qConcat.getInputs().size() != 2)
    return std::nullopt;
  m.qNope = qConcat.getInputs()[0];
  m.qPe = qConcat.getInputs()[1];

  auto kPeType = cast<RankedTensorType>(m.kPe.getType());
  auto qType = cast<RankedTensorType>(attention.getQuery().getType());
  m.heads = qType.getDimSize(2);
  m.nope = kNope.getSize();
  m.vDim = v.getSize();
  m.rope = kPeType.getShape().back();
  m.kvr = lastDim(m.latent);
  if (kPeType.getRank() != 4 || kPeType.getDimSize(2) != 1 ||
      lastDim(m.qNope) != m.nope || lastDim(m.qPe) != m.rope ||
      cast<RankedTensorType>(m.latent.getType()).getRank() != 3 ||
      m.kvB.getType().getShape() !=
          ArrayRef<int64_t>{m.heads * (m.nope + m.vDim), m.kvr})
    return std::nullopt;
  return m;
}

/// Time of one step of the entry point by a roofline model, for `form`,
/// with latent-cache rows of `latentRowBytes`.
double stepCost(MlaSite m, MlaForm form, double batch, double queries,
                double context, double latentRowBytes) {
  // Nominal CPU ceilings; only the ratio of the two forms matters.
  constexpr double kFlopsPerSecond = 1e11, kBytesPerSecond = 2e10;
  double h = m.heads, nope = m.nope, rope = m.rope, v = m.vDim, kvr = m.kvr;
  double weightBytes =
      h * (nope + v) * kvr * (m.kvB.getType().getElementTypeBitWidth() / 8.0);
  double cacheBytes = batch * context * latentRowBytes;
  double flops, bytes = cacheBytes + weightBytes;
  if (form == MlaForm::Absorbed) {
    flops = 2 * batch * queries * h * kvr * (nope + v) +
            2 * batch * queries * context * h * (2 * kvr + rope);
  } else {
    // Decompress every cached token, then per-head attention.
    flops = 2 * batch * context * kvr * h * (nope + v) +
            2 * batch * queries * context * h * (nope + rope + v);
    bytes += batch * context * h * (nope + rope + v) * 4 * 2;
  }
  return flops / kFlopsPerSecond + bytes / kBytesPerSecond;
}

/// How a latent slot stores its rows for `cacheDtype`: f32 as the entry
/// type (no packed storage), fp8 with c_kv's columns in e4m3, bf16 as a
/// packed row without e4m3 columns.
PackedCacheAttr latentStorage(MLIRContext *context, StringRef cacheDtype,
                              MlaSite m) {
  if (cacheDtype == "f32")
    return PackedCacheAttr();
  return PackedCacheAttr::get(context, cacheDtype == "fp8" ? m.kvr : 0);
}

/// Bytes of one latent-cache row ([c_kv | k_pe]) as the slot stores it.
int64_t latentRowBytes(MLIRContext *context, StringRef cacheDtype, MlaSite m) {
  int64_t elements = m.kvr + m.rope;
  if (PackedCacheAttr storage = latentStorage(context, cacheDtype, m))
    return storage.getRowBytes(elements);
  Type element = cast<RankedTensorType>(m.latent.getType()).getElementType();
  return elements * element.getIntOrFloatBitWidth() / 8;
}

/// A derived weight and, for FP8, its block scale.
struct DerivedWeight {
  Value value, scale;
  DenseI64ArrayAttr blockSize;
};

class Rewriter {
public:
  /// `cacheDtype`: how the latent slots store their rows (f32, bf16, fp8).
  Rewriter(ModuleOp module, StringRef cacheDtype)
      : module_(module), b_(module.getContext()), cacheDtype_(cacheDtype) {}

  void rewrite(MlaSite m, MlaForm form);

private:
  DerivedWeight getParameter(MlaSite m, StringRef suffix, int64_t offset,
                             int64_t size, bool transpose);
  Value derive(GetParameterOp source, StringRef suffix, int64_t heads,
               int64_t rows, int64_t offset, int64_t size, int64_t cols,
               bool transpose);
  StringRef latentSlot(MlaSite m);
  RankedTensorType tensor(ArrayRef<int64_t> dims, Type element) {
    SmallVector<int64_t> shape{ShapedType::kDynamic, ShapedType::kDynamic};
    llvm::append_range(shape, dims);
    return RankedTensorType::get(shape, element);
  }

  ModuleOp module_;
  OpBuilder b_;
  StringRef cacheDtype_;
};

/// The prefix of the layer's attention, from its K slot ("...self_attn").
std::string attentionPrefix(MlaSite m) {
  StringRef slot = m.kRead.getCache();
  return slot.rsplit('.').first.str();
}

StringRef Rewriter::latentSlot(MlaSite m) {
  std::string name = attentionPrefix(m) + ".latent_cache";
  if (!module_.lookupSymbol(name)) {
    auto old = module_.lookupSymbol<KVCacheOp>(m.kRead.getCacheAttr());
    OpBuilder::InsertionGuard guard(b_);
    b_.setInsertionPoint(old);
    Type element = cast<RankedTensorType>(m.latent.getType()).getElementType();
    b_.create<KVCacheOp>(
        old.getLoc(), b_.getStringAttr(name),
        TypeAttr::get(RankedTensorType::get({1, m.kvr + m.rope}, element)),
        latentStorage(b_.getContext(), cacheDtype_, m));
  }
  return cast<KVCacheOp>(module_.lookupSymbol(name)).getSymName();
}

Value Rewriter::derive(GetParameterOp source, StringRef suffix, int64_t heads,
                       int64_t rows, int64_t offset, int64_t size, int64_t cols,
                       bool transpose) {
  auto param = module_.lookupSymbol<ParameterOp>(source.getNameAttr());
  std::string name = (param.getSymName() + suffix).str();
  auto type =
      RankedTensorType::get(transpose ? ArrayRef<int64_t>{heads, cols, size}
                                      : ArrayRef<int64_t>{heads, size, cols},
                            param.getTensorType().getElementType());
  if (!module_.lookupSymbol(name)) {
    OpBuilder::InsertionGuard guard(b_);
    b_.setInsertionPointAfter(param);
    b_.create<ParameterOp>(
        param.getLoc(), b_.getStringAttr(name), TypeAttr::get(type),
        b_.getStringAttr(param.getSourceName()), param.getQuantizeAttr(),
        HeadSliceAttr::get(b_.getContext(), heads, rows, offset, size,
                           transpose));
  }
  return b_.create<GetParameterOp>(source.getLoc(), type, name);
}

DerivedWeight Rewriter::getParameter(MlaSite m, StringRef suffix,
                                     int64_t offset, int64_t size,
                                     bool transpose) {
  DerivedWeight w;
  w.value = derive(m.kvB, suffix, m.heads, m.nope + m.vDim, offset, size, m.kvr,
                   transpose);
  if (m.kvBScale) {
    // FP8: the head slices fall on whole blocks, so the derived weight's
    // scale is the same slice of the block-scale grid (transposed with it).
    int64_t br = m.blockRows, bc = m.blockCols;
    w.scale = derive(m.kvBScale, (suffix + "_scale_inv").str(), m.heads,
                     (m.nope + m.vDim) / br, offset / br, size / br,
                     (m.kvr + bc - 1) / bc, transpose);
    w.blockSize = transpose ? b_.getDenseI64ArrayAttr({bc, br})
                            : b_.getDenseI64ArrayAttr({br, bc});
  }
  return w;
}

void Rewriter::rewrite(MlaSite m, MlaForm form) {
  AttentionOp attn = m.attention;
  Location loc = attn.getLoc();
  Type element = cast<RankedTensorType>(m.latent.getType()).getElementType();
  b_.setInsertionPoint(attn);

  // The cache entry: [c_kv | k_pe], one "head".
  StringRef slot = latentSlot(m);
  Value latent4 =
      b_.create<ReshapeOp>(loc, tensor({1, m.kvr}, element), m.latent);
  Value entry = b_.create<ConcatOp>(loc, tensor({1, m.kvr + m.rope}, element),
                                    ValueRange{latent4, m.kPe});
  b_.create<KVAppendOp>(m.kAppend.getLoc(), slot, entry, attn.getPositions());
  Value lengths = attn.getKvLengths();
  Value cached = b_.create<KVReadOp>(
      m.kRead.getLoc(), tensor({1, m.kvr + m.rope}, element),
      FlatSymbolRefAttr::get(b_.getContext(), slot), lengths,
      DenseI64ArrayAttr());

  Value out;
  if (form == MlaForm::Absorbed) {
    Value values =
        b_.create<KVReadOp>(m.vRead.getLoc(), tensor({1, m.kvr}, element),
                            FlatSymbolRefAttr::get(b_.getContext(), slot),
                            lengths, b_.getDenseI64ArrayAttr({0, m.kvr}));
    DerivedWeight wUK = getParameter(m, ".w_uk", 0, m.nope, /*transpose=*/true);
    Value qLat = b_.create<HeadLinearOp>(
        loc, tensor({m.heads, m.kvr}, element), m.qNope, wUK.value, wUK.scale,
        wUK.blockSize, wUK.scale ? m.actUe8m0 : UnitAttr(), IntegerAttr());
    Value q =
        b_.create<ConcatOp>(loc, tensor({m.heads, m.kvr + m.rope}, element),
                            ValueRange{qLat, m.qPe});
    auto latentAttn = b_.create<AttentionOp>(
        loc, tensor({m.heads, m.kvr}, element), q, cached, values,
        attn.getPositions(), lengths, attn.getScaleAttr());
    latentAttn->setAttr("kiln.mla", b_.getStringAttr(formName(form)));
    DerivedWeight wUV =
        getParameter(m, ".w_uv", m.nope, m.vDim, /*transpose=*/false);
    out = b_.create<HeadLinearOp>(
        loc, tensor({m.heads, m.vDim}, element), latentAttn, wUV.value,
        wUV.scale, wUV.blockSize, wUV.scale ? m.actUe8m0 : UnitAttr(),
        IntegerAttr());
  } else {
    // Decompress every cached token with kv_b_proj, then per-head attention.
    Value cKv = b_.create<ReshapeOp>(
        loc, tensor({m.kvr}, element),
        b_.create<SliceOp>(loc, tensor({1, m.kvr}, element), cached, 0, m.kvr));
    Value kPe = b_.create<SliceOp>(loc, tensor({1, m.rope}, element), cached,
                                   m.kvr, m.rope);
    Value kvB = b_.create<GetParameterOp>(m.kvB.getLoc(), m.kvB.getType(),
                                          m.kvB.getName());
    Value kvBScale;
    DenseI64ArrayAttr block;
    if (m.kvBScale) {
      kvBScale = b_.create<GetParameterOp>(
          m.kvBScale.getLoc(), m.kvBScale.getType(), m.kvBScale.getName());
      block = b_.getDenseI64ArrayAttr({m.blockRows, m.blockCols});
    }
    Value up = b_.create<ReshapeOp>(
        loc, tensor({m.heads, m.nope + m.vDim}, element),
        b_.create<LinearOp>(loc, tensor({m.heads * (m.nope + m.vDim)}, element),
                            cKv, kvB, Value(), kvBScale, Value(), block,
                            m.actUe8m0));
    Value kNope = b_.create<SliceOp>(loc, tensor({m.heads, m.nope}, element),
                                     up, 0, m.nope);
    Value v = b_.create<SliceOp>(loc, tensor({m.heads, m.vDim}, element), up,
                                 m.nope, m.vDim);
    Value kPeHeads =
        b_.create<BroadcastOp>(loc, tensor({m.heads, m.rope}, element), kPe);
    Value k =
        b_.create<ConcatOp>(loc, tensor({m.heads, m.nope + m.rope}, element),
                            ValueRange{kNope, kPeHeads});
    auto fromLatent = b_.create<AttentionOp>(
        loc, attn.getType(), attn.getQuery(), k, v, attn.getPositions(),
        lengths, attn.getScaleAttr());
    fromLatent->setAttr("kiln.mla", b_.getStringAttr(formName(form)));
    out = fromLatent;
  }
  attn.replaceAllUsesWith(out);

  // Drop the naive cache traffic and whatever only fed it.
  SmallVector<Operation *> dead{attn, m.kRead, m.vRead, m.kAppend, m.vAppend};
  SmallVector<Value> roots{m.kAppend.getValue(), m.vAppend.getValue(),
                           attn.getQuery()};
  for (Operation *op : dead)
    op->erase();
  SmallVector<Operation *> worklist;
  for (Value root : roots)
    if (Operation *def = root.getDefiningOp())
      worklist.push_back(def);
  while (!worklist.empty()) {
    Operation *op = worklist.pop_back_val();
    if (!op->use_empty() || !isPure(op))
      continue;
    for (Value operand : op->getOperands())
      if (Operation *def = operand.getDefiningOp())
        worklist.push_back(def);
    op->erase();
  }
}

struct AbsorbLatentKVPass
    : public mlir::kiln::impl::KilnAbsorbLatentKVBase<AbsorbLatentKVPass> {
  using KilnAbsorbLatentKVBase::KilnAbsorbLatentKVBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (latentCacheDtype != "f32" && latentCacheDtype != "bf16" &&
        latentCacheDtype != "fp8") {
      module.emitError("kiln-absorb-latent-kv: latent-cache-dtype must be "
                       "f32, bf16 or fp8, got '")
          << latentCacheDtype << "'";
      return signalPassFailure();
    }
    if (mode != "auto" && mode != "naive" && mode != "absorbed") {
      module.emitError("kiln-absorb-latent-kv: mode must be auto, naive or "
                       "absorbed, got '")
          << mode << "'";
      return signalPassFailure();
    }
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward)
      return;
    std::vector<MlaSite> sites = collect(forward);
    if (sites.empty())
      return;
    Builder b(module.getContext());
    if (mode == "naive") {
      forward->setAttr("kiln.mla", b.getDictionaryAttr(b.getNamedAttr(
                                       "mode", b.getStringAttr("naive"))));
      return;
    }

    // One choice per entry point, from the first MLA layer's dimensions
    // (all layers share them).
    MlaSite m = sites.front();
    double rowBytes = latentRowBytes(&getContext(), latentCacheDtype, m);
    auto decide = [&](StringRef entry, double queries, double context,
                      MlaForm &form) {
      double absorbed =
          stepCost(m, MlaForm::Absorbed, batch, queries, context, rowBytes);
      double naive = stepCost(m, MlaForm::NaiveFromLatent, batch, queries,
                              context, rowBytes);
      form = mode == "absorbed" || absorbed <= naive ? MlaForm::Absorbed
                                                     : MlaForm::NaiveFromLatent;
      return b.getDictionaryAttr({
          b.getNamedAttr("mode", b.getStringAttr(formName(form))),
          b.getNamedAttr("entry", b.getStringAttr(entry)),
          b.getNamedAttr("cost_absorbed_s", b.getF64FloatAttr(absorbed)),
          b.getNamedAttr("cost_naive_s", b.getF64FloatAttr(naive)),
          b.getNamedAttr("batch", b.getI64IntegerAttr(batch)),
          b.getNamedAttr("queries", b.getI64IntegerAttr(queries)),
          b.getNamedAttr("context", b.getI64IntegerAttr(context)),
      });
    };
    // Decode: one query against half the context on average; prefill: a
    // full chunk attending to itself.
    MlaForm decodeForm, prefillForm;
    DictionaryAttr decodeChoice =
        decide("decode", 1, std::max<int64_t>(1, context / 2), decodeForm);
    DictionaryAttr prefillChoice =
        decide("prefill", prefillTokens, prefillTokens, prefillForm);

    if (decodeForm == prefillForm) {
      forward->setAttr(
          "kiln.mla",
          b.getDictionaryAttr({
              b.getNamedAttr("mode", b.getStringAttr(formName(decodeForm))),
              b.getNamedAttr("decode", decodeChoice),
              b.getNamedAttr("prefill", prefillChoice),
          }));
      rewriteAll(module, sites, decodeForm);
      return;
    }
    // Different forms: one function per entry point, sharing the cache.
    OpBuilder ob(module.getContext());
    ob.setInsertionPointAfter(forward);
    auto prefill = cast<func::FuncOp>(ob.clone(*forward));
    prefill.setName("prefill");
    prefill->setAttr("kiln.mla", prefillChoice);
    forward.setName("decode");
    forward->setAttr("kiln.mla", decodeChoice);
    rewriteAll(module, collect(prefill), prefillForm);
    rewriteAll(module, sites, decodeForm);
  }

  std::vector<MlaSite> collect(func::FuncOp func) {
    std::vector<MlaSite> sites;
    func.walk([&](AttentionOp attention) {
      if (std::optional<MlaSite> site = matchMla(attention))
        sites.push_back(*site);
    });
    // FP8 kv_b_proj derives W_UK/W_UV scales by slicing the block grid,
    // which needs every head's K and V rows to start on a block.
    std::erase_if(sites, [](MlaSite m) {
      return m.kvBScale && (m.blockRows <= 0 || m.blockCols <= 0 ||
                            m.nope % m.blockRows || m.vDim % m.blockRows);
    });
    return sites;
  }

  void rewriteAll(ModuleOp module, std::vector<MlaSite> sites, MlaForm form) {
    Rewriter rewriter(module, latentCacheDtype);
    for (MlaSite m : sites)
      rewriter.rewrite(m, form);
    // Slots and parameters nothing uses any more.
    SmallVector<Operation *> unused;
    for (Operation &op : module.getBody()->getOperations())
      if (isa<KVCacheOp, ParameterOp>(op) &&
          SymbolTable::symbolKnownUseEmpty(&op, module))
        unused.push_back(&op);
    for (Operation *op : unused)
      op->erase();
  }
};

} // namespace
