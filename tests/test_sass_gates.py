"""Machine-code gates on the CUDA kernels, without a GPU.

nvcc 13 compiles csrc/fused_optim.cu for sm_90 (H100) here; ptxas -v and
cuobjdump -sass (Triton's bundled copy) show what the GPU would execute.
Gates, per kernel variant users run (SGD with/without momentum, Adam,
Adam+amsgrad, AdamW shares Adam's kernel; fp32, bf16/fp16 with 16-bit or fp32
state):
- no stack frame, no spills;
- at most 64 registers per thread: with 512-thread blocks that keeps two
  blocks (1,024 of 2,048 threads, 50% occupancy) resident per SM on Hopper's
  65,536-register file;
- fp32 kernels: 128-bit GLOBAL loads and stores (LDG.E.128 / STG.E.128), no
  generic 128-bit LD/ST (the addresses come from tables; csrc/multi_tensor.cuh
  tells nvcc they are global);
- 16-bit kernels: 64-bit global vector stores;
- no float64 and no integer division inside an element loop (a loop that
  stores to global memory): the schedule is evaluated once per step, by the
  last block, and every block only reads the live LR
  (tools/sass_loops.py; Triton's kernels too);
and a scalar-only build (CLR_FUSED_SCALAR_ONLY) must fail the vector gate,
a kernel that evaluates a schedule per element (tests/cpp/loop_probe.cu)
the loop gate.
The gates skip only where the compiler or cuobjdump is missing; CI has both.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess

import pytest

from clr_fused._build_flags import NVCC_FLAGS
from tools import sass_loops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_REGISTERS = 64


def _generic_algorithms() -> list[str]:
    """The structs of csrc/algorithms.h's X-macro list (the generic step's algorithms), in id order."""
    with open(os.path.join(ROOT, "csrc", "algorithms.h")) as f:
        text = f.read()
    return re.findall(r"X\(\d+,\s*(\w+)\)", text.split("#define CLR_FUSED_ALGORITHMS", 1)[1])


GENERIC = _generic_algorithms()
# Itanium mangling of `clr_fused::<Struct>` as algorithm_kernel's first template argument: <len><name>E
_GENERIC_RE = "|".join(f"{len(a)}{a}" for a in GENERIC)


def _tools():
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None:
        try:
            import triton

            cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
            cuobjdump = cand if os.path.exists(cand) else None
        except ImportError:
            pass
    if nvcc is None or cuobjdump is None:
        pytest.skip(f"needs nvcc and cuobjdump (found {nvcc}, {cuobjdump})")
    return nvcc, cuobjdump


def ptxas_resources(text: str) -> dict[str, dict[str, int]]:
    """Per kernel from ``ptxas -v``: registers, stack bytes, spill stores and loads."""
    out: dict[str, dict[str, int]] = {}
    name = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
            out[name] = {}
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[name].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[name]["registers"] = int(m.group(1))
    return out


def sass_memory_ops(text: str) -> dict[str, collections.Counter]:
    """Per kernel from ``cuobjdump -sass``: memory instructions with their
    modifiers (LDG.E.128, ST.E, ...)."""
    return {name: collections.Counter(re.findall(r"\b((?:LDG|STG|LD|ST)\.E(?:\.\w+)*)\b", body))
            for name, body in sass_loops.functions(text).items()}  # fmt: skip


def _compile(tmp_path, *defines):
    from torch.utils.cpp_extension import include_paths

    nvcc, cuobjdump = _tools()
    includes = [f"-I{d}" for d in include_paths()] + [f"-I{os.path.join(ROOT, 'csrc')}"]
    try:
        import nvidia

        includes += [
            f"-I{os.path.join(b, 'cu13', 'include')}"
            for b in nvidia.__path__
            if os.path.isdir(os.path.join(b, "cu13", "include"))
        ]
    except ImportError:
        pass
    cubin = tmp_path / "fused.cubin"
    cmd = [nvcc, "-std=c++20", *NVCC_FLAGS, "-arch=sm_90", "-cubin", "-Xptxas", "-v", *includes, *defines,
           "-o", str(cubin), os.path.join(ROOT, "csrc", "fused_optim.cu")]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    sass = subprocess.run(
        [cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    return ptxas_resources(built.stdout + built.stderr), sass_memory_ops(sass), sass


def vector_gate_failures(ops: dict[str, collections.Counter]) -> list[str]:
    """What breaks the vector-access gates, per kernel (empty: all pass)."""
    bad = []
    for name, c in ops.items():
        # float params, float state (SGD / Adam: IffLi<states>; the generic step's algorithms: <Algo>EffLb)
        fp32 = re.search(rf"IffLi\d|(?:{_GENERIC_RE})EffLb", name) is not None
        half_state = re.search(r"I(N3c104HalfES2_|N3c108BFloat16ES2_)Li[1-3]", name) is not None
        # float params with bf16 or int8 (Q8) states: the params and grads still as 128-bit vectors
        fp32_low = re.search(
            rf"If(N3c108BFloat16E|NS_2Q8E)Li[1-3]|(?:{_GENERIC_RE})Ef(N3c108BFloat16E|NS_2Q8E)Lb", name
        )
        if fp32_low:
            if c["LDG.E.128"] < 2 or c["STG.E.128"] == 0:
                bad.append(f"{name}: fp32 params without 128-bit global loads/stores ({dict(c)})")
            if "BFloat16" in name and c["STG.E.64"] < 1:
                bad.append(f"{name}: bf16 states without 64-bit vector stores ({dict(c)})")
        if fp32:
            if c["LDG.E.128"] == 0 or c["STG.E.128"] == 0:
                bad.append(f"{name}: no 128-bit global load/store ({dict(c)})")
            if c["LD.E.128"] or c["ST.E.128"]:
                bad.append(f"{name}: generic 128-bit LD/ST ({dict(c)})")
        if half_state and c["STG.E.64"] < 2:  # one STG.E.64 is the step counter's
            bad.append(f"{name}: no 64-bit vector stores ({dict(c)})")
    return bad


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("sm90"))


def test_every_kernel_variant_is_compiled(compiled):
    resources, ops, _ = compiled
    assert set(resources) == set(ops)
    kernels = {re.sub(r"Li\d.*", "", n) for n in ops}
    # SGD and Adam for every (param, state) pair: fp32 params with fp32 / bf16 / int8 states,
    # bf16 with bf16 / fp32 / int8, fp16 with fp16 / fp32 / int8 (9 pairs, 18 kernels); SGD with and
    # without momentum (int8 only with), Adam with and without amsgrad: 15 + 18; and the stochastic
    # rounding copies where a store is bf16 (fp32/bf16, bf16/bf16, bf16/fp32, bf16/int8): 7 + 8
    # the generic step (csrc/algorithms.h): one kernel per algorithm, (param, state) pair and SR copy
    generic = [n for n in ops if "algorithm_kernel" in n]
    kernels = {k for k in kernels if "algorithm_kernel" not in k}
    assert len(kernels) == 18, sorted(kernels)
    assert len(ops) - len(generic) == 48, sorted(ops)
    stochastic = [n for n in ops if re.search(r"Li\dELb[01]ELb1E", n)]
    assert len(stochastic) == 15 and all("BFloat16" in n for n in stochastic), stochastic
    # every algorithm of csrc/algorithms.h: the 9 (param, state) pairs and the stochastic-rounding
    # copies where a store is bf16 (4); without the 3 int8 pairs and their copy (bf16/int8) where
    # the states cannot be int8 codes (kInt8States false: schedule-free's z)
    int8_states = {"Lion": True, "SGDScheduleFree": False, "AdamWScheduleFree": False}
    assert GENERIC == list(int8_states), GENERIC
    expected = {a: (13, 4) if q else (9, 3) for a, q in int8_states.items()}
    assert len(generic) == sum(k for k, _ in expected.values()), sorted(generic)
    for algorithm, (kernels_of, sr_of) in expected.items():
        mine = [n for n in generic if f"algorithm_kernelINS_{len(algorithm)}{algorithm}E" in n]
        assert len(mine) == kernels_of, (algorithm, sorted(mine))
        assert int8_states[algorithm] == any("NS_2Q8E" in n for n in mine), algorithm
        sr = [n for n in mine if re.search(r"Lb1ELb1E", n)]
        assert len(sr) == sr_of and all("BFloat16" in n for n in sr), (algorithm, sr)


def test_no_spills_no_stack_and_registers_for_two_blocks_per_sm(compiled):
    resources, _, _ = compiled
    for name, r in resources.items():
        assert r["stack"] == 0 and r["spill_stores"] == 0 and r["spill_loads"] == 0, (name, r)
        assert r["registers"] <= MAX_REGISTERS, (name, r)


def test_vector_global_accesses(compiled):
    _, ops, _ = compiled
    assert vector_gate_failures(ops) == []


def test_no_float64_or_integer_division_in_element_loops(compiled):
    _, ops, sass = compiled
    fns = sass_loops.functions(sass)
    assert len(fns) == len(ops)
    # every kernel has element loops (they store), and the schedule's loops are still there (epilogue)
    for name, body in fns.items():
        assert any(any(t.startswith("STG") or " STG" in t for t in loop) for loop in sass_loops.loops(body)), name
    assert sass_loops.element_loop_violations(sass) == []
    assert sass_loops.FP64.search(sass), "the schedule (float64) should still be in the kernels, outside the loops"


def test_the_loop_gate_rejects_a_schedule_evaluated_per_element(tmp_path):
    nvcc, cuobjdump = _tools()
    cubin = tmp_path / "probe.cubin"
    cmd = [nvcc, "-O3", "-arch=sm_90", "-cubin", "-o", str(cubin), os.path.join(ROOT, "tests", "cpp", "loop_probe.cu")]
    subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    sass = subprocess.run(
        [cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    bad = sass_loops.element_loop_violations(sass)
    assert any(sass_loops.FP64.search(b) for b in bad) and any(sass_loops.INT_DIV.search(b) for b in bad), bad


def test_the_gate_rejects_a_scalarised_build(tmp_path):
    _, ops, _ = _compile(tmp_path, "-DCLR_FUSED_SCALAR_ONLY")
    failures = vector_gate_failures(ops)
    # every fp32 kernel: SGD x2, Adam x2 and one per generic algorithm
    assert len([f for f in failures if "no 128-bit" in f]) == 4 + len(GENERIC), failures


def test_parsers_on_known_text():
    good = "ptxas info    : Compiling entry function '_Zk' for 'sm_90'\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 40 registers"
    assert ptxas_resources(good) == {"_Zk": {"stack": 0, "spill_stores": 0, "spill_loads": 0, "registers": 40}}
    sass = "\n\tFunction : _ZN9clr_fused10sgd_kernelIffLi1E\n  /*0010*/ LDG.E.128 R4, desc[UR4][R2.64] ;\n  /*0020*/ ST.E.128 [R2.64], R4 ;"
    ops = sass_memory_ops(sass)
    assert ops["_ZN9clr_fused10sgd_kernelIffLi1E"] == collections.Counter({"LDG.E.128": 1, "ST.E.128": 1})
    assert any("generic" in f for f in vector_gate_failures(ops))


# ---------------------------------------------------------------- Triton
def test_triton_aligned_kernels_use_128_bit_global_accesses():
    """The host checks 16-byte alignment and passes ALIGNED: full blocks then
    compile to LDG.E.128 / STG.E.128; the scalar variant (ALIGNED=False, the
    route for unaligned tensors) does not, and the gate tells them apart.
    (Compiled in a subprocess: this session's Triton kernels are interpreted.)"""
    import json
    import sys

    pytest.importorskip("triton")
    _tools()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "tools.triton_aot_check", "--memory-ops"],
                         capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    ops = json.loads(run.stdout.strip().splitlines()[-1])
    assert ops.pop("loop_violations") == []  # no float64 / integer division in any element loop
    assert set(ops) == {"_sgd_kernel", "_adam_kernel"}
    for name, variants in ops.items():
        vec, scalar = variants["aligned"], variants["scalar"]
        assert vec.get("LDG.E.128", 0) >= 2 and vec.get("STG.E.128", 0) >= 2, (name, vec)
        assert scalar.get("LDG.E.128", 0) == 0 and scalar.get("STG.E.128", 0) == 0, (name, scalar)
        amp = variants["aligned-bf16-fp32state"]
        # bf16 params and grads as 64-bit vectors, fp32 state as 128-bit ones
        assert amp.get("STG.E.64", 0) >= 2 and amp.get("STG.E.128", 0) >= 1, (name, amp)
        for ops_ in variants.values():
            # no layout conversion through shared memory (a mismatch of vector
            # widths between lists): only the ticket's flag broadcast (one STS /
            # LDS) and its barriers
            assert not any(k.startswith(("STS.", "LDS.")) for k in ops_), (name, ops_)
            assert ops_.get("BAR.SYNC", 0) <= 2, (name, ops_)
