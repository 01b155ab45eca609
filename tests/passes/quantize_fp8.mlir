// kiln-quantize-fp8 on builder output. The tiny DeepSeek-V3 (hidden 64,
// qk_nope 16) has blocks larger than its matrices (one partial block each);
// DeepSeek-V2-Lite's real shapes (shape-only) have full 128x128 blocks.

// Default policy: GEMM weights become e4m3 codes plus a scale grid, both
// derived from the checkpoint tensor; embedding, output head, router and
// norms keep their precision, and every decision is recorded.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8 | FileCheck %s --check-prefix=TINY
// TINY: module attributes {kiln.fp8 = {block = array<i64: 128, 128>, ue8m0 = false}
// TINY-DAG: kiln.parameter @model.embed_tokens.weight : tensor<256x64xbf16>
// TINY-DAG: kiln.parameter @model.layers.0.self_attn.q_a_proj.weight : tensor<48x64xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128>, source = "model.layers.0.self_attn.q_a_proj.weight"}
// TINY-DAG: kiln.parameter @model.layers.0.self_attn.q_a_proj.weight_scale_inv : tensor<1x1xf32> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128, scale = true>, source = "model.layers.0.self_attn.q_a_proj.weight"}
// TINY-DAG: kiln.parameter @model.layers.1.mlp.experts.gate_proj.weight : tensor<16x32x64xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128>, source = "model.layers.1.mlp.experts.{}.gate_proj.weight"}
// TINY-DAG: kiln.parameter @model.layers.1.mlp.experts.gate_proj.weight_scale_inv : tensor<16x1x1xf32> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128, scale = true>, source = "model.layers.1.mlp.experts.{}.gate_proj.weight"}
// TINY-DAG: kiln.parameter @model.layers.1.mlp.gate.weight : tensor<16x64xbf16>
// TINY-DAG: kiln.parameter @lm_head.weight : tensor<256x64xbf16>
// Absorption slices kv_b_proj per head at rows 16 and 32: not on a block.
// TINY-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight : tensor<128x32xbf16>
// TINY-LABEL: func.func @forward
// TINY: kiln.embedding {{.*}}kiln.quant = "bf16: embedding"
// TINY: kiln.rms_norm {{.*}}kiln.quant = "bf16: norm"
// TINY: kiln.linear %{{.*}}, %{{.*}} scale %{{.*}} {block_size = array<i64: 128, 128>, kiln.quant = "fp8"} : (tensor<?x?x64xf32>, tensor<48x64xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x?x48xf32>
// TINY: kiln.linear {{.*}}kiln.quant = "bf16: kv_b_proj head rows straddle FP8 blocks"
// TINY: kiln.moe_gate {{.*}}kiln.quant = "bf16: router"
// TINY: kiln.grouped_linear {{.*}} scale %{{.*}} {block_size = array<i64: 128, 128>, kiln.quant = "fp8"} : (tensor<?x64xf32>, tensor<16x32x64xf8E4M3FN>, tensor<17xi32>, tensor<16x1x1xf32>) -> tensor<?x32xf32>
// TINY: kiln.logits {{.*}}kiln.quant = "bf16: output head"

// The user keeps more: every grouped_linear, and names matching a pattern.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8="keep-ops=grouped_linear keep=*.o_proj.*,*shared_experts*" | FileCheck %s --check-prefix=KEEP
// KEEP-DAG: kiln.parameter @model.layers.1.mlp.experts.gate_proj.weight : tensor<16x32x64xbf16>
// KEEP-DAG: kiln.parameter @model.layers.0.self_attn.o_proj.weight : tensor<64x64xbf16>
// KEEP-DAG: kiln.parameter @model.layers.1.mlp.shared_experts.up_proj.weight : tensor<{{.*}}xbf16>
// KEEP-DAG: kiln.parameter @model.layers.0.mlp.up_proj.weight : tensor<{{.*}}xf8E4M3FN>
// KEEP-LABEL: func.func @forward
// KEEP: kiln.linear {{.*}}kiln.quant = "bf16: keep '*.o_proj.*'"
// KEEP: kiln.grouped_linear {{.*}}kiln.quant = "bf16: keep-ops grouped_linear"

// Power-of-two (UE8M0) scales for weights and activations.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8=ue8m0 | FileCheck %s --check-prefix=UE8M0
// UE8M0: kiln.fp8 = {block = array<i64: 128, 128>, ue8m0 = true}
// UE8M0: kiln.parameter @model.layers.0.self_attn.q_a_proj.weight : tensor<48x64xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128, ue8m0 = true>
// UE8M0: kiln.linear {{.*}} {act_ue8m0, block_size = array<i64: 128, 128>, kiln.quant = "fp8"}

// Real V2-Lite shapes: full blocks, and kv_b_proj (qk_nope 128, v 128) is
// quantized; absorption then derives W_UK/W_UV codes and scales from the
// same checkpoint tensor, quantized first and sliced per head after.
// RUN: kiln compile-model %presets/deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8 -kiln-absorb-latent-kv=mode=absorbed | FileCheck %s --check-prefix=V2L
// V2L-DAG: kiln.parameter @model.layers.0.mlp.down_proj.weight : tensor<2048x10944xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128>
// V2L-DAG: kiln.parameter @model.layers.0.mlp.down_proj.weight_scale_inv : tensor<16x86xf32>
// V2L-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight.w_uk : tensor<16x512x128xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128>, source = "model.layers.0.self_attn.kv_b_proj.weight", transform = #kiln.head_slice<heads = 16, rows = 256, offset = 0, size = 128, transpose = true>}
// V2L-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight_scale_inv.w_uk_scale_inv : tensor<16x4x1xf32> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128, scale = true>, source = "model.layers.0.self_attn.kv_b_proj.weight", transform = #kiln.head_slice<heads = 16, rows = 2, offset = 0, size = 1, transpose = true>}
// V2L-LABEL: func.func @forward
// V2L: kiln.head_linear %{{.*}}, %{{.*}} scale %{{.*}} {block_size = array<i64: 128, 128>} : (tensor<?x?x16x128xf32>, tensor<16x512x128xf8E4M3FN>, tensor<16x4x1xf32>) -> tensor<?x?x16x512xf32>

// A native FP8 checkpoint (DeepSeek-V3's config) stays as shipped.
// RUN: kiln compile-model %presets/deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8 | FileCheck %s --check-prefix=NATIVE
// NATIVE: kiln.parameter @model.layers.0.self_attn.q_a_proj.weight : tensor<1536x7168xf8E4M3FN>{{$}}
// NATIVE: kiln.linear {{.*}}kiln.quant = "fp8: checkpoint"

// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | not kiln-opt -kiln-quantize-fp8=keep-ops=logits 2>&1 | FileCheck %s --check-prefix=BADOP
// BADOP: kiln-quantize-fp8: keep-ops takes linear, grouped_linear or head_linear, got 'logits'
