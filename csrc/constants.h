// Constants shared by the kernels (any compiler) and the bindings.
#pragma once

#include <cstdint>

namespace clr_fused {
constexpr int64_t kChunk = 16384;  // elements per block; clr_fused/kernels/compiled.py reads it as _C.CHUNK
}  // namespace clr_fused
