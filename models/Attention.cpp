//===- Attention.cpp - MLA and GQA attention blocks -----------------------===//
#include "models/Blocks.h"

#include <cmath>

using namespace mlir;
using namespace mlir::kiln;

namespace kiln::models {
namespace {

// HF's DeepSeek modeling builds q_a_layernorm and kv_a_layernorm with the
// RMSNorm default epsilon, not config.rms_norm_eps.
constexpr double kLatentNormEps = 1e-6;

/// Appends `value` to the cache slot `name` and reads back every cached
/// token: `[batch, kv_len, entry...]`.
Value cacheRoundTrip(GraphBuilder &g, Value value, const StepInputs &in,
                     const std::string &name) {
  auto type = cast<RankedTensorType>(value.getType());
  auto entry = RankedTensorType::get(type.getShape().drop_front(2),
                                     type.getElementType());
  g.kvCache(name, entry);
  Location loc = g.loc(name);
  g.b().create<KVAppendOp>(loc, name, value, in.positions);
  return g.b().create<KVReadOp>(loc, type,
                                FlatSymbolRefAttr::get(loc.getContext(), name),
                                in.kvLengths, DenseI64ArrayAttr());
}

Value attention(GraphBuilder &g, Value q, Value k, Value v,
                const StepInputs &in, double scale, const std::string &name) {
  auto qType = cast<RankedTensorType>(q.getType());
  auto vType = cast<RankedTensorType>(v.getType());
  auto result = g.activation({qType.getDimSize(2), vType.getDimSize(3)});
  return g.b().create<AttentionOp>(g.loc(name), result, q, k, v, in.positions,
                                   in.kvLengths, g.b().getF64FloatAttr(scale));
}

/// YaRN's attention temperature: HF multiplies the softmax scale by
/// mscale^2 whenever rope_scaling has a non-zero mscale_all_dim.
double yarnSoftmaxFactor(const frontend::ModelConfig &config) {
  const frontend::RopeScaling &s = config.ropeScaling;
  if (s.type != frontend::RopeType::Yarn || s.mscaleAllDim == 0 ||
      s.factor <= 1)
    return 1.0;
  double mscale = 0.1 * s.mscaleAllDim * std::log(s.factor) + 1.0;
  return mscale * mscale;
}

} // namespace

Value buildMlaAttention(GraphBuilder &g, Value x, const StepInputs &in,
                        const std::string &prefix) {
  const frontend::ModelConfig &c = g.config();
  const frontend::MlaConfig &mla = *c.mla;
  int64_t heads = c.numAttentionHeads, nope = mla.qkNopeHeadDim,
          rot = mla.qkRopeHeadDim, vDim = mla.vHeadDim, qk = mla.qkHeadDim();

  // Query: optionally through the low-rank q_a/q_b pair, then split into
  // the non-rotary and rotary parts per head.
  Value q;
  if (mla.qLoraRank) {
    Value cq = g.linear(x, prefix + ".q_a_proj", *mla.qLoraRank, c.qkvBias);
    cq = g.rmsNorm(cq, prefix + ".q_a_layernorm", kLatentNormEps);
    q = g.linear(cq, prefix + ".q_b_proj", heads * qk);
  } else {
    q = g.linear(x, prefix + ".q_proj", heads * qk);
  }
  q = g.reshape(q, {heads, qk});
  Value qPe = g.rope(g.slice(q, nope, rot), in.positions);
  q = g.concat({g.slice(q, 0, nope), qPe});

  // Keys/values: the compressed latent c_kv and the shared rotary key k_pe,
  // decompressed per head by W_UKV (kv_b_proj). Absorption rewrites this.
  Value kv = g.linear(x, prefix + ".kv_a_proj_with_mqa", mla.kvLoraRank + rot,
                      c.qkvBias);
  Value latent = g.rmsNorm(g.slice(kv, 0, mla.kvLoraRank),
                           prefix + ".kv_a_layernorm", kLatentNormEps);
  Value kPe = g.rope(g.reshape(g.slice(kv, mla.kvLoraRank, rot), {1, rot}),
                     in.positions);
  Value kvUp =
      g.reshape(g.linear(latent, prefix + ".kv_b_proj", heads * (nope + vDim)),
                {heads, nope + vDim});
  Value kNope = g.slice(kvUp, 0, nope);
  Value v = g.slice(kvUp, nope, vDim);
  Value kPeHeads =
      g.b().create<BroadcastOp>(kPe.getLoc(), g.activation({heads, rot}), kPe);
  Value k = g.concat({kNope, kPeHeads});

  k = cacheRoundTrip(g, k, in, prefix + ".k_cache");
  v = cacheRoundTrip(g, v, in, prefix + ".v_cache");
  double scale = std::pow(static_cast<double>(qk), -0.5) * yarnSoftmaxFactor(c);
  Value o = attention(g, q, k, v, in, scale, prefix + ".attn");
  return g.linear(g.reshape(o, {heads * vDim}), prefix + ".o_proj",
                  c.hiddenSize, c.oBias);
}

Value buildGqaAttention(GraphBuilder &g, Value x, const StepInputs &in,
                        const std::string &prefix) {
  const frontend::ModelConfig &c = g.config();
  int64_t heads = c.numAttentionHeads, kvHeads = c.numKeyValueHeads,
          dim = c.headDim;
  Value q = g.reshape(g.linear(x, prefix + ".q_proj", heads * dim, c.qkvBias),
                      {heads, dim});
  Value k = g.reshape(g.linear(x, prefix + ".k_proj", kvHeads * dim, c.qkvBias),
                      {kvHeads, dim});
  Value v = g.reshape(g.linear(x, prefix + ".v_proj", kvHeads * dim, c.qkvBias),
                      {kvHeads, dim});
  q = g.rope(q, in.positions);
  k = g.rope(k, in.positions);
  k = cacheRoundTrip(g, k, in, prefix + ".k_cache");
  v = cacheRoundTrip(g, v, in, prefix + ".v_cache");
  Value o = attention(g, q, k, v, in, std::pow(static_cast<double>(dim), -0.5),
                      prefix + ".attn");
  return g.linear(g.reshape(o, {heads * dim}), prefix + ".o_proj", c.hiddenSize,
                  c.oBias);
}

} // namespace kiln::models
