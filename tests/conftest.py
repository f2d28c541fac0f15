import os
import random
import warnings

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in the interpreter.  This
# must be set before clr_fused's Triton kernels are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)
    with warnings.catch_warnings():
        # torch warns about lr_scheduler.step() order and "epoch" arguments.
        warnings.simplefilter("ignore", UserWarning)
        yield
