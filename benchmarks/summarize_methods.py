"""Check the methods benchmark against its targets (issue: UMTG <= 1.05x the hand-written step; every
Jacobian method <= 1.0x TorchJD's same aggregator at every K; MGDA-UB <= 1.5x UMTG at K = 10).

    .venv/bin/python benchmarks/summarize_methods.py benchmarks/results/methods_step.csv
"""

from __future__ import annotations

import sys

import pandas as pd


def main(path: str) -> None:
    frame = pd.read_csv(path)
    keys = ["model", "layout", "K"]
    umtg = frame[frame["method"] == "umtg"].set_index(keys)["time_vs_hand"]
    print("UMTG time / hand-written step (target <= 1.05):")
    print(umtg.unstack("K").round(3).to_string(), "\n")
    jacobian = frame.dropna(subset=["time_vs_torchjd"])
    jacobian = jacobian[jacobian["method"] != "umtg"]
    worst = jacobian.groupby("method")["time_vs_torchjd"].agg(["max", "median"])
    print("Jacobian methods, time / TorchJD's same aggregator (target <= 1.0 at every K):")
    print(worst.round(3).to_string(), "\n")
    over = jacobian[jacobian["time_vs_torchjd"] > 1.0]
    print(f"configurations over 1.0x TorchJD: {len(over)}")
    if len(over):
        print(over[[*keys, "method", "mtlscope_ms", "torchjd_ms", "time_vs_torchjd"]].to_string(index=False))
    at10 = frame[frame["K"] == 10].set_index(["model", "layout", "method"])["mtlscope_ms"].unstack("method")
    if {"mgda_ub", "umtg"} <= set(at10.columns):
        print("\nMGDA-UB time / UMTG time at K = 10 (target <= 1.5):")
        print((at10["mgda_ub"] / at10["umtg"]).round(3).to_string())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/methods_step.csv")
