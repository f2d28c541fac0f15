"""The experiments behind ``clr-fused demo`` and ``clr-fused range-test --demo``:
one module per data set, each with its ``run`` (the experiment, returning
data) and ``main(args)`` (the report: printed table, plots, JSON).  Not
imported by the library itself."""
