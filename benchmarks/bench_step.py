"""Step microbenchmarks: the same as `clr-fused bench` (see clr_fused/bench/run.py).

    python benchmarks/bench_step.py            # full sets on a GPU, CPU-sized sets otherwise
    python benchmarks/bench_step.py --quick    # Adam only, small sets

Results: benchmarks/results/<device>-<date>.{json,md,png}.
"""

import sys

from clr_fused.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
