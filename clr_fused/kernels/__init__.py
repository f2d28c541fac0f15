"""Update kernels, one module per backend with the same ``sgd_`` / ``adam_``
bucket functions: ``reference`` (torch), ``triton_update`` (Triton),
``cuda_update`` (the compiled csrc/ kernels); ``registry`` picks one."""
