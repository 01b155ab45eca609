//===- FeedForward.cpp - dense MLP and DeepSeekMoE blocks -----------------===//
#include "models/Blocks.h"

using namespace mlir;
using namespace mlir::kiln;
using ::kiln::frontend::Architecture;

namespace kiln::models {
namespace {

/// One stacked projection of every routed expert applied to the rows the
/// dispatch grouped by expert.
Value expertProjection(GraphBuilder &g, Value rows, Value offsets,
                       const std::string &prefix, const std::string &proj,
                       int64_t experts, int64_t out, int64_t in) {
  std::string name = prefix + ".experts." + proj + ".weight";
  Weight w = g.weight(name, {experts, out, in}, WeightKind::QuantizableLinear,
                      prefix + ".experts.{}." + proj + ".weight");
  auto rowType = cast<RankedTensorType>(rows.getType());
  auto result = RankedTensorType::get({rowType.getDimSize(0), out},
                                      rowType.getElementType());
  DenseI64ArrayAttr block;
  if (w.scale) {
    auto [r, c] = g.weightBlock();
    block = g.b().getDenseI64ArrayAttr({r, c});
  }
  return g.b().create<GroupedLinearOp>(g.loc(name), result, rows, w.value,
                                       offsets, w.scale, block, g.actUe8m0(w));
}

ScoringFunc scoringFunc(frontend::ScoringFunc f) {
  return f == frontend::ScoringFunc::Sigmoid ? ScoringFunc::sigmoid
                                             : ScoringFunc::softmax;
}

TopkMethod topkMethod(frontend::TopkMethod m) {
  switch (m) {
  case frontend::TopkMethod::GroupLimitedGreedy:
    return TopkMethod::group_limited_greedy;
  case frontend::TopkMethod::NoauxTc:
    return TopkMethod::noaux_tc;
  case frontend::TopkMethod::Greedy:
    break;
  }
  return TopkMethod::greedy;
}

} // namespace

Value buildDenseMlp(GraphBuilder &g, Value x, const std::string &prefix,
                    int64_t intermediate) {
  bool bias = g.config().mlpBias;
  Value gate = g.linear(x, prefix + ".gate_proj", intermediate, bias);
  Value up = g.linear(x, prefix + ".up_proj", intermediate, bias);
  Value h = g.b().create<SwiGLUOp>(g.loc(prefix + ".act"), gate, up);
  return g.linear(h, prefix + ".down_proj", g.config().hiddenSize, bias);
}

Value buildMoe(GraphBuilder &g, Value x, const std::string &prefix) {
  const frontend::ModelConfig &c = g.config();
  const frontend::MoeConfig &moe = *c.moe;
  MLIRContext *ctx = x.getContext();
  int64_t experts = moe.nRoutedExperts, topK = moe.numExpertsPerTok,
          hidden = c.hiddenSize, inter = moe.moeIntermediateSize;

  // Router, kept in the checkpoint's float dtype (never FP8).
  Value gateW =
      g.weight(prefix + ".gate.weight", {experts, hidden}, WeightKind::Plain)
          .value;
  Value bias;
  if (moe.topkMethod == frontend::TopkMethod::NoauxTc)
    bias = g.weight(prefix + ".gate.e_score_correction_bias", {experts},
                    WeightKind::Plain)
               .value;
  // DeepSeek-V2 renormalizes only for top_k > 1 and then skips the routed
  // scaling factor; V3 always renormalizes (when asked) and always scales.
  bool normalize = moe.normTopkProb;
  double scaling = moe.routedScalingFactor;
  if (c.architecture == Architecture::DeepseekV2) {
    normalize = normalize && topK > 1;
    if (normalize)
      scaling = 1.0;
  }
  auto routeType = [&](Type element) {
    return RankedTensorType::get(
        {ShapedType::kDynamic, ShapedType::kDynamic, topK}, element);
  };
  auto gate = g.b().create<MoEGateOp>(
      g.loc(prefix + ".gate"), routeType(Float32Type::get(ctx)),
      routeType(IntegerType::get(ctx, 32)), x, gateW, bias,
      scoringFunc(moe.scoringFunc), topkMethod(moe.topkMethod), topK,
      moe.nGroup, moe.topkGroup, normalize, APFloat(scaling));

  auto rowsType =
      RankedTensorType::get({ShapedType::kDynamic, hidden}, g.activationType());
  auto dispatch = g.b().create<MoEDispatchOp>(
      g.loc(prefix + ".dispatch"), rowsType, g.indexTensor({experts + 1}),
      g.indexTensor({ShapedType::kDynamic}),
      g.indexTensor({ShapedType::kDynamic, ShapedType::kDynamic, topK}), x,
      gate.getIndices(), experts);
  Value rows = dispatch.getRouted(), offsets = dispatch.getExpertOffsets();
  Value up1 = expertProjection(g, rows, offsets, prefix, "gate_proj", experts,
                               inter, hidden);
  Value up2 = expertProjection(g, rows, offsets, prefix, "up_proj", experts,
                               inter, hidden);
  Value act = g.b().create<SwiGLUOp>(g.loc(prefix + ".experts.act"), up1, up2);
  Value down = expertProjection(g, act, offsets, prefix, "down_proj", experts,
                                hidden, inter);
  Value out = g.b().create<MoECombineOp>(
      g.loc(prefix + ".combine"), g.activation({hidden}), down,
      gate.getWeights(), dispatch.getSelectionRows());

  if (moe.nSharedExperts > 0) {
    Value shared = buildDenseMlp(g, x, prefix + ".shared_experts",
                                 inter * moe.nSharedExperts);
    out = g.b().create<AddOp>(g.loc(prefix + ".shared_experts"), out, shared);
  }
  return out;
}

} // namespace kiln::models
