//===- Model.cpp - decoder layers, entry points, whole models -------------===//
#include "models/Blocks.h"

using namespace mlir;
using namespace mlir::kiln;

namespace kiln::models {
namespace {

/// Starts `func.func @name(...)` with one block and named arguments.
func::FuncOp beginFunction(GraphBuilder &g, ModuleOp module,
                           const std::string &name,
                           ArrayRef<std::pair<StringRef, Type>> args,
                           ArrayRef<Type> results) {
  OpBuilder &b = g.b();
  b.setInsertionPointToEnd(module.getBody());
  SmallVector<Type> argTypes;
  for (auto &[argName, type] : args)
    argTypes.push_back(type);
  auto func = b.create<func::FuncOp>(g.loc(name), name,
                                     b.getFunctionType(argTypes, results));
  for (auto [i, arg] : llvm::enumerate(args))
    func.setArgAttr(i, "kiln.name", b.getStringAttr(arg.first));
  b.setInsertionPointToStart(func.addEntryBlock());
  return func;
}

Value embed(GraphBuilder &g, Value tokens, const std::string &name) {
  const frontend::ModelConfig &c = g.config();
  Value table =
      g.weight(name, {c.vocabSize, c.hiddenSize}, WeightKind::Plain).value;
  return g.b().create<EmbeddingOp>(g.loc(name), g.activation({c.hiddenSize}),
                                   tokens, table);
}

Value logits(GraphBuilder &g, Value h, const std::string &name) {
  const frontend::ModelConfig &c = g.config();
  Value head =
      g.weight(name, {c.vocabSize, c.hiddenSize}, WeightKind::Plain).value;
  auto type = RankedTensorType::get(
      {ShapedType::kDynamic, ShapedType::kDynamic, c.vocabSize},
      g.b().getF32Type());
  return g.b().create<LogitsOp>(g.loc(name), type, h, head);
}

SmallVector<std::pair<StringRef, Type>> stepArgs(GraphBuilder &g) {
  int64_t dyn = ShapedType::kDynamic;
  return {{"positions", g.indexTensor({dyn, dyn})},
          {"kv_lengths", g.indexTensor({dyn})}};
}

} // namespace

Value buildDecoderLayer(GraphBuilder &g, Value x, const StepInputs &in,
                        const std::string &prefix, int64_t layer) {
  const frontend::ModelConfig &c = g.config();
  Location loc = g.loc(prefix);
  Value h = g.rmsNorm(x, prefix + ".input_layernorm", c.rmsNormEps);
  Value attn = c.mla ? buildMlaAttention(g, h, in, prefix + ".self_attn")
                     : buildGqaAttention(g, h, in, prefix + ".self_attn");
  x = g.b().create<AddOp>(loc, x, attn);
  h = g.rmsNorm(x, prefix + ".post_attention_layernorm", c.rmsNormEps);
  Value ffn = c.isMoeLayer(layer)
                  ? buildMoe(g, h, prefix + ".mlp")
                  : buildDenseMlp(g, h, prefix + ".mlp", c.intermediateSize);
  return g.b().create<AddOp>(loc, x, ffn);
}

void buildForward(GraphBuilder &g, ModuleOp module) {
  const frontend::ModelConfig &c = g.config();
  int64_t dyn = ShapedType::kDynamic;
  SmallVector<std::pair<StringRef, Type>> args{
      {"tokens", g.indexTensor({dyn, dyn})}};
  llvm::append_range(args, stepArgs(g));
  Type logitsType =
      RankedTensorType::get({dyn, dyn, c.vocabSize}, g.b().getF32Type());
  func::FuncOp func = beginFunction(g, module, "forward", args,
                                    {logitsType, g.activation({c.hiddenSize})});
  StepInputs in{func.getArgument(1), func.getArgument(2)};
  Value x = embed(g, func.getArgument(0), "model.embed_tokens.weight");
  for (int64_t layer = 0; layer < c.numHiddenLayers; ++layer)
    x = buildDecoderLayer(g, x, in, "model.layers." + std::to_string(layer),
                          layer);
  Value normed = g.rmsNorm(x, "model.norm", c.rmsNormEps);
  Value out = logits(g, normed,
                     c.tieWordEmbeddings ? "model.embed_tokens.weight"
                                         : "lm_head.weight");
  g.b().create<func::ReturnOp>(g.loc("forward"), ValueRange{out, normed});
}

void buildMtp(GraphBuilder &g, ModuleOp module, int64_t depth) {
  const frontend::ModelConfig &c = g.config();
  int64_t dyn = ShapedType::kDynamic;
  int64_t layer = c.numHiddenLayers + depth - 1;
  std::string prefix = "model.layers." + std::to_string(layer);
  SmallVector<std::pair<StringRef, Type>> args{
      {"hidden", g.activation({c.hiddenSize})},
      {"next_tokens", g.indexTensor({dyn, dyn})}};
  llvm::append_range(args, stepArgs(g));
  Type logitsType =
      RankedTensorType::get({dyn, dyn, c.vocabSize}, g.b().getF32Type());
  func::FuncOp func =
      beginFunction(g, module, "mtp_" + std::to_string(depth), args,
                    {logitsType, g.activation({c.hiddenSize})});
  func->setAttr("kiln.mtp_depth", g.b().getI64IntegerAttr(depth));
  StepInputs in{func.getArgument(2), func.getArgument(3)};

  // h' = eh_proj([enorm(emb(t_{i+k})); hnorm(h_i^{k-1})]): embedding first,
  // as DeepSeek's reference and vLLM/SGLang concatenate.
  Value e =
      g.rmsNorm(embed(g, func.getArgument(1), prefix + ".embed_tokens.weight"),
                prefix + ".enorm", c.rmsNormEps);
  Value h = g.rmsNorm(func.getArgument(0), prefix + ".hnorm", c.rmsNormEps);
  Value x = g.linear(g.concat({e, h}), prefix + ".eh_proj", c.hiddenSize,
                     /*bias=*/false, WeightKind::Plain);
  x = buildDecoderLayer(g, x, in, prefix, layer);
  Value normed = g.rmsNorm(x, prefix + ".shared_head.norm", c.rmsNormEps);
  Value out = logits(g, normed, prefix + ".shared_head.head.weight");
  g.b().create<func::ReturnOp>(g.loc(prefix), ValueRange{out, x});
}

OwningOpRef<ModuleOp> buildModel(MLIRContext &context,
                                 const frontend::ModelConfig &config,
                                 const BuildOptions &options) {
  context.loadDialect<KilnDialect, func::FuncDialect>();
  OwningOpRef<ModuleOp> module =
      ModuleOp::create(NameLoc::get(StringAttr::get(&context, "model")));
  Builder b(&context);
  SmallVector<NamedAttribute> info{
      b.getNamedAttr("architecture", b.getStringAttr(frontend::architectureName(
                                         config.architecture))),
      b.getNamedAttr("hidden_size", b.getI64IntegerAttr(config.hiddenSize)),
      b.getNamedAttr("num_hidden_layers",
                     b.getI64IntegerAttr(config.numHiddenLayers)),
      b.getNamedAttr("vocab_size", b.getI64IntegerAttr(config.vocabSize)),
      b.getNamedAttr("max_position_embeddings",
                     b.getI64IntegerAttr(config.maxPositionEmbeddings)),
  };
  // MLA dimensions, for passes that reason about kv_b_proj's head rows.
  if (config.mla)
    info.push_back(b.getNamedAttr(
        "mla",
        b.getDictionaryAttr({
            b.getNamedAttr("kv_lora_rank",
                           b.getI64IntegerAttr(config.mla->kvLoraRank)),
            b.getNamedAttr("qk_nope_head_dim",
                           b.getI64IntegerAttr(config.mla->qkNopeHeadDim)),
            b.getNamedAttr("v_head_dim",
                           b.getI64IntegerAttr(config.mla->vHeadDim)),
        })));
  (*module)->setAttr("kiln.model", b.getDictionaryAttr(info));
  GraphBuilder g(*module, config, options);
  buildForward(g, *module);
  if (options.includeMtp)
    for (int64_t depth = 1; depth <= config.numNextnPredictLayers; ++depth)
      buildMtp(g, *module, depth);
  return module;
}

} // namespace kiln::models
