//===- Passes.td - kiln pass definitions -------------------*- tablegen -*-===//
#ifndef KILN_PASSES_TD
#define KILN_PASSES_TD

include "mlir/Pass/PassBase.td"

def KilnSummarize : Pass<"kiln-summarize", "::mlir::ModuleOp"> {
  let summary = "Records the model's size and structure as a module attribute";
  let description = [{
    Counts what the module declares and computes, and attaches the totals
    as the `kiln.summary` dictionary on the module, so the numbers a
    deployer plans with (parameter bytes by element type, KV-cache bytes per
    token, layer and expert counts) are visible in the printed IR and
    checkable by lit tests:

    - `parameters`: total parameter elements; `parameter_bytes`: total bytes;
      `bytes.<type>`: bytes held in each element type (FP8 block scales
      count as f32);
    - `kv_cache_bytes_per_token`: the bytes every `kiln.kv_cache` slot holds
      per token, summed over slots (all layers);
    - `routed_experts`: the largest `num_experts` of any `kiln.moe_dispatch`.

    Each function gets `kiln.layers`: `attention` (`kiln.attention` ops),
    `moe` (`kiln.moe_gate` ops) and `dense_ffn` (token-level `kiln.swiglu`
    ops that are not a MoE layer's shared experts).
  }];
}

#endif // KILN_PASSES_TD
