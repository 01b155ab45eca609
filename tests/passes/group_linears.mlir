// kiln-group-linears: GEMMs that can share a launch become one
// kiln.linear_group; the builder's models (MLA's q and latent projections,
// a MoE layer's routed and shared experts, a dense attention's q, k and v,
// FP8 siblings after kiln-fuse), then one rule per hand-written function.

// DeepSeek-V3: q_a_proj and kv_a_proj_with_mqa read the normed hidden state.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-fuse-gated-linear -kiln-group-linears | FileCheck %s --check-prefix=V3
// V3-LABEL: func.func @forward
// V3: %[[Q:.*]]:2 = kiln.linear_group(%{{.*}}, %{{.*}}, %{{.*}}) : (tensor<?x?x64xf32>, tensor<48x64xbf16>, tensor<40x64xbf16>) -> (tensor<?x?x48xf32>, tensor<?x?x40xf32>) {
// V3-NEXT: ^bb0(%[[X:.*]]: tensor<?x?x64xf32>, %[[WQ:.*]]: tensor<48x64xbf16>, %[[WKV:.*]]: tensor<40x64xbf16>):
// V3-NEXT: %[[A:.*]] = kiln.linear %[[X]], %[[WQ]]
// V3-NEXT: %[[B:.*]] = kiln.linear %[[X]], %[[WKV]]
// V3-NEXT: kiln.yield %[[A]], %[[B]]
// V3: kiln.rms_norm %[[Q]]#0

// A MoE layer: the shared expert's gated GEMM moves up beside the routed
// experts' (different inputs: routed rows and the token rows), and in the
// next round the two down projections pair up.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-fuse-gated-linear -kiln-group-linears | FileCheck %s --check-prefix=MOE
// MOE-LABEL: func.func @forward
// MOE: %[[ROUTED:[^,]*]], %[[OFF:[^,]*]], %{{.*}}, %{{.*}} = kiln.moe_dispatch %[[NORMED:[^,]*]],
// MOE: %[[UP:.*]]:2 = kiln.linear_group(%[[ROUTED]], %{{.*}}, %{{.*}}, %[[OFF]], %[[NORMED]], %{{.*}}, %{{.*}})
// MOE-NEXT: ^bb0
// MOE-NEXT: kiln.gated_linear {{.*}} experts
// MOE-NEXT: kiln.gated_linear
// MOE: %[[DOWN:.*]]:2 = kiln.linear_group(%[[UP]]#0, %{{.*}}, %[[OFF]], %[[UP]]#1, %{{.*}})
// MOE-NEXT: ^bb0
// MOE-NEXT: kiln.grouped_linear
// MOE-NEXT: kiln.linear
// MOE: kiln.moe_combine %[[DOWN]]#0

// Qwen2: q, k and v with their biases.
// RUN: kiln compile-model %presets/tiny-qwen2.json --compile-to=import | kiln-opt -kiln-fuse-gated-linear -kiln-group-linears | FileCheck %s --check-prefix=QWEN
// QWEN-LABEL: func.func @forward
// QWEN: kiln.linear_group(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) : (tensor<?x?x64xf32>, tensor<64x64xbf16>, tensor<64xbf16>, tensor<32x64xbf16>, tensor<32xbf16>, tensor<32x64xbf16>, tensor<32xbf16>) -> (tensor<?x?x64xf32>, tensor<?x?x32xf32>, tensor<?x?x32xf32>)
// QWEN-COUNT-3: kiln.linear %{{.*}} bias
// QWEN-NEXT: kiln.yield

// FP8 after kiln-fuse: the siblings read the codes and scales the norm's
// kernel quantized once for both.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-quantize-fp8=block=16 -kiln-absorb-latent-kv=mode=absorbed -kiln-fuse-gated-linear -kiln-fuse -kiln-group-linears | FileCheck %s --check-prefix=FP8
// FP8-LABEL: func.func @forward
// FP8: %[[N:.*]]:{{[0-9]+}} = kiln.fused
// FP8: kiln.linear_group(%[[N]]#{{[0-9]+}}, %{{.*}}, %{{.*}}, %[[N]]#{{[0-9]+}}, %{{.*}}, %{{.*}}) : (tensor<?x?x64xf8E4M3FN>, tensor<48x64xf8E4M3FN>, tensor<3x4xf32>, tensor<?x?x4xf32>, tensor<40x64xf8E4M3FN>, tensor<3x4xf32>)
// FP8-NEXT: ^bb0(%[[X:.*]]: tensor<?x?x64xf8E4M3FN>, %[[W0:.*]]: tensor<48x64xf8E4M3FN>, %[[S0:.*]]: tensor<3x4xf32>, %[[XS:.*]]: tensor<?x?x4xf32>, %[[W1:.*]]: tensor<40x64xf8E4M3FN>, %[[S1:.*]]: tensor<3x4xf32>):
// FP8-NEXT: kiln.linear %[[X]], %[[W0]] scale %[[S0]] input_scale %[[XS]]
// FP8-NEXT: kiln.linear %[[X]], %[[W1]] scale %[[S1]] input_scale %[[XS]]
// A MoE layer: the routed experts' gated GEMM (f32 rows, which the grouped
// GEMV quantizes) groups with the shared expert's (the codes the norm's
// kernel wrote), and then the down projections pair up.
// FP8: %[[ROUTED:[^,]*]], %[[OFF:[^,]*]], %{{.*}}, %{{.*}} = kiln.moe_dispatch %[[M:[^#]*]]#
// FP8: %[[UP:.*]]:2 = kiln.linear_group(%[[ROUTED]], {{.*}}, %[[M]]#{{[0-9]+}}, {{.*}}) : (tensor<?x64xf32>, {{.*}}, tensor<?x?x64xf8E4M3FN>,
// FP8-NEXT: ^bb0
// FP8-NEXT: kiln.gated_linear {{.*}} experts
// FP8-NEXT: kiln.gated_linear {{.*}} input_scale
// FP8: %[[DOWN:.*]]:2 = kiln.linear_group(%[[UP]]#0, {{.*}}, %[[UP]]#1,
// FP8-NEXT: ^bb0
// FP8-NEXT: kiln.grouped_linear
// FP8-NEXT: kiln.linear
// FP8: kiln.moe_combine

// With the gated GEMMs not formed, a SwiGLU's gate and up projections group
// instead, and the summary still counts the dense FFN layer.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-group-linears -kiln-summarize | FileCheck %s --check-prefix=LAYERS
// LAYERS: kiln.layers = {attention = 3 : i64, dense_ffn = 1 : i64, moe = 2 : i64}
// LAYERS: %[[GU:.*]]:2 = kiln.linear_group(%{{.*}}, %{{.*}}, %{{.*}}) : (tensor<?x?x64xf32>, tensor<128x64xbf16>, tensor<128x64xbf16>)
// LAYERS: kiln.swiglu %[[GU]]#0, %[[GU]]#1

// RUN: kiln-opt %s -split-input-file -kiln-group-linears | FileCheck %s

// A parameter read after the first linear moves up to the group; biases
// may differ.

// CHECK-LABEL: func.func @pair
// CHECK-NEXT: %[[WQ:.*]] = kiln.get_parameter @wq
// CHECK-NEXT: %[[WKV:.*]] = kiln.get_parameter @wkv
// CHECK-NEXT: %[[G:.*]]:2 = kiln.linear_group(%arg0, %[[WQ]], %arg1, %[[WKV]])
// CHECK-NEXT: ^bb0(%[[X:.*]]: tensor<?x?x64xf32>, %[[A:.*]]: tensor<96x64xbf16>, %[[B:.*]]: tensor<96xf32>, %[[C:.*]]: tensor<40x64xbf16>):
// CHECK-NEXT: %[[Q:.*]] = kiln.linear %[[X]], %[[A]] bias %[[B]]
// CHECK-NEXT: %[[KV:.*]] = kiln.linear %[[X]], %[[C]] :
// CHECK-NEXT: kiln.yield %[[Q]], %[[KV]]
// CHECK: kiln.rms_norm %[[G]]#0
// CHECK-NEXT: return %{{.*}}, %[[G]]#1
module {
  kiln.parameter @wq : tensor<96x64xbf16>
  kiln.parameter @wkv : tensor<40x64xbf16>
  kiln.parameter @norm : tensor<96xbf16>
  func.func @pair(%x: tensor<?x?x64xf32>, %bq: tensor<96xf32>)
      -> (tensor<?x?x96xf32>, tensor<?x?x40xf32>) {
    %wq = kiln.get_parameter @wq : tensor<96x64xbf16>
    %q = kiln.linear %x, %wq bias %bq : (tensor<?x?x64xf32>, tensor<96x64xbf16>, tensor<96xf32>) -> tensor<?x?x96xf32>
    %norm = kiln.get_parameter @norm : tensor<96xbf16>
    %n = kiln.rms_norm %q, %norm {epsilon = 1.0e-06 : f64} : (tensor<?x?x96xf32>, tensor<96xbf16>) -> tensor<?x?x96xf32>
    %wkv = kiln.get_parameter @wkv : tensor<40x64xbf16>
    %kv = kiln.linear %x, %wkv : (tensor<?x?x64xf32>, tensor<40x64xbf16>) -> tensor<?x?x40xf32>
    return %n, %kv : tensor<?x?x96xf32>, tensor<?x?x40xf32>
  }
}

// -----

// GEMMs of other inputs share a launch; another weight type, or a GEMM
// that reads another's result, does not.

// CHECK-LABEL: func.func @apart
// CHECK-NEXT: %[[G:.*]]:2 = kiln.linear_group(%arg0, %arg2, %arg1, %arg3)
// CHECK: kiln.linear %arg0, %arg4
// CHECK-NEXT: kiln.add
// CHECK-NEXT: kiln.add
// CHECK-NEXT: kiln.linear %{{.*}}, %arg5
// CHECK-NOT: kiln.linear_group
// CHECK: return
func.func @apart(%x: tensor<?x?x64xf32>, %y: tensor<?x?x64xf32>,
                 %w0: tensor<32x64xbf16>, %w1: tensor<32x64xbf16>,
                 %w2: tensor<32x64xf32>, %w3: tensor<16x32xbf16>)
    -> (tensor<?x?x32xf32>, tensor<?x?x16xf32>) {
  %a = kiln.linear %x, %w0 : (tensor<?x?x64xf32>, tensor<32x64xbf16>) -> tensor<?x?x32xf32>
  %b = kiln.linear %y, %w1 : (tensor<?x?x64xf32>, tensor<32x64xbf16>) -> tensor<?x?x32xf32>
  %c = kiln.linear %x, %w2 : (tensor<?x?x64xf32>, tensor<32x64xf32>) -> tensor<?x?x32xf32>
  %s = kiln.add %a, %b : tensor<?x?x32xf32>
  %t = kiln.add %s, %c : tensor<?x?x32xf32>
  %v = kiln.linear %t, %w3 : (tensor<?x?x32xf32>, tensor<16x32xbf16>) -> tensor<?x?x16xf32>
  return %t, %v : tensor<?x?x32xf32>, tensor<?x?x16xf32>
}

// -----

// At most four linears a group; the fifth is left alone.

// CHECK-LABEL: func.func @five
// CHECK-NEXT: %[[G:.*]]:4 = kiln.linear_group(%arg0, %arg1, %arg2, %arg3, %arg4)
// CHECK-COUNT-4: kiln.linear
// CHECK-NEXT: kiln.yield
// CHECK-NEXT: }
// CHECK-NEXT: kiln.linear %arg0, %arg5
func.func @five(%x: tensor<?x8xf32>, %w0: tensor<8x8xbf16>,
                %w1: tensor<8x8xbf16>, %w2: tensor<8x8xbf16>,
                %w3: tensor<8x8xbf16>, %w4: tensor<8x8xbf16>)
    -> (tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>,
        tensor<?x8xf32>) {
  %0 = kiln.linear %x, %w0 : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
  %1 = kiln.linear %x, %w1 : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
  %2 = kiln.linear %x, %w2 : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
  %3 = kiln.linear %x, %w3 : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
  %4 = kiln.linear %x, %w4 : (tensor<?x8xf32>, tensor<8x8xbf16>) -> tensor<?x8xf32>
  return %0, %1, %2, %3, %4 : tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?x8xf32>
}

// -----

// A bias computed after the first linear cannot move up: that linear stays
// on its own.

// CHECK-LABEL: func.func @late_operand
// CHECK-NOT: kiln.linear_group
// CHECK: return
func.func @late_operand(%x: tensor<?x?x64xf32>, %w0: tensor<32x64xbf16>,
                        %w1: tensor<32x64xbf16>, %b: tensor<32xf32>)
    -> (tensor<?x?x32xf32>, tensor<?x?x32xf32>) {
  %a = kiln.linear %x, %w0 : (tensor<?x?x64xf32>, tensor<32x64xbf16>) -> tensor<?x?x32xf32>
  %late = kiln.add %b, %b : tensor<32xf32>
  %c = kiln.linear %x, %w1 bias %late : (tensor<?x?x64xf32>, tensor<32x64xbf16>, tensor<32xf32>) -> tensor<?x?x32xf32>
  return %a, %c : tensor<?x?x32xf32>, tensor<?x?x32xf32>
}
