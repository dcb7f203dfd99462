"""Fused Triton step kernels: one launch per time step, forwards and backwards.

A program owns BLOCK_H hidden units (all four gates of each) across every running row of the
batch, so every batch statistic is reduced inside one program and the launch boundary is the only
synchronisation between steps. Rows are walked in chunks of BLOCK_B, so any batch size works;
statistics are fp32 (fp64 for float64 layers) and two-pass (sums, then centred squares) over
the running rows only.

Forward step t (rows b < n = batch_sizes[t]), given u_t = gamma_ih BN_t(x_t W_ih^T) + bias:
  per gate: raw hw = h_{t-1} W_hh^T (stored), its batch statistics, running-row update, and
  pre = u_t + gamma_hh BN(hw); then c_t = f c_{t-1} + i g (stored), its statistics, and
  h_t = o tanh(BN(c_t)). The "fused" input product (SETTINGS) computes u_t in the launch too:
  x_t W_ih^T (stored), its statistics and running-row update, then u_t into a scratch buffer
  that the rest of the step reads as it reads the given u.
Backward step t (reverse): dh_t = dy_t + dpre_hh[t+1] W_hh (or dh_n for rows that end at t);
  back through BN(c), the gates and BN(h W_hh^T); writes dpre[t] (raw: the Function takes it
  through the input norm after the loop), dpre_hh[t], the dc carry and the per-step sums that
  become the gamma_hh, gamma_c and beta_c gradients.

The file reads: launch configurations and settings, the kernels, their launchers, the custom ops,
then the backend contract (forward_loop, in_step_input, backward_loop). Launchers hand their
loop to step_graphs, which replays it as a CUDA graph.
"""

from __future__ import annotations

import contextlib
import os
import types
from typing import NamedTuple, Optional

import torch

from ..device_numbers import device_numbers
from ..input_norm import InputSaved, contribution, loop_input, with_input_grads
from ..layer_state import LayerWeights, RunningStats, Steps, accumulator
from . import fused, step_graphs
from .fused import Saved

try:
    import triton
    import triton.language as tl
except ImportError:  # the registry reports the backend as unavailable
    triton = None

name = "triton"


def dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """Computed natively: statistics, cell state and products accumulate in float32 (float64
    for float64 layers, which exist to check the kernels' math to float64 rounding)."""
    return (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Config(NamedTuple):
    """Block sizes of one launch: rows per chunk, hidden units per program, reduction step."""

    block_b: int
    block_h: int
    block_k: int
    num_warps: int


# Every configuration the launcher can pick (CI compiles each one for sm_80 and sm_90 and fails
# on a spill: tools/triton_report.py). 8 warps from 32 rows up, and a 16-wide reduction step at
# 64 rows, keep every variant within 255 registers; 16 units per program, as more programs fill
# more SMs. The backward and the fused-input forward stop at 32-row chunks: at 64 they spill.
CONFIGS = (
    Config(16, 16, 16, 4),
    Config(32, 16, 32, 8),
    Config(64, 16, 16, 8),
)
SHORT_CONFIGS = CONFIGS[:2]
# The hoisted forward's narrow programs: 4 units (a 16-column tl.dot), 4 warps, a 32-wide
# reduction step, at each chunk height (95-230 registers, no spill). 16 units gave 32 programs at
# H=512, a quarter of an H100's SMs; on the H200 (benchmarks/results/gpu) forward + backward at
# T=100, B=64, 512/512 took 10.0 ms with 4 units per forward program and 16.3 ms with 16 (the
# sweep changed the backward's configuration with it, so the forward's share is not known).
NARROW_CONFIGS = tuple(Config(c.block_b, 4, 32, 4) for c in CONFIGS)
SM_SHARE = 0.9  # a forward grid of 16-unit programs this full of the SMs stays at 16 units


def launch_options(cfg: Config) -> dict:
    """Compile options of a launch. maxnreg: ptxas otherwise trades registers for occupancy and
    spills (seen at 168 and 128 registers), though a step's grid is at most a program per SM."""
    return dict(num_warps=cfg.num_warps, maxnreg=255)


def pick_config(B: int, device: torch.device, short: bool = False) -> Config:
    """Smallest tiles under the interpreter (so chunk loops are exercised by small tests); on a
    GPU, the first chunk that holds the batch, else the tallest (of SHORT_CONFIGS if short)."""
    configs = SHORT_CONFIGS if short else CONFIGS
    if device.type == "cpu":
        return configs[0]
    return next((c for c in configs if B <= c.block_b), configs[-1])


INPUT_PRODUCTS = ("hoisted", "fused")
# input_product: how the forward gets x W_ih^T: "hoisted", one GEMM over all steps ahead of the
# loop (the default), or "fused", each step's launch computes its own beside h W_hh^T (the design
# card's first plan). The benchmark times both (launch "fused_input"); the default follows its
# numbers. config: the launch configuration forced on every launch (None: pick_config's choice).
# persistent: run a layer's steps in one launch (Plan): None, where H <= PERSISTENT_MAX_H on a
# GPU (never under the interpreter, whose tests force it); True or False everywhere.
SETTINGS = types.SimpleNamespace(input_product=os.environ.get("BNLSTM_TRITON_INPUT_PRODUCT",
                                                              "hoisted"), config=None,
                                 persistent=None)


@contextlib.contextmanager
def _setting(name: str, value):
    """SETTINGS.name = value inside the block, restored after it."""
    before = getattr(SETTINGS, name)
    setattr(SETTINGS, name, value)
    try:
        yield
    finally:
        setattr(SETTINGS, name, before)


def use_input_product(mode: str):
    """Run forwards inside the block with the input product `mode` (one of INPUT_PRODUCTS)."""
    _check_input_product(mode, "mode")
    return _setting("input_product", mode)


def use_persistent(on: bool):
    """Inside the block, every layer runs its steps in one launch (on) or one per step."""
    return _setting("persistent", on)


def use_config(cfg: Config):
    """Every launch inside the block uses `cfg`, whatever the shape (the backward with at least
    16 units per program, the narrowest tl.dot): for the tile sweep and the tests."""
    return _setting("config", cfg)


def _check_input_product(mode, what: str) -> None:
    if mode not in INPUT_PRODUCTS:
        raise ValueError(f"{what}: expected one of {INPUT_PRODUCTS}, got {mode!r}")


def available() -> tuple[bool, str]:
    if triton is None:
        return False, "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "Triton interpreter (TRITON_INTERPRET=1): runs on CPU tensors, slowly"
    if not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    return True, "Triton kernels on CUDA"


def supports(device: torch.device) -> Optional[str]:
    """Why tensors on `device` cannot run here, or None."""
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU tensors need TRITON_INTERPRET=1 (set before import)"
    if device.type not in ("cpu", "cuda"):
        return f"tensors on {device.type} are not supported (cuda; cpu when interpreting)"
    return None


if triton is not None:

    @triton.jit
    def _tile_ptrs(ptr, stride, rows, cols):
        """Pointers to [rows, cols] of a row-major matrix; rows x stride in 64 bits, as it passes
        2^31 once B x 4H does (the column offsets stay below 4H)."""
        return ptr + (rows.to(tl.int64) * stride)[:, None] + cols[None, :]

    @triton.jit
    def _tile_matmul(a_ptr, a_stride, rows, row_mask, K, w_ptr, w_k_stride, w_n_stride, cols,
                     col_mask, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, UPCAST_DOT: tl.constexpr,
                     INPUT_PRECISION: tl.constexpr, ACC: tl.constexpr):
        """[BLOCK_B, BLOCK_N] = A[rows, :K] @ W[:K, cols] in ACC, W read through its strides
        (offsets in 64 bits: W's pass 2^31 once 4H x H does)."""
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=ACC)
        w_cols = w_ptr + (cols.to(tl.int64) * w_n_stride)[None, :]
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_mask = ks < K
            a = tl.load(_tile_ptrs(a_ptr, a_stride, rows, ks),
                        mask=row_mask[:, None] & k_mask[None, :], other=0.0)  # [BB, BK]
            w = tl.load(w_cols + (ks.to(tl.int64) * w_k_stride)[:, None],
                        mask=k_mask[:, None] & col_mask[None, :], other=0.0)  # [BK, BN]
            if UPCAST_DOT:  # the operands rounded as the GPU's tensor cores take them
                acc += tl.dot(a.to(w.dtype).to(ACC), w.to(ACC))
            else:  # in the weights' dtype: the backward's fp32 dpre meets bf16 tensor cores
                acc += tl.dot(a.to(w.dtype), w, input_precision=INPUT_PRECISION)
        return acc

    @triton.jit
    def _load_tile(ptr, stride, rows, row_mask, cols, col_mask, ACC: tl.constexpr):
        """[rows, cols] of a row-major matrix, in ACC; masked entries are 0."""
        return tl.load(_tile_ptrs(ptr, stride, rows, cols),
                       mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(ACC)

    @triton.jit
    def _statistics(total, centred, n, factor, eps, run_mean_ptr, run_var_ptr, stat_ptr, C,
                    cols, col_mask, USE_BATCH, ACC: tl.constexpr):
        """Mean and 1/std of features `cols` (C of them) for this step, saved to stat_ptr
        ([2, C]: mean, rstd) and returned. With batch statistics the running row moves by `factor`
        towards them (unbiased variance); otherwise the running row is used as it is."""
        if USE_BATCH:
            mean = total / n
            var = centred / n
            old_mean = tl.load(run_mean_ptr + cols, mask=col_mask, other=0.0)
            old_var = tl.load(run_var_ptr + cols, mask=col_mask, other=1.0)
            new_mean = old_mean.to(ACC) + factor * (mean - old_mean.to(ACC))
            new_var = old_var.to(ACC) + factor * (var * n / (n - 1)
                                                         - old_var.to(ACC))
            tl.store(run_mean_ptr + cols, new_mean.to(old_mean.dtype), mask=col_mask)
            tl.store(run_var_ptr + cols, new_var.to(old_var.dtype), mask=col_mask)
        else:
            mean = tl.load(run_mean_ptr + cols, mask=col_mask, other=0.0).to(ACC)
            var = tl.load(run_var_ptr + cols, mask=col_mask, other=1.0).to(ACC)
        rstd = 1.0 / tl.sqrt(var + eps)
        tl.store(stat_ptr + cols, mean, mask=col_mask)
        tl.store(stat_ptr + C + cols, rstd, mask=col_mask)
        return mean, rstd

    @triton.jit
    def _normalised(ptr, stride, stat_ptr, C, rows, row_mask, cols, col_mask, ACC: tl.constexpr):
        """(z - mean) * rstd of a [rows, cols] tile with this step's saved statistics."""
        mean = tl.load(stat_ptr + cols, mask=col_mask, other=0.0)
        rstd = tl.load(stat_ptr + C + cols, mask=col_mask, other=0.0)
        z = _load_tile(ptr, stride, rows, row_mask, cols, col_mask, ACC)
        return (z - mean[None, :]) * rstd[None, :]

    @triton.jit
    def _preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, row_mask, cols, col_mask,
                       ACC: tl.constexpr):
        """u + gamma_hh * BN(hw) for one gate's columns `cols`."""
        gamma_hh = tl.load(gamma_hh_ptr + cols, mask=col_mask, other=0.0).to(ACC)
        u = _load_tile(u_t, G, rows, row_mask, cols, col_mask, ACC)
        return u + gamma_hh[None, :] * _normalised(hw_t, G, stat_hh_t, G, rows, row_mask, cols,
                                                   col_mask, ACC)

    @triton.jit
    def _tanh_sech2(x):
        """tanh(x) and its derivative 1 - tanh(x)^2, each to a few ulps in relative terms:
        from e = exp(-2|x|) away from 0, the Taylor series near 0 (where 1 - e cancels), and
        sech^2 = 4e / (1 + e)^2 directly (1 - tanh^2 cancels where tanh saturates)."""
        a = tl.abs(x)
        e = tl.exp(-2.0 * a)
        x2 = a * a
        near = -443861162.0 / 1856156927625.0  # Taylor coefficients of tanh, x^19 down to x
        near = near * x2 + 6404582.0 / 10854718875.0
        near = near * x2 - 929569.0 / 638512875.0
        near = near * x2 + 21844.0 / 6081075.0
        near = near * x2 - 1382.0 / 155925.0
        near = near * x2 + 62.0 / 2835.0
        near = near * x2 - 17.0 / 315.0
        near = near * x2 + 2.0 / 15.0
        near = near * x2 - 1.0 / 3.0
        near = a * (near * x2 + 1.0)  # exact to float64 rounding for |x| < 0.2
        t = tl.where(a < 0.2, near, (1.0 - e) / (1.0 + e))
        return tl.where(x < 0, -t, t), 4.0 * e / ((1.0 + e) * (1.0 + e))

    @triton.jit
    def _tanh(x):
        t, _ = _tanh_sech2(x)
        return t

    # The step's own numbers (t_first, n, n_next, row) are not specialised on (Triton compiles
    # a variant per value class: == 1, divisible by 16, other): one binary serves every step.
    # A launch runs `steps` steps from t_first: 1, or with PERSISTENT the whole loop (one
    # program owns every unit, reads each step's numbers from memory, a barrier ends each step).
    PER_STEP = ["t_first", "n", "n_next", "row", "steps"]

    @triton.jit(do_not_specialize=PER_STEP)
    def _fwd_step_kernel(
        # x_t W_ih^T and its batch norm, read or written only with FUSED_INPUT:
        x_ptr,  # [T, B, K_in] the layer's input
        w_ih_ptr,  # [4H, K_in]
        xw_ptr,  # [T, B, 4H] out: x_t W_ih^T in the layer's dtype
        gamma_ih_ptr, bias_ptr,  # [4H]
        run_mean_ih_ptr, run_var_ih_ptr,  # [L, 4H]
        stat_ih_ptr,  # [T, 2, 4H] ACC out: mean, rstd used at step t
        # the recurrence:
        u_ptr,  # [T, B, 4H] ACC: gamma_ih BN_t(x_t W_ih^T) + bias (FUSED_INPUT: written first)
        hw_ptr,  # [T, B, 4H] ACC out: raw h_{t-1} W_hh^T
        y_ptr,  # [T+1, B, H] row 0 = h0, row t+1 = h_t (out)
        cell_ptr,  # [T+1, B, H] ACC: row 0 = c0, row t+1 = c_t (out)
        w_hh_ptr,  # [4H, H]
        gamma_hh_ptr,  # [4H]
        gamma_c_ptr, beta_c_ptr,  # [H]
        run_mean_hh_ptr, run_var_hh_ptr,  # [L, 4H]
        run_mean_c_ptr, run_var_c_ptr,  # [L, H]
        stat_hh_ptr,  # [T, 2, 4H] ACC out: mean, rstd used at step t
        stat_c_ptr,  # [T, 2, H] ACC out
        h_n_ptr, c_n_ptr,  # [B, H] out: rows n_next..n-1 end at this step
        factor_ptr,  # [T] ACC: the update weights, read with FACTOR_IN_MEMORY or PERSISTENT
        # (then < 0: the step normalises with its running row)
        batch_sizes_ptr,  # [T+1] int32: running rows per step, then 0; read with PERSISTENT
        rows_ptr,  # [T] int32: each step's running-statistics row; read with PERSISTENT
        t_first, n, n_next, row, steps, factor: tl.float64, eps: tl.float64, B, H, K_in,
        USE_BATCH: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST_DOT: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, ACC: tl.constexpr, FUSED_INPUT: tl.constexpr,
        FACTOR_IN_MEMORY: tl.constexpr, PERSISTENT: tl.constexpr, ONE_CHUNK: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        # float64 arguments (the launcher would round an unannotated float to float32), used in
        # ACC; tl.full casts both a GPU argument and the interpreter's plain float
        eps = tl.full((), eps, ACC)
        if PERSISTENT:
            for t in range(t_first, t_first + steps):  # step numbers not carried: new names
                n_t = tl.load(batch_sizes_ptr + t)
                n_next_t = tl.load(batch_sizes_ptr + t + 1)
                factor_t = tl.load(factor_ptr + t)
                for unit_block in range(0, tl.cdiv(H, BLOCK_H)):  # what the grid would run
                    _fwd_step(x_ptr, w_ih_ptr, xw_ptr, gamma_ih_ptr, bias_ptr, run_mean_ih_ptr,
                              run_var_ih_ptr, stat_ih_ptr, u_ptr, hw_ptr, y_ptr, cell_ptr,
                              w_hh_ptr, gamma_hh_ptr, gamma_c_ptr, beta_c_ptr, run_mean_hh_ptr,
                              run_var_hh_ptr, run_mean_c_ptr, run_var_c_ptr, stat_hh_ptr,
                              stat_c_ptr, h_n_ptr, c_n_ptr, unit_block, t, n_t, n_next_t,
                              tl.load(rows_ptr + t), factor_t, eps, factor_t >= 0, B, H, K_in,
                              HAS_BIAS, UPCAST_DOT, INPUT_PRECISION, ACC, FUSED_INPUT, ONE_CHUNK,
                              BLOCK_B, BLOCK_H, BLOCK_K)
                tl.debug_barrier()  # h_t and c_t of every unit, before the next step reads them
        else:
            factor = tl.full((), factor, ACC)
            if FACTOR_IN_MEMORY:  # a cumulative average: the weight lives on the device
                factor = tl.load(factor_ptr + t_first)
            _fwd_step(x_ptr, w_ih_ptr, xw_ptr, gamma_ih_ptr, bias_ptr, run_mean_ih_ptr,
                      run_var_ih_ptr, stat_ih_ptr, u_ptr, hw_ptr, y_ptr, cell_ptr, w_hh_ptr,
                      gamma_hh_ptr, gamma_c_ptr, beta_c_ptr, run_mean_hh_ptr, run_var_hh_ptr,
                      run_mean_c_ptr, run_var_c_ptr, stat_hh_ptr, stat_c_ptr, h_n_ptr, c_n_ptr,
                      tl.program_id(0), t_first, n, n_next, row, factor, eps, USE_BATCH, B, H,
                      K_in, HAS_BIAS, UPCAST_DOT, INPUT_PRECISION, ACC, FUSED_INPUT, ONE_CHUNK,
                      BLOCK_B, BLOCK_H, BLOCK_K)

    @triton.jit
    def _fwd_step(x_ptr, w_ih_ptr, xw_ptr, gamma_ih_ptr, bias_ptr, run_mean_ih_ptr,
                  run_var_ih_ptr, stat_ih_ptr, u_ptr, hw_ptr, y_ptr, cell_ptr, w_hh_ptr,
                  gamma_hh_ptr, gamma_c_ptr, beta_c_ptr, run_mean_hh_ptr, run_var_hh_ptr,
                  run_mean_c_ptr, run_var_c_ptr, stat_hh_ptr, stat_c_ptr, h_n_ptr, c_n_ptr,
                  unit_block, t, n, n_next, row, factor, eps, USE_BATCH, B, H, K_in,
                  HAS_BIAS: tl.constexpr, UPCAST_DOT: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr, ACC: tl.constexpr, FUSED_INPUT: tl.constexpr,
                  ONE_CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_K: tl.constexpr):
        """Forward step t of hidden units unit_block * BLOCK_H + [0, BLOCK_H): with ONE_CHUNK
        (every row in one chunk, the input product hoisted) in registers, else chunk by chunk
        through global memory."""
        G = 4 * H
        j = unit_block * BLOCK_H + tl.arange(0, BLOCK_H)
        j_mask = j < H
        rb = tl.arange(0, BLOCK_B)
        # the block's 4 * BLOCK_H features (gate-major: column c is gate c // BLOCK_H of unit
        # c % BLOCK_H)
        c4 = tl.arange(0, 4 * BLOCK_H)
        cols = (c4 // BLOCK_H) * H + unit_block * BLOCK_H + c4 % BLOCK_H
        c_mask = unit_block * BLOCK_H + c4 % BLOCK_H < H
        t64 = tl.full((), t, tl.int64)  # the interpreter's loop counter is a plain int
        xw_t = xw_ptr + t64 * B * G
        u_t = u_ptr + t64 * B * G
        hw_t = hw_ptr + t64 * B * G
        h_prev = y_ptr + t64 * B * H
        c_prev = cell_ptr + t64 * B * H
        h_t = y_ptr + (t64 + 1) * B * H
        c_t = cell_ptr + (t64 + 1) * B * H
        stat_ih_t = stat_ih_ptr + t64 * 2 * G
        stat_hh_t = stat_hh_ptr + t64 * 2 * G
        stat_c_t = stat_c_ptr + t64 * 2 * H
        row64 = row.to(tl.int64)

        if ONE_CHUNK:
            _fwd_in_registers(u_t, hw_t, h_prev, c_prev, h_t, c_t, stat_hh_t, stat_c_t, w_hh_ptr,
                              gamma_hh_ptr, gamma_c_ptr, beta_c_ptr, run_mean_hh_ptr + row64 * G,
                              run_var_hh_ptr + row64 * G, run_mean_c_ptr + row64 * H,
                              run_var_c_ptr + row64 * H, h_n_ptr, c_n_ptr, unit_block, n, n_next,
                              factor, eps, USE_BATCH, H, UPCAST_DOT, INPUT_PRECISION, ACC,
                              BLOCK_B, BLOCK_H, BLOCK_K)
        else:
            # the products' statistics for the program's 4 * BLOCK_H features at once, one matmul
            # per row chunk
            sum_x = tl.zeros((4 * BLOCK_H,), dtype=ACC)
            sum_h = tl.zeros((4 * BLOCK_H,), dtype=ACC)
            for b0 in range(0, n, BLOCK_B):
                rows = b0 + rb
                r_mask = rows < n
                m2 = r_mask[:, None] & c_mask[None, :]
                hw = _tile_matmul(h_prev, H, rows, r_mask, H, w_hh_ptr, 1, H, cols, c_mask, BLOCK_B,
                                  4 * BLOCK_H, BLOCK_K, UPCAST_DOT, INPUT_PRECISION, ACC)
                tl.store(_tile_ptrs(hw_t, G, rows, cols), hw, mask=m2)
                sum_h += tl.sum(hw, axis=0)
                if FUSED_INPUT:  # rounded to the layer's dtype, as the hoisted GEMM's result
                    xw = _tile_matmul(x_ptr + t64 * B * K_in, K_in, rows, r_mask, K_in, w_ih_ptr, 1,
                                      K_in, cols, c_mask, BLOCK_B, 4 * BLOCK_H, BLOCK_K, UPCAST_DOT,
                                      INPUT_PRECISION, ACC).to(xw_ptr.dtype.element_ty)
                    tl.store(_tile_ptrs(xw_t, G, rows, cols), xw, mask=m2)
                    sum_x += tl.sum(xw.to(ACC), axis=0)
            sq_x = tl.zeros((4 * BLOCK_H,), dtype=ACC)
            sq_h = tl.zeros((4 * BLOCK_H,), dtype=ACC)
            if USE_BATCH:
                tl.debug_barrier()  # hw (xw) chunks were stored by other threads' layout
                for b0 in range(0, n, BLOCK_B):
                    rows = b0 + rb
                    r_mask = rows < n
                    m2 = r_mask[:, None] & c_mask[None, :]
                    dh = _load_tile(hw_t, G, rows, r_mask, cols, c_mask, ACC) - (sum_h / n)[None, :]
                    sq_h += tl.sum(tl.where(m2, dh * dh, 0.0), axis=0)
                    if FUSED_INPUT:
                        dx = (_load_tile(xw_t, G, rows, r_mask, cols, c_mask, ACC)
                              - (sum_x / n)[None, :])
                        sq_x += tl.sum(tl.where(m2, dx * dx, 0.0), axis=0)
            _statistics(sum_h, sq_h, n, factor, eps, run_mean_hh_ptr + row64 * G,
                        run_var_hh_ptr + row64 * G, stat_hh_t, G, cols, c_mask, USE_BATCH, ACC)
            if FUSED_INPUT:
                _statistics(sum_x, sq_x, n, factor, eps, run_mean_ih_ptr + row64 * G,
                            run_var_ih_ptr + row64 * G, stat_ih_t, G, cols, c_mask, USE_BATCH, ACC)
            tl.debug_barrier()

            if FUSED_INPUT:  # u_t, in input_norm.contribution's order (the backward recomputes it)
                scale = (tl.load(gamma_ih_ptr + cols, mask=c_mask, other=0.0).to(ACC)
                         * tl.load(stat_ih_t + G + cols, mask=c_mask, other=0.0))
                mean = tl.load(stat_ih_t + cols, mask=c_mask, other=0.0)
                for b0 in range(0, n, BLOCK_B):
                    rows = b0 + rb
                    r_mask = rows < n
                    xw = _load_tile(xw_t, G, rows, r_mask, cols, c_mask, ACC)
                    u = (xw - mean[None, :]) * scale[None, :]
                    if HAS_BIAS:
                        u += tl.load(bias_ptr + cols, mask=c_mask, other=0.0).to(ACC)[None, :]
                    tl.store(_tile_ptrs(u_t, G, rows, cols), u,
                             mask=r_mask[:, None] & c_mask[None, :])
                tl.debug_barrier()

            sum_c = tl.zeros((BLOCK_H,), dtype=ACC)
            for b0 in range(0, n, BLOCK_B):
                rows = b0 + rb
                r_mask = rows < n
                m2 = r_mask[:, None] & j_mask[None, :]
                i = tl.sigmoid(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                              j, j_mask, ACC))
                f = tl.sigmoid(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                              H + j, j_mask, ACC))
                gg = _tanh(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                          2 * H + j, j_mask, ACC))
                c = f * _load_tile(c_prev, H, rows, r_mask, j, j_mask, ACC) + i * gg
                tl.store(_tile_ptrs(c_t, H, rows, j), c, mask=m2)
                tl.store(_tile_ptrs(c_n_ptr, H, rows, j), c.to(c_n_ptr.dtype.element_ty),
                         mask=m2 & (rows >= n_next)[:, None])
                sum_c += tl.sum(tl.where(m2, c, 0.0), axis=0)
            tl.debug_barrier()
            sq_c = tl.zeros((BLOCK_H,), dtype=ACC)
            if USE_BATCH:
                for b0 in range(0, n, BLOCK_B):
                    rows = b0 + rb
                    r_mask = rows < n
                    m2 = r_mask[:, None] & j_mask[None, :]
                    c = _load_tile(c_t, H, rows, r_mask, j, j_mask, ACC)
                    d = c - (sum_c / n)[None, :]
                    sq_c += tl.sum(tl.where(m2, d * d, 0.0), axis=0)
            _statistics(sum_c, sq_c, n, factor, eps, run_mean_c_ptr + row64 * H,
                        run_var_c_ptr + row64 * H, stat_c_t, H, j, j_mask, USE_BATCH, ACC)
            tl.debug_barrier()

            gamma_c = tl.load(gamma_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
            beta_c = tl.load(beta_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
            for b0 in range(0, n, BLOCK_B):
                rows = b0 + rb
                r_mask = rows < n
                chat = _normalised(c_t, H, stat_c_t, H, rows, r_mask, j, j_mask, ACC)
                o = tl.sigmoid(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                              3 * H + j, j_mask, ACC))
                h = o * _tanh(gamma_c[None, :] * chat + beta_c[None, :])
                m2 = r_mask[:, None] & j_mask[None, :]
                tl.store(_tile_ptrs(h_t, H, rows, j), h.to(y_ptr.dtype.element_ty), mask=m2)
                tl.store(_tile_ptrs(h_n_ptr, H, rows, j), h.to(h_n_ptr.dtype.element_ty),
                         mask=m2 & (rows >= n_next)[:, None])

    @triton.jit
    def _gates(pre, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
        """The gates i, f, g, o ([BLOCK_B, BLOCK_H] each) of a gate-major [BLOCK_B, 4 * BLOCK_H]
        tile: gate 2p + q is split off by q, then by p."""
        x = tl.permute(tl.reshape(pre, (BLOCK_B, 4, BLOCK_H)), (0, 2, 1))
        even, odd = tl.split(tl.reshape(x, (BLOCK_B, BLOCK_H, 2, 2)))
        i, g = tl.split(even)
        f, o = tl.split(odd)
        return i, f, g, o

    @triton.jit
    def _one_chunk_tiles(unit_block, n, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
        """The in-register step's indices: the program's units j, the rows, its 4 * BLOCK_H
        gate-major feature columns, their masks, and the [rows, units] and [rows, features]
        masks of the running rows."""
        j = unit_block * BLOCK_H + tl.arange(0, BLOCK_H)
        j_mask = j < H
        rows = tl.arange(0, BLOCK_B)
        r_mask = rows < n
        c4 = tl.arange(0, 4 * BLOCK_H)
        cols = (c4 // BLOCK_H) * H + unit_block * BLOCK_H + c4 % BLOCK_H
        c_mask = unit_block * BLOCK_H + c4 % BLOCK_H < H
        return (j, j_mask, rows, r_mask, cols, c_mask, r_mask[:, None] & j_mask[None, :],
                r_mask[:, None] & c_mask[None, :])

    @triton.jit
    def _fwd_in_registers(u_t, hw_t, h_prev, c_prev, h_t, c_t, stat_hh_t, stat_c_t, w_hh_ptr,
                          gamma_hh_ptr, gamma_c_ptr, beta_c_ptr, run_mean_hh, run_var_hh,
                          run_mean_c, run_var_c, h_n_ptr, c_n_ptr, unit_block, n, n_next, factor,
                          eps, USE_BATCH, H, UPCAST_DOT: tl.constexpr,
                          INPUT_PRECISION: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
        """Forward step t where every running row fits one chunk: the product's tile, its
        statistics, the gates, c_t and its statistics and h_t stay in registers; hw, c_t and the
        statistics are stored once, for the backward (the same sums as one chunk of the chunked
        path, in the same order)."""
        G = 4 * H
        j, j_mask, rows, r_mask, cols, c_mask, m2, m4 = _one_chunk_tiles(unit_block, n, H,
                                                                         BLOCK_B, BLOCK_H)
        hw = _tile_matmul(h_prev, H, rows, r_mask, H, w_hh_ptr, 1, H, cols, c_mask, BLOCK_B,
                          4 * BLOCK_H, BLOCK_K, UPCAST_DOT, INPUT_PRECISION, ACC)
        tl.store(_tile_ptrs(hw_t, G, rows, cols), hw, mask=m4)
        total = tl.sum(hw, axis=0)  # rows past n are 0: their h rows load as 0
        d = tl.where(m4, hw - (total / n)[None, :], 0.0)
        mean, rstd = _statistics(total, tl.sum(d * d, axis=0), n, factor, eps, run_mean_hh,
                                 run_var_hh, stat_hh_t, G, cols, c_mask, USE_BATCH, ACC)
        gamma_hh = tl.load(gamma_hh_ptr + cols, mask=c_mask, other=0.0).to(ACC)
        u = _load_tile(u_t, G, rows, r_mask, cols, c_mask, ACC)
        i, f, g, o = _gates(u + gamma_hh[None, :] * ((hw - mean[None, :]) * rstd[None, :]),
                            BLOCK_B, BLOCK_H)
        c = (tl.sigmoid(f) * _load_tile(c_prev, H, rows, r_mask, j, j_mask, ACC)
             + tl.sigmoid(i) * _tanh(g))
        tl.store(_tile_ptrs(c_t, H, rows, j), c, mask=m2)
        tl.store(_tile_ptrs(c_n_ptr, H, rows, j), c.to(c_n_ptr.dtype.element_ty),
                 mask=m2 & (rows >= n_next)[:, None])
        total_c = tl.sum(tl.where(m2, c, 0.0), axis=0)
        d = tl.where(m2, c - (total_c / n)[None, :], 0.0)
        mean_c, rstd_c = _statistics(total_c, tl.sum(d * d, axis=0), n, factor, eps, run_mean_c,
                                     run_var_c, stat_c_t, H, j, j_mask, USE_BATCH, ACC)
        gamma_c = tl.load(gamma_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
        beta_c = tl.load(beta_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
        chat = (c - mean_c[None, :]) * rstd_c[None, :]
        h = tl.sigmoid(o) * _tanh(gamma_c[None, :] * chat + beta_c[None, :])
        tl.store(_tile_ptrs(h_t, H, rows, j), h.to(h_t.dtype.element_ty), mask=m2)
        tl.store(_tile_ptrs(h_n_ptr, H, rows, j), h.to(h_n_ptr.dtype.element_ty),
                 mask=m2 & (rows >= n_next)[:, None])

    @triton.jit
    def _bn_backward(d, xhat, rstd, sum_d, sum_dx, n, USE_BATCH):
        """Gradient through (z - mean) * rstd given d = dL/dxhat; with batch statistics the
        mean and variance depend on every row (sum_d, sum_dx: batch sums of d and d * xhat)."""
        if USE_BATCH:
            d = d - sum_d[None, :] / n - xhat * (sum_dx / n)[None, :]
        return rstd[None, :] * d

    @triton.jit(do_not_specialize=["t_last", "n", "n_next", "steps"])
    def _bwd_step_kernel(
        u_ptr,  # [T, B, 4H] ACC: the input's contribution, as the forward read it
        hw_ptr,  # [T, B, 4H] ACC as saved by the forward
        cell_ptr,  # [T+1, B, H] ACC, row 0 = c0
        w_hh_ptr,  # [4H, H]
        gamma_hh_ptr,  # [4H]
        gamma_c_ptr, beta_c_ptr,  # [H]
        stat_hh_ptr, stat_c_ptr,  # [T, 2, 4H], [T, 2, H]
        dy_ptr,  # [T, B, H] gradient of the output
        dh_n_ptr,  # [B, H] gradient of h_n (rows that end at step t take it)
        dpre_ptr,  # [T, B, 4H] ACC out: gradient of the pre-activation (u's)
        dpre_hh_ptr,  # [T, B, 4H] ACC out: that of h_{t-1} W_hh^T; dpre_hh[t+1] is read
        dh_ptr,  # [B, H] ACC scratch: dL/dh_t of this step
        dc_ptr,  # [B, H] ACC carry: dL/dc_t in, dL/dc_{t-1} out (starts as dc_n)
        dsum_ptr,  # [T, 4H] ACC out: batch sums of dpre * xhat_hh
        dsum_c_ptr,  # [T, 2, H] ACC out: batch sums of dcn*chat, dcn
        batch_sizes_ptr,  # [T+1] int32: running rows per step, then 0; read with PERSISTENT
        use_batch_ptr,  # [T] int32: batch statistics at step t (else running); PERSISTENT
        t_last, n, n_next, steps, B, H,
        USE_BATCH: tl.constexpr, UPCAST_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        ACC: tl.constexpr, PERSISTENT: tl.constexpr, ONE_CHUNK: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """Steps t_last, t_last - 1, ..., t_last - steps + 1 (as _fwd_step_kernel's, reversed)."""
        if PERSISTENT:
            for s in range(0, steps):  # step numbers not carried: new names
                t = t_last - s
                n_t = tl.load(batch_sizes_ptr + t)
                n_next_t = tl.load(batch_sizes_ptr + t + 1)
                use_batch = tl.load(use_batch_ptr + t) != 0
                for unit_block in range(0, tl.cdiv(H, BLOCK_H)):  # what the grid would run
                    _bwd_step(u_ptr, hw_ptr, cell_ptr, w_hh_ptr, gamma_hh_ptr, gamma_c_ptr,
                              beta_c_ptr, stat_hh_ptr, stat_c_ptr, dy_ptr, dh_n_ptr, dpre_ptr,
                              dpre_hh_ptr, dh_ptr, dc_ptr, dsum_ptr, dsum_c_ptr, unit_block, t,
                              n_t, n_next_t, use_batch, B, H, UPCAST_DOT, INPUT_PRECISION, ACC,
                              ONE_CHUNK, BLOCK_B, BLOCK_H, BLOCK_K)
                tl.debug_barrier()  # dpre_hh[t] of every unit, before step t-1 reads it
        else:
            _bwd_step(u_ptr, hw_ptr, cell_ptr, w_hh_ptr, gamma_hh_ptr, gamma_c_ptr, beta_c_ptr,
                      stat_hh_ptr, stat_c_ptr, dy_ptr, dh_n_ptr, dpre_ptr, dpre_hh_ptr, dh_ptr,
                      dc_ptr, dsum_ptr, dsum_c_ptr, tl.program_id(0), t_last, n, n_next,
                      USE_BATCH, B, H, UPCAST_DOT, INPUT_PRECISION, ACC, ONE_CHUNK, BLOCK_B,
                      BLOCK_H, BLOCK_K)

    @triton.jit
    def _bwd_step(u_ptr, hw_ptr, cell_ptr, w_hh_ptr, gamma_hh_ptr, gamma_c_ptr, beta_c_ptr,
                  stat_hh_ptr, stat_c_ptr, dy_ptr, dh_n_ptr, dpre_ptr, dpre_hh_ptr, dh_ptr,
                  dc_ptr, dsum_ptr, dsum_c_ptr, unit_block, t, n, n_next, USE_BATCH, B, H,
                  UPCAST_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr, ACC: tl.constexpr,
                  ONE_CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_K: tl.constexpr):
        """Backward step t of hidden units unit_block * BLOCK_H + [0, BLOCK_H): with ONE_CHUNK
        (every row in one chunk) in registers, else chunk by chunk through global memory."""
        G = 4 * H
        j = unit_block * BLOCK_H + tl.arange(0, BLOCK_H)
        j_mask = j < H
        rb = tl.arange(0, BLOCK_B)
        t64 = tl.full((), t, tl.int64)  # the interpreter's loop counter is a plain int
        u_t = u_ptr + t64 * B * G
        hw_t = hw_ptr + t64 * B * G
        c_prev = cell_ptr + t64 * B * H
        c_t = cell_ptr + (t64 + 1) * B * H
        stat_hh_t = stat_hh_ptr + t64 * 2 * G
        stat_c_t = stat_c_ptr + t64 * 2 * H
        dpre_t = dpre_ptr + t64 * B * G
        dpre_hh_t = dpre_hh_ptr + t64 * B * G
        dpre_hh_next = dpre_hh_ptr + (t64 + 1) * B * G
        if ONE_CHUNK:
            _bwd_in_registers(u_t, hw_t, c_prev, c_t, stat_hh_t, stat_c_t,
                              dy_ptr + t64 * B * H, dh_n_ptr, dpre_t, dpre_hh_t, dpre_hh_next,
                              dc_ptr, dsum_ptr + t64 * G, dsum_c_ptr + t64 * 2 * H, w_hh_ptr,
                              gamma_hh_ptr, gamma_c_ptr, beta_c_ptr, unit_block, n, n_next,
                              USE_BATCH, H, UPCAST_DOT, INPUT_PRECISION, ACC, BLOCK_B, BLOCK_H,
                              BLOCK_K)
        else:
            gamma_c = tl.load(gamma_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
            beta_c = tl.load(beta_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
            rstd_c = tl.load(stat_c_t + H + j, mask=j_mask, other=0.0)

            # dh_t and the batch sums through the cell norm
            sum_dcn = tl.zeros((BLOCK_H,), dtype=ACC)
            sum_dcn_chat = tl.zeros((BLOCK_H,), dtype=ACC)
            for b0 in range(0, n, BLOCK_B):
                rows = b0 + rb
                r_mask = rows < n
                m2 = r_mask[:, None] & j_mask[None, :]
                carried = _tile_matmul(dpre_hh_next, G, rows, rows < n_next, G, w_hh_ptr, H, 1,
                                       j, j_mask, BLOCK_B, BLOCK_H, BLOCK_K, UPCAST_DOT,
                                       INPUT_PRECISION, ACC)
                ending = _load_tile(dh_n_ptr, H, rows, r_mask & (rows >= n_next), j, j_mask, ACC)
                dy = _load_tile(dy_ptr + t64 * B * H, H, rows, r_mask, j, j_mask, ACC)
                dh = dy + carried + ending
                tl.store(_tile_ptrs(dh_ptr, H, rows, j), dh, mask=m2)
                chat = _normalised(c_t, H, stat_c_t, H, rows, r_mask, j, j_mask, ACC)
                o = tl.sigmoid(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                              3 * H + j, j_mask, ACC))
                _, sech2_cn = _tanh_sech2(gamma_c[None, :] * chat + beta_c[None, :])
                dcn = tl.where(m2, dh * o * sech2_cn, 0.0)
                sum_dcn += tl.sum(dcn, axis=0)
                sum_dcn_chat += tl.sum(dcn * chat, axis=0)
            tl.store(dsum_c_ptr + t64 * 2 * H + j, sum_dcn_chat, mask=j_mask)
            tl.store(dsum_c_ptr + t64 * 2 * H + H + j, sum_dcn, mask=j_mask)
            tl.debug_barrier()

            # through the gates: dpre[t] (raw: the input norm's backward runs on it after the loop)
            # and dc
            for b0 in range(0, n, BLOCK_B):
                rows = b0 + rb
                r_mask = rows < n
                m2 = r_mask[:, None] & j_mask[None, :]
                dh = _load_tile(dh_ptr, H, rows, r_mask, j, j_mask, ACC)
                chat = _normalised(c_t, H, stat_c_t, H, rows, r_mask, j, j_mask, ACC)
                i = tl.sigmoid(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                              j, j_mask, ACC))
                f = tl.sigmoid(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                              H + j, j_mask, ACC))
                gg, sech2_g = _tanh_sech2(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G,
                                                         rows, r_mask, 2 * H + j, j_mask, ACC))
                o = tl.sigmoid(_preactivation(u_t, hw_t, stat_hh_t, gamma_hh_ptr, G, rows, r_mask,
                                              3 * H + j, j_mask, ACC))
                tanh_cn, sech2_cn = _tanh_sech2(gamma_c[None, :] * chat + beta_c[None, :])
                dcn = dh * o * sech2_cn
                dc = _load_tile(dc_ptr, H, rows, r_mask, j, j_mask, ACC)
                dc += gamma_c[None, :] * _bn_backward(dcn, chat, rstd_c, sum_dcn, sum_dcn_chat, n,
                                                      USE_BATCH)
                c_before = _load_tile(c_prev, H, rows, r_mask, j, j_mask, ACC)
                tl.store(_tile_ptrs(dc_ptr, H, rows, j), dc * f, mask=m2)
                out = _tile_ptrs(dpre_t, G, rows, j)
                tl.store(out, dc * gg * i * (1.0 - i), mask=m2)
                tl.store(out + H, dc * c_before * f * (1.0 - f), mask=m2)
                tl.store(out + 2 * H, dc * i * sech2_g, mask=m2)
                tl.store(out + 3 * H, dh * tanh_cn * o * (1.0 - o), mask=m2)
            tl.debug_barrier()

            # through BN(h W_hh^T), one gate at a time
            for g in tl.static_range(4):
                cols = g * H + j
                gamma_hh = tl.load(gamma_hh_ptr + cols, mask=j_mask, other=0.0).to(ACC)
                rstd_hh = tl.load(stat_hh_t + G + cols, mask=j_mask, other=0.0)
                sum_d = tl.zeros((BLOCK_H,), dtype=ACC)
                sum_d_hh = tl.zeros((BLOCK_H,), dtype=ACC)
                for b0 in range(0, n, BLOCK_B):
                    rows = b0 + rb
                    r_mask = rows < n
                    d = _load_tile(dpre_t, G, rows, r_mask, cols, j_mask, ACC)
                    sum_d += tl.sum(d, axis=0)
                    sum_d_hh += tl.sum(d * _normalised(hw_t, G, stat_hh_t, G, rows, r_mask, cols,
                                                       j_mask, ACC), axis=0)
                tl.store(dsum_ptr + t64 * G + cols, sum_d_hh, mask=j_mask)
                for b0 in range(0, n, BLOCK_B):
                    rows = b0 + rb
                    r_mask = rows < n
                    d = _load_tile(dpre_t, G, rows, r_mask, cols, j_mask, ACC)
                    xhat_hh = _normalised(hw_t, G, stat_hh_t, G, rows, r_mask, cols, j_mask, ACC)
                    d_hh = _bn_backward(gamma_hh[None, :] * d, xhat_hh, rstd_hh, gamma_hh * sum_d,
                                        gamma_hh * sum_d_hh, n, USE_BATCH)
                    tl.store(_tile_ptrs(dpre_hh_t, G, rows, cols), d_hh,
                             mask=r_mask[:, None] & j_mask[None, :])

    @triton.jit
    def _joined(i, f, g, o, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
        """The gate-major [BLOCK_B, 4 * BLOCK_H] tile of the four gates' tiles (_gates undone)."""
        x = tl.join(tl.join(i, g), tl.join(f, o))  # [BLOCK_B, BLOCK_H, p, q]: gate 2p + q
        return tl.reshape(tl.permute(tl.reshape(x, (BLOCK_B, BLOCK_H, 4)), (0, 2, 1)),
                          (BLOCK_B, 4 * BLOCK_H))

    @triton.jit
    def _bwd_in_registers(u_t, hw_t, c_prev, c_t, stat_hh_t, stat_c_t, dy_t, dh_n_ptr, dpre_t,
                          dpre_hh_t, dpre_hh_next, dc_ptr, dsum_t, dsum_c_t, w_hh_ptr,
                          gamma_hh_ptr, gamma_c_ptr, beta_c_ptr, unit_block, n, n_next,
                          USE_BATCH, H, UPCAST_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                          ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_K: tl.constexpr):
        """Backward step t where every running row fits one chunk: dh_t, the gates (recomputed
        once from u, hw and the saved statistics), both norms' backward and dpre stay in
        registers; dpre, dpre_hh, the dc carry and the per-step sums are stored once."""
        G = 4 * H
        j, j_mask, rows, r_mask, cols, c_mask, m2, m4 = _one_chunk_tiles(unit_block, n, H,
                                                                         BLOCK_B, BLOCK_H)
        dh = (_load_tile(dy_t, H, rows, r_mask, j, j_mask, ACC)
              + _tile_matmul(dpre_hh_next, G, rows, rows < n_next, G, w_hh_ptr, H, 1, j, j_mask,
                             BLOCK_B, BLOCK_H, BLOCK_K, UPCAST_DOT, INPUT_PRECISION, ACC)
              + _load_tile(dh_n_ptr, H, rows, r_mask & (rows >= n_next), j, j_mask, ACC))
        gamma_hh = tl.load(gamma_hh_ptr + cols, mask=c_mask, other=0.0).to(ACC)
        rstd_hh = tl.load(stat_hh_t + G + cols, mask=c_mask, other=0.0)
        xhat_hh = _normalised(hw_t, G, stat_hh_t, G, rows, r_mask, cols, c_mask, ACC)
        pi, pf, pg, po = _gates(_load_tile(u_t, G, rows, r_mask, cols, c_mask, ACC)
                                + gamma_hh[None, :] * xhat_hh, BLOCK_B, BLOCK_H)
        i = tl.sigmoid(pi)
        f = tl.sigmoid(pf)
        gg, sech2_g = _tanh_sech2(pg)
        o = tl.sigmoid(po)
        gamma_c = tl.load(gamma_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
        beta_c = tl.load(beta_c_ptr + j, mask=j_mask, other=0.0).to(ACC)
        rstd_c = tl.load(stat_c_t + H + j, mask=j_mask, other=0.0)
        chat = _normalised(c_t, H, stat_c_t, H, rows, r_mask, j, j_mask, ACC)
        tanh_cn, sech2_cn = _tanh_sech2(gamma_c[None, :] * chat + beta_c[None, :])
        dcn = tl.where(m2, dh * o * sech2_cn, 0.0)
        sum_dcn = tl.sum(dcn, axis=0)
        sum_dcn_chat = tl.sum(dcn * chat, axis=0)
        tl.store(dsum_c_t + j, sum_dcn_chat, mask=j_mask)
        tl.store(dsum_c_t + H + j, sum_dcn, mask=j_mask)
        dc = _load_tile(dc_ptr, H, rows, r_mask, j, j_mask, ACC) + gamma_c[None, :] * _bn_backward(
            dcn, chat, rstd_c, sum_dcn, sum_dcn_chat, n, USE_BATCH)
        tl.store(_tile_ptrs(dc_ptr, H, rows, j), dc * f, mask=m2)
        c_before = _load_tile(c_prev, H, rows, r_mask, j, j_mask, ACC)
        dpre = tl.where(m4, _joined(dc * gg * i * (1.0 - i), dc * c_before * f * (1.0 - f),
                                    dc * i * sech2_g, dh * tanh_cn * o * (1.0 - o), BLOCK_B,
                                    BLOCK_H), 0.0)
        tl.store(_tile_ptrs(dpre_t, G, rows, cols), dpre, mask=m4)
        sum_d = tl.sum(dpre, axis=0)
        sum_d_hh = tl.sum(dpre * xhat_hh, axis=0)
        tl.store(dsum_t + cols, sum_d_hh, mask=c_mask)
        d_hh = _bn_backward(gamma_hh[None, :] * dpre, xhat_hh, rstd_hh, gamma_hh * sum_d,
                            gamma_hh * sum_d_hh, n, USE_BATCH)
        tl.store(_tile_ptrs(dpre_hh_t, G, rows, cols), d_hh, mask=m4)


def _kernel_flags(device: torch.device, acc: torch.dtype) -> dict:
    """The interpreter (CPU tensors) mis-computes low-precision tl.dot, so there the operands
    are rounded to the weights' dtype, as the GPU's tensor cores take them, and multiplied in
    ACC. fp32 products run on tensor cores either way: in TF32 where torch's matmuls may
    (torch.backends.cuda.matmul.allow_tf32), else as tf32x3 (three TF32 products, about fp32's
    accuracy); float64 stays exact, as it is the check."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    precision = "ieee" if acc == torch.float64 else "tf32" if tf32 else "tf32x3"
    return dict(UPCAST_DOT=device.type == "cpu", INPUT_PRECISION=precision,
                ACC=tl.float64 if acc == torch.float64 else tl.float32)


# A layer of up to PERSISTENT_MAX_H units runs its T steps in one launch of one program that
# owns every unit (no launch per step, no synchronisation between programs: a barrier ends each
# step); each step it runs, block after block of units, what the step kernels' programs would,
# in 16-row chunks over 8 warps (taller chunks, or 4 warps, spill in its float64 backward).
PERSISTENT_MAX_H = 128
PERSISTENT_CONFIG = Config(16, 16, 16, 8)


class Plan(NamedTuple):
    """How a loop launches: its configuration, grid, and whether one launch runs every step."""

    cfg: Config
    grid: tuple
    persistent: bool


def multiprocessors(device: torch.device) -> int:
    """The SM count of `device` (an H100's 132 where no CUDA device answers: the compile report
    plans launches on a machine without one)."""
    if not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def narrowed(cfg: Config, H: int, sms: int) -> Config:
    """The hoisted forward's configuration: cfg where its grid of 16-unit programs fills
    SM_SHARE of the SMs, else the same rows in 4-unit programs (NARROW_CONFIGS)."""
    if triton.cdiv(H, cfg.block_h) >= SM_SHARE * sms:
        return cfg
    return NARROW_CONFIGS[CONFIGS.index(cfg)]


def plan(B: int, H: int, device: torch.device, backward: bool = False,
         fused_input: bool = False, sms: Optional[int] = None) -> Plan:
    """The launch of one layer's loop (fused_input: the forward computing x W_ih^T per step,
    which stays one launch per step; sms: the SM count the forward's grid should fill, by
    default the device's)."""
    persistent = (SETTINGS.persistent if SETTINGS.persistent is not None
                  else device.type == "cuda" and H <= PERSISTENT_MAX_H) and not fused_input
    if persistent:
        return Plan(PERSISTENT_CONFIG, (1,), True)
    if SETTINGS.config is None:
        cfg = pick_config(B, device, fused_input or backward)
        if device.type == "cuda" and not (fused_input or backward):
            cfg = narrowed(cfg, H, sms or multiprocessors(device))
    else:
        cfg = SETTINGS.config._replace(block_h=max(SETTINGS.config.block_h, 16)) if backward \
            else SETTINGS.config
    return Plan(cfg, (triton.cdiv(H, cfg.block_h),), False)


def _per_step(values, device) -> torch.Tensor:
    """Per-step numbers for a persistent launch: int32 on the device."""
    return device_numbers(values, torch.int32, device)


def _launch_forward(u, weight_hh, gamma_hh, gamma_c, beta_c, h0, c0, mean_hh, var_hh, mean_c,
                    var_c, batch_sizes, rows, factors, factor_values, eps, in_step=None):
    """One fused launch per step; factors[t] < 0: step t normalises with its running row, else
    it moves the row by factors[t] (by factor_values[t] where given). The launches read u, or
    with in_step = (x, weight_ih, bias, gamma_ih, mean_ih, var_ih, xw, stat_ih) first compute
    x_t W_ih^T into xw, its statistics into stat_ih (moving mean_ih, var_ih) and u from them."""
    T, B, G = u.shape
    H = G // 4
    dev = u.device
    fused_input = in_step is not None
    cfg, grid, persistent = plan(B, H, dev, fused_input=fused_input)
    acc = u.dtype
    y = h0.new_zeros(T + 1, B, H)
    y[0] = h0
    cell = torch.empty(T + 1, B, H, device=dev, dtype=acc)
    cell[0] = c0
    hw = torch.empty(T, B, G, device=dev, dtype=acc)
    stat_hh = torch.empty(T, 2, G, device=dev, dtype=acc)
    stat_c = torch.empty(T, 2, H, device=dev, dtype=acc)
    # rows that never run (batch_sizes[0] < B) keep h0/c0; row-major, as the kernel writes them
    h_n, c_n = (t.clone(memory_format=torch.contiguous_format) for t in (h0, c0))
    if fused_input:
        x, weight_ih, bias, gamma_ih, mean_ih, var_ih, xw, stat_ih = in_step
        has_bias, k_in = bias is not None, x.shape[-1]
        bias = bias if has_bias else gamma_ih  # never read without HAS_BIAS
        inputs = (x.contiguous(), weight_ih.contiguous(), xw, gamma_ih.contiguous(),
                  bias.contiguous(), mean_ih, var_ih, stat_ih)
    else:
        has_bias, k_in = False, 1
        inputs = (u,) * 8  # never read without FUSED_INPUT
    in_memory = factor_values is not None
    if persistent:  # every step's weight on the device, -1 where it reads its running row
        numbers = device_numbers(factors, acc, dev)
        factor_values = numbers if not in_memory else torch.where(numbers < 0, numbers,
                                                                  factor_values)
        per_step = (_per_step([*batch_sizes, 0], dev), _per_step(rows, dev))
    else:
        factor_values = factor_values.contiguous() if in_memory else stat_c  # else never read
        per_step = (stat_c, stat_c)  # never read without PERSISTENT
    layer = (t.contiguous() for t in (weight_hh, gamma_hh, gamma_c, beta_c))
    tensors = (*inputs, u, hw, y, cell, *layer, mean_hh, var_hh, mean_c, var_c, stat_hh, stat_c,
               h_n, c_n, factor_values, *per_step)
    flags = _kernel_flags(dev, acc)

    def run(t, n, n_next, row, steps, factor, **switches):
        _fwd_step_kernel[grid](
            *tensors, t, n, n_next, row, steps, factor, float(eps), B, H, k_in,
            HAS_BIAS=has_bias, **flags, FUSED_INPUT=fused_input, PERSISTENT=persistent,
            ONE_CHUNK=B <= cfg.block_b and not fused_input, BLOCK_B=cfg.block_b,
            BLOCK_H=cfg.block_h,
            BLOCK_K=cfg.block_k, **switches, **launch_options(cfg))

    if persistent:
        with step_graphs.device_guard(dev):
            run(0, 0, 0, 0, T, 0.0, USE_BATCH=True, FACTOR_IN_MEMORY=False)
        return y, h_n, c_n, cell, hw, stat_hh, stat_c

    def launch():
        for t in range(T):
            run(t, batch_sizes[t], batch_sizes[t + 1] if t + 1 < T else 0, rows[t], 1,
                factors[t], USE_BATCH=factors[t] >= 0, FACTOR_IN_MEMORY=in_memory)

    key = step_graphs.graph_key(tensors, "fwd", tuple(batch_sizes), tuple(rows),
                                tuple(factors), eps, tuple(flags.items()), fused_input,
                                has_bias, in_memory, cfg)
    step_graphs.GRAPHS.run(key, launch, dev)
    return y, h_n, c_n, cell, hw, stat_hh, stat_c


def _launch_backward(u, hw, cell, weight_hh, gamma_hh, gamma_c, beta_c, stat_hh, stat_c, dy,
                     dh_n, dc_n, batch_sizes, use_batch):
    """One fused launch per step in reverse (or one for all, Plan), then dh0 and the
    per-feature sums over steps."""
    T, B, G = hw.shape
    H = G // 4
    dev = dy.device
    cfg, grid, persistent = plan(B, H, dev, backward=True)
    acc = hw.dtype
    flags = _kernel_flags(dev, acc)
    weight_hh = weight_hh.contiguous()
    dpre = torch.zeros(T, B, G, device=dev, dtype=acc)
    dpre_hh = torch.zeros(T, B, G, device=dev, dtype=acc)  # step T-1 reads no row past it
    dh = torch.empty(B, H, device=dev, dtype=acc)
    dc = dc_n.to(acc).clone(memory_format=torch.contiguous_format)  # the kernel's carry
    dsum = torch.empty(T, G, device=dev, dtype=acc)
    dsum_c = torch.empty(T, 2, H, device=dev, dtype=acc)
    per_step = ((_per_step([*batch_sizes, 0], dev), _per_step(use_batch, dev)) if persistent
                else (dsum, dsum))  # never read without PERSISTENT
    tensors = (u.contiguous(), hw, cell, weight_hh,
               *(t.contiguous() for t in (gamma_hh, gamma_c, beta_c)), stat_hh, stat_c,
               dy.contiguous(), dh_n.to(acc).contiguous(), dpre, dpre_hh, dh, dc, dsum, dsum_c,
               *per_step)

    def run(t, n, n_next, steps, use_batch_t):
        _bwd_step_kernel[grid](
            *tensors, t, n, n_next, steps, B, H, USE_BATCH=use_batch_t, **flags,
            PERSISTENT=persistent, ONE_CHUNK=B <= cfg.block_b, BLOCK_B=cfg.block_b,
            BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, **launch_options(cfg))

    def launch():
        for t in reversed(range(T)):
            run(t, batch_sizes[t], batch_sizes[t + 1] if t + 1 < T else 0, 1, use_batch[t])

    if persistent:
        with step_graphs.device_guard(dev):
            run(T - 1, 0, 0, T, True)
    else:
        key = step_graphs.graph_key(tensors, "bwd", tuple(batch_sizes), tuple(use_batch),
                                    tuple(flags.items()), cfg)
        step_graphs.GRAPHS.run(key, launch, dev)
    dh0 = dpre_hh[0] @ weight_hh.to(acc)
    dgamma_c, dbeta_c = (dsum_c[:, k].sum(0) for k in range(2))  # outputs may not alias
    return dpre, dpre_hh, dh0, dc, dsum.sum(0), dgamma_c, dbeta_c


@torch.library.custom_op("bnlstm_triton::forward_loop", mutates_args=fused.MUTATED,
                         schema=fused.FORWARD_SCHEMA)
def _forward_op(u, *args):
    """The step loop given the input's contribution u."""
    return _launch_forward(u.contiguous(), *args)


@torch.library.custom_op("bnlstm_triton::forward_loop_fused_input",
                         mutates_args=fused.FUSED_INPUT_MUTATED, schema=fused.FUSED_INPUT_SCHEMA)
def _forward_fused_input_op(x, weight_ih, bias, gamma_ih, mean_ih, var_ih, *args):
    """The step loop computing each step's input product and its batch norm in its launch;
    returns xw and stat_ih last (u is the launches' scratch)."""
    T, B, _ = x.shape
    G = weight_ih.shape[0]
    acc = accumulator(x.dtype)
    xw = x.new_zeros(T, B, G)  # rows not running stay 0: the input norm's backward reads them
    stat_ih = x.new_empty(T, 2, G, dtype=acc)
    u = x.new_empty(T, B, G, dtype=acc)
    in_step = (x, weight_ih, bias, gamma_ih, mean_ih, var_ih, xw, stat_ih)
    return (*_launch_forward(u, *args, in_step=in_step), xw, stat_ih)


@torch.library.custom_op("bnlstm_triton::backward_loop", mutates_args=(),
                         schema=fused.BACKWARD_SCHEMA)
def _backward_op(*args):
    """The reverse step loop, dh0 and the per-feature sums over steps."""
    return _launch_backward(*args)


_forward_op.register_fake(fused.forward_loop_fake)
_forward_fused_input_op.register_fake(fused.forward_loop_fused_input_fake)
_backward_op.register_fake(fused.backward_loop_fake)


def forward_loop(inp: InputSaved, weights: LayerWeights, h0, c0, stats: RunningStats,
                 steps: Steps, eps, save):
    """The contract of backends.torch_ops.forward_loop; the steps run in the custom op
    bnlstm_triton::forward_loop, which torch.compile keeps whole (fullgraph)."""
    w = weights
    u = loop_input(inp, w, save)

    def loop(stats):
        y, h_n, c_n, cell, hw, stat_hh, stat_c = torch.ops.bnlstm_triton.forward_loop(
            u, w.weight_hh, w.gamma_hh, w.gamma_c, w.beta_c, h0, c0, *stats[2:6],
            *fused.launch_steps(steps, accumulator(h0.dtype), eps))
        return y[1:], h_n, c_n, Saved(hw, cell, stat_hh, stat_c) if save else None

    return fused.with_running_rows(stats, fused.MUTATED, accumulator(h0.dtype), loop)


def _fused_input_forward(x, weights: LayerWeights, h0, c0, stats: RunningStats, steps: Steps,
                         eps, save):
    """forward_loop from x rather than u, and the input norm's saved tensors: the steps run in
    bnlstm_triton::forward_loop_fused_input, which also moves mean_ih and var_ih."""
    w = weights

    def loop(stats):
        y, h_n, c_n, cell, hw, stat_hh, stat_c, xw, stat_ih = (
            torch.ops.bnlstm_triton.forward_loop_fused_input(
                x, w.weight_ih, w.bias, w.gamma_ih, *stats[:2], w.weight_hh, w.gamma_hh,
                w.gamma_c, w.beta_c, h0, c0, *stats[2:6],
                *fused.launch_steps(steps, accumulator(x.dtype), eps)))
        saved = Saved(hw, cell, stat_hh, stat_c) if save else None
        return y[1:], h_n, c_n, saved, InputSaved(xw, stat_ih)

    return fused.with_running_rows(stats, fused.FUSED_INPUT_MUTATED, accumulator(x.dtype), loop)


def in_step_input():
    """function._forward's question: None while the input product is hoisted (the Function
    computes u ahead of the loop), else the forward whose launches compute x_t W_ih^T and its
    batch norm themselves: (x, weights, h0, c0, stats, steps, eps, save) -> y, h_n, c_n,
    saved, input_norm.InputSaved."""
    _check_input_product(SETTINGS.input_product, "BNLSTM_TRITON_INPUT_PRODUCT")
    return _fused_input_forward if SETTINGS.input_product == "fused" else None


def backward_loop(saved: Saved, inp: InputSaved, weights: LayerWeights, c0, steps: Steps, dy,
                  dh_n, dc_n):
    """The contract of backends.torch_ops.backward_loop; the steps run in the custom op
    bnlstm_triton::backward_loop (c0 is saved.cell[0] there), with u recomputed from the input
    norm's saved tensors."""
    w = weights
    return with_input_grads(tuple(torch.ops.bnlstm_triton.backward_loop(
        contribution(inp, weights), saved.hw, saved.cell, w.weight_hh, w.gamma_hh, w.gamma_c,
        w.beta_c, saved.stat_hh, saved.stat_c, dy, dh_n, dc_n, steps.batch_sizes,
        [bool(u) for u in steps.batch_stats])), inp, w, steps)
