"""The bytes an optimizer step moves per parameter (plain dtypes): what the
bench's GB/s, the copy-bandwidth footprint and the roofline model count.
(``low_precision.py`` has the same for bf16 / int8 states; the kernels'
own counts, from the emulator, are in ``counted.py``.)"""

from __future__ import annotations

import torch


def bytes_per_param(algo: str, dtype: torch.dtype) -> int:
    """Bytes one step must move per parameter: Adam reads p, g, m, v and
    writes p, m, v (28 B in fp32); SGD-momentum reads p, g, buf, writes p, buf (20 B)."""
    size = torch.empty((), dtype=dtype).element_size()
    return size * (7 if algo.startswith("adam") else 5)


def footprint_per_param(algo: str, dtype: torch.dtype) -> int:
    """Distinct bytes a step touches per parameter (updated in place: what it reads):
    Adam p, g, m, v (16 B in fp32); SGD-momentum p, g, buf (12 B)."""
    size = torch.empty((), dtype=dtype).element_size()
    return size * (4 if algo.startswith("adam") else 3)
