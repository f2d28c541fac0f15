"""Rough edges a new user meets: range-test mode and unusable runs, the CLI's
errors, version, help and output folder, meta-device parameters, exact LRs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import clr_fused as cf
from clr_fused.range_test import RangeTestResult


def _data(n=8):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=gen)
    y = (x.sum(1) > 0).long()
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)][:n]


@pytest.mark.parametrize("mode_before", ["train", "eval"])
def test_range_test_restores_train_eval_mode(mode_before):
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 2))
    model.train(mode_before == "train")
    opt = cf.SGD(model.parameters(), lr=0.01, momentum=0.9, backend="torch")

    def accuracy(m):  # leaves the model in eval mode, as many eval functions do
        m.eval()
        x, y = _data()[0]
        return (m(x).argmax(1) == y).float().mean()

    result = cf.range_test(model, torch.nn.functional.cross_entropy, _data(), opt, start_lr=1e-3, end_lr=1.0,
                           num_steps=12, eval_fn=accuracy, progress=False)  # fmt: skip
    assert model.training == (mode_before == "train")
    assert result.metric_name == "accuracy"  # the metric's name labels the plot axis


def test_suggest_refuses_a_run_whose_loss_never_fell():
    lrs = [1e-3 * 1.5**i for i in range(12)]
    diverging = [2.30, 2.31, 2.35, 2.5, 3.0, 4.1, 6.0, 11.0, 20.0, 40.0, 80.0, 134.0]
    result = RangeTestResult(lrs=lrs, losses=diverging, smoothed_losses=diverging)
    with pytest.raises(ValueError, match="never fell"):
        result.suggest()
    falling = [2.3, 2.2, 2.0, 1.7, 1.3, 1.0, 0.8, 0.7, 0.9, 1.5, 3.0, 9.0]
    s = RangeTestResult(lrs=lrs, losses=falling, smoothed_losses=falling).suggest()
    assert s.base_lr < s.max_lr


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "clr_fused", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_cli_version_and_help():
    out = _cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"clr-fused {cf.__version__}"
    for cmd in ("bench", "range-test", "demo"):
        text = _cli(cmd, "--help").stdout
        assert "(default:" in text, cmd
        for opt in [line.split()[0] for line in text.splitlines() if line.strip().startswith("--")]:
            assert opt in text  # every option is listed with its help


@pytest.mark.parametrize("args,message", [
    (("range-test", "--demo", "--steps", "2"), "--steps: must be >= 10"),
    (("demo", "--seeds", "0"), "--seeds: must be >= 1"),
    (("range-test", "--demo", "--steps", "12", "--out", "/proc/not-writable/x"), "range-test: error:"),
])  # fmt: skip
def test_cli_bad_arguments_give_one_line_and_exit_2(args, message):
    out = _cli(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_bench_default_output_is_a_new_folder(tmp_path):
    out = _cli("bench", "--quick", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (folder,) = [p for p in tmp_path.iterdir() if p.name.startswith("clr-fused-bench-")]
    assert list(folder.glob("*.json")) and list(folder.glob("*.md"))


def test_meta_device_parameters():
    with torch.device("meta"):
        model = torch.nn.Linear(4, 3)
    for spec, expected in ((0.005, 0.005), (cf.CyclicLR(0.001, 0.01, 5), 0.001)):
        opt = cf.SGD(model.parameters(), lr=spec, momentum=0.9)
        assert opt.get_last_lr() == [pytest.approx(expected)]
        sd = opt.state_dict()
        assert sd["param_groups"][0]["lr"] == pytest.approx(expected) and sd["param_groups"][0]["clr_fused_step"] == 0


def test_float_lr_comes_back_exactly():
    p = [torch.nn.Parameter(torch.randn(3))]
    p[0].grad = torch.randn(3)
    opt = cf.SGD(p, lr=0.005, backend="torch")
    opt.step()
    assert opt.get_last_lr() == [0.005]
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.005


def test_every_spec_is_exported():
    """Each public spec is in ``clr_fused.schedules.__all__`` and at the top level."""
    from clr_fused import schedules as S

    specs = {
        n for n, v in vars(S).items() if isinstance(v, type) and issubclass(v, S.Schedule) and not n.startswith("_")
    }
    specs -= {"Constant"}  # internal: what a number lr is
    assert specs <= set(S.__all__), specs - set(S.__all__)
    assert specs <= set(cf.__all__), specs - set(cf.__all__)
    assert {"LambdaLR", "WarmupStableDecay", "WarmupCosine", "InverseSqrt"} <= specs


def test_schedule_of_a_tensor_lr_has_a_plain_dict():
    p = [torch.nn.Parameter(torch.randn(3))]
    opt = cf.SGD(p, lr=torch.tensor(0.25), backend="torch")
    assert opt.schedule(0).to_dict() == {"type": "TensorLR", "lr": 0.25}
    assert "TensorLR" in repr(opt.schedule(0))


def test_an_extension_with_other_schedule_kinds_is_refused():
    """The kind codes are defined once (schedule_math.KINDS); a C++ build whose
    table differs is refused when it loads, as one with another chunk size."""
    from types import SimpleNamespace

    from clr_fused import _ext
    from clr_fused import schedule_math as sm
    from clr_fused.kernels.compiled import CHUNK

    _ext._check_constants(SimpleNamespace(CHUNK=CHUNK, SCHEDULE_KINDS=dict(sm.KINDS)))
    bad = {**sm.KINDS, "COSINE": 99}
    with pytest.raises(ImportError, match="schedule kinds"):
        _ext._check_constants(SimpleNamespace(CHUNK=CHUNK, SCHEDULE_KINDS=bad))
    with pytest.raises(ImportError, match="chunk size"):
        _ext._check_constants(SimpleNamespace(CHUNK=CHUNK * 2, SCHEDULE_KINDS=dict(sm.KINDS)))
    module = _ext.load()
    if module is not None:  # the real build agrees with Python
        assert dict(module.SCHEDULE_KINDS) == sm.KINDS
