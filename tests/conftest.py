import os
import random
import runpy
import warnings

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in the interpreter.  This
# must be set before clr_fused's Triton kernels are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The generated schedule kinds' C++ headers (csrc/schedule_generated*.h), current
# before any test compiles csrc/ (setup.py writes them too; a test run after an
# edit of schedule_math.py must not build against stale ones).
runpy.run_path(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clr_fused", "schedule_codegen.py")
)["write_headers"]()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)
    with warnings.catch_warnings():
        # torch warns about lr_scheduler.step() order and "epoch" arguments.
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(params=["torch", "triton", "cpu"])
def backend(request):
    """Every backend that runs on CPU tensors (tests/cases.py decides what runs
    here; one that cannot is skipped, saying why).  A test taking ``backend``
    runs once per backend; files that mean a subset name it with
    ``cases.backends(...)``."""
    from .cases import backends

    if request.param not in backends(request.param):
        pytest.skip(f"backend {request.param!r} does not run here")
    return request.param


# The quick command (README: python -m pytest -q tests -m "not slow") leaves out
# what takes most of the full suite's time on a 2-core CPU: the sanitizer, GPU
# emulator and SASS builds, multi-process and demo runs, the benchmark smoke
# runs, and the Triton kernels under the interpreter (seconds each).  CI runs
# both commands; the full suite is the proof.
SLOW_FILES = {
    "test_sanitizers.py", "test_gpu_sim.py", "test_sass_gates.py", "test_distributed.py", "test_charlm_demo.py",
    "test_mnist1d_demo.py", "test_states_demo.py", "test_bench.py", "test_triton.py", "test_exactness.py",
}  # fmt: skip
SLOW_TESTS = {
    "test_sgd_bit_identical_on_every_backend", "test_ticket_thread_sanitizer_reports_nothing",
    "test_ticket_thread_sanitizer_catches_a_relaxed_ticket", "test_each_isa_copy_rounds_as_torch_at_that_capability",
    "test_fma_copies_are_vectorised_with_fused_multiply_adds", "test_one_hundred_thousand_tensors",
    "test_torchtitan_containers_and_distributed_checkpoint", "test_cli_version_and_help",
    "test_sgd_and_lion_bit_identical_on_every_backend", "test_ddp_bit_identical_to_the_normal_step",
    "test_fsdp2_bit_identical_to_the_normal_step",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    for item in items:
        name = item.name.split("[")[0]
        if item.path.name in SLOW_FILES or name in SLOW_TESTS or "triton" in item.name:
            item.add_marker(slow)
