"""``clr-fused`` command line (also ``python -m clr_fused``)."""

from __future__ import annotations

import argparse
import platform
import sys


def _info(_args) -> int:
    import torch

    from . import __version__, _ext, backends

    print(f"clr_fused {__version__}")
    print(f"python    {platform.python_version()} ({sys.executable})")
    print(f"torch     {torch.__version__} (built with CUDA {torch.version.cuda})")
    try:
        import triton

        print(f"triton    {triton.__version__}")
    except ImportError as exc:
        print(f"triton    not installed ({exc})")
    cuda = torch.cuda.is_available()
    print(f"CUDA      {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available (no CUDA device here)'}")
    ext_err = _ext.error()
    print(f"extension {'loaded' if ext_err is None else 'absent: ' + str(ext_err)}")
    devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if cuda else [])
    print("backends:")
    for dev in devices:
        for name in ("torch", "triton", "cuda"):
            reason = backends.why_unavailable(name, dev)
            print(f"  {dev.type:5s} {name:7s} {'works' if reason is None else 'no: ' + reason}")
        print(f"  {dev.type:5s} auto -> {backends.resolve('auto', dev)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clr-fused", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device and which backends work here (and why not)").set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
