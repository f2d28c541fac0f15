"""Update kernels, one module per backend with the same ``sgd_`` / ``adam_``
bucket functions: ``reference`` (torch), ``triton_update`` (Triton),
``compiled`` (the csrc/ kernels: ``cuda`` and ``cpu``); ``registry`` picks one."""
