"""`clr-fused bench` runs here (CPU-sized) and writes its JSON, markdown and plot."""

import json
import os
import subprocess
import sys

import torch

from clr_fused.bench.param_sets import many_small, numel, resnet50, transformer
from clr_fused.bench.traffic import bytes_per_param, footprint_per_param


def test_param_sets_have_the_real_shapes():
    assert (len(resnet50()), numel(resnet50())) == (161, 25_557_032)
    gpt2 = transformer(768, 12)
    assert len(gpt2) == 148 and 124e6 < numel(gpt2) < 125e6
    assert 1.0e9 < numel(transformer(2048, 18)) < 1.05e9
    assert len(many_small(5000)) == 5000


def test_bytes_per_param():

    assert bytes_per_param("adam", torch.float32) == 28
    assert bytes_per_param("sgd", torch.float32) == 20
    assert bytes_per_param("adamw", torch.bfloat16) == 14
    assert footprint_per_param("adam", torch.float32) == 16 and footprint_per_param("sgd", torch.float32) == 12


def test_bench_quick_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "clr_fused", "bench", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (js,) = tmp_path.glob("*.json")
    data = json.loads(js.read_text())
    assert data["torch"] and data["threads"] == torch.get_num_threads() and data["load"]["before"]["cores"] > 0
    providers = {r["provider"] for r in data["rows"]}
    assert {"torch-foreach+CyclicLR", "torch-fused+CyclicLR", "cf-torch"} <= providers
    for r in data["rows"]:
        assert r["ms"] > 0 and r["gbps"] > 0 and r["copy_gbps"] > 0
        assert "vs torch-fused+CyclicLR" in r["ratios"]
        footprint = r["n_params"] * footprint_per_param(r["algo"], getattr(torch, r["dtype"]))
        if footprint <= data["last_level_cache_bytes"]:
            assert r["pct_copy_bw"] is None  # printed as "fits in cache"
    md = (tmp_path / js.name.replace(".json", ".md")).read_text()
    assert "| % of copy |" in md and ("x faster" in md or "x slower" in md)
    pcts = [
        float(c.strip().rstrip("%")) for line in md.splitlines() for c in line.split("|") if c.strip().endswith("%")
    ]
    assert all(0 < p <= 100 for p in pcts), pcts
    assert (tmp_path / js.name.replace(".json", ".png")).read_bytes()[:4] == b"\x89PNG"
    assert "| provider |" in (tmp_path / js.name.replace(".json", ".md")).read_text()


def test_report_cells():
    from clr_fused.bench import report

    assert report.speed_text(0.5) == "2x faster" and report.speed_text(4.0) == "4x slower"
    assert report.speed_text(8 / 5368) == "671x faster"  # the contended case that printed "0.00x"
    assert report.speed_text(1.002) == "same" and report.speed_text(0.8123) == "1.23x faster"
    assert report.pct_text(None) == "fits in cache" and report.pct_text(73.4) == "73%"
    assert "%" not in report.pct_text(153.0)  # never a percentage above 100
    assert report.pct_of_copy(10.0, 8.0, footprint=1 << 20, cache=32 << 20) is None
    assert report.pct_of_copy(6.0, 8.0, footprint=1 << 30, cache=32 << 20) == 75.0
    quiet, busy = dict(load=0.3, cores=2, high=False), dict(load=5.4, cores=2, high=True)
    assert report.load_note(quiet, quiet) == ""
    assert "5.4 on 2 cores" in report.load_note(quiet, busy)


def test_copy_bandwidth_is_the_best_trial_at_the_step_size(monkeypatch):
    from clr_fused.bench import report

    sizes = []
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda n, **kw: sizes.append(n) or real_empty(n, **kw))
    gbps = report.copy_bandwidth(torch.device("cpu"), 1 << 22, trials=3, reps=2)
    assert gbps > 0 and sizes == [(1 << 22) // 8]  # source and destination span the step's footprint
    assert report.copy_cap(0) == report.COPY_CAP_BYTES and report.copy_cap(1 << 30) == 4 << 30
    monkeypatch.setattr(report, "copy_cap", lambda cache: 1 << 24)
    report.copy_bandwidth(torch.device("cpu"), 1 << 40, trials=1, reps=1)
    assert sizes[-1] == (1 << 24) // 8


def _quick_bench(tmp_path, flag: str, stem: str, timeout: int):
    """Runs ``clr-fused bench <flag> --quick`` in a fresh process (skipped without the
    extension); its JSON file and contents."""
    from clr_fused import _ext

    if _ext.load() is None:
        import pytest

        pytest.skip(f"the extension is not built here: {_ext.error()}")
    out = subprocess.run(
        [sys.executable, "-m", "clr_fused", "bench", flag, "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (js,) = tmp_path.glob(f"{stem}-*.json")
    return js, json.loads(js.read_text())


def test_bench_host_quick_smoke(tmp_path):
    js, data = _quick_bench(tmp_path, "--host", "host", timeout=600)
    providers = {r["provider"] for r in data["host_cost"]}
    assert {
        "torch fused + CyclicLR, kernels stubbed",
        "clr_fused cpu, kernels stubbed",
        "clr_fused cpu",
        "torch fused + float lr write, kernels stubbed",
        "clr_fused cpu + float lr write, kernels stubbed",
        "clr_fused cpu + LambdaLR table, kernels stubbed",
    } <= providers
    assert all(r["us_per_step"] > 0 for r in data["host_cost"])
    assert {r["dtype"] for r in data["cpu_backend"]} == {"float32", "bfloat16"}
    assert all(r["gbps"] > 0 for r in data["cpu_backend"])


def test_low_precision_bytes_per_param():
    import torch

    from clr_fused.bench.low_precision import bytes_per_param, footprint_per_param

    assert bytes_per_param("adamw", torch.float32, "fp32") == 28  # p r/w, g, m r/w, v r/w
    assert bytes_per_param("adamw", torch.float32, "bf16") == 20
    assert bytes_per_param("adamw", torch.float32, "int8") == 12 + 4 * (1 + 4 / 128)  # codes + a scale per 128
    assert bytes_per_param("adamw", torch.bfloat16, "param") == 14
    assert bytes_per_param("sgd-momentum", torch.bfloat16, "int8") == 6 + 2 * (1 + 4 / 128)
    assert footprint_per_param("adamw", torch.float32, "fp32") == 16  # p, g, m, v: each read once, written in place
    assert footprint_per_param("adamw", torch.bfloat16, "int8") == 4 + 2 * (1 + 4 / 128)


def test_bench_low_precision_quick_smoke(tmp_path):
    js, data = _quick_bench(tmp_path, "--low-precision", "low-precision", timeout=900)
    providers = {(r["algo"], r["param_dtype"], r["provider"]) for r in data["rows"]}
    for algo in ("adamw", "sgd-momentum"):
        assert {(algo, "float32", "torch fused (fp32 states)"), (algo, "float32", "clr_fused cpu, int8 states"),
                (algo, "float32", "clr_fused cpu, bf16 states"), (algo, "bfloat16", "torch fused (bf16 states)"),
                (algo, "bfloat16", "clr_fused cpu, int8 states, stochastic rounding")} <= providers  # fmt: skip
    assert all(r["ms_per_step"] > 0 and r["h100_model_ms"] > 0 for r in data["rows"])
    assert "roofline MODEL" in (tmp_path / js.name.replace(".json", ".md")).read_text()


def test_roofline_model_counts():
    """The H100 model (`clr-fused bench --model h100`): bytes, launches and the
    arithmetic of its prediction, on cases counted by hand."""

    from clr_fused.bench import model

    assert model.torch_launches([10] * 100, "adam") == 3  # 36 tensors per launch
    assert model.torch_launches([10] * 100, "sgd-momentum") == 3  # 48 per launch
    assert model.torch_launches([320 * 65536 + 1], "adam") == 2  # 321 chunks: a full block table, then one
    assert model.torch_launches([0, 5, 0], "adam") == 1
    r = model.predict("resnet50", resnet50(), "adam", torch.float32)
    assert r["bytes"] == 25_557_032 * 28 and r["ours_launches"] == 1
    assert r["grid"] == sum(max(1, -(-__import__("math").prod(s) // 16384)) for s in resnet50())
    expected = (model.H100.launch_s + r["bytes"] / model.H100.bandwidth) * 1e3
    assert abs(r["ours_ms"] - expected) < 1e-12
    small = model.predict("many-small-5000", many_small(5000), "adam", torch.float32)
    assert small["torch_launches"] == 139 and small["ratio"] < 0.1
    # partial blocks and the tail bound (greedy in-order placement on the slots)
    assert model.block_sizes([16385, 0, 7]) == [16384, 1, 0, 7]
    assert model.tail_bound([10, 10, 10, 10], 2) == 0.0
    assert model.tail_bound([10, 10, 20], 2) == 0.5  # the 20 starts when a 10 ends: 30 against a balanced 20
    assert r["partial_blocks"] == sum(
        1 for b in model.block_sizes([__import__("math").prod(s) for s in resnet50()]) if b < 16384
    )
    assert 0.0 <= r["tail_bound"] < 0.05


def test_gpu_rows_carry_the_model_prediction():
    """On a GPU each fused provider's row shows the model's time beside the measured one."""
    from clr_fused.bench import model, run
    from clr_fused.bench.param_sets import resnet50

    r = model.predict("resnet50", resnet50(), "sgd-momentum", torch.bfloat16)
    case = run.model_prediction("resnet50", resnet50(), "sgd", torch.bfloat16)
    assert case == r
    assert run.predicted_ms("torch-fused+CyclicLR", case) == r["torch_fused_ms"]
    assert run.predicted_ms("cf-cuda-graph", case) == r["ours_ms"]
    assert run.predicted_ms("torch-foreach+CyclicLR", case) is None
    row = run.Row("resnet50", "sgd", "bfloat16", "cf-cuda", 0.2, 0.01, 1000.0, 2000.0, 50.0, 10.0, 1, 1, r["ours_ms"])
    text = run.markdown("GPU", 50 << 20, [row])
    assert "not a measurement" in text and f"{r['ours_ms']:.3f} (model)" in text
    assert "'alone'" not in text and "timed interleaved" in text
    alone = run.Row("resnet50", "sgd", "bfloat16", "cf-cuda", 0.2, 0.01, 1000.0, 2000.0, 50.0, 10.0, 1, 1, None, False)
    assert "cf-cuda (alone)" in run.markdown("GPU", 50 << 20, [row, alone])


def test_bench_model_writes_a_labelled_table(tmp_path):
    out = subprocess.run([sys.executable, "-m", "clr_fused", "bench", "--model", "h100", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads((tmp_path / "model-h100.json").read_text())
    assert data["label"] == "model, not a measurement" and len(data["rows"]) == 16
    assert "MODEL, not a measurement" in (tmp_path / "model-h100.md").read_text()


def test_providers_are_timed_interleaved():
    """Every round times one call of each provider, in a rotating order."""
    from clr_fused.bench import run

    calls = []
    steps = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    out = run._time_interleaved(steps, torch.device("cpu"), warmup=1, reps=3)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(out) == set("abc") and all(d >= 0 and h >= 0 for d, h in out.values())


def test_a_step_faster_than_the_copy_is_explained():
    from clr_fused.bench import report

    assert report.above_copy_note([None, 80.0]) == ""
    assert "read for ownership" in report.above_copy_note([None, 170.0])


def test_bench_peers_quick_smoke(tmp_path):
    """Every algorithm has its reference, ours and each listed peer as a row: timed where it is
    installed and runs, else a row saying why (the dev install has optimi, lion-pytorch,
    schedulefree, bitsandbytes and torchao, not DeepSpeed)."""
    from clr_fused.bench.peers import algorithms

    js, data = _quick_bench(tmp_path, "--peers", "peers", timeout=900)
    rows = data["rows"]
    expected = {(algo, p.name) for algo, peers in algorithms(torch.device("cpu")).items() for p in peers}
    assert {(r["algo"], r["provider"]) for r in rows} == expected
    ran = {(r["algo"], r["provider"]) for r in rows if r["status"] == "ran"}
    for must in [("adamw", "torch fused AdamW"), ("adamw", "clr_fused AdamW"), ("sgd-momentum", "clr_fused SGD"),
                 ("lion", "lion_pytorch Lion"), ("lion", "clr_fused Lion"), ("lion", "optimi Lion (foreach)"),
                 ("adamw-schedule-free", "schedulefree AdamWScheduleFree"),
                 ("sgd-schedule-free", "clr_fused SGDScheduleFree")]:  # fmt: skip
        assert must in ran, (must, [r for r in rows if (r["algo"], r["provider"]) == must])
    for r in rows:
        if r["status"] == "ran":
            assert r["ms_per_step"] > 0 and r["ratio_to_reference"] > 0, r
        else:
            assert r["ms_per_step"] is None and r["status"].startswith(("not installed", "does not run")), r
    md = (tmp_path / js.name.replace(".json", ".md")).read_text()
    assert "| small | lion | clr_fused Lion |" in md and "Versions: torch" in md


def test_bench_peers_builds_ours_for_a_gpu_too():
    """The GPU rows of --peers (not runnable here): every clr_fused provider builds with the
    backend the GPU run passes (on CPU tensors here, where "auto" picks a CPU backend) and steps."""
    from clr_fused.bench.peers import algorithms

    for algo, peers in algorithms(torch.device("cuda")).items():
        for peer in peers:
            if peer.name.startswith("clr_fused"):
                p = torch.nn.Parameter(torch.randn(33))
                p.grad = torch.randn(33)
                before = p.detach().clone()
                peer.make([p]).step()
                assert not torch.equal(p.detach(), before), (algo, peer.name)
