#!/usr/bin/env python3
"""Decode step time vs context length, absorbed vs naive MLA, on the CPU.

A 2-layer slice with DeepSeek-V2-Lite dimensions (layer 0 dense, layer 1
MoE; 16 heads, kv_lora 512, qk_rope 64, qk_nope 128, v 128) with seeded
random bf16 weights is compiled twice — `--mla=naive` (per-head K/V cache)
and `--mla=absorbed` (latent cache) — and `kiln bench --synthetic-context`
times batch-1 decode steps at each context. The script also asks the
compiler's cost model which form it would pick for decode at each context
(`--mla=auto`, read back from the IR) and reports the cache bytes each form
reads per step. Prints one JSON object.

    python3 bench/mla_context.py [--build build] [--contexts 1024,4096,16384,65536]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv, **kw):
    print("+ " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(argv, check=True, text=True, capture_output=True,
                          **kw).stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--contexts", default="1024,4096,16384,65536")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    kiln = os.path.join(args.build, "bin", "kiln")
    contexts = [int(c) for c in args.contexts.split(",")]
    max_context = max(contexts) + args.steps + 64

    with open(os.path.join(ROOT, "models", "presets",
                           "deepseek-v2-lite.json")) as f:
        config = json.load(f)
    config["num_hidden_layers"] = 2
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        model = os.path.join(tmp, "model")
        run([kiln, "init-model", "--config", config_path, "--dtype", "BF16",
             "--seed", "1", "-o", model, "--max-bytes", str(8 << 30)])

        results = {}
        for form in ("naive", "absorbed"):
            artifact = os.path.join(tmp, form + ".kiln")
            run([kiln, "compile-model", model, "-o", artifact,
                 "--weights=external", f"--mla={form}", "--max-batch", "1",
                 "--max-context", str(max_context), "--max-prefill", "64"])
            inspect = run([kiln, "inspect", artifact,
                           "--no-verify-weights"])
            per_token = int(re.search(r"kv cache: .*\((\d+) bytes\) per token",
                                      inspect).group(1))
            bench = json.loads(run([
                kiln, "bench", artifact, "--batch", "1", "--context",
                ",".join(map(str, contexts)), "--steps", str(args.steps),
                "--repeats", str(args.repeats), "--synthetic-context"]))
            results[form] = {
                "kv_cache_bytes_per_token": per_token,
                "points": {p["context"]: p for p in bench["results"]},
            }
            threads = bench["threads"]

        # The cost model's decode choice at each context: auto compiles a
        # decode entry that sees `context` cached positions on average when
        # the cache holds 2 * context.
        choices = {}
        for c in contexts:
            ir = run([kiln, "compile-model", config_path, "--no-mtp",
                      "--compile-to=optimize", "--max-batch", "1",
                      "--max-context", str(2 * c), "--max-prefill", "64"])
            decode = re.search(r'entry = "decode", mode = "(\w+)"', ir)
            choices[c] = decode.group(1) if decode else "absorbed"

    table = []
    for c in contexts:
        naive = results["naive"]["points"][c]
        absorbed = results["absorbed"]["points"][c]
        faster = ("absorbed" if absorbed["decode_step_ms"] <
                  naive["decode_step_ms"] else "naive")
        table.append({
            "context": c,
            "naive_step_ms": round(naive["decode_step_ms"], 3),
            "absorbed_step_ms": round(absorbed["decode_step_ms"], 3),
            "speedup": round(naive["decode_step_ms"] /
                             absorbed["decode_step_ms"], 2),
            "naive_cache_bytes_read": results["naive"]
            ["kv_cache_bytes_per_token"] * c,
            "absorbed_cache_bytes_read": results["absorbed"]
            ["kv_cache_bytes_per_token"] * c,
            "faster": faster,
            "cost_model_picks": choices[c],
            "cost_model_right": choices[c] == faster,
        })
    print(json.dumps({
        "benchmark": "decode step vs context, 2-layer DeepSeek-V2-Lite slice, "
                     "batch 1, bf16 weights, f32 cache",
        "threads": threads,
        "cache_bytes_per_token": {
            form: results[form]["kv_cache_bytes_per_token"]
            for form in results},
        "cache_bytes_ratio": round(
            results["naive"]["kv_cache_bytes_per_token"] /
            results["absorbed"]["kv_cache_bytes_per_token"], 2),
        "results": table,
    }, indent=2))


if __name__ == "__main__":
    main()
