"""The CUDA kernels executed with the GPU's semantics on the CPU
(tests/gpu_sim/: threads as fibers, warps, barriers, collectives), bit for
bit against the CPU build of the same sources.

What it shows and what not: README, "How the GPU path is tested without a GPU".
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

import pytest

from clr_fused import _ext

from .gpu_sim import build as sim_build
from .gpu_sim import harness, planted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(ROOT, "tests", "gpu_sim")
GXX = shutil.which("g++")

pytestmark = pytest.mark.skipif(
    GXX is None or not sys.platform.startswith("linux"), reason="the emulator needs g++ and Linux (ucontext)"
)


def _reference_fuses() -> None:
    """The GPU build fuses multiply-adds where the kernels ask (madd<true>);
    the CPU copy that does the same is the AVX2 / AVX-512 one."""
    mod = _ext.load()
    if mod is None:
        pytest.skip(f"the extension is absent: {_ext.error()}")
    if mod.cpu_isa() == "baseline":
        pytest.skip("this CPU runs the baseline copy (no FMA): no CPU copy rounds as the GPU build does")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return os.environ.get("CLR_FUSED_SIM_BUILD_DIR") or str(tmp_path_factory.mktemp("gpu_sim"))


@pytest.fixture(scope="module")
def lib(build_dir):
    _reference_fuses()
    return sim_build.build(build_dir, "count", coverage=True)


@pytest.fixture(scope="module")
def ops(lib):
    return harness.load(lib)


def _sub_env(**extra):
    return dict(os.environ, PYTHONPATH=ROOT, TRITON_INTERPRET="1", **extra)


def _harness(lib, case_set, orders, workers=2, **env):
    run = subprocess.run([sys.executable, "-m", "tests.gpu_sim.harness", lib, case_set, orders, str(workers)],
                         capture_output=True, text=True, cwd=ROOT, env=_sub_env(**env), timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


def _assert_identical(res):
    assert res["errors"] == [], res["errors"]
    bad = [(r["case"], r["where"]) for r in res["results"] if r["differing_bytes"]]
    assert bad == [], bad
    assert all(t == 0 for r in res["results"] for t in r["tickets"]), "a ticket was not reset"
    assert res["compared_bytes"] > 0


def test_every_registered_kernel_variant_bit_for_bit(ops, lib):
    """Every instantiation fused_optim.cu can launch (kernel_variants.h over
    every storage pair), every flag, schedule kind, the LambdaLR table,
    GradScaler's skip, clipping: parameters, states, int8 codes and scales,
    live LR / momentum, step counters byte for byte; tickets back to zero."""
    res = harness.run_set(ops, "all", "forward", workers=2)
    _assert_identical(res)
    launched, every = set(ops.launched()), set(ops.all_variants())
    assert len(every) >= 40 and every <= launched, sorted(every - launched)
    # the generic step's algorithms too: 13 instantiations for Lion, 9 for each schedule-free one (no int8)
    assert set(harness.GENERIC) == set(_ext.load().ALGORITHMS), "a new algorithm needs its harness.generic_case"
    algos = collections.Counter(v.split("<")[0] for v in every)
    assert {a: algos[a] for a in harness.GENERIC} == {"Lion": 13, "SGDScheduleFree": 9, "AdamWScheduleFree": 9}, algos
    _line_coverage_of_the_kernels(ops, lib)


# the kernel sources whose lines the emulated runs must execute: the launcher, SGD / Adam, the codecs,
# the schedule (its generated kinds too), and the generic step with every algorithm of csrc/algorithms.h
KERNEL_SOURCES = ("multi_tensor.cuh", "fused_kernels.cuh", "low_precision.cuh", "schedule.cuh", "schedule_generated.cuh",
                  "algorithm_kernel.cuh", "lion.cuh", "sgd_schedule_free.cuh", "adamw_schedule_free.cuh",
                  "schedule_free.h")  # fmt: skip


def _line_coverage_of_the_kernels(ops, lib, floor=0.95):
    """gcov over the kernel headers as the emulator build compiled them."""
    gcov = shutil.which("gcov")
    if gcov is None or not ops.coverage_dump():
        return
    obj = sim_build.kernel_object(lib)
    run = subprocess.run(
        [gcov, "--json-format", "--stdout", obj], capture_output=True, text=True, cwd=os.path.dirname(obj)
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines: dict[str, dict[int, int]] = {}
    for doc in run.stdout.splitlines():
        if not doc.strip():
            continue
        for f in json.loads(doc)["files"]:
            name = os.path.basename(f["file"])
            if name in KERNEL_SOURCES:
                for ln in f["lines"]:
                    lines.setdefault(name, {})[ln["line_number"]] = max(
                        lines.get(name, {}).get(ln["line_number"], 0), ln["count"]
                    )
    assert set(lines) == set(KERNEL_SOURCES), sorted(lines)
    for name, counts in lines.items():
        done = sum(1 for c in counts.values() if c > 0) / len(counts)
        missed = sorted(n for n, c in counts.items() if c == 0)
        print(f"{name}: {done:.1%} of {len(counts)} lines executed; not executed: {missed}")
        assert done >= floor, (name, done, missed)


@pytest.mark.parametrize("order,workers", [("reversed", 1), ("shuffled", 3), ("forward", 4)])
def test_thread_orders_and_concurrent_blocks(ops, order, workers):
    _assert_identical(harness.run_set(ops, "core", order, workers=workers, seed=7))


def test_counted_bytes_equal_the_model(ops):
    """Bytes the kernel moves per parameter per step, counted from its own
    loads and stores, equal the roofline model's (bench/run.py,
    bench/low_precision.py); aligned fp32 tensors move through 16-byte
    accesses, 16-bit ones through 8-byte accesses.  The committed table
    (clr_fused/bench/counted_bytes.json) is what this run counts."""
    from clr_fused.bench import counted

    from .gpu_sim import report

    fresh = report.count_all(ops)
    for key, row in fresh.items():
        assert row["element_bytes_per_param"] == pytest.approx(row["model_bytes_per_param"], abs=1e-9), (key, row)
        widths = row["widths"]
        vec = 16 if row["param_dtype"] == "float32" else 8
        assert set(widths["params"]["loads"]) == {str(vec)} and set(widths["grads"]["loads"]) == {str(vec)}, (
            key,
            widths,
        )
        if row["state"] in ("fp32", "param") and row["param_dtype"] == "float32":
            assert set(widths["state0"]["loads"]) == {"16"} and set(widths["state0"]["stores"]) == {"16"}, (key, widths)
    assert counted.load() == json.loads(json.dumps(fresh)), (
        "clr_fused/bench/counted_bytes.json is stale: python -m tests.gpu_sim.report"
    )


def _planted_builds(build_dir):
    bugs = [b for b in planted.BUGS if b[4] != "race"]

    def one(i_bug):
        i, (name, file, old, new, kind, case_set) = i_bug
        src = planted.plant(os.path.join(build_dir, f"planted-{i}"), file, old, new)
        return name, kind, case_set, sim_build.build(build_dir, "count", csrc=src, fp32_only=True, kernel_opt="-O1")

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(one, enumerate(bugs)))


def test_planted_gpu_only_bugs_are_caught(lib, build_dir):
    """Each bug is invisible to the CPU build (blockDim 1, no vector path,
    one lane per int8 block); the emulator must reject every one."""
    builds = _planted_builds(build_dir)

    def check(b):
        name, kind, case_set, bug_lib = b
        out, _ = _harness(bug_lib, case_set, "forward,reversed")
        diffs = sum(o["differing_bytes"] for o in out)
        errors = [e["error"] for o in out for e in o["errors"]]
        return name, kind, diffs, errors

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(check, builds))
    for name, kind, diffs, errors in results:
        print(f"{name}: {diffs} differing bytes, {len(errors)} reports {errors[:1]}")
        if kind == "error":
            assert errors and all("CUDA emulator" in e for e in errors), (name, diffs, errors)
        else:
            assert diffs > 0 or errors, (name, "not caught")


def test_clean_under_asan_and_ubsan(build_dir):
    """The emulated kernels, the op entry and the fibers under
    AddressSanitizer + UndefinedBehaviorSanitizer (misaligned float4
    accesses included: -fsanitize=alignment)."""
    _reference_fuses()
    asan_lib = sim_build.build(build_dir, "asan", fp32_only=True)
    out, err = _harness(asan_lib, "fp32", "forward", 2, LD_PRELOAD=sim_build.sanitizer_preload(),
                        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:exitcode=66:new_delete_type_mismatch=0:alloc_dealloc_mismatch=0",
                        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=67")  # fmt: skip
    assert "AddressSanitizer" not in err and "runtime error:" not in err, err[-4000:]
    _assert_identical(out[0])


def _tsan_binary(build_dir, csrc, tag):
    exe = os.path.join(build_dir, f"sim_tsan-{tag}")
    cmd = [GXX, "-std=c++20", "-O1", "-g", "-fsanitize=thread", "-Wno-tsan", "-ffp-contract=off", f"-I{csrc}", f"-I{SIM}",
           f"-I{os.path.join(ROOT, 'tests', 'cpp')}", os.path.join(SIM, "sim_tsan.cpp"), "-o", exe]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    return exe


def _run_tsan(exe, steps=4, halt=False):
    return subprocess.run([exe, str(steps)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TSAN_OPTIONS=f"halt_on_error={int(halt)} exitcode=66"))  # fmt: skip


def test_ticket_under_thread_sanitizer(build_dir):
    """CUDA's ordering (relaxed atomicAdd, __threadfence as a fence) on 4
    concurrent workers of 512-thread blocks: no race; and the two planted
    ordering bugs (fence removed, non-atomic ticket) are reported."""
    run = _run_tsan(_tsan_binary(build_dir, sim_build.CSRC, "clean"))
    assert run.returncode == 0 and "ThreadSanitizer" not in run.stderr, run.stdout + run.stderr[-4000:]
    assert run.stdout.startswith("ok:"), run.stdout
    for i, (name, file, old, new, kind, _) in enumerate(planted.BUGS):
        if kind != "race":
            continue
        src = planted.plant(os.path.join(build_dir, f"planted-race-{i}"), file, old, new)
        bad = _run_tsan(_tsan_binary(build_dir, src, f"race-{i}"), halt=True)
        assert "WARNING: ThreadSanitizer: data race" in bad.stderr, (name, bad.stdout, bad.stderr[-2000:])


SELFTEST_CASES = ["shuffles", "barrier", "missing-barrier", "exited-lane", "different-collectives", "lane-outside-mask",
                  "skipped-barrier", "different-barriers", "deadlock", "assume", "blocks"]  # fmt: skip


@pytest.fixture(scope="module")
def selftest(build_dir):
    exe = os.path.join(build_dir, "sim_selftest")
    built = subprocess.run([GXX, "-std=c++20", "-O1", "-g", f"-I{SIM}", os.path.join(SIM, "sim_selftest.cpp"), "-o", exe, "-pthread"],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    return exe


@pytest.mark.parametrize("case", SELFTEST_CASES)
def test_emulator_computes_and_reports_as_a_gpu_would(selftest, case):
    """Collectives' results, barriers, and the reports of what a GPU punishes
    (exited or absent lanes in a mask, lanes at different collectives, a
    skipped or split barrier, a deadlock, a false __builtin_assume), in every
    thread order; a missing barrier changes the result in reversed order."""
    for order in (0, 1, 2):
        run = subprocess.run([selftest, case, str(order)], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (order, run.stdout, run.stderr)
