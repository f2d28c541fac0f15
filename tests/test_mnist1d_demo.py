"""The MNIST-1D workflow end to end, small: data generated locally (no
network), range test -> CLR, every policy, the peers' suggestions, the plot."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch

mnist1d = pytest.importorskip("mnist1d", reason="the MNIST-1D demo needs the mnist1d package (dev extra)")

from clr_fused.demos import mnist1d as m  # noqa: E402


def test_data_is_generated_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the MNIST-1D demo touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    data = m.load_mnist1d()
    assert data.x_train.shape == (4000, 1, 40) and data.x_test.shape == (1000, 1, 40)
    assert set(data.y_train.unique().tolist()) == set(range(10))
    assert data.x_train.std() > 0.1  # real signals, not zeros


def test_model_shapes_and_train_mode_restored():
    model = m.make_model(0)
    x = torch.randn(7, 1, 40)
    assert model(x).shape == (7, 10)
    model.train()
    m.accuracy(model, x, torch.zeros(7, dtype=torch.int64))
    assert model.training


def test_valley_rule_picks_the_middle_of_the_longest_fall():
    class R:
        lrs = [0.001 * 2**i for i in range(12)]
        smoothed_losses = [3.0, 2.9, 3.1, 3.0, 2.5, 2.0, 1.5, 1.0, 0.9, 1.5, 4.0, 9.0]

    # longest strictly falling stretch: indices 2..8 -> middle index 5
    assert m.valley_suggestion(R) == R.lrs[5]


def test_demo_end_to_end_small(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "clr_fused", "demo", "--dataset", "mnist1d", "--iterations", "120", "--seeds", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "mnist1d.json").read_text())
    policies = {r["policy"] for r in data["table"]}
    assert policies == {"fixed", "step", "exp", "onecycle", "clr", "clr_lrfinder", "clr_valley"}
    assert 0 < data["suggestion"]["base_lr"] < data["suggestion"]["max_lr"]
    assert data["peers"]["torch_lr_finder"] > 0 and data["peers"]["valley"] > 0
    for r in data["table"]:
        assert 0.0 <= r["final_mean"] <= 1.0 and r["final_std"] >= 0.0
    # after 120 iterations the trained nets are far above chance (10%)
    assert max(r["final_mean"] for r in data["table"]) > 0.3
    for name in ("mnist1d_policies.png", "mnist1d_range_test.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "| clr |" in out.stdout
