#!/usr/bin/env python3
"""Time per kernel from an Nsight Compute CSV (`ncu --csv --print-units base
--metrics gpu__time_duration.sum,dram__bytes_read.sum ...`), the kernels
ordered by their share of the total: which kernel holds a step back.

Lines that are not ncu's CSV (the profiled program's own output) are
skipped. Prints one JSON object.
    python3 bench/ncu_summary.py profile.csv [--top N]
"""
import argparse
import csv
import json
import sys
from collections import defaultdict


def summarize(lines):
    rows = csv.DictReader(line for line in lines if line.startswith('"'))
    kernels = defaultdict(lambda: {"launches": 0, "seconds": 0.0, "dram_read_bytes": 0.0})
    seen = set()
    for row in rows:
        name = row["Kernel Name"].split("(")[0]
        value = float(row["Metric Value"].replace(",", ""))
        k = kernels[name]
        if row["ID"] not in seen:
            seen.add(row["ID"])
            k["launches"] += 1
        if row["Metric Name"] == "gpu__time_duration.sum":
            k["seconds"] += value * 1e-9  # base unit: nanoseconds
        elif row["Metric Name"] == "dram__bytes_read.sum":
            k["dram_read_bytes"] += value
    total = sum(k["seconds"] for k in kernels.values())
    table = []
    for name, k in sorted(kernels.items(), key=lambda kv: -kv[1]["seconds"]):
        table.append({"kernel": name, "launches": k["launches"],
                      "share": k["seconds"] / total if total else None,
                      "microseconds": k["seconds"] * 1e6,
                      "dram_read_GB_per_s": (k["dram_read_bytes"] / k["seconds"] / 1e9
                                             if k["seconds"] else None)})
    return {"launches": len(seen), "kernel_microseconds": total * 1e6, "kernels": table}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--top", type=int, default=None, help="only the N slowest kernels")
    args = parser.parse_args()
    with open(args.csv) as f:
        result = summarize(f)
    result["kernels"] = result["kernels"][:args.top]
    print(json.dumps(result, indent=2))
    return 0 if result["launches"] else 1


if __name__ == "__main__":
    sys.exit(main())
