import random
import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)
    with warnings.catch_warnings():
        # torch warns about lr_scheduler.step() order and "epoch" arguments.
        warnings.simplefilter("ignore", UserWarning)
        yield
