"""clr_fused: drop-in torch.optim optimizers with the LR schedule fused on the device."""

from . import schedules
from .backends import BackendUnavailable
from .optim import SGD, Adam, AdamW, FusedOptimizer
from .range_test import RangeTestResult, Suggestion, range_test
from .schedules import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LinearLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    ReduceLROnPlateau,
    Schedule,
    SequentialLR,
    StepLR,
)

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "FusedOptimizer",
    "BackendUnavailable",
    "range_test",
    "RangeTestResult",
    "Suggestion",
    "schedules",
    "Schedule",
    "CyclicLR",
    "OneCycleLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "ExponentialLR",
    "StepLR",
    "MultiStepLR",
    "PolynomialLR",
    "LinearLR",
    "ConstantLR",
    "SequentialLR",
    "ReduceLROnPlateau",
]
