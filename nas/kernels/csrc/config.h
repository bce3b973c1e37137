// Kernel dispatch: one KernelTable of function pointers per ISA, filled once in config.cpp (the pattern of
// XNNPACK's src/configs/*-config.c). An op looks its ISA up once when it is built and calls through the table;
// nothing else branches on the ISA.
#pragma once

#include <string>
#include <vector>

#include "common.h"
#include "pack.h"

namespace nask {

struct KernelTable {
  // int8 inference kernels
  void (*gemm)(const GemmArgs& a, int threads) = nullptr;
  void (*depthwise)(const DwArgs& a, int threads) = nullptr;
  void (*pool)(const PoolArgs& a, int threads) = nullptr;
  void (*channel_scale)(const ScaleArgs& a, int threads) = nullptr;
  // Weight packing into the layouts the kernels above read (pack.h).
  PackGemmFn pack_gemm = nullptr;
  PackDepthwiseFn pack_depthwise = nullptr;
  // true: gemm also reads kxk convolution rows in place (GemmArgs::conv, weights by pack_conv_rows);
  // false: the full convolution runs as im2col + gemm.
  bool direct_conv = false;
  // Training: float32 depthwise weight gradient.
  void (*dw_weight_grad)(const DwGradArgs& a, int threads) = nullptr;
  // Vector prefix of fake quantization over x[0, n); returns the first element not done. nullptr: the scalar
  // loop (fake_quant_value) does every element.
  int64_t (*fake_quant)(const float* x, int64_t n, float scale, float inv_scale, float zp, float qmin, float qmax,
                        float* out, uint8_t* mask) = nullptr;
  // Vector prefix of float32 NCHW -> uint8 NHWC input quantization of one image with C = 3; returns the first
  // pixel not done. nullptr: the scalar loop (quantize_value) does every pixel.
  int64_t (*quantize_rgb)(const float* x, int64_t hw, float scale, float zp, uint8_t* out) = nullptr;
};

struct Isa {
  std::string name;      // the name Python uses (nas.kernels.isa.ISAS is read from here)
  bool (*supported)();   // whether this CPU can run the kernels
  KernelTable kernels;
};

// Every ISA built into the extension, weakest first; the one definition of the ISA names.
const std::vector<Isa>& all_isas();

// The ISA called `name`, or nullptr when there is none.
const Isa* find_isa(const std::string& name);

}  // namespace nask
