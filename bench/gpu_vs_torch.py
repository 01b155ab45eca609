#!/usr/bin/env python3
"""Kiln's CUDA executor vs. PyTorch eager and torch.compile (HF transformers),
all on the same GPU in one run, for the 4-layer model with DeepSeek-V2-Lite's
dimensions (bf16 weights, written by bench/gpu_common.py; Kiln reads the same
file as external weights).

Measures
  * decode tokens/s at batch 1, 32, 128 and context 1K and 8K: Kiln with
    `kiln-run bench --synthetic-context` (the context is cache positions that
    were not computed, so no 128 x 8K prefill is run); HF with a cache filled
    by one real prefill at batch 1, repeated to the batch
    (DynamicCache.batch_repeat_interleave), then timed single-token steps;
  * Kiln's decode at the shortest context also with KILN_MMA_GEMMS=off
    (decode_tokens_per_s_gemv: the GEMMs cuBLASLt does not take as GEMVs
    instead of tensor-core GEMMs) and with KILN_CUBLASLT=0
    (decode_tokens_per_s_no_cublaslt: the GEMMs of 16+ rows on Kiln's
    tensor-core GEMMs too), and at batch 1 with KILN_PDL=off
    (decode_tokens_per_s_no_pdl: without programmatic dependent launch),
    with KILN_MOE_SELECTIONS=off (decode_tokens_per_s_routed: the MoE
    route launch instead of grouped GEMVs in selection order), with
    KILN_PREFETCH=off (decode_tokens_per_s_no_prefetch: the GEMM and
    attention kernels without asking the L2 for their weights and cache
    rows before awaiting the kernels before them)
    and compiled without the gated FFN GEMMs, folded head slices and linear
    groups (decode_tokens_per_s_unfused: the manifest's unfused artifact);
    and with a bf16 latent cache (kiln_bf16_cache_decode_tokens_per_s: the
    manifest's bf16_cache_artifact, compiled with --kv-cache-dtype=bf16);
  * prefill tokens/s of 2K tokens (batch 1), each computing the last
    position's logits as generation does (Kiln's bench by default, HF with
    logits_to_keep=1); Kiln also with --prompt-logits (every position's
    logits: kiln_prompt_logits_tokens_per_s), with
    KILN_EXPERT_GEMMS=grouped (the experts as one grouped library GEMM
    instead of one cuBLASLt GEMM per expert), with KILN_EXPERT_STREAMS=0
    (the per-expert GEMMs on one stream instead of four side streams) and
    with KILN_MMA_ATTENTION=off
    (attention on the CUDA cores in fp32 instead of the tensor cores);
  * where Kiln's time goes, kernel by kernel (`kiln-run bench --profile`:
    each point once more with CUDA events after every launch, the decode
    steps launched one by one as their graph holds them): per point the
    kernels of a decode step (kiln_decode_profile) and of the prefill
    (prefill.kiln_kernel_profile), the generated kernels grouped by what
    they fuse, the longest first, each with its share of the profiled time
    and, for GEMMs whose weight bytes Kiln knows (all but the grouped
    expert GEMMs), the rate it read its weights at (weight_bytes_per_s:
    at batch 1, the GEMVs' fraction of HBM bandwidth);
  * the achieved fraction of HBM bandwidth at batch 1: bytes one decode step
    reads (every weight except the embedding table, of which one row; of
    each MoE layer's routed experts only the 6 of 64 selected; Kiln's f32
    latent KV cache, 576 floats per token and layer) over the step time,
    against a measured device-to-device copy (read + write bytes).
Targets (the issue): decode batch 1 >= 70% of the measured HBM bandwidth and
>= 3x PyTorch eager; ahead of torch.compile at every batch size.

HF runs in bf16 with attn_implementation="eager"; torch.compile compiles the
same model's forward (--compile-mode, default "default"; dynamic shapes, as
the cache grows every step); if compiling fails its error is recorded.

Prints one JSON object (and writes it to -o after every phase, so that a run
cut short keeps what it measured); progress on stderr.
    python3 bench/gpu_vs_torch.py --bundle gpu-bundle -o result.json
    python3 bench/gpu_vs_torch.py --quick        # smoke: batch 1, context 1K
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import gpu_common  # noqa: E402


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def copy_bandwidth(gib=2, repeats=10):
    """Device-to-device copy bandwidth in bytes/s (read + write)."""
    import torch

    n = gib << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / best


def decode_bytes(weights_dir, config, context):
    """Bytes one batch-1 decode step reads (see the module docstring)."""
    from safetensors import safe_open

    experts = config.n_routed_experts
    share = config.num_experts_per_tok / experts
    total = 0.0
    with safe_open(os.path.join(weights_dir, "model.safetensors"), "np") as f:
        for name in f.keys():
            t = f.get_slice(name)
            shape = t.get_shape()
            count = math.prod(shape)
            size = {"BF16": 2, "F16": 2, "F32": 4}.get(t.get_dtype(), 4)
            if name.endswith("embed_tokens.weight"):
                count = shape[-1]  # one row
            elif ".mlp.experts." in name:
                count *= share
            total += count * size
    latent = config.kv_lora_rank + config.qk_rope_head_dim
    return total + context * config.num_hidden_layers * latent * 4


def kiln_bench(bundle, artifact, weights_dir, batches, contexts, steps, repeats, synthetic,
               env=None, profile=False, prompt_logits=False):
    argv = [os.path.join(bundle, "bin", "kiln-run"), "bench", artifact, "--device", "cuda",
            "--weights-dir", weights_dir, "--batch", ",".join(map(str, batches)),
            "--context", ",".join(map(str, contexts)), "--steps", str(steps),
            "--repeats", str(repeats)]
    if synthetic:
        argv.append("--synthetic-context")
    if profile:
        argv.append("--profile")
    if prompt_logits:
        argv.append("--prompt-logits")
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"kiln-run bench failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), proc.stderr.strip()


def top_kernels(profile, count=12):
    """A kernel profile of `kiln-run bench --profile` grouped by kernel (the
    generated kernels by what they fuse: fused_<n>_ dropped), the longest
    first, each with its share of the profiled time and, where Kiln knows
    the weight bytes its launches read (GEMMs but grouped expert GEMMs),
    the rate it read them at."""
    if not profile:
        return None
    groups = {}
    for k in profile["kernels"]:
        name = re.sub(r"^fused_\d+_", "fused: ", k["kernel"])
        g = groups.setdefault(name, {"kernel": name, "launches": 0, "ms": 0.0,
                                     "weight_bytes": 0})
        g["launches"] += k["launches"]
        g["ms"] += k["ms"]
        known = g["weight_bytes"] is not None and "weight_bytes" in k
        g["weight_bytes"] = g["weight_bytes"] + k["weight_bytes"] if known else None
    rows = sorted(groups.values(), key=lambda g: -g["ms"])
    for g in rows:
        g["share"] = g["ms"] / profile["ms"] if profile["ms"] else None
        g["weight_bytes_per_s"] = (g["weight_bytes"] / (g["ms"] / 1e3)
                                   if g["weight_bytes"] and g["ms"] else None)
    return {"ms": profile["ms"], "kernels": rows[:count]}


def hf_decode(model, vocab, batch, context, steps, repeats):
    """Decode tokens/s of `model` at `batch` x `context` (see the docstring)."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    prompt = torch.randint(0, vocab, (1, context), device="cuda", generator=gen)
    best = math.inf
    with torch.inference_mode():
        for r in range(repeats + 1):  # the first run warms up (and compiles)
            out = model(input_ids=prompt, use_cache=True)
            cache = out.past_key_values
            if batch > 1:
                cache.batch_repeat_interleave(batch)
            tokens = torch.randint(0, vocab, (batch, steps), device="cuda", generator=gen)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for s in range(steps):
                pos = torch.tensor([context + s], device="cuda")
                out = model(input_ids=tokens[:, s:s + 1], past_key_values=cache,
                            use_cache=True, cache_position=pos)
                cache = out.past_key_values
            torch.cuda.synchronize()
            if r > 0:
                best = min(best, time.perf_counter() - t0)
            del cache, out
            torch.cuda.empty_cache()
    return batch * steps / best


def hf_prefill(model, vocab, tokens, repeats):
    import torch

    ids = torch.randint(0, vocab, (1, tokens), device="cuda")
    best = math.inf
    with torch.inference_mode():
        for r in range(repeats + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            # The logits generation needs: the last position's (HF's
            # generate prefills with logits_to_keep=1, as Kiln's bench does).
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
            torch.cuda.synchronize()
            if r > 0:
                best = min(best, time.perf_counter() - t0)
    return tokens / best


def summarize(result, batches, contexts, kiln, eager, compiled, bandwidth, step_bytes):
    """The decode table and the targets from what has been measured so far
    (step_bytes: a batch-1 decode step's bytes per context)."""
    rows = []
    for b in batches:
        for c in contexts:
            if (b, c) not in kiln:
                continue
            k = kiln[(b, c)]["decode_tokens_per_s"]
            e, t = eager.get((b, c)), compiled.get((b, c))
            row = {"batch": b, "context": c, "kiln_decode_tokens_per_s": k,
                   "eager_decode_tokens_per_s": e, "compile_decode_tokens_per_s": t,
                   "kiln_vs_eager": k / e if e else None,
                   "kiln_vs_compile": k / t if t else None,
                   "kiln_gemv_decode_tokens_per_s":
                       kiln[(b, c)].get("decode_tokens_per_s_gemv"),
                   "kiln_no_pdl_decode_tokens_per_s":
                       kiln[(b, c)].get("decode_tokens_per_s_no_pdl"),
                   "kiln_routed_decode_tokens_per_s":
                       kiln[(b, c)].get("decode_tokens_per_s_routed"),
                   "kiln_no_prefetch_decode_tokens_per_s":
                       kiln[(b, c)].get("decode_tokens_per_s_no_prefetch"),
                   "kiln_no_cublaslt_decode_tokens_per_s":
                       kiln[(b, c)].get("decode_tokens_per_s_no_cublaslt"),
                   "kiln_unfused_decode_tokens_per_s":
                       kiln[(b, c)].get("decode_tokens_per_s_unfused"),
                   "kiln_bf16_cache_decode_tokens_per_s":
                       kiln[(b, c)].get("decode_tokens_per_s_bf16_cache"),
                   "kiln_decode_kernel_launches_per_step":
                       kiln[(b, c)].get("decode_kernel_launches_per_step"),
                   "kiln_decode_profile":
                       top_kernels(kiln[(b, c)].get("decode_kernel_profile")),
                   "kiln_profile_error": kiln[(b, c)].get("kernel_profile_error")}
            if b == 1:
                step_s = kiln[(b, c)]["decode_step_ms"] / 1e3
                row["kiln_step_ms"] = step_s * 1e3
                row["hbm_fraction"] = step_bytes[c] / step_s / bandwidth
            rows.append(row)
    result["decode"] = rows
    b1 = [r for r in rows if r["batch"] == 1]

    def every(rs, key, test):
        values = [r[key] for r in rs]
        return None if not values or None in values else all(test(v) for v in values)

    result["targets"] = {
        "decode_b1_hbm_fraction_ge_0.7": every(b1, "hbm_fraction", lambda v: v >= 0.7),
        "decode_b1_ge_3x_eager": every(b1, "kiln_vs_eager", lambda v: v >= 3),
        "ahead_of_torch_compile_every_batch": every(rows, "kiln_vs_compile", lambda v: v > 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=os.path.join(ROOT, "gpu-bundle"))
    parser.add_argument("--weights-dir", default=os.path.join(ROOT, "gpu-work", "v2lite4"))
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode ('none' skips torch.compile)")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    batches, contexts, prefill = [1, 32, 128], [1024, 8192], 2048
    if args.quick:
        batches, contexts, args.steps, args.repeats = [1], [1024], 8, 1
    manifest = gpu_common.read_manifest(args.bundle)
    artifact = os.path.join(args.bundle, "artifacts", manifest["v2lite"]["artifact"])
    gpu_common.write_v2lite_checkpoint(args.weights_dir, log=log)
    config = gpu_common.v2lite_config()

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "model": f"DeepSeek-V2-Lite dimensions, {gpu_common.V2LITE_LAYERS} layers, bf16",
              "decode_steps": args.steps, "repeats": args.repeats,
              "torch_compile_mode": args.compile_mode}
    log("measuring device-to-device copy bandwidth")
    bandwidth = copy_bandwidth()
    result["hbm_copy_bytes_per_s"] = bandwidth
    kiln, eager, compiled = {}, {}, {}
    step_bytes = {c: decode_bytes(args.weights_dir, config, c) for c in contexts}

    def progress():
        summarize(result, batches, contexts, kiln, eager, compiled, bandwidth, step_bytes)
        return gpu_common.write_json(args.output, result)

    result["prefill"] = {"tokens": prefill}
    try:  # a Kiln failure is reported with the peers' numbers
        log("Kiln: decode")
        decode, where = kiln_bench(args.bundle, artifact, args.weights_dir, batches, contexts,
                                   args.steps, args.repeats, synthetic=True, profile=True)
        result["kiln_device"] = where
        kiln.update({(r["batch"], r["context"]): r for r in decode["results"]})
        for r in decode["results"]:
            top = top_kernels(r.get("decode_kernel_profile"))
            if top:
                log(f"Kiln decode batch {r['batch']}, context {r['context']}: "
                    + ", ".join(f"{k['kernel']} {100 * k['share']:.0f}%"
                                + (f" ({k['weight_bytes_per_s'] / 1e12:.2f} TB/s)"
                                   if k["weight_bytes_per_s"] else "")
                                for k in top["kernels"][:4]))
        log("Kiln: prefill")
        pre, _ = kiln_bench(args.bundle, artifact, args.weights_dir, [1], [prefill], 1,
                            args.repeats, synthetic=False, profile=True)
        result["prefill"]["kiln_tokens_per_s"] = pre["results"][0]["prefill_tokens_per_s"]
        result["prefill"]["kiln_kernel_profile"] = top_kernels(
            pre["results"][0].get("prefill_kernel_profile"))
    except RuntimeError as e:
        result["kiln_error"] = str(e)
        log(f"Kiln failed: {e}")
    progress()

    model = AutoModelForCausalLM.from_pretrained(
        args.weights_dir, dtype=torch.bfloat16, attn_implementation="eager").cuda().eval()
    vocab = model.config.vocab_size
    for b in batches:
        for c in contexts:
            log(f"torch eager: batch {b}, context {c}")
            eager[(b, c)] = hf_decode(model, vocab, b, c, args.steps, args.repeats)
            progress()
    result["prefill"]["eager_tokens_per_s"] = hf_prefill(model, vocab, prefill, args.repeats)
    progress()
    compiled_model = None
    if args.compile_mode != "none":
        try:
            compiled_model = torch.compile(model, mode=args.compile_mode, dynamic=True)
            for b in batches:
                for c in contexts:
                    log(f"torch.compile: batch {b}, context {c}")
                    compiled[(b, c)] = hf_decode(compiled_model, vocab, b, c, args.steps,
                                                 args.repeats)
                    progress()
            result["prefill"]["compile_tokens_per_s"] = hf_prefill(compiled_model, vocab,
                                                                   prefill, args.repeats)
        except Exception as e:  # recorded, the rest of the report stands
            result["torch_compile_error"] = f"{type(e).__name__}: {e}"[:2000]
            log(f"torch.compile failed: {result['torch_compile_error']}")
    del model, compiled_model
    torch.cuda.empty_cache()
    progress()
    # Kiln's variants last: a run cut short still has every peer's numbers.
    def prefill_variant(key, env, prompt_logits=False):
        run, _ = kiln_bench(args.bundle, artifact, args.weights_dir, [1], [prefill], 1,
                            args.repeats, synthetic=False, env=env,
                            prompt_logits=prompt_logits)
        result["prefill"][key] = run["results"][0]["prefill_tokens_per_s"]
        progress()

    def decode_variant(key, bs, cs, env=None, path=artifact):
        run, _ = kiln_bench(args.bundle, path, args.weights_dir, bs, cs, args.steps,
                            args.repeats, synthetic=True, env=env)
        for r in run["results"]:
            kiln[(r["batch"], r["context"])][key] = r["decode_tokens_per_s"]
        progress()

    if "kiln_error" not in result:
        try:
            log("Kiln: prefill variants")
            # Every position's logits (the output head over all 2K rows, as
            # scoring needs and as the runs before 2026-12-06 timed).
            prefill_variant("kiln_prompt_logits_tokens_per_s", {}, prompt_logits=True)
            # The experts as one grouped library GEMM instead of one cuBLASLt
            # GEMM per expert: what the per-expert path gains.
            prefill_variant("kiln_grouped_experts_tokens_per_s",
                            {"KILN_EXPERT_GEMMS": "grouped"})
            # Every per-expert GEMM on the executor's one stream: what the
            # side streams gain.
            prefill_variant("kiln_one_stream_experts_tokens_per_s",
                            {"KILN_EXPERT_STREAMS": "0"})
            # Attention on the CUDA cores in fp32 instead of the tensor cores:
            # what the tensor-core attention gains.
            prefill_variant("kiln_cuda_core_attention_tokens_per_s",
                            {"KILN_MMA_ATTENTION": "off"})
            # Decode at the shortest context with every GEMM cuBLASLt does
            # not take as a GEMV: what the tensor-core GEMMs gain.
            log("Kiln: decode without the tensor-core GEMMs")
            decode_variant("decode_tokens_per_s_gemv", batches, contexts[:1],
                           {"KILN_MMA_GEMMS": "off"})
            # No cuBLASLt: the GEMMs of 16+ rows (every dense one at batch 32
            # and 128) on Kiln's tensor-core GEMMs too, one launch per gated
            # FFN and no bf16 conversions: which serves a decode batch better.
            log("Kiln: decode without cuBLASLt")
            decode_variant("decode_tokens_per_s_no_cublaslt", batches, contexts[:1],
                           {"KILN_CUBLASLT": "0"})
            # Batch 1 without programmatic dependent launch: what overlapping
            # each kernel's launch with the tail of the one before gains.
            log("Kiln: batch-1 decode without programmatic dependent launch")
            decode_variant("decode_tokens_per_s_no_pdl", [1], contexts, {"KILN_PDL": "off"})
            # Batch 1 with the MoE route launch back: what running the
            # grouped GEMVs in selection order gains.
            log("Kiln: batch-1 decode with the MoE route launch")
            decode_variant("decode_tokens_per_s_routed", [1], contexts[:1],
                           {"KILN_MOE_SELECTIONS": "off"})
            # Batch 1 without the GEMMs' and attention's prefetch: what
            # asking the L2 for weights and cache rows while the kernel
            # before finishes gains.
            log("Kiln: batch-1 decode without the L2 prefetch")
            decode_variant("decode_tokens_per_s_no_prefetch", [1], contexts[:1],
                           {"KILN_PREFETCH": "off"})
            # Batch 1 compiled without kiln-fuse-gated-linear,
            # kiln-fold-head-slices, kiln-group-linears and kiln-fuse's
            # horizontal merge: what their saved launches gain.
            unfused_name = manifest["v2lite"].get("unfused_artifact")
            if unfused_name:
                log("Kiln: batch-1 decode without the gated GEMMs, folded slices, "
                    "linear groups and merged fused kernels")
                decode_variant("decode_tokens_per_s_unfused", [1], contexts,
                               path=os.path.join(args.bundle, "artifacts", unfused_name))
            # The same model with a bf16 latent cache (HF's bf16 model caches
            # in bf16 too): half the f32 cache's bytes at every batch and
            # context.
            bf16_cache_name = manifest["v2lite"].get("bf16_cache_artifact")
            if bf16_cache_name:
                log("Kiln: decode with a bf16 latent cache")
                decode_variant("decode_tokens_per_s_bf16_cache", batches, contexts,
                               path=os.path.join(args.bundle, "artifacts", bf16_cache_name))
        except RuntimeError as e:
            result["kiln_variant_error"] = str(e)
            log(f"Kiln variant failed: {e}")
    print(progress())


if __name__ == "__main__":
    main()
