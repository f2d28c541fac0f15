"""Parameter sets with real model shapes (tensor shapes only, no model code)."""

from __future__ import annotations

import math
import random


def resnet50() -> list[tuple[int, ...]]:
    """ResNet-50: 53 convs, 53 batch norms (weight, bias), fc: 161 tensors, 25.6M."""
    shapes: list[tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(4 * width, width, 1, 1), (4 * width,), (4 * width,)]
            if b == 0:
                shapes += [(4 * width, in_ch, 1, 1), (4 * width,), (4 * width,)]
            in_ch = 4 * width
    shapes += [(1000, 2048), (1000,)]
    return shapes


def transformer(d: int, layers: int, vocab: int = 50257, ctx: int = 1024) -> list[tuple[int, ...]]:
    """GPT-2 layout: embeddings, per layer 12 tensors, final layer norm."""
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def many_small(count: int = 5000, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` small tensors (log-uniform 1 .. 4096 elements)."""
    rng = random.Random(seed)
    return [(int(math.exp(rng.uniform(0, math.log(4096)))),) for _ in range(count)]


def param_sets(full: bool) -> dict[str, list[tuple[int, ...]]]:
    """The benchmark's sets; ``full=False`` is the CPU-sized selection."""
    if full:
        return {
            "resnet50": resnet50(),
            "gpt2-small": transformer(768, 12),
            "transformer-1b": transformer(2048, 18),
            "many-small-5000": many_small(5000),
        }
    return {"resnet50": resnet50(), "many-small-1000": many_small(1000)}


def numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)
