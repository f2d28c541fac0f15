// The schedule kind codes, as clr_fused/schedule_math.py defines them (the
// one definition: KIND_<NAME> there).  The bindings export this table as
// _C.SCHEDULE_KINDS and clr_fused/_ext.py refuses an extension whose codes
// differ from Python's, as it does for the chunk size.  Plain C++: the
// kernels (schedule.cuh) and the bindings include it.  The kinds generated
// from schedule_math.closed_form (schedule_generated_kinds.h, written at build
// time by clr_fused/schedule_codegen.py) follow the hand-mirrored ones.
#pragma once

#include "schedule_generated_kinds.h"

// X(NAME, enumerator, code): never renumber, only append.
#define CLR_FUSED_SCHEDULE_KINDS(X)  \
  X(CONSTANT, kConstant, 0)          \
  X(WARM_RESTARTS, kWarmRestarts, 4) \
  X(PLATEAU, kPlateau, 11)           \
  X(TABLE, kTable, 12)               \
  X(TABLE_DATA, kTableData, 13)      \
  CLR_FUSED_GENERATED_KINDS(X)

namespace clr_fused {

#define CLR_FUSED_KIND_ENUMERATOR(name, enumerator, code) enumerator = code,
enum Kind : int { CLR_FUSED_SCHEDULE_KINDS(CLR_FUSED_KIND_ENUMERATOR) };
#undef CLR_FUSED_KIND_ENUMERATOR

}  // namespace clr_fused
