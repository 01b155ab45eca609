// RUN: kiln-opt %s -split-input-file | kiln-opt -split-input-file | FileCheck %s
// RUN: kiln-opt %s -split-input-file -mlir-print-op-generic | kiln-opt -split-input-file | FileCheck %s
// RUN: kiln-opt %s -split-input-file > %t.once
// RUN: kiln-opt %t.once -split-input-file > %t.twice
// RUN: diff %t.once %t.twice

// Round trip of every kiln op and attribute: the first kiln-opt parses and
// prints, the second parses the printed form again (and verifies it). The
// second RUN line checks the generic form reads back too, the last three that
// printing is a fixed point: the printed form prints unchanged.

// CHECK-LABEL: kiln.parameter @model.norm.weight : tensor<64xbf16>
// CHECK-NEXT: kiln.parameter @model.embed_tokens.weight : tensor<256x64xf32>{{$}}
// CHECK-NEXT: kiln.parameter @half : tensor<4x4xf16>
// CHECK-NEXT: kiln.parameter @fp8 : tensor<256x128xf8E4M3FN>
// CHECK-NEXT: kiln.parameter @model.layers.3.mlp.experts.gate_proj.weight : tensor<8x32x64xf8E4M3FN> {source = "model.layers.3.mlp.experts.{}.gate_proj.weight"}
// CHECK-NEXT: kiln.parameter @renamed : tensor<2x2xbf16> {source = "model.other.weight"}
// CHECK-NEXT: kiln.parameter @model.layers.0.mlp.experts.down_proj.weight : tensor<4x64x32xbf16> {source = "model.layers.0.mlp.experts.{}.down_proj.weight"}
// CHECK-NEXT: kiln.parameter @q : tensor<256x300xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128>, source = "model.q.weight"}
// CHECK-NEXT: kiln.parameter @q_scale : tensor<2x3xf32> {quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128, scale = true, ue8m0 = true>, source = "model.q.weight"}
// CHECK-NEXT: kiln.parameter @w_uk : tensor<2x64x16xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 16, block_cols = 64>, source = "kv_b.weight", transform = #kiln.head_slice<heads = 2, rows = 32, offset = 0, size = 16, transpose = true>}
kiln.parameter @model.norm.weight : tensor<64xbf16>
kiln.parameter @model.embed_tokens.weight : tensor<256x64xf32>
kiln.parameter @half : tensor<4x4xf16>
kiln.parameter @fp8 : tensor<256x128xf8E4M3FN>
kiln.parameter @model.layers.3.mlp.experts.gate_proj.weight
    : tensor<8x32x64xf8E4M3FN>
    {source = "model.layers.3.mlp.experts.{}.gate_proj.weight"}
kiln.parameter @renamed : tensor<2x2xbf16> {source = "model.other.weight"}
kiln.parameter @model.layers.0.mlp.experts.down_proj.weight
    : tensor<4x64x32xbf16> {source = "model.layers.0.mlp.experts.{}.down_proj.weight"}
kiln.parameter @q : tensor<256x300xf8E4M3FN>
    {source = "model.q.weight",
     quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128>}
kiln.parameter @q_scale : tensor<2x3xf32>
    {source = "model.q.weight",
     quantize = #kiln.fp8_quant<block_rows = 128, block_cols = 128,
                                scale = true, ue8m0 = true>}
kiln.parameter @w_uk : tensor<2x64x16xf8E4M3FN>
    {source = "kv_b.weight",
     quantize = #kiln.fp8_quant<block_rows = 16, block_cols = 64>,
     transform = #kiln.head_slice<heads = 2, rows = 32, offset = 0, size = 16,
                                  transpose = true>}

// -----

kiln.parameter @model.norm.weight : tensor<64xbf16>
kiln.parameter @fp8 : tensor<256x128xf8E4M3FN>

// CHECK-LABEL: func.func @get_parameter
// CHECK: kiln.get_parameter @model.norm.weight : tensor<64xbf16>
// CHECK: kiln.get_parameter @fp8 : tensor<256x128xf8E4M3FN>
func.func @get_parameter() -> (tensor<64xbf16>, tensor<256x128xf8E4M3FN>) {
  %0 = kiln.get_parameter @model.norm.weight : tensor<64xbf16>
  %1 = kiln.get_parameter @fp8 : tensor<256x128xf8E4M3FN>
  return %0, %1 : tensor<64xbf16>, tensor<256x128xf8E4M3FN>
}

// -----

// CHECK: kiln.kv_cache @model.layers.0.self_attn.k : tensor<8x128xf32>
// CHECK: kiln.kv_cache @model.layers.0.self_attn.v : tensor<8x128xbf16>
// CHECK: kiln.kv_cache @latent : tensor<576xf8E4M3FN>
// CHECK: kiln.kv_cache @fp8_latent : tensor<1x576xf32> {storage = #kiln.packed_cache<fp8_columns = 512>}
// CHECK: kiln.kv_cache @bf16_latent : tensor<1x576xf32> {storage = #kiln.packed_cache<fp8_columns = 0>}
kiln.kv_cache @model.layers.0.self_attn.k : tensor<8x128xf32>
kiln.kv_cache @model.layers.0.self_attn.v : tensor<8x128xbf16>
kiln.kv_cache @latent : tensor<576xf8E4M3FN>
kiln.kv_cache @fp8_latent : tensor<1x576xf32>
    {storage = #kiln.packed_cache<fp8_columns = 512>}
kiln.kv_cache @bf16_latent : tensor<1x576xf32>
    {storage = #kiln.packed_cache<fp8_columns = 0>}

// CHECK-LABEL: func.func @kv_cache
// CHECK: kiln.kv_append @model.layers.0.self_attn.k, %arg0 at %arg1 : tensor<?x?x8x128xf32>, tensor<?x?xi32>
// CHECK: kiln.kv_read @model.layers.0.self_attn.k, %arg2 : tensor<?xi32> -> tensor<?x?x8x128xf32>
// CHECK: kiln.kv_append @model.layers.0.self_attn.v, %arg3 at %arg1 : tensor<?x?x8x128xbf16>, tensor<?x?xi32>
// CHECK: kiln.kv_read @model.layers.0.self_attn.v, %arg2 : tensor<?xi32> -> tensor<?x?x8x128xbf16>
// CHECK: kiln.kv_append @latent, %arg4 at %arg1 : tensor<?x?x576xbf16>, tensor<?x?xi32>
// CHECK: kiln.kv_read @latent, %arg2 : tensor<?xi32> -> tensor<?x?x576xf32>
func.func @kv_cache(%k: tensor<?x?x8x128xf32>, %pos: tensor<?x?xi32>,
                    %lens: tensor<?xi32>, %v: tensor<?x?x8x128xbf16>,
                    %c: tensor<?x?x576xbf16>)
    -> (tensor<?x?x8x128xf32>, tensor<?x?x8x128xbf16>, tensor<?x?x576xf32>) {
  kiln.kv_append @model.layers.0.self_attn.k, %k at %pos
      : tensor<?x?x8x128xf32>, tensor<?x?xi32>
  %0 = kiln.kv_read @model.layers.0.self_attn.k, %lens
      : tensor<?xi32> -> tensor<?x?x8x128xf32>
  kiln.kv_append @model.layers.0.self_attn.v, %v at %pos
      : tensor<?x?x8x128xbf16>, tensor<?x?xi32>
  %1 = kiln.kv_read @model.layers.0.self_attn.v, %lens
      : tensor<?xi32> -> tensor<?x?x8x128xbf16>
  // An fp8 slot stores and returns any activation type.
  kiln.kv_append @latent, %c at %pos : tensor<?x?x576xbf16>, tensor<?x?xi32>
  %2 = kiln.kv_read @latent, %lens : tensor<?xi32> -> tensor<?x?x576xf32>
  return %0, %1, %2
      : tensor<?x?x8x128xf32>, tensor<?x?x8x128xbf16>, tensor<?x?x576xf32>
}

// -----

// CHECK-LABEL: func.func @embedding
// CHECK: kiln.embedding %arg0, %arg1 : (tensor<?x?xi32>, tensor<1024x64xbf16>) -> tensor<?x?x64xf32>
// CHECK: kiln.embedding %arg0, %arg1 : (tensor<?x?xi32>, tensor<1024x64xbf16>) -> tensor<?x?x64xbf16>
func.func @embedding(%tokens: tensor<?x?xi32>, %table: tensor<1024x64xbf16>)
    -> (tensor<?x?x64xf32>, tensor<?x?x64xbf16>) {
  %0 = kiln.embedding %tokens, %table
      : (tensor<?x?xi32>, tensor<1024x64xbf16>) -> tensor<?x?x64xf32>
  %1 = kiln.embedding %tokens, %table
      : (tensor<?x?xi32>, tensor<1024x64xbf16>) -> tensor<?x?x64xbf16>
  return %0, %1 : tensor<?x?x64xf32>, tensor<?x?x64xbf16>
}

// -----

// CHECK-LABEL: func.func @rms_norm
// CHECK: kiln.rms_norm %arg0, %arg1 {epsilon = 9.9999999999999995E-7 : f64} : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
// CHECK: kiln.rms_norm %arg2, %arg1 {epsilon = 1.000000e-05 : f64} : (tensor<?x?x4x64xbf16>, tensor<64xbf16>) -> tensor<?x?x4x64xbf16>
func.func @rms_norm(%x: tensor<?x?x64xf32>, %w: tensor<64xbf16>,
                    %y: tensor<?x?x4x64xbf16>)
    -> (tensor<?x?x64xf32>, tensor<?x?x4x64xbf16>) {
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-06 : f64}
      : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
  %1 = kiln.rms_norm %y, %w {epsilon = 1.0e-05 : f64}
      : (tensor<?x?x4x64xbf16>, tensor<64xbf16>) -> tensor<?x?x4x64xbf16>
  return %0, %1 : tensor<?x?x64xf32>, tensor<?x?x4x64xbf16>
}

// -----

// CHECK-LABEL: func.func @linear
// CHECK: kiln.linear %arg0, %arg1 : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
// CHECK: kiln.linear %arg0, %arg1 bias %arg2 : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96xbf16>) -> tensor<?x?x96xf32>
// CHECK: kiln.linear %arg3, %arg4 scale %arg5 {block_size = array<i64: 128, 128>} : (tensor<?x?x300xbf16>, tensor<200x300xf8E4M3FN>, tensor<2x3xf32>) -> tensor<?x?x200xbf16>
// CHECK: kiln.linear %arg0, %arg6 bias %arg7 scale %arg8 {block_size = array<i64: 32, 16>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<96xf32>, tensor<3x4xf32>) -> tensor<?x?x96xf32>
func.func @linear(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>,
                  %b: tensor<96xbf16>, %x8: tensor<?x?x300xbf16>,
                  %w8: tensor<200x300xf8E4M3FN>, %s8: tensor<2x3xf32>,
                  %w9: tensor<96x64xf8E4M3FN>, %b9: tensor<96xf32>,
                  %s9: tensor<3x4xf32>) {
  %0 = kiln.linear %x, %w
      : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  %1 = kiln.linear %x, %w bias %b
      : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96xbf16>)
      -> tensor<?x?x96xf32>
  %2 = kiln.linear %x8, %w8 scale %s8 {block_size = array<i64: 128, 128>}
      : (tensor<?x?x300xbf16>, tensor<200x300xf8E4M3FN>, tensor<2x3xf32>)
      -> tensor<?x?x200xbf16>
  %3 = kiln.linear %x, %w9 bias %b9 scale %s9 {block_size = array<i64: 32, 16>}
      : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<96xf32>,
         tensor<3x4xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

// CHECK-LABEL: func.func @logits
// CHECK: kiln.logits %arg0, %arg1 : (tensor<?x?x64xf32>, tensor<1024x64xbf16>) -> tensor<?x?x1024xf32>
// CHECK: kiln.logits %arg2, %arg1 : (tensor<?x?x64xbf16>, tensor<1024x64xbf16>) -> tensor<?x?x1024xf32>
func.func @logits(%h: tensor<?x?x64xf32>, %w: tensor<1024x64xbf16>,
                  %g: tensor<?x?x64xbf16>)
    -> (tensor<?x?x1024xf32>, tensor<?x?x1024xf32>) {
  %0 = kiln.logits %h, %w
      : (tensor<?x?x64xf32>, tensor<1024x64xbf16>) -> tensor<?x?x1024xf32>
  %1 = kiln.logits %g, %w
      : (tensor<?x?x64xbf16>, tensor<1024x64xbf16>) -> tensor<?x?x1024xf32>
  return %0, %1 : tensor<?x?x1024xf32>, tensor<?x?x1024xf32>
}

// -----

// CHECK-LABEL: func.func @elementwise
// CHECK: %[[SUM:.*]] = kiln.add %arg0, %arg1 : tensor<?x?x64xf32>
// CHECK: kiln.swiglu %[[SUM]], %arg1 : tensor<?x?x64xf32>
// CHECK: kiln.swiglu %arg2, %arg2 : tensor<?x?x128xbf16>
func.func @elementwise(%a: tensor<?x?x64xf32>, %b: tensor<?x?x64xf32>,
                       %c: tensor<?x?x128xbf16>)
    -> (tensor<?x?x64xf32>, tensor<?x?x128xbf16>) {
  %0 = kiln.add %a, %b : tensor<?x?x64xf32>
  %1 = kiln.swiglu %0, %b : tensor<?x?x64xf32>
  %2 = kiln.swiglu %c, %c : tensor<?x?x128xbf16>
  return %1, %2 : tensor<?x?x64xf32>, tensor<?x?x128xbf16>
}

// -----

// CHECK-LABEL: func.func @shapes
// CHECK: %[[Q:.*]] = kiln.reshape %arg0 : tensor<?x?x768xf32> -> tensor<?x?x4x192xf32>
// CHECK: %[[NOPE:.*]] = kiln.slice %[[Q]][0, 128] : tensor<?x?x4x192xf32> -> tensor<?x?x4x128xf32>
// CHECK: %[[PE:.*]] = kiln.slice %[[Q]][128, 64] : tensor<?x?x4x192xf32> -> tensor<?x?x4x64xf32>
// CHECK: kiln.concat %[[NOPE]], %[[PE]] : tensor<?x?x4x128xf32>, tensor<?x?x4x64xf32> -> tensor<?x?x4x192xf32>
// CHECK: kiln.concat %[[PE]] : tensor<?x?x4x64xf32> -> tensor<?x?x4x64xf32>
// CHECK: kiln.concat %[[PE]], %[[PE]], %[[PE]] : tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32> -> tensor<?x?x4x192xf32>
// CHECK: kiln.broadcast %arg1 : tensor<?x?x1x64xf32> -> tensor<?x?x4x64xf32>
// CHECK: kiln.reshape %arg2 : tensor<?x?x2x3x4xbf16> -> tensor<?x?x24xbf16>
func.func @shapes(%x: tensor<?x?x768xf32>, %kpe: tensor<?x?x1x64xf32>,
                  %y: tensor<?x?x2x3x4xbf16>) {
  %q = kiln.reshape %x : tensor<?x?x768xf32> -> tensor<?x?x4x192xf32>
  %nope = kiln.slice %q [0, 128] : tensor<?x?x4x192xf32> -> tensor<?x?x4x128xf32>
  %pe = kiln.slice %q [128, 64] : tensor<?x?x4x192xf32> -> tensor<?x?x4x64xf32>
  %0 = kiln.concat %nope, %pe
      : tensor<?x?x4x128xf32>, tensor<?x?x4x64xf32> -> tensor<?x?x4x192xf32>
  %1 = kiln.concat %pe : tensor<?x?x4x64xf32> -> tensor<?x?x4x64xf32>
  %2 = kiln.concat %pe, %pe, %pe
      : tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>
      -> tensor<?x?x4x192xf32>
  %3 = kiln.broadcast %kpe : tensor<?x?x1x64xf32> -> tensor<?x?x4x64xf32>
  %4 = kiln.reshape %y : tensor<?x?x2x3x4xbf16> -> tensor<?x?x24xbf16>
  return
}

// -----

// Every default of #kiln.rope is elided when printed; `kind` is always
// printed.

// CHECK-LABEL: func.func @rope
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = plain>} : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = plain, theta = 1.0e+06>} : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = plain, theta = 5.0e+05, interleaved = true>} : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = yarn, factor = 40.0, original_max_position = 4096, mscale_all_dim = 1.0, interleaved = true>} : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
// CHECK: kiln.rope %arg2, %arg1 {rope = #kiln.rope<kind = yarn, theta = 1.0e-06, factor = 4.0, original_max_position = 512, beta_fast = 16.5, beta_slow = 2.0, mscale = 0.707, mscale_all_dim = 0.707>} : (tensor<?x?x1x8xbf16>, tensor<?x?xi32>) -> tensor<?x?x1x8xbf16>
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = llama3, theta = 5.0e+05, factor = 8.0, original_max_position = 8192>} : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = llama3, factor = 8.0, original_max_position = 8192, low_freq_factor = 2.0, high_freq_factor = 8.0, interleaved = true>} : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = plain, theta = 0.30000000000000004>}
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = plain, theta = 1.5e-300>}
func.func @rope(%x: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>,
                %k: tensor<?x?x1x8xbf16>) {
  %0 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  %1 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain, theta = 1000000.0,
                                             interleaved = false>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  %2 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain, theta = 500000.0,
                                             interleaved = true>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  %3 = kiln.rope %x, %pos {rope = #kiln.rope<kind = yarn, theta = 10000.0,
                                             factor = 40.0,
                                             original_max_position = 4096,
                                             beta_fast = 32.0, beta_slow = 1.0,
                                             mscale = 1.0, mscale_all_dim = 1.0,
                                             interleaved = true>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  // Parameters may come in any order.
  %4 = kiln.rope %k, %pos {rope = #kiln.rope<mscale_all_dim = 0.707,
                                             kind = yarn, theta = 0.000001,
                                             factor = 4.0, beta_slow = 2.0,
                                             original_max_position = 512,
                                             beta_fast = 16.5, mscale = 0.707>}
      : (tensor<?x?x1x8xbf16>, tensor<?x?xi32>) -> tensor<?x?x1x8xbf16>
  %5 = kiln.rope %x, %pos {rope = #kiln.rope<kind = llama3, theta = 500000.0,
                                             factor = 8.0,
                                             original_max_position = 8192,
                                             low_freq_factor = 1.0,
                                             high_freq_factor = 4.0>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  %6 = kiln.rope %x, %pos {rope = #kiln.rope<kind = llama3, factor = 8.0,
                                             original_max_position = 8192,
                                             low_freq_factor = 2.0,
                                             high_freq_factor = 8.0,
                                             interleaved = true>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  // Doubles print in the shortest form that reads back exactly.
  %7 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain,
                                             theta = 0.30000000000000004>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  %8 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain, theta = 1.5e-300>}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

// The attribute through an alias, and as a discardable attribute.

#yarn = #kiln.rope<kind = yarn, factor = 40.0, original_max_position = 4096>
// CHECK-LABEL: func.func @rope_alias
// CHECK-SAME: attributes {r = #kiln.rope<kind = yarn, factor = 40.0, original_max_position = 4096>}
// CHECK: kiln.rope %arg0, %arg1 {rope = #kiln.rope<kind = yarn, factor = 40.0, original_max_position = 4096>} :
func.func @rope_alias(%x: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>)
    -> tensor<?x?x4x64xf32> attributes {r = #yarn} {
  %0 = kiln.rope %x, %pos {rope = #yarn}
      : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  return %0 : tensor<?x?x4x64xf32>
}

// -----

// CHECK-LABEL: func.func @attention
// MHA
// CHECK: kiln.attention %arg0, %arg1, %arg2, %arg3, %arg4 {scale = 1.250000e-01 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
// GQA
// CHECK: kiln.attention %arg0, %arg5, %arg5, %arg3, %arg4 {scale = 1.250000e-01 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
// MQA, with d_v != d_k (MLA)
// CHECK: kiln.attention %arg0, %arg6, %arg7, %arg3, %arg4 {scale = 0.072168783648703216 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x1x64xf32>, tensor<?x?x1x32xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x32xf32>
// bf16
// CHECK: kiln.attention %arg8, %arg8, %arg8, %arg3, %arg4 {scale = 1.000000e+00 : f64} : (tensor<?x?x12x16xbf16>, tensor<?x?x12x16xbf16>, tensor<?x?x12x16xbf16>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x12x16xbf16>
func.func @attention(%q: tensor<?x?x4x64xf32>, %k: tensor<?x?x4x64xf32>,
                     %v: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>,
                     %lens: tensor<?xi32>, %kv2: tensor<?x?x2x64xf32>,
                     %k1: tensor<?x?x1x64xf32>, %v1: tensor<?x?x1x32xf32>,
                     %b: tensor<?x?x12x16xbf16>) {
  %0 = kiln.attention %q, %k, %v, %pos, %lens {scale = 0.125 : f64}
      : (tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>,
         tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  %1 = kiln.attention %q, %kv2, %kv2, %pos, %lens {scale = 0.125 : f64}
      : (tensor<?x?x4x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?x2x64xf32>,
         tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  %2 = kiln.attention %q, %k1, %v1, %pos, %lens
      {scale = 0.072168783648703216 : f64}
      : (tensor<?x?x4x64xf32>, tensor<?x?x1x64xf32>, tensor<?x?x1x32xf32>,
         tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x32xf32>
  %3 = kiln.attention %b, %b, %b, %pos, %lens {scale = 1.0 : f64}
      : (tensor<?x?x12x16xbf16>, tensor<?x?x12x16xbf16>,
         tensor<?x?x12x16xbf16>, tensor<?x?xi32>, tensor<?xi32>)
      -> tensor<?x?x12x16xbf16>
  return
}

// -----

// CHECK-LABEL: func.func @moe_gate
// CHECK: kiln.moe_gate %arg0, %arg1 softmax greedy {n_group = 1 : i64, routed_scaling_factor = 1.000000e+00 : f64, top_k = 6 : i64, topk_group = 1 : i64} : (tensor<?x?x64xf32>, tensor<64x64xbf16>) -> (tensor<?x?x6xf32>, tensor<?x?x6xi32>)
// CHECK: kiln.moe_gate %arg0, %arg1 softmax group_limited_greedy {n_group = 8 : i64, norm_topk_prob, routed_scaling_factor = 1.600000e+01 : f64, top_k = 6 : i64, topk_group = 3 : i64} : (tensor<?x?x64xf32>, tensor<64x64xbf16>) -> (tensor<?x?x6xf32>, tensor<?x?x6xi32>)
// CHECK: kiln.moe_gate %arg2, %arg3 bias %arg4 sigmoid noaux_tc {n_group = 2 : i64, norm_topk_prob, routed_scaling_factor = 2.500000e+00 : f64, top_k = 2 : i64, topk_group = 1 : i64} : (tensor<?x?x64xbf16>, tensor<8x64xf32>, tensor<8xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
// CHECK: kiln.moe_gate %arg0, %arg1 sigmoid greedy {n_group = 1 : i64, routed_scaling_factor = 1.000000e+00 : f64, top_k = 64 : i64, topk_group = 1 : i64}
func.func @moe_gate(%x: tensor<?x?x64xf32>, %w: tensor<64x64xbf16>,
                    %y: tensor<?x?x64xbf16>, %gw: tensor<8x64xf32>,
                    %b: tensor<8xf32>) {
  %w0, %i0 = kiln.moe_gate %x, %w softmax greedy
      {top_k = 6 : i64, n_group = 1 : i64, topk_group = 1 : i64,
       routed_scaling_factor = 1.0 : f64}
      : (tensor<?x?x64xf32>, tensor<64x64xbf16>)
      -> (tensor<?x?x6xf32>, tensor<?x?x6xi32>)
  %w1, %i1 = kiln.moe_gate %x, %w softmax group_limited_greedy
      {top_k = 6 : i64, n_group = 8 : i64, topk_group = 3 : i64,
       norm_topk_prob, routed_scaling_factor = 16.0 : f64}
      : (tensor<?x?x64xf32>, tensor<64x64xbf16>)
      -> (tensor<?x?x6xf32>, tensor<?x?x6xi32>)
  %w2, %i2 = kiln.moe_gate %y, %gw bias %b sigmoid noaux_tc
      {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64,
       norm_topk_prob, routed_scaling_factor = 2.5 : f64}
      : (tensor<?x?x64xbf16>, tensor<8x64xf32>, tensor<8xf32>)
      -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  %w3, %i3 = kiln.moe_gate %x, %w sigmoid greedy
      {top_k = 64 : i64, n_group = 1 : i64, topk_group = 1 : i64,
       routed_scaling_factor = 1.0 : f64}
      : (tensor<?x?x64xf32>, tensor<64x64xbf16>)
      -> (tensor<?x?x64xf32>, tensor<?x?x64xi32>)
  return
}

// -----

// The whole routed-expert path, with bf16 and FP8 experts.

// CHECK-LABEL: func.func @moe
// CHECK: %[[R:.*]], %[[OFF:.*]], %[[SLOTS:.*]], %[[ROWS:.*]] = kiln.moe_dispatch %arg0, %arg1 {num_experts = 8 : i64} : (tensor<?x?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
// CHECK: %[[G:.*]] = kiln.grouped_linear %[[R]], %arg2, %[[OFF]] : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x32xf32>
// CHECK: %[[U:.*]] = kiln.grouped_linear %[[R]], %arg3, %[[OFF]] scale %arg4 {block_size = array<i64: 16, 16>} : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>, tensor<8x2x4xf32>) -> tensor<?x32xf32>
// CHECK: %[[A:.*]] = kiln.swiglu %[[G]], %[[U]] : tensor<?x32xf32>
// CHECK: %[[D:.*]] = kiln.grouped_linear %[[A]], %arg5, %[[OFF]] : (tensor<?x32xf32>, tensor<8x64x32xbf16>, tensor<9xi32>) -> tensor<?x64xf32>
// CHECK: kiln.moe_combine %[[D]], %arg6, %[[ROWS]] : (tensor<?x64xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>) -> tensor<?x?x64xf32>
func.func @moe(%x: tensor<?x?x64xf32>, %idx: tensor<?x?x2xi32>,
               %wg: tensor<8x32x64xbf16>, %wu: tensor<8x32x64xf8E4M3FN>,
               %su: tensor<8x2x4xf32>, %wd: tensor<8x64x32xbf16>,
               %weights: tensor<?x?x2xf32>) -> tensor<?x?x64xf32> {
  %r, %off, %slots, %rows = kiln.moe_dispatch %x, %idx {num_experts = 8 : i64}
      : (tensor<?x?x64xf32>, tensor<?x?x2xi32>)
      -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  %g = kiln.grouped_linear %r, %wg, %off
      : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>)
      -> tensor<?x32xf32>
  %u = kiln.grouped_linear %r, %wu, %off scale %su
      {block_size = array<i64: 16, 16>}
      : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>,
         tensor<8x2x4xf32>) -> tensor<?x32xf32>
  %a = kiln.swiglu %g, %u : tensor<?x32xf32>
  %d = kiln.grouped_linear %a, %wd, %off
      : (tensor<?x32xf32>, tensor<8x64x32xbf16>, tensor<9xi32>)
      -> tensor<?x64xf32>
  %y = kiln.moe_combine %d, %weights, %rows
      : (tensor<?x64xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>)
      -> tensor<?x?x64xf32>
  return %y : tensor<?x?x64xf32>
}

// -----

// A head projection reading columns [8, 24) of each 24-wide head row.

// CHECK-LABEL: func.func @head_linear_offset
// CHECK: kiln.head_linear %arg0, %arg1 {input_offset = 8 : i64} : (tensor<?x?x4x24xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
func.func @head_linear_offset(%q: tensor<?x?x4x24xf32>, %w: tensor<4x32x16xbf16>) {
  %0 = kiln.head_linear %q, %w {input_offset = 8 : i64}
      : (tensor<?x?x4x24xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
  return
}

// -----

// A SwiGLU's two projections as one GEMM: dense, grouped by expert, and
// FP8 on e4m3 input codes.

// CHECK-LABEL: func.func @gated_linear
// CHECK: kiln.gated_linear %arg0, %arg1, %arg2 : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
// CHECK: kiln.gated_linear %arg3, %arg4, %arg5 experts %arg6 : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x32xf32>
// CHECK: kiln.gated_linear %arg7, %arg8, %arg9 scales %arg10, %arg11 input_scale %arg12 {act_ue8m0, block_size = array<i64: 16, 16>} : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<6x4xf32>, tensor<6x4xf32>, tensor<?x?x4xf32>) -> tensor<?x?x96xf32>
func.func @gated_linear(%x: tensor<?x?x64xf32>, %wg: tensor<96x64xbf16>,
                        %wu: tensor<96x64xbf16>, %r: tensor<?x64xf32>,
                        %eg: tensor<8x32x64xbf16>, %eu: tensor<8x32x64xbf16>,
                        %off: tensor<9xi32>, %q: tensor<?x?x64xf8E4M3FN>,
                        %qg: tensor<96x64xf8E4M3FN>,
                        %qu: tensor<96x64xf8E4M3FN>, %sg: tensor<6x4xf32>,
                        %su: tensor<6x4xf32>, %sx: tensor<?x?x4xf32>) {
  %0 = kiln.gated_linear %x, %wg, %wu
      : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96x64xbf16>)
      -> tensor<?x?x96xf32>
  %1 = kiln.gated_linear %r, %eg, %eu experts %off
      : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<8x32x64xbf16>,
         tensor<9xi32>) -> tensor<?x32xf32>
  %2 = kiln.gated_linear %q, %qg, %qu scales %sg, %su input_scale %sx
      {block_size = array<i64: 16, 16>, act_ue8m0}
      : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>,
         tensor<96x64xf8E4M3FN>, tensor<6x4xf32>, tensor<6x4xf32>,
         tensor<?x?x4xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

// bf16 activations through dispatch and combine.

// CHECK-LABEL: func.func @moe_bf16
// CHECK: kiln.moe_dispatch %arg0, %arg1 {num_experts = 256 : i64} : (tensor<?x?x16xbf16>, tensor<?x?x8xi32>) -> (tensor<?x16xbf16>, tensor<257xi32>, tensor<?xi32>, tensor<?x?x8xi32>)
// CHECK: kiln.moe_combine %{{.*}}, %arg2, %{{.*}} : (tensor<?x16xbf16>, tensor<?x?x8xf32>, tensor<?x?x8xi32>) -> tensor<?x?x16xbf16>
func.func @moe_bf16(%x: tensor<?x?x16xbf16>, %idx: tensor<?x?x8xi32>,
                    %w: tensor<?x?x8xf32>) -> tensor<?x?x16xbf16> {
  %r, %off, %slots, %rows = kiln.moe_dispatch %x, %idx {num_experts = 256 : i64}
      : (tensor<?x?x16xbf16>, tensor<?x?x8xi32>)
      -> (tensor<?x16xbf16>, tensor<257xi32>, tensor<?xi32>, tensor<?x?x8xi32>)
  %y = kiln.moe_combine %r, %w, %rows
      : (tensor<?x16xbf16>, tensor<?x?x8xf32>, tensor<?x?x8xi32>)
      -> tensor<?x?x16xbf16>
  return %y : tensor<?x?x16xbf16>
}

// -----

// Weights need not have static shapes (only kiln.parameter does); the
// verifiers accept any dynamic dimension where a static one would fit.

// CHECK-LABEL: func.func @dynamic_weights
// CHECK: kiln.linear %arg0, %arg1 scale %arg2 {block_size = array<i64: 128, 128>} : (tensor<?x?x64xf32>, tensor<?x64xf8E4M3FN>, tensor<3x1xf32>) -> tensor<?x?x?xf32>
// CHECK: kiln.grouped_linear %arg3, %arg4, %arg5 : (tensor<?x64xf32>, tensor<?x32x64xbf16>, tensor<9xi32>) -> tensor<?x32xf32>
// CHECK: kiln.attention %arg6, %arg6, %arg6, %arg7, %arg8 {scale = 1.250000e-01 : f64} : (tensor<?x?x4x?xf32>, tensor<?x?x4x?xf32>, tensor<?x?x4x?xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x?xf32>
func.func @dynamic_weights(%x: tensor<?x?x64xf32>, %w: tensor<?x64xf8E4M3FN>,
                           %s: tensor<3x1xf32>, %r: tensor<?x64xf32>,
                           %we: tensor<?x32x64xbf16>, %off: tensor<9xi32>,
                           %q: tensor<?x?x4x?xf32>, %pos: tensor<?x?xi32>,
                           %lens: tensor<?xi32>) {
  %0 = kiln.linear %x, %w scale %s {block_size = array<i64: 128, 128>}
      : (tensor<?x?x64xf32>, tensor<?x64xf8E4M3FN>, tensor<3x1xf32>)
      -> tensor<?x?x?xf32>
  %1 = kiln.grouped_linear %r, %we, %off
      : (tensor<?x64xf32>, tensor<?x32x64xbf16>, tensor<9xi32>)
      -> tensor<?x32xf32>
  %2 = kiln.attention %q, %q, %q, %pos, %lens {scale = 0.125 : f64}
      : (tensor<?x?x4x?xf32>, tensor<?x?x4x?xf32>, tensor<?x?x4x?xf32>,
         tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x?xf32>
  return
}

// -----

// A fused group: the body's arguments stand for the inputs, kiln.yield
// returns the results.

// CHECK-LABEL: func.func @fused
// CHECK: %[[F:.*]]:2 = kiln.fused "fused_0_add_rms_norm"(%arg0, %arg1, %arg2) : (tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<64xbf16>) -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>) attributes {kiln.fusion = {kind = "row", quantizes_for = ["fp8 1x128"], row_bytes = 256 : i64, saved_bytes = 256 : i64}} {
// CHECK-NEXT: ^bb0(%[[A:.*]]: tensor<?x?x64xf32>, %[[B:.*]]: tensor<?x?x64xf32>, %[[W:.*]]: tensor<64xbf16>):
// CHECK-NEXT: %[[S:.*]] = kiln.add %[[A]], %[[B]] : tensor<?x?x64xf32>
// CHECK-NEXT: %[[N:.*]] = kiln.rms_norm %[[S]], %[[W]] {epsilon = 9.9999999999999995E-7 : f64} : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
// CHECK-NEXT: kiln.yield %[[S]], %[[N]] : tensor<?x?x64xf32>, tensor<?x?x64xf32>
// CHECK-NEXT: }
// CHECK-NEXT: return %[[F]]#0, %[[F]]#1
func.func @fused(%x: tensor<?x?x64xf32>, %y: tensor<?x?x64xf32>,
                 %w: tensor<64xbf16>)
    -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>) {
  %r:2 = kiln.fused "fused_0_add_rms_norm"(%x, %y, %w)
      : (tensor<?x?x64xf32>, tensor<?x?x64xf32>, tensor<64xbf16>)
      -> (tensor<?x?x64xf32>, tensor<?x?x64xf32>)
      attributes {kiln.fusion = {kind = "row", row_bytes = 256 : i64,
                                 saved_bytes = 256 : i64,
                                 quantizes_for = ["fp8 1x128"]}} {
  ^bb0(%a: tensor<?x?x64xf32>, %b: tensor<?x?x64xf32>, %g: tensor<64xbf16>):
    %s = kiln.add %a, %b : tensor<?x?x64xf32>
    %n = kiln.rms_norm %s, %g {epsilon = 1.0e-06 : f64}
        : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
    kiln.yield %s, %n : tensor<?x?x64xf32>, tensor<?x?x64xf32>
  }
  return %r#0, %r#1 : tensor<?x?x64xf32>, tensor<?x?x64xf32>
}

// -----

// A linear group: linears of one input, run as one GEMM launch; here FP8
// codes with their input scales.

// CHECK-LABEL: func.func @linear_group
// CHECK: %[[G:.*]]:2 = kiln.linear_group(%arg0, %arg1, %arg2, %arg3, %arg4, %arg5) : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<6x4xf32>, tensor<?x?x4xf32>, tensor<40x64xf8E4M3FN>, tensor<3x4xf32>) -> (tensor<?x?x96xf32>, tensor<?x?x40xf32>) {
// CHECK-NEXT: ^bb0(%[[X:.*]]: tensor<?x?x64xf8E4M3FN>, %[[W0:.*]]: tensor<96x64xf8E4M3FN>, %[[S0:.*]]: tensor<6x4xf32>, %[[XS:.*]]: tensor<?x?x4xf32>, %[[W1:.*]]: tensor<40x64xf8E4M3FN>, %[[S1:.*]]: tensor<3x4xf32>):
// CHECK-NEXT: %[[Q:.*]] = kiln.linear %[[X]], %[[W0]] scale %[[S0]] input_scale %[[XS]] {block_size = array<i64: 16, 16>}
// CHECK-NEXT: %[[KV:.*]] = kiln.linear %[[X]], %[[W1]] scale %[[S1]] input_scale %[[XS]] {block_size = array<i64: 16, 16>}
// CHECK-NEXT: kiln.yield %[[Q]], %[[KV]] : tensor<?x?x96xf32>, tensor<?x?x40xf32>
// CHECK-NEXT: }
// CHECK-NEXT: return %[[G]]#0, %[[G]]#1
func.func @linear_group(%x: tensor<?x?x64xf8E4M3FN>,
                        %wq: tensor<96x64xf8E4M3FN>, %sq: tensor<6x4xf32>,
                        %xs: tensor<?x?x4xf32>,
                        %wkv: tensor<40x64xf8E4M3FN>, %skv: tensor<3x4xf32>)
    -> (tensor<?x?x96xf32>, tensor<?x?x40xf32>) {
  %r:2 = kiln.linear_group(%x, %wq, %sq, %xs, %wkv, %skv)
      : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<6x4xf32>,
         tensor<?x?x4xf32>, tensor<40x64xf8E4M3FN>, tensor<3x4xf32>)
      -> (tensor<?x?x96xf32>, tensor<?x?x40xf32>) {
  ^bb0(%a: tensor<?x?x64xf8E4M3FN>, %b: tensor<96x64xf8E4M3FN>,
       %c: tensor<6x4xf32>, %d: tensor<?x?x4xf32>,
       %e: tensor<40x64xf8E4M3FN>, %f: tensor<3x4xf32>):
    %q = kiln.linear %a, %b scale %c input_scale %d {block_size = array<i64: 16, 16>}
        : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<6x4xf32>,
           tensor<?x?x4xf32>) -> tensor<?x?x96xf32>
    %kv = kiln.linear %a, %e scale %f input_scale %d {block_size = array<i64: 16, 16>}
        : (tensor<?x?x64xf8E4M3FN>, tensor<40x64xf8E4M3FN>, tensor<3x4xf32>,
           tensor<?x?x4xf32>) -> tensor<?x?x40xf32>
    kiln.yield %q, %kv : tensor<?x?x96xf32>, tensor<?x?x40xf32>
  }
  return %r#0, %r#1 : tensor<?x?x96xf32>, tensor<?x?x40xf32>
}

// -----

// FP8 GEMMs of f32 rows (quantized in the grouped GEMV) beside those of
// e4m3 codes: a MoE layer's routed and shared experts.

// CHECK-LABEL: func.func @linear_group_fp8_mixed
// CHECK: kiln.linear_group(%arg0, %arg1, %arg2, %arg3, %arg4) : (tensor<?x32xf32>, tensor<16x32xf8E4M3FN>, tensor<1x2xf32>, tensor<?x32xf8E4M3FN>, tensor<?x2xf32>)
// CHECK-NEXT: ^bb0
// CHECK-NEXT: kiln.linear %{{.*}}, %{{.*}} scale %{{.*}} {block_size
// CHECK-NEXT: kiln.linear %{{.*}}, %{{.*}} scale %{{.*}} input_scale %{{.*}} {block_size
func.func @linear_group_fp8_mixed(%y: tensor<?x32xf32>, %w: tensor<16x32xf8E4M3FN>, %s: tensor<1x2xf32>, %x: tensor<?x32xf8E4M3FN>, %xs: tensor<?x2xf32>)
    -> (tensor<?x16xf32>, tensor<?x16xf32>) {
  %r:2 = kiln.linear_group(%y, %w, %s, %x, %xs) : (tensor<?x32xf32>, tensor<16x32xf8E4M3FN>, tensor<1x2xf32>, tensor<?x32xf8E4M3FN>, tensor<?x2xf32>) -> (tensor<?x16xf32>, tensor<?x16xf32>) {
  ^bb0(%f: tensor<?x32xf32>, %b: tensor<16x32xf8E4M3FN>, %c: tensor<1x2xf32>, %a: tensor<?x32xf8E4M3FN>, %d: tensor<?x2xf32>):
    %0 = kiln.linear %f, %b scale %c {block_size = array<i64: 16, 16>} : (tensor<?x32xf32>, tensor<16x32xf8E4M3FN>, tensor<1x2xf32>) -> tensor<?x16xf32>
    %1 = kiln.linear %a, %b scale %c input_scale %d {block_size = array<i64: 16, 16>} : (tensor<?x32xf8E4M3FN>, tensor<16x32xf8E4M3FN>, tensor<1x2xf32>, tensor<?x2xf32>) -> tensor<?x16xf32>
    kiln.yield %0, %1 : tensor<?x16xf32>, tensor<?x16xf32>
  }
  return %r#0, %r#1 : tensor<?x16xf32>, tensor<?x16xf32>
}
