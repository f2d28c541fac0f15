"""step() and report() never read a device value on the host."""

from __future__ import annotations

import contextlib

import pytest
import torch

import clr_fused as cf

from .cases import backends
from .helpers import small_model


@contextlib.contextmanager
def host_reads_forbidden(monkeypatch):
    def boom(name):
        def raiser(self, *a, **k):
            raise AssertionError(f"host sync: Tensor.{name} called inside step()")

        return raiser

    with monkeypatch.context() as mp:
        for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist"):
            mp.setattr(torch.Tensor, name, boom(name))
        yield


SPECS = [
    0.01,
    cf.CyclicLR(0.001, 0.01, 3, 5, "exp_range", gamma=0.99),
    cf.OneCycleLR(0.01, 50, three_phase=True),
    cf.CosineAnnealingWarmRestarts(0.01, 3, 2),
    cf.MultiStepLR(0.01, [2, 4]),
    cf.PolynomialLR(0.01, 7, 2.0),
    cf.SequentialLR([cf.LinearLR(0.01, 0.5, 1.0, 3), cf.StepLR(0.01, 2)], [4]),
    cf.ReduceLROnPlateau(0.01, patience=1),
]


BACKENDS = backends("torch", "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_step_makes_no_host_sync(cls, spec, backend, monkeypatch):
    """Also on the compiled path: plan check, grad-table patch and launch read
    nothing from a device tensor (zero_grad frees the grads every step)."""
    m = small_model()
    opt = getattr(cf, cls)(m.parameters(), lr=spec, backend=backend, max_grad_norm=1.0)
    x, y = torch.randn(8, 5), torch.randn(8, 3)
    for i in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss.backward()
        opt.grad_scale = torch.tensor(1.0)
        opt.found_inf = torch.tensor(float(i == 2))
        with host_reads_forbidden(monkeypatch):
            opt.step()
            opt.report(loss.detach())
    # the forbidding itself works
    with host_reads_forbidden(monkeypatch), pytest.raises(AssertionError, match="host sync"):
        torch.ones(1).item()
    assert opt.schedule_step.item() == 5  # the found_inf step did not count
