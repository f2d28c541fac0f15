"""Low-precision state (bfloat16, int8 block-quantized) and stochastic rounding.

Oracles: the codec and the random bits against their float64 / integer
definitions; the cpu and Triton kernels against the torch backend (the
same operations in torch ops, kernels/low_precision.py) -- bit for bit
where the update itself is (SGD; the cpu kernels' baseline copy, whose
multiply-adds round twice as torch's ops do), within a few ulps and one
code step for Adam; training quality against fp32 states and torch.optim.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import clr_fused as cf
from clr_fused import _ext
from clr_fused.kernels import low_precision as lp

from .cases import backends

BACKENDS = backends("cpu", "triton")
SIZES = [1, 5, 127, 128, 129, 1000, 16_385]  # partial blocks, a block edge, a chunk edge (16,384)


def _needs(backend):
    if backend == "cpu" and _ext.load() is None:
        pytest.skip(f"extension absent: {_ext.error()}")
    if backend == "triton":
        pytest.importorskip("triton")


def _params(sizes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(dtype).requires_grad_() for n in sizes]


def _train(cls, backend, dtype, steps=6, sizes=SIZES, **kw):
    ps = _params(sizes, dtype)
    opt = getattr(cf, cls)(ps, backend=backend, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        opt.step()
    return ps, opt


# ------------------------------------------------------------------ the codec
@pytest.mark.parametrize("signed", [True, False])
def test_codec_error_bounds_and_idempotence(signed):
    g = torch.Generator().manual_seed(0)
    # magnitudes over 12 decades, blocks of very different scales, a zero block
    x = torch.randn(128 * 40 + 17, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(
        -10, 2, (128 * 40 + 17,), generator=g
    )
    x = x.float() if signed else (x * x).float()
    x[128:256] = 0.0
    codes, scales = lp.encode(x, signed)
    assert codes.dtype == (torch.int8 if signed else torch.uint8) and scales.shape == (lp.num_blocks(x.numel()),)
    assert torch.equal(scales[1], torch.tensor(0.0)) and (codes[128:256] == 0).all()
    y = lp.decode(codes, scales)
    blocks = x.new_zeros(lp.num_blocks(x.numel()) * 128)
    blocks[: x.numel()] = x.abs()
    amax = blocks.view(-1, 128).amax(1)
    assert torch.equal(scales, amax)  # the scale is the block's largest magnitude, exactly
    s = amax.repeat_interleave(128)[: x.numel()].double()
    err = (y.double() - x.double()).abs()
    xd = x.double().abs()
    if signed:  # square map: |x| = s * a^2, a on a grid of 1/127: error <= (a + 1/254)^2 - a^2 (plus rounding)
        a = torch.sqrt(xd / torch.where(s > 0, s, 1))
        bound = s * ((a + 0.5 / 127) ** 2 - a**2) * 1.0001 + 1e-30
    else:  # 4th power: grid of 1/255 in v^(1/4)
        a = (xd / torch.where(s > 0, s, 1)) ** 0.25
        bound = s * ((a + 0.5 / 255) ** 4 - a**4) * 1.0001 + 1e-30
    assert (err <= bound).all(), float((err - bound).max())
    assert torch.equal(y.sign(), torch.where(y == 0, 0.0, x.sign()))  # no sign flips
    # decoding then encoding gives the same codes (a checkpoint converted twice is unchanged)
    c2, s2 = lp.encode(y, signed)
    assert torch.equal(c2, codes) and torch.equal(s2, scales)


def test_codec_keeps_small_second_moments_nonzero():
    """The reason for the 4th-power map: beside a block maximum of 1, a
    second moment of 1e-9 still decodes non-zero (a linear map gives 0, and
    Adam then divides a non-zero first moment by eps)."""
    v = torch.full((128,), 1e-9)
    v[0] = 1.0
    codes, scales = lp.encode(v, signed=False)
    assert (lp.decode(codes, scales)[1:] > 0).all()


def test_nan_makes_its_block_nan_only():
    x = torch.randn(300)
    x[130] = float("nan")
    codes, scales = lp.encode(x, True)
    y = lp.decode(codes, scales)
    assert torch.isnan(scales[1]) and not torch.isnan(scales[[0, 2]]).any()
    assert torch.isnan(y[128:256]).all() and not torch.isnan(y[:128]).any() and not torch.isnan(y[256:]).any()


def test_memory_per_element():
    p = torch.nn.Parameter(torch.randn(4096, 1000))
    opt = cf.AdamW([p], backend="torch", state_dtype="int8")
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    per_moment = (st["exp_avg"].nbytes + st["exp_avg_scale"].nbytes) / p.numel()
    assert st["exp_avg"].dtype == torch.int8 and st["exp_avg_sq"].dtype == torch.uint8
    assert per_moment <= 1.032 and (per_moment * 2) <= 2.1  # 1 + 4/128 bytes per moment; 2.06 per parameter
    opt16 = cf.AdamW([p], backend="torch", state_dtype=torch.bfloat16)
    opt16.step()
    assert opt16.state[p]["exp_avg"].element_size() == 2


# ------------------------------------------------------------------ random bits
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour():
    values = [1.0 + 2**-9, -3.3, 1e-3, 65504.7, -1e-30, 1.0]
    x = torch.tensor(values).repeat_interleave(4096)
    y = lp.bf16_stochastic(x, lp.element_bits(lp.stream_bases(torch.tensor(12345), x.numel()), x.numel(), 0))
    for i, v in enumerate(values):
        xi = torch.tensor([v])
        bits = xi.view(torch.int32) & ~0xFFFF
        down, up = (
            bits.view(torch.float32),
            (bits + 0x10000).view(torch.float32),
        )  # bf16 neighbours toward / away from 0
        yi = y[i * 4096 : (i + 1) * 4096].float()
        assert ((yi == down) | (yi == up)).all(), v
        ulp = float((up - down).abs())
        # unbiased: the mean within 5 standard errors (at most ulp / 2 each) of the value
        assert abs(float(yi.double().mean()) - float(xi)) <= 5 * ulp / 2 / 4096**0.5, v
    assert torch.equal(y[5 * 4096 :].float(), torch.ones(4096))  # exact values stay exact
    special = torch.tensor([float("inf"), -float("inf"), float("nan")])
    out = lp.bf16_stochastic(special, torch.full((3,), 0xFFFFFFFF))
    assert out[0] == float("inf") and out[1] == -float("inf") and out.view(torch.int16)[2] == 0x7FC0


def test_random_bits_depend_on_step_size_and_index_only():
    a = lp.stream_bases(torch.tensor(7), 1000)
    assert torch.equal(a, lp.stream_bases(torch.tensor(7), 1000))
    assert not torch.equal(a, lp.stream_bases(torch.tensor(8), 1000))
    assert not torch.equal(a, lp.stream_bases(torch.tensor(7), 1001))
    assert len(set(a.tolist())) == 8
    assert ((a[4:] & 1) == 1).all() and (a[4:] < 2**31).all()  # odd multipliers, products fit int64
    bits = lp.element_bits(a, 1 << 16, 0)
    assert 0 <= int(bits.min()) and int(bits.max()) < 2**32
    # across the elements of a step: equidistributed (each of the 16 high-bit buckets near 1/16)
    counts = torch.bincount((bits >> 28).long(), minlength=16).double() / bits.numel()
    assert (counts - 1 / 16).abs().max() < 0.01
    # across steps, one element's 16 bits (what rounding uses): uniform too, and streams differ
    per_step = torch.stack([lp.element_bits(lp.stream_bases(torch.tensor(k), 1000), 8, 1)[5] for k in range(4096)])
    counts = torch.bincount((per_step >> 28).long(), minlength=16).double() / per_step.numel()
    assert (counts - 1 / 16).abs().max() < 0.02
    assert not torch.equal(lp.element_bits(a, 64, 0) - a[0], lp.element_bits(a, 64, 1) - a[1])
    # two elements' bits are not a fixed offset apart from step to step (elements 144 apart were
    # 0.3% of the range apart at every step with a fixed multiplier): their rounding decisions
    # (u < 0.44) agree as often as independent coins' would, 0.44^2 + 0.56^2 = 0.507
    u = torch.stack([lp.element_bits(lp.stream_bases(torch.tensor(k), 1000), 145, 0)[[0, 144]] for k in range(4096)])
    agree = float(((u[:, 0] < 0.44 * 2**32) == (u[:, 1] < 0.44 * 2**32)).double().mean())
    assert abs(agree - 0.507) < 0.03, agree


# ------------------------------------------------------------------ backends agree
_EXACT = textwrap.dedent("""
    import os, sys, torch, clr_fused as cf
    sys.path.insert(0, {root!r})
    from tests.test_low_precision import _train, SIZES
    bad = []
    for pdt, sdt, sr in [(torch.float32, torch.bfloat16, False), (torch.float32, torch.bfloat16, True),
                         (torch.bfloat16, torch.bfloat16, True), (torch.bfloat16, torch.float32, True),
                         (torch.float32, "int8", False), (torch.bfloat16, "int8", True), (torch.bfloat16, "int8", False)]:
        for kw in [dict(momentum=0.9), dict(momentum=0.8, dampening=0.3, weight_decay=0.05, nesterov=False, maximize=True),
                   dict(momentum=0.9, nesterov=True, weight_decay=0.01)]:
            spec = cf.CyclicLR(1e-3, 1e-2, 3)
            runs = [_train("SGD", b, pdt, lr=spec, state_dtype=sdt, stochastic_rounding=sr, **kw) for b in ("torch", "cpu", "triton")]
            (a, oa) = runs[0]
            for b, ob in runs[1:]:
                for x, y in zip(a, b):
                    if not torch.equal(x.detach().view(-1).view(torch.int8 if False else x.dtype), y.detach().view(-1)):
                        bad.append((str(pdt), str(sdt), sr, kw, "param"))
                    for k, v in oa.state[x].items():
                        if not torch.equal(v, ob.state[y][k]):
                            bad.append((str(pdt), str(sdt), sr, kw, k))
    print("BAD", bad)
""")


def test_sgd_bit_identical_on_every_backend():
    """SGD's update rounds identically on the torch backend, the cpu kernels'
    baseline copy (no fused multiply-adds; torch at ATEN_CPU_CAPABILITY=default,
    which does not fuse either) and Triton (interpreted): so the
    codec, the block scales and stochastic rounding's bits must agree exactly."""
    _needs("cpu")
    pytest.importorskip("triton")
    env = dict(os.environ, CLR_FUSED_CPU_ISA="baseline", ATEN_CPU_CAPABILITY="default", TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-c", _EXACT.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))],
                         capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "BAD []", run.stdout[-3000:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pdt,sdt,sr", [
    (torch.float32, torch.bfloat16, False), (torch.float32, torch.bfloat16, True), (torch.float32, "int8", False),
    (torch.bfloat16, "int8", True), (torch.bfloat16, torch.bfloat16, True),
], ids=["fp32-bf16", "fp32-bf16-sr", "fp32-int8", "bf16-int8-sr", "bf16-bf16-sr"])  # fmt: skip
@pytest.mark.parametrize(
    "cls,kw", [("Adam", {}), ("AdamW", dict(amsgrad=True, weight_decay=0.1)), ("SGD", dict(momentum=0.9))]
)
def test_kernels_match_the_torch_backend(backend, cls, kw, pdt, sdt, sr):
    _needs(backend)
    spec = cf.CyclicLR(1e-3, 1e-2, 3)
    a, oa = _train(cls, backend, pdt, lr=spec, state_dtype=sdt, stochastic_rounding=sr, **kw)
    b, ob = _train(cls, "torch", pdt, lr=spec, state_dtype=sdt, stochastic_rounding=sr, **kw)
    ulp = 2**-7 if pdt == torch.bfloat16 else 2**-23
    for x, y in zip(a, b):
        # float32 op order (fused multiply-adds, sqrt) differs between paths: a few ulps, or
        # with bf16 + stochastic rounding one ulp where a last-bit difference tipped the draw
        if sdt == "int8" and cls != "SGD":
            # a last-bit difference that moves an int8 code by one step changes that element's
            # next update by up to a code step (relative ~1/64 at the block's top): rare, bounded
            differ = ~torch.isclose(x.float(), y.float(), rtol=4 * ulp, atol=1e-6)
            assert float(differ.float().mean()) < 0.002, int(differ.sum())
            torch.testing.assert_close(x.float(), y.float(), rtol=2e-2, atol=1e-4)
        elif sdt == torch.bfloat16 and pdt == torch.float32 and not sr and cls != "SGD":
            # likewise a last-bit difference can tip a bf16 state's rounding (one bf16 ulp, 2^-8
            # relative): that element's next update moves by at most lr_max * 2^-8 * |m / denom|
            differ = ~torch.isclose(x, y, rtol=4 * ulp, atol=1e-6)
            assert float(differ.float().mean()) < 0.002, int(differ.sum())
            torch.testing.assert_close(x, y, rtol=4 * ulp, atol=1e-2 * 2**-8)
        else:
            torch.testing.assert_close(x.float(), y.float(), rtol=4 * ulp, atol=1e-6)
        for key, va in oa.state[x].items():
            vb = ob.state[y][key]
            assert va.dtype == vb.dtype and va.shape == vb.shape, key
            if va.dtype in (torch.int8, torch.uint8):
                d = (va.int() - vb.int()).abs()
                assert int(d.max()) <= 1 and float((d > 0).float().mean()) < 0.01, key  # one code step, rarely
            elif key != "step" and va.dtype == torch.bfloat16 and pdt == torch.float32 and not sr and cls != "SGD":
                # a tipped rounding (above): one bf16 ulp that later steps carry, in a few elements
                differ = ~torch.isclose(va.float(), vb.float(), rtol=2**-7, atol=1e-6)
                assert float(differ.float().mean()) < 0.002, (key, int(differ.sum()))
                torch.testing.assert_close(va.float(), vb.float(), rtol=2**-5, atol=1e-6)
            elif key != "step":
                torch.testing.assert_close(
                    va.float(), vb.float(), rtol=2**-7 if va.dtype == torch.bfloat16 else 1e-5, atol=1e-6
                )
    if sdt == "int8":
        st = oa.state[a[-1]]
        keys = (
            {"momentum_buffer"}
            if cls == "SGD"
            else {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if kw.get("amsgrad") else set())
        )
        for k in keys:
            code_dtype = torch.int8 if k in ("momentum_buffer", "exp_avg") else torch.uint8  # signed: first moments
            assert st[k].dtype == code_dtype and st[f"{k}_scale"].shape == (lp.num_blocks(a[-1].numel()),)


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_channels_last_blocks_follow_memory_order(backend):
    """Blocks (and random bits) run along memory: a channels_last parameter's
    int8 state agrees with a contiguous run over the same memory."""
    _needs(backend) if backend != "torch" else None
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 5, 3, 7, generator=g)
    p1 = w.clone().to(memory_format=torch.channels_last).requires_grad_()
    p2 = p1.detach().permute(0, 2, 3, 1).contiguous().requires_grad_()  # the same memory, as a plain tensor
    o1 = cf.AdamW([p1], lr=0.01, backend=backend, state_dtype="int8")
    o2 = cf.AdamW([p2], lr=0.01, backend=backend, state_dtype="int8")
    for _ in range(3):
        gr = torch.randn(8, 5, 3, 7, generator=g).to(memory_format=torch.channels_last)
        p1.grad, p2.grad = gr, gr.permute(0, 2, 3, 1).contiguous()
        o1.step()
        o2.step()
    assert torch.equal(p1.detach().permute(0, 2, 3, 1), p2.detach())
    assert torch.equal(o1.state[p1]["exp_avg_scale"], o2.state[p2]["exp_avg_scale"])
    assert torch.equal(o1.state[p1]["exp_avg"].permute(0, 2, 3, 1), o2.state[p2]["exp_avg"])


# ------------------------------------------------------------------ stochastic rounding trains bf16
@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_stochastic_rounding_moves_bf16_parameters_by_sub_ulp_updates(backend):
    """Updates of 1e-4 on a bf16 1.0 (half an ulp is 2**-8 = 0.0039): rounded
    to nearest the parameter never moves; rounded stochastically it follows
    the fp32 trajectory on average."""
    if backend != "torch":
        _needs(backend)
    out = {}
    for sr in (False, True):
        p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
        opt = cf.SGD([p], lr=1e-4, backend=backend, stochastic_rounding=sr)
        for _ in range(300 if backend == "triton" else 1000):
            p.grad = torch.ones_like(p)
            opt.step()
        out[sr] = p.detach().double()
    steps = 300 if backend == "triton" else 1000
    assert (out[False] == 1.0).all()
    expected = 1.0 - 1e-4 * steps
    assert abs(float(out[True].mean()) - expected) < 0.002, float(out[True].mean())


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_stochastic_rounding_draws_fresh_bits_every_step(backend):
    """An update of 0.44 ulp on bf16 parameters, 32 steps: each element then
    moves down one ulp at each step with probability 0.44, independently, so
    its drift is Binomial(32, 0.44) ulps (variance 7.89 ulp^2).  Bits that
    repeat or correlate across steps widen (or narrow) that variance: the
    pooled variance over ~25,000 paths (11 tensors of odd sizes, three
    seeds) must be within 10% of the binomial's; its standard error is ~1%."""
    if backend != "torch":
        _needs(backend)
    ulp, frac, steps = 2.0**-7, 0.44, 32  # 1.5 lies in [1, 2): one bf16 ulp is 2**-7
    drifts = []
    for seed in (0, 1, 2):
        sizes = [1, 3, 17, 127, 128, 129, 255, 1000, 2049, 4097 + seed, 16_385]
        ps = [torch.full((n,), 1.5, dtype=torch.bfloat16, requires_grad=True) for n in sizes]
        opt = cf.SGD(ps, lr=frac * ulp, backend=backend, stochastic_rounding=True)
        for _ in range(seed):  # the three seeds start at different schedule steps
            for p in ps:
                p.grad = torch.zeros_like(p)
            opt.step()
        for _ in range(steps):
            for p in ps:
                p.grad = torch.ones_like(p)
            opt.step()
        drifts += [(1.5 - p.detach().double()) / ulp for p in ps]
    d = torch.cat(drifts)
    assert torch.equal(d, d.round()) and d.min() >= 0 and d.max() <= steps  # whole ulps, never past the update
    mean, var = steps * frac, steps * frac * (1 - frac)
    n = d.numel()
    assert abs(float(d.mean()) - mean) < 5 * (var / n) ** 0.5, float(d.mean())
    assert abs(float(d.var()) / var - 1) < 0.10, (float(d.var()), var)


# ------------------------------------------------------------------ state dicts, copies, errors
@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
@pytest.mark.parametrize("sdt", ["int8", torch.bfloat16])
def test_state_dict_round_trip_and_resume_bit_for_bit(backend, sdt):
    if backend != "torch":
        _needs(backend)
    kw = dict(lr=cf.OneCycleLR(0.01, 12), state_dtype=sdt, stochastic_rounding=True, weight_decay=0.01)
    a, oa = _train("AdamW", backend, torch.bfloat16, steps=3, sizes=[300, 7], **kw)
    buf = io.BytesIO()
    torch.save(oa.state_dict(), buf)
    b = [p.detach().clone().requires_grad_() for p in a]
    ob = cf.AdamW(b, backend=backend, **kw)
    ob.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    oc = copy.deepcopy(oa)
    c = [p for p in oc.param_groups[0]["params"]]
    for k, v in oa.state[a[0]].items():
        assert torch.equal(v, ob.state[b[0]][k]) and v.dtype == ob.state[b[0]][k].dtype, k
    g = torch.Generator().manual_seed(9)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g).to(p.dtype) for p in a]
        for ps, o in ((a, oa), (b, ob), (c, oc)):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            o.step()
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)
        for k, v in oa.state[x].items():
            assert torch.equal(v, ob.state[y][k]) and torch.equal(v, oc.state[z][k]), k


def test_a_torch_fp32_checkpoint_loads_quantized_and_back():
    torch.manual_seed(0)
    p0 = [torch.randn(300, 3), torch.randn(5)]
    tp = [p.clone().requires_grad_() for p in p0]
    topt = torch.optim.AdamW(tp, lr=1e-3)
    for _ in range(3):
        for p in tp:
            p.grad = torch.randn_like(p)
        topt.step()
    ours = [p.detach().clone().requires_grad_() for p in tp]
    opt = cf.AdamW(ours, lr=1e-3, backend="torch", state_dtype="int8")
    opt.load_state_dict(topt.state_dict())
    for p, q in zip(ours, tp):
        st = opt.state[p]
        assert st["exp_avg"].dtype == torch.int8 and st["exp_avg_sq"].dtype == torch.uint8
        codes, scales = lp.quantize(topt.state[q]["exp_avg"], signed=True)
        assert torch.equal(st["exp_avg"], codes) and torch.equal(st["exp_avg_scale"], scales)
        m = lp.dequantize(st["exp_avg"], st["exp_avg_scale"])
        torch.testing.assert_close(m, topt.state[q]["exp_avg"], rtol=0.02, atol=float(scales.max()) * 1e-3)
    # and an int8 checkpoint loads into fp32 states (dequantized)
    back = cf.AdamW([p.detach().clone().requires_grad_() for p in ours], lr=1e-3, backend="torch")
    back.load_state_dict(opt.state_dict())
    for p in back.param_groups[0]["params"]:
        assert back.state[p]["exp_avg"].dtype == torch.float32 and "exp_avg_scale" not in back.state[p]
    for p in ours:
        p.grad = torch.randn_like(p)
    opt.step()  # the loaded states step


def test_bad_arguments_are_refused_by_name():
    p = [torch.nn.Parameter(torch.randn(4))]
    with pytest.raises(ValueError, match="state_dtype"):
        cf.Adam(p, state_dtype="int4")
    with pytest.raises(ValueError, match="state_dtype"):
        cf.Adam(p, state_dtype=torch.int8)
    with pytest.raises(ValueError, match="stochastic_rounding"):
        cf.SGD(p, stochastic_rounding="yes")
    h = torch.nn.Parameter(torch.randn(4, dtype=torch.float16))
    h.grad = torch.ones_like(h)
    with pytest.raises(ValueError, match="stochastic_rounding=True rounds bfloat16 writes; float16"):
        cf.SGD([h], lr=0.1, momentum=0.9, backend="torch", stochastic_rounding=True).step()
    # a parameter that is not dense in memory: refused before any state is made
    base = torch.randn(10, 10)
    good = torch.nn.Parameter(torch.randn(3))
    q = torch.nn.Parameter(base[:, ::2])
    opt = cf.AdamW([good, q], lr=0.1, backend="torch", state_dtype="int8")
    good.grad, q.grad = torch.ones(3), torch.ones_like(q)
    before = good.detach().clone()
    with pytest.raises(ValueError, match="state_dtype='int8' needs parameters dense"):
        opt.step()
    assert torch.equal(good, before) and not opt.state


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_a_bad_scale_is_refused_before_any_kernel(backend):
    if backend != "torch":
        _needs(backend)
    a, oa = _train("AdamW", backend, torch.float32, steps=2, sizes=[300], lr=0.01, state_dtype="int8")
    sd = oa.state_dict()
    sd = {**sd, "state": {i: dict(v) for i, v in sd["state"].items()}}  # (torch's holds the live dicts)
    sd["state"][0]["exp_avg_scale"] = torch.zeros(2)  # 300 elements need 3 blocks
    ob = cf.AdamW([a[0].detach().clone().requires_grad_()], lr=0.01, backend=backend, state_dtype="int8")
    with pytest.raises(ValueError, match="exp_avg_scale"):
        ob.load_state_dict(sd)  # at load, all-or-nothing
    assert not ob.state
    sd["state"][0]["exp_avg_sq"] = sd["state"][0]["exp_avg_sq"].view(torch.int8)  # codes of the wrong kind
    sd["state"][0]["exp_avg_scale"] = torch.zeros(3)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        ob.load_state_dict(sd)
    # and one shrunk in place between steps (the kernels would read past it): refused at the step,
    # before any kernel (the plan's check sees its size change)
    st = oa.state[a[0]]
    st["exp_avg_sq_scale"].resize_(2)
    a[0].grad = torch.ones_like(a[0])
    before = a[0].detach().clone()
    with pytest.raises(RuntimeError, match="exp_avg_sq_scale" if backend != "torch" else "its scales must be"):
        oa.step()
    assert torch.equal(a[0], before)


@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_a_skipped_step_leaves_codes_and_scales(backend):
    if backend != "torch":
        _needs(backend)
    a, oa = _train("AdamW", backend, torch.bfloat16, steps=2, sizes=[300], lr=0.01, state_dtype="int8",
                   stochastic_rounding=True, max_grad_norm=1.0)  # fmt: skip
    before = {k: v.clone() for k, v in oa.state[a[0]].items()}
    p_before = a[0].detach().clone()
    a[0].grad = torch.full_like(a[0], float("inf"))
    oa.step()
    assert torch.equal(a[0], p_before)
    for k, v in oa.state[a[0]].items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------ quality
def test_digits_quality_of_every_variant():
    """A small MLP on scikit-learn's digits, 150 AdamW steps: int8 and bf16
    states, bf16 parameters with stochastic rounding, against fp32 (same seed)."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    xt, yt, xv, yv = x[:1400], y[:1400], x[1400:], y[1400:]
    acc = {}
    for name, pdt, kw in [("fp32", torch.float32, {}), ("bf16-state", torch.float32, dict(state_dtype=torch.bfloat16)),
                          ("int8-state", torch.float32, dict(state_dtype="int8")),
                          ("bf16-param-sr", torch.bfloat16, dict(stochastic_rounding=True)),
                          ("bf16-param-sr-int8", torch.bfloat16, dict(stochastic_rounding=True, state_dtype="int8"))]:  # fmt: skip
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(pdt)
        opt = cf.AdamW(model.parameters(), lr=cf.OneCycleLR(0.01, 150), backend="cpu" if _ext.load() else "torch", **kw)
        g = torch.Generator().manual_seed(1)
        for _ in range(150):
            idx = torch.randint(0, len(xt), (64,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(xt[idx].to(pdt)).float(), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acc[name] = float((model(xv.to(pdt)).argmax(1) == yv).float().mean())
    assert acc["fp32"] > 0.85, acc  # (150 steps: about 0.90)
    for name in ("bf16-state", "int8-state"):
        assert acc[name] >= acc["fp32"] - 0.02, acc
    for name in ("bf16-param-sr", "bf16-param-sr-int8"):
        assert acc[name] >= acc["fp32"] - 0.03, acc
