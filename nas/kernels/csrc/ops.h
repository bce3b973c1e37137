// The kernel ops without Python: each op checks its parameters once, packs its weights for one ISA's kernel table
// and runs on raw pointers. A bad parameter throws std::invalid_argument whose message starts with the argument's
// name (module.cpp, the Python bindings, turn it into ValueError; capi.cpp, the C API, into an error code).
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "config.h"
#include "pack.h"

namespace nask {

using Task = std::function<void(int)>;  // one bound kernel call: threads -> void

// ---------------------------------------------------------------- checks (std::invalid_argument)
std::string dims_str(const std::vector<int64_t>& dims);  // "(2, 3)", "(4,)": as NumPy prints a shape
void check_range(int64_t v, int64_t lo, int64_t hi, const char* name);
int check_threads(int threads);
// The ISA called `name` (naming the known ISAs otherwise), supported by this CPU or not.
const Isa& parse_isa(const std::string& name);
// The ISA called `name`; throws when it is unknown or this CPU cannot run it.
const Isa& checked_isa(const std::string& name);
// float32(multiplier * 2^(shift - 31)) after range checks.
float checked_scale(int32_t multiplier, int32_t shift);

// ---------------------------------------------------------------- parameters (nas.kernels.ops specs)
// Per-output-channel requantization (ops.Requant); the pointers are read only while the op is built.
struct RequantParams {
  const int32_t* multiplier = nullptr;  // [n]
  const int32_t* shift = nullptr;       // [n]
  int out_zp = 0, act_min = 0, act_max = 255;
  const uint8_t* lut = nullptr;  // [256] or nullptr
};

void fill_requant(Requant& q, int n, const RequantParams& p);

struct ResidualParams {  // ops.Residual
  int zp = 0;
  int32_t multiplier = 0, shift = 0;
};

struct GemmParams {  // ops.GemmSpec
  const int8_t* weight = nullptr;  // [n][k]
  int n = 0, k = 0;
  const int32_t* bias = nullptr;  // [n]
  int in_zp = 0;
  RequantParams requant;
  int bits = 8;
  const int32_t* sub_scales = nullptr;  // [n][sub_groups], bits == 4 only; nullptr: none
  int sub_groups = 0;                   // as given; must be ceil(k / group_size)
  int group_size = 0;
  bool out_int32 = false;
  std::optional<ResidualParams> residual;
  std::string isa;
};

struct ConvParams {  // ops.ConvSpec
  const int8_t* weight = nullptr;  // [cout][kh][kw][cin]
  int cout = 0, kh = 0, kw = 0, cin = 0;
  int stride = 1;
  const int32_t* bias = nullptr;  // [cout]
  int in_zp = 0;
  RequantParams requant;
  std::string isa;
};

struct DepthwiseParams {  // ops.DepthwiseSpec
  const int8_t* weight = nullptr;  // [c][kh][kw]
  int c = 0, kh = 0, kw = 0;
  int stride = 1;
  const int32_t* bias = nullptr;  // [c]
  int in_zp = 0;
  RequantParams requant;
  std::string isa;
};

// ---------------------------------------------------------------- ops
// Each op's task(...) checks the sizes and returns the kernel call on the given pointers (which must stay valid
// while the task is used); run it with any thread count in [1, 1024].

// y[m, n] = requant(sum_k x[m, k] * w[n, k] + bias[n]); x uint8 (zero point in_zp), w int8 or int4.
class Gemm {
 public:
  explicit Gemm(const GemmParams& p);

  int n() const { return pw_.n; }
  int k() const { return pw_.k; }
  bool residual() const { return q_.residual; }
  bool out_int32() const { return q_.out_int32; }
  const Isa& isa() const { return *isa_; }
  size_t packed_bytes() const { return pw_.w.size; }

  // x [m][k] uint8, out [m][n] (uint8, or int32 when out_int32), res [m][n] uint8 (residual ops only).
  Task task(const uint8_t* x, int m, void* out, const uint8_t* res) const;
  // Direct convolution rows (ConvGeom; ISAs with direct_conv only, weights packed by pack_conv_rows).
  void run_conv(const ConvGeom& g, int m, void* out, int threads) const;
  // No checks.
  void run_raw(const uint8_t* x, int m, void* out, const uint8_t* res, int threads) const;

 private:
  const Isa* isa_ = nullptr;
  PackedWeights pw_;
  Requant q_;
  RqView view_{};
};

// Full kxk convolution (the stem), padding k / 2: im2col (padding value = in_zp) + GEMM, or the ISA's direct path.
class Conv {
 public:
  explicit Conv(const ConvParams& p);

  int cin() const { return cin_; }
  int cout() const { return cout_; }
  int k() const { return k_; }
  int stride() const { return stride_; }
  const Isa& isa() const { return gemm_->isa(); }
  int out_size(int in) const { return (in + 2 * (k_ / 2) - k_) / stride_ + 1; }
  // x [b][h][w][cin] -> out [b][out_size(h)][out_size(w)][cout], uint8.
  Task task(const uint8_t* x, int b, int h, int w, uint8_t* out) const;
  // Output rows [oy0, oy1) of one image of h x w (no checks) into out (those rows only), on one thread, with
  // `scratch` of rows_scratch_bytes(w, oy1 - oy0) bytes for the rows' zero-point padded input or im2col rows: the
  // same bytes and the same GEMM kernel as task(), so the same bits.
  void run_rows(const uint8_t* x, int h, int w, int oy0, int oy1, uint8_t* out, uint8_t* scratch) const;
  // Scratch bytes run_rows needs for `rows` output rows of input width w, the same on every ISA (the larger of the
  // padded rows of the direct path and the im2col rows), so an arena holding it is predictable without the ISA.
  static size_t rows_scratch_bytes(int w, int cin, int k, int stride, int rows);

 private:
  void run_raw(const uint8_t* xp, uint8_t* op, int b, int h, int w, int ho, int wo, int threads) const;
  void run_direct(const uint8_t* xp, uint8_t* op, int b, int h, int w, int ho, int wo, int threads) const;
  // The direct path's geometry over padded rows `pad` (hp rows of wp pixels) giving ho x wo outputs.
  ConvGeom geom(const uint8_t* pad, int ho, int wo, int hp, int wp) const;

  std::unique_ptr<Gemm> gemm_;
  int cout_ = 0, k_ = 0, cin_ = 0, stride_ = 1, in_zp_ = 0, seg4_ = 0;
  bool direct_ = false;
};

// Depthwise kxk convolution, padding k / 2.
class Depthwise {
 public:
  explicit Depthwise(const DepthwiseParams& p);

  int c() const { return c_; }
  int k() const { return k_; }
  int stride() const { return stride_; }
  const Isa& isa() const { return *isa_; }
  int out_size(int in) const { return (in - 1) / stride_ + 1; }
  // x [b][h][w][c] -> out [b][out_size(h)][out_size(w)][c], uint8. The two may overlap only as an in-place step
  // (stride 1, out starting at least dw_in_place_rows(1, k) rows before x: see there); any other overlap throws.
  Task task(const uint8_t* x, int b, int h, int w, uint8_t* out) const;
  // Row window of one image of height h (no checks): output rows [oy0, oy1) into out (those rows only) from x
  // holding the input rows in a ring of `held` rows (row iy at x + (iy % held) * w * c; 0: all h rows in order),
  // which must hold every row in [0, h) the window reads.
  void run_rows(const uint8_t* x, int h, int w, int held, int oy0, int oy1, uint8_t* out, int threads) const;

 private:
  DwArgs args(const uint8_t* x, int b, int h, int w, uint8_t* out) const;
  // In place: out starts `rows` (D) rows before x in one buffer (see dw_in_place_rows).
  void run_in_place(const uint8_t* x, int b, int h, int w, uint8_t* out, int64_t rows, int threads) const;

  const Isa* isa_ = nullptr;
  int c_ = 0, k_ = 0, stride_ = 1, in_zp_ = 0;
  Requant q_;
  RqView view_{};
  DwPacked packed_;
};

// A fused step computed in bands of output rows: head -> depthwise kxk -> tail. The head makes the depthwise's input
// rows: none (the depthwise reads the step input), a 1x1 expand GEMM (an inverted-residual block's expand layer), or
// the network's stem convolution (kxk, stride 1/2; the step input is then the network input and the stem output is
// never materialized either: issue #33, MCUNetV2's patch-based first stage). The tail: the project GEMM (with the
// block's residual add when it has one) or none (the depthwise output is the step's output: a first block with
// squeeze-excite, whose SE and project run as steps of their own). Per band only the head rows its depthwise reads
// exist (in a ring of band rows: the halo rows the next band reads again stay where they are, neither moved nor
// recomputed), and the depthwise output of the band goes straight into the project GEMM: the full head and
// depthwise tensors are never materialized. Every output pixel comes from the same kernels on the same bytes as
// layer by layer (the stem's rows from the same zero-point padded rows or im2col rows as Conv::task), so the
// result is bit-exact for any band and thread count. Threads: each takes one strip of output rows (image-major)
// with its own band buffers, the kernels inside run on that thread alone; only the halo rows at strip edges are
// computed twice.
class FusedBlock {
 public:
  // expand and stem: at most one (none: expand ratio 1); project may be null only with a stem. Residual blocks need
  // stride 1, as many output as input channels and no stem (the residual would read the stem output). band: output
  // rows per band (0: band_rows' choice; any value gives the same bits).
  FusedBlock(std::shared_ptr<Gemm> expand, std::shared_ptr<Depthwise> dw, std::shared_ptr<Gemm> project,
             int band = 0, std::shared_ptr<Conv> stem = nullptr);

  int cin() const { return stem_ ? stem_->cin() : expand_ ? expand_->k() : dw_->c(); }
  int cout() const { return project_ ? project_->n() : dw_->c(); }
  bool has_stem() const { return stem_ != nullptr; }
  bool has_project() const { return project_ != nullptr; }
  // The depthwise's input height (width) for a step input of `in` rows (columns).
  int head_size(int in) const { return stem_ ? stem_->out_size(in) : in; }
  int out_size(int in) const { return dw_->out_size(head_size(in)); }
  // Output rows per band: `band` (clamped to [1, ho]) when positive, else the most whose band buffers (below) fit
  // kBandBytes, at most ceil(ho / kMinBands) (small images: the buffers stay well below the expanded tensor, also
  // with one set per thread), but at least ceil(kMinPixels / wo) (GEMMs of a few rows waste their register tiles
  // and reload the weights per band) and at most ho. h, w: the depthwise's input. A step with a stem head budgets
  // kStemBandBytes instead: it is the network's peak step where it fuses, its buffers add to that peak one for one,
  // and bands a quarter the size measured within 0-3% of the speed on an AMD Zen 3.
  static int band_rows(int h, int w, int c, int k, int stride, int band = 0, size_t budget = kBandBytes);
  // Scratch bytes one thread needs for depthwise input h x w: the expanded rows of a band (with expand) and the
  // band's depthwise output, each rounded up to 64 bytes. c: the expanded (depthwise) channels.
  static size_t scratch_bytes(int h, int w, int c, int k, int stride, bool expand, int band = 0);
  // The same for a step with a stem head on network input h x w x cin (stem kernel stem_k, stride stem_stride):
  // the stem output rows of a band, the band's depthwise output (with project only) and the stem's padded input or
  // im2col rows for stem_rows() stem output rows (Conv::rows_scratch_bytes), each rounded up to 64 bytes.
  static size_t stem_scratch_bytes(int h, int w, int cin, int stem_k, int stem_stride, int c, int k, int stride,
                                   bool project, int band = 0);
  // Stem output rows computed per GEMM call: about kStemPixels pixels, at most the `held` rows of a band.
  static int stem_rows(int w, int held) { return std::max(1, std::min(held, (kStemPixels + w - 1) / w)); }
  size_t scratch_bytes(int h, int w) const;
  // x [b][h][w][cin] -> out [b][out_size(h)][out_size(w)][cout], uint8. scratch: `slots` x scratch_bytes(h, w)
  // bytes (64-byte aligned), at most `slots` threads then run; nullptr: allocated per call for `threads` threads.
  Task task(const uint8_t* x, int b, int h, int w, uint8_t* out, uint8_t* scratch, int slots) const;

  static constexpr size_t kBandBytes = 64 * 1024;  // band buffers per thread: about half a core's L2
  static constexpr size_t kStemBandBytes = 16 * 1024;  // the same with a stem head
  static constexpr int kMinBands = 8, kMinPixels = 32;
  static constexpr int kStemPixels = 128;  // a stem GEMM call's rows: enough for full register tiles

 private:
  void run_raw(const uint8_t* x, int b, int h, int w, uint8_t* out, uint8_t* scratch, int slots,
               int threads) const;
  // Output rows [r0, r1) of the flattened b x ho rows with one thread's buffers.
  void run_strip(const uint8_t* x, int h, int w, uint8_t* out, uint8_t* scratch, int r0, int r1) const;

  std::shared_ptr<Gemm> expand_;
  std::shared_ptr<Depthwise> dw_;
  std::shared_ptr<Gemm> project_;
  int band_ = 0;
  std::shared_ptr<Conv> stem_;
};

// Band-buffer slots a fused step gets in an arena planned for `threads` threads: one per thread, at most one per
// output row (rows = batch x output height), at least one.
inline int fused_scratch_slots(int threads, int64_t rows) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, rows)));
}

// ---------------------------------------------------------------- in place (issue #33)
// A step may write its output over its input when no later step reads that input. A squeeze-excite step does so
// exactly (pool over the whole input first, then the scale reads each pixel's channels before it writes them, threads
// taking disjoint pixels). A stride-1 depthwise writes its output `headroom` bytes before its input, in one buffer
// that many bytes longer than the tensor: writing output row r then overwrites input bytes of rows <= r - D (D =
// headroom / row bytes), so no row still to be read is hit as long as every output row computed at the same time
// as row r reads rows >= r - D + 1. Kernels take rows in increasing order on one thread, so there D = k / 2 + 1
// suffices; threads take the rows of one parallel call in any order, so on several threads the rows go in waves of
// R = threads * kInPlaceWaveRows rows, one call each, and D = R + k / 2 (no output row of a wave reads a row that
// the wave writes over). Bit-exact whatever the thread count: the same kernels compute the same pixels from the
// same bytes; only the memory and the calls differ.
constexpr int kInPlaceWaveRows = 2;  // output rows per thread in one wave (each wave is one parallel call)
constexpr int64_t kNotInPlace = -1;  // a step whose op cannot run in place

// Rows D the output of an in-place stride-1 kxk depthwise starts before its input, on `threads` threads.
inline int dw_in_place_rows(int threads, int k) {
  return threads == 1 ? k / 2 + 1 : threads * kInPlaceWaveRows + k / 2;
}

// Bytes the output of an in-place stride-1 depthwise on rows of w x c bytes starts before its input: D rows,
// rounded up to 64 bytes (every buffer starts on a cache line; more bytes only move writes further from reads).
// One thread only (kNotInPlace on several): there in place is as fast as out of place (ratio 0.96-1.01 on an AMD
// Zen 3), but the waves on 2 threads measured 1.04-2.0x slower (one parallel call per few rows, which the pool runs
// on one thread once no worker joins them), so a plan for several threads keeps the depthwise out of place. Tasks
// still take waves when run on more threads than their plan's.
inline int64_t dw_in_place_headroom(int threads, int w, int c, int k) {
  if (threads > 1) return kNotInPlace;
  return (static_cast<int64_t>(dw_in_place_rows(threads, k)) * w * c + 63) / 64 * 64;
}

// The one rule for which steps run in place (nas.kernels.memory's prediction, the Python executor and the C runtime
// all apply it, inside plan_arena): an op that can (`headroom` >= 0: a stride-1 depthwise's dw_in_place_headroom, a
// squeeze-excite's 0) whose input (`input_bytes`) no later step reads, where that needs fewer bytes than an output
// of its own (headroom < input_bytes: not so for a depthwise whose D rows are the whole tensor).
inline bool in_place_pays(int64_t headroom, size_t input_bytes, bool input_read_later) {
  return headroom >= 0 && !input_read_later && static_cast<size_t>(headroom) < input_bytes;
}

// The one rule for which blocks run fused (the Python executor, nas.kernels.memory's prediction and the C runtime
// all call it): a block is fused where its fused step (block input x, output `out` and the band buffers `scratch`
// alive) needs no more bytes than its layers' fullest step: expand (x + expanded), depthwise (its input + its
// output `dw`, + x kept for the residual) and project (dw + out, + x for the residual). Bytes. The layers are
// counted as they would run: the depthwise in place (its input + `dw_headroom` instead of + dw) where in_place_pays
// says so for its input (`dw_headroom`: dw_in_place_headroom at stride 1, else kNotInPlace), since a block not fused
// runs that way; comparing with the larger out-of-place step would fuse blocks whose layers need fewer bytes.
// Latency is not a term: fused and layer-by-layer measured alike (within noise) on small32 networks and MobileNetV2
// at 1 and 2 threads, and a deterministic rule keeps the arena predictable from the architecture.
// block_layers_bytes: that fullest step of the layers.
inline size_t block_layers_bytes(size_t x, size_t expanded, size_t dw, size_t out, bool expand, bool residual,
                                 int64_t dw_headroom) {
  const size_t keep = residual ? x : 0;
  const size_t dw_in = expand ? expanded : x;  // without expand the depthwise reads x, which a residual keeps
  const size_t dw_out = in_place_pays(dw_headroom, dw_in, !expand && residual) ? static_cast<size_t>(dw_headroom) : dw;
  return std::max({expand ? x + expanded : 0, (expand ? expanded + keep : x) + dw_out, dw + out + keep});
}

inline bool fused_block_pays(size_t x, size_t expanded, size_t dw, size_t out, size_t scratch, bool expand,
                             bool residual, int64_t dw_headroom) {
  return x + out + scratch <= block_layers_bytes(x, expanded, dw, out, expand, residual, dw_headroom);
}

// The one rule for fusing the stem into the first block (FusedBlock with a stem head; the Python executor,
// nas.kernels.memory's prediction and the C runtime all call it): where the first block has no expand layer and no
// residual (which would read the stem output), the fused step (network input `x`, its output `out` and its band
// buffers `scratch` alive) needs fewer bytes than the steps it replaces as they would run: the stem (x + the stem
// output `stem`), then the block's depthwise -> project as fused_block_pays would run them (its own fused step
// with `block_scratch` band buffers, or its layers, the depthwise in place where in_place_pays says so:
// `dw_headroom`), or, without project (a block with squeeze-excite: `out` is the depthwise output `dw`), the
// depthwise step alone. Bytes. Strictly fewer: at a tie the layers run (nothing to gain, and their steps are the
// ones the latency tables time). One step's bytes are not the arena's: callers also require the network's arena
// to be smaller with the fused step than without (nas.kernels.memory.stem_lowers_arena, capi.cpp), since the
// greedy placement can fit the later steps worse around it.
inline bool stem_fused_pays(size_t x, size_t stem, size_t dw, size_t out, size_t scratch, bool project,
                            bool residual, int64_t dw_headroom, size_t block_scratch) {
  if (residual) return false;
  size_t block;
  if (project) {
    const size_t layers = block_layers_bytes(stem, 0, dw, out, false, false, dw_headroom);
    block = stem + out + block_scratch <= layers ? stem + out + block_scratch : layers;
  } else {
    block = stem + (in_place_pays(dw_headroom, stem, false) ? static_cast<size_t>(dw_headroom) : dw);
  }
  return x + out + scratch < std::max(x + stem, block);
}

// Global average pool: out[b, c] = rne(clamp(float32(sum_p x[b, p, c] - hw * in_zp) * scale)) + out_zp.
class Pool {
 public:
  Pool(int hw, int in_zp, int32_t multiplier, int32_t shift, int out_zp, const std::string& isa);

  int hw() const { return a_.hw; }
  // x [b][h][w][c] with h * w == hw -> out [b][c], uint8.
  Task task(const uint8_t* x, int b, int h, int w, int c, uint8_t* out) const;
  void run_raw(const uint8_t* x, int batch, int c, uint8_t* out, int threads) const;

 private:
  const Isa* isa_ = nullptr;
  PoolArgs a_;
};

// Squeeze-and-excitation: pool -> fc1 (ReLU) -> fc2 (hard-sigmoid via LUT, gate scale 1/255) -> scale.
class SqueezeExcite {
 public:
  SqueezeExcite(std::shared_ptr<Pool> pool, std::shared_ptr<Gemm> fc1, std::shared_ptr<Gemm> fc2, int in_zp,
                int32_t multiplier, int32_t shift, int out_zp, const std::string& isa);

  int c() const { return fc1_->k(); }
  // x [b][h][w][c] with h * w == the pool's hw -> out [b][h][w][c], uint8; out may be x (in place), no other
  // overlap.
  Task task(const uint8_t* x, int b, int h, int w, uint8_t* out) const;

 private:
  void run_raw(const uint8_t* xp, uint8_t* op, int b, int hw, int c, int threads) const;

  const Isa* isa_ = nullptr;
  std::shared_ptr<Pool> pool_;
  std::shared_ptr<Gemm> fc1_, fc2_;
  ScaleArgs s_;
};

// A fixed sequence of op calls on fixed buffers (a whole network), run in one call.
class Plan {
 public:
  void add(Task t) { tasks_.push_back(std::move(t)); }
  void run(int threads) const;
  size_t size() const { return tasks_.size(); }

 private:
  std::vector<Task> tasks_;
};

// One arena for a network's activation buffers. Buffer i is written at step first[i] and last read at step
// last[i] (inclusive); two buffers whose steps overlap never share a byte, others may. Each buffer goes to the
// lowest offset that fits between the buffers already placed whose lives overlap its own (TF Lite Micro's and
// TinyEngine's greedy planners), in the best of four orders (largest first, largest size x lifetime first,
// buffer (execution) order and its reverse); offsets are multiples of `align`. Deterministic.
//
// In place: buffer i may be written over buffer input[i] < i (the input of the step first[i]) at `headroom[i]`
// bytes before it (kNotInPlace: never; empty vectors: none may). It is where in_place_pays says so (input[i] read
// by no step after first[i]); then offsets[i] = offsets[input[i]] - headroom[i] and the two share bytes. Such
// buffers are placed as one unit (each member still clear of every other buffer alive with it), so the bytes of the
// input past the output's end are free again once the step has run, and the headroom is taken only from the step.
struct ArenaPlan {
  std::vector<size_t> offsets;  // per buffer, in bytes from the arena's start
  size_t bytes = 0;             // the arena's size: the peak of live bytes under this plan
  std::vector<bool> in_place;   // per buffer: written over its input
};
ArenaPlan plan_arena(const std::vector<size_t>& sizes, const std::vector<int>& first, const std::vector<int>& last,
                     size_t align = 64, const std::vector<int>& input = {},
                     const std::vector<int64_t>& headroom = {});

// float32 NCHW -> uint8 NHWC: clamp(round_half_even(x / scale) + zp, 0, 255), same as quant.quantize_input.
void quantize_nchw(const float* x, int n, int c, int h, int w, float scale, int zp, uint8_t* out);

}  // namespace nask
