"""Whether the Triton kernels exist in this build of clr_fused."""


def why_not() -> str | None:
    try:
        from . import triton_update  # noqa: F401
    except ImportError as exc:
        return f"the Triton kernels are not part of this build ({exc})"
    return None
