//===- Blocks.h - transformer building blocks in kiln IR --------*- C++ -*-===//
//
// Internal to models/: the graph-building context and one function per
// block. Each block takes the hidden state `[batch, seq, hidden]` and the
// Hugging Face name prefix of its weights, declares the parameters it uses
// and returns its output.
//
//===----------------------------------------------------------------------===//
#ifndef KILN_MODELS_BLOCKS_H
#define KILN_MODELS_BLOCKS_H

#include "models/ModelBuilder.h"

#include "ir/KilnOps.h"

#include "mlir/IR/Builders.h"

#include <string>
#include <utility>

namespace kiln::models {

/// How a weight is stored; decides its dtype.
enum class WeightKind {
  /// A projection that FP8 checkpoints quantize (attention, MLP, experts).
  QuantizableLinear,
  /// Any other float tensor (embeddings, heads, norms, router, biases).
  Plain,
};

/// The entry point's inputs every block may need.
struct StepInputs {
  mlir::Value positions; // [batch, seq] i32
  mlir::Value kvLengths; // [batch] i32
};

/// A weight matrix and, for FP8, its block scale.
struct Weight {
  mlir::Value value;
  mlir::Value scale; // null unless the weight is f8E4M3FN
};

class GraphBuilder {
public:
  GraphBuilder(mlir::ModuleOp module, const frontend::ModelConfig &config,
               const BuildOptions &options);

  mlir::OpBuilder &b() { return builder_; }
  const frontend::ModelConfig &config() const { return config_; }
  mlir::Type activationType() const { return activation_; }

  /// `tensor<?x?x...xact>` with `dims` after the dynamic batch/seq dims.
  mlir::RankedTensorType activation(llvm::ArrayRef<int64_t> dims) const;
  mlir::RankedTensorType indexTensor(llvm::ArrayRef<int64_t> shape) const;

  /// Declares (once) and reads the parameter `name`. `source` is the
  /// checkpoint name or pattern when it differs from `name`.
  Weight weight(const std::string &name, llvm::ArrayRef<int64_t> shape,
                WeightKind kind, const std::string &source = "");

  /// Declares the KV-cache slot `name` holding `entry` per token.
  void kvCache(const std::string &name, mlir::RankedTensorType entry);

  /// A location naming the module path of the ops built under it.
  mlir::Location loc(const std::string &path);

  /// `y = x W^T (+ b)` for the HF linear `prefix` (`prefix.weight`,
  /// `prefix.bias`).
  mlir::Value linear(mlir::Value x, const std::string &prefix, int64_t out,
                     bool bias = false,
                     WeightKind kind = WeightKind::QuantizableLinear);
  mlir::Value rmsNorm(mlir::Value x, const std::string &name, double eps);
  mlir::Value reshape(mlir::Value x, llvm::ArrayRef<int64_t> dims);
  mlir::Value slice(mlir::Value x, int64_t offset, int64_t size);
  mlir::Value concat(mlir::ValueRange inputs);
  mlir::Value rope(mlir::Value x, mlir::Value positions);
  /// FP8 weight block `[rows, cols]`.
  std::pair<int64_t, int64_t> weightBlock() const;
  /// Whether FP8 GEMMs of `w` round activation scales to powers of two (a
  /// native checkpoint's `scale_fmt: "ue8m0"`).
  mlir::UnitAttr actUe8m0(const Weight &w);

private:
  mlir::Type dtypeFor(const std::string &checkpointName, WeightKind kind);

  mlir::ModuleOp module_;
  const frontend::ModelConfig &config_;
  const BuildOptions &options_;
  mlir::OpBuilder builder_;
  mlir::OpBuilder moduleBuilder_;
  mlir::Type activation_;
  mlir::kiln::RopeAttr rope_;
};

/// Multi-head latent attention (DeepSeek), naive form: per-head K, V cached.
mlir::Value buildMlaAttention(GraphBuilder &g, mlir::Value x,
                              const StepInputs &in, const std::string &prefix);
/// Grouped-query attention (Qwen2, Llama).
mlir::Value buildGqaAttention(GraphBuilder &g, mlir::Value x,
                              const StepInputs &in, const std::string &prefix);
/// SwiGLU MLP with the given intermediate size.
mlir::Value buildDenseMlp(GraphBuilder &g, mlir::Value x,
                          const std::string &prefix, int64_t intermediate);
/// DeepSeekMoE: router, routed experts, shared experts.
mlir::Value buildMoe(GraphBuilder &g, mlir::Value x, const std::string &prefix);
/// Pre-norm decoder layer: attention and FFN, each with a residual.
mlir::Value buildDecoderLayer(GraphBuilder &g, mlir::Value x,
                              const StepInputs &in, const std::string &prefix,
                              int64_t layer);
/// The `forward` entry: tokens -> (logits, final hidden state).
void buildForward(GraphBuilder &g, mlir::ModuleOp module);
/// The `mtp` entry for MTP module `depth` (1-based): (previous hidden
/// state, next tokens) -> (logits, hidden state).
void buildMtp(GraphBuilder &g, mlir::ModuleOp module, int64_t depth);

} // namespace kiln::models

#endif // KILN_MODELS_BLOCKS_H
