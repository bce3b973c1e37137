// AArch64 NEON kernels with the ARMv8.2 dot product ("neondot"): the GEMM on sdot (4 int8 x int8 products into
// each int32 lane, the 16x4 weight layout is its operand layout). Depthwise, pool and SE scaling have no dot-product
// form and use the baseline kernels (the table in config.cpp points at neon::). Compiles to nothing off AArch64.
#if defined(__aarch64__)
#include <arm_neon.h>

#include "common.h"

#pragma GCC push_options
// the target arm_neon.h declares the dot-product intrinsics with (FEAT_DotProd is optional from ARMv8.2 on)
#pragma GCC target("arch=armv8.2-a+dotprod")

#include "neon.h"

namespace nask {
namespace {

// sums[r][j] += the products of one step (lane L of the 16 activation bytes x[r]).
template <int L, int MR, bool INT4>
inline void dot_lane(const uint8_t* wstep, const int8x16_t (&x)[MR], int32x4_t (&sums)[MR][4]) {
  int8x16_t w[4];
  load_w<INT4>(wstep, w);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) sums[r][j] = vdotq_laneq_s32(sums[r][j], w[j], x[r], L);
}

// sums[r][j] = dot products of steps [s0, s1) for channels 4j..4j+3 of row r: 16 activation bytes (4 steps) per
// row and register, one sdot by lane per step, row and weight vector.
struct DotSteps {
  template <int MR, bool INT4>
  static inline void run(const int8_t* xs, int kp, int s0, int s1, const uint8_t* wp, int32x4_t (&sums)[MR][4]) {
    constexpr int WB = kStepBytes<INT4>;
    // a local array indexed only by constants (unrolled loops) stays in registers; sums is in memory
    int32x4_t acc[MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[r][j] = vdupq_n_s32(0);
    int s = s0;
    for (; s + 4 <= s1; s += 4) {
      int8x16_t x[MR];
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) x[r] = vld1q_s8(xs + r * kp + 4 * s);
      dot_lane<0, MR, INT4>(wp + s * WB, x, acc);
      dot_lane<1, MR, INT4>(wp + (s + 1) * WB, x, acc);
      dot_lane<2, MR, INT4>(wp + (s + 2) * WB, x, acc);
      dot_lane<3, MR, INT4>(wp + (s + 3) * WB, x, acc);
    }
    for (; s < s1; ++s) {
      int8x16_t w[4];
      load_w<INT4>(wp + s * WB, w);
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const int8x16_t x = dup4(xs + r * kp + 4 * s);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) acc[r][j] = vdotq_s32(acc[r][j], w[j], x);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) sums[r][j] = acc[r][j];
  }
};

}  // namespace

namespace neondot {

void gemm(const GemmArgs& a, int threads) {
  const bool int4 = a.w->bits == 4;
  if (a.w->grouped) gemm_impl<DotSteps, 4, true, true>(a, threads);
  else if (int4) gemm_impl<DotSteps, 4, true, false>(a, threads);
  else gemm_impl<DotSteps, 4, false, false>(a, threads);
}

}  // namespace neondot
}  // namespace nask

#pragma GCC pop_options

#endif  // __aarch64__
