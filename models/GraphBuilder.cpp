//===- GraphBuilder.cpp - shared graph-building helpers -------------------===//
#include "models/Blocks.h"

#include "mlir/IR/BuiltinTypes.h"

using namespace mlir;
using namespace mlir::kiln;
using ::kiln::frontend::DType;
using ::kiln::frontend::RopeType;

namespace kiln::models {
namespace {

Type mlirType(MLIRContext *ctx, DType dtype) {
  switch (dtype) {
  case DType::F32:
    return Float32Type::get(ctx);
  case DType::F16:
    return Float16Type::get(ctx);
  case DType::F8_E4M3:
    return Float8E4M3FNType::get(ctx);
  default:
    return BFloat16Type::get(ctx);
  }
}

RopeAttr ropeFor(MLIRContext *ctx, const frontend::ModelConfig &config) {
  const frontend::RopeScaling &s = config.ropeScaling;
  RopeKind kind = s.type == RopeType::Yarn     ? RopeKind::yarn
                  : s.type == RopeType::Llama3 ? RopeKind::llama3
                                               : RopeKind::plain;
  bool interleaved = config.ropeInterleave;
  auto f = [](double v) { return APFloat(v); };
  if (kind == RopeKind::plain)
    return RopeAttr::get(ctx, kind, f(config.ropeTheta), f(1.0), 0, f(32.0),
                         f(1.0), f(1.0), f(0.0), f(1.0), f(4.0), interleaved);
  // HF divides by mscale(factor, mscale_all_dim) only when both mscales
  // are given; mscale_all_dim = 0 makes that divisor 1.
  bool bothMscales = s.mscaleGiven && s.mscale != 0 && s.mscaleAllDim != 0;
  double mscale = bothMscales ? s.mscale : 1.0;
  double mscaleAllDim = bothMscales ? s.mscaleAllDim : 0.0;
  return RopeAttr::get(ctx, kind, f(config.ropeTheta), f(s.factor),
                       s.originalMaxPositionEmbeddings, f(s.betaFast),
                       f(s.betaSlow), f(mscale), f(mscaleAllDim),
                       f(s.lowFreqFactor), f(s.highFreqFactor), interleaved);
}

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

} // namespace

GraphBuilder::GraphBuilder(ModuleOp module, const frontend::ModelConfig &config,
                           const BuildOptions &options)
    : module_(module), config_(config), options_(options),
      builder_(module.getContext()), moduleBuilder_(module.getContext()) {
  MLIRContext *ctx = module.getContext();
  activation_ = options.bf16Activations ? Type(BFloat16Type::get(ctx))
                                        : Type(Float32Type::get(ctx));
  rope_ = ropeFor(ctx, config);
}

RankedTensorType GraphBuilder::activation(ArrayRef<int64_t> dims) const {
  SmallVector<int64_t> shape{ShapedType::kDynamic, ShapedType::kDynamic};
  llvm::append_range(shape, dims);
  return RankedTensorType::get(shape, activation_);
}

RankedTensorType GraphBuilder::indexTensor(ArrayRef<int64_t> shape) const {
  return RankedTensorType::get(shape,
                               IntegerType::get(activation_.getContext(), 32));
}

Location GraphBuilder::loc(const std::string &path) {
  return NameLoc::get(builder_.getStringAttr(path));
}

Type GraphBuilder::dtypeFor(const std::string &checkpointName,
                            WeightKind kind) {
  MLIRContext *ctx = module_.getContext();
  bool quantizable = kind == WeightKind::QuantizableLinear;
  if (options_.checkpointDtype) {
    if (std::optional<DType> stored = options_.checkpointDtype(checkpointName);
        stored && frontend::isWeightFloat(*stored) &&
        (quantizable || *stored != DType::F8_E4M3))
      return mlirType(ctx, *stored);
  }
  if (quantizable && config_.quantization)
    return Float8E4M3FNType::get(ctx);
  return mlirType(ctx, config_.torchDtype);
}

Weight GraphBuilder::weight(const std::string &name, ArrayRef<int64_t> shape,
                            WeightKind kind, const std::string &source) {
  std::string sourceName = source.empty() ? name : source;
  std::string probe = sourceName;
  if (size_t at = sourceName.find("{}"); at != std::string::npos)
    probe = sourceName.substr(0, at) + "0" + sourceName.substr(at + 2);
  Type element = dtypeFor(probe, kind);

  auto declare = [&](const std::string &symbol, ArrayRef<int64_t> dims,
                     Type type, const std::string &src) {
    auto tensor = RankedTensorType::get(dims, type);
    if (!module_.lookupSymbol(symbol)) {
      // Declarations go right before the function that first uses them.
      moduleBuilder_.setInsertionPoint(builder_.getBlock()->getParentOp());
      moduleBuilder_.create<ParameterOp>(
          loc(symbol), builder_.getStringAttr(symbol), TypeAttr::get(tensor),
          src == symbol ? StringAttr() : builder_.getStringAttr(src),
          Fp8QuantAttr(), HeadSliceAttr());
    }
    return builder_.create<GetParameterOp>(loc(symbol), tensor, symbol)
        .getResult();
  };

  Weight w;
  w.value = declare(name, shape, element, sourceName);
  if (isa<Float8E4M3FNType>(element)) {
    // DeepSeek's FP8 checkpoints keep one fp32 scale per weight block,
    // beside the weight as `<name>_scale_inv`.
    auto [rows, cols] = weightBlock();
    SmallVector<int64_t> scaleShape(shape);
    size_t n = scaleShape.size();
    scaleShape[n - 2] = ceilDiv(shape[n - 2], rows);
    scaleShape[n - 1] = ceilDiv(shape[n - 1], cols);
    w.scale = declare(name + "_scale_inv", scaleShape,
                      Float32Type::get(module_.getContext()),
                      sourceName + "_scale_inv");
  }
  return w;
}

std::pair<int64_t, int64_t> GraphBuilder::weightBlock() const {
  // FP8 checkpoints without a block size in their config use DeepSeek's.
  if (!config_.quantization)
    return {128, 128};
  return {config_.quantization->weightBlockRows,
          config_.quantization->weightBlockCols};
}

UnitAttr GraphBuilder::actUe8m0(const Weight &w) {
  bool pow2 =
      w.scale && config_.quantization && config_.quantization->ue8m0Scales;
  return pow2 ? builder_.getUnitAttr() : UnitAttr();
}

void GraphBuilder::kvCache(const std::string &name, RankedTensorType entry) {
  moduleBuilder_.setInsertionPoint(builder_.getBlock()->getParentOp());
  moduleBuilder_.create<KVCacheOp>(loc(name), builder_.getStringAttr(name),
                                   TypeAttr::get(entry), PackedCacheAttr());
}

Value GraphBuilder::linear(Value x, const std::string &prefix, int64_t out,
                           bool bias, WeightKind kind) {
  auto input = cast<RankedTensorType>(x.getType());
  int64_t in = input.getShape().back();
  Weight w = weight(prefix + ".weight", {out, in}, kind);
  Value b =
      bias ? weight(prefix + ".bias", {out}, WeightKind::Plain).value : Value();
  SmallVector<int64_t> shape(input.getShape());
  shape.back() = out;
  auto result = RankedTensorType::get(shape, input.getElementType());
  DenseI64ArrayAttr block;
  if (w.scale) {
    auto [rows, cols] = weightBlock();
    block = builder_.getDenseI64ArrayAttr({rows, cols});
  }
  return builder_.create<LinearOp>(loc(prefix), result, x, w.value, b, w.scale,
                                   Value(), block, actUe8m0(w));
}

Value GraphBuilder::rmsNorm(Value x, const std::string &name, double eps) {
  auto input = cast<RankedTensorType>(x.getType());
  Weight w =
      weight(name + ".weight", {input.getShape().back()}, WeightKind::Plain);
  return builder_.create<RMSNormOp>(loc(name), input, x, w.value,
                                    builder_.getF64FloatAttr(eps));
}

Value GraphBuilder::reshape(Value x, ArrayRef<int64_t> dims) {
  auto input = cast<RankedTensorType>(x.getType());
  SmallVector<int64_t> shape(input.getShape().take_front(2));
  llvm::append_range(shape, dims);
  return builder_.create<ReshapeOp>(
      x.getLoc(), RankedTensorType::get(shape, input.getElementType()), x);
}

Value GraphBuilder::slice(Value x, int64_t offset, int64_t size) {
  auto input = cast<RankedTensorType>(x.getType());
  SmallVector<int64_t> shape(input.getShape());
  shape.back() = size;
  return builder_.create<SliceOp>(
      x.getLoc(), RankedTensorType::get(shape, input.getElementType()), x,
      offset, size);
}

Value GraphBuilder::concat(ValueRange inputs) {
  auto first = cast<RankedTensorType>(inputs.front().getType());
  SmallVector<int64_t> shape(first.getShape());
  shape.back() = 0;
  for (Value v : inputs)
    shape.back() += cast<RankedTensorType>(v.getType()).getShape().back();
  return builder_.create<ConcatOp>(
      inputs.front().getLoc(),
      RankedTensorType::get(shape, first.getElementType()), inputs);
}

Value GraphBuilder::rope(Value x, Value positions) {
  return builder_.create<RopeOp>(x.getLoc(), x.getType(), x, positions, rope_);
}

} // namespace kiln::models
