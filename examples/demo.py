"""Train a BNLSTM for a few steps on the adding problem and print the loss falling.

The adding problem (Hochreiter & Schmidhuber): each step carries a random value and a marker;
the target is the sum of the two marked values. Runs on CUDA when present, else the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch

import bnlstm_cuda


def adding_batch(T, B, device):
    values = torch.rand(T, B, device=device)
    marks = torch.zeros(T, B, device=device)
    first = torch.randint(0, T // 2, (B,), device=device)
    second = torch.randint(T // 2, T, (B,), device=device)
    marks[first, torch.arange(B)] = 1.0
    marks[second, torch.arange(B)] = 1.0
    return torch.stack([values, marks], dim=-1), (values * marks).sum(0, keepdim=True).t()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--T", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = bnlstm_cuda.BNLSTM(2, args.hidden, max_length=args.T, device=device)
    head = torch.nn.Linear(args.hidden, 1, device=device)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    print(f"device {device}, backends {bnlstm_cuda.available_backends()}")
    print(f"adding problem: T={args.T}, batch={args.batch}, hidden={args.hidden}; "
          "predicting the mean (the best constant) gives MSE about 0.167")
    start, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        x, y = adding_batch(args.T, args.batch, device)
        out, _ = model(x)
        loss = torch.nn.functional.mse_loss(head(out[-1]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 1 or step % (args.steps // 10 or 1) == 0:
            print(f"step {step:4d}  train MSE {sum(losses[-10:]) / len(losses[-10:]):.4f}")
    model.eval()
    with torch.no_grad():
        x, y = adding_batch(args.T, 1000, device)
        test = torch.nn.functional.mse_loss(head(model(x)[0][-1]), y).item()
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s; "
          f"eval MSE with running statistics {test:.4f}")


if __name__ == "__main__":
    main()
