"""State dicts: torch's format both ways, resume mid-cycle bit-identically."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import clr_fused as cf

from .helpers import small_model


def _batches(n, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=gen), torch.randn(16, 3, generator=gen)) for _ in range(n)]


def _train(model, opt, batches, sched=None):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # plain data only


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: cf.SGD(ps, lr=cf.CyclicLR(0.01, 0.1, 7, 3, "triangular2"), momentum=0.9, backend="torch"),
        lambda ps: cf.Adam(ps, lr=cf.OneCycleLR(0.05, 100, three_phase=True), amsgrad=True, backend="torch"),
        lambda ps: cf.AdamW(
            ps,
            lr=cf.SequentialLR([cf.LinearLR(0.02, 0.1, 1.0, 5), cf.CosineAnnealingWarmRestarts(0.02, 4, 2)], [6]),
            backend="torch",
            max_grad_norm=0.5,
        ),
        lambda ps: cf.SGD(ps, lr=cf.ReduceLROnPlateau(0.05, patience=0), momentum=0.5, backend="torch"),
    ],
    ids=["sgd-cyclic", "adam-onecycle", "adamw-sequential-clip", "sgd-plateau"],
)
def test_resume_mid_cycle_is_bit_identical(make):
    batches = _batches(40)
    ref_model = small_model()
    ref_opt = make(ref_model.parameters())
    model = copy.deepcopy(ref_model)

    def run(m, o, bs, start=0):
        for i, (x, y) in enumerate(bs, start):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            o.step()
            if i % 3 == 2:
                o.report(loss.detach())

    run(ref_model, ref_opt, batches)

    opt = make(model.parameters())
    run(model, opt, batches[:17])
    saved = _roundtrip({"model": model.state_dict(), "opt": opt.state_dict()})
    # a fresh process: new model and optimizer, then load
    model2 = small_model(seed=123)
    opt2 = make(model2.parameters())
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    assert opt2.schedule_step.item() == 17
    run(model2, opt2, batches[17:], 17)
    for a, b in zip(model2.parameters(), ref_model.parameters()):
        assert torch.equal(a, b)
    assert opt2.get_last_lr() == ref_opt.get_last_lr()


@pytest.mark.parametrize("cls,kw", [("SGD", dict(momentum=0.9)), ("Adam", dict(amsgrad=True)), ("AdamW", {})])
def test_torch_checkpoint_loads_into_ours_and_back(cls, kw):
    batches = _batches(30)
    m_t = small_model()
    o_t = getattr(torch.optim, cls)(m_t.parameters(), lr=0.01, **kw)
    _train(m_t, o_t, batches[:10])
    torch_sd = _roundtrip(o_t.state_dict())

    # torch -> ours: continue both and compare
    m_c = copy.deepcopy(m_t)
    o_c = getattr(cf, cls)(m_c.parameters(), lr=0.01, backend="torch", **kw)
    o_c.load_state_dict(torch_sd)
    _train(m_t, o_t, batches[10:20])
    _train(m_c, o_c, batches[10:20])
    for a, b in zip(m_c.parameters(), m_t.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    # ours -> torch: torch's state keys, plain floats for lr
    ours_sd = _roundtrip(o_c.state_dict())
    assert set(ours_sd["state"][0]) == set(torch_sd["state"][0])
    assert isinstance(ours_sd["param_groups"][0]["lr"], float)
    m_t2 = copy.deepcopy(m_c)
    o_t2 = getattr(torch.optim, cls)(m_t2.parameters(), lr=0.5, **kw)
    o_t2.load_state_dict(ours_sd)
    _train(m_t2, o_t2, batches[20:])
    _train(m_c, o_c, batches[20:])
    for a, b in zip(m_c.parameters(), m_t2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_our_checkpoint_into_torch_keeps_current_lr_and_momentum():
    m = small_model()
    spec = cf.CyclicLR(0.01, 0.1, 5)
    opt = cf.SGD(m.parameters(), lr=spec, momentum=0.0, backend="torch")
    _train(m, opt, _batches(3))
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"] == pytest.approx(spec(3), rel=1e-6)
    assert sd["param_groups"][0]["momentum"] == pytest.approx(spec.momentum(3), rel=1e-6)
    assert sd["param_groups"][0]["clr_fused_schedule"]["type"] == "CyclicLR"
    assert sd["param_groups"][0]["clr_fused_step"] == 3
    t = torch.optim.SGD(small_model().parameters(), lr=1.0)
    t.load_state_dict(sd)
    assert t.param_groups[0]["lr"] == pytest.approx(spec(3), rel=1e-6)


def test_torch_checkpoint_keeps_our_schedule():
    m = small_model()
    t = torch.optim.Adam(m.parameters(), lr=0.5)
    _train(m, t, _batches(2))
    spec = cf.ExponentialLR(0.01, 0.9)
    opt = cf.Adam(m.parameters(), lr=spec, backend="torch")
    opt.load_state_dict(t.state_dict())
    assert opt.param_groups[0]["schedule"] is spec
    assert opt.get_last_lr() == pytest.approx([0.01], rel=1e-6)
    assert opt.state[next(m.parameters())]["step"].item() == 2


def test_shape_mismatch_refused_before_anything_changes():
    m = small_model()
    opt = cf.Adam(m.parameters(), lr=0.01, backend="torch")
    _train(m, opt, _batches(2))
    sd = _roundtrip(opt.state_dict())
    sd["state"][2]["exp_avg"] = torch.zeros(4, 4)
    before = {k: v.clone() for k, v in opt.state[list(m.parameters())[2]].items()}
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(sd)
    after = opt.state[list(m.parameters())[2]]
    assert all(torch.equal(after[k], before[k]) for k in before)
    sd = _roundtrip(opt.state_dict())
    sd["param_groups"].append(dict(sd["param_groups"][0]))
    with pytest.raises(ValueError, match="groups"):
        opt.load_state_dict(sd)


def test_state_dtype_survives_load():
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.bfloat16))
    opt = cf.Adam([p], lr=0.01, backend="torch", state_dtype=torch.float32)
    p.grad = torch.randn_like(p)
    opt.step()
    opt2 = cf.Adam([p], lr=0.01, backend="torch", state_dtype=torch.float32)
    opt2.load_state_dict(_roundtrip(opt.state_dict()))
    assert opt2.state[p]["exp_avg"].dtype == torch.float32
    assert opt2.state[p]["step"].dtype == torch.float32
