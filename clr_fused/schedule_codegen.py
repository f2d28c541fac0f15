"""The kernels' copies of the generated schedule kinds, from their one definition.

A closed form registered with ``schedule_math.closed_form(KIND_...)`` is
written against the ops interface alone: ``ops.f64(p, i)`` / ``ops.i64(p, i)``
read its row, then Python arithmetic, comparisons and ``ops.where``,
``select``, ``minimum``, ``maximum``, ``to_float``, ``cos``, ``sqrt``, ``pow``.  The same
function then runs three ways: on Python numbers (``PY_OPS``), on device
tensors (``TORCH_OPS``, the torch backend) and here, on symbolic values, which
record it as straight-line code with Python's types (int64, float64, bool) and
print it as the C++ function the CUDA / CPU kernels call
(``csrc/schedule_generated*.h``, written at build time: ``write_headers``) and
as the Triton function the Triton kernels call (compiled at import:
``triton_source``).  Adding a kind therefore touches ``schedule_math.py`` (the
closed form and its code) and ``schedules.py`` (its spec class) only.

The rules follow from straight-line code: every operand is evaluated (as in
the Triton kernels, which select with ``tl.where``), so a division must be
guarded where its branch is not taken (``ops.maximum(n, 1)``); Python control
flow on traced values, ``**`` and float ``%`` are refused with a TypeError.
``//`` and ``%`` on integers keep Python's floor semantics on every copy.

Standalone on purpose: ``setup.py``, the JIT build and the tests that compile
``csrc/`` run :func:`write_headers` without importing the package (it loads
``schedule_math.py`` from its file).
"""

from __future__ import annotations

import hashlib
import importlib.util
import linecache
import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(_HERE), "csrc")
KINDS_HEADER = "schedule_generated_kinds.h"
FUNCTIONS_HEADER = "schedule_generated.cuh"

_CPP_TYPE = {"i": "int64_t", "f": "double", "b": "bool"}


class _Trace:
    """The straight-line program being recorded: ``(name, type, cpp, triton)`` lines."""

    def __init__(self):
        self.lines: list[tuple[str, str, str, str]] = []

    def emit(self, typ: str, cpp: str, tri: str) -> _Val:
        name = f"v{len(self.lines)}"
        self.lines.append((name, typ, cpp, tri))
        return _Val(self, name, typ)


def _const(x) -> tuple[str, str, str]:
    """(type, C++ text, Triton text) of a Python constant operand."""
    if isinstance(x, bool):
        return "b", "true" if x else "false", "True"
    if isinstance(x, int):
        if abs(x) > 2**53:
            raise TypeError(f"generated schedule kinds: integer constant {x} beyond 2**53")
        return "i", f"int64_t{{{x}}}", f"tl.full([], {x}, tl.int64)"
    if isinstance(x, float):
        if not math.isfinite(x):
            raise TypeError(f"generated schedule kinds: constant {x} is not finite")
        return "f", repr(x), f"tl.full([], {x!r}, tl.float64)"
    raise TypeError(f"generated schedule kinds: unsupported operand {x!r} ({type(x).__name__})")


def _operand(x):
    """(type, C++ text, Triton text) of a traced value or a constant."""
    if isinstance(x, _Val):
        return x.typ, x.name, x.name
    return _const(x)


def _as_float(op) -> tuple[str, str]:
    typ, cpp, tri = op
    if typ == "f":
        return cpp, tri
    if typ == "b":
        raise TypeError("generated schedule kinds: a comparison used as a number (use ops.where)")
    return f"static_cast<double>({cpp})", f"({tri}).to(tl.float64)"


def _numeric(*ops) -> str:
    if any(t == "b" for t, _, _ in ops):
        raise TypeError("generated schedule kinds: a comparison used as a number (use ops.where)")
    return "f" if any(t == "f" for t, _, _ in ops) else "i"


def _trace_of(*xs) -> _Trace:
    for x in xs:
        if isinstance(x, _Val):
            return x.trace
    raise AssertionError("no traced operand")


def _arith(a, b, op: str) -> _Val:
    """``a op b`` with Python's result type: int for + - * // % of ints, float otherwise."""
    oa, ob = _operand(a), _operand(b)
    typ = "f" if op == "/" else _numeric(oa, ob)
    trace = _trace_of(a, b)
    if typ == "i":
        if op in ("+", "-", "*"):
            return trace.emit("i", f"{oa[1]} {op} {ob[1]}", f"{oa[2]} {op} {ob[2]}")
        helper = {"//": "py_floordiv", "%": "py_mod"}[op]
        return trace.emit("i", f"{helper}({oa[1]}, {ob[1]})", f"_{helper}({oa[2]}, {ob[2]})")
    if op in ("//", "%"):
        raise TypeError(f"generated schedule kinds: float {op} is not supported")
    (ca, ta), (cb, tb) = _as_float(oa), _as_float(ob)
    return trace.emit("f", f"{ca} {op} {cb}", f"{ta} {op} {tb}")


def _compare(a, b, op: str) -> _Val:
    oa, ob = _operand(a), _operand(b)
    if _numeric(oa, ob) == "f":  # int against float: exact in float64 (integers are bounded by 2**53)
        (ca, ta), (cb, tb) = _as_float(oa), _as_float(ob)
    else:
        ca, ta, cb, tb = oa[1], oa[2], ob[1], ob[2]
    return _trace_of(a, b).emit("b", f"{ca} {op} {cb}", f"{ta} {op} {tb}")


class _Val:
    """A traced value: an SSA name and its type ("i" int64, "f" float64, "b" bool)."""

    __slots__ = ("trace", "name", "typ")

    def __init__(self, trace: _Trace, name: str, typ: str):
        self.trace, self.name, self.typ = trace, name, typ

    def __add__(self, o):
        return _arith(self, o, "+")

    def __radd__(self, o):
        return _arith(o, self, "+")

    def __sub__(self, o):
        return _arith(self, o, "-")

    def __rsub__(self, o):
        return _arith(o, self, "-")

    def __mul__(self, o):
        return _arith(self, o, "*")

    def __rmul__(self, o):
        return _arith(o, self, "*")

    def __truediv__(self, o):
        return _arith(self, o, "/")

    def __rtruediv__(self, o):
        return _arith(o, self, "/")

    def __floordiv__(self, o):
        return _arith(self, o, "//")

    def __rfloordiv__(self, o):
        return _arith(o, self, "//")

    def __mod__(self, o):
        return _arith(self, o, "%")

    def __rmod__(self, o):
        return _arith(o, self, "%")

    def __neg__(self):
        _numeric(_operand(self))
        return self.trace.emit(self.typ, f"-{self.name}", f"-{self.name}")

    def __lt__(self, o):
        return _compare(self, o, "<")

    def __le__(self, o):
        return _compare(self, o, "<=")

    def __gt__(self, o):
        return _compare(self, o, ">")

    def __ge__(self, o):
        return _compare(self, o, ">=")

    def __eq__(self, o):  # type: ignore[override]
        return _compare(self, o, "==")

    def __ne__(self, o):  # type: ignore[override]
        return _compare(self, o, "!=")

    def __and__(self, o):
        return self._logic(o, "&&", "&")

    def __or__(self, o):
        return self._logic(o, "||", "|")

    def _logic(self, o, cpp_op: str, tri_op: str):
        ob = _operand(o)
        if self.typ != "b" or ob[0] != "b":
            raise TypeError("generated schedule kinds: & and | combine comparisons only")
        return self.trace.emit("b", f"{self.name} {cpp_op} {ob[1]}", f"{self.name} {tri_op} {ob[2]}")

    def __bool__(self):
        raise TypeError(
            "generated schedule kinds: Python control flow on a traced value (if / and / or / min / max); "
            "use ops.where, ops.minimum, ops.maximum"
        )

    def __pow__(self, o):
        raise TypeError("generated schedule kinds: use ops.pow(base, exponent), not **")

    __rpow__ = __pow__
    __hash__ = None  # type: ignore[assignment]


class _CodegenOps:
    """The ops interface over traced values (see schedule_math's PY_OPS)."""

    pi = math.pi

    def __init__(self, trace: _Trace):
        self.trace = trace

    def f64(self, p, i: int):
        return self.trace.emit("f", f"p[{int(i)}]", f"_f64(p, {int(i)})")

    def i64(self, p, i: int):
        return self.trace.emit("i", f"static_cast<int64_t>(p[{int(i)}])", f"_i64(p, {int(i)})")

    def to_float(self, x):
        if not isinstance(x, _Val):
            return float(x)
        cpp, tri = _as_float(_operand(x))
        return self.trace.emit("f", cpp, tri)

    def _unary(self, fn: str, x):
        if not isinstance(x, _Val):
            return getattr(math, fn)(float(x))
        cpp, tri = _as_float(_operand(x))
        return self.trace.emit("f", f"{fn}({cpp})", f"tl.{fn}({tri})")

    def cos(self, x):
        return self._unary("cos", x)

    def sqrt(self, x):
        return self._unary("sqrt", x)

    def pow(self, base, exponent):
        # base**exponent for base > 0, 0 otherwise (schedule_math's pow)
        ob, oe = _operand(base), _operand(exponent)
        (cb, tb), (ce, te) = _as_float(ob), _as_float(oe)
        return self.trace.emit("f", f"pow_pos({cb}, {ce})", f"_pow({tb}, {te})")

    def where(self, cond, a, b):
        oc, oa, ob = _operand(cond), _operand(a), _operand(b)
        if oc[0] != "b":
            raise TypeError("generated schedule kinds: ops.where's condition must be a comparison")
        typ = _numeric(oa, ob)
        if typ == "f":
            (ca, ta), (cb, tb) = _as_float(oa), _as_float(ob)
        else:
            ca, ta, cb, tb = oa[1], oa[2], ob[1], ob[2]
        return self.trace.emit(typ, f"{oc[1]} ? {ca} : {cb}", f"tl.where({oc[2]}, {ta}, {tb})")

    def select(self, cond, then, otherwise):
        # both branches traced (straight-line code) unless cond is a Python value
        if not isinstance(cond, _Val):
            return then() if cond else otherwise()
        a, b = then(), otherwise()
        if isinstance(a, tuple):
            return tuple(self.where(cond, x, y) for x, y in zip(a, b))
        return self.where(cond, a, b)

    def _pick(self, a, b, op: str):
        # Python's max(a, b) / min(a, b): a, unless b compares strictly beyond it
        return self.where(_compare(b, a, op), b, a)

    def maximum(self, a, b):
        if not isinstance(a, _Val) and not isinstance(b, _Val):
            return max(a, b)
        return self._pick(a, b, ">")

    def minimum(self, a, b):
        if not isinstance(a, _Val) and not isinstance(b, _Val):
            return min(a, b)
        return self._pick(a, b, "<")


def _schedule_math():
    """schedule_math: the package's module when it is imported, else loaded from its file."""
    mod = sys.modules.get("clr_fused.schedule_math")
    if mod is not None:
        return mod
    spec = importlib.util.spec_from_file_location("_clr_fused_schedule_math", os.path.join(_HERE, "schedule_math.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trace(fn) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """The lines of ``fn(p, k, ops)`` traced and the names of its float64
    results: ``[lr]``, or ``[lr, momentum]`` for a closed form that returns both."""
    t = _Trace()
    k = _Val(t, "k", "i")
    outs = fn(None, k, _CodegenOps(t))
    names = []
    for out in outs if isinstance(outs, tuple) else (outs,):
        if not (isinstance(out, _Val) and out.typ == "f"):
            out = t.emit("f", *_as_float(_operand(out)))
        names.append(out.name)
    return t.lines, names


def generated_kinds(sm=None) -> list[tuple[str, int, object]]:
    """``(NAME, code, closed form)`` of every generated kind, by code."""
    sm = sm or _schedule_math()
    names = {code: name for name, code in sm.KINDS.items()}
    return [(names[code], code, fn) for code, fn in sorted(sm.GENERATED.items())]


def _camel(name: str) -> str:
    return "k" + "".join(part.capitalize() for part in name.split("_"))


_BANNER = "// Generated by clr_fused/schedule_codegen.py from clr_fused/schedule_math.py's closed forms: do not edit.\n"


def cpp_function(name: str, fn) -> str:
    """The C++ (CUDA and CPU) function of ``fn``: ``double name(const double* p,
    int64_t k)``, or ``LrMom name(...)`` for a closed form that returns (lr, momentum)."""
    lines, outs = trace(fn)
    body = "".join(f"  const {_CPP_TYPE[typ]} {n} = {cpp};\n" for n, typ, cpp, _ in lines)
    ret, value = ("LrMom", "{" + ", ".join(outs) + "}") if len(outs) == 2 else ("double", outs[0])
    return f"__device__ inline {ret} {name}(const double* p, int64_t k) {{\n{body}  return {value};\n}}\n"


def cpp_headers(sm=None) -> dict[str, str]:
    """``{file name: text}`` of the two generated C++ headers."""
    sm = sm or _schedule_math()
    kinds = generated_kinds(sm)
    xs = "".join(f" \\\n  X({name}, {_camel(name)}, {code})" for name, code, _ in kinds)
    kinds_h = (
        f"{_BANNER}// The generated kinds' codes (schedule_kinds.h appends them to its X-macro list).\n"
        f"#pragma once\n\n#define CLR_FUSED_GENERATED_KINDS(X){xs}\n"
    )
    funcs = [f"// KIND_{name}\n" + cpp_function(name.lower(), fn) for name, _, fn in kinds]
    cases = "".join(
        f"    case {code}:\n      *out = "
        + (f"{name.lower()}(p, k);" if code in sm.CYCLES_MOMENTUM else f"{{{name.lower()}(p, k), 0.0}};")
        + "\n      return true;\n"
        for name, code, _ in kinds
    )
    funcs_h = (
        f"{_BANNER}// Included by schedule.cuh (after LrMom and its helpers pow_pos, py_floordiv, py_mod).\n"
        "#pragma once\n\nnamespace clr_fused {\nnamespace generated {\n\n" + "\n".join(funcs) + "\n"
        "// (lr, momentum) of a generated kind at local step k (momentum 0 where it does not\n"
        "// cycle it); false for any other kind.\n"
        "__device__ inline bool evaluate(int kind, const double* p, int64_t k, LrMom* out) {\n"
        "  switch (kind) {\n" + cases + "    default:\n      return false;\n  }\n}\n\n"
        "}  // namespace generated\n}  // namespace clr_fused\n"
    )
    return {KINDS_HEADER: kinds_h, FUNCTIONS_HEADER: funcs_h}


def write_headers(directory: str = CSRC) -> list[str]:
    """Write the generated headers into ``directory`` (csrc/), each only if its
    text changed (an unchanged header keeps its time stamp: no rebuild)."""
    written = []
    for name, text in cpp_headers().items():
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                if f.read() == text:
                    continue
        except OSError:
            pass
        tmp = f"{path}.{os.getpid()}.tmp"  # whole or not at all: test workers may race here
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(path)
    return written


def triton_function(name: str, fn) -> str:
    """The ``@triton.jit`` function ``name(p, k)`` of ``fn`` (it calls the
    helpers of kernels/triton_schedule.py: _f64, _i64, _pow, _py_floordiv, _py_mod)."""
    lines, outs = trace(fn)
    body = "".join(f"    {n} = {tri}\n" for n, _, _, tri in lines)
    return f"@triton.jit\ndef {name}(p, k):\n{body}    return {', '.join(outs)}\n"


def triton_source(sm=None) -> str:
    """The Triton functions of the generated kinds and ``_generated(kind, p, k,
    lr, mom)``, which replaces ``lr`` (and ``mom``, for a kind that cycles it)
    where ``kind`` is one of them."""
    sm = sm or _schedule_math()
    kinds = generated_kinds(sm)
    out = [triton_function(f"_gen_{name.lower()}", fn) for name, _, fn in kinds]
    select = []
    for name, code, _ in kinds:
        if code in sm.CYCLES_MOMENTUM:
            select.append(
                f"    lr_{code}, mom_{code} = _gen_{name.lower()}(p, k)\n"
                f"    lr = tl.where(kind == {code}, lr_{code}, lr)\n"
                f"    mom = tl.where(kind == {code}, mom_{code}, mom)\n"
            )
        else:
            select.append(f"    lr = tl.where(kind == {code}, _gen_{name.lower()}(p, k), lr)\n")
    out.append("@triton.jit\ndef _generated(kind, p, k, lr, mom):\n" + "".join(select) + "    return lr, mom\n")
    return "\n\n".join(out)


def exec_source(source: str, namespace: dict) -> None:
    """Run generated Triton source in ``namespace`` (a module's globals).  The
    source goes into linecache under a file name of its own first: triton.jit
    reads a function's source through inspect."""
    filename = f"<clr_fused generated {hashlib.sha1(source.encode()).hexdigest()[:16]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated code


if __name__ == "__main__":
    for path in write_headers():
        print(f"wrote {path}")
