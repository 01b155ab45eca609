//===- KilnDialect.td - The kiln dialect -------------------*- tablegen -*-===//
#ifndef KILN_DIALECT_TD
#define KILN_DIALECT_TD

include "mlir/IR/OpBase.td"

def Kiln_Dialect : Dialect {
  let name = "kiln";
  let summary = "Graph-level ops for DeepSeek-style transformer models.";
  let description = [{
    The `kiln` dialect describes a language model as a graph of tensor ops
    at the granularity of transformer building blocks: embedding, RMSNorm,
    linear projections over named parameters, RoPE, causal attention over an
    explicit KV cache, SwiGLU, and DeepSeekMoE routing (gate, dispatch,
    grouped expert GEMMs, combine).

    Weights are module-level `kiln.parameter` symbols read with
    `kiln.get_parameter`, so passes can rewrite, slice, fold or quantize
    them. KV-cache entries are module-level `kiln.kv_cache` symbols written by
    `kiln.kv_append` and read by `kiln.kv_read`, so passes can change what the
    cache holds (e.g. MLA latent-KV absorption).

    Activations are ranked tensors of `f32` or `bf16` whose leading batch and
    sequence dimensions are dynamic; weights may be `f32`, `f16`, `bf16` or
    `f8E4M3FN` (with block scales).
  }];
  let cppNamespace = "::mlir::kiln";
  let useDefaultAttributePrinterParser = 1;
  let dependentDialects = ["::mlir::func::FuncDialect"];
}

class Kiln_Op<string mnemonic, list<Trait> traits = []>
    : Op<Kiln_Dialect, mnemonic, traits>;

#endif // KILN_DIALECT_TD
