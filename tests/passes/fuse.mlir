// kiln-fuse on builder output (a tiny DeepSeek-V3: hidden 64, 4 heads,
// kv_lora 32, qk_rope 8, a dense first layer, sigmoid noaux_tc routing) and
// on small hand-written functions, one rule each.

// Decode (absorbed MLA): the token's embedding with the first norm (the
// embedding is yielded: the first residual adds to it); per layer the
// latent cache entry (slice, norm, rope, concat), the query's rope half
// joined to the absorbed nope half, the residual add with the next norm
// (the add is yielded: the next layer adds to it), and in MoE layers the
// router with that norm.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse="horizontal=false cache-epilogue=false" | FileCheck %s --check-prefix=V3
// V3-LABEL: func.func @decode
// V3: %[[EMB:.*]]:2 = kiln.fused "fused_0_embedding_rms_norm"(%arg0, %{{.*}}, %{{.*}}) : (tensor<?x?xi32>, tensor<256x64xbf16>, tensor<64xbf16>) -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>)
// V3-NEXT: ^bb0(%[[TOK:.*]]: tensor<?x?xi32>, %[[TABLE:.*]]: tensor<256x64xbf16>, %[[NW:.*]]: tensor<64xbf16>):
// V3-NEXT: %[[E:.*]] = kiln.embedding %[[TOK]], %[[TABLE]]
// V3-NEXT: %[[EN:.*]] = kiln.rms_norm %[[E]], %[[NW]]
// V3-NEXT: kiln.yield %[[E]], %[[EN]]
// V3: %[[ENTRY:.*]] = kiln.fused "fused_1_slice_rms_norm_reshape_rope_concat"(%{{.*}}, %{{.*}}, %arg1) : (tensor<?x?x40xf32>, tensor<32xbf16>, tensor<?x?xi32>) -> tensor<?x?x1x40xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 160 : i64, saved_bytes = 640 : i64}} {
// V3-NEXT: ^bb0(%[[LAT:.*]]: tensor<?x?x40xf32>, %[[W:.*]]: tensor<32xbf16>, %[[POS:.*]]: tensor<?x?xi32>):
// V3-NEXT: %[[C:.*]] = kiln.slice %[[LAT]][0, 32]
// V3-NEXT: %[[N:.*]] = kiln.rms_norm %[[C]], %[[W]]
// V3-NEXT: %[[KPE:.*]] = kiln.slice %[[LAT]][32, 8]
// V3-NEXT: %[[KPE4:.*]] = kiln.reshape %[[KPE]]
// V3-NEXT: %[[ROPED:.*]] = kiln.rope %[[KPE4]], %[[POS]]
// V3-NEXT: %[[N4:.*]] = kiln.reshape %[[N]]
// V3-NEXT: %[[CAT:.*]] = kiln.concat %[[N4]], %[[ROPED]]
// V3-NEXT: kiln.yield %[[CAT]] : tensor<?x?x1x40xf32>
// V3-NEXT: }
// V3-NEXT: kiln.kv_append @model.layers.0.self_attn.latent_cache, %[[ENTRY]]
// V3: %[[QLAT:.*]] = kiln.head_linear
// V3-NEXT: %[[Q:.*]] = kiln.fused "fused_2_slice_rope_concat"(%{{.*}}, %arg1, %[[QLAT]]) : (tensor<?x?x4x24xf32>, tensor<?x?xi32>, tensor<?x?x4x32xf32>) -> tensor<?x?x4x40xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 160 : i64, saved_bytes = 512 : i64}}
// V3: kiln.attention %[[Q]]
// V3: %[[O:.*]] = kiln.linear
// V3: %[[RES:.*]]:2 = kiln.fused "fused_3_add_rms_norm"(%[[EMB]]#0, %[[O]], %{{.*}}) : (tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<64xbf16>) -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>) attributes {kiln.fusion = {kind = "row", row_bytes = 256 : i64, saved_bytes = 256 : i64}}
// V3: kiln.yield %{{.*}}, %{{.*}} : tensor<?x?x64xf32>, tensor<?x?x64xf32>
// The dense MLP's SwiGLU sits between GEMMs: alone, not wrapped.
// V3: kiln.linear %[[RES]]#1
// V3: kiln.swiglu
// V3: %[[DOWN:.*]] = kiln.linear
// V3: kiln.fused "fused_4_add_rms_norm"(%[[RES]]#0, %[[DOWN]], %{{.*}})
// V3: %[[GATE:.*]]:4 = kiln.fused "fused_7_add_rms_norm_moe_gate"({{.*}}) : (tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<64xbf16>, tensor<16x64xbf16>, tensor<16xbf16>) -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<?x?x4xf32>, tensor<?x?x4xi32>) attributes {kiln.fusion = {kind = "row", row_bytes = 256 : i64, saved_bytes = 512 : i64}}
// V3: kiln.moe_gate
// V3: %{{.*}}, %{{.*}}, %{{.*}}, %[[ROWS:.*]] = kiln.moe_dispatch %[[GATE]]#1, %[[GATE]]#3
// The routed experts' SwiGLU works on routed rows, between grouped GEMMs.
// V3: kiln.swiglu %{{.*}}, %{{.*}} : tensor<?x32xf32>
// V3: %[[ROUTED:.*]] = kiln.grouped_linear
// The combine (the routed rows each token's selections name, read whole like
// a weight), the shared experts' output and the residual, then the next
// norm: one kernel.
// V3: kiln.fused "fused_8_moe_combine_add_rms_norm"(%[[ROUTED]], %[[GATE]]#2, %[[ROWS]], %{{.*}}, %[[GATE]]#0, %{{.*}}) : (tensor<?x64xf32>, tensor<?x?x4xf32>, tensor<?x?x4xi32>, tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<64xbf16>) -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>) attributes {kiln.fusion = {kind = "row", row_bytes = 256 : i64, saved_bytes = 1280 : i64}}
// V3-NEXT: ^bb0(%[[Y:.*]]: tensor<?x64xf32>, %[[WTS:.*]]: tensor<?x?x4xf32>, %[[SEL:.*]]: tensor<?x?x4xi32>, %[[SHARED:.*]]: tensor<?x?x64xf32>, %[[RESID:.*]]: tensor<?x?x64xf32>, %{{.*}}: tensor<64xbf16>):
// V3-NEXT: %[[MOE:.*]] = kiln.moe_combine %[[Y]], %[[WTS]], %[[SEL]]
// V3-NEXT: %[[SUM:.*]] = kiln.add %[[MOE]], %[[SHARED]]
// V3-NEXT: kiln.add %[[RESID]], %[[SUM]]
// The final norm after the last residual adds feeds the output head.
// V3: %[[FINAL:.*]] = kiln.fused "fused_12_moe_combine_add_rms_norm"({{.*}}) {{.*}} -> tensor<?x?x64xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 256 : i64, saved_bytes = 1536 : i64}}
// V3: kiln.logits %[[FINAL]]
// V3: return %{{.*}}, %[[FINAL]]
// Prefill decompresses cached latents per token (naive_from_latent): the
// key is assembled per cached row.
// V3-LABEL: func.func @prefill
// V3: kiln.fused "fused_16_slice_broadcast_concat"

// 13 kernels in @decode, 16 in @prefill; merged horizontally (below), each
// layer's latent-cache row and query RoPE share one: 10 and 13.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse=horizontal=false | grep -c 'kiln.fused "' | FileCheck %s --check-prefix=COUNT
// COUNT: {{^29$}}
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse | grep -c 'kiln.fused "' | FileCheck %s --check-prefix=MERGED
// MERGED: {{^23$}}

// Horizontal merging: the latent-cache entry and the query's RoPE read the
// same tokens and neither reads the other, so they run as one kernel at the
// first one's place; the W_UK GEMM the second needs moves up before it.
// Without cache-epilogue the cache append still follows the entry, and the
// attention reads the query.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse=cache-epilogue=false | FileCheck %s --check-prefix=HORIZ
// HORIZ-LABEL: func.func @decode
// HORIZ: %[[QLAT:.*]] = kiln.head_linear
// HORIZ-NEXT: %[[M:.*]]:2 = kiln.fused "fused_13_slice_rms_norm_reshape_rope_concat_and_slice_rope_concat"(%{{.*}}, %{{.*}}, %arg1, %{{.*}}, %[[QLAT]]) : {{.*}} -> (tensor<?x?x1x40xf32>, tensor<?x?x4x40xf32>) attributes {kiln.fusion = {chains = 2 : i64, kind = "row", row_bytes = 160 : i64, saved_bytes = 1152 : i64}}
// HORIZ: kiln.concat
// HORIZ: kiln.rope
// HORIZ: kiln.concat
// HORIZ-NEXT: kiln.yield %{{.*}}, %{{.*}} : tensor<?x?x1x40xf32>, tensor<?x?x4x40xf32>
// HORIZ-NEXT: }
// HORIZ-NEXT: kiln.kv_append @model.layers.0.self_attn.latent_cache, %[[M]]#0
// HORIZ: kiln.attention %[[M]]#1
// Kernels over cached positions (prefill's decompressed keys) index other
// rows than the tokens' and stay apart.
// HORIZ-LABEL: func.func @prefill
// HORIZ: kiln.fused "fused_{{[0-9]+}}_slice_broadcast_concat"

// Cache rows stored in the kernel (cache-epilogue, the default): the
// append joins the merged kernel's body right after the row it stores, the
// row is no longer yielded, and saved_bytes gains its write and the
// append's read (2 x 160 bytes). The attention reads the query, the only
// result; the append's launch is gone.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse | FileCheck %s --check-prefix=CACHE
// CACHE-LABEL: func.func @decode
// CACHE: %[[M:.*]] = kiln.fused "fused_13_slice_rms_norm_reshape_rope_concat_and_slice_rope_concat_kv_append"(%{{.*}}, %{{.*}}, %arg1, %{{.*}}, %{{.*}}) : {{.*}} -> tensor<?x?x4x40xf32> attributes {kiln.fusion = {chains = 2 : i64, kind = "row", row_bytes = 160 : i64, saved_bytes = 1472 : i64}}
// CACHE-NEXT: ^bb0(%{{.*}}: tensor<?x?x40xf32>, %{{.*}}: tensor<32xbf16>, %[[POS:.*]]: tensor<?x?xi32>,
// CACHE: %[[ROW:.*]] = kiln.concat
// CACHE-NEXT: kiln.kv_append @model.layers.0.self_attn.latent_cache, %[[ROW]] at %[[POS]]
// CACHE: kiln.yield %{{.*}} : tensor<?x?x4x40xf32>
// CACHE-NEXT: }
// CACHE-NOT: kiln.kv_append
// CACHE: kiln.attention %[[M]],
// Prefill too (the query's and the latent's kernels merged the other way
// round there).
// CACHE-LABEL: func.func @prefill
// CACHE: kiln.fused "fused_{{[0-9]+}}_reshape_slice_rope_concat_and_slice_rms_norm_reshape_rope_concat_kv_append"
// CACHE: kiln.kv_append @model.layers.0.self_attn.latent_cache
// CACHE: kiln.yield

// Every function is fused, MTP modules included; kernel names stay unique.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse=horizontal=false | FileCheck %s --check-prefix=MTP
// MTP-LABEL: func.func @mtp_1
// MTP: kiln.fused "fused_29_embedding_rms_norm_concat"
// MTP: kiln.fused "fused_34_moe_combine_add_rms_norm"

// FP8 GEMMs quantize their input per token per block: a group whose result
// feeds one records that in `quantizes_for`, and a lone row-local op that
// feeds one is wrapped too. The quantization moves into the group: it
// yields codes and scales, the linears read them, and the f32 norm that
// only they read is no longer written.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8=block=16 -kiln-absorb-latent-kv=mode=absorbed -kiln-fuse | FileCheck %s --check-prefix=FP8
// FP8-LABEL: func.func @forward
// FP8: %[[N:.*]]:3 = kiln.fused "fused_0_embedding_rms_norm"({{.*}}) : (tensor<?x?xi32>, tensor<256x64xbf16>, tensor<64xbf16>) -> (tensor<?x?x64xf32>, tensor<?x?x64xf8E4M3FN>, tensor<?x?x4xf32>) attributes {kiln.fusion = {kind = "row", quantizes_for = ["fp8 1x16"], row_bytes = 256 : i64, saved_bytes = 256 : i64}}
// FP8: %[[NORM:.*]] = kiln.rms_norm
// FP8-NEXT: %[[CODES:.*]], %[[SCALES:.*]] = kiln.quantize_fp8 %[[NORM]] {block_cols = 16 : i64} : (tensor<?x?x64xf32>) -> (tensor<?x?x64xf8E4M3FN>, tensor<?x?x4xf32>)
// FP8-NEXT: kiln.yield %{{.*}}, %[[CODES]], %[[SCALES]]
// FP8: kiln.linear %[[N]]#1, %{{.*}} scale %{{.*}} input_scale %[[N]]#2 {block_size = array<i64: 16, 16>, kiln.quant = "fp8"}
// FP8: kiln.fused "fused_5_add_rms_norm"({{.*}}) {{.*}} attributes {kiln.fusion = {kind = "row", quantizes_for = ["fp8 1x16"], row_bytes = 256 : i64, saved_bytes = 256 : i64}}
// FP8: kiln.fused "fused_6_swiglu"({{.*}}) {{.*}} quantizes_for = ["fp8 1x16"]
// Without quantize-epilogue the linears quantize their own f32 input.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8=block=16 -kiln-absorb-latent-kv=mode=absorbed -kiln-fuse=quantize-epilogue=false | FileCheck %s --check-prefix=NOEPI
// NOEPI-NOT: kiln.quantize_fp8
// NOEPI: %[[N:.*]]:2 = kiln.fused "fused_0_embedding_rms_norm"
// NOEPI: kiln.linear %[[N]]#1, %{{.*}} scale %{{.*}} {block_size
// The final norm feeds the bf16 output head: nothing to quantize.
// FP8: kiln.fused "fused_{{[0-9]+}}_moe_combine_add_rms_norm"({{.*}}) {{.*}} attributes {kiln.fusion = {kind = "row", row_bytes = 256 : i64, saved_bytes = 1536 : i64}}
// FP8-NEXT: ^bb0
// FP8: kiln.logits

// The fused IR parses, verifies and prints back the same.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse="horizontal=false cache-epilogue=false" | kiln-opt | FileCheck %s --check-prefix=V3
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse=cache-epilogue=false | kiln-opt | FileCheck %s --check-prefix=HORIZ
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv -kiln-fuse | kiln-opt | FileCheck %s --check-prefix=CACHE

// Hand-written cases.
// RUN: kiln-opt %s -split-input-file -kiln-fuse | FileCheck %s
// RUN: kiln-opt %s -split-input-file -kiln-fuse=row-bytes=128 | FileCheck %s --check-prefix=BUDGET
// RUN: kiln-opt %s -split-input-file -kiln-fuse=horizontal=false | FileCheck %s --check-prefix=APART
// RUN: not kiln-opt %s -split-input-file -kiln-fuse=row-bytes=2 2>&1 | FileCheck %s --check-prefix=BAD
// BAD: kiln-fuse: row-bytes must be >= 4

// -----

// Residual add + RMSNorm: the sum is also the residual stream of the next
// layer, so it is yielded (written once) rather than recomputed there.
// Saved per row: the norm's read of the sum (16 x 4 bytes).
// CHECK-LABEL: func.func @add_norm
// CHECK: %[[F:.*]]:2 = kiln.fused "fused_0_add_rms_norm"(%arg0, %arg1, %arg2) : (tensor<?x?x16xf32>, tensor<?x?x16xf32>, tensor<16xf32>) -> (tensor<?x?x16xf32>, tensor<?x?x16xf32>) attributes {kiln.fusion = {kind = "row", row_bytes = 64 : i64, saved_bytes = 64 : i64}} {
// CHECK-NEXT: ^bb0(%[[X:.*]]: tensor<?x?x16xf32>, %[[Y:.*]]: tensor<?x?x16xf32>, %[[W:.*]]: tensor<16xf32>):
// CHECK-NEXT: %[[S:.*]] = kiln.add %[[X]], %[[Y]]
// CHECK-NEXT: %[[N:.*]] = kiln.rms_norm %[[S]], %[[W]]
// CHECK-NEXT: kiln.yield %[[S]], %[[N]]
// CHECK-NEXT: }
// CHECK-NEXT: return %[[F]]#1, %[[F]]#0
// With a 128-byte budget (32 f32 values) the 16-wide rows still fit.
// BUDGET-LABEL: func.func @add_norm
// BUDGET: kiln.fused "fused_0_add_rms_norm"
func.func @add_norm(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                    %w: tensor<16xf32>)
    -> (tensor<?x?x16xf32>, tensor<?x?x16xf32>) {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  return %n, %s : tensor<?x?x16xf32>, tensor<?x?x16xf32>
}

// -----

// SwiGLU between GEMMs stays a single op; with the residual add after it
// the pair is a kernel whose SwiGLU result never reaches memory (a write
// and a read of 8 x 4 bytes).
// CHECK-LABEL: func.func @swiglu_alone
// CHECK-NOT: kiln.fused
// CHECK: kiln.swiglu
// CHECK-LABEL: func.func @swiglu_add
// CHECK: kiln.fused "fused_0_swiglu_add"(%arg0, %arg1, %arg2) : (tensor<?x?x8xf32>, tensor<?x?x8xf32>, tensor<?x?x8xf32>) -> tensor<?x?x8xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 32 : i64, saved_bytes = 64 : i64}}
// CHECK-NEXT: ^bb0
// CHECK-NEXT: kiln.swiglu
// CHECK-NEXT: kiln.add
// CHECK-NEXT: kiln.yield
func.func @swiglu_alone(%x: tensor<?x?x8xf32>, %wg: tensor<16x8xf32>,
                        %wu: tensor<16x8xf32>, %wd: tensor<8x16xf32>)
    -> tensor<?x?x8xf32> {
  %g = kiln.linear %x, %wg
      : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %u = kiln.linear %x, %wu
      : (tensor<?x?x8xf32>, tensor<16x8xf32>) -> tensor<?x?x16xf32>
  %a = kiln.swiglu %g, %u : tensor<?x?x16xf32>
  %d = kiln.linear %a, %wd
      : (tensor<?x?x16xf32>, tensor<8x16xf32>) -> tensor<?x?x8xf32>
  return %d : tensor<?x?x8xf32>
}

func.func @swiglu_add(%g: tensor<?x?x8xf32>, %u: tensor<?x?x8xf32>,
                      %r: tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  %a = kiln.swiglu %g, %u : tensor<?x?x8xf32>
  %s = kiln.add %a, %r : tensor<?x?x8xf32>
  return %s : tensor<?x?x8xf32>
}

// -----

// RoPE on the rotary half of per-head queries, concatenated with the other
// half: slice, rope and concat in one kernel. The reshape into heads also
// feeds the other half's GEMM: it stays outside (a view; the group reads
// the GEMM output through it).
// CHECK-LABEL: func.func @rope_concat
// CHECK: %[[HEADS:.*]] = kiln.reshape
// CHECK-NEXT: %[[NOPE:.*]] = kiln.slice %[[HEADS]][0, 8]
// CHECK-NEXT: %[[LAT:.*]] = kiln.head_linear %[[NOPE]]
// CHECK-NEXT: kiln.fused "fused_0_slice_rope_concat"(%[[HEADS]], %arg1, %[[LAT]]) : (tensor<?x?x2x12xf32>, tensor<?x?xi32>, tensor<?x?x2x16xf32>) -> tensor<?x?x2x20xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 80 : i64, saved_bytes = 128 : i64}}
// CHECK-NEXT: ^bb0
// CHECK-NEXT: kiln.slice %{{.*}}[8, 4]
// CHECK-NEXT: kiln.rope
// CHECK-NEXT: kiln.concat
// CHECK-NEXT: kiln.yield
// Rows are per head (the last dimension): the widest, the concat's, takes
// 80 bytes and fits 128.
// BUDGET-LABEL: func.func @rope_concat
// BUDGET: kiln.fused "fused_0_slice_rope_concat"
func.func @rope_concat(%q: tensor<?x?x24xf32>, %pos: tensor<?x?xi32>,
                       %wuk: tensor<2x16x8xf32>) -> tensor<?x?x2x20xf32> {
  %h = kiln.reshape %q : tensor<?x?x24xf32> -> tensor<?x?x2x12xf32>
  %nope = kiln.slice %h[0, 8] : tensor<?x?x2x12xf32> -> tensor<?x?x2x8xf32>
  %lat = kiln.head_linear %nope, %wuk
      : (tensor<?x?x2x8xf32>, tensor<2x16x8xf32>) -> tensor<?x?x2x16xf32>
  %pe = kiln.slice %h[8, 4] : tensor<?x?x2x12xf32> -> tensor<?x?x2x4xf32>
  %r = kiln.rope %pe, %pos {rope = #kiln.rope<kind = plain, theta = 10000.0>}
      : (tensor<?x?x2x4xf32>, tensor<?x?xi32>) -> tensor<?x?x2x4xf32>
  %c = kiln.concat %lat, %r
      : tensor<?x?x2x16xf32>, tensor<?x?x2x4xf32> -> tensor<?x?x2x20xf32>
  return %c : tensor<?x?x2x20xf32>
}

// -----

// The scratch bound: DeepSeek-V3's 128 query heads. The RoPE's 128 x 64
// values (32 KiB a token) stay on chip for the concat; the slice's would be
// another 32 KiB, over the 48 KiB a generated kernel keeps, so the slice
// runs on its own and the kernel reads it.
// CHECK-LABEL: func.func @rope_concat_wide
// CHECK: %[[PE:.*]] = kiln.slice %arg0[128, 64]
// CHECK-NEXT: kiln.fused "fused_0_rope_concat"(%[[PE]], %arg1, %arg2) : (tensor<?x?x128x64xf32>, tensor<?x?xi32>, tensor<?x?x128x512xf32>) -> tensor<?x?x128x576xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 2304 : i64, saved_bytes = 65536 : i64}}
// CHECK-NEXT: ^bb0
// CHECK-NEXT: kiln.rope
// CHECK-NEXT: kiln.concat
// CHECK-NEXT: kiln.yield
// BUDGET-LABEL: func.func @rope_concat_wide
// BUDGET-NOT: kiln.fused
func.func @rope_concat_wide(%h: tensor<?x?x128x192xf32>, %pos: tensor<?x?xi32>,
                            %lat: tensor<?x?x128x512xf32>)
    -> tensor<?x?x128x576xf32> {
  %pe = kiln.slice %h[128, 64]
      : tensor<?x?x128x192xf32> -> tensor<?x?x128x64xf32>
  %r = kiln.rope %pe, %pos {rope = #kiln.rope<kind = plain, theta = 10000.0>}
      : (tensor<?x?x128x64xf32>, tensor<?x?xi32>) -> tensor<?x?x128x64xf32>
  %c = kiln.concat %lat, %r
      : tensor<?x?x128x512xf32>, tensor<?x?x128x64xf32>
      -> tensor<?x?x128x576xf32>
  return %c : tensor<?x?x128x576xf32>
}

// -----

// The row budget splits a chain: the 64-wide residual add and norm do not
// fit 128 bytes, the 16-wide tail after the GEMM does.
// BUDGET-LABEL: func.func @budget_split
// BUDGET: kiln.add %arg0, %arg1 : tensor<?x?x64xf32>
// BUDGET-NEXT: kiln.rms_norm
// BUDGET-NEXT: kiln.linear
// BUDGET-NEXT: kiln.fused "fused_0_rms_norm_add"({{.*}}) {{.*}} attributes {kiln.fusion = {kind = "row", row_bytes = 64 : i64, saved_bytes = 128 : i64}}
// CHECK-LABEL: func.func @budget_split
// CHECK: kiln.fused "fused_0_add_rms_norm"({{.*}}) {{.*}} attributes {kiln.fusion = {kind = "row", row_bytes = 256 : i64, saved_bytes = 512 : i64}}
// CHECK: kiln.linear
// CHECK: kiln.fused "fused_1_rms_norm_add"
func.func @budget_split(%x: tensor<?x?x64xf32>, %y: tensor<?x?x64xf32>,
                        %w: tensor<64xf32>, %p: tensor<16x64xf32>,
                        %w2: tensor<16xf32>, %z: tensor<?x?x16xf32>)
    -> tensor<?x?x16xf32> {
  %s = kiln.add %x, %y : tensor<?x?x64xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x64xf32>, tensor<64xf32>) -> tensor<?x?x64xf32>
  %l = kiln.linear %n, %p
      : (tensor<?x?x64xf32>, tensor<16x64xf32>) -> tensor<?x?x16xf32>
  %m = kiln.rms_norm %l, %w2 {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %t = kiln.add %m, %z : tensor<?x?x16xf32>
  return %t : tensor<?x?x16xf32>
}

// -----

// The router joins the norm before it; the normed rows are yielded for the
// dispatch, and the router weight and bias are group inputs (weights are
// read whole by every row and do not count towards the row budget).
// CHECK-LABEL: func.func @norm_gate
// CHECK: %[[G:.*]]:3 = kiln.fused "fused_0_rms_norm_moe_gate"(%arg0, %arg1, %arg2, %arg3) : (tensor<?x?x16xf32>, tensor<16xf32>, tensor<8x16xf32>, tensor<8xf32>) -> (tensor<?x?x16xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>) attributes {kiln.fusion = {kind = "row", row_bytes = 64 : i64, saved_bytes = 64 : i64}}
// CHECK: kiln.moe_gate
// CHECK: kiln.moe_dispatch %[[G]]#0, %[[G]]#2
func.func @norm_gate(%h: tensor<?x?x16xf32>, %w: tensor<16xf32>,
                     %gw: tensor<8x16xf32>, %b: tensor<8xf32>)
    -> (tensor<?x16xf32>, tensor<?x?x2xf32>) {
  %n = kiln.rms_norm %h, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %wts, %idx = kiln.moe_gate %n, %gw bias %b sigmoid noaux_tc
      {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64,
       norm_topk_prob, routed_scaling_factor = 2.5 : f64}
      : (tensor<?x?x16xf32>, tensor<8x16xf32>, tensor<8xf32>)
      -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  %r, %off, %slots, %rows = kiln.moe_dispatch %n, %idx {num_experts = 8 : i64}
      : (tensor<?x?x16xf32>, tensor<?x?x2xi32>)
      -> (tensor<?x16xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  return %r, %wts : tensor<?x16xf32>, tensor<?x?x2xf32>
}

// -----

// A GEMM separates groups: the add + norm before it and the add + norm after
// it are two kernels, the second reading the first's yielded sum.
// CHECK-LABEL: func.func @gemm_boundary
// CHECK: %[[A:.*]]:2 = kiln.fused "fused_0_add_rms_norm"(%arg0, %arg1, %arg2)
// CHECK: %[[L:.*]] = kiln.linear %[[A]]#1
// CHECK-NEXT: kiln.fused "fused_1_add_rms_norm"(%[[A]]#0, %[[L]], %arg2)
func.func @gemm_boundary(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                         %w: tensor<16xf32>, %p: tensor<16x16xf32>)
    -> tensor<?x?x16xf32> {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %l = kiln.linear %n, %p
      : (tensor<?x?x16xf32>, tensor<16x16xf32>) -> tensor<?x?x16xf32>
  %t = kiln.add %s, %l : tensor<?x?x16xf32>
  %m = kiln.rms_norm %t, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  return %m : tensor<?x?x16xf32>
}

// -----

// A cycle: %a feeds both the final add and the GEMM that feeds it. Putting
// %a in the final add's group would make the GEMM both consume and feed
// that group, so %a stays out of it (it is used before the group's last op)
// and groups with the norm instead; the final add runs alone.
// CHECK-LABEL: func.func @cycle
// CHECK: %[[G:.*]]:2 = kiln.fused "fused_0_add_rms_norm"(%arg0, %arg1, %arg2)
// CHECK-NEXT: ^bb0
// CHECK-NEXT: kiln.add
// CHECK-NEXT: kiln.rms_norm
// CHECK-NEXT: kiln.yield
// CHECK-NEXT: }
// CHECK-NEXT: %[[L:.*]] = kiln.linear %[[G]]#1
// CHECK-NEXT: %[[T:.*]] = kiln.add %[[G]]#0, %[[L]]
// CHECK-NEXT: return %[[T]]
func.func @cycle(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                 %w: tensor<16xf32>, %p: tensor<16x16xf32>)
    -> tensor<?x?x16xf32> {
  %a = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %a, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %l = kiln.linear %n, %p
      : (tensor<?x?x16xf32>, tensor<16x16xf32>) -> tensor<?x?x16xf32>
  %t = kiln.add %a, %l : tensor<?x?x16xf32>
  return %t : tensor<?x?x16xf32>
}

// -----

// A value two group members read and a later op also reads is computed once
// and yielded; saved per row: the two reads of the broadcast and the write
// and read of the sum (4 x 8 x 4 bytes).
// CHECK-LABEL: func.func @multi_use
// CHECK: %[[F:.*]]:2 = kiln.fused "fused_0_broadcast_add_concat"(%arg0, %arg1) : (tensor<?x?x1x4xf32>, tensor<?x?x2x4xf32>) -> (tensor<?x?x2x4xf32>, tensor<?x?x2x8xf32>) attributes {kiln.fusion = {kind = "row", row_bytes = 32 : i64, saved_bytes = 128 : i64}}
// CHECK: kiln.yield
// CHECK-NEXT: }
// CHECK-NEXT: kiln.swiglu %[[F]]#0, %arg1
func.func @multi_use(%k: tensor<?x?x1x4xf32>, %v: tensor<?x?x2x4xf32>)
    -> (tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>) {
  %b = kiln.broadcast %k : tensor<?x?x1x4xf32> -> tensor<?x?x2x4xf32>
  %s = kiln.add %b, %v : tensor<?x?x2x4xf32>
  %c = kiln.concat %b, %s
      : tensor<?x?x2x4xf32>, tensor<?x?x2x4xf32> -> tensor<?x?x2x8xf32>
  %g = kiln.swiglu %b, %v : tensor<?x?x2x4xf32>
  return %c, %g : tensor<?x?x2x8xf32>, tensor<?x?x2x4xf32>
}

// -----

// Rows over different leading dimensions never mix: ops on routed rows
// ([rows, d]) group among themselves.
// CHECK-LABEL: func.func @routed_rows
// CHECK: kiln.fused "fused_0_swiglu_add"({{.*}}) : (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>) -> tensor<?x8xf32>
func.func @routed_rows(%g: tensor<?x8xf32>, %u: tensor<?x8xf32>,
                       %r: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %a = kiln.swiglu %g, %u : tensor<?x8xf32>
  %s = kiln.add %a, %r : tensor<?x8xf32>
  return %s : tensor<?x8xf32>
}

// -----

// The combine reads the expert output rows its selections name: they are a
// whole group input, so the routed rows' own chain (here an add over routed
// rows) stays outside even though it is row-local; it forms its own kernel
// with the SwiGLU before it. The combine joins the residual add and norm;
// saved per row: the write and read of the combined and of the summed row
// (4 x 8 x 4 bytes).
// CHECK-LABEL: func.func @combine_joins_norm
// CHECK: %[[ROUTED:.*]] = kiln.fused "fused_0_swiglu_add"(%arg0, %arg1, %arg2) : (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>) -> tensor<?x8xf32>
// CHECK: kiln.fused "fused_1_moe_combine_add_rms_norm"(%[[ROUTED]], %arg3, %arg4, %arg5, %arg6) : (tensor<?x8xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>, tensor<?x?x8xf32>, tensor<8xf32>) -> tensor<?x?x8xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 32 : i64, saved_bytes = 128 : i64}}
// CHECK-NEXT: ^bb0(%[[Y:.*]]: tensor<?x8xf32>, %[[W:.*]]: tensor<?x?x2xf32>, %[[ROWS:.*]]: tensor<?x?x2xi32>, %[[RES:.*]]: tensor<?x?x8xf32>, %{{.*}}: tensor<8xf32>):
// CHECK-NEXT: %[[MOE:.*]] = kiln.moe_combine %[[Y]], %[[W]], %[[ROWS]]
// CHECK-NEXT: %[[SUM:.*]] = kiln.add %[[RES]], %[[MOE]]
// CHECK-NEXT: kiln.rms_norm %[[SUM]]
func.func @combine_joins_norm(%g: tensor<?x8xf32>, %u: tensor<?x8xf32>,
                              %b: tensor<?x8xf32>, %w: tensor<?x?x2xf32>,
                              %rows: tensor<?x?x2xi32>, %res: tensor<?x?x8xf32>,
                              %nw: tensor<8xf32>) -> tensor<?x?x8xf32> {
  %a = kiln.swiglu %g, %u : tensor<?x8xf32>
  %y = kiln.add %a, %b : tensor<?x8xf32>
  %moe = kiln.moe_combine %y, %w, %rows
      : (tensor<?x8xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>)
      -> tensor<?x?x8xf32>
  %s = kiln.add %res, %moe : tensor<?x?x8xf32>
  %n = kiln.rms_norm %s, %nw {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x8xf32>, tensor<8xf32>) -> tensor<?x?x8xf32>
  return %n : tensor<?x?x8xf32>
}

// -----

// Horizontal: two add + norm kernels of the same tokens, neither reading
// the other, run as one at the first one's place; the GEMM only the second
// needs moves up before it. Without `horizontal` they stay two.
// CHECK-LABEL: func.func @horizontal
// CHECK: %[[L:.*]] = kiln.linear %arg0, %arg3
// CHECK-NEXT: %[[M:.*]]:2 = kiln.fused "fused_2_add_rms_norm_and_add_rms_norm"(%arg0, %arg1, %arg2, %[[L]]) : {{.*}} attributes {kiln.fusion = {chains = 2 : i64, kind = "row", row_bytes = 64 : i64, saved_bytes = 256 : i64}}
// CHECK-NEXT: ^bb0(%[[X:.*]]: tensor<?x?x16xf32>, %[[Y:.*]]: tensor<?x?x16xf32>, %[[W:.*]]: tensor<16xf32>, %[[LIN:.*]]: tensor<?x?x16xf32>):
// CHECK-NEXT: %[[S0:.*]] = kiln.add %[[X]], %[[Y]]
// CHECK-NEXT: %[[N0:.*]] = kiln.rms_norm %[[S0]], %[[W]]
// CHECK-NEXT: %[[S1:.*]] = kiln.add %[[LIN]], %[[Y]]
// CHECK-NEXT: %[[N1:.*]] = kiln.rms_norm %[[S1]], %[[W]]
// CHECK-NEXT: kiln.yield %[[N0]], %[[N1]]
// CHECK-NEXT: }
// CHECK-NEXT: return %[[M]]#0, %[[M]]#1
// APART-LABEL: func.func @horizontal
// APART: kiln.fused "fused_0_add_rms_norm"
// APART: kiln.linear
// APART: kiln.fused "fused_1_add_rms_norm"
func.func @horizontal(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                      %w: tensor<16xf32>, %v: tensor<16x16xbf16>)
    -> (tensor<?x?x16xf32>, tensor<?x?x16xf32>) {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %l = kiln.linear %x, %v : (tensor<?x?x16xf32>, tensor<16x16xbf16>) -> tensor<?x?x16xf32>
  %t = kiln.add %l, %y : tensor<?x?x16xf32>
  %m = kiln.rms_norm %t, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  return %n, %m : tensor<?x?x16xf32>, tensor<?x?x16xf32>
}

// -----

// The second kernel reads the first's result through a GEMM: no merge.
// CHECK-LABEL: func.func @horizontal_dependent
// CHECK: kiln.fused "fused_0_add_rms_norm"
// CHECK: kiln.linear
// CHECK: kiln.fused "fused_1_add_rms_norm"
func.func @horizontal_dependent(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                                %w: tensor<16xf32>, %v: tensor<16x16xbf16>)
    -> tensor<?x?x16xf32> {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %l = kiln.linear %n, %v : (tensor<?x?x16xf32>, tensor<16x16xbf16>) -> tensor<?x?x16xf32>
  %t = kiln.add %l, %y : tensor<?x?x16xf32>
  %m = kiln.rms_norm %t, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  return %m : tensor<?x?x16xf32>
}

// -----

// The second kernel needs attention over the cache, which reads it: the
// cache read cannot move up past the first kernel, so no merge. Rows of
// other tokens (cached positions) never merge with the tokens' either.
kiln.kv_cache @cache : tensor<1x16xf32>
// CHECK-LABEL: func.func @horizontal_cache_read
// CHECK: kiln.fused "fused_0_add_rms_norm"
// CHECK: kiln.kv_read
// CHECK: kiln.fused "fused_1_reshape_add_rms_norm"
func.func @horizontal_cache_read(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                                 %w: tensor<16xf32>, %q: tensor<?x?x1x16xf32>,
                                 %pos: tensor<?x?xi32>, %lens: tensor<?xi32>)
    -> (tensor<?x?x16xf32>, tensor<?x?x16xf32>) {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %k = kiln.kv_read @cache, %lens : tensor<?xi32> -> tensor<?x?x1x16xf32>
  %a = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.25 : f64}
      : (tensor<?x?x1x16xf32>, tensor<?x?x1x16xf32>, tensor<?x?x1x16xf32>,
         tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x1x16xf32>
  %o = kiln.reshape %a : tensor<?x?x1x16xf32> -> tensor<?x?x16xf32>
  %t = kiln.add %o, %y : tensor<?x?x16xf32>
  %m = kiln.rms_norm %t, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  return %n, %m : tensor<?x?x16xf32>, tensor<?x?x16xf32>
}

// -----

// A kernel's result that only a cache append reads (through a view): the
// append joins the body after the row and the row is no longer written;
// the norm, which the function returns, still is. The append's read and the row's write add
// 2 x 64 bytes to saved_bytes (64 before: the sum's write and read).
kiln.kv_cache @cache : tensor<1x16xf32>
// CHECK-LABEL: func.func @cache_write
// CHECK: %[[F:.*]] = kiln.fused "fused_0_add_rms_norm_kv_append"(%{{.*}}, %{{.*}}, %{{.*}}, %[[POS:.*]]) : (tensor<?x?x16xf32>, tensor<?x?x16xf32>, tensor<16xf32>, tensor<?x?xi32>) -> tensor<?x?x16xf32> attributes {kiln.fusion = {kind = "row", row_bytes = 64 : i64, saved_bytes = 192 : i64}}
// CHECK-NEXT: ^bb0(%{{.*}}: tensor<?x?x16xf32>, %{{.*}}: tensor<?x?x16xf32>, %{{.*}}: tensor<16xf32>, %[[P:.*]]: tensor<?x?xi32>):
// CHECK: %[[ROW:.*]] = kiln.reshape
// CHECK-NEXT: kiln.kv_append @cache, %[[ROW]] at %[[P]]
// CHECK: kiln.yield %{{.*}} : tensor<?x?x16xf32>
// CHECK-NEXT: }
// CHECK-NEXT: return %[[F]]
// APART-LABEL: func.func @cache_write
// APART: kiln.kv_append @cache
func.func @cache_write(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                       %w: tensor<16xf32>, %pos: tensor<?x?xi32>)
    -> tensor<?x?x16xf32> {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %r = kiln.reshape %s : tensor<?x?x16xf32> -> tensor<?x?x1x16xf32>
  kiln.kv_append @cache, %r at %pos : tensor<?x?x1x16xf32>, tensor<?x?xi32>
  return %n : tensor<?x?x16xf32>
}

// -----

// The kernel's only result: stored in the kernel and still yielded (a
// kernel keeps a result, whose rows count its tokens).
kiln.kv_cache @cache : tensor<1x16xf32>
// CHECK-LABEL: func.func @cache_write_only_result
// CHECK: kiln.fused "fused_0_add_rms_norm_kv_append"
// CHECK: kiln.kv_append @cache
// CHECK: kiln.yield %{{.*}} : tensor<?x?x16xf32>
// CHECK-NOT: kiln.kv_append
func.func @cache_write_only_result(%x: tensor<?x?x16xf32>,
                                   %y: tensor<?x?x16xf32>, %w: tensor<16xf32>,
                                   %pos: tensor<?x?xi32>) {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %r = kiln.reshape %n : tensor<?x?x16xf32> -> tensor<?x?x1x16xf32>
  kiln.kv_append @cache, %r at %pos : tensor<?x?x1x16xf32>, tensor<?x?xi32>
  return
}

// -----

// No store in the kernel: a cache read lies between the kernel and the
// appends (the writes would move before it), even to another slot.
kiln.kv_cache @cache : tensor<1x16xf32>
kiln.kv_cache @latent : tensor<1x16xf32> {storage = #kiln.packed_cache<fp8_columns = 8>}
// CHECK-LABEL: func.func @cache_write_kept_apart
// CHECK: kiln.fused "fused_0_add_rms_norm"(
// CHECK: kiln.kv_read @cache
// CHECK: kiln.kv_append @cache
// CHECK: kiln.kv_append @latent
func.func @cache_write_kept_apart(%x: tensor<?x?x16xf32>,
                                  %y: tensor<?x?x16xf32>, %w: tensor<16xf32>,
                                  %pos: tensor<?x?xi32>, %lens: tensor<?xi32>)
    -> (tensor<?x?x16xf32>, tensor<?x?x1x16xf32>) {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %r = kiln.reshape %n : tensor<?x?x16xf32> -> tensor<?x?x1x16xf32>
  %k = kiln.kv_read @cache, %lens : tensor<?xi32> -> tensor<?x?x1x16xf32>
  kiln.kv_append @cache, %r at %pos : tensor<?x?x1x16xf32>, tensor<?x?xi32>
  kiln.kv_append @latent, %r at %pos : tensor<?x?x1x16xf32>, tensor<?x?xi32>
  return %s, %k : tensor<?x?x16xf32>, tensor<?x?x1x16xf32>
}

// -----

// An FP8 slot: the kernel quantizes the row it stores.
kiln.kv_cache @latent : tensor<1x16xf32> {storage = #kiln.packed_cache<fp8_columns = 8>}
// CHECK-LABEL: func.func @cache_write_fp8
// CHECK: kiln.fused "fused_0_add_rms_norm_kv_append"
// CHECK: kiln.kv_append @latent
// CHECK: kiln.yield
func.func @cache_write_fp8(%x: tensor<?x?x16xf32>, %y: tensor<?x?x16xf32>,
                           %w: tensor<16xf32>, %pos: tensor<?x?xi32>)
    -> tensor<?x?x16xf32> {
  %s = kiln.add %x, %y : tensor<?x?x16xf32>
  %n = kiln.rms_norm %s, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %r = kiln.reshape %s : tensor<?x?x16xf32> -> tensor<?x?x1x16xf32>
  kiln.kv_append @latent, %r at %pos : tensor<?x?x1x16xf32>, tensor<?x?xi32>
  return %n : tensor<?x?x16xf32>
}
