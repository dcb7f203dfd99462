"""Figure 1(a) of Cooijmans et al. (2016): gradient flow through a batch-normalised tanh RNN
against gamma, at initialisation.

h_t = tanh(BN_t(W_h h_{t-1}; gamma) + W_x x_t), 100 units, W_h = identity, per-step batch
statistics, 784 steps of pixels (scikit-learn's digits upsampled to 28x28, as
MNIST cannot be downloaded here), loss: cross-entropy of a linear classifier on h_T. Plots the
batch mean of ||dL/dh_t|| against t on a log axis, one curve per gamma. Float64, so the
smallest gradients (below 1e-26 in the paper) do not underflow.

The paper does not say whether the input term is normalised too, so a second panel draws the
variant h_t = tanh(BN_t(W_h h_{t-1}; gamma) + BN_t(W_x x_t; gamma)).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .digits_data import as_sequences, load_digits_images

RESULTS = Path(__file__).resolve().parent / "results"
GAMMAS = tuple(round(0.1 * k, 1) for k in range(1, 11))
PAPER = {0.1: "stays near 1e-3 across the sequence", 0.5: "falls to about 1e-9 near t=0",
         0.7: "falls below 1e-26 (as do all gamma >= 0.7)"}


def batch_norm(z: torch.Tensor, gamma: float, eps: float = 1e-5) -> torch.Tensor:
    """Per-feature normalisation over the batch with this step's own statistics."""
    return gamma * (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def gradient_norms(x: torch.Tensor, y: torch.Tensor, gamma: float, normalize_input: bool,
                   hidden: int = 100, seed: int = 0) -> torch.Tensor:
    """(T,) batch mean of ||dL/dh_t|| for a BN tanh RNN at initialisation. x: (T, B, 1)."""
    gen = torch.Generator().manual_seed(seed)
    T, B, inputs = x.shape
    w_x = torch.randn(hidden, inputs, generator=gen, dtype=x.dtype) / inputs ** 0.5
    w_h = torch.eye(hidden, dtype=x.dtype)
    w_out = torch.randn(10, hidden, generator=gen, dtype=x.dtype) / hidden ** 0.5
    h = torch.zeros(B, hidden, dtype=x.dtype, requires_grad=True)  # so every h_t has a grad
    states = []
    for t in range(T):
        x_term = x[t] @ w_x.t()
        x_term = batch_norm(x_term, gamma) if normalize_input else x_term
        h = torch.tanh(batch_norm(h @ w_h.t(), gamma) + x_term)
        states.append(h)
    loss = F.cross_entropy(states[-1] @ w_out.t(), y)
    grads = torch.autograd.grad(loss, states)
    return torch.stack([g.norm(dim=1).mean() for g in grads])


VARIANTS = {"recurrent BN": False, "recurrent and input BN": True}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images, labels = load_digits_images()
    pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    pick = pick[: args.batch]
    x = as_sequences(images[pick], size=28).double()
    curves = {name: {g: gradient_norms(x, labels[pick], g, both, seed=args.seed)
                     for g in GAMMAS} for name, both in VARIANTS.items()}

    summary = {name: {str(g): {"t=0": c[0].item(), "t=T/2": c[len(c) // 2].item(),
                               "t=T-1": c[-1].item(), "min": c.min().item()}
                      for g, c in by_gamma.items()} for name, by_gamma in curves.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "paper_fig1a.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"batch mean of ||dL/dh_t||, T={x.shape[0]}, batch {args.batch}, seed {args.seed}")
    for name in VARIANTS:
        print(f"\n{name}\n{'gamma':>5} {'t=0':>10} {'t=T/2':>10} {'t=T-1':>10} {'min':>10}  paper")
        for g in GAMMAS:
            r = summary[name][str(g)]
            print(f"{g:>5} {r['t=0']:>10.2e} {r['t=T/2']:>10.2e} {r['t=T-1']:>10.2e} "
                  f"{r['min']:>10.2e}  {PAPER.get(g, '')}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.cm.viridis(torch.linspace(0, 1, len(GAMMAS)).tolist())
    for ax, (name, by_gamma) in zip(axes, curves.items()):
        for color, (g, c) in zip(colors, by_gamma.items()):
            ax.plot(range(len(c)), c.clamp_min(1e-300).tolist(), color=color, label=f"{g}")
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(f"BN tanh RNN at init, {name}")
    axes[0].set_ylabel("batch mean of ||dL/dh_t||")
    axes[0].legend(title="gamma", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / "paper_fig1a.png", dpi=120)
    print(f"\nwrote {RESULTS / 'paper_fig1a.png'} and paper_fig1a.json")


if __name__ == "__main__":
    main()
