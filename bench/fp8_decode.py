#!/usr/bin/env python3
"""CPU decode throughput with bf16 vs FP8 weights on a DeepSeek-V2-Lite slice.

A 2-layer slice with DeepSeek-V2-Lite dimensions (layer 0 dense, layer 1 MoE
with 64 experts top-6 + 2 shared; hidden 2048, vocab 102400) with seeded
random bf16 weights is compiled twice with external weights: as is, and with
`--quantize=fp8` (e4m3 with 128x128 block scales, quantized at load; the
embedding, output head, router and norms stay bf16 by policy). `kiln bench`
times decode at batch 1 and 8 in the same run. The weight bytes a decode
step reads are computed from the config: every dense matrix once, the
routed experts a step selects (top-6 per token; for batch b the expected
number of distinct experts under uniform routing, 64 * (1 - (1 - 6/64)^b)),
and one embedding row per token. Prints one JSON object.

    python3 bench/fp8_decode.py [--build build] [--context 128]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv, **kw):
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(argv, check=True, text=True, capture_output=True,
                          **kw).stdout


def weight_bytes_per_step(c, batch, fp8):
    """Weight bytes one decode step of `batch` sequences reads."""
    quantized = (1 + 4 / (128 * 128)) if fp8 else 2  # bytes per element
    h, heads = c["hidden_size"], c["num_attention_heads"]
    nope, rope, v = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    kvr = c["kv_lora_rank"]
    attention = (heads * (nope + rope) * h  # q_proj (no q_lora in V2-Lite)
                 + (kvr + rope) * h  # kv_a_proj_with_mqa
                 + heads * (nope + v) * kvr  # W_UK and W_UV out of kv_b_proj
                 + h * heads * v)  # o_proj
    dense = 3 * h * c["intermediate_size"]
    moe_inter = c["moe_intermediate_size"]
    expert = 3 * h * moe_inter
    shared = 3 * h * moe_inter * c["n_shared_experts"]
    experts, top_k = c["n_routed_experts"], c["num_experts_per_tok"]
    distinct = experts * (1 - (1 - top_k / experts) ** batch)
    layers = c["num_hidden_layers"]
    first_dense = c["first_k_dense_replace"]
    gemm = layers * attention + first_dense * dense + (layers - first_dense) * (
        shared + distinct * expert)
    bf16 = (2 * c["vocab_size"] * h  # output head
            + batch * 2 * h  # embedding rows
            + (layers - first_dense) * 2 * experts * h  # routers
            + layers * 2 * (2 * h + kvr))  # norms
    return gemm * quantized + bf16


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    kiln = os.path.join(args.build, "bin", "kiln")

    with open(os.path.join(ROOT, "models", "presets",
                           "deepseek-v2-lite.json")) as f:
        config = json.load(f)
    config["num_hidden_layers"] = 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        model = os.path.join(tmp, "model")
        run([kiln, "init-model", "--config", config_path, "--dtype", "BF16",
             "--seed", "1", "-o", model, "--max-bytes", str(8 << 30)])
        for name, flags in (("bf16", []), ("fp8", ["--quantize=fp8"])):
            artifact = os.path.join(tmp, name + ".kiln")
            run([kiln, "compile-model", model, "-o", artifact,
                 "--weights=external", "--max-batch", "8", "--max-context",
                 str(args.context + args.steps + 1), "--max-prefill",
                 str(args.context)] + flags)
            bench = json.loads(run([
                kiln, "bench", artifact, "--batch", "1,8", "--context",
                str(args.context), "--steps", str(args.steps), "--repeats",
                str(args.repeats)]))
            results[name] = {p["batch"]: p for p in bench["results"]}
            threads = bench["threads"]

    table = []
    for batch in (1, 8):
        row = {"batch": batch}
        for name in ("bf16", "fp8"):
            point = results[name][batch]
            step_bytes = weight_bytes_per_step(config, batch, name == "fp8")
            row[name] = {
                "decode_tokens_per_s": round(point["decode_tokens_per_s"], 2),
                "decode_step_ms": round(point["decode_step_ms"], 3),
                "weight_bytes_per_step": int(step_bytes),
                "weight_bytes_per_token": int(step_bytes / batch),
                "weight_gb_per_s": round(
                    step_bytes / point["decode_step_ms"] / 1e6, 2),
            }
        row["fp8_speedup"] = round(
            row["fp8"]["decode_tokens_per_s"] /
            row["bf16"]["decode_tokens_per_s"], 3)
        table.append(row)
    print(json.dumps({
        "benchmark": "CPU decode, 2-layer DeepSeek-V2-Lite slice, bf16 vs "
                     "FP8 weights (e4m3, 128x128 block scales)",
        "threads": threads,
        "context": args.context,
        "results": table,
    }, indent=2))


if __name__ == "__main__":
    main()
