"""Checks the JSON of `kiln-run bench` (tests/tools/bench.test): argv is the
file and what ran (emulated, cpu, plain, synthetic)."""
import json
import sys

path, mode = sys.argv[1], sys.argv[2]
with open(path) as f:
    result = json.load(f)
points = result["results"]
assert points, "no points"
for p in points:
    where = f"batch {p['batch']}"
    assert p["decode_tokens_per_s"] > 0, where
    if mode == "plain":
        assert "decode_kernel_profile" not in p, where
        continue
    assert "kernel_profile_error" not in p, p.get("kernel_profile_error")
    profiles = {"decode": p["decode_kernel_profile"]}
    if mode == "synthetic":
        assert "prefill_kernel_profile" not in p, where
    else:
        profiles["prefill"] = p["prefill_kernel_profile"]
    for phase, profile in profiles.items():
        kernels = profile["kernels"]
        assert kernels, f"{where}: no {phase} kernels"
        names = [k["kernel"] for k in kernels]
        assert len(set(names)) == len(names), names
        assert "kiln_hold" not in names and "" not in names, names
        times = [k["ms"] for k in kernels]
        assert all(t >= 0 for t in times), times
        assert times == sorted(times, reverse=True), f"{phase}: not longest first"
        assert abs(sum(times) - profile["ms"]) <= 1e-3 * max(profile["ms"], 1e-3), profile
    if mode == "emulated" or mode == "synthetic":
        # Every launch of a decode step, once (launches are per step).
        launches = sum(k["launches"] for k in profiles["decode"]["kernels"])
        assert launches == p["decode_kernel_launches_per_step"], (
            launches, p["decode_kernel_launches_per_step"])
        # Batch 1's few MoE selections go to the grouped GEMVs in selection
        # order, with no route launch; the prefill routes.
        decode_names = [k["kernel"] for k in profiles["decode"]["kernels"]]
        if p["batch"] == 1:
            assert "kiln_moe_route" not in decode_names, decode_names
        if "prefill" in profiles:
            assert "kiln_moe_route" in [k["kernel"] for k in profiles["prefill"]["kernels"]]
        # Weight bytes where the executor knows them: GEMMs only.
        known = [k for k in profiles["decode"]["kernels"] if "weight_bytes" in k]
        assert known and all(k["kernel"].startswith(("kiln_gemv_", "kiln_gemm_"))
                             and k["weight_bytes"] > 0 for k in known), known
    if mode == "cpu":
        assert p["decode_kernel_launches_per_step"] == 0
        assert "MoeGate" in [k["kernel"] for k in profiles["decode"]["kernels"]] or any(
            k["kernel"] == "fused (generated)" for k in profiles["decode"]["kernels"])
print(f"{path}: {len(points)} points, {mode}: ok")
