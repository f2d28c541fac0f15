"""`clr-fused demo --dataset states`: the low-precision quality runs, end to end at a tiny size."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from clr_fused import cli
from clr_fused.demos import states as m


def test_in_dtype_wrapper_trains_bf16_parameters():
    model = m.InDtype(torch.nn.Linear(4, 3), torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    out = model(torch.randn(2, 4))
    assert out.dtype == torch.float32 and out.shape == (2, 3)


def test_every_variant_on_every_task_small(tmp_path):
    pytest.importorskip("sklearn")
    rc = cli.main(["demo", "--dataset", "states", "--iterations", "24", "--seeds", "2", "--out", str(tmp_path)])
    assert rc == 0
    out = json.load(open(tmp_path / "states.json"))
    tasks = {t["name"] for t in out["tasks"]}
    assert {"digits", "charlm"} <= tasks and ("mnist1d" in tasks or "mnist1d" in out["skipped"])
    rows = out["table"]
    for name in tasks:
        variants = {r["variant"] for r in rows if r["task"] == name}
        assert variants == set(m.VARIANTS), name
    for r in rows:
        assert len(r["finals"]) == 2 and all(math.isfinite(v) for v in r["finals"]), r
        if r["metric"] == "accuracy":
            assert 0.0 <= r["mean"] <= 1.0
    # the fp32 and int8 runs differ (the states really are quantized), the seeds too
    d = {(r["task"], r["variant"]): r["finals"] for r in rows}
    assert d[("charlm", "fp32")] != d[("charlm", "int8 states")]
    assert os.path.getsize(tmp_path / "states.png") > 10_000


def test_lion_on_a_chosen_task_small(tmp_path):
    """--optimizer lion trains the task with cf.Lion (its own range test's CLR bounds); --tasks picks tasks."""
    pytest.importorskip("sklearn")
    rc = cli.main(["demo", "--dataset", "states", "--optimizer", "lion", "--tasks", "digits", "--iterations", "12",
                   "--seeds", "2", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    out = json.load(open(tmp_path / "states-lion.json"))
    assert [t["name"] for t in out["tasks"]] == ["digits"]
    assert out["tasks"][0]["setup"]["optimizer"].startswith("Lion")
    assert {r["variant"] for r in out["table"]} == set(m.VARIANTS)
    assert all(math.isfinite(v) for r in out["table"] for v in r["finals"])
    assert not (tmp_path / "states.json").exists()


def test_bf16_params_variant_set_small(tmp_path):
    """--variants bf16-params: fp32 beside the bf16-parameter variants (nearest, SR, Kahan); the Kahan runs
    differ from nearest's (the compensation buffer is used)."""
    pytest.importorskip("sklearn")
    rc = cli.main(["demo", "--dataset", "states", "--variants", "bf16-params", "--tasks", "digits", "--iterations", "30",
                   "--seeds", "2", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    out = json.load(open(tmp_path / "states-bf16-params.json"))
    d = {r["variant"]: r["finals"] for r in out["table"]}
    assert set(d) == set(m.VARIANT_SETS["bf16-params"])
    curves = out["tasks"][0]["curves"]
    assert curves["bf16 params + Kahan"] != curves["bf16 params, nearest"]


@pytest.mark.parametrize("argv", [["--optimizer", "lion"], ["--tasks", "digits"], ["--variants", "bf16-params"]])
def test_states_options_are_refused_for_other_demos(argv, capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--dataset", "digits", *argv])
    assert "are for --dataset states" in capsys.readouterr().err


def test_task_list_is_checked(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--dataset", "states", "--tasks", "digits,imagenet"])
    assert "comma-separated list" in capsys.readouterr().err
