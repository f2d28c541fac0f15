"""AddressSanitizer + UndefinedBehaviorSanitizer: the extension's C++ (the
step plan's checks, the CPU kernels, the ops) built instrumented and run under
the plan-mutation and state-dict tests, in a subprocess with the sanitizer
runtime preloaded.  A control run shows the build really is instrumented: an
op called directly with a table that overstates a tensor's size is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ here")
    libasan = subprocess.run([gxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    libubsan = subprocess.run([gxx, "-print-file-name=libubsan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("no libasan for this compiler")
    out = tmp_path_factory.mktemp("asan")
    # The build itself runs in a child: this process must not load an instrumented library.
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from torch.utils.cpp_extension import load
        from clr_fused._build_flags import CXX_FLAGS
        flags = [f for f in CXX_FLAGS if f != "-O3"] + ["-O1", "-g"] + {SANITIZE!r}
        mod = load(name="clr_fused_C_asan",
                   sources=[os.path.join({ROOT!r}, "csrc", s) for s in ("bindings.cpp", "ops.cpp", "cpu_ops.cpp", "step_plan.cpp")],
                   extra_include_paths=[os.path.join({ROOT!r}, "csrc")], extra_cflags=flags,
                   extra_ldflags=["-fopenmp"] + {SANITIZE!r}, build_directory={str(out)!r}, verbose=False)
    """)
    env = dict(os.environ, LD_PRELOAD=f"{libasan} {libubsan}", ASAN_OPTIONS="detect_leaks=0", MAX_JOBS="2")
    build = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=1500)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    so = [f for f in os.listdir(out) if f.startswith("clr_fused_C_asan") and f.endswith(".so")]
    assert so, os.listdir(out)
    return os.path.join(out, so[0]), f"{libasan} {libubsan}"


def _run(asan_build, args, code=None):
    so, preload = asan_build
    env = dict(
        os.environ,
        LD_PRELOAD=preload,
        CLR_FUSED_EXT_PATH=so,
        CLR_FUSED_REQUIRE_EXT="1",
        # leaks: Python and torch keep objects for the process lifetime, by design
        ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:exitcode=66:new_delete_type_mismatch=0:alloc_dealloc_mismatch=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=67",
        PYTHONPATH=ROOT,
    )
    cmd = (
        [sys.executable, "-c", code]
        if code
        else [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    )
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=2400)


def test_mutation_and_state_tests_run_clean_under_asan_and_ubsan(asan_build):
    run = _run(asan_build, ["tests/test_mutations.py", "tests/test_state.py", "tests/test_plan.py", "-k", "not triton"])
    out = run.stdout[-4000:] + run.stderr[-6000:]
    assert "AddressSanitizer" not in run.stderr and "runtime error:" not in run.stderr, out
    assert run.returncode == 0, out
    assert " passed" in run.stdout, out


def test_the_instrumented_build_catches_an_overflow(asan_build):
    """Control: the sanitizers are live.  The raw op trusts its address tables
    (the optimizers' checked plan builds them); one that claims 64 elements
    of an 8-element tensor is reported by ASan."""
    code = textwrap.dedent("""
        import torch, clr_fused._ext as e
        e.load()
        p, g = torch.zeros(8), torch.ones(8)
        addrs = lambda t: torch.tensor([t.data_ptr()], dtype=torch.int64)
        tables = [addrs(p), addrs(g), torch.tensor([64]), torch.tensor([0], dtype=torch.int32), torch.tensor([0])]
        rows = torch.zeros(1, 16, dtype=torch.float64)
        torch.ops.clr_fused.sgd_step([p], [g], [], [], tables, torch.zeros(1, dtype=torch.int8), rows,
            torch.zeros((), dtype=torch.int64), torch.tensor(0.1, dtype=torch.float64), None, None, None, None,
            torch.zeros(1, dtype=torch.int32), 0.0, 0.0, 0.0, False, False, False, False, True, [])
        print("not caught")
    """)
    run = _run(asan_build, [], code=code)
    assert run.returncode == 66, run.stdout + run.stderr[-3000:]
    assert "AddressSanitizer: heap-buffer-overflow" in run.stderr
