"""``get_schedule`` against ``transformers.get_scheduler`` for every argument
transformers accepts, the awkward ones included (warm-up as long as or longer
than training, a WSD decay longer than training, one-step runs), and refusing
what it refuses (an unknown keyword: TypeError).  The spec's float64 value at
every step equals transformers' LR exactly, past the end of training too."""

from __future__ import annotations

import pytest
import torch

import clr_fused as cf

from .helpers import transformers_lr_trace

transformers = pytest.importorskip("transformers")

BASE = 3e-3
# (num_warmup_steps, num_training_steps): ordinary, warm-up == training, warm-up > training, tiny runs
LENGTHS = [(7, 60), (10, 10), (20, 10), (0, 1), (1, 1), (3, 1), (0, 5)]
NAMES_KW = [
    ("linear", {}),
    ("cosine", {}),
    ("cosine", {"num_cycles": 1.5}),
    ("cosine_with_restarts", {"num_cycles": 3}),
    ("polynomial", {"power": 2.0, "lr_end": 1e-5}),
    ("polynomial", {}),
    ("constant", {}),
    ("constant_with_warmup", {}),
    ("inverse_sqrt", {}),
    ("inverse_sqrt", {"timescale": 5}),
    ("cosine_with_min_lr", {"min_lr": 1e-5}),
    ("cosine_with_min_lr", {"min_lr_rate": 0.2, "num_cycles": 0.75}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_warmup_with_min_lr", {"min_lr": 1e-4, "warmup_lr_rate": 0.3}),
    ("warmup_stable_decay", {"num_decay_steps": 4, "decay_type": "1-sqrt", "min_lr_ratio": 0.05}),
    ("warmup_stable_decay", {"num_decay_steps": 30, "warmup_type": "cosine"}),  # decay longer than training
    ("warmup_stable_decay", {"num_decay_steps": 6, "num_stable_steps": 3, "decay_type": "linear"}),
]


def _hf_lrs(name, w, total, kw, n):
    return transformers_lr_trace(name, BASE, w, total, kw, n)


def _hf_raises(name, w, total, kw):
    """transformers' error building this schedule or at any of its first steps, else None."""
    try:
        _hf_lrs(name, w, total, kw, 3 * max(w, total) + 10)
    except Exception as exc:  # noqa: BLE001 (whatever transformers raises is the answer)
        return exc
    return None


@pytest.mark.parametrize("w,total", LENGTHS, ids=[f"w{w}-n{t}" for w, t in LENGTHS])
@pytest.mark.parametrize("name,kw", NAMES_KW, ids=[f"{n}{i}" for i, (n, _) in enumerate(NAMES_KW)])
def test_every_step_equals_transformers(name, kw, w, total):
    n = 3 * max(w, total) + 10
    hf_error = _hf_raises(name, w, total, kw)
    if hf_error is not None:
        # transformers refuses these arguments (at construction or at some step): so do we, up front
        with pytest.raises((ValueError, ZeroDivisionError, TypeError)):
            cf.get_schedule(name, BASE, w, total, kw)
        return
    spec = cf.get_schedule(name, BASE, w, total, kw)
    ref = _hf_lrs(name, w, total, kw, n)
    got = [float(spec(k)) for k in range(n)]
    assert got == ref, [(k, a, b) for k, (a, b) in enumerate(zip(got, ref)) if a != b][:5]


def test_warmup_longer_than_training_keeps_warming_then_drops():
    """The issue's example: linear (20, 10) warms to 0.095 * base, then 0."""
    spec = cf.get_schedule("linear", 1.0, 20, 10)
    assert float(spec(19)) == 0.95 and float(spec(20)) == 0.0 and float(spec(1000)) == 0.0
    assert float(spec(10)) == 0.5


ACCEPTED = {
    "linear": {"last_epoch"},
    "cosine": {"num_cycles", "last_epoch"},
    "cosine_with_restarts": {"num_cycles", "last_epoch"},
    "polynomial": {"lr_end", "power", "last_epoch"},
    "inverse_sqrt": {"timescale", "last_epoch"},
    "cosine_with_min_lr": {"num_cycles", "last_epoch", "min_lr", "min_lr_rate"},
    "cosine_warmup_with_min_lr": {"num_cycles", "last_epoch", "min_lr", "min_lr_rate", "warmup_lr_rate"},
    "warmup_stable_decay": {
        "num_decay_steps",
        "num_stable_steps",
        "warmup_type",
        "decay_type",
        "min_lr_ratio",
        "num_cycles",
        "last_epoch",
    },  # fmt: skip
}
NEEDED = {"cosine_with_min_lr": {"min_lr": 1e-5}, "cosine_warmup_with_min_lr": {"min_lr": 1e-5},
          "warmup_stable_decay": {"num_decay_steps": 3}}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_an_unknown_keyword_is_a_type_error_as_in_transformers(name):
    kw = dict(NEEDED.get(name, {}), num_cycels=2)  # a typo
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(TypeError, match="num_cycels"):
        transformers.get_scheduler(name, torch.optim.SGD([p], lr=BASE), num_warmup_steps=2, num_training_steps=10,
                                   scheduler_specific_kwargs=dict(kw))  # fmt: skip
    with pytest.raises(TypeError, match="num_cycels"):
        cf.get_schedule(name, BASE, 2, 10, kw)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_every_keyword_transformers_takes_is_taken(name):
    """last_epoch=-1 (a fresh start) is what transformers does by default; a
    resumed last_epoch is refused with the way to resume here."""
    spec = cf.get_schedule(name, BASE, 2, 10, dict(NEEDED.get(name, {}), last_epoch=-1))
    assert spec == cf.get_schedule(name, BASE, 2, 10, dict(NEEDED.get(name, {})))
    with pytest.raises(ValueError, match="schedule_step"):
        cf.get_schedule(name, BASE, 2, 10, dict(NEEDED.get(name, {}), last_epoch=4))


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup"])
def test_names_transformers_calls_without_keywords_ignore_them(name):
    """transformers calls these two without scheduler_specific_kwargs (ignored, no error)."""
    p = torch.nn.Parameter(torch.zeros(1))
    transformers.get_scheduler(name, torch.optim.SGD([p], lr=BASE), num_warmup_steps=2, num_training_steps=10,
                               scheduler_specific_kwargs={"anything": 1})  # fmt: skip
    assert cf.get_schedule(name, BASE, 2, 10, {"anything": 1}) == cf.get_schedule(name, BASE, 2, 10)
