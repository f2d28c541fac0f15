"""Developer tools, not part of the installed package: the sm_90 machine-code
checks (``sass_loops``) and the Triton ahead-of-time compile check
(``python -m tools.triton_aot_check``, from the repository root)."""
