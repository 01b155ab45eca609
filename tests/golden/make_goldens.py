#!/usr/bin/env python3
"""Builds Kiln's independent numerics reference ("goldens") with Hugging Face transformers.

For each architecture Kiln supports, this script
  1. loads Kiln's tiny preset config (models/presets/tiny-*.json) into the HF config class,
  2. builds the model with AutoModelForCausalLM.from_config (float32, eager attention, eager experts),
  3. re-initializes EVERY parameter (and DeepSeek-V3's e_score_correction_bias buffer) randomly and
     deterministically, so that no norm weight is 1 and no bias is 0,
  4. saves it with save_pretrained (float32 safetensors) into tests/golden/<name>/ and a
     bf16-rounded copy into tests/golden/<name>-bf16/,
  5. records reference logits for 3 prompts (prefill, every position) and 8 greedy decode steps
     with HF's KV cache into tests/golden/<name>/golden.safetensors + golden.json,
  6. cross-checks: cache vs. no cache, manual loop vs. model.generate, reload of the saved
     checkpoint, and an independent float64 re-implementation (below, `ref_forward`) that reads the
     saved model.safetensors by tensor name and follows the numerics notes in README.md.

Run from the repository root:   python3 tests/golden/make_goldens.py
See tests/golden/README.md for the file formats and the numerics notes.
"""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PRESETS = os.path.join(REPO, "models", "presets")

# name -> preset file. Order matters only for the per-model seed.
MODELS = [
    ("deepseek-v3", "tiny-deepseek-v3.json"),
    ("deepseek-v2", "tiny-deepseek-v2.json"),
    ("deepseek-v2-lite", "tiny-deepseek-v2-lite.json"),
    ("qwen2", "tiny-qwen2.json"),
    ("llama", "tiny-llama.json"),
    # Shapes the tiny presets leave out (test-only presets, tests/golden/presets): dimensions
    # that are not multiples of 8 or 16, 3 and 5 heads, GQA 3:1 and 3:1 with head_dim set apart
    # from hidden / heads, 6 and 10 experts in 3 and 5 groups, q_lora, a MoE first layer, tied
    # embeddings, attention and MLP biases, vocabularies of 131 and 300 tokens.
    ("deepseek-v2-odd", os.path.join(HERE, "presets", "odd-deepseek-v2.json")),
    ("deepseek-v3-odd", os.path.join(HERE, "presets", "odd-deepseek-v3.json")),
    ("qwen2-odd", os.path.join(HERE, "presets", "odd-qwen2.json")),
    ("llama-odd", os.path.join(HERE, "presets", "odd-llama.json")),
]

BUILD_SEED = 0  # torch.manual_seed before from_config (HF's own init; fully overwritten below)
INIT_SEED = 1000  # + model index: the generator of our re-initialization
PROMPT_SEED = 20240607  # numpy PCG64 seed of the prompt tokens (same prompts for every model)
PROMPT_LENGTHS = [7, 4, 11]
DECODE_STEPS = 8

# Re-initialization (see init_params). Chosen so activations stay O(1) through the network
# and the logits have a standard deviation of about LM_HEAD_GAIN.
EMBED_STD = 1.0
LM_HEAD_GAIN = 3.0
NORM_WEIGHT_STD = 0.1  # norm weight = 1 + N(0, NORM_WEIGHT_STD)
BIAS_STD = 0.1  # q/k/v biases (Qwen2)
E_SCORE_BIAS_STD = 0.05  # DeepSeek-V3 e_score_correction_bias

# A position's fp32 top-1 counts as bf16-stable when its top1-top2 margin exceeds
# BF16_SAFETY * (largest |logit difference| seen anywhere between the fp32 model and the same
# model with bf16 weights, over both bf16 variants that we measure). The margin can move by
# at most 2*max|diff|, so a factor of 4 leaves a 2x safety factor.
BF16_SAFETY = 4.0

# Cache / generate / reload agreement: 1e-5 relative to the largest |logit| (logits reach ~12, where
# one fp32 ulp is ~1e-6; different GEMM shapes with and without the cache round differently).
CACHE_TOL = 1e-5


def tol(logits):
    return CACHE_TOL * max(1.0, float(logits.abs().max()))


REF_TOL = 1e-4


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------------------------


def load_config(preset_path):
    """Preset dict -> HF config. Returns (config, list of adaptations made)."""
    with open(preset_path) as f:
        d = json.load(f)
    # Every preset field is accepted as-is by the HF config classes (transformers 5.23): no
    # adaptation is needed. HF's own renames (rope_scaling + rope_theta -> rope_parameters,
    # torch_dtype -> dtype, ...) show up in golden.json's "config_json_vs_preset".
    adaptations = []
    model_type = d.pop("model_type")
    config = AutoConfig.for_model(model_type, **d)
    return config, adaptations


def build_model(config):
    torch.manual_seed(BUILD_SEED)
    model = AutoModelForCausalLM.from_config(
        config, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    )
    model.eval()
    return model


def init_params(model, seed):
    """Re-initializes every parameter and the e_score_correction_bias buffer, in name order."""
    gen = torch.Generator().manual_seed(seed)
    hidden = model.config.hidden_size
    tensors = dict(model.named_parameters())
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            tensors[name] = buf
    touched = []
    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name]
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            if name.endswith("e_score_correction_bias"):
                v = noise * E_SCORE_BIAS_STD
            elif name.endswith("norm.weight"):
                v = 1.0 + noise * NORM_WEIGHT_STD
            elif name.endswith(".bias"):
                v = noise * BIAS_STD
            elif name.endswith("embed_tokens.weight"):
                v = noise * EMBED_STD
            elif name == "lm_head.weight":
                v = noise * (LM_HEAD_GAIN / math.sqrt(hidden))
            elif t.dim() >= 2:
                # nn.Linear [out, in] and stacked experts [E, out, in]: unit-variance outputs.
                v = noise / math.sqrt(t.shape[-1])
            else:
                raise RuntimeError(f"no init rule for {name} {tuple(t.shape)}")
            t.copy_(v)
            touched.append(name)
    return touched


# ----------------------------------------------------------------------------------------------
# Running HF
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def hf_logits(model, tokens):
    """Logits [L, V] of every position of `tokens` (1-D int64), no cache."""
    out = model(input_ids=tokens[None], use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def hf_prefill_decode(model, prompt, steps):
    """Prefill `prompt` with a DynamicCache, then greedy-decode `steps` tokens one at a time.

    Returns (prefill_logits [L, V], decode_tokens [steps], decode_logits [steps, V]) where
    decode_logits[j] produced decode_tokens[j]; decode_logits[0] is the last prefill row."""
    out = model(input_ids=prompt[None], use_cache=True)
    prefill = out.logits[0].float().clone()
    cache = out.past_key_values
    last = prefill[-1]
    toks, rows = [], []
    for j in range(steps):
        t = int(torch.argmax(last))
        toks.append(t)
        rows.append(last.clone())
        if j + 1 == steps:
            break
        out = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        last = out.logits[0, -1].float()
    return prefill, torch.tensor(toks, dtype=torch.int64), torch.stack(rows)


def top2_margin(logits):
    v = torch.topk(logits, 2, dim=-1).values
    return (v[..., 0] - v[..., 1]).float()


# ----------------------------------------------------------------------------------------------
# Router statistics: do the group limit / the correction bias actually change expert choices?
# ----------------------------------------------------------------------------------------------


class RouterProbe:
    def __init__(self, model):
        self.inputs = {}
        self.handles = []
        for name, mod in model.named_modules():
            if type(mod).__name__.endswith("TopkRouter"):
                self.handles.append(mod.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def fn(mod, args, out):
            self.inputs.setdefault(name, []).append(args[0].detach().reshape(-1, mod.hidden_dim).clone())
        return fn

    def remove(self):
        for h in self.handles:
            h.remove()


def router_stats(model, probe):
    cfg = model.config
    stats = {}
    mods = dict(model.named_modules())
    for name, xs in probe.inputs.items():
        gate = mods[name]
        x = torch.cat(xs).float()
        logits = x @ gate.weight.float().t()
        E, G, K, TG = cfg.n_routed_experts, cfg.n_group or 1, cfg.num_experts_per_tok, cfg.topk_group or 1
        if cfg.model_type == "deepseek_v3":
            s = logits.sigmoid()
            sc = s + gate.e_score_correction_bias.float()
            gs = sc.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)
        else:
            s = logits.softmax(-1)
            sc = s
            gs = sc.view(-1, G, E // G).max(-1).values
        gi = gs.topk(TG, dim=-1).indices
        gm = torch.zeros_like(gs).scatter_(1, gi, 1).repeat_interleave(E // G, dim=1).bool()
        limited = sc.masked_fill(~gm, float("-inf")).topk(K, dim=-1).indices.sort(-1).values
        plain = sc.topk(K, dim=-1).indices.sort(-1).values
        entry = {
            "tokens": int(x.shape[0]),
            "group_limit_changed_choice": rounded(float((limited != plain).any(-1).float().mean()), 4),
            "distinct_experts_used": int(limited.unique().numel()),
        }
        if cfg.model_type == "deepseek_v3":
            # same group-limited routing without the correction bias
            gs0 = s.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)
            gi0 = gs0.topk(TG, dim=-1).indices
            gm0 = torch.zeros_like(gs0).scatter_(1, gi0, 1).repeat_interleave(E // G, dim=1).bool()
            nobias = s.masked_fill(~gm0, float("-inf")).topk(K, dim=-1).indices.sort(-1).values
            entry["correction_bias_changed_choice"] = rounded(float((limited != nobias).any(-1).float().mean()), 4)
        stats[name] = entry
    return stats


# ----------------------------------------------------------------------------------------------
# Independent float64 reference, reading the saved checkpoint by name (no transformers code).
# ----------------------------------------------------------------------------------------------


def ref_inv_freq(cfg_json, dim):
    rp = cfg_json["rope_parameters"]
    base = float(rp["rope_theta"])
    kind = rp.get("rope_type", rp.get("type", "default"))
    i = np.arange(0, dim, 2, dtype=np.float64)
    inv = 1.0 / base ** (i / dim)
    attn_factor = 1.0
    if kind == "yarn":
        factor = float(rp["factor"])
        omax = rp["original_max_position_embeddings"]
        bf, bs = rp.get("beta_fast") or 32, rp.get("beta_slow") or 1

        def corr(rot):
            return dim * math.log(omax / (rot * 2 * math.pi)) / (2 * math.log(base))

        lo, hi = max(math.floor(corr(bf)), 0), min(math.ceil(corr(bs)), dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        extra = 1.0 - ramp  # 1 -> keep original frequency (extrapolate), 0 -> divide by factor
        inv = (inv / factor) * (1 - extra) + inv * extra

        def ms(scale, m):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        m, mad = rp.get("mscale"), rp.get("mscale_all_dim")
        attn_factor = ms(factor, m) / ms(factor, mad) if (m and mad) else ms(factor, 1)
    elif kind == "llama3":
        factor, lf, hf = float(rp["factor"]), float(rp["low_freq_factor"]), float(rp["high_freq_factor"])
        old = float(rp["original_max_position_embeddings"])
        wl = 2 * math.pi / inv
        out = np.where(wl > old / lf, inv / factor, inv)
        smooth = (old / wl - lf) / (hf - lf)
        mid = (wl >= old / hf) & (wl <= old / lf)
        out = np.where(mid, (1 - smooth) * inv / factor + smooth * inv, out)
        inv = out
    elif kind != "default":
        raise RuntimeError(kind)
    return torch.tensor(inv, dtype=torch.float64), attn_factor


def ref_forward(model_dir, tokens):
    """float64 logits [L, V] for `tokens`, straight from config.json + model.safetensors."""
    with open(os.path.join(model_dir, "config.json")) as f:
        c = json.load(f)
    W = {}
    with safe_open(os.path.join(model_dir, "model.safetensors"), "pt") as f:
        for k in f.keys():
            W[k] = f.get_tensor(k).to(torch.float64)
    f64 = torch.float64
    L = tokens.shape[0]
    H = c["hidden_size"]
    nh = c["num_attention_heads"]
    eps = c["rms_norm_eps"]
    ds = c["model_type"].startswith("deepseek")

    def rms(x, w, e):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + e))

    def lin(x, p, bias=False):
        y = x @ W[p + ".weight"].t()
        return y + W[p + ".bias"] if bias else y

    def mlp(x, p):  # Llama's mlp_bias: every projection has a bias (DeepSeek's experts have none)
        b = c.get("mlp_bias", False)
        return lin(torch.nn.functional.silu(lin(x, p + ".gate_proj", b)) * lin(x, p + ".up_proj", b),
                   p + ".down_proj", b)

    pos = torch.arange(L, dtype=f64)
    causal = torch.triu(torch.full((L, L), float("-inf"), dtype=f64), 1)

    def attend(q, k, v, scale):  # [h, L, d]
        s = q @ k.transpose(-1, -2) * scale + causal
        return torch.softmax(s, -1) @ v  # [h, L, dv]

    if ds:
        rot, nope, vd, kvr = c["qk_rope_head_dim"], c["qk_nope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
        inv, af = ref_inv_freq(c, rot)
        ang = pos[:, None] * inv[None]  # [L, rot/2]
        cos, sin = torch.cos(ang) * af, torch.sin(ang) * af
        rp = c["rope_parameters"]
        scale = (nope + rot) ** -0.5
        if rp.get("rope_type", "default") != "default" and rp.get("mscale_all_dim"):
            m = 0.1 * rp["mscale_all_dim"] * math.log(rp["factor"]) + 1.0 if rp["factor"] > 1 else 1.0
            scale *= m * m

        def rope_pairs(x):  # interleaved pairs (x0,x1),(x2,x3),... -> same layout out
            a, b = x[..., 0::2], x[..., 1::2]
            out = torch.empty_like(x)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = b * cos + a * sin
            return out
    else:
        hd = c.get("head_dim") or H // nh
        nkv = c["num_key_value_heads"]
        inv, af = ref_inv_freq(c, hd)
        ang = pos[:, None] * inv[None]
        cos = torch.cat([torch.cos(ang), torch.cos(ang)], -1) * af
        sin = torch.cat([torch.sin(ang), torch.sin(ang)], -1) * af
        qkv_bias = c["model_type"] == "qwen2" or c.get("attention_bias", False)

        def rope_half(x):
            x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
            return x * cos + torch.cat([-x2, x1], -1) * sin

    x = W["model.embed_tokens.weight"][tokens]
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        h = rms(x, W[p + ".input_layernorm.weight"], eps)
        a = p + ".self_attn"
        if ds:
            if c.get("q_lora_rank"):
                q = lin(rms(lin(h, a + ".q_a_proj"), W[a + ".q_a_layernorm.weight"], 1e-6), a + ".q_b_proj")
            else:
                q = lin(h, a + ".q_proj")
            q = q.view(L, nh, nope + rot).transpose(0, 1)
            ckv = lin(h, a + ".kv_a_proj_with_mqa")
            lat, kpe = ckv[:, :kvr], ckv[:, kvr:]
            lat = rms(lat, W[a + ".kv_a_layernorm.weight"], 1e-6)
            kv = lin(lat, a + ".kv_b_proj").view(L, nh, nope + vd).transpose(0, 1)
            k = torch.cat([kv[..., :nope], rope_pairs(kpe)[None].expand(nh, L, rot)], -1)
            qq = torch.cat([q[..., :nope], rope_pairs(q[..., nope:])], -1)
            o = attend(qq, k, kv[..., nope:], scale)
            o = lin(o.transpose(0, 1).reshape(L, nh * vd), a + ".o_proj")
        else:
            q = lin(h, a + ".q_proj", qkv_bias).view(L, nh, hd).transpose(0, 1)
            k = lin(h, a + ".k_proj", qkv_bias).view(L, nkv, hd).transpose(0, 1)
            v = lin(h, a + ".v_proj", qkv_bias).view(L, nkv, hd).transpose(0, 1)
            rep = nh // nkv  # query head i uses kv head i // rep
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
            o = attend(rope_half(q), rope_half(k), v, hd ** -0.5)
            o = lin(o.transpose(0, 1).reshape(L, nh * hd), a + ".o_proj", c.get("attention_bias", False))
        x = x + o
        h = rms(x, W[p + ".post_attention_layernorm.weight"], eps)
        m = p + ".mlp"
        if ds and l >= c.get("first_k_dense_replace", 0):
            E, K = c["n_routed_experts"], c["num_experts_per_tok"]
            G, TG = c.get("n_group") or 1, c.get("topk_group") or 1
            logits = h @ W[m + ".gate.weight"].t()
            if c["model_type"] == "deepseek_v3":  # sigmoid + bias, groups by top-2 sum, -inf mask
                s = torch.sigmoid(logits)
                sc = s + W[m + ".gate.e_score_correction_bias"]
                gs = sc.view(L, G, E // G).topk(2, -1).values.sum(-1)
                fill = float("-inf")
            else:  # softmax, groups by max, 0 mask ("greedy" == no group limit)
                s = torch.softmax(logits, -1)
                sc = s
                gs = sc.view(L, G, E // G).max(-1).values
                fill = 0.0
                if c.get("topk_method", "greedy") == "greedy":
                    TG = G
            gi = gs.topk(TG, -1).indices
            gm = torch.zeros_like(gs).scatter_(1, gi, 1).repeat_interleave(E // G, 1).bool()
            idx = sc.masked_fill(~gm, fill).topk(K, -1).indices
            wts = s.gather(1, idx)
            if c["model_type"] == "deepseek_v3" and c.get("norm_topk_prob"):
                wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
            wts = wts * c.get("routed_scaling_factor", 1.0)
            y = torch.zeros_like(h)
            for t in range(L):
                for j in range(K):
                    y[t] += wts[t, j] * mlp(h[t], f"{m}.experts.{int(idx[t, j])}")
            if c.get("n_shared_experts"):
                y = y + mlp(h, m + ".shared_experts")
        else:
            y = mlp(h, m)
        x = x + y
    x = rms(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else W["lm_head.weight"]
    return x @ head.t()


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def config_diff(preset, saved):
    diff = {"added": {}, "removed": {}, "changed": {}}
    for k in sorted(set(preset) | set(saved)):
        if k not in saved:
            diff["removed"][k] = preset[k]
        elif k not in preset:
            diff["added"][k] = saved[k]
        elif preset[k] != saved[k]:
            diff["changed"][k] = {"preset": preset[k], "saved": saved[k]}
    return diff


def tensor_list(path):
    with safe_open(path, "pt") as f:
        return {k: [list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()] for k in sorted(f.keys())}


def make_prompts(vocab):
    rng = np.random.Generator(np.random.PCG64(PROMPT_SEED))
    return [torch.tensor(rng.integers(2, vocab, size=n), dtype=torch.int64) for n in PROMPT_LENGTHS]


def rounded(x, n=6):
    return float(f"{x:.{n}g}")


def run_one(index, name, preset_file, out_root):
    log(f"== {name}")
    preset_path = os.path.join(PRESETS, preset_file)
    with open(preset_path) as f:
        preset = json.load(f)
    config, adaptations = load_config(preset_path)
    model = build_model(config)
    init_params(model, INIT_SEED + index)

    out_dir = os.path.join(out_root, name)
    bf16_dir = os.path.join(out_root, name + "-bf16")
    for d in (out_dir, bf16_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)
    model.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        saved_cfg = json.load(f)

    prompts = make_prompts(config.vocab_size)
    tensors = {}
    checks = {"cache_vs_nocache_max_abs": 0.0, "generate_vs_manual_max_abs": 0.0,
              "reload_vs_original_max_abs": 0.0, "float64_reference_max_abs": 0.0}
    probe = RouterProbe(model)
    seqs = []
    for i, prompt in enumerate(prompts):
        prefill, dtoks, dlogits = hf_prefill_decode(model, prompt, DECODE_STEPS)
        # The same logits without a cache: prompt + the first 7 generated tokens.
        full = torch.cat([prompt, dtoks[:-1]])
        seqs.append(full)
        nocache = hf_logits(model, full)
        ref = torch.cat([prefill, dlogits[1:]])
        d = float((nocache - ref).abs().max())
        checks["cache_vs_nocache_max_abs"] = max(checks["cache_vs_nocache_max_abs"], d)
        assert d <= tol(ref), f"{name} prompt {i}: cache vs no-cache differ by {d}"
        assert torch.equal(nocache.argmax(-1)[len(prompt) - 1:], dtoks), "greedy tokens differ without cache"
        tensors[f"prefill.{i}.tokens"] = prompt.to(torch.int32)
        tensors[f"prefill.{i}.logits"] = prefill.contiguous()
        tensors[f"prefill.{i}.margin"] = top2_margin(prefill)
        tensors[f"decode.{i}.tokens"] = dtoks.to(torch.int32)
        tensors[f"decode.{i}.logits"] = dlogits.contiguous()
        tensors[f"decode.{i}.margin"] = top2_margin(dlogits)
    probe.remove()
    routing = router_stats(model, probe) if hasattr(config, "n_routed_experts") else {}

    # model.generate must agree with the manual loop (raw logits, not processed scores).
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            g = model.generate(prompt[None], do_sample=False, max_new_tokens=DECODE_STEPS, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=0)
            gen = g.sequences[0, len(prompt):]
            n = len(gen)  # generate may stop early at eos_token_id (1)
            assert torch.equal(gen, tensors[f"decode.{i}.tokens"][:n].long()), f"generate tokens differ ({name} {i})"
            gl = torch.stack([x[0].float() for x in g.logits])[:n]
            d = float((gl - tensors[f"decode.{i}.logits"][:n]).abs().max())
            checks["generate_vs_manual_max_abs"] = max(checks["generate_vs_manual_max_abs"], d)
            assert d <= tol(gl), f"generate vs manual differ by {d}"

    # Reload the saved checkpoint through HF (exercises the checkpoint conversion, e.g. the
    # per-expert split of gate_up_proj) and through the independent float64 reference.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager",
                                                    experts_implementation="eager").eval()
    for i, full in enumerate(seqs):
        want = torch.cat([tensors[f"prefill.{i}.logits"], tensors[f"decode.{i}.logits"][1:]])
        d = float((hf_logits(reloaded, full) - want).abs().max())
        checks["reload_vs_original_max_abs"] = max(checks["reload_vs_original_max_abs"], d)
        assert d <= tol(want), f"reloaded model differs by {d}"
        r = ref_forward(out_dir, full)
        d = float((r - want.double()).abs().max())
        checks["float64_reference_max_abs"] = max(checks["float64_reference_max_abs"], d)
        assert d <= REF_TOL, f"{name}: float64 reference differs from HF by {d}"
    del reloaded

    # bf16 variant: the same weights rounded to bf16.
    model.to(torch.bfloat16).save_pretrained(bf16_dir)
    model.to(torch.float32)
    bf16w = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager").eval()
    bf16c = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16, attn_implementation="eager",
                                                 experts_implementation="eager").eval()
    dev_w = dev_c = 0.0
    per = {}
    for i, full in enumerate(seqs):
        want = torch.cat([tensors[f"prefill.{i}.logits"], tensors[f"decode.{i}.logits"][1:]])
        lw = hf_logits(bf16w, full)
        lc = hf_logits(bf16c, full)
        dev_w = max(dev_w, float((lw - want).abs().max()))
        dev_c = max(dev_c, float((lc - want).abs().max()))
        n = len(prompts[i])
        tensors[f"bf16.prefill.{i}.logits"] = lw[:n].clone()
        # decode rows: row 0 is the last prompt row, then the teacher-forced fp32 greedy tokens
        tensors[f"bf16.decode.{i}.logits"] = lw[n - 1:].clone()
        # per-position perturbation: max over the vocabulary and over both bf16 variants
        dpos = torch.maximum((lw - want).abs().max(-1).values, (lc - want).abs().max(-1).values)
        per[i] = (lw, lc, n, dpos)
    # A position is bf16-stable when its margin exceeds BF16_SAFETY times the larger of its own
    # measured perturbation and the model-wide median perturbation (so that a position where HF's
    # bf16 run happened to be lucky is not trusted; MoE routing flips show up as large dpos).
    floor = float(torch.cat([per[i][3] for i in per]).median())
    stable = {"prefill": [], "decode": []}
    flips = {"stable_positions_flipped": 0, "unstable_positions_flipped_bf16_weights": 0,
             "unstable_positions_flipped_bf16_compute": 0}
    for i in range(len(prompts)):
        lw, lc, n, dpos = per[i]
        for kind, sl in (("prefill", slice(0, n)), ("decode", slice(n - 1, None))):
            ref = tensors[f"{kind}.{i}.logits"]
            margin = tensors[f"{kind}.{i}.margin"]
            threshold = BF16_SAFETY * torch.clamp(dpos[sl], min=floor)
            ok = margin > threshold
            stable[kind].append([bool(b) for b in ok])
            tensors[f"{kind}.{i}.bf16_stable"] = ok.to(torch.uint8)
            top = ref.argmax(-1)
            for tag, lx in (("bf16_weights", lw[sl]), ("bf16_compute", lc[sl])):
                flipped = lx.argmax(-1) != top
                flips["stable_positions_flipped"] += int((flipped & ok).sum())
                flips[f"unstable_positions_flipped_{tag}"] += int((flipped & ~ok).sum())
    assert flips["stable_positions_flipped"] == 0, f"{name}: a bf16-stable position flipped: {flips}"
    del bf16w, bf16c

    save_file(tensors, os.path.join(out_dir, "golden.safetensors"), metadata={"format": "pt"})

    margins = torch.cat([tensors[k] for k in sorted(tensors) if k.endswith(".margin") and not k.startswith("bf16")])
    all_stable = sum(sum(s) for v in stable.values() for s in v)
    all_pos = sum(len(s) for v in stable.values() for s in v)
    golden = {
        "model": name,
        "preset": os.path.relpath(preset_path, REPO),
        "architecture": config.architectures[0],
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": sys.version.split()[0]},
        "num_parameters": int(model.num_parameters()),
        "checkpoint_tensors": tensor_list(os.path.join(out_dir, "model.safetensors")),
        "config_adaptations": adaptations,
        "config_json_vs_preset": config_diff(preset, saved_cfg),
        "init": {"build_seed": BUILD_SEED, "init_seed": INIT_SEED + index, "embed_std": EMBED_STD,
                 "lm_head_std": rounded(LM_HEAD_GAIN / math.sqrt(config.hidden_size)),
                 "matrix_std": "1/sqrt(fan_in) (last dim)", "norm_weight": f"1 + N(0, {NORM_WEIGHT_STD})",
                 "bias_std": BIAS_STD, "e_score_correction_bias_std": E_SCORE_BIAS_STD},
        "prompts": {"seed": PROMPT_SEED, "lengths": PROMPT_LENGTHS,
                    "tokens": [p.tolist() for p in prompts]},
        "decode": {"steps": DECODE_STEPS, "tokens": [tensors[f"decode.{i}.tokens"].tolist() for i in range(3)]},
        "margins": {"median": rounded(float(margins.median())), "p10": rounded(float(margins.quantile(0.1))),
                    "min": rounded(float(margins.min())), "max": rounded(float(margins.max())),
                    "count": int(margins.numel())},
        "bf16": {
            "dir": name + "-bf16",
            "max_abs_logit_diff_bf16_weights_fp32_compute": rounded(dev_w),
            "max_abs_logit_diff_bf16_weights_bf16_compute": rounded(dev_c),
            "median_position_perturbation": rounded(floor),
            "safety_factor": BF16_SAFETY,
            "rule": "stable iff margin > safety_factor * max(position perturbation, median perturbation); "
                    "position perturbation = max |logit - fp32 logit| over the vocabulary and over the "
                    "bf16-weights/fp32-compute and bf16-weights/bf16-compute HF runs",
            "stable_positions": all_stable,
            "positions": all_pos,
            "prefill_stable": stable["prefill"],
            "decode_stable": stable["decode"],
            "top1_flips": flips,
        },
        "routing": routing,
        "checks": {k: rounded(v, 3) for k, v in checks.items()},
    }
    with open(os.path.join(out_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")
    log(f"   params={golden['num_parameters']} margin median={golden['margins']['median']} "
        f"p10={golden['margins']['p10']} min={golden['margins']['min']} "
        f"bf16 dev w={dev_w:.3g} c={dev_c:.3g} median={floor:.3g} stable={all_stable}/{all_pos} flips={flips}")
    log(f"   checks {golden['checks']}")
    for k, v in routing.items():
        log(f"   {k}: {v}")
    return golden


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this directory)")
    ap.add_argument("--only", action="append", help="build only this model (repeatable)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    for index, (name, preset) in enumerate(MODELS):
        if args.only and name not in args.only:
            continue
        run_one(index, name, preset, args.out)


if __name__ == "__main__":
    main()
