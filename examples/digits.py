"""Sequential and permuted pixel classification, LSTM against BN-LSTM (the paper's Section 5.1
on scikit-learn's 8x8 digits, since MNIST cannot be downloaded here): 64 steps, one pixel each.

Both models get the paper's initialisation (each gate block orthogonal, forget bias 1; BN-LSTM
gammas 0.1), the same seeds, data order, optimiser (RMSprop, lr 1e-3, as the paper) and epochs,
so batch normalisation is the only difference. After training, the BN-LSTM is also evaluated
with population statistics from one extra pass over the training set
(`bnlstm_cuda.compute_population_statistics`) beside its running averages.

Run from the repository root: `python -m examples.digits` (needs the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import bnlstm_cuda
from benchmarks.digits_data import as_sequences, load_digits_images

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
PAPER_MNIST = {"sequential": {"lstm": 98.9, "bnlstm": 99.0},
               "permuted": {"lstm": 90.2, "bnlstm": 95.4}}


class Classifier(nn.Module):
    """A recurrent layer read out at its last step by a linear layer."""

    def __init__(self, rnn: nn.Module, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def make_model(kind: str, hidden: int, steps: int) -> Classifier:
    if kind == "bnlstm":
        return Classifier(bnlstm_cuda.BNLSTM(1, hidden, max_length=steps), hidden)
    lstm = nn.LSTM(1, hidden)
    with torch.no_grad():  # the same initialisation as BNLSTM.reset_parameters
        for weight in (lstm.weight_ih_l0, lstm.weight_hh_l0):
            for block in weight.split(hidden):
                nn.init.orthogonal_(block)
        lstm.bias_ih_l0.zero_()
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0[hidden: 2 * hidden] = 1.0
    return Classifier(lstm, hidden)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item() * 100


def train_one(kind, task, seed, data, args) -> dict:
    """Train one model; return its per-epoch train loss and test accuracy, and final numbers."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model(kind, args.hidden, x_train.shape[0])
    opt = torch.optim.RMSprop(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(seed)
    losses, accs = [], []
    for _ in range(args.epochs):
        model.train()
        total = 0.0
        batches = torch.randperm(len(y_train), generator=order).split(args.batch)
        for idx in batches:
            loss = nn.functional.cross_entropy(model(x_train[:, idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item()
        losses.append(total / len(batches))
        accs.append(accuracy(model, x_test, y_test))
    result = {"model": kind, "task": task, "seed": seed, "train_loss": losses,
              "test_acc": accs, "final_test_acc": accs[-1]}
    if kind == "bnlstm":
        batches = [x_train[:, idx] for idx in torch.arange(len(y_train)).split(args.batch)]
        bnlstm_cuda.compute_population_statistics(model, batches)
        result["final_test_acc_population"] = accuracy(model, x_test, y_test)
    return result


def load(task: str, test_fraction: float = 0.2):
    """Train/test pixel sequences (64, N, 1); a fixed split and, for "permuted", a fixed
    permutation of the 64 pixels (seed 1234, no repeats)."""
    images, labels = load_digits_images()
    split = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = int(len(labels) * test_fraction)
    test, train = split[:n_test], split[n_test:]
    perm = None
    if task == "permuted":
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(1234))
    return (as_sequences(images[train], permutation=perm), labels[train],
            as_sequences(images[test], permutation=perm), labels[test])


def _mean_std(values):
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), (t.std().item() if len(values) > 1 else 0.0)


def summarise(runs: list[dict]) -> list[str]:
    lines = [f"{'task':<11} {'model':<7} {'test acc (running avg)':>24} "
             f"{'test acc (population)':>23}  paper (MNIST)"]
    for task in PAPER_MNIST:
        for kind in ("lstm", "bnlstm"):
            sel = [r for r in runs if r["task"] == task and r["model"] == kind]
            if not sel:
                continue
            m, s = _mean_std([r["final_test_acc"] for r in sel])
            pop = "-"
            if kind == "bnlstm":
                pm, ps = _mean_std([r["final_test_acc_population"] for r in sel])
                pop = f"{pm:.1f} +- {ps:.1f}"
            lines.append(f"{task:<11} {kind:<7} {f'{m:.1f} +- {s:.1f}':>24} {pop:>23}  "
                         f"{PAPER_MNIST[task][kind]}")
    return lines


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in PAPER_MNIST if any(r["task"] == t for r in runs)]
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
    for col, task in enumerate(tasks):
        for kind, color in (("lstm", "tab:blue"), ("bnlstm", "tab:red")):
            sel = [r for r in runs if r["task"] == task and r["model"] == kind]
            for row, key in enumerate(("train_loss", "test_acc")):
                curves = torch.tensor([r[key] for r in sel])
                epochs = range(1, curves.shape[1] + 1)
                axes[row][col].plot(epochs, curves.mean(0).tolist(), color=color,
                                    label=f"{kind} (mean of {len(sel)} seeds)")
                axes[row][col].fill_between(epochs, curves.min(0).values.tolist(),
                                            curves.max(0).values.tolist(), color=color,
                                            alpha=0.2)
        axes[0][col].set_title(f"{task} digits (64 steps)")
        axes[0][col].set_ylabel("train loss")
        axes[0][col].set_yscale("log")
        axes[1][col].set_ylabel("test accuracy (%), running averages")
        axes[1][col].set_xlabel("epoch")
        axes[0][col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", choices=list(PAPER_MNIST),
                        default=list(PAPER_MNIST))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=RESULTS / "digits")
    args = parser.parse_args(argv)
    runs = []
    start = time.perf_counter()
    for task in args.tasks:
        data = load(task)
        for seed in range(args.seeds):
            for kind in ("lstm", "bnlstm"):
                runs.append(train_one(kind, task, seed, data, args))
                r = runs[-1]
                print(f"{task:<11} {kind:<7} seed {seed}: test acc {r['final_test_acc']:.1f}"
                      f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.with_suffix(".json").write_text(json.dumps({"settings": settings, "runs": runs})
                                             + "\n")
    print("\n".join(["", *summarise(runs)]))
    plot(runs, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
