"""The char-level GPT demo (`clr-fused demo --dataset charlm`), end to end at a tiny size."""

from __future__ import annotations

import math
import sysconfig

import torch

from clr_fused.demos import charlm as m


def test_corpus_is_the_stdlib_split_by_file():
    c = m.load_stdlib(max_bytes=200_000)
    assert len(c.train) == 200_000 and len(c.val) >= 20_000
    assert c.files[0] > 0 and c.files[1] > 0
    # deterministic, and it is the standard library's own text
    again = m.load_stdlib(max_bytes=200_000)
    assert torch.equal(c.train, again.train) and torch.equal(c.val, again.val)
    first = sorted(__import__("os").listdir(sysconfig.get_paths()["stdlib"]))
    first = next(n for n in first if n.endswith(".py"))
    with open(f"{sysconfig.get_paths()['stdlib']}/{first}", "rb") as f:
        head = f.read(100)
    assert bytes(c.train[:100].tolist()) == head


def test_model_is_a_causal_lm():
    model = m.make_model(0)
    assert 200_000 < sum(p.numel() for p in model.parameters()) < 400_000
    x = torch.randint(0, 256, (2, m.BLOCK))
    y = model(x)
    x2 = x.clone()
    x2[:, 40:] = (x2[:, 40:] + 1) % 256  # the future changes...
    assert torch.allclose(model(x2)[:, :40], y[:, :40], atol=1e-5)  # ...the past's predictions do not
    targets = torch.randint(0, 256, (2, m.BLOCK))
    assert math.isclose(m.lm_loss(y, targets).item(), math.log(256), rel_tol=0.05)  # untrained: about uniform


def test_run_end_to_end_small():
    corpus = m.load_stdlib(max_bytes=100_000)
    exp = m.run(corpus, iterations=12, seeds=(0, 1), eval_every=6, range_steps=15, progress=False)
    assert set(exp.curves) == {"constant", "warmup_cosine", "wsd", "onecycle", "clr"}
    assert all(len(runs) == 2 and all(len(r) == 2 for r in runs) for runs in exp.curves.values())
    rows = exp.table()
    assert {r["policy"] for r in rows} == set(exp.curves)
    assert all(math.isfinite(r["final_mean"]) for r in rows)
    # training moved the loss down from the untrained ~log(256)
    assert min(r["final_mean"] for r in rows) < math.log(256)
    assert exp.suggestion["max_lr"] > exp.suggestion["base_lr"] > 0
