//===- QuantizeFP8.cpp - FP8 weights with DeepSeek-V3's block scales ------===//
//
// Turns the weights of GEMM ops (linear, grouped_linear, head_linear) into
// e4m3 codes plus one fp32 scale per 128x128 block, as parameters derived
// from the original checkpoint tensors by `#kiln.fp8_quant` (the compiler
// quantizes embedded weights, the runtime external ones at load, with the
// same code). Every GEMM and every op that keeps higher precision by policy
// records why in a `kiln.quant` attribute.
//
//===----------------------------------------------------------------------===//
#include "ir/KilnOps.h"
#include "passes/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/GlobPattern.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_KILNQUANTIZEFP8
#include "passes/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// The op kinds the policy can keep in higher precision, as users name them.
StringRef gemmKind(Operation *op) {
  if (isa<LinearOp>(op))
    return "linear";
  if (isa<GroupedLinearOp>(op))
    return "grouped_linear";
  // A head GEMM reading a strided slice (kiln-fold-head-slices) cannot
  // quantize its input rows whole: its weight stays as it is.
  if (auto head = dyn_cast<HeadLinearOp>(op))
    return head.getInputOffset() ? "" : "head_linear";
  return "";
}

/// Why ops that are not GEMMs keep their precision (DeepSeek-V3's recipe
/// keeps the embedding, output head, router and norms in higher precision).
StringRef keptByPolicy(Operation *op) {
  if (isa<EmbeddingOp>(op))
    return "bf16: embedding";
  if (isa<LogitsOp>(op))
    return "bf16: output head";
  if (isa<MoEGateOp>(op))
    return "bf16: router";
  if (isa<RMSNormOp>(op))
    return "bf16: norm";
  return "";
}

Value weightOf(Operation *op) {
  if (auto linear = dyn_cast<LinearOp>(op))
    return linear.getWeight();
  if (auto grouped = dyn_cast<GroupedLinearOp>(op))
    return grouped.getWeight();
  return cast<HeadLinearOp>(op).getWeight();
}

struct QuantizeFP8Pass
    : public mlir::kiln::impl::KilnQuantizeFP8Base<QuantizeFP8Pass> {
  using KilnQuantizeFP8Base::KilnQuantizeFP8Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (failed(parseOptions(module)))
      return signalPassFailure();
    SymbolTable symbols(module);

    // Decide per parameter: a parameter is quantized only if every op that
    // reads it is a GEMM the policy allows (a weight tied to a non-GEMM
    // use, such as a shared embedding, keeps its precision).
    llvm::StringMap<std::string> keep; // parameter -> reason
    llvm::StringMap<SmallVector<Operation *>> readers;
    module.walk([&](GetParameterOp get) {
      for (Operation *user : get->getUsers())
        readers[get.getName()].push_back(user);
    });
    module.walk([&](Operation *op) {
      if (StringRef reason = keptByPolicy(op); !reason.empty())
        op->setAttr("kiln.quant", StringAttr::get(op->getContext(), reason));
      StringRef kind = gemmKind(op);
      if (kind.empty())
        return;
      auto get = weightOf(op).getDefiningOp<GetParameterOp>();
      if (!get) {
        op->setAttr("kiln.quant",
                    StringAttr::get(op->getContext(), "bf16: computed weight"));
        return;
      }
      if (std::string reason = decide(symbols, get, kind, readers);
          !reason.empty())
        keep[get.getName()] = reason;
      else
        keep.try_emplace(get.getName(), "");
    });

    for (auto &[name, reason] : keep) {
      if (!reason.empty()) {
        for (Operation *op : readers[name])
          if (!gemmKind(op).empty())
            op->setAttr("kiln.quant",
                        StringAttr::get(op->getContext(), reason));
        continue;
      }
      quantize(symbols.lookup<ParameterOp>(name), readers[name]);
    }

    Builder b(module.getContext());
    module->setAttr(
        "kiln.fp8",
        b.getDictionaryAttr({
            b.getNamedAttr("block", b.getDenseI64ArrayAttr({block, block})),
            b.getNamedAttr("ue8m0", b.getBoolAttr(ue8m0)),
        }));
  }

private:
  LogicalResult parseOptions(ModuleOp module) {
    if (block < 1)
      return module.emitError("kiln-quantize-fp8: block must be >= 1");
    for (const std::string &kind : keepOps)
      if (kind != "linear" && kind != "grouped_linear" && kind != "head_linear")
        return module.emitError("kiln-quantize-fp8: keep-ops takes linear, "
                                "grouped_linear or head_linear, got '")
               << kind << "'";
    patterns_.clear();
    for (const std::string &text : keep) {
      llvm::Expected<llvm::GlobPattern> pattern =
          llvm::GlobPattern::create(text);
      if (!pattern)
        return module.emitError("kiln-quantize-fp8: bad keep pattern '")
               << text << "': " << llvm::toString(pattern.takeError());
      patterns_.emplace_back(text, std::move(*pattern));
    }
    if (auto model = module->getAttrOfType<DictionaryAttr>("kiln.model"))
      if (auto mla = model.getAs<DictionaryAttr>("mla")) {
        auto get = [&](StringRef key) {
          auto attr = mla.getAs<IntegerAttr>(key);
          return attr ? attr.getInt() : 0;
        };
        nope_ = get("qk_nope_head_dim");
        vDim_ = get("v_head_dim");
      }
    return success();
  }

  /// Empty to quantize the parameter `get` reads, else why it stays.
  std::string decide(SymbolTable &symbols, GetParameterOp get, StringRef kind,
                     llvm::StringMap<SmallVector<Operation *>> &readers) {
    auto param = symbols.lookup<ParameterOp>(get.getName());
    Type element = param.getTensorType().getElementType();
    if (isa<Float8E4M3FNType>(element))
      return "fp8: checkpoint";
    if (!isa<Float32Type, BFloat16Type, Float16Type>(element))
      return "bf16: unsupported weight type";
    if (checkpointOnly)
      return "bf16: checkpoint";
    if (llvm::is_contained(keepOps, kind.str()))
      return ("bf16: keep-ops " + kind).str();
    StringRef name = param.getSourceName();
    for (const auto &[text, pattern] : patterns_)
      if (pattern.match(param.getSymName()) || pattern.match(name))
        return "bf16: keep '" + text + "'";
    if (param.getTransformAttr() || param.getQuantizeAttr())
      return "bf16: derived parameter";
    for (Operation *user : readers[get.getName()])
      if (gemmKind(user).empty())
        return "bf16: shared with a non-GEMM op";
    // Absorbing MLA slices kv_b_proj per head; FP8 keeps its scales only
    // when every head's K and V rows start on a block boundary.
    if (name.ends_with("kv_b_proj.weight") && nope_ > 0 &&
        (nope_ % block || vDim_ % block))
      return "bf16: kv_b_proj head rows straddle FP8 blocks";
    return "";
  }

  void quantize(ParameterOp param, ArrayRef<Operation *> users) {
    MLIRContext *ctx = param.getContext();
    OpBuilder b(param);
    RankedTensorType type = param.getTensorType();
    ArrayRef<int64_t> shape = type.getShape();
    auto codes = RankedTensorType::get(shape, Float8E4M3FNType::get(ctx));
    SmallVector<int64_t> grid(shape);
    size_t n = grid.size();
    grid[n - 2] = (shape[n - 2] + block - 1) / block;
    grid[n - 1] = (shape[n - 1] + block - 1) / block;
    auto scales = RankedTensorType::get(grid, Float32Type::get(ctx));

    std::string scaleName = (param.getSymName() + "_scale_inv").str();
    StringAttr source = b.getStringAttr(param.getSourceName());
    b.setInsertionPointAfter(param);
    b.create<ParameterOp>(
        param.getLoc(), b.getStringAttr(scaleName), TypeAttr::get(scales),
        source, Fp8QuantAttr::get(ctx, block, block, /*scale=*/true, ue8m0),
        HeadSliceAttr());
    param.setSourceAttr(source);
    param.setType(codes);
    param.setQuantizeAttr(
        Fp8QuantAttr::get(ctx, block, block, /*scale=*/false, ue8m0));

    DenseI64ArrayAttr blockSize = b.getDenseI64ArrayAttr({block, block});
    UnitAttr pow2 = ue8m0 ? b.getUnitAttr() : UnitAttr();
    for (Operation *op : users) {
      b.setInsertionPoint(op);
      auto oldGet = weightOf(op).getDefiningOp<GetParameterOp>();
      Value w =
          b.create<GetParameterOp>(oldGet.getLoc(), codes, param.getSymName());
      Value s = b.create<GetParameterOp>(oldGet.getLoc(), scales, scaleName);
      Operation *replacement =
          llvm::TypeSwitch<Operation *, Operation *>(op)
              .Case([&](LinearOp o) {
                return b.create<LinearOp>(o.getLoc(), o.getType(), o.getInput(),
                                          w, o.getBias(), s, Value(), blockSize,
                                          pow2);
              })
              .Case([&](GroupedLinearOp o) {
                return b.create<GroupedLinearOp>(
                    o.getLoc(), o.getType(), o.getInput(), w,
                    o.getExpertOffsets(), s, blockSize, pow2);
              })
              .Case([&](HeadLinearOp o) {
                return b.create<HeadLinearOp>(o.getLoc(), o.getType(),
                                              o.getInput(), w, s, blockSize,
                                              pow2, IntegerAttr());
              });
      replacement->setAttr("kiln.quant", b.getStringAttr("fp8"));
      op->replaceAllUsesWith(replacement);
      op->erase();
      if (oldGet->use_empty())
        oldGet->erase();
    }
  }

  SmallVector<std::pair<std::string, llvm::GlobPattern>> patterns_;
  int64_t nope_ = 0, vDim_ = 0;
};

} // namespace
