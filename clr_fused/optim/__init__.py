from .adam import Adam, AdamW
from .base import FusedOptimizer
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "FusedOptimizer"]
