"""``clr-fused`` command line (also ``python -m clr_fused``)."""

from __future__ import annotations

import argparse
import os
import platform
import sys


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)", except where the help already says what
    the default is, or there is none to show (a flag, a default of None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _accuracy(text: str) -> float:
    v = float(text)
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be an accuracy in (0, 1], got {text}")
    return v


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
    print(
        f"CUDA      {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available (no CUDA device here)'}"
    )
    ext_err = _ext.error()
    if ext_err is None:
        kinds = "CPU and CUDA kernels" if _ext.load().HAS_CUDA_KERNELS else "CPU kernels only (built without CUDA)"
        print(f"extension loaded: {kinds}; the CPU kernels run as {_ext.load().cpu_isa()}")
    else:
        print(f"extension absent: {ext_err}")
    devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if cuda else [])
    print("backends:")
    for dev in devices:
        for name in ("torch", "triton", "cuda", "cpu"):
            reason = backends.why_unavailable(name, dev)
            print(f"  {dev.type:5s} {name:7s} {'works' if reason is None else 'no: ' + reason}")
        print(f"  {dev.type:5s} auto -> {backends.resolve('auto', dev)}")
    cpu_auto = backends.resolve("auto", torch.device("cpu"))
    what = {
        "cpu": "the compiled CPU kernels (parallel, from the csrc/ templates)",
        "torch": "the pure-PyTorch reference path",
    }
    print(f"a CPU user gets backend {cpu_auto!r}: {what.get(cpu_auto, cpu_auto)}")
    print(
        "float64 parameters: backend 'auto' sends them to 'torch' (the fused kernels take float32, bfloat16, float16)"
    )
    return 0


def _range_test(args) -> int:
    if not args.demo:
        print(
            "clr-fused range-test: error: only --demo is available from the command line; call clr_fused.range_test() in code",
            file=sys.stderr,
        )
        return 2
    from .demos import digits

    return digits.range_test_main(args)


def _demo(args) -> int:
    import importlib

    return importlib.import_module(f".demos.{args.dataset}", __package__).main(args)


def _bench(args) -> int:
    if args.model:
        from .bench.model import main as model_main

        return model_main(args.model, args.out)
    if args.host:
        from .bench.host import main as host_main

        return host_main(out_dir=args.out, quick=args.quick)
    if args.low_precision:
        from .bench.low_precision import main as lp_main

        return lp_main(out_dir=args.out, quick=args.quick)
    if args.peers:
        from .bench.peers import main as peers_main

        return peers_main(out_dir=args.out, quick=args.quick)
    from .bench.run import main as bench_main

    return bench_main(quick=args.quick, out_dir=args.out)


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _task_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in ("digits", "mnist1d", "charlm")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of digits, mnist1d, charlm; got {text!r}")
    return names


def _timestamped(stem: str) -> str:
    import datetime

    return f"{stem}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    fmt = _DefaultsFormatter
    parser = argparse.ArgumentParser(prog="clr-fused", description=__doc__, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"clr-fused {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "info", help="versions, device and which backends work here (and why not)", formatter_class=fmt
    ).set_defaults(func=_info)
    bn = sub.add_parser(
        "bench", help="optimizer-step microbenchmark against torch.optim + lr_scheduler", formatter_class=fmt
    )
    bn.add_argument("--quick", action="store_true", help="Adam only, small sets (the test suite's smoke run)")
    bn.add_argument(
        "--host",
        action="store_true",
        help="host cost of step() with tiny tensors at real tensor counts, and the cpu backend at real sizes, "
        "against torch foreach/fused + CyclicLR",
    )
    bn.add_argument(
        "--low-precision",
        action="store_true",
        help="the cpu step with fp32 / bf16 / int8 states and bf16 parameters (stochastic rounding) at real sizes, "
        "against torch fused and the 8-bit AdamW of torchao / bitsandbytes where they run; bytes per parameter "
        "and a roofline model",
    )
    bn.add_argument(
        "--peers",
        action="store_true",
        help="our step beside the installed peers' (torch fused, optimi, lion-pytorch, schedulefree, bitsandbytes, "
        "torchao, DeepSpeed) on ResNet-50 and GPT-2 small shapes, interleaved; a row saying why for each one that "
        "is not installed or does not run on this device",
    )
    bn.add_argument(
        "--model",
        choices=["h100"],
        default=None,
        help="print a roofline MODEL (not a measurement) of the step on this GPU: bytes, launches, predicted ms "
        "for ours and torch fused",
    )
    bn.add_argument(
        "--out",
        default=None,
        help="folder for the JSON / markdown / PNG results (default: a new clr-fused-bench-<timestamp> folder "
        "in the current directory, so nothing existing is overwritten; pass benchmarks/results to update the repo's)",
    )
    bn.set_defaults(func=_bench)
    rt = sub.add_parser("range-test", help="the LR range test (--demo: scikit-learn digits)", formatter_class=fmt)
    rt.add_argument("--demo", action="store_true", help="run on scikit-learn's bundled digits data set")
    rt.add_argument("--steps", type=_at_least(10), default=100, help="LR values tried (batches), >= 10")
    rt.add_argument(
        "--out",
        default=None,
        help="folder for range_test.png and range_test.csv (default: a new range-test-<timestamp> folder)",
    )
    rt.set_defaults(func=_range_test)
    dm = sub.add_parser(
        "demo",
        help="LR policies compared after a range test: digits (quick: fixed, exp decay, CLR), mnist1d "
        "(fixed-LR grid, step, exp, 1-cycle, CLR from ours / torch-lr-finder / valley bounds) or charlm",
        formatter_class=fmt,
    )
    dm.add_argument("--dataset", choices=["digits", "mnist1d", "charlm", "states"], default="digits",
                    help="digits: scikit-learn's bundled set (default); mnist1d: generated by the mnist1d package; "
                    "charlm: a tiny character-level GPT on the Python standard library's sources (AdamW: constant, "
                    "warm-up + cosine, WSD, 1-cycle, CLR); states: the three tasks with fp32 / bf16 / int8 optimizer "
                    "states and bf16 parameters (stochastic rounding, kahan_sum)")  # fmt: skip
    dm.add_argument("--iterations", type=_at_least(1), default=None,
                    help="iterations per run (None: 1200 digits, 3000 mnist1d, 600 charlm; states: 600 / 1500 / 200)")  # fmt: skip
    dm.add_argument(
        "--seeds",
        type=_at_least(1),
        default=None,
        help="number of seeds (None: 3 digits, 5 mnist1d, 3 charlm, 3 states)",
    )
    dm.add_argument(
        "--optimizer",
        choices=["default", "lion"],
        default=None,
        help="states only: the optimizer of every task (default: SGD-momentum on digits / MNIST-1D, AdamW on the "
        "char-LM; lion: cf.Lion, its range test's CLR bounds, a third of AdamW's peak LR on the char-LM)",
    )
    dm.add_argument(
        "--tasks",
        type=_task_list,
        default=None,
        help="states only: comma-separated tasks among digits, mnist1d, charlm (default: all three)",
    )
    dm.add_argument(
        "--variants",
        choices=["all", "bf16-params"],
        default=None,
        help="states only: every variant (default), or bf16-params: fp32 beside bf16 parameters rounded to nearest, "
        "stochastically, or with kahan_sum (and int8 states)",
    )
    dm.add_argument(
        "--target", type=_accuracy, default=0.95, help="digits: the accuracy in (0, 1] whose first crossing is reported"
    )
    dm.add_argument(
        "--out", default=None, help="folder for the plots and the JSON (default: a new demo-<timestamp> folder)"
    )
    dm.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    if args.command == "demo" and args.dataset != "states" and (args.optimizer or args.tasks or args.variants):
        parser.error(f"--optimizer, --tasks and --variants are for --dataset states, not {args.dataset}")
    if getattr(args, "out", "") is None:  # never overwrite an earlier run's folder
        args.out = _timestamped({"bench": "clr-fused-bench", "range-test": "range-test", "demo": "demo"}[args.command])
    try:
        return args.func(args)
    except BrokenPipeError:
        # `clr-fused info | head -3`: the reader left; say nothing more (Python's documented recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, OSError, ImportError) as exc:
        # a bad argument or an unwritable --out: one line, argparse's exit code
        parser.exit(2, f"clr-fused {args.command}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
