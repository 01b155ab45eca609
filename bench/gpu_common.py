"""What the GPU check (tests/gpu/check_numerics.py), the GPU benchmark
(bench/gpu_vs_torch.py) and their preparation (scripts/gpu-prepare.sh) share.

The 4-layer model with DeepSeek-V2-Lite's dimensions is too big to carry to
the GPU machine (~4.4 GB in bf16), so both machines write it with
`write_v2lite_checkpoint`: the same HF model class, the same tensor names,
shapes and dtypes, one `model.safetensors`. The artifact compiled here with
`--weights external` then loads the copy written there (`--weights-dir`).
The values are seeded; they need not match across machines, because Kiln and
HF always read the same file.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

V2LITE_LAYERS = 4
# The artifact's bounds: decode batch 128 at 8K context (+ steps), prefill 2K.
V2LITE_MAX_BATCH = 128
V2LITE_MAX_CONTEXT = 8192 + 64
V2LITE_MAX_PREFILL = 2048
# Prefill one sequence at a time: the prefill arena scales with batch x 2048.
V2LITE_MAX_PREFILL_BATCH = 1


def v2lite_config():
    from cpu_vs_torch import load_config

    return load_config("deepseek-v2-lite.json", {"num_hidden_layers": V2LITE_LAYERS})


def write_v2lite_checkpoint(directory, log=print):
    """Writes config.json + model.safetensors (bf16) of the 4-layer
    V2-Lite-dimension model into `directory` (skipped when already there)."""
    import torch
    from cpu_vs_torch import build_model

    weights = os.path.join(directory, "model.safetensors")
    if os.path.exists(weights):
        return directory
    os.makedirs(directory, exist_ok=True)
    log(f"writing the {V2LITE_LAYERS}-layer V2-Lite checkpoint to {directory}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(v2lite_config(), "default", device).to(torch.bfloat16)
    # One file whatever the transformers version's default shard size.
    model.save_pretrained(directory, max_shard_size="1000GB", safe_serialization=True)
    del model
    return directory


def write_fp8_probe_checkpoint(directory):
    """Writes config.json + model.safetensors (float32) of a one-layer
    DeepSeek-V3-architecture model whose dense linears have k a multiple of
    512 (hidden, 4 x 128 value heads, expert width all 512), so that
    compiled with --quantize fp8 its GEMMs of 16+ rows go to cuBLASLt's
    block-scaled FP8 kernels; both experts take every token, so each
    expert's GEMM has every row. Small enough to carry (~4 MB as FP8)."""
    from cpu_vs_torch import build_model, load_config

    config = load_config("tiny-deepseek-v3.json", {
        "hidden_size": 512, "intermediate_size": 512, "moe_intermediate_size": 512,
        "q_lora_rank": None, "kv_lora_rank": 128, "qk_nope_head_dim": 64,
        "qk_rope_head_dim": 64, "head_dim": 64, "v_head_dim": 128,
        "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 1,
        "first_k_dense_replace": 0, "n_routed_experts": 2, "num_experts_per_tok": 2,
        "n_group": 1, "topk_group": 1, "num_nextn_predict_layers": 0})
    model = build_model(config, "default", "cpu")
    model.save_pretrained(directory, max_shard_size="1000GB", safe_serialization=True)
    return directory


def write_json(path, obj):
    """`obj` as indented JSON text, also written to `path` (when given) through
    a temporary file, so that a run cut short leaves the last whole report."""
    text = json.dumps(obj, indent=2)
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)
    return text


def read_manifest(bundle):
    with open(os.path.join(bundle, "manifest.json")) as f:
        return json.load(f)
