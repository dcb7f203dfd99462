// What the CPU passes over features share: the batch sums of a block of features, and the
// attributes that vectorise them. The passes are inlined (BNLSTM_INLINE) into float32
// wrappers that GCC on x86-64 also builds for AVX2 and FMA (BNLSTM_CLONES: function
// multiversioning, one binary, the CPU picks at load time).
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BNLSTM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define BNLSTM_INLINE inline __attribute__((always_inline))
#else
#define BNLSTM_CLONES
#define BNLSTM_INLINE inline
#endif

namespace bnlstm {

// Batch sums over rows b < n of z[b * ld + u] (u < w), then the centred squares.
template <typename S>
BNLSTM_INLINE void feature_sums(const S* __restrict__ z, int64_t ld, int64_t n, int64_t w,
                                S* __restrict__ total, S* __restrict__ centred) {
  std::fill(total, total + w, S(0));
  std::fill(centred, centred + w, S(0));
  for (int64_t b = 0; b < n; ++b) {
    const S* __restrict__ row = z + b * ld;
    for (int64_t u = 0; u < w; ++u) total[u] += row[u];
  }
  for (int64_t b = 0; b < n; ++b) {
    const S* __restrict__ row = z + b * ld;
    for (int64_t u = 0; u < w; ++u) {
      const S d = row[u] - total[u] / S(n);
      centred[u] += d * d;
    }
  }
}

}  // namespace bnlstm
