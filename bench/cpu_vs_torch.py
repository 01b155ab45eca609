#!/usr/bin/env python3
"""Kiln's CPU runtime vs. PyTorch eager (HF transformers) on the same machine.

For each model (the tiny DeepSeek-V3 preset, and a 2-layer slice of
DeepSeek-V2-Lite with the real dimensions) this script
  1. builds the HF model from the config (float32, seeded random weights scaled
     so that no NaN/inf appears) and saves it with save_pretrained into a
     temporary directory (float32 safetensors);
  2. times HF transformers in eager mode (attn_implementation="eager",
     torch.inference_mode(), torch.set_num_threads(threads)):
       prefill: one forward over [batch, context] with use_cache=True
                (a fresh DynamicCache), the last position's logits
                (logits_to_keep=1, as generation and Kiln's bench do);
       decode:  `steps` single-token forwards with past_key_values, one token
                per sequence per step (equal-length prompts: no padding);
     one warm-up run per batch size, then the best of `repeats` runs;
  3. records HF's prefill logits for a sanity prompt, frees the HF model;
  4. compiles the checkpoint with `kiln compile-model` and runs `kiln bench`
     with OMP_NUM_THREADS=threads (repeats + 1 runs, best-of: the extra run is
     the warm-up), and checks that Kiln's prompt logits have the same argmax
     as HF's (the tiny model; optional for the slice);
and prints ONE JSON object: machine info, per model and batch Kiln's and
PyTorch's tokens/s for decode and prefill and the ratio kiln/torch, and the
`targets` section (decode >= 2x PyTorch on the small model, >= 1x on the
V2-Lite slice; prefill >= 1x on both). Progress goes to stderr.

    python3 bench/cpu_vs_torch.py                    # full: batch 1,8, context 128, 32 steps, best of 3
    python3 bench/cpu_vs_torch.py --quick            # smoke test: context 32, 8 steps, best of 1
    python3 bench/cpu_vs_torch.py --models tiny --threads 1 -o result.json
"""
import argparse
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = os.path.join(ROOT, "models", "presets")

# name -> (preset file, overrides, decode target, prefill target, check argmax by default)
MODELS = {
    "tiny-deepseek-v3": ("tiny-deepseek-v3.json", {}, 2.0, 1.0, True),
    "deepseek-v2-lite-2layer": ("deepseek-v2-lite.json", {"num_hidden_layers": 2}, 1.0, 1.0, False),
}
ALIASES = {"tiny": "tiny-deepseek-v3", "v2lite": "deepseek-v2-lite-2layer"}

SEED = 0
PROMPT_SEED = 1234


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def mem_total_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


class CpuWatch:
    """CPU time the rest of the machine used while we measured: busy time from /proc/stat
    minus this process's and its finished children's CPU time. Other engineers' builds or
    fuzzers on a 2-core machine skew every number; this says how much."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._snap()

    def _snap(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v[:8]) - v[3] - v[4]) / self.hz  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system

    def stop(self):
        w0, b0, o0 = self.start
        w1, b1, o1 = self._snap()
        wall = w1 - w0
        other = max(0.0, (b1 - b0) - (o1 - o0))
        return {"wall_s": round(wall, 1), "other_processes_cpu_s": round(other, 1),
                "other_processes_cores": round(other / wall, 2) if wall > 0 else None}


QUIET = {"max_wait_s": 0.0, "waited_s": 0.0, "gave_up": 0}


def wait_quiet(what):
    """Waits (up to QUIET["max_wait_s"]) until other processes use under 0.15 cores over 1 s."""
    if QUIET["max_wait_s"] <= 0:
        return
    hz = os.sysconf("SC_CLK_TCK")

    def busy():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        t = os.times()
        return (sum(v[:8]) - v[3] - v[4]) / hz - (t.user + t.system)

    start = time.perf_counter()
    said = False
    while True:
        b0 = busy()
        time.sleep(1.0)
        load = busy() - b0
        waited = time.perf_counter() - start
        if load < 0.15:
            break
        if waited > QUIET["max_wait_s"]:
            QUIET["gave_up"] += 1
            log(f"  machine still busy ({load:.2f} cores) after {waited:.0f} s; timing {what} anyway")
            break
        if not said:
            log(f"  other processes use {load:.2f} cores; waiting for a quiet machine before {what}")
            said = True
    QUIET["waited_s"] += time.perf_counter() - start


# ---------------------------------------------------------------------------
# The HF model
# ---------------------------------------------------------------------------


def load_config(preset, overrides):
    from transformers import AutoConfig

    with open(os.path.join(PRESETS, preset)) as f:
        d = json.load(f)
    d.update(overrides)
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)


def build_model(config, experts_impl, device="cpu"):
    """HF model from config, float32, with seeded weights scaled to keep activations O(1):
    norms 1, biases 0, embeddings N(0, 1), every matrix (and stacked experts) N(0, 1/fan_in)
    (so N(0, 0.022^2) at hidden 2048), lm_head N(0, 1/hidden). The values depend on
    `device` (its generator); a GPU initializes a large model in seconds."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    if experts_impl != "default":
        kwargs["experts_implementation"] = experts_impl
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.eval()
    gen = torch.Generator(device=device).manual_seed(SEED + 1)
    tensors = dict(model.named_parameters())
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            tensors[name] = buf
    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name]
            if name.endswith("norm.weight"):
                t.fill_(1.0)
            elif name.endswith(".bias") or name.endswith("e_score_correction_bias"):
                t.zero_()
            elif name.endswith("embed_tokens.weight"):
                t.normal_(0.0, 1.0, generator=gen)
            elif t.dim() >= 2:
                t.normal_(0.0, 1.0 / math.sqrt(t.shape[-1]), generator=gen)
            else:
                raise RuntimeError(f"no init rule for {name} {tuple(t.shape)}")
    return model


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def hf_prefill(model, ids, logits_to_keep=0):
    """logits_to_keep: 0 every position's logits, 1 the last's."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                logits_to_keep=logits_to_keep)
    return out.logits, out.past_key_values


def hf_run(model, prompts, decode_tokens):
    """One prefill of `prompts` [B, C], then one decode step per column of decode_tokens [B, S].
    Returns (prefill seconds, decode seconds, the prefill's last logits)."""
    import torch

    length = prompts.shape[1]
    t0 = time.perf_counter()
    logits, cache = hf_prefill(model, prompts, logits_to_keep=1)
    t1 = time.perf_counter()
    for step in range(decode_tokens.shape[1]):
        pos = torch.tensor([length + step])
        out = model(input_ids=decode_tokens[:, step:step + 1], past_key_values=cache,
                    use_cache=True, cache_position=pos)
        cache = out.past_key_values
        # touch the logits as Kiln's decode produces them
        _ = out.logits
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, logits


def bench_hf(model, vocab, batches, context, steps, repeats):
    """Returns ({batch: results}, machine load over the timed runs only)."""
    import torch

    results = {}
    wall = other = 0.0
    gen = np.random.default_rng(PROMPT_SEED)
    for batch in batches:
        prompts = torch.from_numpy(gen.integers(0, vocab, size=(batch, context))).long()
        decode_tokens = torch.from_numpy(gen.integers(0, vocab, size=(batch, steps))).long()
        wait_quiet(f"torch batch {batch}")
        watch = CpuWatch()
        log(f"  torch batch {batch}: warm-up")
        hf_run(model, prompts, decode_tokens)
        best_p, best_d = math.inf, math.inf
        for r in range(repeats):
            p, d, _ = hf_run(model, prompts, decode_tokens)
            best_p, best_d = min(best_p, p), min(best_d, d)
            log(f"  torch batch {batch} run {r + 1}/{repeats}: prefill {p:.3f} s, "
                f"decode {d:.3f} s ({1e3 * d / steps:.1f} ms/step)")
        load = watch.stop()
        wall += load["wall_s"]
        other += load["other_processes_cpu_s"]
        results[batch] = {
            "prefill_tokens_per_s": batch * context / best_p,
            "decode_tokens_per_s": batch * steps / best_d,
            "decode_step_ms": 1e3 * best_d / steps,
            "prefill_s": best_p,
        }
    load = {"wall_s": round(wall, 1), "other_processes_cpu_s": round(other, 1),
            "other_processes_cores": round(other / wall, 2) if wall > 0 else None}
    return results, load


# ---------------------------------------------------------------------------
# Kiln
# ---------------------------------------------------------------------------


def run_kiln(argv, env, what):
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise RuntimeError(f"{what} failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return proc.stdout, time.perf_counter() - t0


def kiln_prompt_logits(kiln, artifact, tokens, env, tmp):
    """Kiln's logits [L, V] of every position of one prompt (kiln run --dump-logits)."""
    from safetensors.numpy import load_file

    dump = os.path.join(tmp, "kiln_logits.safetensors")
    run_kiln([kiln, "run", artifact, "--tokens", ",".join(map(str, tokens)),
              "--max-new-tokens", "1", "--dump-logits", dump], env, "kiln run")
    logits = load_file(dump)["prompt.logits"]
    os.remove(dump)
    return logits


# ---------------------------------------------------------------------------


def ratio(a, b):
    return round(a / b, 3) if b > 0 else None


def measure(kiln, work, preset, overrides, batches, context, steps, repeats, threads, check,
            experts_impl_req):
    """Builds, saves, times (torch, then Kiln) one model; returns a dict of raw results."""
    import torch

    os.makedirs(work, exist_ok=True)
    ckpt = os.path.join(work, "hf")
    config = load_config(preset, overrides)
    t0 = time.perf_counter()
    model = build_model(config, experts_impl_req)
    params = n_params(model)
    experts_impl = getattr(model.config, "_experts_implementation", None)
    log(f"  built HF model: {params / 1e9:.3f} B parameters in {time.perf_counter() - t0:.1f} s "
        f"(experts_implementation={experts_impl})")
    t0 = time.perf_counter()
    model.save_pretrained(ckpt)
    log(f"  save_pretrained: {time.perf_counter() - t0:.1f} s")
    vocab = config.vocab_size

    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            sanity_tokens = None
            if check:
                rng = np.random.default_rng(PROMPT_SEED + 7)
                sanity_tokens = rng.integers(0, vocab, size=context).tolist()
                ref, _ = hf_prefill(model, torch.tensor([sanity_tokens]))
                ref = ref[0].float().numpy().copy()
                if not np.isfinite(ref).all():
                    raise RuntimeError("HF logits are not finite")
            log(f"  timing torch (threads={torch.get_num_threads()})")
            torch_res, torch_load = bench_hf(model, vocab, batches, context, steps, repeats)
            log(f"  torch timing: {torch_load}")
    finally:
        torch.set_num_threads(saved_threads)
    # Free the HF model (4.4 GB for the V2-Lite slice) before Kiln maps its artifact.
    del model
    gc.collect()

    kiln_env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    artifact = os.path.join(work, "model.kiln")
    argv = [kiln, "compile-model", ckpt, "-o", artifact, "--max-batch", str(max(batches)),
            "--max-context", str(context + steps + 1), "--max-prefill", str(context)]
    log("  " + " ".join(argv))
    _, compile_s = run_kiln(argv, kiln_env, "kiln compile-model")
    artifact_bytes = os.path.getsize(artifact)
    log(f"  compiled in {compile_s:.1f} s ({artifact_bytes / 2**20:.0f} MiB)")
    # The checkpoint is no longer needed once the weights are embedded.
    shutil.rmtree(ckpt, ignore_errors=True)

    sanity = None
    if check:
        got = kiln_prompt_logits(kiln, artifact, sanity_tokens, kiln_env, work)
        ref_arg, got_arg = ref.argmax(-1), got.argmax(-1)
        top2 = np.sort(ref[-1])[-2:]
        sanity = {
            "prompt_tokens": len(sanity_tokens),
            "last_argmax_torch": int(ref_arg[-1]),
            "last_argmax_kiln": int(got_arg[-1]),
            "last_argmax_match": bool(ref_arg[-1] == got_arg[-1]),
            "positions_argmax_match": f"{int((ref_arg == got_arg).sum())}/{len(ref_arg)}",
            "max_abs_logit_diff": float(np.abs(ref - got).max()),
            "max_abs_logit": float(np.abs(ref).max()),
            "last_top2_margin_torch": float(top2[1] - top2[0]),
        }
        log(f"  argmax check: {sanity}")
        if not sanity["last_argmax_match"]:
            log("  WARNING: Kiln and HF disagree on the last prefill logits' argmax")

    argv = [kiln, "bench", artifact, "--batch", ",".join(map(str, batches)),
            "--context", str(context), "--steps", str(steps), "--repeats", str(repeats + 1)]
    wait_quiet("kiln bench")
    log(f"  OMP_NUM_THREADS={threads} " + " ".join(argv))
    watch = CpuWatch()
    out, bench_s = run_kiln(argv, kiln_env, "kiln bench")
    kiln_load = watch.stop()
    log(f"  kiln timing: {kiln_load}")
    kres = json.loads(out)
    if kres.get("threads") != threads:
        log(f"  WARNING: kiln ran with {kres.get('threads')} threads, torch with {threads}")
    os.remove(artifact)
    return {
        "params": params, "experts_impl": experts_impl, "compile_s": compile_s,
        "artifact_bytes": artifact_bytes, "sanity": sanity, "torch": torch_res,
        "kiln": {r["batch"]: r for r in kres["results"] if r["context"] == context},
        "kiln_threads": kres.get("threads"), "load": {"torch": torch_load, "kiln": kiln_load},
    }


def compare(res, batches):
    table = {}
    for batch in batches:
        k, t = res["kiln"][batch], res["torch"][batch]
        table[str(batch)] = {
            "decode": {
                "kiln_tokens_per_s": round(k["decode_tokens_per_s"], 2),
                "torch_tokens_per_s": round(t["decode_tokens_per_s"], 2),
                "kiln_step_ms": round(k["decode_step_ms"], 3),
                "torch_step_ms": round(t["decode_step_ms"], 3),
                "ratio": ratio(k["decode_tokens_per_s"], t["decode_tokens_per_s"]),
            },
            "prefill": {
                "kiln_tokens_per_s": round(k["prefill_tokens_per_s"], 2),
                "torch_tokens_per_s": round(t["prefill_tokens_per_s"], 2),
                "ratio": ratio(k["prefill_tokens_per_s"], t["prefill_tokens_per_s"]),
            },
        }
    return table


def breakdown(kiln, tmp_root, name, batches, context, steps, repeats, threads, experts_impl_req):
    """Per-layer cost by slicing: the same model with 1, 2, ... N layers (same seed), timed on
    both, so layer k's cost is t(k+1 layers) - t(k layers); plus the full model on 1 thread."""
    preset, overrides, *_ = MODELS[name]
    config = load_config(preset, overrides)
    n = config.num_hidden_layers
    dense = getattr(config, "first_k_dense_replace", 0) or 0
    out = {"model": name, "repeats": repeats, "how": (
        "prefill ms for batch*context tokens and decode ms per step, with the model cut to its first "
        "L layers; 'layers 1' = embedding + layer 0 + final norm + lm_head, then each row is the "
        "added cost of one more layer (difference of two runs, so noisy at the 0.1 ms level)"),
        "prefill_ms": {}, "decode_step_ms": {}, "one_thread": None}
    runs = []
    for layers in range(1, n + 1):
        log(f"== breakdown {name}: {layers} layer(s)")
        runs.append(measure(kiln, os.path.join(tmp_root, f"{name}-L{layers}"), preset,
                            dict(overrides, num_hidden_layers=layers), batches, context, steps,
                            repeats, threads, False, experts_impl_req))
    for batch in batches:
        pre, dec = {}, {}
        prev = None
        for layers, r in enumerate(runs, 1):
            cur = {
                "kiln_p": 1e3 * batch * context / r["kiln"][batch]["prefill_tokens_per_s"],
                "torch_p": 1e3 * batch * context / r["torch"][batch]["prefill_tokens_per_s"],
                "kiln_d": r["kiln"][batch]["decode_step_ms"],
                "torch_d": r["torch"][batch]["decode_step_ms"],
            }
            if prev is None:
                label = "layers 1 (embed + layer 0 " + ("dense" if dense > 0 else "MoE") + " + head)"
                delta = cur
            else:
                label = f"+ layer {layers - 1} (" + ("dense" if layers - 1 < dense else "MoE") + ")"
                delta = {k: cur[k] - prev[k] for k in cur}
            pre[label] = {"kiln": round(delta["kiln_p"], 3), "torch": round(delta["torch_p"], 3)}
            dec[label] = {"kiln": round(delta["kiln_d"], 3), "torch": round(delta["torch_d"], 3)}
            prev = cur
        out["prefill_ms"][f"batch {batch}"] = pre
        out["decode_step_ms"][f"batch {batch}"] = dec
    if threads != 1:
        log(f"== breakdown {name}: full model on 1 thread")
        one = measure(kiln, os.path.join(tmp_root, f"{name}-1thread"), preset, overrides, batches,
                      context, steps, repeats, 1, False, experts_impl_req)
        out["one_thread"] = {"note": f"the full model with 1 thread instead of {threads}",
                             "batches": compare(one, batches)}
        out["one_thread"]["vs_threads"] = {
            f"batch {b}": {
                f"kiln_prefill_speedup_{threads}_threads": ratio(
                    runs[-1]["kiln"][b]["prefill_tokens_per_s"], one["kiln"][b]["prefill_tokens_per_s"]),
                f"torch_prefill_speedup_{threads}_threads": ratio(
                    runs[-1]["torch"][b]["prefill_tokens_per_s"], one["torch"][b]["prefill_tokens_per_s"]),
                f"kiln_decode_speedup_{threads}_threads": ratio(
                    runs[-1]["kiln"][b]["decode_tokens_per_s"], one["kiln"][b]["decode_tokens_per_s"]),
                f"torch_decode_speedup_{threads}_threads": ratio(
                    runs[-1]["torch"][b]["decode_tokens_per_s"], one["torch"][b]["decode_tokens_per_s"]),
            } for b in batches}
    loads = [r["load"] for r in runs]
    out["max_other_processes_cores"] = max(
        (l[w]["other_processes_cores"] or 0) for l in loads for w in l)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"), help="Kiln build directory")
    parser.add_argument("--models", default="tiny-deepseek-v3,deepseek-v2-lite-2layer",
                        help="comma-separated: " + ", ".join(MODELS) + " (or tiny, v2lite)")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--context", type=int, default=None, help="prompt tokens per sequence (default 128)")
    parser.add_argument("--steps", type=int, default=None, help="decode steps timed (default 32)")
    parser.add_argument("--repeats", type=int, default=None, help="best of this many runs (default 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both (default: $OMP_NUM_THREADS, else os.cpu_count())")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: context 32, 8 steps, 1 repeat (unless given explicitly)")
    parser.add_argument("--experts-implementation", default="default",
                        help="HF experts_implementation (default: HF's own choice, recorded in the output)")
    parser.add_argument("--check-argmax", choices=["auto", "all", "none"], default="auto",
                        help="compare Kiln's and HF's prompt-logit argmax: auto = the tiny model only")
    parser.add_argument("--breakdown-repeats", type=int, default=10,
                        help="best-of count of the tiny model's per-layer breakdown (0: skip it)")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="before each timing, wait up to this many seconds for other processes "
                             "to go idle (0: don't)")
    parser.add_argument("--keep", default=None, help="work in this directory and keep it")
    parser.add_argument("-o", "--output", default=None, help="also write the JSON here")
    args = parser.parse_args()

    context = args.context or (32 if args.quick else 128)
    steps = args.steps or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 3)
    batches = [int(b) for b in args.batch.split(",")]
    QUIET["max_wait_s"] = args.wait_quiet
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count()
    models = [ALIASES.get(m, m) for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m}")
    kiln = os.path.join(args.build, "bin", "kiln")
    if not os.access(kiln, os.X_OK):
        sys.exit(f"no kiln binary at {kiln}; build it with ninja -C build kiln")

    # Threads: the same count for both. Set before torch starts its pool.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch
    import transformers

    torch.set_num_threads(threads)

    t_start = time.perf_counter()
    git_rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    report = {
        "benchmark": "kiln cpu runtime vs pytorch eager (hf transformers)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python3", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:]),
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "logical_cpus": os.cpu_count(),
            "memory_gb": mem_total_gb(),
            "threads": threads,
            "torch": torch.__version__,
            "torch_num_threads": torch.get_num_threads(),
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "kiln_git": git_rev,
        },
        "settings": {
            "batches": batches, "context": context, "decode_steps": steps, "repeats": repeats,
            "quick": args.quick, "dtype": "float32",
            "torch": "HF eager: attn_implementation=eager, inference_mode, DynamicCache, "
                     "one warm-up run then best of repeats; prefill computes the last "
                     "position's logits (logits_to_keep=1, as generate does)",
            "kiln": "kiln bench with repeats+1 runs (best-of; the extra run is the warm-up); "
                    "prefill computes each sequence's last logits (no --prompt-logits)",
        },
        "models": {},
        "targets": {},
    }

    # SIGTERM runs the cleanup below, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp_root = args.keep or tempfile.mkdtemp(prefix="kiln_vs_torch_")
    os.makedirs(tmp_root, exist_ok=True)
    try:
        for name in models:
            preset, overrides, decode_goal, prefill_goal, check_default = MODELS[name]
            log(f"== {name}")
            check = args.check_argmax == "all" or (args.check_argmax == "auto" and check_default)
            res = measure(kiln, os.path.join(tmp_root, name), preset, overrides, batches, context,
                          steps, repeats, threads, check, args.experts_implementation)
            entry = {
                "config": preset + (f" with {overrides}" if overrides else ""),
                "parameters": res["params"],
                "torch_experts_implementation": res["experts_impl"],
                "kiln_threads": res["kiln_threads"],
                "kiln_compile_s": round(res["compile_s"], 2),
                "artifact_bytes": res["artifact_bytes"],
                "argmax_check": res["sanity"],
                "machine_load_during_timing": res["load"],
                "batches": compare(res, batches),
            }
            for batch in batches:
                for phase, goal in (("decode", decode_goal), ("prefill", prefill_goal)):
                    r = entry["batches"][str(batch)][phase]["ratio"]
                    report["targets"][f"{name} {phase} batch {batch}"] = {
                        "goal": f">= {goal:g}x torch", "ratio": r, "met": r is not None and r >= goal}
            report["models"][name] = entry
            log(f"  {name}: " + json.dumps(entry["batches"]))
        if args.breakdown_repeats > 0 and "tiny-deepseek-v3" in models:
            report["breakdown"] = breakdown(kiln, tmp_root, "tiny-deepseek-v3", batches, context, steps,
                                            args.breakdown_repeats, threads, args.experts_implementation)
    finally:
        if not args.keep:
            shutil.rmtree(tmp_root, ignore_errors=True)

    report["all_targets_met"] = all(t["met"] for t in report["targets"].values())
    sanity_ok = [m["argmax_check"]["last_argmax_match"] for m in report["models"].values() if m["argmax_check"]]
    report["argmax_checks_pass"] = all(sanity_ok) if sanity_ok else None
    busy = {f"{n} {w}": l["other_processes_cores"] for n, m in report["models"].items()
            for w, l in m["machine_load_during_timing"].items()
            if (l["other_processes_cores"] or 0) > 0.1}
    if busy:
        report["warning"] = ("other processes used CPU while timing (cores busy on average): "
                             + json.dumps(busy) + "; the numbers are skewed, rerun on a quiet machine")
        log("WARNING: " + report["warning"])
    report["quiet_wait"] = {"max_wait_s": QUIET["max_wait_s"], "waited_s": round(QUIET["waited_s"], 1),
                            "timed_while_busy": QUIET["gave_up"]}
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
