// RUN: kiln-opt %s -split-input-file -verify-diagnostics

// One case per verifier branch of ir/KilnOps.cpp and ir/KilnDialect.cpp,
// grouped by op.

//===----------------------------------------------------------------------===//
// kiln.parameter
//===----------------------------------------------------------------------===//

// expected-error @+1 {{'kiln.parameter' op parameter type must have a static, non-scalar shape, got 'tensor<?x64xbf16>'}}
kiln.parameter @dynamic : tensor<?x64xbf16>

// -----

// expected-error @+1 {{'kiln.parameter' op parameter type must have a static, non-scalar shape, got 'tensor<bf16>'}}
kiln.parameter @scalar : tensor<bf16>

// -----

// expected-error @+1 {{'kiln.parameter' op attribute 'type' failed to satisfy constraint: type attribute of ranked tensor of 32-bit float or 16-bit float or bfloat16 type or f8E4M3FN type values}}
kiln.parameter @int : tensor<4xi32>

// -----

// expected-error @+1 {{'kiln.parameter' op a parameter quantized by fp8_quant must be 'f8E4M3FN', got 'bf16'}}
kiln.parameter @codes : tensor<4x4xbf16> {quantize = #kiln.fp8_quant<block_rows = 2, block_cols = 2>}

// -----

// expected-error @+1 {{'kiln.parameter' op a parameter quantized by fp8_quant (its scales) must be 'f32', got 'f8E4M3FN'}}
kiln.parameter @scales : tensor<2x2xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 2, block_cols = 2, scale = true>}

// -----

// expected-error @+1 {{fp8_quant needs block_rows and block_cols >= 1}}
kiln.parameter @block : tensor<4x4xf8E4M3FN> {quantize = #kiln.fp8_quant<block_rows = 0, block_cols = 2>}

// -----

// expected-error @+1 {{'kiln.parameter' op source 'layers.{}.experts.{}.w' has more than one '{}'}}
kiln.parameter @two : tensor<4x8x8xbf16> {source = "layers.{}.experts.{}.w"}

// -----

// expected-error @+1 {{'kiln.parameter' op a stacked parameter needs rank >= 2, got 'tensor<8xbf16>'}}
kiln.parameter @rank1 : tensor<8xbf16> {source = "experts.{}.bias"}

// -----

// The symbol name itself may be the stacking pattern.
// expected-error @+1 {{'kiln.parameter' op a stacked parameter needs rank >= 2, got 'tensor<8xbf16>'}}
kiln.parameter @"experts.{}.bias" : tensor<8xbf16>

//===----------------------------------------------------------------------===//
// kiln.get_parameter
//===----------------------------------------------------------------------===//

// -----

func.func @get_unknown() -> tensor<64xbf16> {
  // expected-error @+1 {{'kiln.get_parameter' op 'model.norm.weight' does not name a kiln.parameter}}
  %0 = kiln.get_parameter @model.norm.weight : tensor<64xbf16>
  return %0 : tensor<64xbf16>
}

// -----

kiln.kv_cache @cache : tensor<64xbf16>
func.func @get_cache() -> tensor<64xbf16> {
  // expected-error @+1 {{'kiln.get_parameter' op 'cache' does not name a kiln.parameter}}
  %0 = kiln.get_parameter @cache : tensor<64xbf16>
  return %0 : tensor<64xbf16>
}

// -----

kiln.parameter @model.norm.weight : tensor<64xbf16>
func.func @get_wrong_type() -> tensor<64xf32> {
  // expected-error @+1 {{'kiln.get_parameter' op result type 'tensor<64xf32>' does not match parameter type 'tensor<64xbf16>'}}
  %0 = kiln.get_parameter @model.norm.weight : tensor<64xf32>
  return %0 : tensor<64xf32>
}

// -----

kiln.parameter @model.norm.weight : tensor<64xbf16>
func.func @get_wrong_shape() -> tensor<32xbf16> {
  // expected-error @+1 {{'kiln.get_parameter' op result type 'tensor<32xbf16>' does not match parameter type 'tensor<64xbf16>'}}
  %0 = kiln.get_parameter @model.norm.weight : tensor<32xbf16>
  return %0 : tensor<32xbf16>
}

//===----------------------------------------------------------------------===//
// kiln.kv_cache, kiln.kv_append, kiln.kv_read
//===----------------------------------------------------------------------===//

// -----

// expected-error @+1 {{'kiln.kv_cache' op cache entry type must have a static shape, got 'tensor<?x128xf32>'}}
kiln.kv_cache @dynamic : tensor<?x128xf32>

// -----

// expected-error @+1 {{'kiln.kv_cache' op cache entries must be f32, bf16 or f8E4M3FN, got 'f16'}}
kiln.kv_cache @half : tensor<8x128xf16>

// -----

// expected-error @+1 {{'kiln.kv_cache' op packed_cache storage needs a [1, n] f32 or bf16 entry, got 'tensor<8x128xf32>'}}
kiln.kv_cache @heads : tensor<8x128xf32> {storage = #kiln.packed_cache<fp8_columns = 64>}

// -----

// expected-error @+1 {{'kiln.kv_cache' op packed_cache fp8_columns (600) exceed the entry's 576}}
kiln.kv_cache @wide : tensor<1x576xf32> {storage = #kiln.packed_cache<fp8_columns = 600>}

// -----

// expected-error @+1 {{packed_cache needs fp8_columns >= 0}}
kiln.kv_cache @negative : tensor<1x576xf32> {storage = #kiln.packed_cache<fp8_columns = -1>}

// -----

func.func @append_rank(%v: tensor<?xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.kv_append' op value must be [batch, seq, entry...]}}
  kiln.kv_append @k, %v at %pos : tensor<?xf32>, tensor<?x?xi32>
  return
}

// -----

kiln.kv_cache @k : tensor<8xf32>
func.func @append_positions(%v: tensor<2x3x8xf32>, %pos: tensor<2x4xi32>) {
  // expected-error @+1 {{'kiln.kv_append' op positions has shape [2, 4], expected [2, 3]}}
  kiln.kv_append @k, %v at %pos : tensor<2x3x8xf32>, tensor<2x4xi32>
  return
}

// -----

func.func @append_unknown(%v: tensor<?x?x8x128xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.kv_append' op 'k' does not name a kiln.kv_cache}}
  kiln.kv_append @k, %v at %pos : tensor<?x?x8x128xf32>, tensor<?x?xi32>
  return
}

// -----

kiln.parameter @k : tensor<8x128xf32>
func.func @append_parameter(%v: tensor<?x?x8x128xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.kv_append' op 'k' does not name a kiln.kv_cache}}
  kiln.kv_append @k, %v at %pos : tensor<?x?x8x128xf32>, tensor<?x?xi32>
  return
}

// -----

kiln.kv_cache @k : tensor<8x128xf32>
func.func @append_dtype(%v: tensor<?x?x8x128xbf16>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.kv_append' op value element type 'bf16' must match 'f32'}}
  kiln.kv_append @k, %v at %pos : tensor<?x?x8x128xbf16>, tensor<?x?xi32>
  return
}

// -----

kiln.kv_cache @k : tensor<8x128xf32>
func.func @append_entry(%v: tensor<?x?x8x64xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.kv_append' op value has shape [?, ?, 8, 64], expected [?, ?, 8, 128]}}
  kiln.kv_append @k, %v at %pos : tensor<?x?x8x64xf32>, tensor<?x?xi32>
  return
}

// -----

kiln.kv_cache @k : tensor<8x128xf32>
func.func @append_entry_rank(%v: tensor<?x?x1024xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.kv_append' op value has shape [?, ?, 1024], expected [?, ?, 8, 128]}}
  kiln.kv_append @k, %v at %pos : tensor<?x?x1024xf32>, tensor<?x?xi32>
  return
}

// -----

func.func @read_rank(%lens: tensor<?xi32>) -> tensor<?xf32> {
  // expected-error @+1 {{'kiln.kv_read' op result must be [batch, kv_len, entry...]}}
  %0 = kiln.kv_read @k, %lens : tensor<?xi32> -> tensor<?xf32>
  return %0 : tensor<?xf32>
}

// -----

kiln.kv_cache @k : tensor<8xf32>
func.func @read_lengths(%lens: tensor<3xi32>) -> tensor<2x?x8xf32> {
  // expected-error @+1 {{'kiln.kv_read' op lengths has shape [3], expected [2]}}
  %0 = kiln.kv_read @k, %lens : tensor<3xi32> -> tensor<2x?x8xf32>
  return %0 : tensor<2x?x8xf32>
}

// -----

func.func @read_unknown(%lens: tensor<?xi32>) -> tensor<?x?x8xf32> {
  // expected-error @+1 {{'kiln.kv_read' op 'k' does not name a kiln.kv_cache}}
  %0 = kiln.kv_read @k, %lens : tensor<?xi32> -> tensor<?x?x8xf32>
  return %0 : tensor<?x?x8xf32>
}

// -----

kiln.kv_cache @k : tensor<8xbf16>
func.func @read_dtype(%lens: tensor<?xi32>) -> tensor<?x?x8xf32> {
  // expected-error @+1 {{'kiln.kv_read' op result element type 'f32' must match 'bf16'}}
  %0 = kiln.kv_read @k, %lens : tensor<?xi32> -> tensor<?x?x8xf32>
  return %0 : tensor<?x?x8xf32>
}

// -----

kiln.kv_cache @k : tensor<1x64xf32>
func.func @read_entry(%lens: tensor<?xi32>) -> tensor<?x?x2x64xf32> {
  // expected-error @+1 {{'kiln.kv_read' op result has shape [?, ?, 2, 64], expected [?, ?, 1, 64]}}
  %0 = kiln.kv_read @k, %lens : tensor<?xi32> -> tensor<?x?x2x64xf32>
  return %0 : tensor<?x?x2x64xf32>
}

//===----------------------------------------------------------------------===//
// kiln.embedding
//===----------------------------------------------------------------------===//

// -----

func.func @embedding_tokens(%t: tensor<?xi32>, %w: tensor<1024x64xbf16>) {
  // expected-error @+1 {{'kiln.embedding' op tokens must have rank 2, got 1}}
  %0 = kiln.embedding %t, %w : (tensor<?xi32>, tensor<1024x64xbf16>) -> tensor<?x64xf32>
  return
}

// -----

func.func @embedding_table(%t: tensor<?x?xi32>, %w: tensor<1024xbf16>) {
  // expected-error @+1 {{'kiln.embedding' op table must have rank 2, got 1}}
  %0 = kiln.embedding %t, %w : (tensor<?x?xi32>, tensor<1024xbf16>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @embedding_result(%t: tensor<?x?xi32>, %w: tensor<1024x64xbf16>) {
  // expected-error @+1 {{'kiln.embedding' op result has shape [?, ?, 32], expected [?, ?, 64]}}
  %0 = kiln.embedding %t, %w : (tensor<?x?xi32>, tensor<1024x64xbf16>) -> tensor<?x?x32xf32>
  return
}

// -----

func.func @embedding_token_type(%t: tensor<?x?xi64>, %w: tensor<1024x64xbf16>) {
  // expected-error @+1 {{'kiln.embedding' op operand #0 must be ranked tensor of 32-bit signless integer values, but got 'tensor<?x?xi64>'}}
  %0 = kiln.embedding %t, %w : (tensor<?x?xi64>, tensor<1024x64xbf16>) -> tensor<?x?x64xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.rms_norm
//===----------------------------------------------------------------------===//

// -----

func.func @rms_norm_rank(%x: tensor<f32>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op input must have rank >= 1}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-06 : f64} : (tensor<f32>, tensor<64xbf16>) -> tensor<f32>
  return
}

// -----

func.func @rms_norm_epsilon(%x: tensor<?x?x64xf32>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op epsilon must be positive}}
  %0 = kiln.rms_norm %x, %w {epsilon = 0.0 : f64} : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @rms_norm_weight(%x: tensor<?x?x64xf32>, %w: tensor<32xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op weight has shape [32], expected [64]}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-06 : f64} : (tensor<?x?x64xf32>, tensor<32xbf16>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @rms_norm_result(%x: tensor<?x?x64xf32>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op result type must equal the input type}}
  %0 = kiln.rms_norm %x, %w {epsilon = 1.0e-06 : f64} : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xbf16>
  return
}

// -----

func.func @rms_norm_no_epsilon(%x: tensor<?x?x64xf32>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{'kiln.rms_norm' op requires attribute 'epsilon'}}
  %0 = kiln.rms_norm %x, %w : (tensor<?x?x64xf32>, tensor<64xbf16>) -> tensor<?x?x64xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.linear
//===----------------------------------------------------------------------===//

// -----

func.func @linear_rank(%x: tensor<f32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op input must have rank >= 1}}
  %0 = kiln.linear %x, %w : (tensor<f32>, tensor<96x64xbf16>) -> tensor<96xf32>
  return
}

// -----

func.func @linear_weight_rank(%x: tensor<?x?x64xf32>, %w: tensor<4x96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op weight must have rank 2, got 3}}
  %0 = kiln.linear %x, %w : (tensor<?x?x64xf32>, tensor<4x96x64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_result_dtype(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op result element type 'bf16' must match 'f32'}}
  %0 = kiln.linear %x, %w : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xbf16>
  return
}

// -----

func.func @linear_in_features(%x: tensor<?x?x32xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op input's last dimension 32 does not match the weight's 64 input features}}
  %0 = kiln.linear %x, %w : (tensor<?x?x32xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_out_features(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op result has shape [?, ?, 64], expected [?, ?, 96]}}
  %0 = kiln.linear %x, %w : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @linear_result_rank(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op result has shape [?, 96], expected [?, ?, 96]}}
  %0 = kiln.linear %x, %w : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x96xf32>
  return
}

// -----

func.func @linear_bias(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>, %b: tensor<64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op bias has shape [64], expected [96]}}
  %0 = kiln.linear %x, %w bias %b : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_fp8_no_scale(%x: tensor<?x?x64xf32>, %w: tensor<96x64xf8E4M3FN>) {
  // expected-error @+1 {{'kiln.linear' op an f8E4M3FN weight needs a block scale}}
  %0 = kiln.linear %x, %w {block_size = array<i64: 128, 128>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_ue8m0_no_scale(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op act_ue8m0 given without an f8E4M3FN weight}}
  %0 = kiln.linear %x, %w {act_ue8m0} : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_block_size_no_scale(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op block_size given without a scale}}
  %0 = kiln.linear %x, %w {block_size = array<i64: 128, 128>} : (tensor<?x?x64xf32>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_scale_not_fp8(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>, %s: tensor<1x1xf32>) {
  // expected-error @+1 {{'kiln.linear' op a block scale needs an f8E4M3FN weight, got 'bf16'}}
  %0 = kiln.linear %x, %w scale %s {block_size = array<i64: 128, 128>} : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<1x1xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_no_block_size(%x: tensor<?x?x64xf32>, %w: tensor<96x64xf8E4M3FN>, %s: tensor<1x1xf32>) {
  // expected-error @+1 {{'kiln.linear' op a block scale needs block_size = [rows, cols] with positive entries}}
  %0 = kiln.linear %x, %w scale %s : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_block_size_rank(%x: tensor<?x?x64xf32>, %w: tensor<96x64xf8E4M3FN>, %s: tensor<1x1xf32>) {
  // expected-error @+1 {{'kiln.linear' op a block scale needs block_size = [rows, cols] with positive entries}}
  %0 = kiln.linear %x, %w scale %s {block_size = array<i64: 128>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_block_size_zero(%x: tensor<?x?x64xf32>, %w: tensor<96x64xf8E4M3FN>, %s: tensor<1x1xf32>) {
  // expected-error @+1 {{'kiln.linear' op a block scale needs block_size = [rows, cols] with positive entries}}
  %0 = kiln.linear %x, %w scale %s {block_size = array<i64: 128, 0>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<1x1xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

// ceil(200 / 128) = 2 rows and ceil(300 / 128) = 3 columns of blocks.
func.func @linear_scale_shape(%x: tensor<?x?x300xf32>, %w: tensor<200x300xf8E4M3FN>, %s: tensor<1x2xf32>) {
  // expected-error @+1 {{'kiln.linear' op scale has shape [1, 2], expected [2, 3]}}
  %0 = kiln.linear %x, %w scale %s {block_size = array<i64: 128, 128>} : (tensor<?x?x300xf32>, tensor<200x300xf8E4M3FN>, tensor<1x2xf32>) -> tensor<?x?x200xf32>
  return
}

// -----

func.func @linear_scale_dtype(%x: tensor<?x?x64xf32>, %w: tensor<96x64xf8E4M3FN>, %s: tensor<1x1xbf16>) {
  // expected-error @+1 {{'kiln.linear' op operand #2 must be ranked tensor of 32-bit float values, but got 'tensor<1x1xbf16>'}}
  %0 = kiln.linear %x, %w scale %s {block_size = array<i64: 128, 128>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<1x1xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_fp8_activation(%x: tensor<?x?x64xf8E4M3FN>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.linear' op an f8E4M3FN input needs input_scale, and only it}}
  %0 = kiln.linear %x, %w : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_fp8_activation_bf16_weight(%x: tensor<?x?x64xf8E4M3FN>, %w: tensor<96x64xbf16>, %xs: tensor<?x?x1xf32>) {
  // expected-error @+1 {{'kiln.linear' op an f8E4M3FN input needs an f8E4M3FN weight}}
  %0 = kiln.linear %x, %w input_scale %xs : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xbf16>, tensor<?x?x1xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @linear_input_scale_shape(%x: tensor<?x?x256xf8E4M3FN>, %w: tensor<96x256xf8E4M3FN>, %s: tensor<1x2xf32>, %xs: tensor<?x?x1xf32>) {
  // expected-error @+1 {{'kiln.linear' op input_scale}}
  %0 = kiln.linear %x, %w scale %s input_scale %xs {block_size = array<i64: 128, 128>} : (tensor<?x?x256xf8E4M3FN>, tensor<96x256xf8E4M3FN>, tensor<1x2xf32>, tensor<?x?x1xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @quantize_fp8_scales_shape(%x: tensor<?x?x256xf32>) {
  // expected-error @+1 {{'kiln.quantize_fp8' op scales}}
  %q, %s = kiln.quantize_fp8 %x {block_cols = 128 : i64} : (tensor<?x?x256xf32>) -> (tensor<?x?x256xf8E4M3FN>, tensor<?x?x3xf32>)
  return
}

// -----

func.func @quantize_fp8_block(%x: tensor<?x?x256xf32>) {
  // expected-error @+1 {{'kiln.quantize_fp8' op expects input [..., channels] and block_cols > 0}}
  %q, %s = kiln.quantize_fp8 %x {block_cols = 0 : i64} : (tensor<?x?x256xf32>) -> (tensor<?x?x256xf8E4M3FN>, tensor<?x?x2xf32>)
  return
}

//===----------------------------------------------------------------------===//
// kiln.logits
//===----------------------------------------------------------------------===//

// -----

func.func @logits_weight_rank(%h: tensor<?x?x64xf32>, %w: tensor<1024xbf16>) {
  // expected-error @+1 {{'kiln.logits' op expects input [..., hidden] and weight [vocab, hidden]}}
  %0 = kiln.logits %h, %w : (tensor<?x?x64xf32>, tensor<1024xbf16>) -> tensor<?x?x1024xf32>
  return
}

// -----

func.func @logits_input_rank(%h: tensor<f32>, %w: tensor<1024x64xbf16>) {
  // expected-error @+1 {{'kiln.logits' op expects input [..., hidden] and weight [vocab, hidden]}}
  %0 = kiln.logits %h, %w : (tensor<f32>, tensor<1024x64xbf16>) -> tensor<1024xf32>
  return
}

// -----

func.func @logits_hidden(%h: tensor<?x?x32xf32>, %w: tensor<1024x64xbf16>) {
  // expected-error @+1 {{'kiln.logits' op input's last dimension does not match the head's hidden size 64}}
  %0 = kiln.logits %h, %w : (tensor<?x?x32xf32>, tensor<1024x64xbf16>) -> tensor<?x?x1024xf32>
  return
}

// -----

func.func @logits_vocab(%h: tensor<?x?x64xf32>, %w: tensor<1024x64xbf16>) {
  // expected-error @+1 {{'kiln.logits' op result has shape [?, ?, 512], expected [?, ?, 1024]}}
  %0 = kiln.logits %h, %w : (tensor<?x?x64xf32>, tensor<1024x64xbf16>) -> tensor<?x?x512xf32>
  return
}

// -----

func.func @logits_bf16(%h: tensor<?x?x64xf32>, %w: tensor<1024x64xbf16>) {
  // expected-error @+1 {{'kiln.logits' op result #0 must be ranked tensor of 32-bit float values, but got 'tensor<?x?x1024xbf16>'}}
  %0 = kiln.logits %h, %w : (tensor<?x?x64xf32>, tensor<1024x64xbf16>) -> tensor<?x?x1024xbf16>
  return
}

//===----------------------------------------------------------------------===//
// kiln.add, kiln.swiglu
//===----------------------------------------------------------------------===//

// -----

func.func @add_types(%a: tensor<?x?x64xf32>, %b: tensor<?x?x64xbf16>) {
  // expected-error @+1 {{'kiln.add' op requires the same type for all operands and results}}
  %0 = "kiln.add"(%a, %b) : (tensor<?x?x64xf32>, tensor<?x?x64xbf16>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @swiglu_types(%a: tensor<?x?x64xf32>, %b: tensor<?x?x32xf32>) {
  // expected-error @+1 {{'kiln.swiglu' op requires the same type for all operands and results}}
  %0 = "kiln.swiglu"(%a, %b) : (tensor<?x?x64xf32>, tensor<?x?x32xf32>) -> tensor<?x?x64xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.reshape
//===----------------------------------------------------------------------===//

// -----

func.func @reshape_dtype(%x: tensor<?x?x512xf32>) {
  // expected-error @+1 {{'kiln.reshape' op result element type 'bf16' must match 'f32'}}
  %0 = kiln.reshape %x : tensor<?x?x512xf32> -> tensor<?x?x4x128xbf16>
  return
}

// -----

func.func @reshape_prefix(%x: tensor<?x?x4x?xf32>) {
  // expected-error @+1 {{'kiln.reshape' op dynamic dimensions must form a leading prefix}}
  %0 = kiln.reshape %x : tensor<?x?x4x?xf32> -> tensor<?x?x4x128xf32>
  return
}

// -----

func.func @reshape_result_prefix(%x: tensor<?x?x512xf32>) {
  // expected-error @+1 {{'kiln.reshape' op dynamic dimensions must form a leading prefix}}
  %0 = kiln.reshape %x : tensor<?x?x512xf32> -> tensor<?x4x?x128xf32>
  return
}

// -----

func.func @reshape_keep_dynamic(%x: tensor<?x?x512xf32>) {
  // expected-error @+1 {{'kiln.reshape' op must keep the 2 leading dynamic dimension(s), result has 1}}
  %0 = kiln.reshape %x : tensor<?x?x512xf32> -> tensor<?x4x128xf32>
  return
}

// -----

func.func @reshape_elements(%x: tensor<?x?x512xf32>) {
  // expected-error @+1 {{'kiln.reshape' op static dimensions hold 512 elements in the input but 400 in the result}}
  %0 = kiln.reshape %x : tensor<?x?x512xf32> -> tensor<?x?x4x100xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.slice
//===----------------------------------------------------------------------===//

// -----

func.func @slice_rank(%x: tensor<f32>) {
  // expected-error @+1 {{'kiln.slice' op input must have rank >= 1}}
  %0 = kiln.slice %x [0, 1] : tensor<f32> -> tensor<1xf32>
  return
}

// -----

func.func @slice_negative(%x: tensor<?x?x128xf32>) {
  // expected-error @+1 {{'kiln.slice' op needs offset >= 0 and size > 0}}
  %0 = kiln.slice %x [-1, 64] : tensor<?x?x128xf32> -> tensor<?x?x64xf32>
  return
}

// -----

func.func @slice_empty(%x: tensor<?x?x128xf32>) {
  // expected-error @+1 {{'kiln.slice' op needs offset >= 0 and size > 0}}
  %0 = kiln.slice %x [0, 0] : tensor<?x?x128xf32> -> tensor<?x?x0xf32>
  return
}

// -----

func.func @slice_range(%x: tensor<?x?x128xf32>) {
  // expected-error @+1 {{'kiln.slice' op range [100, 164) exceeds the last dimension 128}}
  %0 = kiln.slice %x [100, 64] : tensor<?x?x128xf32> -> tensor<?x?x64xf32>
  return
}

// -----

// offset + size overflows int64_t.
func.func @slice_overflow(%x: tensor<?x?x128xf32>) {
  // expected-error @+1 {{'kiln.slice' op range [9223372036854775807, 9223372036854775808) exceeds the last dimension 128}}
  %0 = kiln.slice %x [9223372036854775807, 1] : tensor<?x?x128xf32> -> tensor<?x?x1xf32>
  return
}

// -----

func.func @slice_dtype(%x: tensor<?x?x128xf32>) {
  // expected-error @+1 {{'kiln.slice' op result element type 'bf16' must match 'f32'}}
  %0 = kiln.slice %x [0, 64] : tensor<?x?x128xf32> -> tensor<?x?x64xbf16>
  return
}

// -----

func.func @slice_result(%x: tensor<?x?x4x128xf32>) {
  // expected-error @+1 {{'kiln.slice' op result has shape [?, ?, 4, 32], expected [?, ?, 4, 64]}}
  %0 = kiln.slice %x [0, 64] : tensor<?x?x4x128xf32> -> tensor<?x?x4x32xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.concat
//===----------------------------------------------------------------------===//

// -----

func.func @concat_none() {
  // expected-error @+1 {{'kiln.concat' op needs at least one input}}
  %0 = "kiln.concat"() : () -> tensor<?x?x64xf32>
  return
}

// -----

func.func @concat_scalar(%x: tensor<f32>) {
  // expected-error @+1 {{'kiln.concat' op inputs must have rank >= 1}}
  %0 = kiln.concat %x, %x : tensor<f32>, tensor<f32> -> tensor<2xf32>
  return
}

// -----

func.func @concat_dtype(%a: tensor<?x?x4x128xf32>, %b: tensor<?x?x4x64xbf16>) {
  // expected-error @+1 {{'kiln.concat' op input element type 'bf16' must match 'f32'}}
  %0 = kiln.concat %a, %b : tensor<?x?x4x128xf32>, tensor<?x?x4x64xbf16> -> tensor<?x?x4x192xf32>
  return
}

// -----

func.func @concat_dims(%a: tensor<?x?x4x128xf32>, %b: tensor<?x?x2x64xf32>) {
  // expected-error @+1 {{'kiln.concat' op input has shape [?, ?, 2, 64], expected [?, ?, 4, 64]}}
  %0 = kiln.concat %a, %b : tensor<?x?x4x128xf32>, tensor<?x?x2x64xf32> -> tensor<?x?x4x192xf32>
  return
}

// -----

func.func @concat_ranks(%a: tensor<?x?x4x128xf32>, %b: tensor<?x?x64xf32>) {
  // expected-error @+1 {{'kiln.concat' op input has shape [?, ?, 64], expected [?, ?, 4, 64]}}
  %0 = kiln.concat %a, %b : tensor<?x?x4x128xf32>, tensor<?x?x64xf32> -> tensor<?x?x4x192xf32>
  return
}

// -----

func.func @concat_result(%a: tensor<?x?x4x128xf32>, %b: tensor<?x?x4x64xf32>) {
  // expected-error @+1 {{'kiln.concat' op result has shape [?, ?, 4, 128], expected [?, ?, 4, 192]}}
  %0 = kiln.concat %a, %b : tensor<?x?x4x128xf32>, tensor<?x?x4x64xf32> -> tensor<?x?x4x128xf32>
  return
}

// -----

func.func @concat_result_dtype(%a: tensor<?x?x4x128xf32>, %b: tensor<?x?x4x64xf32>) {
  // expected-error @+1 {{'kiln.concat' op result element type 'bf16' must match 'f32'}}
  %0 = kiln.concat %a, %b : tensor<?x?x4x128xf32>, tensor<?x?x4x64xf32> -> tensor<?x?x4x192xbf16>
  return
}

//===----------------------------------------------------------------------===//
// kiln.broadcast
//===----------------------------------------------------------------------===//

// -----

func.func @broadcast_dtype(%x: tensor<?x?x1x64xf32>) {
  // expected-error @+1 {{'kiln.broadcast' op result element type 'bf16' must match 'f32'}}
  %0 = kiln.broadcast %x : tensor<?x?x1x64xf32> -> tensor<?x?x4x64xbf16>
  return
}

// -----

func.func @broadcast_rank(%x: tensor<?x?x64xf32>) {
  // expected-error @+1 {{'kiln.broadcast' op result rank must equal the input rank}}
  %0 = kiln.broadcast %x : tensor<?x?x64xf32> -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @broadcast_non_unit(%x: tensor<?x?x2x64xf32>) {
  // expected-error @+1 {{'kiln.broadcast' op dimension 2 of size 2 cannot broadcast to 4}}
  %0 = kiln.broadcast %x : tensor<?x?x2x64xf32> -> tensor<?x?x4x64xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.rope and #kiln.rope
//===----------------------------------------------------------------------===//

// -----

func.func @rope_rank(%x: tensor<?x64xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.rope' op input must be [batch, seq, ..., rotary_dim]}}
  %0 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain>} : (tensor<?x64xf32>, tensor<?x?xi32>) -> tensor<?x64xf32>
  return
}

// -----

func.func @rope_odd(%x: tensor<?x?x4x63xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.rope' op rotary dimension must be static and even, got [63]}}
  %0 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain>} : (tensor<?x?x4x63xf32>, tensor<?x?xi32>) -> tensor<?x?x4x63xf32>
  return
}

// -----

func.func @rope_dynamic(%x: tensor<?x?x4x?xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.rope' op rotary dimension must be static and even, got [?]}}
  %0 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain>} : (tensor<?x?x4x?xf32>, tensor<?x?xi32>) -> tensor<?x?x4x?xf32>
  return
}

// -----

func.func @rope_result(%x: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.rope' op result type must equal the input type}}
  %0 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain>} : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xbf16>
  return
}

// -----

func.func @rope_positions(%x: tensor<2x?x4x64xf32>, %pos: tensor<3x?xi32>) {
  // expected-error @+1 {{'kiln.rope' op positions has shape [3, ?], expected [2, ?]}}
  %0 = kiln.rope %x, %pos {rope = #kiln.rope<kind = plain>} : (tensor<2x?x4x64xf32>, tensor<3x?xi32>) -> tensor<2x?x4x64xf32>
  return
}

// -----

func.func @rope_missing(%x: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>) {
  // expected-error @+1 {{'kiln.rope' op requires attribute 'rope'}}
  %0 = kiln.rope %x, %pos : (tensor<?x?x4x64xf32>, tensor<?x?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

// expected-error @+1 {{rope theta must be positive, got 0.000000e+00}}
#bad = #kiln.rope<kind = plain, theta = 0.0>

// -----

// expected-error @+1 {{rope theta must be positive, got -1.000000e+00}}
#bad = #kiln.rope<kind = yarn, theta = -1.0, factor = 40.0, original_max_position = 4096>

// -----

// expected-error @+1 {{rope scaling factor must be >= 1, got 5.000000e-01}}
#bad = #kiln.rope<kind = yarn, factor = 0.5, original_max_position = 4096>

// -----

// expected-error @+1 {{rope scaling needs original_max_position > 0}}
#bad = #kiln.rope<kind = llama3, factor = 8.0>

// -----

// expected-error @+1 {{yarn needs beta_fast > beta_slow, got 1.000000e+00 <= 1.000000e+00}}
#bad = #kiln.rope<kind = yarn, factor = 40.0, original_max_position = 4096, beta_fast = 1.0>

// -----

// expected-error @+1 {{yarn needs beta_fast > beta_slow, got 2.000000e+00 <= 3.200000e+01}}
#bad = #kiln.rope<kind = yarn, factor = 40.0, original_max_position = 4096, beta_fast = 2.0, beta_slow = 32.0>

// -----

// expected-error @+1 {{llama3 needs high_freq_factor > low_freq_factor}}
#bad = #kiln.rope<kind = llama3, factor = 8.0, original_max_position = 8192, low_freq_factor = 4.0>

// -----

// expected-error @+2 {{expected 'true' or 'false'}}
// expected-error @+1 {{failed to parse Kiln_RopeAttr parameter 'interleaved' which is to be a `bool`}}
#bad = #kiln.rope<kind = plain, interleaved = 1>

// -----

// expected-error @+1 {{struct is missing required parameter: kind}}
#bad = #kiln.rope<theta = 10000.0>

// -----

// expected-error @+2 {{expected floating point literal}}
// expected-error @+1 {{failed to parse Kiln_RopeAttr parameter 'theta' which is to be a `::llvm::APFloat`}}
#bad = #kiln.rope<kind = plain, theta = "big">

//===----------------------------------------------------------------------===//
// kiln.attention
//===----------------------------------------------------------------------===//

// -----

func.func @attention_rank(%q: tensor<?x?x256xf32>, %k: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op query must have rank 4, got 3}}
  %0 = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x256xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @attention_key_dtype(%q: tensor<?x?x4x64xf32>, %k: tensor<?x?x4x64xbf16>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op key element type 'bf16' must match 'f32'}}
  %0 = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x4x64xbf16>, tensor<?x?x4x64xbf16>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @attention_result_dtype(%q: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op result element type 'bf16' must match 'f32'}}
  %0 = kiln.attention %q, %q, %q, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xbf16>
  return
}

// -----

func.func @attention_dk(%q: tensor<?x?x4x64xf32>, %k: tensor<?x?x4x32xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op key has shape [?, ?, 4, 32], expected [?, ?, 4, 64]}}
  %0 = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x4x32xf32>, tensor<?x?x4x32xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x32xf32>
  return
}

// -----

func.func @attention_batch(%q: tensor<2x?x4x64xf32>, %k: tensor<3x?x4x64xf32>, %pos: tensor<2x?xi32>, %lens: tensor<2xi32>) {
  // expected-error @+1 {{'kiln.attention' op key has shape [3, ?, 4, 64], expected [2, ?, 4, 64]}}
  %0 = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.125 : f64} : (tensor<2x?x4x64xf32>, tensor<3x?x4x64xf32>, tensor<3x?x4x64xf32>, tensor<2x?xi32>, tensor<2xi32>) -> tensor<2x?x4x64xf32>
  return
}

// -----

func.func @attention_kv_len(%q: tensor<?x?x4x64xf32>, %k: tensor<?x16x4x64xf32>, %v: tensor<?x8x4x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op value has shape [?, 8, 4, 64], expected [?, 16, 4, 64]}}
  %0 = kiln.attention %q, %k, %v, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x16x4x64xf32>, tensor<?x8x4x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @attention_value_heads(%q: tensor<?x?x4x64xf32>, %k: tensor<?x?x2x64xf32>, %v: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op value has shape [?, ?, 4, 64], expected [?, ?, 2, 64]}}
  %0 = kiln.attention %q, %k, %v, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x2x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @attention_heads(%q: tensor<?x?x4x64xf32>, %k: tensor<?x?x3x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op query heads (4) must be a static multiple of key/value heads (3)}}
  %0 = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x3x64xf32>, tensor<?x?x3x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @attention_more_kv_heads(%q: tensor<?x?x2x64xf32>, %k: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op query heads (2) must be a static multiple of key/value heads (4)}}
  %0 = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x2x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x2x64xf32>
  return
}

// -----

func.func @attention_dynamic_heads(%q: tensor<?x?x?x64xf32>, %k: tensor<?x?x1x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op query heads (?) must be a static multiple of key/value heads (1)}}
  %0 = kiln.attention %q, %k, %k, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x?x64xf32>, tensor<?x?x1x64xf32>, tensor<?x?x1x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x?x64xf32>
  return
}

// -----

func.func @attention_scale(%q: tensor<?x?x4x64xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op scale must be positive}}
  %0 = kiln.attention %q, %q, %q, %pos, %lens {scale = -0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @attention_positions(%q: tensor<?x?x4x64xf32>, %pos: tensor<?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op positions has shape [?], expected [?, ?]}}
  %0 = kiln.attention %q, %q, %q, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?x?x4x64xf32>, tensor<?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

// -----

func.func @attention_lengths(%q: tensor<2x?x4x64xf32>, %pos: tensor<2x?xi32>, %lens: tensor<4xi32>) {
  // expected-error @+1 {{'kiln.attention' op kv_lengths has shape [4], expected [2]}}
  %0 = kiln.attention %q, %q, %q, %pos, %lens {scale = 0.125 : f64} : (tensor<2x?x4x64xf32>, tensor<2x?x4x64xf32>, tensor<2x?x4x64xf32>, tensor<2x?xi32>, tensor<4xi32>) -> tensor<2x?x4x64xf32>
  return
}

// -----

func.func @attention_result(%q: tensor<?x?x4x64xf32>, %k: tensor<?x?x1x64xf32>, %v: tensor<?x?x1x32xf32>, %pos: tensor<?x?xi32>, %lens: tensor<?xi32>) {
  // expected-error @+1 {{'kiln.attention' op result has shape [?, ?, 4, 64], expected [?, ?, 4, 32]}}
  %0 = kiln.attention %q, %k, %v, %pos, %lens {scale = 0.125 : f64} : (tensor<?x?x4x64xf32>, tensor<?x?x1x64xf32>, tensor<?x?x1x32xf32>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x?x4x64xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.moe_gate
//===----------------------------------------------------------------------===//

// -----

func.func @gate_input_rank(%x: tensor<?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op input must have rank 3, got 2}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x2xf32>, tensor<?x2xi32>)
  return
}

// -----

func.func @gate_weight_rank(%x: tensor<?x?x64xf32>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op weight must have rank 2, got 1}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_dynamic_experts(%x: tensor<?x?x64xf32>, %w: tensor<?x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op router weight needs a static expert count}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<?x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_hidden(%x: tensor<?x?x32xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op router weight expects hidden size 64, input has 32}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x32xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_top_k_zero(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op top_k must be in [1, 8], got 0}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 0 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x0xf32>, tensor<?x?x0xi32>)
  return
}

// -----

func.func @gate_top_k_large(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op top_k must be in [1, 8], got 9}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 9 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x9xf32>, tensor<?x?x9xi32>)
  return
}

// -----

func.func @gate_n_group(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op n_group (3) must divide the expert count (8)}}
  %0, %1 = kiln.moe_gate %x, %w softmax group_limited_greedy {top_k = 2 : i64, n_group = 3 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_n_group_zero(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op n_group (0) must divide the expert count (8)}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 2 : i64, n_group = 0 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_topk_group(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op topk_group must be in [1, n_group]}}
  %0, %1 = kiln.moe_gate %x, %w softmax group_limited_greedy {top_k = 2 : i64, n_group = 4 : i64, topk_group = 5 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_topk_group_zero(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op topk_group must be in [1, n_group]}}
  %0, %1 = kiln.moe_gate %x, %w softmax group_limited_greedy {top_k = 2 : i64, n_group = 4 : i64, topk_group = 0 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

// 4 groups of 2 experts, keeping 1 group: at most 2 experts to choose from.
func.func @gate_kept_groups(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op top_k (3) exceeds the experts in the kept groups (2)}}
  %0, %1 = kiln.moe_gate %x, %w softmax group_limited_greedy {top_k = 3 : i64, n_group = 4 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x3xf32>, tensor<?x?x3xi32>)
  return
}

// -----

func.func @gate_noaux_no_bias(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op a correction bias is required by, and only by, noaux_tc}}
  %0, %1 = kiln.moe_gate %x, %w sigmoid noaux_tc {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64, norm_topk_prob, routed_scaling_factor = 2.5 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_bias_greedy(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>, %b: tensor<8xf32>) {
  // expected-error @+1 {{'kiln.moe_gate' op a correction bias is required by, and only by, noaux_tc}}
  %0, %1 = kiln.moe_gate %x, %w bias %b sigmoid greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>, tensor<8xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_noaux_softmax(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>, %b: tensor<8xf32>) {
  // expected-error @+1 {{'kiln.moe_gate' op noaux_tc needs sigmoid scoring}}
  %0, %1 = kiln.moe_gate %x, %w bias %b softmax noaux_tc {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>, tensor<8xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_bias_shape(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>, %b: tensor<16xf32>) {
  // expected-error @+1 {{'kiln.moe_gate' op correction bias has shape [16], expected [8]}}
  %0, %1 = kiln.moe_gate %x, %w bias %b sigmoid noaux_tc {top_k = 2 : i64, n_group = 2 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>, tensor<16xf32>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_weights(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op weights has shape [?, ?, 3], expected [?, ?, 2]}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x3xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_indices(%x: tensor<2x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+1 {{'kiln.moe_gate' op indices has shape [3, ?, 2], expected [2, ?, 2]}}
  %0, %1 = kiln.moe_gate %x, %w softmax greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<2x?x64xf32>, tensor<8x64xbf16>) -> (tensor<2x?x2xf32>, tensor<3x?x2xi32>)
  return
}

// -----

func.func @gate_scoring(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+2 {{expected ::mlir::kiln::ScoringFunc to be one of: softmax, sigmoid}}
  // expected-error @+1 {{custom op 'kiln.moe_gate' failed to parse Kiln_ScoringFuncAttr parameter 'value' which is to be a `::mlir::kiln::ScoringFunc`}}
  %0, %1 = kiln.moe_gate %x, %w tanh greedy {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @gate_method(%x: tensor<?x?x64xf32>, %w: tensor<8x64xbf16>) {
  // expected-error @+2 {{expected ::mlir::kiln::TopkMethod to be one of: greedy, group_limited_greedy, noaux_tc}}
  // expected-error @+1 {{custom op 'kiln.moe_gate' failed to parse Kiln_TopkMethodAttr parameter 'value' which is to be a `::mlir::kiln::TopkMethod`}}
  %0, %1 = kiln.moe_gate %x, %w softmax sinkhorn {top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, routed_scaling_factor = 1.0 : f64} : (tensor<?x?x64xf32>, tensor<8x64xbf16>) -> (tensor<?x?x2xf32>, tensor<?x?x2xi32>)
  return
}

//===----------------------------------------------------------------------===//
// kiln.moe_dispatch
//===----------------------------------------------------------------------===//

// -----

func.func @dispatch_rank(%x: tensor<?x64xf32>, %i: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op input must have rank 3, got 2}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @dispatch_indices_rank(%x: tensor<?x?x64xf32>, %i: tensor<?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op indices must have rank 3, got 2}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<?x?x64xf32>, tensor<?x2xi32>) -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @dispatch_num_experts(%x: tensor<?x?x64xf32>, %i: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op num_experts must be positive}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 0 : i64} : (tensor<?x?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x64xf32>, tensor<1xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @dispatch_indices(%x: tensor<3x?x64xf32>, %i: tensor<2x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op indices has shape [2, ?, 2], expected [3, ?, 2]}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<3x?x64xf32>, tensor<2x?x2xi32>) -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?xi32>, tensor<2x?x2xi32>)
  return
}

// -----

func.func @dispatch_routed_dtype(%x: tensor<?x?x64xf32>, %i: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op routed element type 'bf16' must match 'f32'}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<?x?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x64xbf16>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @dispatch_routed(%x: tensor<?x?x64xf32>, %i: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op routed has shape [?, 32], expected [?, 64]}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<?x?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x32xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @dispatch_offsets(%x: tensor<?x?x64xf32>, %i: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op expert_offsets has shape [8], expected [9]}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<?x?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x64xf32>, tensor<8xi32>, tensor<?xi32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @dispatch_slots(%x: tensor<?x?x64xf32>, %i: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op slots must have rank 1, got 2}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<?x?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?x2xi32>, tensor<?x?x2xi32>)
  return
}

// -----

func.func @dispatch_selection_rows(%x: tensor<?x?x64xf32>, %i: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_dispatch' op selection_rows has shape [?, 2], expected [?, ?, 2]}}
  %0:4 = kiln.moe_dispatch %x, %i {num_experts = 8 : i64} : (tensor<?x?x64xf32>, tensor<?x?x2xi32>) -> (tensor<?x64xf32>, tensor<9xi32>, tensor<?xi32>, tensor<?x2xi32>)
  return
}

//===----------------------------------------------------------------------===//
// kiln.grouped_linear
//===----------------------------------------------------------------------===//

// -----

func.func @grouped_input_rank(%x: tensor<?x?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op input must have rank 2, got 3}}
  %0 = kiln.grouped_linear %x, %w, %off : (tensor<?x?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x?x32xf32>
  return
}

// -----

func.func @grouped_weight_rank(%x: tensor<?x64xf32>, %w: tensor<32x64xbf16>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op weight must have rank 3, got 2}}
  %0 = kiln.grouped_linear %x, %w, %off : (tensor<?x64xf32>, tensor<32x64xbf16>, tensor<9xi32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @grouped_dtype(%x: tensor<?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op result element type 'bf16' must match 'f32'}}
  %0 = kiln.grouped_linear %x, %w, %off : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x32xbf16>
  return
}

// -----

func.func @grouped_features(%x: tensor<?x32xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op input features 32 do not match the experts' 64}}
  %0 = kiln.grouped_linear %x, %w, %off : (tensor<?x32xf32>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @grouped_offsets(%x: tensor<?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<17xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op expert_offsets has shape [17], expected [9]}}
  %0 = kiln.grouped_linear %x, %w, %off : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<17xi32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @grouped_result(%x: tensor<?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op result has shape [?, 64], expected [?, 32]}}
  %0 = kiln.grouped_linear %x, %w, %off : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x64xf32>
  return
}

// -----

func.func @grouped_fp8_no_scale(%x: tensor<?x64xf32>, %w: tensor<8x32x64xf8E4M3FN>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op an f8E4M3FN weight needs a block scale}}
  %0 = kiln.grouped_linear %x, %w, %off : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @grouped_scale_not_fp8(%x: tensor<?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<9xi32>, %s: tensor<8x1x1xf32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op a block scale needs an f8E4M3FN weight, got 'bf16'}}
  %0 = kiln.grouped_linear %x, %w, %off scale %s {block_size = array<i64: 128, 128>} : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>, tensor<8x1x1xf32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @grouped_block_size_no_scale(%x: tensor<?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op block_size given without a scale}}
  %0 = kiln.grouped_linear %x, %w, %off {block_size = array<i64: 128, 128>} : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @grouped_no_block_size(%x: tensor<?x64xf32>, %w: tensor<8x32x64xf8E4M3FN>, %off: tensor<9xi32>, %s: tensor<8x1x1xf32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op a block scale needs block_size = [rows, cols] with positive entries}}
  %0 = kiln.grouped_linear %x, %w, %off scale %s : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>, tensor<8x1x1xf32>) -> tensor<?x32xf32>
  return
}

// -----

// One [ceil(32/16), ceil(64/16)] = [2, 4] grid of blocks per expert.
func.func @grouped_scale_shape(%x: tensor<?x64xf32>, %w: tensor<8x32x64xf8E4M3FN>, %off: tensor<9xi32>, %s: tensor<2x4xf32>) {
  // expected-error @+1 {{'kiln.grouped_linear' op scale has shape [2, 4], expected [8, 2, 4]}}
  %0 = kiln.grouped_linear %x, %w, %off scale %s {block_size = array<i64: 16, 16>} : (tensor<?x64xf32>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>, tensor<2x4xf32>) -> tensor<?x32xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.head_linear input_offset
//===----------------------------------------------------------------------===//

// -----

func.func @head_offset_past_row(%q: tensor<?x?x4x24xf32>, %w: tensor<4x32x16xbf16>) {
  // expected-error @+1 {{'kiln.head_linear' op input_offset 9 + the weight's 16 input features exceed the input's head width 24}}
  %0 = kiln.head_linear %q, %w {input_offset = 9 : i64} : (tensor<?x?x4x24xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
  return
}

// -----

func.func @head_offset_negative(%q: tensor<?x?x4x24xf32>, %w: tensor<4x32x16xbf16>) {
  // expected-error @+1 {{'kiln.head_linear' op input_offset -1 + the weight's 16 input features exceed the input's head width 24}}
  %0 = kiln.head_linear %q, %w {input_offset = -1 : i64} : (tensor<?x?x4x24xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
  return
}

// -----

func.func @head_offset_fp8(%q: tensor<?x?x4x24xf32>, %w: tensor<4x32x16xf8E4M3FN>, %s: tensor<4x2x1xf32>) {
  // expected-error @+1 {{'kiln.head_linear' op input_offset takes no f8E4M3FN weight (its input is quantized whole)}}
  %0 = kiln.head_linear %q, %w scale %s {block_size = array<i64: 16, 16>, input_offset = 0 : i64} : (tensor<?x?x4x24xf32>, tensor<4x32x16xf8E4M3FN>, tensor<4x2x1xf32>) -> tensor<?x?x4x32xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.gated_linear
//===----------------------------------------------------------------------===//

// -----

func.func @gated_weights_differ(%x: tensor<?x?x64xf32>, %wg: tensor<96x64xbf16>, %wu: tensor<96x64xf32>) {
  // expected-error @+1 {{'kiln.gated_linear' op gate_weight 'tensor<96x64xbf16>' and up_weight 'tensor<96x64xf32>' must have one type}}
  %0 = kiln.gated_linear %x, %wg, %wu : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96x64xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @gated_dense_rank(%x: tensor<?x?x64xf32>, %w: tensor<8x96x64xbf16>) {
  // expected-error @+1 {{'kiln.gated_linear' op gate_weight must have rank 2, got 3}}
  %0 = kiln.gated_linear %x, %w, %w : (tensor<?x?x64xf32>, tensor<8x96x64xbf16>, tensor<8x96x64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @gated_scalar_input(%x: tensor<f32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.gated_linear' op input must have rank >= 1}}
  %0 = kiln.gated_linear %x, %w, %w : (tensor<f32>, tensor<96x64xbf16>, tensor<96x64xbf16>) -> tensor<96xf32>
  return
}

// -----

func.func @gated_grouped_input_rank(%x: tensor<?x?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<9xi32>) {
  // expected-error @+1 {{'kiln.gated_linear' op input must have rank 2, got 3}}
  %0 = kiln.gated_linear %x, %w, %w experts %off : (tensor<?x?x64xf32>, tensor<8x32x64xbf16>, tensor<8x32x64xbf16>, tensor<9xi32>) -> tensor<?x?x32xf32>
  return
}

// -----

func.func @gated_grouped_offsets(%x: tensor<?x64xf32>, %w: tensor<8x32x64xbf16>, %off: tensor<8xi32>) {
  // expected-error @+1 {{'kiln.gated_linear' op expert_offsets has shape [8], expected [9]}}
  %0 = kiln.gated_linear %x, %w, %w experts %off : (tensor<?x64xf32>, tensor<8x32x64xbf16>, tensor<8x32x64xbf16>, tensor<8xi32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @gated_features(%x: tensor<?x?x32xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.gated_linear' op input's last dimension 32 does not match the weight's 64 input features}}
  %0 = kiln.gated_linear %x, %w, %w : (tensor<?x?x32xf32>, tensor<96x64xbf16>, tensor<96x64xbf16>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @gated_result(%x: tensor<?x?x64xf32>, %w: tensor<96x64xbf16>) {
  // expected-error @+1 {{'kiln.gated_linear' op result has shape [?, ?, 192], expected [?, ?, 96]}}
  %0 = kiln.gated_linear %x, %w, %w : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96x64xbf16>) -> tensor<?x?x192xf32>
  return
}

// -----

func.func @gated_fp8_needs_scales(%x: tensor<?x?x64xf32>, %w: tensor<96x64xf8E4M3FN>) {
  // expected-error @+1 {{'kiln.gated_linear' op an f8E4M3FN weight needs a block scale}}
  %0 = kiln.gated_linear %x, %w, %w {block_size = array<i64: 16, 16>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @gated_up_scale_shape(%x: tensor<?x?x64xf32>, %w: tensor<96x64xf8E4M3FN>, %s: tensor<6x4xf32>, %t: tensor<4x4xf32>) {
  // expected-error @+1 {{'kiln.gated_linear' op scale has shape [4, 4], expected [6, 4]}}
  %0 = kiln.gated_linear %x, %w, %w scales %s, %t {block_size = array<i64: 16, 16>} : (tensor<?x?x64xf32>, tensor<96x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<6x4xf32>, tensor<4x4xf32>) -> tensor<?x?x96xf32>
  return
}

// -----

func.func @gated_codes_grouped(%x: tensor<?x64xf8E4M3FN>, %w: tensor<8x32x64xf8E4M3FN>, %off: tensor<9xi32>, %s: tensor<8x2x4xf32>, %sx: tensor<?x4xf32>) {
  // expected-error @+1 {{'kiln.gated_linear' op an f8E4M3FN input takes no expert_offsets}}
  %0 = kiln.gated_linear %x, %w, %w experts %off scales %s, %s input_scale %sx {block_size = array<i64: 16, 16>} : (tensor<?x64xf8E4M3FN>, tensor<8x32x64xf8E4M3FN>, tensor<8x32x64xf8E4M3FN>, tensor<9xi32>, tensor<8x2x4xf32>, tensor<8x2x4xf32>, tensor<?x4xf32>) -> tensor<?x32xf32>
  return
}

// -----

func.func @gated_codes_without_scale(%x: tensor<?x?x64xf8E4M3FN>, %w: tensor<96x64xf8E4M3FN>, %s: tensor<6x4xf32>) {
  // expected-error @+1 {{'kiln.gated_linear' op an f8E4M3FN input needs input_scale, and only it}}
  %0 = kiln.gated_linear %x, %w, %w scales %s, %s {block_size = array<i64: 16, 16>} : (tensor<?x?x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<96x64xf8E4M3FN>, tensor<6x4xf32>, tensor<6x4xf32>) -> tensor<?x?x96xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.moe_combine
//===----------------------------------------------------------------------===//

// -----

func.func @combine_outputs_rank(%o: tensor<?x?x64xf32>, %w: tensor<?x?x2xf32>, %s: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_combine' op expert_outputs must have rank 2, got 3}}
  %0 = kiln.moe_combine %o, %w, %s : (tensor<?x?x64xf32>, tensor<?x?x2xf32>, tensor<?x?x2xi32>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @combine_weights_rank(%o: tensor<?x64xf32>, %w: tensor<?x2xf32>, %s: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_combine' op weights must have rank 3, got 2}}
  %0 = kiln.moe_combine %o, %w, %s : (tensor<?x64xf32>, tensor<?x2xf32>, tensor<?x?x2xi32>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @combine_selection_rows(%o: tensor<?x64xf32>, %w: tensor<?x?x2xf32>, %s: tensor<?x?x3xi32>) {
  // expected-error @+1 {{'kiln.moe_combine' op selection_rows has shape [?, ?, 3], expected [?, ?, 2]}}
  %0 = kiln.moe_combine %o, %w, %s : (tensor<?x64xf32>, tensor<?x?x2xf32>, tensor<?x?x3xi32>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @combine_dtype(%o: tensor<?x64xbf16>, %w: tensor<?x?x2xf32>, %s: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_combine' op result element type 'f32' must match 'bf16'}}
  %0 = kiln.moe_combine %o, %w, %s : (tensor<?x64xbf16>, tensor<?x?x2xf32>, tensor<?x?x2xi32>) -> tensor<?x?x64xf32>
  return
}

// -----

func.func @combine_result(%o: tensor<?x64xf32>, %w: tensor<2x?x2xf32>, %s: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_combine' op result has shape [?, ?, 32], expected [2, ?, 64]}}
  %0 = kiln.moe_combine %o, %w, %s : (tensor<?x64xf32>, tensor<2x?x2xf32>, tensor<?x?x2xi32>) -> tensor<?x?x32xf32>
  return
}

// -----

func.func @combine_weights_dtype(%o: tensor<?x64xf32>, %w: tensor<?x?x2xbf16>, %s: tensor<?x?x2xi32>) {
  // expected-error @+1 {{'kiln.moe_combine' op operand #1 must be ranked tensor of 32-bit float values, but got 'tensor<?x?x2xbf16>'}}
  %0 = kiln.moe_combine %o, %w, %s : (tensor<?x64xf32>, tensor<?x?x2xbf16>, tensor<?x?x2xi32>) -> tensor<?x?x64xf32>
  return
}

//===----------------------------------------------------------------------===//
// kiln.fused, kiln.yield
//===----------------------------------------------------------------------===//

// -----

func.func @fused_yield_count(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.fused' op yields 2 value(s) whose types differ from the results}}
  %r = kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  ^bb0(%a: tensor<?x?x8xf32>):
    %s = kiln.add %a, %a : tensor<?x?x8xf32>
    kiln.yield %s, %s : tensor<?x?x8xf32>, tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @fused_yield_type(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.fused' op yields 1 value(s) whose types differ from the results}}
  %r = kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x4xf32> {
  ^bb0(%a: tensor<?x?x8xf32>):
    %s = kiln.add %a, %a : tensor<?x?x8xf32>
    kiln.yield %s : tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @fused_gemm(%x: tensor<?x?x8xf32>, %w: tensor<8x8xf32>) {
  %r = kiln.fused "f"(%x, %w) : (tensor<?x?x8xf32>, tensor<8x8xf32>) -> tensor<?x?x8xf32> {
  ^bb0(%a: tensor<?x?x8xf32>, %b: tensor<8x8xf32>):
    // expected-error @+1 {{'kiln.linear' op cannot be fused: only row-local ops may be in a kiln.fused body}}
    %s = kiln.linear %a, %b : (tensor<?x?x8xf32>, tensor<8x8xf32>) -> tensor<?x?x8xf32>
    kiln.yield %s : tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @fused_parameter(%x: tensor<?x?x8xf32>) {
  %r = kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  ^bb0(%a: tensor<?x?x8xf32>):
    // expected-error @+1 {{'kiln.get_parameter' op cannot be fused: only row-local ops may be in a kiln.fused body}}
    %w = kiln.get_parameter @w : tensor<8xf32>
    %s = kiln.rms_norm %a, %w {epsilon = 1.0e-06 : f64} : (tensor<?x?x8xf32>, tensor<8xf32>) -> tensor<?x?x8xf32>
    kiln.yield %s : tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @fused_arguments(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.fused' op body takes 2 argument(s) for 1 input(s)}}
  %r = kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  ^bb0(%a: tensor<?x?x8xf32>, %b: tensor<?x?x8xf32>):
    %s = kiln.add %a, %b : tensor<?x?x8xf32>
    kiln.yield %s : tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @fused_argument_type(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.fused' op body argument 0 has type 'tensor<?x?x8xbf16>', input has 'tensor<?x?x8xf32>'}}
  %r = kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xbf16> {
  ^bb0(%a: tensor<?x?x8xbf16>):
    %s = kiln.add %a, %a : tensor<?x?x8xbf16>
    kiln.yield %s : tensor<?x?x8xbf16>
  }
  return
}

// -----

func.func @fused_no_yield(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.fused' op body must end with kiln.yield}}
  %r = kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  ^bb0(%a: tensor<?x?x8xf32>):
    %s = kiln.add %a, %a : tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @fused_no_results(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.fused' op must yield at least one value}}
  kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> () {
  ^bb0(%a: tensor<?x?x8xf32>):
    kiln.yield
  }
  return
}

// -----

func.func @fused_name(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.fused' op needs a kernel name}}
  %r = kiln.fused ""(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  ^bb0(%a: tensor<?x?x8xf32>):
    kiln.yield %a : tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @fused_from_above(%x: tensor<?x?x8xf32>) {
  // expected-note @+1 {{required by region isolation constraints}}
  %r = kiln.fused "f"(%x) : (tensor<?x?x8xf32>) -> tensor<?x?x8xf32> {
  ^bb0(%a: tensor<?x?x8xf32>):
    // expected-error @+1 {{'kiln.add' op using value defined outside the region}}
    %s = kiln.add %a, %x : tensor<?x?x8xf32>
    kiln.yield %s : tensor<?x?x8xf32>
  }
  return
}

// -----

func.func @yield_outside(%x: tensor<?x?x8xf32>) {
  // expected-error @+1 {{'kiln.yield' op expects parent op to be one of 'kiln.fused, kiln.linear_group'}}
  kiln.yield %x : tensor<?x?x8xf32>
}

// -----

func.func @linear_group_not_linear(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>) {
  %r:2 = kiln.linear_group(%x, %w) : (tensor<?x8xf32>, tensor<8x8xbf16>) -> (tensor<?x8xf32>, tensor<?x8xf32>) {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    // expected-error @+1 {{'kiln.add' op cannot be grouped: only kiln.linear, kiln.grouped_linear and kiln.gated_linear may be in a kiln.linear_group body}}
    %1 = kiln.add %a, %a : tensor<?x8xf32>
    kiln.yield %0, %1 : tensor<?x8xf32>, tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_one(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>) {
  // expected-error @+1 {{'kiln.linear_group' op groups 1 GEMM(s); a group takes 2 to 4}}
  %r = kiln.linear_group(%x, %w) : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32> {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    kiln.yield %0 : tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_five(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>) {
  // expected-error @+1 {{'kiln.linear_group' op groups 5 GEMM(s); a group takes 2 to 4}}
  %r:5 = kiln.linear_group(%x, %w) : (tensor<?x8xf32>, tensor<8x8xbf16>) -> (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>) {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %1 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %2 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %3 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %4 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    kiln.yield %0, %1, %2, %3, %4 : tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_order(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>) {
  // expected-error @+1 {{'kiln.linear_group' op must yield each GEMM's result once, in the body's order}}
  %r:2 = kiln.linear_group(%x, %w) : (tensor<?x8xf32>, tensor<8x8xbf16>) -> (tensor<?x8xf32>, tensor<?x8xf32>) {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %1 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    kiln.yield %1, %0 : tensor<?x8xf32>, tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_gated(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>) {
  %r:2 = kiln.linear_group(%x, %w) : (tensor<?x8xf32>, tensor<8x8xbf16>) -> (tensor<?x8xf32>, tensor<?x8xf32>) {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    // expected-error @+1 {{'kiln.gated_linear' op needs another kernel than the group's first GEMM (gatedness, weight or input type, FP8 block)}}
    %1 = kiln.gated_linear %a, %b, %b : (tensor<?x8xf32>, tensor<8x8xbf16>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    kiln.yield %0, %1 : tensor<?x8xf32>, tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_types(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>, %v: tensor<8x8xf32>) {
  %r:2 = kiln.linear_group(%x, %w, %v) : (tensor<?x8xf32>, tensor<8x8xbf16>, tensor<8x8xf32>) -> (tensor<?x8xf32>, tensor<?x8xf32>) {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>, %c: tensor<8x8xf32>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    // expected-error @+1 {{'kiln.linear' op needs another kernel than the group's first GEMM (gatedness, weight or input type, FP8 block)}}
    %1 = kiln.linear %a, %c : (tensor<?x8xf32>, tensor<8x8xf32>) -> tensor<?x8xf32>
    kiln.yield %0, %1 : tensor<?x8xf32>, tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_yields_fewer(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>) {
  // expected-error @+1 {{'kiln.linear_group' op must yield each GEMM's result once, in the body's order}}
  %r:2 = kiln.linear_group(%x, %w) : (tensor<?x8xf32>, tensor<8x8xbf16>) -> (tensor<?x8xf32>, tensor<?x8xf32>) {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %1 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %2 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    kiln.yield %0, %1 : tensor<?x8xf32>, tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_yields_more(%x: tensor<?x8xf32>, %w: tensor<8x8xbf16>) {
  // expected-error @+1 {{'kiln.linear_group' op must yield each GEMM's result once, in the body's order}}
  %r:3 = kiln.linear_group(%x, %w) : (tensor<?x8xf32>, tensor<8x8xbf16>) -> (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>) {
  ^bb0(%a: tensor<?x8xf32>, %b: tensor<8x8xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    %1 = kiln.linear %a, %b : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
    kiln.yield %0, %1, %a : tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>
  }
  return
}

// -----

func.func @linear_group_input_types(%x: tensor<?x32xbf16>, %y: tensor<?x32xf32>, %w: tensor<16x32xbf16>) {
  %r:2 = kiln.linear_group(%x, %y, %w) : (tensor<?x32xbf16>, tensor<?x32xf32>, tensor<16x32xbf16>) -> (tensor<?x16xbf16>, tensor<?x16xf32>) {
  ^bb0(%a: tensor<?x32xbf16>, %f: tensor<?x32xf32>, %b: tensor<16x32xbf16>):
    %0 = kiln.linear %a, %b : (tensor<?x32xbf16>, tensor<16x32xbf16>) -> tensor<?x16xbf16>
    // expected-error @+1 {{'kiln.linear' op needs another kernel than the group's first GEMM (gatedness, weight or input type, FP8 block)}}
    %1 = kiln.linear %f, %b : (tensor<?x32xf32>, tensor<16x32xbf16>) -> tensor<?x16xf32>
    kiln.yield %0, %1 : tensor<?x16xbf16>, tensor<?x16xf32>
  }
  return
}
