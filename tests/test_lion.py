"""cf.Lion (the generic fused step, optim/algorithm.py) against lion_pytorch.Lion.

The oracle is the peer users replace: ``lion_pytorch`` (``pip install
lion-pytorch``), its ``update_fn`` op for op.  On the CPU the fused kernels'
FMA copies round as torch's own kernels at this capability, so the ``torch``
and ``cpu`` backends are bit-identical to it; Triton under the interpreter
rounds each multiply and add separately (the GPU contracts them), which the
CPU build's baseline copy does too: bit for bit against that.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

import clr_fused as cf

from .cases import SCHED_IDS, SCHEDULES, assert_same, backends, run_pair

lion_pytorch = pytest.importorskip("lion_pytorch")

SIZES = [1, 3, 127, 128, 129, 1000, 4097, 16385, 65537]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pair(backend, steps=100, sizes=SIZES, lr=3e-3, **kw):
    """The same parameters and gradients through cf.Lion and lion_pytorch.Lion."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = cf.Lion(a, lr=lr, backend=backend, **kw)
    theirs = lion_pytorch.Lion(b, lr=lr, **kw)
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        grads = [torch.randn(n, generator=gen) for n in sizes]
        if i == 3 and len(grads) > 2:
            grads[2].zero_()  # sign(0): a zero first-moment update leaves the parameter (and 0 stays 0)
        for ps, opt in ((a, ours), (b, theirs)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    return a, b, ours, theirs


def _differing(xs, ys) -> int:
    return sum(int((x != y).sum()) for x, y in zip(xs, ys))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_bit_identical_to_lion_pytorch(backend, weight_decay):
    a, b, ours, theirs = _pair(backend, weight_decay=weight_decay)
    assert _differing(a, b) == 0
    assert _differing([ours.state[p]["exp_avg"] for p in a], [theirs.state[p]["exp_avg"] for p in b]) == 0
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_decoupled_weight_decay_as_lion_pytorch():
    a, b, _, _ = _pair("torch", steps=20, weight_decay=1e-5, decoupled_weight_decay=True)
    assert _differing(a, b) == 0


def test_triton_matches_the_cpu_baseline_copy_bit_for_bit():
    """Triton under the interpreter: each multiply and add rounded, as the CPU
    build's baseline copy (CLR_FUSED_CPU_ISA=baseline) does; cycled beta1 and
    weight decay included.  Run apart: the CPU copy is chosen once per process."""
    pytest.importorskip("triton")
    if "triton" not in backends("triton") or "cpu" not in backends("cpu"):
        pytest.skip("needs the Triton and cpu backends")
    script = r"""
import torch, clr_fused as cf
sizes = [1, 3, 127, 128, 129, 1000, 4097, 16385, 65537]
def make(backend):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    spec = cf.CyclicLR(1e-3, 3e-3, 7, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95)
    return ps, cf.Lion(ps, lr=spec, weight_decay=0.1, backend=backend)
(a, oa), (b, ob) = make("triton"), make("cpu")
gen = torch.Generator().manual_seed(1)
for i in range(40):
    gs = [torch.randn(n, generator=gen) for n in sizes]
    for ps, o in ((a, oa), (b, ob)):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        o.step()
dp = sum(int((x != y).sum()) for x, y in zip(a, b))
dm = sum(int((oa.state[x]["exp_avg"] != ob.state[y]["exp_avg"]).sum()) for x, y in zip(a, b))
print("differing", dp, dm, oa.schedule_step.item(), ob.schedule_step.item())
"""
    env = {**os.environ, "CLR_FUSED_CPU_ISA": "baseline", "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["0", "0", "40", "40"], out.stdout


@pytest.mark.parametrize("spec", SCHEDULES, ids=SCHED_IDS)
@pytest.mark.parametrize("backend", backends("cpu", "triton"))
def test_every_schedule_kind(backend, spec):
    assert_same(*run_pair("Lion", dict(weight_decay=0.05), spec, backend=backend, device="cpu"))


@pytest.mark.parametrize(
    "pdtype,kw",
    [
        (torch.float32, dict(state_dtype=torch.bfloat16)),
        (torch.float32, dict(state_dtype="int8")),
        (torch.bfloat16, dict(stochastic_rounding=True)),
        (torch.bfloat16, dict(stochastic_rounding=True, state_dtype="int8")),
        (torch.bfloat16, dict(state_dtype=torch.float32)),
    ],
    ids=["fp32-bf16", "fp32-int8", "bf16-sr", "bf16-sr-int8", "bf16-fp32"],
)
@pytest.mark.parametrize("backend", backends("cpu", "triton"))
def test_low_precision_states_bit_identical_to_the_torch_backend(backend, pdtype, kw):
    """bf16 / int8 states and stochastic rounding: the kernels' codecs and random
    bits are the torch backend's (kernels/low_precision.py), to the bit."""

    def run(b):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(n).to(pdtype)) for n in (1, 5, 127, 128, 129, 1000, 16385)]
        opt = cf.Lion(ps, lr=3e-3, weight_decay=0.1, backend=b, **kw)
        gen = torch.Generator().manual_seed(1)
        for _ in range(12):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=gen).to(pdtype)
            opt.step()
        return ps, opt

    (a, oa), (b, ob) = run(backend), run("torch")
    if backend == "triton":
        # the interpreter rounds each multiply and add (the torch backend fuses them, as torch does here): the
        # states agree to within their storage's rounding, the parameters but where sign(c) flipped on a tie
        n = sum(p.numel() for p in a)
        assert _differing(a, b) <= n // 1000, (_differing(a, b), n)
        for x, y in zip(a, b):
            for key in oa.state[x]:
                u, v = oa.state[x][key].float(), ob.state[y][key].float()
                if oa.state[x][key].dtype == torch.int8:  # codes: within one step of the map
                    assert (u - v).abs().max() <= 1, key
                else:
                    torch.testing.assert_close(u, v, rtol=2e-2, atol=1e-5)
        return
    assert _differing(a, b) == 0
    for x, y in zip(a, b):
        assert oa.state[x].keys() == ob.state[y].keys()
        for key in oa.state[x]:
            assert torch.equal(oa.state[x][key], ob.state[y][key]), key
    assert oa.state[a[0]]["exp_avg"].dtype == (
        torch.int8 if kw.get("state_dtype") == "int8" else ob.state[b[0]]["exp_avg"].dtype
    )


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_clipping_and_grad_scaler_skip(backend):
    """max_grad_norm against clip_grad_norm_ + lion_pytorch; a GradScaler-style
    non-finite step changes nothing and does not advance the schedule."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(n)) for n in (7, 300)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = cf.Lion(a, lr=1e-2, weight_decay=0.1, backend=backend, max_grad_norm=0.5)
    theirs = lion_pytorch.Lion(b, lr=1e-2, weight_decay=0.1)
    for _ in range(10):
        grads = [torch.randn(p.shape) * 3 for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        torch.nn.utils.clip_grad_norm_(b, 0.5)
        theirs.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    before = [p.detach().clone() for p in a]
    states = [ours.state[p]["exp_avg"].clone() for p in a]
    step = int(ours.schedule_step)
    ours.found_inf = torch.ones(())  # what GradScaler hands an optimizer that steps itself
    ours.grad_scale = torch.full((), 1024.0)
    ours.step()
    del ours.found_inf, ours.grad_scale
    assert all(torch.equal(p, q) for p, q in zip(a, before))
    assert all(torch.equal(ours.state[p]["exp_avg"], s) for p, s in zip(a, states))
    assert int(ours.schedule_step) == step


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_state_dicts_round_trip_and_load_lion_pytorchs(backend):
    """cf.Lion's state dict resumes bit for bit; lion_pytorch's loads (its key
    is exp_avg too) and the run continues as lion_pytorch would."""
    a, b, ours, theirs = _pair(backend, steps=5, sizes=[33, 200], weight_decay=0.1)
    c = [torch.nn.Parameter(p.detach().clone()) for p in b]
    resumed = cf.Lion(c, lr=3e-3, weight_decay=0.1, backend=backend)
    # (deep copies, as a checkpoint file is: a loaded live state dict shares its tensors, in torch too)
    resumed.load_state_dict(copy.deepcopy(theirs.state_dict()))  # lion_pytorch's checkpoint
    d = [torch.nn.Parameter(p.detach().clone()) for p in a]
    again = cf.Lion(d, lr=3e-3, weight_decay=0.1, backend=backend)
    again.load_state_dict(copy.deepcopy(ours.state_dict()))  # ours
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in a]
        for ps, opt in ((a, ours), (b, theirs), (c, resumed), (d, again)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    assert _differing(a, d) == 0 and _differing(b, c) == 0 and _differing(a, b) == 0


def test_bad_arguments_name_themselves():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="beta parameter at index 1"):
        cf.Lion(p, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="weight_decay"):
        cf.Lion(p, weight_decay=-1.0)
    with pytest.raises(ValueError, match="betas must be a pair"):
        cf.Lion(p, betas=0.9)


def test_the_op_refuses_a_wrong_hyperparameter_count():
    """The generic op checks what it is handed before any kernel runs."""
    from clr_fused import _ext

    mod = _ext.load()
    if mod is None:
        pytest.skip("needs the compiled extension")
    from clr_fused.kernels import compiled
    from clr_fused.kernels.tensor_tables import build_tables

    ops = compiled._ops()
    p, g, m = torch.randn(10), torch.randn(10), torch.zeros(10)
    tables = build_tables([[p], [g], [m]], compiled.CHUNK, p.device).flat()
    rows = torch.tensor(cf.schedules.Constant(0.1).rows(), dtype=torch.float64)
    args = dict(counter=torch.zeros((), dtype=torch.int64), lr=torch.full((), 0.1, dtype=torch.float64),
                ticket=torch.zeros(1, dtype=torch.int32))  # fmt: skip
    before = p.clone()
    with torch.no_grad(), pytest.raises(RuntimeError, match="3 hyperparameters expected"):
        ops.step(mod.ALGORITHMS["Lion"], [p], [g], [m], [], tables, rows, args["counter"], args["lr"], None, None,
                 None, None, args["ticket"], [0.9], False, True, compensation=[])  # fmt: skip
    with torch.no_grad(), pytest.raises(RuntimeError, match="unknown algorithm"):
        ops.step(99, [p], [g], [m], [], tables, rows, args["counter"], args["lr"], None, None, None, None,
                 args["ticket"], [0.9, 0.99, 0.0], False, True, compensation=[])  # fmt: skip
    assert torch.equal(p, before)


@pytest.mark.parametrize("backend", backends("torch", "cpu"))
def test_a_bad_loaded_state_is_refused_before_anything_moves(backend):
    """The base's checks cover the generic step's slots by name: a loaded
    exp_avg of the wrong shape is refused at load; one swapped in between
    steps, at the step, before any parameter is written."""
    p = [torch.nn.Parameter(torch.randn(10))]
    opt = cf.Lion(p, lr=1e-3, backend=backend)
    p[0].grad = torch.randn(10)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"] = torch.zeros(7)
    with pytest.raises((ValueError, RuntimeError), match="exp_avg"):
        opt.load_state_dict(sd)
    before, state = p[0].detach().clone(), opt.state[p[0]]["exp_avg"].clone()
    opt.state[p[0]]["exp_avg"] = torch.zeros(7)
    with pytest.raises(RuntimeError, match="exp_avg"):
        opt.step()
    assert torch.equal(p[0], before)
    opt.state[p[0]]["exp_avg"] = state
    opt.step()
    assert not torch.equal(p[0], before)
