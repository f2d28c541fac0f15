"""cf.range_test: restoration, ramp, divergence, suggestions that train well."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

import clr_fused as cf
from clr_fused.demos import digits as demo


@pytest.fixture(scope="module")
def digits():
    return demo.load_digits_data()


def _snapshot(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())


def _assert_restored(model, opt, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[0][k]), k
    now = opt.state_dict()
    assert now["param_groups"] == snap[1]["param_groups"]
    for idx, st in snap[1]["state"].items():
        for key, v in st.items():
            assert torch.equal(now["state"][idx][key], v), (idx, key)


def _trained_a_bit(digits):
    model = demo.make_model(0)
    opt = cf.SGD(model.parameters(), lr=cf.CyclicLR(0.01, 0.1, 5), momentum=0.9)
    for x, y in digits.batches(64, 0)[:7]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


def test_state_restored_bit_identically_after_a_run(digits):
    model, opt = _trained_a_bit(digits)
    snap = _snapshot(model, opt)
    result = cf.range_test(
        model, torch.nn.functional.cross_entropy, digits.batches(64, 1), opt, num_steps=30, progress=False
    )
    assert len(result.lrs) == 30
    _assert_restored(model, opt, snap)
    assert opt.schedule_step.item() == 7 and isinstance(opt.param_groups[0]["schedule"], cf.CyclicLR)


def test_state_restored_after_a_run_that_raises(digits):
    model, opt = _trained_a_bit(digits)
    snap = _snapshot(model, opt)
    calls = []

    def flaky_loss(out, y):
        calls.append(1)
        if len(calls) == 12:
            raise RuntimeError("boom")
        return torch.nn.functional.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        cf.range_test(model, flaky_loss, digits.batches(64, 1), opt, num_steps=30, progress=False)
    _assert_restored(model, opt, snap)


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_lrs_strictly_increase_and_follow_the_ramp(digits, mode):
    model = demo.make_model(0)
    opt = cf.SGD(model.parameters(), lr=0.01)
    r = cf.range_test(
        model,
        torch.nn.functional.cross_entropy,
        digits.batches(64, 0),
        opt,
        start_lr=1e-4,
        end_lr=1e-1,
        num_steps=25,
        mode=mode,
        progress=False,
    )
    assert all(b > a for a, b in zip(r.lrs, r.lrs[1:]))
    assert r.lrs[0] == pytest.approx(1e-4) and r.lrs[-1] == pytest.approx(1e-1)
    assert len(r.losses) == len(r.smoothed_losses) == 25 and not r.stopped_early


def test_divergence_stops_early(digits):
    model = demo.make_model(0)
    opt = cf.SGD(model.parameters(), lr=0.01, momentum=0.9)
    r = cf.range_test(
        model,
        torch.nn.functional.cross_entropy,
        digits.batches(64, 0),
        opt,
        start_lr=1e-3,
        end_lr=1e3,
        num_steps=100,
        progress=False,
    )
    assert r.stopped_early and len(r.lrs) < 100
    assert r.smoothed_losses[-1] > 5.0 * min(r.smoothed_losses)


def test_plain_torch_optimizer_and_validation_loss(digits):
    model = demo.make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    val = [(digits.x_test, digits.y_test)]
    r = cf.range_test(
        model,
        torch.nn.functional.cross_entropy,
        digits.batches(64, 0),
        opt,
        end_lr=1.0,
        num_steps=20,
        val_data=val,
        accumulation_steps=2,
        progress=False,
    )
    assert len(r.losses) == 20 and opt.param_groups[0]["lr"] == 0.01


def test_suggestion_trains_digits_to_95_percent(digits):
    result = demo.run_range_test(digits)
    s = result.suggest()
    assert 0 < s.base_lr < s.max_lr and s.reason
    spec = cf.CyclicLR.from_range_test(
        result, iters_per_epoch=demo.iterations_per_epoch(digits), mode="triangular2", cycle_momentum=False
    )
    curve = demo.train(digits, spec, iterations=600)
    assert curve[-1] >= 0.95


def test_suggestion_at_least_as_good_as_torch_lr_finder(digits):
    """torch-lr-finder's steepest-gradient LR as max_lr (base = max/4) against ours."""
    import matplotlib

    matplotlib.use("Agg")
    from torch.utils.data import DataLoader, TensorDataset
    from torch_lr_finder import LRFinder

    model = demo.make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    loader = DataLoader(
        TensorDataset(digits.x_train, digits.y_train),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    finder = LRFinder(model, opt, torch.nn.CrossEntropyLoss(), device="cpu")
    finder.range_test(loader, end_lr=10, num_iter=100)
    _, their_lr = finder.plot(suggest_lr=True)
    finder.reset()

    ours = demo.run_range_test(digits).suggest()
    epoch = demo.iterations_per_epoch(digits)
    accs = {}
    for name, (lo, hi) in {"ours": (ours.base_lr, ours.max_lr), "lr_finder": (their_lr / 4, their_lr)}.items():
        spec = cf.CyclicLR(lo, hi, step_size_up=4 * epoch, mode="triangular2", cycle_momentum=False)
        accs[name] = sum(demo.train(digits, spec, iterations=600, seed=sd)[-1] for sd in range(3)) / 3
    assert accs["ours"] >= accs["lr_finder"] - 0.01, accs


def test_csv_and_plot(tmp_path, digits):
    r = demo.run_range_test(digits, num_steps=40)
    r.to_csv(tmp_path / "rt.csv")
    lines = (tmp_path / "rt.csv").read_text().splitlines()
    assert lines[0] == "lr,loss,smoothed_loss,metric" and len(lines) == len(r.lrs) + 1
    r.plot(tmp_path / "rt.png")
    assert (tmp_path / "rt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "kw,arg",
    [(dict(start_lr=0), "start_lr"), (dict(end_lr=1e-9), "end_lr"), (dict(num_steps=2), "num_steps"), (dict(mode="cos"), "mode"),
     (dict(smooth=1.0), "smooth"), (dict(diverge_threshold=1.0), "diverge_threshold"), (dict(accumulation_steps=0), "accumulation_steps")],
)  # fmt: skip
def test_bad_arguments(digits, kw, arg):
    model = demo.make_model(0)
    opt = cf.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=arg):
        cf.range_test(model, torch.nn.functional.cross_entropy, digits.batches(64, 0), opt, progress=False, **kw)


def test_cli_range_test_demo(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "clr_fused", "range-test", "--demo", "--steps", "60", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "suggested base_lr=" in out.stdout
    assert (tmp_path / "range_test.png").exists() and (tmp_path / "range_test.csv").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_per_step_on_cuda(digits):
    model = demo.make_model(0).cuda()
    opt = cf.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(x.cuda(), y.cuda()) for x, y in digits.batches(64, 0)]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cf.range_test(model, torch.nn.functional.cross_entropy, batches, opt, num_steps=30, progress=False)
    torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # state save/restore and one read per CHECK_EVERY steps, never one per step
    assert len(syncs) <= 30 // 10 + 10, [str(w.message) for w in syncs]


def test_every_submodules_training_flag_is_restored(digits):
    """A frozen submodule (m[1].eval()) comes back frozen, whatever the model's top-level mode."""
    model, opt = _trained_a_bit(digits)
    model.train()
    model[1].eval()
    cf.range_test(model, torch.nn.functional.cross_entropy, digits.batches(64, 1), opt, num_steps=8, progress=False)
    assert model.training and not model[1].training
    assert all(m.training for i, m in enumerate(model) if i != 1)
