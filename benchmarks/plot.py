"""`python -m benchmarks.plot`: PNGs from the long-format CSV that benchmarks.run appends to.

For each device, the latest run (its timestamp): one panel per shape, p50 time of each provider
in each mode with p20-p80 error bars, on a log axis. Needs matplotlib (the `bench` extra).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from .run import MODES, RESULTS


def latest_runs(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of the most recent run on each device, by device."""
    by_device = defaultdict(list)
    for row in rows:
        by_device[row["device"]].append(row)
    latest = {}
    for device, device_rows in by_device.items():
        last = max(r["timestamp"] for r in device_rows)
        latest[device] = [r for r in device_rows if r["timestamp"] == last]
    return latest


def plot_run(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys((r["shape_label"], r["T"], r["B"], r["input_size"],
                                 r["hidden_size"], r["dtype"]) for r in rows))
    providers = list(dict.fromkeys((r["provider"], r["launch"]) for r in rows))
    fig, axes = plt.subplots(len(shapes), 1, figsize=(9, 2.8 * len(shapes)), squeeze=False)
    width = 0.8 / len(providers)
    for ax, shape in zip(axes[:, 0], shapes):
        here = [r for r in rows if (r["shape_label"], r["T"], r["B"], r["input_size"],
                                     r["hidden_size"], r["dtype"]) == shape]
        for k, (provider, launch) in enumerate(providers):
            xs, p50, low, high = [], [], [], []
            for m, mode in enumerate(MODES):
                for r in here:
                    if (r["provider"], r["launch"], r["mode"]) == (provider, launch, mode):
                        xs.append(m + k * width)
                        p50.append(float(r["ms_p50"]))
                        low.append(float(r["ms_p50"]) - float(r["ms_p20"]))
                        high.append(float(r["ms_p80"]) - float(r["ms_p50"]))
            label = provider if launch == "eager" else f"{provider} ({launch})"
            ax.bar(xs, p50, width, yerr=[low, high], label=label)
        ax.set_xticks([m + 0.4 - width / 2 for m in range(len(MODES))], MODES)
        ax.set_yscale("log")
        ax.set_ylabel("ms (p50, p20-p80)")
        label, T, B, inputs, hidden, dtype = shape
        ax.set_title(f"{label}: T={T} B={B} input={inputs} hidden={hidden} {dtype}", fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=3)
    first = rows[0]
    fig.suptitle(f"{first['device_name']}, commit {first['commit']}, {first['timestamp']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--csv", type=Path, default=RESULTS / "results.csv")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with args.csv.open() as f:
        rows = list(csv.DictReader(f))
    for device, run_rows in latest_runs(rows).items():
        path = args.out / f"bench_{device}.png"
        plot_run(run_rows, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
