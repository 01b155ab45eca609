// The MLA rewrite on real builder output: a tiny DeepSeek-V2-Lite-shaped
// model (4 heads, qk_nope 16, qk_rope 8, v 16, kv_lora 32).

// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | FileCheck %s --check-prefix=BEFORE
// BEFORE: kiln.kv_cache @model.layers.0.self_attn.k_cache : tensor<4x24xf32>
// BEFORE: kiln.kv_cache @model.layers.0.self_attn.v_cache : tensor<4x16xf32>
// BEFORE-LABEL: func.func @forward
// BEFORE: kiln.linear {{.*}} -> tensor<?x?x128xf32>
// BEFORE: kiln.kv_append @model.layers.0.self_attn.k_cache
// BEFORE: kiln.attention {{.*}} -> tensor<?x?x4x16xf32>

// Absorbed: W_UK/W_UV derived from kv_b_proj, a latent cache of 32 + 8
// values per token with no head dimension, MQA-like attention over it.
// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=mode=absorbed | FileCheck %s --check-prefix=ABS
// ABS-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight.w_uk : tensor<4x32x16xbf16> {source = "model.layers.0.self_attn.kv_b_proj.weight", transform = #kiln.head_slice<heads = 4, rows = 32, offset = 0, size = 16, transpose = true>}
// ABS-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight.w_uv : tensor<4x16x32xbf16> {source = "model.layers.0.self_attn.kv_b_proj.weight", transform = #kiln.head_slice<heads = 4, rows = 32, offset = 16, size = 16>}
// ABS-DAG: kiln.kv_cache @model.layers.0.self_attn.latent_cache : tensor<1x40xf32>
// ABS-NOT: k_cache
// ABS-NOT: kv_b_proj.weight :
// ABS-LABEL: func.func @forward
// ABS-SAME: kiln.mla = {decode = {{{.*}}mode = "absorbed"{{.*}}}, mode = "absorbed", prefill = {{{.*}}mode = "absorbed"
// ABS: %[[ENTRY:.*]] = kiln.concat {{.*}} : tensor<?x?x1x32xf32>, tensor<?x?x1x8xf32> -> tensor<?x?x1x40xf32>
// ABS: kiln.kv_append @model.layers.0.self_attn.latent_cache, %[[ENTRY]]
// ABS: %[[K:.*]] = kiln.kv_read @model.layers.0.self_attn.latent_cache, %{{.*}} : tensor<?xi32> -> tensor<?x?x1x40xf32>
// ABS: %[[V:.*]] = kiln.kv_read @model.layers.0.self_attn.latent_cache, %{{.*}} {columns = array<i64: 0, 32>} : tensor<?xi32> -> tensor<?x?x1x32xf32>
// ABS: %[[WUK:.*]] = kiln.get_parameter @model.layers.0.self_attn.kv_b_proj.weight.w_uk
// ABS: %[[QLAT:.*]] = kiln.head_linear %{{.*}}, %[[WUK]] : (tensor<?x?x4x16xf32>, tensor<4x32x16xbf16>) -> tensor<?x?x4x32xf32>
// ABS: %[[Q:.*]] = kiln.concat %[[QLAT]], %{{.*}} : tensor<?x?x4x32xf32>, tensor<?x?x4x8xf32> -> tensor<?x?x4x40xf32>
// ABS: %[[O:.*]] = kiln.attention %[[Q]], %[[K]], %[[V]], %{{.*}}, %{{.*}} {kiln.mla = "absorbed", scale = 0.24609782191507454 : f64}
// ABS: kiln.head_linear %[[O]], %{{.*}} : (tensor<?x?x4x32xf32>, tensor<4x16x32xbf16>) -> tensor<?x?x4x16xf32>

// Naive: nothing changes but the recorded choice.
// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=mode=naive | FileCheck %s --check-prefix=NAIVE
// NAIVE: kiln.kv_cache @model.layers.0.self_attn.k_cache : tensor<4x24xf32>
// NAIVE-LABEL: func.func @forward
// NAIVE-SAME: kiln.mla = {mode = "naive"}
// NAIVE-NOT: latent_cache

// Auto: the cost model absorbs decode (one query per step) but keeps a
// 512-token prefill naive over the latent cache, so @forward splits into
// @decode and @prefill sharing the cache.
// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv | FileCheck %s --check-prefix=AUTO
// AUTO: kiln.kv_cache @model.layers.0.self_attn.latent_cache : tensor<1x40xf32>
// AUTO-LABEL: func.func @decode
// AUTO-SAME: kiln.mla = {batch = 8 : i64, context = 2048 : i64, cost_absorbed_s = {{.*}}, cost_naive_s = {{.*}}, entry = "decode", mode = "absorbed", queries = 1 : i64}
// AUTO: kiln.attention {{.*}}kiln.mla = "absorbed"
// AUTO-LABEL: func.func @prefill
// AUTO-SAME: entry = "prefill", mode = "naive_from_latent", queries = 512 : i64
// AUTO: kiln.kv_append @model.layers.0.self_attn.latent_cache
// AUTO: kiln.linear {{.*}} : (tensor<?x?x32xf32>, tensor<128x32xbf16>) -> tensor<?x?x128xf32>
// AUTO: kiln.attention {{.*}}kiln.mla = "naive_from_latent"

// The cost counts the latent cache's bytes as stored: a row of 32 + 8
// values is 160 bytes in f32, 80 in bf16 and 52 in fp8 (32 e4m3 codes, one
// scale, 8 bf16). Absorbed decode at batch 8 over 2,048 keys: 9,502,720
// flops / 1e11 + (8,192 weight bytes + 8 x 2,048 x row bytes) / 2e10.
// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv | FileCheck %s --check-prefix=COSTF32
// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=latent-cache-dtype=bf16 | FileCheck %s --check-prefix=COSTBF16
// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=latent-cache-dtype=fp8 | FileCheck %s --check-prefix=COSTFP8
// COSTF32: cost_absorbed_s = 2.265088{{0*[0-9]?}}E-4 : f64, {{.*}}entry = "decode"
// COSTBF16: cost_absorbed_s = 1.609728{{0*[0-9]?}}E-4 : f64, {{.*}}entry = "decode"
// COSTFP8: cost_absorbed_s = 1.38035{{19*[0-9]?}}E-4 : f64, {{.*}}entry = "decode"

// With a short prefill both entry points absorb and @forward stays whole.
// RUN: kiln compile-model %presets/tiny-deepseek-v2-lite.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=prefill-tokens=4 | FileCheck %s --check-prefix=SHORT
// SHORT-LABEL: func.func @forward
// SHORT-SAME: mode = "absorbed"
// SHORT-NOT: func.func @prefill

// DeepSeek-V3 (q_lora) and V2 rewrite the same way.
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv=mode=absorbed | FileCheck %s --check-prefix=V3
// V3: kiln.kv_cache @model.layers.0.self_attn.latent_cache : tensor<1x40xf32>
// V3-COUNT-3: kiln.mla = "absorbed"

// Attention that is not MLA is left alone.
// RUN: kiln compile-model %presets/tiny-qwen2.json --compile-to=import | kiln-opt -kiln-absorb-latent-kv=mode=absorbed | FileCheck %s --check-prefix=GQA
// RUN: kiln compile-model %presets/tiny-llama.json --compile-to=import | kiln-opt -kiln-absorb-latent-kv | FileCheck %s --check-prefix=GQA
// GQA: kiln.kv_cache @model.layers.0.self_attn.k_cache
// GQA-NOT: kiln.mla
// GQA-NOT: latent_cache

// The V3 config (61 layers, no MTP) in bf16 without its FP8 quantization:
// 576 cached values per token and layer, 70,272 bytes per token.
// RUN: sed '/quantization_config/,/},/d' %presets/deepseek-v3.json > %t.json
// RUN: kiln compile-model %t.json --no-mtp --activation-dtype bf16 --mla=absorbed | FileCheck %s --check-prefix=V3FULL
// V3FULL: kiln.summary = {{{.*}}kv_cache_bytes_per_token = 70272 : i64
// V3FULL: kiln.kv_cache @model.layers.0.self_attn.latent_cache : tensor<1x576xbf16>
// RUN: kiln compile-model %t.json --no-mtp --activation-dtype bf16 --mla=naive | FileCheck %s --check-prefix=V3NAIVE
// V3NAIVE: kiln.summary = {{{.*}}kv_cache_bytes_per_token = 4997120 : i64

// The real (FP8) V3 config: W_UK/W_UV stay FP8, their block scales are the
// matching slices of kv_b_proj's 128x128 scale grid.
// RUN: kiln compile-model %presets/deepseek-v3.json --no-mtp --activation-dtype bf16 --mla=absorbed | FileCheck %s --check-prefix=V3FP8
// V3FP8: kiln.summary = {{{.*}}kv_cache_bytes_per_token = 70272 : i64
// V3FP8-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight.w_uk : tensor<128x512x128xf8E4M3FN>
// V3FP8-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight_scale_inv.w_uk_scale_inv : tensor<128x4x1xf32> {source = "model.layers.0.self_attn.kv_b_proj.weight_scale_inv", transform = #kiln.head_slice<heads = 128, rows = 2, offset = 0, size = 1, transpose = true>}
// V3FP8-DAG: kiln.parameter @model.layers.0.self_attn.kv_b_proj.weight_scale_inv.w_uv_scale_inv : tensor<128x1x4xf32> {source = "model.layers.0.self_attn.kv_b_proj.weight_scale_inv", transform = #kiln.head_slice<heads = 128, rows = 2, offset = 1, size = 1>}
// V3FP8: kiln.head_linear %{{.*}}, %{{.*}} scale %{{.*}} {block_size = array<i64: 128, 128>} : (tensor<?x?x128x128xbf16>, tensor<128x512x128xf8E4M3FN>, tensor<128x4x1xf32>) -> tensor<?x?x128x512xbf16>

// RUN: not kiln-opt %s -kiln-absorb-latent-kv=mode=bogus 2>&1 | FileCheck %s --check-prefix=BAD
// BAD: mode must be auto, naive or absorbed, got 'bogus'
module {}

// FP8 latent cache: c_kv in e4m3 with a scale per 128 values, k_pe in bf16.
// DeepSeek-V3 (shape-only): (512 + 4 * 4 + 64 * 2) = 656 bytes per token and
// layer, 61 layers.
// RUN: kiln compile-model %presets/deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv="mode=absorbed latent-cache-dtype=fp8" -kiln-summarize | FileCheck %s --check-prefix=FP8CACHE
// FP8CACHE: kv_cache_bytes_per_token = 40016 : i64
// FP8CACHE: kiln.kv_cache @model.layers.0.self_attn.latent_cache : tensor<1x576xf32> {storage = #kiln.packed_cache<fp8_columns = 512>}
// bf16: the same packed row without e4m3 columns, 61 x 576 x 2 bytes.
// RUN: kiln compile-model %presets/deepseek-v3.json --no-mtp --compile-to=import | kiln-opt -kiln-absorb-latent-kv="mode=absorbed latent-cache-dtype=bf16" -kiln-summarize | FileCheck %s --check-prefix=BF16CACHE
// BF16CACHE: kv_cache_bytes_per_token = 70272 : i64
// BF16CACHE: kiln.kv_cache @model.layers.0.self_attn.latent_cache : tensor<1x576xf32> {storage = #kiln.packed_cache<fp8_columns = 0>}
// RUN: kiln compile-model %presets/tiny-deepseek-v3.json --no-mtp --compile-to=import | not kiln-opt -kiln-absorb-latent-kv=latent-cache-dtype=int8 2>&1 | FileCheck %s --check-prefix=BADDTYPE
// BADDTYPE: latent-cache-dtype must be f32, bf16 or fp8, got 'int8'
