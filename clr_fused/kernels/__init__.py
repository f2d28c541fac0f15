"""Update kernels: ``reference`` (torch backend), ``triton_*`` (Triton backend)."""
