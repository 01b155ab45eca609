#!/usr/bin/env python3
"""Kiln on the GPU against Hugging Face transformers on the same GPU.

Runs on the GPU machine from the repository root (scripts/gpu-check.sh calls
it), with the bundle scripts/gpu-prepare.sh made (gpu-bundle/: kiln-run, the
artifacts compiled with --target=cpu,sm_90a, a manifest):

  * every tiny golden model (tests/golden/<name>, tracked files): for each
    of the prompts recorded in its golden.json, HF (float32, eager, on the
    GPU) against `kiln-run run --device cuda`: the prompt's logits at every
    position and 8 greedy decode steps;
  * the 4-layer model with DeepSeek-V2-Lite's dimensions: its checkpoint is
    written here (bench/gpu_common.py, bf16) and read by both; HF computes
    in float32 on the bf16 weights, as Kiln does; also compiled with a bf16
    latent cache (--kv-cache-dtype=bf16), held to the bf16 bound below.

Tolerances. Where both sides compute in fp32 on the same weights the logits
differ by summation order only; the bound is a fraction of the row's
largest logit: 1e-3 for the tiny models, 2e-3 for the V2-Lite model (sums
over 2048-10944 terms), far inside bf16's resolution (2^-8 = 3.9e-3
relative). GEMMs with bf16 weights run on cuBLASLt (16 rows or more) or on
the tensor-core GEMM (2 rows or more per matrix) with activations rounded
to bf16, and such models' prefill attention on the tensor cores in bf16,
which moves the logits as far as bf16 arithmetic does (routing near-ties
amplify it); so for models with bf16 weights the bound is twice the
distance between HF's own bf16 and fp32 runs, and the same prompts also
run with KILN_CUBLASLT=0 KILN_MMA_GEMMS=off KILN_MMA_ATTENTION=off (all in
fp32) against the fp32 bound. Greedy tokens must agree
at every decode step where HF's top-2 margin exceeds twice the measured
logit difference (a smaller margin is a tie the error may flip; such steps
are reported, not failed).

Prints one JSON object (also written to --out); exit status 1 if any check
fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_common  # noqa: E402

DECODE_STEPS = 8
# A hung kernel fails its prompt instead of the whole check.
KILN_TIMEOUT_S = 120


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def kiln_run(bundle, artifact, tokens, device, tmp, weights_dir=None, env=None):
    """Kiln's prompt logits [L, V], greedy tokens [S] and step logits [S, V]."""
    from safetensors.numpy import load_file

    dump = os.path.join(tmp, "logits.safetensors")
    argv = [os.path.join(bundle, "bin", "kiln-run"), "run", artifact, "--device", device,
            "--tokens", ",".join(map(str, tokens)), "--max-new-tokens", str(DECODE_STEPS),
            "--temperature", "0", "--dump-logits", dump]
    if weights_dir:
        argv += ["--weights-dir", weights_dir]
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=KILN_TIMEOUT_S, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"kiln-run did not finish in {KILN_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"kiln-run failed: {proc.stderr[-2000:]}")
    t = load_file(dump)
    return t["prompt.logits"], t["tokens"], t.get("generate.logits"), proc.stderr.strip()


def hf_run(model, tokens, kiln_tokens):
    """HF's prompt logits, then logits of the decode steps teacher-forced with
    Kiln's tokens (so that both see the same sequence), and HF's own greedy
    choice at each step."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([tokens], device=device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        prompt = out.logits[0].float().cpu().numpy()
        cache = out.past_key_values
        steps = [prompt[-1]]
        for i, token in enumerate(kiln_tokens[:-1]):
            pos = torch.tensor([len(tokens) + i], device=device)
            out = model(input_ids=torch.tensor([[int(token)]], device=device),
                        past_key_values=cache, use_cache=True, cache_position=pos)
            cache = out.past_key_values
            steps.append(out.logits[0, -1].float().cpu().numpy())
    return prompt, steps


def compare(name, hf_prompt, hf_steps, k_prompt, k_tokens, k_steps, tolerance):
    import numpy as np

    scale = float(np.abs(hf_prompt).max())
    prompt_err = float(np.abs(hf_prompt - k_prompt).max()) / scale
    # Kiln's step logits: the distribution each greedy token was taken from
    # (step 0 is the prompt's last position).
    steps = list(k_steps)
    step_err = max(float(np.abs(h - k).max()) / float(np.abs(h).max())
                   for h, k in zip(hf_steps, steps))
    flips, ties = [], []
    for i, (h, token) in enumerate(zip(hf_steps, k_tokens)):
        order = np.argsort(h)[::-1]
        margin = float(h[order[0]] - h[order[1]])
        if int(order[0]) != int(token):
            diff = float(np.abs(h - steps[i]).max())
            (ties if margin <= 2 * diff else flips).append(
                {"step": i, "hf": int(order[0]), "kiln": int(token), "margin": margin})
    ok = prompt_err <= tolerance and step_err <= tolerance and not flips
    return {"model": name, "ok": ok, "prompt_max_rel_err": prompt_err,
            "steps_max_rel_err": step_err, "tolerance": tolerance,
            "token_flips": flips, "near_ties": ties}


def check_prompt(name, model, bundle, artifact, tokens, kiln_device, tmp, tolerance,
                 weights_dir=None, env=None, bf16_model=None):
    """One prompt's comparison; a Kiln failure is recorded (the other models
    still run). With `bf16_model` (the same weights computing in bf16), the
    tolerance is at least twice the distance of HF's own bf16 run from its
    fp32 run: Kiln's bf16-activation GEMMs (cuBLASLt) may differ from the
    fp32 reference by what bf16 arithmetic does, no more."""
    try:
        k_prompt, k_tokens, k_steps, where = kiln_run(bundle, artifact, tokens, kiln_device,
                                                      tmp, weights_dir, env)
    except RuntimeError as e:
        log(f"{name}: FAILED ({e})")
        return {"model": name, "ok": False, "error": str(e)}
    hf_prompt, hf_steps = hf_run(model, tokens, k_tokens)
    bf16_err = None
    if bf16_model is not None:
        b_prompt, b_steps = hf_run(bf16_model, tokens, k_tokens)
        bf16 = compare(name, hf_prompt, hf_steps, b_prompt, k_tokens, b_steps, 0)
        bf16_err = max(bf16["prompt_max_rel_err"], bf16["steps_max_rel_err"])
        tolerance = max(tolerance, 2 * bf16_err)
    r = compare(name, hf_prompt, hf_steps, k_prompt, k_tokens, k_steps, tolerance)
    r["hf_bf16_max_rel_err"] = bf16_err
    r["device"] = where
    log(f"{name}: {'ok' if r['ok'] else 'FAILED'} "
        f"(prompt {r['prompt_max_rel_err']:.2e}, steps {r['steps_max_rel_err']:.2e})")
    return r


REPORT_PATH = None
# Every GEMM and attention in Kiln's own kernels with fp32 activations.
FP32_GEMMS = {"KILN_CUBLASLT": "0", "KILN_MMA_GEMMS": "off", "KILN_MMA_ATTENTION": "off"}


def report(results):
    """The report so far: printed at the end, and rewritten to --out after
    every prompt so that a run cut short still leaves its results."""
    return gpu_common.write_json(REPORT_PATH,
                                 {"ok": all(r["ok"] for r in results), "results": results})


def check_tiny(bundle, manifest, tmp, kiln_device, torch_device, results):
    import torch
    from transformers import AutoModelForCausalLM

    for name in manifest["tiny"]:
        model_dir = os.path.join(ROOT, "tests", "golden", name)
        artifact = os.path.join(bundle, "artifacts", f"{name}.kiln")
        # The bf16 copies share their f32 sibling's prompts.
        golden = os.path.join(ROOT, "tests", "golden", name.removesuffix("-bf16"))
        with open(os.path.join(golden, "golden.json")) as f:
            prompts = json.load(f)["prompts"]["tokens"]
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager").to(torch_device).eval()
        bf16_model = None
        if name.endswith("-bf16"):
            bf16_model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=torch.bfloat16,
                attn_implementation="eager").to(torch_device).eval()
        for p, tokens in enumerate(prompts):
            results.append(check_prompt(f"{name} prompt {p}", model, bundle, artifact, tokens,
                                        kiln_device, tmp, 1e-3, bf16_model=bf16_model))
            if bf16_model is not None:
                results.append(check_prompt(f"{name} prompt {p}, fp32 GEMMs", model, bundle,
                                            artifact, tokens, kiln_device, tmp, 1e-3,
                                            env=FP32_GEMMS))
            report(results)
        del model, bf16_model


def check_v2lite(bundle, manifest, tmp, weights_dir, kiln_device, torch_device, results):
    import torch
    from transformers import AutoModelForCausalLM

    gpu_common.write_v2lite_checkpoint(weights_dir, log=log)
    artifact = os.path.join(bundle, "artifacts", manifest["v2lite"]["artifact"])
    bf16_cache = manifest["v2lite"].get("bf16_cache_artifact")
    if bf16_cache:
        bf16_cache = os.path.join(bundle, "artifacts", bf16_cache)
    model = AutoModelForCausalLM.from_pretrained(
        weights_dir, dtype=torch.float32, attn_implementation="eager").to(torch_device).eval()
    import numpy as np

    bf16_model = AutoModelForCausalLM.from_pretrained(
        weights_dir, dtype=torch.bfloat16, attn_implementation="eager").to(torch_device).eval()
    rng = np.random.default_rng(7)
    for p, length in enumerate([5, 37, 300]):
        tokens = [int(t) for t in rng.integers(0, model.config.vocab_size, size=length)]
        # bf16 activations in cuBLASLt's and the tensor-core GEMMs; the
        # same steps with every GEMM in fp32 after.
        results.append(check_prompt(f"v2-lite-4layer prompt {p}", model, bundle, artifact,
                                    tokens, kiln_device, tmp, 2e-3, weights_dir,
                                    bf16_model=bf16_model))
        results.append(check_prompt(f"v2-lite-4layer prompt {p}, fp32 GEMMs", model, bundle,
                                    artifact, tokens, kiln_device, tmp, 2e-3, weights_dir,
                                    env=FP32_GEMMS))
        # The bf16 latent cache rounds what HF's bf16 run rounds too: the
        # same bound as the bf16-activation GEMMs.
        if bf16_cache:
            results.append(check_prompt(f"v2-lite-4layer prompt {p}, bf16 latent cache",
                                        model, bundle, bf16_cache, tokens, kiln_device, tmp,
                                        2e-3, weights_dir, bf16_model=bf16_model))
        report(results)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=os.path.join(ROOT, "gpu-bundle"))
    parser.add_argument("--weights-dir", default=os.path.join(ROOT, "gpu-work", "v2lite4"),
                        help="where the V2-Lite checkpoint is written (not carried)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-v2lite", action="store_true")
    # A smoke test of this script without a GPU: --kiln-device emulated
    # --torch-device cpu.
    parser.add_argument("--kiln-device", default="cuda")
    parser.add_argument("--torch-device", default="cuda")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    global REPORT_PATH
    REPORT_PATH = args.out
    manifest = gpu_common.read_manifest(args.bundle)
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        if not args.skip_tiny:
            check_tiny(args.bundle, manifest, tmp, args.kiln_device, args.torch_device, results)
        if not args.skip_v2lite and manifest.get("v2lite"):
            check_v2lite(args.bundle, manifest, tmp, args.weights_dir, args.kiln_device,
                         args.torch_device, results)
    print(report(results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
