"""Character-level language modelling, LSTM against BN-LSTM (the paper's Section 5.2 tasks,
Penn Treebank and text8, at small scale), then sampling from the BN-LSTM one character per
call with `start_step`.

The text: the King James Version of the Bible (1611; out of copyright, as the package says), as
Debian's `bible-kjv-text` package ships it, read through the `bible` program of its `bible-kjv`
package (`apt-get install bible-kjv`): `bible -f Gen1:1-Rev22:21` prints the 31102 verses in order,
one a line, each after its reference, which is stripped; 4.1 million characters, 63 distinct.
The first --train-chars characters train, the next --test-chars are held out.

Both models are one layer of --hidden units on one-hot characters, read out by a linear layer,
and start from the same weights (the BN-LSTM's initialisation: each gate block orthogonal,
forget bias 1, gammas 0.1; the LSTM gets its weights and its bias as bias_ih). They see the same
sequences of --seq-len characters from a zero state, in the same order, with the same optimiser
(Adam, gradient norm clipped at 1), so batch normalisation is the only difference. The BN-LSTM
keeps --seq-len rows of per-step statistics (max_length). Held-out bits per character after each
epoch come from the held-out text cut into sequences of --seq-len, each from a zero state, in
evaluation mode (the BN-LSTM with its running averages); after training, also with population
statistics from one extra pass over the training set (`bnlstm_cuda.compute_population_statistics`,
as the paper), which the sampling then uses.

Then the BN-LSTM reads the held-out sequences again one character per call, carrying (h, c),
with `start_step=t` (which must give the full-sequence number) and without it (each call
normalised with the statistics of step 0), and samples characters one per call both ways.

Run from the repository root: `python -m examples.char_lm` (matplotlib, from the `bench` extra,
for the plot). It prints as it goes and writes benchmarks/results/char_lm.txt and char_lm.png.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bnlstm_cuda
from benchmarks.measure import environment

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
BIBLE_COMMAND = ["bible", "-f", "Gen1:1-Rev22:21"]
MODELS = ("lstm", "bnlstm")
# Quoted from Cooijmans et al. (2016), "Recurrent Batch Normalization", Table 1 (Penn Treebank)
# and Table 2 (text8): bits per character on each test set.
PAPER_BPC = {"Penn Treebank": {"lstm": 1.38, "bnlstm": 1.32},
             "text8": {"lstm": 1.43, "bnlstm": 1.36}}


def load_kjv() -> str:
    """The King James Bible as one string, one verse a line, references stripped."""
    try:
        out = subprocess.run(BIBLE_COMMAND, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise SystemExit("char_lm: the text comes from Debian's bible-kjv-text package, read by "
                         "its `bible` program: apt-get install bible-kjv") from None
    return "\n".join(re.sub(r"^\S+ ", "", line) for line in out.splitlines()) + "\n"


class CharLM(nn.Module):
    """A recurrent layer over one-hot characters, read out at every step by a linear layer."""

    def __init__(self, rnn: nn.Module, head: nn.Linear):
        super().__init__()
        self.rnn, self.head = rnn, head

    def forward(self, ids: torch.Tensor, hx=None, **rnn_kwargs):
        """ids (T, B) -> logits (T, B, vocab) and the final (h, c)."""
        out, hx = self.rnn(F.one_hot(ids, self.head.out_features).float(), hx, **rnn_kwargs)
        return self.head(out), hx


def make_models(vocab: int, hidden: int, seq_len: int, seed: int) -> dict[str, CharLM]:
    """The two models, from the same initial weights."""
    torch.manual_seed(seed)
    bn = bnlstm_cuda.BNLSTM(vocab, hidden, max_length=seq_len)
    head = nn.Linear(hidden, vocab)
    lstm = nn.LSTM(vocab, hidden)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(bn.weight_ih_l0)
        lstm.weight_hh_l0.copy_(bn.weight_hh_l0)
        lstm.bias_ih_l0.copy_(bn.bias_l0)
        lstm.bias_hh_l0.zero_()
    return {"lstm": CharLM(lstm, copy.deepcopy(head)), "bnlstm": CharLM(bn, head)}


def cut(ids: torch.Tensor, seq_len: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets, (seq_len, N) each: ids from `offset` cut into N
    sequences of seq_len, side by side."""
    n = (len(ids) - 1 - offset) // seq_len
    x = ids[offset: offset + n * seq_len].view(n, seq_len).t()
    y = ids[offset + 1: offset + 1 + n * seq_len].view(n, seq_len).t()
    return x, y


def bits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean bits per character."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten()) / torch.log(torch.tensor(2.0))


@torch.no_grad()
def held_out_bpc(model: CharLM, x: torch.Tensor, y: torch.Tensor, chunk: int = 250) -> float:
    """Bits per character of every held-out sequence from a zero state, in eval mode."""
    model.eval()
    total = 0.0
    for xs, ys in zip(x.split(chunk, dim=1), y.split(chunk, dim=1)):
        total += bits(model(xs)[0], ys).item() * xs.numel()
    return total / x.numel()


@torch.no_grad()
def per_call_bpc(model: CharLM, x: torch.Tensor, y: torch.Tensor, start_step: bool) -> float:
    """held_out_bpc, with the model fed one character per call, (h, c) carried, and the call's
    step given as start_step (or not: every call then counts as step 0)."""
    model.eval()
    hx, logits = None, []
    for t in range(x.shape[0]):
        out, hx = model(x[t: t + 1], hx, start_step=t if start_step else 0)
        logits.append(out)
    return bits(torch.cat(logits), y).item()


@torch.no_grad()
def sample(model: CharLM, prime: str, length: int, chars: str, temperature: float, seed: int,
           start_step: bool) -> str:
    """`prime` then `length` characters drawn one per call from the eval-mode model."""
    model.eval()
    index = {c: i for i, c in enumerate(chars)}
    gen = torch.Generator().manual_seed(seed)
    hx, text = None, prime
    ids = [index[c] for c in prime]
    for t in range(len(prime) + length - 1):
        logits, hx = model(torch.tensor([[ids[t]]]), hx, start_step=t if start_step else 0)
        if t >= len(prime) - 1:
            probs = torch.softmax(logits[0, 0] / temperature, dim=0)
            ids.append(torch.multinomial(probs, 1, generator=gen).item())
            text += chars[ids[-1]]
    return text


def train(model: CharLM, train_ids: torch.Tensor, held_out, args, log) -> dict:
    """Train for args.epochs; per epoch the training and held-out bits per character. Each
    epoch cuts the training text from a fresh random offset and shuffles the sequences; the
    generator is seeded alike for every model, so all see the same batches."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(args.seed)
    result = {"train_bpc": [], "held_out_bpc": [], "seconds": []}
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        offset = torch.randint(args.seq_len, (), generator=order).item()
        x, y = cut(train_ids, args.seq_len, offset)
        total = 0.0
        batches = torch.randperm(x.shape[1], generator=order).split(args.batch)
        for idx in batches:
            loss = bits(model(x[:, idx])[0], y[:, idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += loss.item()
        result["train_bpc"].append(total / len(batches))
        result["held_out_bpc"].append(held_out_bpc(model, *held_out))
        result["seconds"].append(time.perf_counter() - start)
        log(epoch, result)
    return result


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for kind, r in results.items():
        color = {"lstm": "tab:blue", "bnlstm": "tab:red"}[kind]
        epochs = range(1, len(r["train_bpc"]) + 1)
        axes[0].plot(epochs, r["train_bpc"], "o-", color=color, label=kind)
        axes[1].plot(epochs, r["held_out_bpc"], "o-", color=color,
                     label=f"{kind}" + (" (running averages)" if kind == "bnlstm" else ""))
        if "population_bpc" in r:
            axes[1].plot([len(epochs)], [r["population_bpc"]], "*", color=color, markersize=12,
                         label="bnlstm, population statistics")
    axes[0].set_title("training text (mean over the epoch's batches)")
    axes[1].set_title("held-out text, evaluation mode")
    axes[0].set_ylabel("bits per character")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-chars", type=int, default=1_000_000)
    parser.add_argument("--test-chars", type=int, default=100_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=100,
                        help="training sequence length, and the BN-LSTM's max_length")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS))
    parser.add_argument("--prime", default="And God said, ")
    parser.add_argument("--sample-chars", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=RESULTS / "char_lm",
                        help="path without suffix for the .txt log and the .png plot")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads; 0: torch's own choice (on a shared 2-core "
                             "machine under load, 2 threads ran a training step 1.8-3.6x slower "
                             "than 1)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    start = time.perf_counter()
    text = load_kjv()
    chars = "".join(sorted(set(text)))
    ids = torch.tensor([chars.index(c) for c in text])
    train_ids = ids[: args.train_chars]
    held_ids = ids[args.train_chars: args.train_chars + args.test_chars]
    held_out = cut(held_ids, args.seq_len)
    env = environment(torch.device("cpu"))
    say(f"# python -m examples.char_lm {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    say(f"# {env['timestamp']}, commit {env['commit']}, {env['device_name']}, torch "
        f"{env['torch']}, torch threads: {env['threads']}")
    say(f"text: the King James Bible from Debian's bible-kjv-text package "
        f"(`{' '.join(BIBLE_COMMAND)}`"
        f", verse references stripped), {len(text)} characters, {len(chars)} distinct")
    say(f"training: its first {len(train_ids)} characters ({text[:30]!r}...); held out: the next "
        f"{len(held_ids)} ({text[args.train_chars: args.train_chars + 30]!r}...), "
        f"{held_out[0].shape[1]} sequences of {args.seq_len}, each from a zero state")
    say(f"models: 1 layer, {args.hidden} units, one-hot input, linear readout; BN-LSTM "
        f"max_length {args.seq_len}, gamma_init 0.1; Adam lr {args.lr}, batch {args.batch}, "
        f"sequence length {args.seq_len}, clip 1.0, seed {args.seed}, {args.epochs} epochs")
    say()

    models = make_models(len(chars), args.hidden, args.seq_len, args.seed)
    results = {}
    for kind in args.models:
        def log(epoch, r, kind=kind):
            say(f"{kind:<7} epoch {epoch:>2}: train {r['train_bpc'][-1]:.3f} bpc, held out "
                f"{r['held_out_bpc'][-1]:.3f} bpc  ({r['seconds'][-1]:.0f} s)")

        results[kind] = train(models[kind], train_ids, held_out, args, log)
    bn = models["bnlstm"]
    if "bnlstm" in results:
        pass_start = time.perf_counter()
        x, _ = cut(train_ids, args.seq_len)
        bnlstm_cuda.compute_population_statistics(bn, x.split(args.batch, dim=1))
        results["bnlstm"]["population_bpc"] = held_out_bpc(bn, *held_out)
        say(f"bnlstm  population statistics (one pass over the training text, "
            f"{time.perf_counter() - pass_start:.0f} s): held out "
            f"{results['bnlstm']['population_bpc']:.3f} bpc")

    say()
    say("held-out bits per character (lower is better)")
    say(f"{'epoch':>5} " + " ".join(f"{kind:>7}" for kind in results))
    for epoch in range(args.epochs):
        say(f"{epoch + 1:>5} " + " ".join(f"{results[kind]['held_out_bpc'][epoch]:>7.3f}"
                                          for kind in results))
    if "bnlstm" in results:
        say(f"{'pop.':>5} " + " ".join(f"{results['bnlstm']['population_bpc']:>7.3f}"
                                       if kind == "bnlstm" else f"{'-':>7}" for kind in results))
    say("Quoted from Cooijmans et al. (2016), bits per character on each test set (other texts, "
        "far larger models and data, not comparable in value):")
    for task, bpc in PAPER_BPC.items():
        say(f"  {task:<14} LSTM {bpc['lstm']:.2f}, BN-LSTM {bpc['bnlstm']:.2f}")

    if "bnlstm" in results:
        say()
        say("BN-LSTM (population statistics), held-out text one character per call, (h, c) "
            "carried:")
        with_step = per_call_bpc(bn, *held_out, start_step=True)
        without = per_call_bpc(bn, *held_out, start_step=False)
        say(f"  start_step=t: {with_step:.3f} bpc (one call per sequence: "
            f"{results['bnlstm']['population_bpc']:.3f}; difference "
            f"{abs(with_step - results['bnlstm']['population_bpc']):.1e})")
        say(f"  no start_step (every call normalised as step 0): {without:.3f} bpc")
        for step in (True, False):
            say()
            say(f"sample, one character per call, {'start_step=t' if step else 'no start_step'}"
                f", temperature {args.temperature}, seed {args.seed}:")
            say(sample(bn, args.prime, args.sample_chars, chars, args.temperature, args.seed,
                       step))

    say()
    say(f"total {time.perf_counter() - start:.0f} s")
    args.out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    plot(results, args.out.with_suffix(".png"),
         f"char-level LM on the King James Bible ({len(train_ids)} training characters), "
         f"{args.hidden} units")
    print(f"wrote {args.out.with_suffix('.txt')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
