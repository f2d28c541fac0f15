"""clr_fused: drop-in torch.optim optimizers with the LR schedule fused on the device."""

from . import schedules
from .backends import BackendUnavailable
from .hf_schedules import get_schedule
from .optim import SGD, Adam, AdamW, FusedOptimizer
from .optim.lion import Lion
from .optim.schedule_free import AdamWScheduleFree, SGDScheduleFree
from .range_test import RangeTestResult, Suggestion, range_test
from .schedules import *  # noqa: F403 - every spec class (schedules.__all__): a new one needs no line here

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Lion",
    "SGDScheduleFree",
    "AdamWScheduleFree",
    "FusedOptimizer",
    "BackendUnavailable",
    "range_test",
    "RangeTestResult",
    "Suggestion",
    "schedules",
    "get_schedule",
    *schedules.__all__,
]
