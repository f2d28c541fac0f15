// The algorithms on the generic fused step (algorithm_kernel.cuh), one line
// each: X(id, Struct).  The op, the CPU and CUDA launchers, the plan and the
// bindings (_C.ALGORITHMS, which Python reads by the class's name) follow from
// this list.  Append only: an id is what the op's `algorithm` argument carries.
#pragma once

#include "algorithms/adamw_schedule_free.cuh"
#include "algorithms/lion.cuh"
#include "algorithms/sgd_schedule_free.cuh"

#define CLR_FUSED_ALGORITHMS(X) X(0, Lion) X(1, SGDScheduleFree) X(2, AdamWScheduleFree)
