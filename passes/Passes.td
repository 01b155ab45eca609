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

def KilnAbsorbLatentKV : Pass<"kiln-absorb-latent-kv", "::mlir::ModuleOp"> {
  let summary = "Caches MLA's latent and absorbs W_UK/W_UV into the attention";
  let description = [{
    Rewrites Multi-head Latent Attention from the naive form the builders
    emit (per-head K and V decompressed by `kv_b_proj` and cached) to forms
    whose KV cache holds, per token and layer, only the normalized latent
    `c_kv` and the roped `k_pe` (`kv_lora_rank + qk_rope_head_dim` values,
    no head dimension):

    - `absorbed`: `W_UK` is applied to the query (`q_lat_h = q_nope_h^T
      W_UK_h`), attention runs over the latent like MQA (keys `[c_kv|k_pe]`,
      values `c_kv`), and `W_UV` maps each head's output back. `W_UK` and
      `W_UV` become parameters derived from `kv_b_proj` by a
      `#kiln.head_slice` transform.
    - `naive_from_latent`: the cache stays latent, but attention decompresses
      every cached token's K and V with `kv_b_proj` (cheaper for long
      prefills, which share that work among many queries).

    `mode=naive` leaves the graph alone, `mode=absorbed` absorbs every entry
    point; `mode=auto` (default) asks a roofline cost model (FLOPs and bytes
    of both forms for the entry point's batch, query tokens and context)
    and, when prefill and decode choose differently, splits `@forward` into
    `@prefill` and `@decode`. The decision and the costs are recorded as a
    `kiln.mla` attribute on each entry function; rewritten attention ops
    carry `kiln.mla = "absorbed"` or `"naive_from_latent"`. Attention that
    is not MLA (GQA in Qwen2/Llama) is left alone, as is MLA with FP8
    `kv_b_proj` weights.
  }];
  let options = [
    Option<"mode", "mode", "std::string", /*default=*/"\"auto\"",
           "auto, naive or absorbed">,
    Option<"batch", "batch", "int64_t", /*default=*/"8",
           "Sequences per step, for the cost model">,
    Option<"prefillTokens", "prefill-tokens", "int64_t", /*default=*/"512",
           "Tokens per sequence in a prefill step, for the cost model">,
    Option<"context", "context", "int64_t", /*default=*/"4096",
           "Cached positions per sequence, for the cost model">,
  ];
}

#endif // KILN_PASSES_TD
