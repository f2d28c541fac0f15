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
    print(f"CUDA      {'available: ' + torch.cuda.get_device_name(0) if cuda else 'not available (no CUDA device here)'}")
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
    what = {"cpu": "the compiled CPU kernels (parallel, from the csrc/ templates)", "torch": "the pure-PyTorch reference path"}
    print(f"a CPU user gets backend {cpu_auto!r}: {what.get(cpu_auto, cpu_auto)}")
    print("float64 parameters: backend 'auto' sends them to 'torch' (the fused kernels take float32, bfloat16, float16)")
    return 0


def _range_test(args) -> int:
    import os

    from . import demo

    if not args.demo:
        print("clr-fused range-test: error: only --demo is available from the command line; call clr_fused.range_test() in code",
              file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    data = demo.load_digits_data()
    result = demo.run_range_test(data, num_steps=args.steps, progress=True)
    s = result.suggest()
    print(f"range test on digits: {len(result.lrs)} steps, stopped early: {result.stopped_early}")
    print(f"suggested base_lr={s.base_lr:.4g} max_lr={s.max_lr:.4g} ({s.reason})")
    png, csv_path = os.path.join(args.out, "range_test.png"), os.path.join(args.out, "range_test.csv")
    result.plot(png, title="LR range test, digits MLP, SGD momentum 0.9")
    result.to_csv(csv_path)
    print(f"wrote {png} and {csv_path}")
    return 0


def _demo(args) -> int:
    if args.dataset == "mnist1d":
        return _demo_mnist1d(args)
    if args.dataset == "charlm":
        return _demo_charlm(args)
    if args.dataset == "states":
        return _demo_states(args)
    import json
    import os

    from . import demo

    args.iterations = args.iterations or 1200
    args.seeds = args.seeds or 3
    os.makedirs(args.out, exist_ok=True)
    data = demo.load_digits_data()
    seeds = tuple(range(args.seeds))
    rt, policies, curves, table = demo.compare_policies(data, iterations=args.iterations, seeds=seeds, target=args.target)
    s = rt.suggest()
    print(f"range test: base_lr={s.base_lr:.4g} max_lr={s.max_lr:.4g}; {args.iterations} iterations, seeds {list(seeds)}")
    key = f"iterations_to_{args.target:.0%}"
    print(f"| policy | final accuracy | {key} |")
    print("|---|---|---|")
    for row in table:
        print(f"| {row['policy']} | {row['final_accuracy']:.4f} | {row[key] if row[key] is not None else 'not reached'} |")
    demo.plot_curves(curves, os.path.join(args.out, "demo_accuracy.png"), eval_every=20)
    with open(os.path.join(args.out, "demo.json"), "w") as f:
        json.dump({"suggestion": s.__dict__, "table": table, "policies": {k: repr(v) for k, v in policies.items()}}, f, indent=2)
    print(f"wrote {args.out}/demo_accuracy.png and {args.out}/demo.json")
    return 0


def _demo_mnist1d(args) -> int:
    import datetime
    import json
    import os
    import platform
    import time

    import torch

    from . import mnist1d_demo as m

    iterations, seeds = args.iterations or 3000, tuple(range(args.seeds or 5))
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    exp = m.run(m.load_mnist1d(), iterations=iterations, seeds=seeds)
    took = time.perf_counter() - t0
    s = exp.suggestion
    print(f"range test (ours): base_lr={s['base_lr']:.4g} max_lr={s['max_lr']:.4g} ({s['reason']})")
    print(f"torch-lr-finder steepest gradient: {exp.peers['torch_lr_finder']:.4g}; valley: {exp.peers['valley']:.4g}")
    print("fixed-LR grid (mean final accuracy): " + ", ".join(f"{lr:g}: {a:.4f}" for lr, a in exp.fixed_grid.items()))
    print(f"{iterations} iterations, seeds {list(seeds)}, {took:.0f} s on {platform.machine()} ({torch.get_num_threads()} threads)")
    print("| policy | final test accuracy (mean ± std) | iterations to the best fixed LR's final accuracy |")
    print("|---|---|---|")
    rows = exp.table()
    for r in rows:
        reach = r["iterations_to_best_fixed"] if r["iterations_to_best_fixed"] is not None else "not reached"
        print(f"| {r['policy']} | {r['final_mean']:.4f} ± {r['final_std']:.4f} | {reach} |")
    png = os.path.join(args.out, "mnist1d_policies.png")
    m.plot(exp, png, title=f"MNIST-1D CNN, SGD momentum 0.9, {len(seeds)} seeds")
    exp.range_test.plot(os.path.join(args.out, "mnist1d_range_test.png"), title="LR range test, MNIST-1D CNN")
    out = {
        "date": datetime.date.today().isoformat(), "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "seconds": took, "iterations": iterations, "seeds": list(seeds), "suggestion": s, "peers": exp.peers,
        "fixed_grid": exp.fixed_grid, "table": rows, "curves": exp.curves, "eval_every": exp.eval_every,
    }  # fmt: skip
    with open(os.path.join(args.out, "mnist1d.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {png} and {args.out}/mnist1d.json")
    return 0


def _demo_charlm(args) -> int:
    import datetime
    import json
    import os
    import platform
    import sys
    import time

    import torch

    from . import charlm_demo as m

    iterations, seeds = args.iterations or 600, tuple(range(args.seeds or 3))
    eval_every = max(1, iterations // 20)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    corpus = m.load_stdlib()
    exp = m.run(corpus, iterations=iterations, seeds=seeds, eval_every=eval_every)
    took = time.perf_counter() - t0
    s = exp.suggestion
    print(f"corpus: Python {platform.python_version()} standard library, {corpus.files[0]} files ({len(corpus.train):,} bytes) "
          f"train, {corpus.files[1]} files ({len(corpus.val):,} bytes) validation")  # fmt: skip
    print(f"range test: base_lr={s['base_lr']:.4g} max_lr={s['max_lr']:.4g} ({s['reason']})")
    print("constant-LR grid (mean final validation loss): " + ", ".join(f"{lr:g}: {v:.4f}" for lr, v in exp.constant_grid.items()))
    print(f"{iterations} iterations, seeds {list(seeds)}, {took:.0f} s on {platform.machine()} ({torch.get_num_threads()} threads)")
    print("| policy | final validation loss (mean ± std) | iterations to the constant LR's final loss |")
    print("|---|---|---|")
    rows = exp.table()
    for r in rows:
        reach = r["iterations_to_constant_final"] if r["iterations_to_constant_final"] is not None else "not reached"
        print(f"| {r['policy']} | {r['final_mean']:.4f} ± {r['final_std']:.4f} | {reach} |")
    png = os.path.join(args.out, "charlm_policies.png")
    m.plot(exp, png, title=f"char-level GPT on the standard library, AdamW, {len(seeds)} seeds")
    exp.range_test.plot(os.path.join(args.out, "charlm_range_test.png"), title="LR range test, char-level GPT, AdamW")
    out = {
        "date": datetime.date.today().isoformat(), "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "python": sys.version.split()[0], "seconds": took, "iterations": iterations, "seeds": list(seeds),
        "suggestion": s, "constant_grid": exp.constant_grid, "table": rows, "curves": exp.curves, "eval_every": eval_every,
    }  # fmt: skip
    with open(os.path.join(args.out, "charlm.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {png} and {args.out}/charlm.json")
    return 0


def _demo_states(args) -> int:
    import datetime
    import json
    import os
    import platform
    import time

    import torch

    from . import states_demo as m

    # the char-LM with bf16 parameters is ~8x slower on a CPU without bf16 matmul units: fewer iterations there
    its = {"digits": 600, "mnist1d": 1500, "charlm": 200}
    if args.iterations:
        its = {k: args.iterations for k in its}
    seeds = tuple(range(args.seeds or 3))
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    tasks, skipped = m.run(iterations=its, seeds=seeds)
    took = time.perf_counter() - t0
    print(f"{len(seeds)} seeds, {took:.0f} s on {platform.machine()} ({torch.get_num_threads()} threads)")
    rows = [r for t in tasks for r in t.table()]
    print("| task | variant | final (mean ± std over seeds) |")
    print("|---|---|---|")
    for r in rows:
        unit = "accuracy" if r["metric"] == "accuracy" else "validation loss"
        print(f"| {r['task']} | {r['variant']} | {unit} {r['mean']:.4f} ± {r['std']:.4f} |")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    png = os.path.join(args.out, "states.png")
    m.plot(tasks, png)
    out = {
        "date": datetime.date.today().isoformat(), "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "seconds": took, "seeds": list(seeds), "skipped": skipped, "table": rows,
        "tasks": [{"name": t.name, "metric": t.metric, "setup": t.setup, "eval_every": t.eval_every, "curves": t.curves} for t in tasks],
    }  # fmt: skip
    with open(os.path.join(args.out, "states.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {png} and {args.out}/states.json")
    return 0


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


def _timestamped(stem: str) -> str:
    import datetime

    return f"{stem}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def main(argv: list[str] | None = None) -> int:
    from . import __version__

    fmt = _DefaultsFormatter
    parser = argparse.ArgumentParser(prog="clr-fused", description=__doc__, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"clr-fused {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device and which backends work here (and why not)", formatter_class=fmt).set_defaults(func=_info)
    bn = sub.add_parser("bench", help="optimizer-step microbenchmark against torch.optim + lr_scheduler", formatter_class=fmt)
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
    rt.add_argument("--out", default=None, help="folder for range_test.png and range_test.csv (default: a new range-test-<timestamp> folder)")
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
                    "states and bf16 parameters (stochastic rounding)")  # fmt: skip
    dm.add_argument("--iterations", type=_at_least(1), default=None,
                    help="iterations per run (None: 1200 digits, 3000 mnist1d, 600 charlm; states: 600 / 1500 / 200)")  # fmt: skip
    dm.add_argument("--seeds", type=_at_least(1), default=None, help="number of seeds (None: 3 digits, 5 mnist1d, 3 charlm, 3 states)")
    dm.add_argument("--target", type=_accuracy, default=0.95, help="digits: the accuracy in (0, 1] whose first crossing is reported")
    dm.add_argument("--out", default=None, help="folder for the plots and the JSON (default: a new demo-<timestamp> folder)")
    dm.set_defaults(func=_demo)
    args = parser.parse_args(argv)
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
