"""Loops in ``cuobjdump -sass`` text, and what their bodies may not hold.

The element loop of an optimizer kernel must be plain memory-bound work:
no float64 arithmetic and no integer division (both belong to the schedule,
evaluated once per step by the last block, and to the chunk set-up, once
per block or program; see csrc/multi_tensor.cuh).
A loop is a backward branch; its body is everything from the target to the
branch.  A loop that stores to global memory is an element loop (the
schedule's own loops only read its rows).  Used by tests/test_sass_gates.py
on the CUDA and Triton kernels; no GPU needed.
"""

from __future__ import annotations

import re

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRA = re.compile(r"\bBRA(?:\.\w+)*\s+0x([0-9a-f]+)")
_STG = re.compile(r"^(?:@!?U?P\w+\s+)?STG\b")
FP64 = re.compile(r"\b(?:D(?:ADD|MUL|FMA|SETP|MNMX|SET)\b|[FI]2[FI]\S*\.F64\b|MUFU\.\w+64H\b)")
INT_DIV = re.compile(r"\bI2F(?:\.U32|\.U64)?\.RP\b")  # the integer-reciprocal idiom of a division
_CALL = re.compile(r"\bCALL\.REL(?:\.\w+)*\s+0x([0-9a-f]+)")


def functions(sass: str) -> dict[str, str]:
    """Function name -> its SASS text."""
    out = {}
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name, body = block.split("\n", 1)
        out[name.strip()] = body
    return out


def loops(body: str) -> list[list[str]]:
    """Each loop's instructions, from the branch target to the backward branch.

    Not a loop: the jump back at the end of a warp shuffle's out-of-line
    fallback (WARPSYNC.COLLECTIVE ... ENDCOLLECTIVE, then an unconditional
    BRA to the instruction after the inline shuffle), which nvcc places at
    the function's end when it cannot prove the warp converged (the int8
    states' block-maximum reduction)."""
    insns = [(int(a, 16), text) for a, text in _INSN.findall(body)]
    out = []
    for k, (addr, text) in enumerate(insns):
        m = _BRA.search(text)
        if m and text.startswith("BRA") and _after_collective(insns, k):
            continue
        if m and int(m.group(1), 16) < addr:
            target = int(m.group(1), 16)
            out.append([t for a, t in insns if target <= a <= addr])
    return out


def _after_collective(insns: list[tuple[int, str]], k: int) -> bool:
    """Instruction k ends a shuffle fallback: ENDCOLLECTIVE among the few
    instructions before it (register moves may sit between)."""
    for _, text in reversed(insns[max(0, k - 4) : k]):
        if text.startswith("ENDCOLLECTIVE"):
            return True
        if _BRA.search(text) or text.startswith("EXIT"):
            return False
    return False


def callee(body: str, target: int) -> list[str]:
    """The instructions of the subroutine at ``target``: up to its RET."""
    out = []
    for addr, text in _INSN.findall(body):
        if int(addr, 16) >= target:
            out.append(text)
            if text.startswith("RET"):
                break
    return out


def element_loop_violations(sass: str) -> list[str]:
    """Per function: float64 or integer-division instructions inside a loop
    that stores to global memory, or in a subroutine such a loop calls.  A
    call whose subroutine has neither is allowed: the out-of-line slow path
    of IEEE float32 division or square root (denormal / special operands),
    which the inline fast path branches to only for such operands."""
    bad = []
    for name, body in functions(sass).items():
        for loop in loops(body):
            if not any(_STG.match(t) for t in loop):
                continue
            for t in loop:
                if FP64.search(t) or INT_DIV.search(t):
                    bad.append(f"{name}: {t}")
                call = _CALL.search(t)
                if call:
                    sub = callee(body, int(call.group(1), 16))
                    bad += [f"{name}: {t} -> {u}" for u in sub if FP64.search(u) or INT_DIV.search(u)][:1]
    return bad
