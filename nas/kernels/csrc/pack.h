// Weight packing: validated int8 weights -> the layout one ISA's kernels read. Portable code (no target pragmas):
// packing runs once per op, before any ISA-specific kernel, on whatever CPU builds the op.
#pragma once

#include "common.h"

namespace nask {

// GEMM weights w [N][K] (int8, or int4 values in [-7, 7]) and, when pw.grouped, sub-scales subs [N][G].
// pw.n, pw.k, pw.bits, pw.grouped and pw.ngroups are set by the caller.
//   rows:  int8 [N][K]; subs int32 [N][G]                                                      (reference)
//   8x2:   int8 [N/8][K/2][8 ch][2 k]; int4: 8 bytes per step, byte i = v[i] | v[i+8] << 4;
//          subs [N/8][G][8]                                                                    (avx2)
//   16x4:  int8 [N/16][K/4][16 ch][4 k]; int4: 32 bytes per step, byte i = v[i] | v[i+32] << 4;
//          subs [N/16][G][16]                                                                  (avx512vnni)
//   16x4_s8: 16x4, then int32 corr [N/16 * 16] = 128 * sum_k w[c, k] (grouped: times the group's sub-scale),
//          which the kernels add back after multiplying activations shifted to x - 128         (neon, neondot)
using PackGemmFn = void (*)(PackedWeights& pw, const int8_t* w, const int32_t* subs);
void pack_gemm_rows(PackedWeights& pw, const int8_t* w, const int32_t* subs);
void pack_gemm_8x2(PackedWeights& pw, const int8_t* w, const int32_t* subs);
void pack_gemm_16x4(PackedWeights& pw, const int8_t* w, const int32_t* subs);
void pack_gemm_16x4_s8(PackedWeights& pw, const int8_t* w, const int32_t* subs);

// Depthwise weights in the layout of one ISA (the fields of DwArgs that its kernel reads).
struct DwPacked {
  int cpad = 0;                    // channels padded to a multiple of 16
  std::vector<int32_t> taps;       // [k*k][cpad] int32, value w & 0xffff (DwArgs::wt)
  AlignedBuf vw, vinit, vscale;    // AVX512-VNNI layout (DwArgs::dw_w, dw_init, dw_scale);
                                   // neon: vw holds int16 taps [k*k][cpad] (read as DwArgs::dw_w);
                                   // avx2: vw, vinit as pack_dw_pairs says (DwArgs::dw_w, dw_init)
};

// w [C][k][k] int8 in [-127, 127]; q holds the (unfolded) bias and the scale per channel.
using PackDepthwiseFn = void (*)(DwPacked& p, const int8_t* w, int c, int k, int in_zp, const Requant& q);
void pack_dw_taps(DwPacked& p, const int8_t* w, int c, int k, int in_zp, const Requant& q);  // reference
// avx2: int16 [cpad / 16][ceil(k*k / 2) (pair)][2 (half)][16], taps t = 2 pair and 2 pair + 1 of the flattened
// t = ky * k + kx order side by side, in the order _mm256_unpack{lo,hi}_epi16 interleaves two vectors of 16
// channels: element e of half h is tap 2 pair + e % 2 of channel 16 blk + 8 (e / 8) + 4 h + (e % 8) / 2
// (zero past k*k taps or c channels); vinit: int32 [cpad] bias - in_zp * sum of the channel's taps (mod 2^32).
void pack_dw_pairs(DwPacked& p, const int8_t* w, int c, int k, int in_zp, const Requant& q);
void pack_dw_vnni(DwPacked& p, const int8_t* w, int c, int k, int in_zp, const Requant& q);  // avx512vnni
void pack_dw_taps16(DwPacked& p, const int8_t* w, int c, int k, int in_zp, const Requant& q);  // neon

// Direct convolution weights (KernelTable::direct_conv): w [Cout][k][k * cin] -> [Cout][k][seg4], each kernel row
// padded with zeros to seg4 = round_up(k * cin, 4) bytes. dst holds cout * k * seg4 bytes.
int conv_seg4(int k, int cin);
void pack_conv_rows(const int8_t* w, int cout, int k, int cin, int8_t* dst);

}  // namespace nask
