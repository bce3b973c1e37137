// pybind11 bindings: NumPy arrays checked and turned into the pointers of the pybind-free ops (ops.h), which run
// without the GIL. Array checks: validate.h; the ops, their parameter checks and Plan: ops.h.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "config.h"
#include "ops.h"
#include "validate.h"

#ifndef NASK_BUILD_FLAGS
#define NASK_BUILD_FLAGS "unknown"
#endif
#ifndef NASK_SOURCE_HASH
#define NASK_SOURCE_HASH "unknown"
#endif

namespace nask {
namespace {

// ---------------------------------------------------------------- op construction from NumPy arrays
// The requantization arrays of an op, checked; they stay referenced while the op is built.
struct PyRequant {
  py::array multiplier, shift, lut;
  RequantParams p;

  PyRequant(int n, const py::object& mult_o, const py::object& shift_o, int out_zp, int act_min, int act_max,
            const py::object& lut_o) {
    multiplier = need<int32_t>(mult_o, "multiplier", {n});
    shift = need<int32_t>(shift_o, "shift", {n});
    p.multiplier = static_cast<const int32_t*>(multiplier.data());
    p.shift = static_cast<const int32_t*>(shift.data());
    p.out_zp = out_zp;
    p.act_min = act_min;
    p.act_max = act_max;
    if (!lut_o.is_none()) {
      lut = need<uint8_t>(lut_o, "lut", {256});
      p.lut = static_cast<const uint8_t*>(lut.data());
    }
  }
};

std::shared_ptr<Gemm> make_gemm(const py::object& weight, const py::object& bias, int in_zp,
                                 const py::object& multiplier, const py::object& shift, int out_zp, int act_min,
                                 int act_max, const py::object& lut, int bits, const py::object& sub_scales,
                                 int group_size, const std::string& isa, bool out_int32, const py::object& residual) {
  py::array w = need<int8_t>(weight, "weight", {-1, -1});
  GemmParams p;
  p.n = static_cast<int>(w.shape(0));
  p.k = static_cast<int>(w.shape(1));
  p.weight = static_cast<const int8_t*>(w.data());
  py::array b = need<int32_t>(bias, "bias", {p.n});
  p.bias = static_cast<const int32_t*>(b.data());
  const PyRequant rq(p.n, multiplier, shift, out_zp, act_min, act_max, lut);
  p.requant = rq.p;
  p.in_zp = in_zp;
  p.bits = bits;
  py::array subs;
  if (!sub_scales.is_none()) {
    subs = need<int32_t>(sub_scales, "sub_scales", {p.n, -1});
    p.sub_scales = static_cast<const int32_t*>(subs.data());
    p.sub_groups = static_cast<int>(subs.shape(1));
  }
  p.group_size = group_size;
  p.out_int32 = out_int32;
  if (!residual.is_none()) {
    const auto t = residual.cast<std::tuple<int, int32_t, int32_t>>();
    p.residual = ResidualParams{std::get<0>(t), std::get<1>(t), std::get<2>(t)};
  }
  p.isa = isa;
  return std::make_shared<Gemm>(p);
}

std::shared_ptr<Conv> make_conv(const py::object& weight, int stride, const py::object& bias, int in_zp,
                                const py::object& multiplier, const py::object& shift, int out_zp, int act_min,
                                int act_max, const py::object& lut, const std::string& isa) {
  py::array w = need<int8_t>(weight, "weight", {-1, -1, -1, -1});
  ConvParams p;
  p.cout = static_cast<int>(w.shape(0));
  p.kh = static_cast<int>(w.shape(1));
  p.kw = static_cast<int>(w.shape(2));
  p.cin = static_cast<int>(w.shape(3));
  p.weight = static_cast<const int8_t*>(w.data());
  p.stride = stride;
  py::array b = need<int32_t>(bias, "bias", {p.cout});
  p.bias = static_cast<const int32_t*>(b.data());
  p.in_zp = in_zp;
  const PyRequant rq(p.cout, multiplier, shift, out_zp, act_min, act_max, lut);
  p.requant = rq.p;
  p.isa = isa;
  return std::make_shared<Conv>(p);
}

std::shared_ptr<Depthwise> make_depthwise(const py::object& weight, int stride, const py::object& bias, int in_zp,
                                          const py::object& multiplier, const py::object& shift, int out_zp,
                                          int act_min, int act_max, const py::object& lut, const std::string& isa) {
  py::array w = need<int8_t>(weight, "weight", {-1, -1, -1});
  DepthwiseParams p;
  p.c = static_cast<int>(w.shape(0));
  p.kh = static_cast<int>(w.shape(1));
  p.kw = static_cast<int>(w.shape(2));
  p.weight = static_cast<const int8_t*>(w.data());
  p.stride = stride;
  py::array b = need<int32_t>(bias, "bias", {p.c});
  p.bias = static_cast<const int32_t*>(b.data());
  p.in_zp = in_zp;
  const PyRequant rq(p.c, multiplier, shift, out_zp, act_min, act_max, lut);
  p.requant = rq.p;
  p.isa = isa;
  return std::make_shared<Depthwise>(p);
}

// ---------------------------------------------------------------- binding arrays to op calls
const uint8_t* u8(const py::array& a) { return static_cast<const uint8_t*>(a.data()); }

Task gemm_task(const Gemm& g, const py::object& x_o, const py::object& out_o, const py::object& res_o) {
  py::array x = need<uint8_t>(x_o, "x", {-1, g.k()});
  const int m = static_cast<int>(x.shape(0));
  py::array out = g.out_int32() ? need<int32_t>(out_o, "out", {m, g.n()}) : need<uint8_t>(out_o, "out", {m, g.n()});
  need_writeable(out, "out");
  const uint8_t* res = nullptr;
  if (!res_o.is_none()) res = u8(need<uint8_t>(res_o, "residual", {m, g.n()}));
  return g.task(u8(x), m, out.mutable_data(), res);
}

Task conv_task(const Conv& c, const py::object& x_o, const py::object& out_o) {
  py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, c.cin()});
  const int b = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1)), w = static_cast<int>(x.shape(2));
  py::array out = need<uint8_t>(out_o, "out", {b, c.out_size(h), c.out_size(w), c.cout()});
  need_writeable(out, "out");
  return c.task(u8(x), b, h, w, static_cast<uint8_t*>(out.mutable_data()));
}

Task depthwise_task(const Depthwise& d, const py::object& x_o, const py::object& out_o) {
  py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, d.c()});
  const int b = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1)), w = static_cast<int>(x.shape(2));
  py::array out = need<uint8_t>(out_o, "out", {b, d.out_size(h), d.out_size(w), d.c()});
  need_writeable(out, "out");
  return d.task(u8(x), b, h, w, static_cast<uint8_t*>(out.mutable_data()));
}

Task pool_task(const Pool& p, const py::object& x_o, const py::object& out_o) {
  py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, -1});
  const int b = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1)), w = static_cast<int>(x.shape(2));
  const int c = static_cast<int>(x.shape(3));
  py::array out = need<uint8_t>(out_o, "out", {b, c});
  need_writeable(out, "out");
  return p.task(u8(x), b, h, w, c, static_cast<uint8_t*>(out.mutable_data()));
}

Task se_task(const SqueezeExcite& s, const py::object& x_o, const py::object& out_o) {
  py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, s.c()});
  const int b = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1)), w = static_cast<int>(x.shape(2));
  py::array out = need<uint8_t>(out_o, "out", {b, h, w, s.c()});
  need_writeable(out, "out");
  return s.task(u8(x), b, h, w, static_cast<uint8_t*>(out.mutable_data()));
}

// scratch: None (allocated per call) or a 1-d uint8 array of `slots` x the block's scratch_bytes(h, w).
Task fused_task(const FusedBlock& f, const py::object& x_o, const py::object& out_o, const py::object& scratch_o) {
  py::array x = need<uint8_t>(x_o, "x", {-1, -1, -1, f.cin()});
  const int b = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1)), w = static_cast<int>(x.shape(2));
  py::array out = need<uint8_t>(out_o, "out", {b, f.out_size(h), f.out_size(w), f.cout()});
  need_writeable(out, "out");
  uint8_t* scratch = nullptr;
  int slots = 0;
  if (!scratch_o.is_none()) {
    py::array sa = need<uint8_t>(scratch_o, "scratch", {-1});
    need_writeable(sa, "scratch");
    const size_t per = f.scratch_bytes(h, w), have = static_cast<size_t>(sa.size());
    if (have < per)
      throw py::value_error("scratch: needs at least " + std::to_string(per) + " bytes (one thread), got " +
                            std::to_string(have));
    scratch = static_cast<uint8_t*>(sa.mutable_data());
    slots = static_cast<int>(std::min<size_t>(have / per, 1024));
  }
  return f.task(u8(x), b, h, w, static_cast<uint8_t*>(out.mutable_data()), scratch, slots);
}

// Runs one op call without the GIL.
void run_task(const Task& t, int threads) {
  py::gil_scoped_release nogil;
  t(threads);
}

// A Plan over NumPy arrays: the raw pointers stay valid while the arrays are referenced here.
struct PyPlan {
  Plan plan;
  py::tuple keep;

  PyPlan(const py::list& ops, const py::list& xs, const py::list& outs, const py::list& residuals,
         const py::object& scratch_o) {
    const size_t n = ops.size();
    if (xs.size() != n || outs.size() != n || residuals.size() != n)
      throw py::value_error("Plan: ops, xs, outs and residuals must have the same length");
    py::list scratch;
    if (scratch_o.is_none()) {
      for (size_t i = 0; i < n; ++i) scratch.append(py::none());
    } else {
      scratch = scratch_o.cast<py::list>();
      if (scratch.size() != n) throw py::value_error("Plan: scratch must have one entry (or None) per op");
    }
    for (size_t i = 0; i < n; ++i) {
      const py::object op = ops[i];
      if (py::isinstance<Gemm>(op)) plan.add(gemm_task(op.cast<const Gemm&>(), xs[i], outs[i], residuals[i]));
      else if (py::isinstance<Conv>(op)) plan.add(conv_task(op.cast<const Conv&>(), xs[i], outs[i]));
      else if (py::isinstance<Depthwise>(op)) plan.add(depthwise_task(op.cast<const Depthwise&>(), xs[i], outs[i]));
      else if (py::isinstance<Pool>(op)) plan.add(pool_task(op.cast<const Pool&>(), xs[i], outs[i]));
      else if (py::isinstance<SqueezeExcite>(op)) plan.add(se_task(op.cast<const SqueezeExcite&>(), xs[i], outs[i]));
      else if (py::isinstance<FusedBlock>(op))
        plan.add(fused_task(op.cast<const FusedBlock&>(), xs[i], outs[i], scratch[i]));
      else throw py::type_error("Plan: ops[" + std::to_string(i) + "] is not a kernel op");
      if (!residuals[i].is_none() && !py::isinstance<Gemm>(op))
        throw py::value_error("Plan: residuals[" + std::to_string(i) + "]: only GEMMs take a residual");
      if (!scratch[i].is_none() && !py::isinstance<FusedBlock>(op))
        throw py::value_error("Plan: scratch[" + std::to_string(i) + "]: only fused blocks take scratch");
    }
    keep = py::make_tuple(ops, xs, outs, residuals, scratch);
  }

  void run(int threads) const {
    check_threads(threads);
    py::gil_scoped_release nogil;
    plan.run(threads);
  }
};

// float32 NCHW -> uint8 NHWC (nask::quantize_nchw).
void py_quantize_nchw(const py::object& x_o, float scale, int zp, const py::object& out_o) {
  py::array x = need<float>(x_o, "x", {-1, -1, -1, -1});
  const int n = static_cast<int>(x.shape(0)), c = static_cast<int>(x.shape(1));
  const int h = static_cast<int>(x.shape(2)), w = static_cast<int>(x.shape(3));
  py::array out = need<uint8_t>(out_o, "out", {n, h, w, c});
  need_writeable(out, "out");
  const float* xp = static_cast<const float*>(x.data());
  uint8_t* op = static_cast<uint8_t*>(out.mutable_data());
  py::gil_scoped_release nogil;
  quantize_nchw(xp, n, c, h, w, scale, zp, op);
}

// Weight gradient of a float32 NHWC depthwise convolution (training); out is [k * k, C], tap-major.
void depthwise_weight_grad(const py::object& x_o, const py::object& g_o, int k, int stride, int pad,
                           const py::object& out_o, int threads, const std::string& isa_name) {
  py::array x = need<float>(x_o, "x", {-1, -1, -1, -1});
  const int n = static_cast<int>(x.shape(0)), h = static_cast<int>(x.shape(1));
  const int w = static_cast<int>(x.shape(2)), c = static_cast<int>(x.shape(3));
  check_range(k, 1, 15, "k");
  check_range(stride, 1, 4, "stride");
  check_range(pad, 0, k - 1, "pad");
  const int ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
  if (ho < 1 || wo < 1) throw py::value_error("x: input " + shape_str(x) + " is smaller than the kernel");
  py::array g = need<float>(g_o, "grad_out", {n, ho, wo, c});
  py::array out = need<float>(out_o, "out", {k * k, c});
  need_writeable(out, "out");
  if (threads < 1) throw py::value_error("threads: must be >= 1");
  const auto dw_weight_grad = checked_isa(isa_name).kernels.dw_weight_grad;
  const int chunks = (n + kDwGradChunk - 1) / kDwGradChunk;
  std::vector<float> partial(static_cast<size_t>(chunks) * k * k * c);
  DwGradArgs a;
  a.batch = n; a.h = h; a.w = w; a.c = c; a.k = k; a.stride = stride; a.pad = pad; a.ho = ho; a.wo = wo;
  a.x = static_cast<const float*>(x.data());
  a.g = static_cast<const float*>(g.data());
  a.partial = partial.data();
  a.out = static_cast<float*>(out.mutable_data());
  py::gil_scoped_release nogil;
  dw_weight_grad(a, threads);
}

// Fake quantization of a float32 array (any shape, C-contiguous) on the grid [qmin, qmax]: out and a 0/1 mask of
// the elements inside the grid (the straight-through gradient), as PyTorch's fake_quantize_per_tensor_affine.
void fake_quant(const py::object& x_o, float scale, int zero_point, int qmin, int qmax, const py::object& out_o,
                const py::object& mask_o, int threads, const std::string& isa_name) {
  if (!py::isinstance<py::array>(x_o)) throw py::type_error("x: expected a numpy array of float32");
  py::array xa = py::reinterpret_borrow<py::array>(x_o);
  std::vector<py::ssize_t> dims(xa.shape(), xa.shape() + xa.ndim());
  py::array x = need<float>(x_o, "x", dims);
  py::array out = need<float>(out_o, "out", dims);
  py::array mask = need<uint8_t>(mask_o, "mask", dims);
  need_writeable(out, "out");
  need_writeable(mask, "mask");
  if (!(scale > 0.0f) || !std::isfinite(scale)) throw py::value_error("scale: expected a positive finite value");
  if (qmin > qmax) throw py::value_error("qmin: must not exceed qmax");
  if (threads < 1) throw py::value_error("threads: must be >= 1");
  const auto vec = checked_isa(isa_name).kernels.fake_quant;  // nullptr: scalar loop only
  const int64_t n = static_cast<int64_t>(x.size());
  const float* xp = static_cast<const float*>(x.data());
  float* op = static_cast<float*>(out.mutable_data());
  uint8_t* mp = static_cast<uint8_t*>(mask.mutable_data());
  const float inv = 1.0f / scale, zp = static_cast<float>(zero_point);
  const float lo = static_cast<float>(qmin), hi = static_cast<float>(qmax);
  constexpr int64_t kChunk = 1 << 16;
  const int tasks = static_cast<int>((n + kChunk - 1) / kChunk);
  py::gil_scoped_release nogil;
  par(threads, tasks, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int64_t b = t * kChunk, e = std::min(n, b + kChunk);
      int64_t i = vec ? b + vec(xp + b, e - b, scale, inv, zp, lo, hi, op + b, mp + b) : b;
      for (; i < e; ++i) fake_quant_value(xp[i], scale, inv, zp, lo, hi, op + i, mp + i);
    }
  });
}

// The depthwise part of a fused step (channels, kernel, stride, band rows), as the scratch-size queries take it.
void check_fused_depthwise(int c, int k, int stride, int band_rows) {
  check_range(c, 1, 1 << 20, "c");
  check_range(k, 3, 7, "k");
  check_range(stride, 1, 2, "stride");
  check_range(band_rows, 0, 1 << 20, "band_rows");
}

}  // namespace
}  // namespace nask

PYBIND11_MODULE(_C, m) {
  using namespace nask;
  m.doc() = "nas low-bit CPU kernels (int8 / int4-weight, NHWC, AVX512-VNNI / AVX2 / scalar reference)";
  m.attr("build_flags") = NASK_BUILD_FLAGS;
  m.attr("source_hash") = NASK_SOURCE_HASH;
  m.attr("compiler") = __VERSION__;
  m.attr("residual_bits") = kResidualBits;
  py::tuple isas(all_isas().size());
  for (size_t i = 0; i < all_isas().size(); ++i) isas[i] = all_isas()[i].name;
  m.attr("isas") = isas;  // weakest first: nas.kernels.isa.ISAS
  m.def("isa_supported", [](const std::string& s) { return parse_isa(s).supported(); }, py::arg("isa"),
        "Whether this CPU can run the kernels of the named ISA.");
  m.def("quantize_nchw", &py_quantize_nchw, py::arg("x"), py::arg("scale"), py::arg("zero_point"), py::arg("out"),
        "float32 NCHW -> uint8 NHWC on an affine grid (round half to even).");
  m.def("depthwise_weight_grad", &depthwise_weight_grad, py::arg("x"), py::arg("grad_out"), py::arg("k"),
        py::arg("stride"), py::arg("pad"), py::arg("out"), py::arg("threads"), py::arg("isa"),
        "Float32 weight gradient of an NHWC depthwise convolution (training): out[i * k + j, c]; the result does "
        "not depend on the thread count.");
  m.def("fake_quant", &fake_quant, py::arg("x"), py::arg("scale"), py::arg("zero_point"), py::arg("qmin"),
        py::arg("qmax"), py::arg("out"), py::arg("mask"), py::arg("threads"), py::arg("isa"),
        "Float32 fake quantization: out = (clamp(rne(x / scale) + zp, qmin, qmax) - zp) * scale (x times the float "
        "reciprocal of scale, as PyTorch) and mask = 1 where rne(x / scale) + zp lies in [qmin, qmax].");
  py::class_<Gemm, std::shared_ptr<Gemm>>(m, "Gemm")
      .def(py::init(&make_gemm), py::arg("weight"), py::arg("bias"), py::arg("in_zp"), py::arg("multiplier"),
           py::arg("shift"), py::arg("out_zp"), py::arg("act_min"), py::arg("act_max"), py::arg("lut"),
           py::arg("bits"), py::arg("sub_scales"), py::arg("group_size"), py::arg("isa"), py::arg("out_int32"),
           py::arg("residual"))
      .def(
          "run",
          [](const Gemm& g, const py::object& x, const py::object& out, const py::object& res, int threads) {
            check_threads(threads);
            run_task(gemm_task(g, x, out, res), threads);
          },
          py::arg("x"), py::arg("out"), py::arg("residual"), py::arg("threads"))
      .def_property_readonly("n", &Gemm::n)
      .def_property_readonly("k", &Gemm::k)
      .def_property_readonly("isa", [](const Gemm& g) { return g.isa().name; })
      .def_property_readonly("packed_bytes", &Gemm::packed_bytes);
  py::class_<Conv, std::shared_ptr<Conv>>(m, "Conv")
      .def(py::init(&make_conv), py::arg("weight"), py::arg("stride"), py::arg("bias"), py::arg("in_zp"),
           py::arg("multiplier"), py::arg("shift"), py::arg("out_zp"), py::arg("act_min"), py::arg("act_max"),
           py::arg("lut"), py::arg("isa"))
      .def(
          "run",
          [](const Conv& c, const py::object& x, const py::object& out, int threads) {
            check_threads(threads);
            run_task(conv_task(c, x, out), threads);
          },
          py::arg("x"), py::arg("out"), py::arg("threads"));
  py::class_<Depthwise, std::shared_ptr<Depthwise>>(m, "Depthwise")
      .def(py::init(&make_depthwise), py::arg("weight"), py::arg("stride"), py::arg("bias"), py::arg("in_zp"),
           py::arg("multiplier"), py::arg("shift"), py::arg("out_zp"), py::arg("act_min"), py::arg("act_max"),
           py::arg("lut"), py::arg("isa"))
      .def(
          "run",
          [](const Depthwise& d, const py::object& x, const py::object& out, int threads) {
            check_threads(threads);
            run_task(depthwise_task(d, x, out), threads);
          },
          py::arg("x"), py::arg("out"), py::arg("threads"));
  py::class_<Pool, std::shared_ptr<Pool>>(m, "Pool")
      .def(py::init<int, int, int32_t, int32_t, int, const std::string&>(), py::arg("hw"), py::arg("in_zp"),
           py::arg("multiplier"), py::arg("shift"), py::arg("out_zp"), py::arg("isa"))
      .def(
          "run",
          [](const Pool& p, const py::object& x, const py::object& out, int threads) {
            check_threads(threads);
            run_task(pool_task(p, x, out), threads);
          },
          py::arg("x"), py::arg("out"), py::arg("threads"));
  m.def(
      "plan_arena",
      [](const std::vector<size_t>& sizes, const std::vector<int>& first, const std::vector<int>& last,
         size_t align, const std::vector<int>& input, const std::vector<int64_t>& headroom) {
        const ArenaPlan p = plan_arena(sizes, first, last, align, input, headroom);
        return py::make_tuple(p.offsets, p.bytes, std::vector<bool>(p.in_place));
      },
      py::arg("sizes"), py::arg("first"), py::arg("last"), py::arg("align") = 64,
      py::arg("input") = std::vector<int>{}, py::arg("headroom") = std::vector<int64_t>{},
      "(offsets, arena bytes, in place) of buffers live from step first[i] to last[i] in one arena, buffer i written "
      "over buffer input[i] at headroom[i] bytes before it where ops.h in_place_pays says so (ops.h plan_arena)");
  m.attr("NOT_IN_PLACE") = kNotInPlace;
  m.def("dw_in_place_headroom",
        [](int threads, int w, int c, int k) {
          check_threads(threads);
          check_range(w, 1, 1 << 20, "w");
          check_range(c, 1, 1 << 20, "c");
          check_range(k, 3, 7, "k");
          return dw_in_place_headroom(threads, w, c, k);
        },
        py::arg("threads"), py::arg("w"), py::arg("c"), py::arg("k"),
        "Bytes an in-place stride-1 depthwise's output starts before its input on `threads` threads (ops.h).");
  m.def("in_place_pays", &in_place_pays, py::arg("headroom"), py::arg("input_bytes"), py::arg("input_read_later"),
        "Whether a step runs in place (ops.h in_place_pays; headroom NOT_IN_PLACE: its op cannot).");
  py::class_<PyPlan>(m, "Plan")
      .def(py::init<const py::list&, const py::list&, const py::list&, const py::list&, const py::object&>(),
           py::arg("ops"), py::arg("xs"), py::arg("outs"), py::arg("residuals"), py::arg("scratch") = py::none())
      .def("run", &PyPlan::run, py::arg("threads"))
      .def("__len__", [](const PyPlan& p) { return p.plan.size(); });
  py::class_<FusedBlock>(m, "FusedBlock")
      .def(py::init<std::shared_ptr<Gemm>, std::shared_ptr<Depthwise>, std::shared_ptr<Gemm>, int,
                    std::shared_ptr<Conv>>(),
           py::arg("expand"), py::arg("dw"), py::arg("project"), py::arg("band_rows") = 0,
           py::arg("stem") = py::none())
      .def(
          "run",
          [](const FusedBlock& f, const py::object& x, const py::object& out, int threads,
             const py::object& scratch) {
            check_threads(threads);
            run_task(fused_task(f, x, out, scratch), threads);
          },
          py::arg("x"), py::arg("out"), py::arg("threads"), py::arg("scratch") = py::none())
      .def("scratch_bytes", py::overload_cast<int, int>(&FusedBlock::scratch_bytes, py::const_), py::arg("h"),
           py::arg("w"), "Scratch bytes per thread for h x w input.");
  m.def("fused_scratch_bytes",
        [](int h, int w, int c, int k, int stride, bool expand, int band_rows) {
          check_range(h, 1, 1 << 20, "h");
          check_range(w, 1, 1 << 20, "w");
          check_fused_depthwise(c, k, stride, band_rows);
          return FusedBlock::scratch_bytes(h, w, c, k, stride, expand, band_rows);
        },
        py::arg("h"), py::arg("w"), py::arg("c"), py::arg("k"), py::arg("stride"), py::arg("expand"),
        py::arg("band_rows") = 0,
        "Scratch bytes per thread of a fused block (ops.h FusedBlock) on h x w input, c depthwise channels.");
  m.def("fused_stem_scratch_bytes",
        [](int h, int w, int cin, int stem_k, int stem_stride, int c, int k, int stride, bool project,
           int band_rows) {
          check_range(h, 1, 1 << 20, "h");
          check_range(w, 1, 1 << 20, "w");
          check_range(cin, 1, 1 << 20, "cin");
          check_range(stem_k, 1, 7, "stem_k");
          check_range(stem_stride, 1, 2, "stem_stride");
          check_fused_depthwise(c, k, stride, band_rows);
          return FusedBlock::stem_scratch_bytes(h, w, cin, stem_k, stem_stride, c, k, stride, project, band_rows);
        },
        py::arg("h"), py::arg("w"), py::arg("cin"), py::arg("stem_k"), py::arg("stem_stride"), py::arg("c"),
        py::arg("k"), py::arg("stride"), py::arg("project"), py::arg("band_rows") = 0,
        "Scratch bytes per thread of a fused step with a stem head (ops.h FusedBlock) on h x w x cin network input.");
  m.def("stem_fused_pays", &stem_fused_pays, py::arg("x"), py::arg("stem"), py::arg("dw"), py::arg("out"),
        py::arg("scratch"), py::arg("project"), py::arg("residual"), py::arg("dw_headroom"), py::arg("block_scratch"),
        "Whether the stem fuses into the first block (ops.h stem_fused_pays: fewer bytes than the steps it replaces).");
  m.def("fused_band_rows",
        [](int h, int w, int c, int k, int stride, int band_rows, bool stem) {
          return FusedBlock::band_rows(h, w, c, k, stride, band_rows,
                                       stem ? FusedBlock::kStemBandBytes : FusedBlock::kBandBytes);
        },
        py::arg("h"), py::arg("w"), py::arg("c"), py::arg("k"), py::arg("stride"), py::arg("band_rows") = 0,
        py::arg("stem") = false,
        "Output rows per band of a fused block (ops.h FusedBlock) on h x w depthwise input; stem: with a stem head.");
  m.def("fused_scratch_slots", &fused_scratch_slots, py::arg("threads"), py::arg("rows"),
        "Band-buffer slots of a fused step on `threads` threads over `rows` output rows (ops.h).");
  m.def("fused_block_pays", &fused_block_pays, py::arg("x"), py::arg("expanded"), py::arg("dw"), py::arg("out"),
        py::arg("scratch"), py::arg("expand"), py::arg("residual"), py::arg("dw_headroom"),
        "Whether a block runs fused (ops.h fused_block_pays: its fused step needs no more bytes than its layers').");
  py::class_<SqueezeExcite>(m, "SqueezeExcite")
      .def(py::init<std::shared_ptr<Pool>, std::shared_ptr<Gemm>, std::shared_ptr<Gemm>, int, int32_t, int32_t, int,
                    const std::string&>(),
           py::arg("pool"), py::arg("fc1"), py::arg("fc2"), py::arg("in_zp"), py::arg("multiplier"), py::arg("shift"),
           py::arg("out_zp"), py::arg("isa"))
      .def(
          "run",
          [](const SqueezeExcite& s, const py::object& x, const py::object& out, int threads) {
            check_threads(threads);
            run_task(se_task(s, x, out), threads);
          },
          py::arg("x"), py::arg("out"), py::arg("threads"));
}
