#!/usr/bin/env python3
"""Time and memory of `kiln compile-model --emit=mlir` on the reference configs.

Compiles each shape-only config (no weights) several times, re-parses the
output with kiln-opt, and prints one JSON object: per model the best and
median wall time, the peak resident memory of the compiler process, the IR
size, and whether it met the target (under 10 s and 2 GB on the CI machine).

    python3 bench/compile_model.py [--build build] [--repeat 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = ["deepseek-v3", "deepseek-v2", "deepseek-v2-lite",
          "r1-distill-qwen-1.5b", "r1-distill-llama-8b"]
TARGET_SECONDS = 10.0
TARGET_BYTES = 2 << 30


def run_measured(argv):
    """Runs argv; returns (wall seconds, peak RSS bytes) of that process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(argv)}")
    return wall, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    kiln = os.path.join(args.build, "bin", "kiln")
    kiln_opt = os.path.join(args.build, "bin", "kiln-opt")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            config = os.path.join(root, "models", "presets", model + ".json")
            out = os.path.join(tmp, model + ".mlir")
            runs = [run_measured([kiln, "compile-model", config,
                                  "--emit=mlir", "-o", out])
                    for _ in range(args.repeat)]
            subprocess.run([kiln_opt, out, "-o", os.devnull], check=True)
            walls = [w for w, _ in runs]
            peak = max(r for _, r in runs)
            results[model] = {
                "wall_s_best": round(min(walls), 4),
                "wall_s_median": round(statistics.median(walls), 4),
                "peak_rss_bytes": peak,
                "ir_bytes": os.path.getsize(out),
                "reparses": True,
                "meets_target": max(walls) < TARGET_SECONDS and peak < TARGET_BYTES,
            }
    print(json.dumps({
        "benchmark": "compile-model --emit=mlir (shape-only)",
        "threads": os.cpu_count(),
        "repeat": args.repeat,
        "target": {"wall_s": TARGET_SECONDS, "peak_rss_bytes": TARGET_BYTES},
        "models": results,
    }, indent=2))


if __name__ == "__main__":
    main()
