//===- KilnOps.cpp - kiln operation verifiers -----------------------------===//
#include "ir/KilnOps.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace mlir::kiln;

#define GET_OP_CLASSES
#include "ir/KilnOps.cpp.inc"

//===----------------------------------------------------------------------===//
// Shape helpers
//===----------------------------------------------------------------------===//

namespace {

std::string formatShape(ArrayRef<int64_t> shape) {
  std::string text;
  llvm::raw_string_ostream os(text);
  os << "[";
  llvm::interleaveComma(shape, os, [&](int64_t d) {
    if (ShapedType::isDynamic(d))
      os << "?";
    else
      os << d;
  });
  os << "]";
  return text;
}

/// A dimension as text: its size, or `?` when dynamic.
std::string formatDim(int64_t d) {
  return ShapedType::isDynamic(d) ? std::string("?") : std::to_string(d);
}

bool dimsCompatible(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) || ShapedType::isDynamic(b) || a == b;
}

/// Checks `actual` against `expected` dimension by dimension; a dynamic
/// dimension on either side matches anything.
LogicalResult checkShape(Operation *op, StringRef what, ShapedType actual,
                         ArrayRef<int64_t> expected) {
  ArrayRef<int64_t> shape = actual.getShape();
  bool ok = shape.size() == expected.size() &&
            llvm::all_of(llvm::zip_equal(shape, expected), [](auto pair) {
              return dimsCompatible(std::get<0>(pair), std::get<1>(pair));
            });
  if (ok)
    return success();
  return op->emitOpError() << what << " has shape " << formatShape(shape)
                           << ", expected " << formatShape(expected);
}

LogicalResult checkRank(Operation *op, StringRef what, ShapedType type,
                        int64_t rank) {
  if (type.getRank() == rank)
    return success();
  return op->emitOpError() << what << " must have rank " << rank << ", got "
                           << type.getRank();
}

LogicalResult checkSameElementType(Operation *op, StringRef what, Type actual,
                                   Type expected) {
  Type a = getElementTypeOrSelf(actual), e = getElementTypeOrSelf(expected);
  if (a == e)
    return success();
  return op->emitOpError() << what << " element type " << a << " must match "
                           << e;
}

/// `ceil(a / b)`; dynamic when `a` is.
int64_t ceilDiv(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) ? ShapedType::kDynamic : (a + b - 1) / b;
}

bool isFp8(Type type) {
  return isa<Float8E4M3FNType>(getElementTypeOrSelf(type));
}

/// FP8 weights carry fp32 block scales: checks that `scale`, `blockSize` and
/// the weight dtype agree. `weightShape` is the `[..., out, in]` shape.
/// A GEMM's input against its weights of `in` features (the last
/// dimension): e4m3 codes (a fused kernel's quantized activations) need
/// `inputScale` [..., ceil(in / cols)], FP8 weights and an f32 result; any
/// other input gives a result of its element type.
LogicalResult checkGemmInput(Operation *op, RankedTensorType input,
                             ShapedType weight,
                             TypedValue<RankedTensorType> inputScale,
                             std::optional<ArrayRef<int64_t>> blockSize,
                             RankedTensorType result) {
  int64_t in = weight.getShape().back();
  bool quantizedInput = isFp8(input);
  if (quantizedInput != static_cast<bool>(inputScale))
    return op->emitOpError("an f8E4M3FN input needs input_scale, and only it");
  if (quantizedInput) {
    if (!isFp8(weight) || !blockSize)
      return op->emitOpError("an f8E4M3FN input needs an f8E4M3FN weight");
    if (!result.getElementType().isF32())
      return op->emitOpError("an f8E4M3FN input gives an f32 result");
    SmallVector<int64_t> scales(input.getShape());
    scales.back() = ceilDiv(in, (*blockSize)[1]);
    if (failed(checkShape(op, "input_scale", inputScale.getType(), scales)))
      return failure();
  } else if (failed(checkSameElementType(op, "result", result, input))) {
    return failure();
  }
  if (!dimsCompatible(input.getShape().back(), in))
    return op->emitOpError("input's last dimension ")
           << input.getShape().back() << " does not match the weight's " << in
           << " input features";
  return success();
}

LogicalResult checkBlockScale(Operation *op, ShapedType weight,
                              TypedValue<RankedTensorType> scale,
                              std::optional<ArrayRef<int64_t>> blockSize,
                              bool actUe8m0) {
  if (!scale) {
    if (isFp8(weight))
      return op->emitOpError("an f8E4M3FN weight needs a block scale");
    if (blockSize)
      return op->emitOpError("block_size given without a scale");
    if (actUe8m0)
      return op->emitOpError("act_ue8m0 given without an f8E4M3FN weight");
    return success();
  }
  if (!isFp8(weight))
    return op->emitOpError("a block scale needs an f8E4M3FN weight, got ")
           << weight.getElementType();
  if (!blockSize || blockSize->size() != 2 || (*blockSize)[0] <= 0 ||
      (*blockSize)[1] <= 0)
    return op->emitOpError("a block scale needs block_size = [rows, cols] "
                           "with positive entries");
  ArrayRef<int64_t> w = weight.getShape();
  SmallVector<int64_t> expected(w.begin(), w.end());
  size_t n = expected.size();
  expected[n - 2] = ceilDiv(w[n - 2], (*blockSize)[0]);
  expected[n - 1] = ceilDiv(w[n - 1], (*blockSize)[1]);
  return checkShape(op, "scale", scale.getType(), expected);
}

/// Looks up the symbol `name` as an op of type `OpT` from `user`.
template <typename OpT>
OpT lookupSymbol(Operation *user, SymbolTableCollection &symbolTable,
                 FlatSymbolRefAttr name, StringRef kind) {
  auto found = symbolTable.lookupNearestSymbolFrom<OpT>(user, name);
  if (!found)
    user->emitOpError() << "'" << name.getValue() << "' does not name a "
                        << kind;
  return found;
}

/// `[batch, seq, entry...]` for a cache slot's entry type.
SmallVector<int64_t> perTokenShape(int64_t batch, int64_t seq,
                                   RankedTensorType entry) {
  SmallVector<int64_t> shape{batch, seq};
  llvm::append_range(shape, entry.getShape());
  return shape;
}

} // namespace

//===----------------------------------------------------------------------===//
// Parameters and cache slots
//===----------------------------------------------------------------------===//

LogicalResult ParameterOp::verify() {
  RankedTensorType type = getTensorType();
  if (!type.hasStaticShape() || type.getRank() == 0)
    return emitOpError("parameter type must have a static, non-scalar shape, "
                       "got ")
           << type;
  StringRef source = getSourceName();
  size_t placeholders = source.count("{}");
  if (placeholders > 1)
    return emitOpError("source '") << source << "' has more than one '{}'";
  if (placeholders == 1 && type.getRank() < 2)
    return emitOpError("a stacked parameter needs rank >= 2, got ") << type;
  if (Fp8QuantAttr quant = getQuantizeAttr()) {
    Type expected = quant.getScale()
                        ? Type(Float32Type::get(getContext()))
                        : Type(Float8E4M3FNType::get(getContext()));
    if (type.getElementType() != expected)
      return emitOpError("a parameter quantized by fp8_quant")
             << (quant.getScale() ? " (its scales)" : "") << " must be "
             << expected << ", got " << type.getElementType();
    if (type.getRank() < 2)
      return emitOpError("fp8_quant needs a parameter of rank >= 2");
  }
  if (HeadSliceAttr slice = getTransformAttr()) {
    if (placeholders)
      return emitOpError("a derived parameter cannot be stacked");
    int64_t size = slice.getSize(), heads = slice.getHeads();
    if (type.getRank() != 3 || type.getDimSize(0) != heads ||
        type.getDimSize(slice.getTranspose() ? 2 : 1) != size)
      return emitOpError("type ")
             << type << " does not match its head_slice transform ([" << heads
             << ", " << (slice.getTranspose() ? "in, " : "") << size
             << (slice.getTranspose() ? "" : ", in") << "])";
  }
  return success();
}

LogicalResult
GetParameterOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  auto param = lookupSymbol<ParameterOp>(*this, symbolTable, getNameAttr(),
                                         "kiln.parameter");
  if (!param)
    return failure();
  if (param.getType() != getType())
    return emitOpError("result type ")
           << getType() << " does not match parameter type " << param.getType();
  return success();
}

LogicalResult KVCacheOp::verify() {
  RankedTensorType type = getEntryTensorType();
  if (!type.hasStaticShape())
    return emitOpError("cache entry type must have a static shape, got ")
           << type;
  Type element = type.getElementType();
  if (!isa<Float32Type, BFloat16Type, Float8E4M3FNType>(element))
    return emitOpError("cache entries must be f32, bf16 or f8E4M3FN, got ")
           << element;
  if (PackedCacheAttr storage = getStorageAttr()) {
    if (!isa<Float32Type, BFloat16Type>(element) || type.getRank() != 2 ||
        type.getDimSize(0) != 1)
      return emitOpError("packed_cache storage needs a [1, n] f32 or bf16 "
                         "entry, got ")
             << type;
    if (storage.getFp8Columns() > type.getDimSize(1))
      return emitOpError("packed_cache fp8_columns (")
             << storage.getFp8Columns() << ") exceed the entry's "
             << type.getDimSize(1);
  }
  return success();
}

int64_t KVCacheOp::getStoredBytesPerToken() {
  RankedTensorType type = getEntryTensorType();
  int64_t elements = type.getNumElements();
  PackedCacheAttr storage = getStorageAttr();
  if (!storage)
    return elements * type.getElementTypeBitWidth() / 8;
  return storage.getRowBytes(elements);
}

LogicalResult KVAppendOp::verify() {
  ArrayRef<int64_t> shape = getValue().getType().getShape();
  if (shape.size() < 2)
    return emitOpError("value must be [batch, seq, entry...]");
  return checkShape(*this, "positions", getPositions().getType(),
                    {shape[0], shape[1]});
}

LogicalResult KVAppendOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  auto slot = lookupSymbol<KVCacheOp>(*this, symbolTable, getCacheAttr(),
                                      "kiln.kv_cache");
  if (!slot)
    return failure();
  RankedTensorType value = getValue().getType();
  RankedTensorType entry = slot.getEntryTensorType();
  if (!isFp8(entry) && failed(checkSameElementType(*this, "value", value,
                                                   entry.getElementType())))
    return failure();
  return checkShape(
      *this, "value", value,
      perTokenShape(value.getDimSize(0), value.getDimSize(1), entry));
}

LogicalResult KVReadOp::verify() {
  ArrayRef<int64_t> shape = getResult().getType().getShape();
  if (shape.size() < 2)
    return emitOpError("result must be [batch, kv_len, entry...]");
  if (std::optional<ArrayRef<int64_t>> columns = getColumns())
    if (columns->size() != 2 || (*columns)[0] < 0 || (*columns)[1] < 1)
      return emitOpError("columns must be [offset >= 0, size >= 1]");
  return checkShape(*this, "lengths", getLengths().getType(), {shape[0]});
}

LogicalResult KVReadOp::verifySymbolUses(SymbolTableCollection &symbolTable) {
  auto slot = lookupSymbol<KVCacheOp>(*this, symbolTable, getCacheAttr(),
                                      "kiln.kv_cache");
  if (!slot)
    return failure();
  RankedTensorType result = getResult().getType();
  RankedTensorType entry = slot.getEntryTensorType();
  if (!isFp8(entry) && failed(checkSameElementType(*this, "result", result,
                                                   entry.getElementType())))
    return failure();
  SmallVector<int64_t> expected =
      perTokenShape(result.getDimSize(0), result.getDimSize(1), entry);
  if (std::optional<ArrayRef<int64_t>> columns = getColumns()) {
    int64_t last = entry.getShape().back();
    if ((*columns)[0] + (*columns)[1] > last)
      return emitOpError("columns [")
             << (*columns)[0] << ", +" << (*columns)[1]
             << ") exceed the entry's last dimension " << last;
    expected.back() = (*columns)[1];
  }
  return checkShape(*this, "result", result, expected);
}

//===----------------------------------------------------------------------===//
// Dense compute
//===----------------------------------------------------------------------===//

LogicalResult EmbeddingOp::verify() {
  RankedTensorType tokens = getTokens().getType();
  RankedTensorType table = getTable().getType();
  if (failed(checkRank(*this, "tokens", tokens, 2)) ||
      failed(checkRank(*this, "table", table, 2)))
    return failure();
  return checkShape(
      *this, "result", getResult().getType(),
      {tokens.getDimSize(0), tokens.getDimSize(1), table.getDimSize(1)});
}

LogicalResult RMSNormOp::verify() {
  RankedTensorType input = getInput().getType();
  if (input.getRank() < 1)
    return emitOpError("input must have rank >= 1");
  if (!(getEpsilon().convertToDouble() > 0))
    return emitOpError("epsilon must be positive");
  if (failed(checkShape(*this, "weight", getWeight().getType(),
                        {input.getShape().back()})))
    return failure();
  if (getResult().getType() != input)
    return emitOpError("result type must equal the input type");
  return success();
}

LogicalResult LinearOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType weight = getWeight().getType();
  if (input.getRank() < 1)
    return emitOpError("input must have rank >= 1");
  if (failed(checkRank(*this, "weight", weight, 2)))
    return failure();
  if (failed(checkGemmInput(*this, input, weight, getInputScale(),
                            getBlockSize(), getResult().getType())))
    return failure();
  int64_t out = weight.getDimSize(0);
  SmallVector<int64_t> expected(input.getShape());
  expected.back() = out;
  if (failed(checkShape(*this, "result", getResult().getType(), expected)))
    return failure();
  if (getBias() &&
      failed(checkShape(*this, "bias", getBias().getType(), {out})))
    return failure();
  return checkBlockScale(*this, weight, getWeightScale(), getBlockSize(),
                         getActUe8m0());
}

LogicalResult QuantizeFp8Op::verify() {
  RankedTensorType input = getInput().getType();
  if (input.getRank() < 1 || getBlockCols() <= 0)
    return emitOpError("expects input [..., channels] and block_cols > 0");
  if (failed(
          checkShape(*this, "codes", getCodes().getType(), input.getShape())))
    return failure();
  SmallVector<int64_t> scales(input.getShape());
  scales.back() = ceilDiv(input.getShape().back(), getBlockCols());
  return checkShape(*this, "scales", getScales().getType(), scales);
}

LogicalResult HeadLinearOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType weight = getWeight().getType();
  if (input.getRank() < 2 || failed(checkRank(*this, "weight", weight, 3)) ||
      failed(
          checkSameElementType(*this, "result", getResult().getType(), input)))
    return emitOpError("expects input [..., heads, in] and weight "
                       "[heads, out, in]");
  SmallVector<int64_t> expected(input.getShape());
  size_t n = expected.size();
  int64_t in = weight.getDimSize(2);
  if (std::optional<int64_t> offset = getInputOffset()) {
    // Columns [offset, offset + in) of each head's row.
    if (*offset < 0 || ShapedType::isDynamic(expected[n - 1]) ||
        ShapedType::isDynamic(in) || *offset + in > expected[n - 1])
      return emitOpError("input_offset ")
             << *offset << " + the weight's " << in
             << " input features exceed the input's head width "
             << expected[n - 1];
    if (getWeightScale())
      return emitOpError("input_offset takes no f8E4M3FN weight (its "
                         "input is quantized whole)");
  } else if (!dimsCompatible(expected[n - 1], in)) {
    return emitOpError("input heads/features ")
           << formatShape(input.getShape().take_back(2))
           << " do not match the weight's [heads, _, in] "
           << formatShape(weight.getShape());
  }
  if (!dimsCompatible(expected[n - 2], weight.getDimSize(0)))
    return emitOpError("input heads/features ")
           << formatShape(input.getShape().take_back(2))
           << " do not match the weight's [heads, _, in] "
           << formatShape(weight.getShape());
  expected[n - 1] = weight.getDimSize(1);
  if (failed(checkShape(*this, "result", getResult().getType(), expected)))
    return failure();
  return checkBlockScale(*this, weight, getWeightScale(), getBlockSize(),
                         getActUe8m0());
}

LogicalResult LogitsOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType weight = getWeight().getType();
  if (input.getRank() < 1 || weight.getRank() != 2)
    return emitOpError(
        "expects input [..., hidden] and weight [vocab, hidden]");
  if (!dimsCompatible(input.getShape().back(), weight.getDimSize(1)))
    return emitOpError("input's last dimension does not match the head's "
                       "hidden size ")
           << weight.getDimSize(1);
  SmallVector<int64_t> expected(input.getShape());
  expected.back() = weight.getDimSize(0);
  return checkShape(*this, "result", getResult().getType(), expected);
}

//===----------------------------------------------------------------------===//
// Shape ops
//===----------------------------------------------------------------------===//

LogicalResult ReshapeOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType result = getResult().getType();
  if (failed(checkSameElementType(*this, "result", result, input)))
    return failure();
  auto split = [](RankedTensorType type, int64_t &dynamicPrefix,
                  int64_t &staticProduct) {
    ArrayRef<int64_t> shape = type.getShape();
    dynamicPrefix = 0;
    while (dynamicPrefix < type.getRank() &&
           ShapedType::isDynamic(shape[dynamicPrefix]))
      ++dynamicPrefix;
    staticProduct = 1;
    for (int64_t d : shape.drop_front(dynamicPrefix)) {
      if (ShapedType::isDynamic(d))
        return false;
      staticProduct *= d;
    }
    return true;
  };
  int64_t inPrefix, inProduct, outPrefix, outProduct;
  if (!split(input, inPrefix, inProduct) ||
      !split(result, outPrefix, outProduct))
    return emitOpError("dynamic dimensions must form a leading prefix");
  if (inPrefix != outPrefix)
    return emitOpError("must keep the ")
           << inPrefix << " leading dynamic dimension(s), result has "
           << outPrefix;
  if (inProduct != outProduct)
    return emitOpError("static dimensions hold ")
           << inProduct << " elements in the input but " << outProduct
           << " in the result";
  return success();
}

LogicalResult SliceOp::verify() {
  RankedTensorType input = getInput().getType();
  if (input.getRank() < 1)
    return emitOpError("input must have rank >= 1");
  int64_t last = input.getShape().back();
  int64_t offset = getOffset(), size = getSize();
  if (offset < 0 || size <= 0)
    return emitOpError("needs offset >= 0 and size > 0");
  // `offset + size` may overflow int64_t; both are non-negative here.
  if (!ShapedType::isDynamic(last) && offset > last - size)
    return emitOpError("range [")
           << offset << ", "
           << static_cast<uint64_t>(offset) + static_cast<uint64_t>(size)
           << ") exceeds the last dimension " << last;
  if (failed(
          checkSameElementType(*this, "result", getResult().getType(), input)))
    return failure();
  SmallVector<int64_t> expected(input.getShape());
  expected.back() = size;
  return checkShape(*this, "result", getResult().getType(), expected);
}

LogicalResult ConcatOp::verify() {
  if (getInputs().empty())
    return emitOpError("needs at least one input");
  auto first = cast<RankedTensorType>(getInputs().front().getType());
  if (first.getRank() < 1)
    return emitOpError("inputs must have rank >= 1");
  SmallVector<int64_t> expected(first.getShape());
  expected.back() = 0;
  for (Value input : getInputs()) {
    auto type = cast<RankedTensorType>(input.getType());
    if (failed(checkSameElementType(*this, "input", type, first)))
      return failure();
    SmallVector<int64_t> leading(first.getShape().drop_back());
    leading.push_back(type.getRank() ? type.getShape().back() : 0);
    if (failed(checkShape(*this, "input", type, leading)))
      return failure();
    int64_t last = type.getShape().back();
    if (ShapedType::isDynamic(last) || ShapedType::isDynamic(expected.back()))
      expected.back() = ShapedType::kDynamic;
    else
      expected.back() += last;
  }
  if (failed(
          checkSameElementType(*this, "result", getResult().getType(), first)))
    return failure();
  return checkShape(*this, "result", getResult().getType(), expected);
}

LogicalResult BroadcastOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType result = getResult().getType();
  if (failed(checkSameElementType(*this, "result", result, input)))
    return failure();
  if (input.getRank() != result.getRank())
    return emitOpError("result rank must equal the input rank");
  for (auto [i, pair] :
       llvm::enumerate(llvm::zip_equal(input.getShape(), result.getShape()))) {
    auto [from, to] = pair;
    if (dimsCompatible(from, to) || from == 1)
      continue;
    return emitOpError("dimension ")
           << i << " of size " << from << " cannot broadcast to " << to;
  }
  return success();
}

//===----------------------------------------------------------------------===//
// Attention
//===----------------------------------------------------------------------===//

LogicalResult RopeOp::verify() {
  RankedTensorType input = getInput().getType();
  if (input.getRank() < 3)
    return emitOpError("input must be [batch, seq, ..., rotary_dim]");
  int64_t dim = input.getShape().back();
  if (ShapedType::isDynamic(dim) || dim % 2 != 0)
    return emitOpError("rotary dimension must be static and even, got ")
           << formatShape({dim});
  if (getResult().getType() != input)
    return emitOpError("result type must equal the input type");
  return checkShape(*this, "positions", getPositions().getType(),
                    {input.getDimSize(0), input.getDimSize(1)});
}

LogicalResult AttentionOp::verify() {
  RankedTensorType q = getQuery().getType();
  RankedTensorType k = getKey().getType();
  RankedTensorType v = getValue().getType();
  if (failed(checkRank(*this, "query", q, 4)) ||
      failed(checkRank(*this, "key", k, 4)) ||
      failed(checkRank(*this, "value", v, 4)))
    return failure();
  if (failed(checkSameElementType(*this, "key", k, q)) ||
      failed(checkSameElementType(*this, "value", v, q)) ||
      failed(checkSameElementType(*this, "result", getResult().getType(), q)))
    return failure();
  int64_t batch = q.getDimSize(0), heads = q.getDimSize(2);
  int64_t kvHeads = k.getDimSize(2), dk = q.getDimSize(3);
  if (failed(checkShape(*this, "key", k,
                        {batch, ShapedType::kDynamic, kvHeads, dk})) ||
      failed(checkShape(*this, "value", v,
                        {batch, k.getDimSize(1), kvHeads, v.getDimSize(3)})))
    return failure();
  if (ShapedType::isDynamic(heads) || ShapedType::isDynamic(kvHeads) ||
      kvHeads <= 0 || heads % kvHeads != 0)
    return emitOpError("query heads (")
           << formatDim(heads)
           << ") must be a static multiple of key/value heads ("
           << formatDim(kvHeads) << ")";
  if (!(getScale().convertToDouble() > 0))
    return emitOpError("scale must be positive");
  if (failed(checkShape(*this, "positions", getPositions().getType(),
                        {batch, q.getDimSize(1)})) ||
      failed(
          checkShape(*this, "kv_lengths", getKvLengths().getType(), {batch})))
    return failure();
  return checkShape(*this, "result", getResult().getType(),
                    {batch, q.getDimSize(1), heads, v.getDimSize(3)});
}

//===----------------------------------------------------------------------===//
// Mixture of experts
//===----------------------------------------------------------------------===//

LogicalResult MoEGateOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType weight = getWeight().getType();
  if (failed(checkRank(*this, "input", input, 3)) ||
      failed(checkRank(*this, "weight", weight, 2)))
    return failure();
  int64_t experts = weight.getDimSize(0);
  if (ShapedType::isDynamic(experts))
    return emitOpError("router weight needs a static expert count");
  if (!dimsCompatible(input.getDimSize(2), weight.getDimSize(1)))
    return emitOpError("router weight expects hidden size ")
           << weight.getDimSize(1) << ", input has " << input.getDimSize(2);
  int64_t topK = getTopK(), nGroup = getNGroup();
  int64_t topkGroup = getTopkGroup();
  if (topK < 1 || topK > experts)
    return emitOpError("top_k must be in [1, ") << experts << "], got " << topK;
  if (nGroup < 1 || experts % nGroup != 0)
    return emitOpError("n_group (")
           << nGroup << ") must divide the expert count (" << experts << ")";
  if (topkGroup < 1 || topkGroup > nGroup)
    return emitOpError("topk_group must be in [1, n_group]");
  TopkMethod method = getTopkMethod();
  if (method != TopkMethod::greedy && topK > topkGroup * (experts / nGroup))
    return emitOpError("top_k (")
           << topK << ") exceeds the experts in the kept groups ("
           << topkGroup * (experts / nGroup) << ")";
  bool noaux = method == TopkMethod::noaux_tc;
  if (noaux != static_cast<bool>(getCorrectionBias()))
    return emitOpError("a correction bias is required by, and only by, "
                       "noaux_tc");
  if (noaux && getScoringFunc() != ScoringFunc::sigmoid)
    return emitOpError("noaux_tc needs sigmoid scoring");
  if (getCorrectionBias() &&
      failed(checkShape(*this, "correction bias", getCorrectionBias().getType(),
                        {experts})))
    return failure();
  SmallVector<int64_t> expected{input.getDimSize(0), input.getDimSize(1), topK};
  if (failed(checkShape(*this, "weights", getWeights().getType(), expected)))
    return failure();
  return checkShape(*this, "indices", getIndices().getType(), expected);
}

LogicalResult MoEDispatchOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType indices = getIndices().getType();
  if (failed(checkRank(*this, "input", input, 3)) ||
      failed(checkRank(*this, "indices", indices, 3)))
    return failure();
  if (getNumExperts() < 1)
    return emitOpError("num_experts must be positive");
  if (failed(checkShape(
          *this, "indices", indices,
          {input.getDimSize(0), input.getDimSize(1), indices.getDimSize(2)})) ||
      failed(checkSameElementType(*this, "routed", getRouted().getType(),
                                  input)) ||
      failed(checkShape(*this, "routed", getRouted().getType(),
                        {ShapedType::kDynamic, input.getDimSize(2)})) ||
      failed(checkShape(*this, "expert_offsets", getExpertOffsets().getType(),
                        {static_cast<int64_t>(getNumExperts()) + 1})) ||
      failed(checkRank(*this, "slots", getSlots().getType(), 1)))
    return failure();
  return checkShape(*this, "selection_rows", getSelectionRows().getType(),
                    indices.getShape());
}

LogicalResult GroupedLinearOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType weight = getWeight().getType();
  if (failed(checkRank(*this, "input", input, 2)) ||
      failed(checkRank(*this, "weight", weight, 3)) ||
      failed(
          checkSameElementType(*this, "result", getResult().getType(), input)))
    return failure();
  int64_t experts = weight.getDimSize(0);
  if (!dimsCompatible(input.getDimSize(1), weight.getDimSize(2)))
    return emitOpError("input features ")
           << input.getDimSize(1) << " do not match the experts' "
           << weight.getDimSize(2);
  int64_t offsets =
      ShapedType::isDynamic(experts) ? ShapedType::kDynamic : experts + 1;
  if (failed(checkShape(*this, "expert_offsets", getExpertOffsets().getType(),
                        {offsets})) ||
      failed(checkShape(*this, "result", getResult().getType(),
                        {input.getDimSize(0), weight.getDimSize(1)})))
    return failure();
  return checkBlockScale(*this, weight, getWeightScale(), getBlockSize(),
                         getActUe8m0());
}

LogicalResult GatedLinearOp::verify() {
  RankedTensorType input = getInput().getType();
  RankedTensorType weight = getGateWeight().getType();
  if (weight != getUpWeight().getType())
    return emitOpError("gate_weight ")
           << weight << " and up_weight " << getUpWeight().getType()
           << " must have one type";
  bool grouped = static_cast<bool>(getExpertOffsets());
  if (failed(checkRank(*this, "gate_weight", weight, grouped ? 3 : 2)))
    return failure();
  if (grouped) {
    if (failed(checkRank(*this, "input", input, 2)))
      return failure();
  } else if (input.getRank() < 1) {
    return emitOpError("input must have rank >= 1");
  }
  if (grouped && isFp8(input))
    return emitOpError("an f8E4M3FN input takes no expert_offsets");
  if (failed(checkGemmInput(*this, input, weight, getInputScale(),
                            getBlockSize(), getResult().getType())))
    return failure();
  int64_t out = weight.getDimSize(weight.getRank() - 2);
  SmallVector<int64_t> expected(input.getShape());
  expected.back() = out;
  if (grouped) {
    int64_t experts = weight.getDimSize(0);
    if (failed(checkShape(*this, "expert_offsets", getExpertOffsets().getType(),
                          {ShapedType::isDynamic(experts) ? ShapedType::kDynamic
                                                          : experts + 1})))
      return failure();
  }
  if (failed(checkShape(*this, "result", getResult().getType(), expected)))
    return failure();
  if (static_cast<bool>(getGateScale()) != static_cast<bool>(getUpScale()))
    return emitOpError("gate_scale and up_scale must be given together");
  if (failed(checkBlockScale(*this, weight, getGateScale(), getBlockSize(),
                             getActUe8m0())))
    return failure();
  return checkBlockScale(*this, weight, getUpScale(), getBlockSize(),
                         getActUe8m0());
}

LogicalResult MoECombineOp::verify() {
  RankedTensorType outputs = getExpertOutputs().getType();
  RankedTensorType weights = getWeights().getType();
  if (failed(checkRank(*this, "expert_outputs", outputs, 2)) ||
      failed(checkRank(*this, "weights", weights, 3)) ||
      failed(checkShape(*this, "selection_rows", getSelectionRows().getType(),
                        weights.getShape())) ||
      failed(checkSameElementType(*this, "result", getResult().getType(),
                                  outputs)))
    return failure();
  return checkShape(
      *this, "result", getResult().getType(),
      {weights.getDimSize(0), weights.getDimSize(1), outputs.getDimSize(1)});
}

//===----------------------------------------------------------------------===//
// Fusion
//===----------------------------------------------------------------------===//

bool FusedOp::canContain(Operation *op) {
  return isa<EmbeddingOp, RMSNormOp, AddOp, SwiGLUOp, RopeOp, SliceOp, ConcatOp,
             BroadcastOp, ReshapeOp, MoEGateOp, MoECombineOp, QuantizeFp8Op,
             KVAppendOp>(op);
}

bool FusedOp::readsIndexedRows(OpOperand &use) {
  return isa<MoECombineOp>(use.getOwner()) && use.getOperandNumber() == 0;
}

namespace {

/// The checks `kiln.fused` and `kiln.linear_group` share: the body's
/// arguments are the inputs, and it ends by yielding the results.
FailureOr<YieldOp> verifyGroupBody(Operation *op, Block &body,
                                   ValueRange inputs) {
  if (op->getNumResults() == 0)
    return op->emitOpError("must yield at least one value");
  if (body.getNumArguments() != inputs.size())
    return op->emitOpError("body takes ")
           << body.getNumArguments() << " argument(s) for " << inputs.size()
           << " input(s)";
  for (auto [i, pair] : llvm::enumerate(
           llvm::zip_equal(body.getArgumentTypes(), inputs.getTypes())))
    if (std::get<0>(pair) != std::get<1>(pair))
      return op->emitOpError("body argument ")
             << i << " has type " << std::get<0>(pair) << ", input has "
             << std::get<1>(pair);
  auto yield = dyn_cast_or_null<YieldOp>(body.empty() ? nullptr : &body.back());
  if (!yield)
    return op->emitOpError("body must end with kiln.yield");
  if (yield.getValues().getTypes() != op->getResultTypes())
    return op->emitOpError("yields ")
           << yield.getValues().size()
           << " value(s) whose types differ from the results";
  return yield;
}

} // namespace

LogicalResult FusedOp::verify() {
  if (getName().empty())
    return emitOpError("needs a kernel name");
  Block &body = getBody().front();
  if (failed(verifyGroupBody(*this, body, getInputs())))
    return failure();
  for (Operation &op : body.without_terminator())
    if (!canContain(&op))
      return op.emitOpError("cannot be fused: only row-local ops may be in "
                            "a kiln.fused body");
  return success();
}

namespace {

/// What selects a grouped GEMM's kernel: gatedness, weight and input
/// element types, FP8 block and activation scale rounding. FP8 GEMMs of f32
/// activations quantize their rows in the grouped GEMV, so they group with
/// those that read e4m3 codes: their input type is the codes' for this.
struct GemmKernel {
  bool gated;
  Type weight, input;
  std::optional<ArrayRef<int64_t>> block;
  bool ue8m0;
  bool operator==(const GemmKernel &o) const {
    return gated == o.gated && weight == o.weight && input == o.input &&
           block == o.block && ue8m0 == o.ue8m0;
  }
};

/// The kernel `op` needs, if a linear group may hold it.
std::optional<GemmKernel> gemmKernel(Operation *op) {
  auto of = [](Value weight, Value input) {
    Type w = getElementTypeOrSelf(weight.getType());
    Type x = getElementTypeOrSelf(input.getType());
    if (isa<Float8E4M3FNType>(w) && x.isF32())
      x = w;
    return std::pair(w, x);
  };
  if (auto l = dyn_cast<LinearOp>(op)) {
    auto [w, x] = of(l.getWeight(), l.getInput());
    return GemmKernel{false, w, x, l.getBlockSize(), l.getActUe8m0()};
  }
  if (auto g = dyn_cast<GroupedLinearOp>(op)) {
    auto [w, x] = of(g.getWeight(), g.getInput());
    return GemmKernel{false, w, x, g.getBlockSize(), g.getActUe8m0()};
  }
  if (auto g = dyn_cast<GatedLinearOp>(op)) {
    auto [w, x] = of(g.getGateWeight(), g.getInput());
    return GemmKernel{true, w, x, g.getBlockSize(), g.getActUe8m0()};
  }
  return std::nullopt;
}

} // namespace

bool LinearGroupOp::canGroup(Operation *a, Operation *b) {
  std::optional<GemmKernel> ka = gemmKernel(a), kb = gemmKernel(b);
  return ka && kb && *ka == *kb;
}

LogicalResult LinearGroupOp::verify() {
  Block &body = getBody().front();
  FailureOr<YieldOp> yield = verifyGroupBody(*this, body, getInputs());
  if (failed(yield))
    return failure();
  SmallVector<Operation *> gemms;
  for (Operation &op : body.without_terminator()) {
    if (!gemmKernel(&op))
      return op.emitOpError("cannot be grouped: only kiln.linear, "
                            "kiln.grouped_linear and kiln.gated_linear may be "
                            "in a kiln.linear_group body");
    gemms.push_back(&op);
  }
  if (gemms.size() < 2 || gemms.size() > kMaxLinears)
    return emitOpError("groups ")
           << gemms.size() << " GEMM(s); a group takes 2 to " << kMaxLinears;
  if ((*yield).getValues().size() != gemms.size())
    return emitOpError("must yield each GEMM's result once, in the body's "
                       "order");
  for (auto [i, gemm] : llvm::enumerate(gemms))
    if ((*yield).getValues()[i] != gemm->getResult(0) ||
        !gemm->getResult(0).hasOneUse())
      return emitOpError("must yield each GEMM's result once, in the body's "
                         "order");
  for (Operation *gemm : llvm::drop_begin(gemms))
    if (!canGroup(gemms.front(), gemm))
      return gemm->emitOpError("needs another kernel than the group's first "
                               "GEMM (gatedness, weight or input type, FP8 "
                               "block)");
  return success();
}
