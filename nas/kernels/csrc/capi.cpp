// The C API (nas_runtime.h): an exported checkpoint directory (nas/export/checkpoint.py) read without Python and run
// on the ops of ops.h exactly as nas.kernels.executor.QuantizedNetwork.run runs it by default (the blocks where
// ops.h fused_block_pays says so as FusedBlock steps, the stem inside the first block's step where stem_fused_pays
// says so and the arena shrinks, every buffer in the same arena plan):
//   metadata.json        format, major version and the SHA-256 of every other file (checked before anything is read)
//   arch.json            the input resolution and channels
//   network.json         input grid, layers (op specs as nas.kernels.ops dataclasses), logit scales; arrays are
//                        {"__array__": key} references into weights.safetensors, int4 weights packed two per byte
//   weights.safetensors  8-byte little-endian header length, JSON header, raw little-endian data
// Every problem with a file throws Error naming it; the C functions turn that into a status and nas_last_error().
#include "nas_runtime.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>

#include "json.h"
#include "ops.h"
#include "sha256.h"

namespace {

using nask::json::Value;
using Kind = Value::Kind;
using Shape = std::vector<int64_t>;

struct Error : std::runtime_error {
  nas_status code;
  Error(nas_status c, const std::string& msg) : std::runtime_error(msg), code(c) {}
};

[[noreturn]] void bad(const std::string& where, const std::string& what) { throw Error(NAS_ERR_FORMAT, where + ": " + what); }

std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    throw Error(NAS_ERR_IO, path.string() + ": missing (not a complete nas checkpoint)");
  std::ifstream f(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (!f.good() && !f.eof()) throw Error(NAS_ERR_IO, path.string() + ": unreadable");
  return s;
}

Value parse_json(const std::string& text, const std::string& where) {
  try {
    return nask::json::parse(text);
  } catch (const std::runtime_error& e) {
    bad(where, std::string("corrupt or truncated JSON (") + e.what() + ")");
  }
}

// ---------------------------------------------------------------- JSON fields (`where` names file and key)
const Value& need_kind(const Value& v, Kind kind, const std::string& where) {
  if (v.kind != kind)
    bad(where, std::string("expected ") + nask::json::kind_name(kind) + ", got " + nask::json::kind_name(v.kind));
  return v;
}

const Value& member(const Value& obj, const std::string& key, const std::string& where) {
  need_kind(obj, Kind::Object, where);
  const Value* v = obj.find(key);
  if (!v) bad(where, "missing entry '" + key + "'");
  return *v;
}

int64_t int_of(const Value& v, const std::string& where, int64_t lo = INT32_MIN, int64_t hi = INT32_MAX) {
  if (v.kind != Kind::Number || !v.is_int) bad(where, std::string("expected an integer, got ") + nask::json::kind_name(v.kind));
  if (v.integer < lo || v.integer > hi)
    bad(where, std::to_string(v.integer) + " outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v.integer;
}

// A dataclass object of `type` (its "__type__") with only the given fields, `required` of them mandatory; as
// checkpoint._decode, which calls the dataclass with the object's entries.
void need_type(const Value& obj, const char* type, const std::vector<std::string>& fields, size_t required,
               const std::string& where) {
  const Value& t = member(obj, "__type__", where);
  if (t.kind != Kind::String || t.str != type)
    bad(where, std::string("expected a ") + type + ", got " + (t.kind == Kind::String ? "'" + t.str + "'" : "?"));
  for (const auto& m : obj.members) {
    if (m.first == "__type__") continue;
    bool known = false;
    for (const auto& f : fields) known = known || f == m.first;
    if (!known) bad(where, std::string(type) + " has no field '" + m.first + "' (from another nas version?)");
  }
  for (size_t i = 0; i < required; ++i) member(obj, fields[i], where);
}

std::string shape_str(const Shape& s) { return nask::dims_str(s); }

// ---------------------------------------------------------------- safetensors
struct Tensor {
  std::string dtype;
  Shape shape;
  const uint8_t* data = nullptr;
  int64_t numel = 1;
};

int dtype_size(const std::string& d) {
  if (d == "BOOL" || d == "U8" || d == "I8") return 1;
  if (d == "I16" || d == "U16" || d == "F16" || d == "BF16") return 2;
  if (d == "I32" || d == "U32" || d == "F32") return 4;
  if (d == "I64" || d == "U64" || d == "F64") return 8;
  return 0;
}

std::map<std::string, Tensor> parse_safetensors(const std::string& bytes, const std::string& where) {
  if (bytes.size() < 8) bad(where, "truncated (no header)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  if (n > bytes.size() - 8) bad(where, "truncated (header length " + std::to_string(n) + " past the end)");
  const Value header = parse_json(bytes.substr(8, n), where + " header");
  need_kind(header, Kind::Object, where + " header");
  const uint8_t* data = reinterpret_cast<const uint8_t*>(bytes.data()) + 8 + n;
  const uint64_t size = bytes.size() - 8 - n;
  std::map<std::string, Tensor> out;
  for (const auto& [name, info] : header.members) {
    if (name == "__metadata__") continue;
    const std::string at = where + ": tensor '" + name + "'";
    Tensor t;
    const Value& dtype = need_kind(member(info, "dtype", at), Kind::String, at + " dtype");
    t.dtype = dtype.str;
    const int itemsize = dtype_size(t.dtype);
    if (!itemsize) bad(at, "unknown dtype '" + t.dtype + "'");
    for (const Value& d : need_kind(member(info, "shape", at), Kind::Array, at + " shape").items) {
      t.shape.push_back(int_of(d, at + " shape", 0, INT32_MAX));
      t.numel *= t.shape.back();
      if (t.numel > (int64_t(1) << 40)) bad(at, "shape too large");
    }
    const Value& offs = need_kind(member(info, "data_offsets", at), Kind::Array, at + " data_offsets");
    if (offs.items.size() != 2) bad(at, "data_offsets: expected [begin, end]");
    const int64_t b = int_of(offs.items[0], at + " data_offsets", 0, INT64_MAX);
    const int64_t e = int_of(offs.items[1], at + " data_offsets", 0, INT64_MAX);
    if (b > e || static_cast<uint64_t>(e) > size) bad(at, "data past the end of the file (truncated?)");
    if (e - b != t.numel * itemsize)
      bad(at, "holds " + std::to_string(e - b) + " bytes, its shape " + shape_str(t.shape) + " needs " +
                  std::to_string(t.numel * itemsize));
    t.data = data + b;
    out[name] = t;
  }
  return out;
}

// ---------------------------------------------------------------- network.json arrays
struct Arrays {
  const std::map<std::string, Tensor>& tensors;
  std::string weights_file;

  const Tensor& tensor(const Value& ref, const std::string& where) const {
    const Value& key = need_kind(member(ref, "__array__", where), Kind::String, where);
    const auto it = tensors.find(key.str);
    if (it == tensors.end()) bad(weights_file, "array '" + key.str + "' is missing");
    return it->second;
  }

  // " (weights.safetensors array 'key')": where an array with the wrong dtype came from.
  std::string origin(const Value& ref) const { return " (" + weights_file + " array '" + ref.find("__array__")->str + "')"; }

  static void check_shape(const Shape& got, const Shape& want, const std::string& where) {
    bool ok = got.size() == want.size();
    for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || got[i] == want[i];
    if (!ok) bad(where, "bad shape " + shape_str(got) + ", expected " + shape_str(want) + " (-1: any)");
  }

  // "dtype" (the type the array had before it was narrowed for storage) must be one of `allowed`, or absent.
  static void check_dtype_entry(const Value& ref, const std::vector<std::string>& allowed, const std::string& where) {
    const Value* d = ref.find("dtype");
    if (!d) return;
    need_kind(*d, Kind::String, where + " dtype");
    for (const auto& a : allowed)
      if (d->str == a) return;
    bad(where, "unsupported dtype '" + d->str + "'");
  }

  // int8 weights ([-8, 7] int4 values unpacked from two per byte when the reference says "int4").
  std::vector<int8_t> int8(const Value& ref, const Shape& want, Shape& shape, const std::string& where) const {
    const Tensor& t = tensor(ref, where);
    std::vector<int8_t> out;
    if (const Value* int4 = ref.find("int4")) {
      int64_t n = 1;
      shape.clear();
      for (const Value& d : need_kind(*int4, Kind::Array, where + " int4").items) {
        shape.push_back(int_of(d, where + " int4", 0, INT32_MAX));
        n *= shape.back();
        if (n > (int64_t(1) << 40)) bad(where, "int4 shape too large");
      }
      if (t.dtype != "U8" || t.shape.size() != 1 || t.numel != (n + 1) / 2)
        bad(weights_file, "array '" + member(ref, "__array__", where).str + "': expected " +
                              std::to_string((n + 1) / 2) + " uint8 bytes of packed int4 values");
      out.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        const int v = (t.data[i / 2] >> (i % 2 ? 4 : 0)) & 0xF;
        out[i] = static_cast<int8_t>(v > 7 ? v - 16 : v);
      }
    } else {
      check_dtype_entry(ref, {"int8"}, where);
      if (t.dtype != "I8") bad(where, "expected dtype I8, got " + t.dtype + origin(ref));
      shape = t.shape;
      out.assign(reinterpret_cast<const int8_t*>(t.data), reinterpret_cast<const int8_t*>(t.data) + t.numel);
    }
    check_shape(shape, want, where);
    return out;
  }

  // Integer arrays as int32 (bias, multipliers, shifts, group sub-scales); values must fit int32.
  std::vector<int32_t> int32(const Value& ref, const Shape& want, Shape& shape, const std::string& where) const {
    const Tensor& t = tensor(ref, where);
    check_dtype_entry(ref, {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}, where);
    shape = t.shape;
    check_shape(shape, want, where);
    std::vector<int32_t> out(t.numel);
    for (int64_t i = 0; i < t.numel; ++i) {
      const uint8_t* p = t.data + i * dtype_size(t.dtype);
      int64_t v = 0;
      if (t.dtype == "I8") v = static_cast<int8_t>(p[0]);
      else if (t.dtype == "U8") v = p[0];
      else if (t.dtype == "I16") v = static_cast<int16_t>(p[0] | p[1] << 8);
      else if (t.dtype == "U16") v = static_cast<uint16_t>(p[0] | p[1] << 8);
      else if (t.dtype == "I32" || t.dtype == "U32" || t.dtype == "I64" || t.dtype == "U64") {
        uint64_t u = 0;
        const int n = dtype_size(t.dtype);
        for (int j = n - 1; j >= 0; --j) u = (u << 8) | p[j];
        if (t.dtype == "I32") v = static_cast<int32_t>(static_cast<uint32_t>(u));
        else if (t.dtype == "U32") v = static_cast<int64_t>(u);
        else if (t.dtype == "I64") v = static_cast<int64_t>(u);
        else if (u > static_cast<uint64_t>(INT32_MAX)) bad(where, "value outside int32");
        else v = static_cast<int64_t>(u);
      } else {
        bad(where, "expected an integer dtype, got " + t.dtype + origin(ref));
      }
      if (v < INT32_MIN || v > INT32_MAX) bad(where, "value " + std::to_string(v) + " outside int32");
      out[i] = static_cast<int32_t>(v);
    }
    return out;
  }

  std::vector<uint8_t> uint8(const Value& ref, const Shape& want, const std::string& where) const {
    const Tensor& t = tensor(ref, where);
    check_dtype_entry(ref, {"uint8"}, where);
    if (t.dtype != "U8") bad(where, "expected dtype U8, got " + t.dtype + origin(ref));
    check_shape(t.shape, want, where);
    return std::vector<uint8_t>(t.data, t.data + t.numel);
  }

  std::vector<float> float32(const Value& ref, const Shape& want, const std::string& where) const {
    const Tensor& t = tensor(ref, where);
    check_dtype_entry(ref, {"float32"}, where);
    if (t.dtype != "F32") bad(where, "expected dtype F32, got " + t.dtype + origin(ref));
    check_shape(t.shape, want, where);
    std::vector<float> out(t.numel);
    std::memcpy(out.data(), t.data, out.size() * sizeof(float));  // little-endian file, little-endian CPU
    return out;
  }
};

// ---------------------------------------------------------------- op specs -> ops
struct RequantData {
  std::vector<int32_t> multiplier, shift;
  std::vector<uint8_t> lut;
  nask::RequantParams p;
};

RequantData requant(const Arrays& a, const Value& rq, int64_t n, const std::string& where) {
  need_type(rq, "Requant", {"multiplier", "shift", "out_zp", "act_min", "act_max", "lut"}, 3, where);
  RequantData r;
  Shape shape;
  r.multiplier = a.int32(*rq.find("multiplier"), {n}, shape, where + ".multiplier");
  r.shift = a.int32(*rq.find("shift"), {n}, shape, where + ".shift");
  r.p.multiplier = r.multiplier.data();
  r.p.shift = r.shift.data();
  r.p.out_zp = static_cast<int>(int_of(*rq.find("out_zp"), where + ".out_zp"));
  if (const Value* v = rq.find("act_min")) r.p.act_min = static_cast<int>(int_of(*v, where + ".act_min"));
  if (const Value* v = rq.find("act_max")) r.p.act_max = static_cast<int>(int_of(*v, where + ".act_max"));
  const Value* lut = rq.find("lut");
  if (lut && lut->kind != Kind::Null) {
    r.lut = a.uint8(*lut, {256}, where + ".lut");
    r.p.lut = r.lut.data();
  }
  return r;
}

// Builds an op, turning its parameter checks (std::invalid_argument) into format errors naming the layer.
template <class Op, class... Args>
std::shared_ptr<Op> build(const std::string& where, Args&&... args) {
  try {
    return std::make_shared<Op>(std::forward<Args>(args)...);
  } catch (const std::invalid_argument& e) {
    bad(where, e.what());
  }
}

std::shared_ptr<nask::Gemm> gemm(const Arrays& a, const Value& s, const std::string& isa, const std::string& where) {
  need_type(s, "GemmSpec", {"weight", "bias", "in_zp", "requant", "bits", "sub_scales", "group_size", "out_int32",
                            "residual"}, 4, where);
  nask::GemmParams p;
  Shape ws, shape;
  const std::vector<int8_t> w = a.int8(member(s, "weight", where), {-1, -1}, ws, where + ".weight");
  p.weight = w.data();
  p.n = static_cast<int>(ws[0]);
  p.k = static_cast<int>(ws[1]);
  const std::vector<int32_t> bias = a.int32(member(s, "bias", where), {ws[0]}, shape, where + ".bias");
  p.bias = bias.data();
  p.in_zp = static_cast<int>(int_of(member(s, "in_zp", where), where + ".in_zp"));
  const RequantData rq = requant(a, member(s, "requant", where), ws[0], where + ".requant");
  p.requant = rq.p;
  if (const Value* v = s.find("bits")) p.bits = static_cast<int>(int_of(*v, where + ".bits"));
  std::vector<int32_t> subs;
  if (const Value* v = s.find("sub_scales"); v && v->kind != Kind::Null) {
    subs = a.int32(*v, {ws[0], -1}, shape, where + ".sub_scales");
    p.sub_scales = subs.data();
    p.sub_groups = static_cast<int>(shape[1]);
  }
  if (const Value* v = s.find("group_size")) p.group_size = static_cast<int>(int_of(*v, where + ".group_size"));
  if (const Value* v = s.find("out_int32")) p.out_int32 = need_kind(*v, Kind::Bool, where + ".out_int32").boolean;
  if (const Value* v = s.find("residual"); v && v->kind != Kind::Null) {
    const std::string at = where + ".residual";
    need_type(*v, "Residual", {"zp", "multiplier", "shift"}, 3, at);
    p.residual = nask::ResidualParams{static_cast<int>(int_of(*v->find("zp"), at + ".zp")),
                                      static_cast<int32_t>(int_of(*v->find("multiplier"), at + ".multiplier")),
                                      static_cast<int32_t>(int_of(*v->find("shift"), at + ".shift"))};
  }
  p.isa = isa;
  return build<nask::Gemm>(where, p);
}

std::shared_ptr<nask::Conv> conv(const Arrays& a, const Value& s, const std::string& isa, const std::string& where) {
  need_type(s, "ConvSpec", {"weight", "stride", "bias", "in_zp", "requant"}, 5, where);
  nask::ConvParams p;
  Shape ws, shape;
  const std::vector<int8_t> w = a.int8(member(s, "weight", where), {-1, -1, -1, -1}, ws, where + ".weight");
  p.weight = w.data();
  p.cout = static_cast<int>(ws[0]);
  p.kh = static_cast<int>(ws[1]);
  p.kw = static_cast<int>(ws[2]);
  p.cin = static_cast<int>(ws[3]);
  p.stride = static_cast<int>(int_of(member(s, "stride", where), where + ".stride"));
  const std::vector<int32_t> bias = a.int32(member(s, "bias", where), {ws[0]}, shape, where + ".bias");
  p.bias = bias.data();
  p.in_zp = static_cast<int>(int_of(member(s, "in_zp", where), where + ".in_zp"));
  const RequantData rq = requant(a, member(s, "requant", where), ws[0], where + ".requant");
  p.requant = rq.p;
  p.isa = isa;
  return build<nask::Conv>(where, p);
}

std::shared_ptr<nask::Depthwise> depthwise(const Arrays& a, const Value& s, const std::string& isa,
                                           const std::string& where) {
  need_type(s, "DepthwiseSpec", {"weight", "stride", "bias", "in_zp", "requant"}, 5, where);
  nask::DepthwiseParams p;
  Shape ws, shape;
  const std::vector<int8_t> w = a.int8(member(s, "weight", where), {-1, -1, -1}, ws, where + ".weight");
  p.weight = w.data();
  p.c = static_cast<int>(ws[0]);
  p.kh = static_cast<int>(ws[1]);
  p.kw = static_cast<int>(ws[2]);
  p.stride = static_cast<int>(int_of(member(s, "stride", where), where + ".stride"));
  const std::vector<int32_t> bias = a.int32(member(s, "bias", where), {ws[0]}, shape, where + ".bias");
  p.bias = bias.data();
  p.in_zp = static_cast<int>(int_of(member(s, "in_zp", where), where + ".in_zp"));
  const RequantData rq = requant(a, member(s, "requant", where), ws[0], where + ".requant");
  p.requant = rq.p;
  p.isa = isa;
  return build<nask::Depthwise>(where, p);
}

std::shared_ptr<nask::Pool> pool(const Value& s, const std::string& isa, const std::string& where) {
  need_type(s, "PoolSpec", {"hw", "in_zp", "multiplier", "shift", "out_zp"}, 5, where);
  auto i = [&](const char* k) { return int_of(*s.find(k), where + "." + k); };
  return build<nask::Pool>(where, static_cast<int>(i("hw")), static_cast<int>(i("in_zp")),
                           static_cast<int32_t>(i("multiplier")), static_cast<int32_t>(i("shift")),
                           static_cast<int>(i("out_zp")), isa);
}

std::shared_ptr<nask::SqueezeExcite> squeeze_excite(const Arrays& a, const Value& s, const std::string& isa,
                                                    const std::string& where) {
  need_type(s, "SESpec", {"pool", "fc1", "fc2", "in_zp", "multiplier", "shift", "out_zp"}, 7, where);
  auto i = [&](const char* k) { return int_of(*s.find(k), where + "." + k); };
  return build<nask::SqueezeExcite>(where, pool(*s.find("pool"), isa, where + ".pool"),
                                    gemm(a, *s.find("fc1"), isa, where + ".fc1"),
                                    gemm(a, *s.find("fc2"), isa, where + ".fc2"), static_cast<int>(i("in_zp")),
                                    static_cast<int32_t>(i("multiplier")), static_cast<int32_t>(i("shift")),
                                    static_cast<int>(i("out_zp")), isa);
}

// ---------------------------------------------------------------- the network
// One fused layer: exactly one op pointer is set; src / res index earlier layers' outputs (-1: the input).
struct Layer {
  std::string where;
  std::string name;  // as in network.json, e.g. "blocks.3.expand"
  std::shared_ptr<nask::Gemm> gemm;
  std::shared_ptr<nask::Conv> conv;
  std::shared_ptr<nask::Depthwise> dw;
  std::shared_ptr<nask::Pool> pool;
  std::shared_ptr<nask::SqueezeExcite> se;
  int src = -1, res = -1;
  bool has_res = false;

  // Output shape for input shape `x` (NHWC, or [M, K] rows), or a format error naming the layer.
  Shape out_shape(const Shape& x) const {
    if (gemm) {
      if (x.back() != gemm->k()) bad(where, "input " + shape_str(x) + " has " + std::to_string(x.back()) +
                                                " channels, the GEMM expects " + std::to_string(gemm->k()));
      Shape y = x;
      y.back() = gemm->n();
      return y;
    }
    if (x.size() != 4) bad(where, "expects an NHWC input, got shape " + shape_str(x));
    if (pool) {
      if (x[1] * x[2] != pool->hw()) bad(where, "input " + shape_str(x) + " does not match hw=" + std::to_string(pool->hw()));
      return {x[0], x[3]};
    }
    const int64_t c = conv ? conv->cin() : dw ? dw->c() : se->c();
    if (x[3] != c) bad(where, "input " + shape_str(x) + " has " + std::to_string(x[3]) + " channels, expected " +
                                  std::to_string(c));
    if (conv) return {x[0], conv->out_size(static_cast<int>(x[1])), conv->out_size(static_cast<int>(x[2])), conv->cout()};
    if (dw) return {x[0], dw->out_size(static_cast<int>(x[1])), dw->out_size(static_cast<int>(x[2])), x[3]};
    return x;
  }

  nask::Task task(const uint8_t* x, const Shape& xs, void* out, const uint8_t* r) const {
    const int b = static_cast<int>(xs[0]);
    if (gemm) {
      int64_t m = 1;
      for (size_t i = 0; i + 1 < xs.size(); ++i) m *= xs[i];
      return gemm->task(x, static_cast<int>(m), out, r);
    }
    uint8_t* o = static_cast<uint8_t*>(out);
    const int h = static_cast<int>(xs[1]), w = static_cast<int>(xs[2]);
    if (conv) return conv->task(x, b, h, w, o);
    if (dw) return dw->task(x, b, h, w, o);
    if (pool) return pool->task(x, b, h, w, static_cast<int>(xs[3]), o);
    return se->task(x, b, h, w, o);
  }
};

// The ISA of NAS_KERNELS_ISA (as nas.kernels.isa.active_isa), else the best this CPU supports.
std::string choose_isa() {
  const char* env = std::getenv("NAS_KERNELS_ISA");
  std::string name = env ? env : "";
  const auto space = " \t\n\r\f\v";
  name.erase(0, name.find_first_not_of(space));
  name.erase(name.find_last_not_of(space) + 1);
  if (!name.empty()) {
    try {
      return nask::checked_isa(name).name;
    } catch (const std::invalid_argument& e) {
      std::string msg = e.what();
      if (msg.rfind("isa: ", 0) == 0) msg = msg.substr(5);
      throw Error(NAS_ERR_ISA, "NAS_KERNELS_ISA=" + name + ": " + msg);
    }
  }
  std::string best;
  for (const nask::Isa& isa : nask::all_isas())
    if (isa.supported()) best = isa.name;
  return best;
}

}  // namespace

struct nas_model {
  std::string isa;
  int channels = 0, height = 0, width = 0;
  float in_scale = 1.0f;
  int in_zp = 0;
  std::vector<float> logit_scale;
  std::vector<Layer> layers;
  // The layers of each step as nas.kernels.memory.fusion_groups: a block whose layers are expand -> dw -> project or
  // dw -> project (with `fused` set: its FusedBlock), every other layer alone. prepare() runs a group fused only
  // where ops.h fused_block_pays says so for the batch and threads, else its layers one by one.
  struct Group {
    std::vector<int> layers;
    std::shared_ptr<nask::FusedBlock> fused;
  };
  std::vector<Group> groups;
  // The stem fused into the first block (nas.kernels.fusion.stem_group): the stem and that block's dw -> project,
  // or its dw alone before a squeeze-excite; `fused` null where the network has no such first block. prepare()
  // runs it where ops.h stem_fused_pays says so and the arena shrinks with it, else the groups above.
  Group stem;

  std::mutex mu;  // guards the plan and its buffers, rebuilt when the batch size or thread count changes
  int plan_batch = 0, plan_threads = 0;
  size_t arena_bytes = 0;      // the plan's arena (nask::ArenaPlan::bytes, without the alignment slack)
  std::vector<uint8_t> arena;  // every activation buffer (nask::plan_arena)
  uint8_t* input = nullptr;    // the quantized input, in the arena
  size_t input_bytes = 0;
  const uint8_t* logits_acc = nullptr;  // the classifier's int32 output, in the arena
  nask::Plan plan;

  void load(const std::filesystem::path& dir);
  void group_layers();
  void prepare(int batch, int threads);
  void run(const float* xf, const uint8_t* xu, int batch, float* logits, int threads);
};

namespace {

constexpr const char* kFiles[] = {"arch.json", "network.json", "weights.safetensors"};

// metadata.json checked as checkpoint.read_metadata; returns the contents of the three other files, hash-checked.
std::map<std::string, std::string> read_checked(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) throw Error(NAS_ERR_IO, "checkpoint " + dir.string() + " does not exist");
  if (!std::filesystem::is_directory(dir, ec))
    throw Error(NAS_ERR_IO, dir.string() + ": expected a checkpoint directory (with metadata.json), got a file");
  const std::string where = (dir / "metadata.json").string();
  const Value meta = parse_json(read_file(dir / "metadata.json"), where);
  need_kind(meta, Kind::Object, where);
  const Value& format = member(meta, "format", where);
  if (format.kind != Kind::String || format.str != "nas-quantized-checkpoint")
    bad(where, "not a nas-quantized-checkpoint");
  const Value& version = need_kind(member(meta, "format_version", where), Kind::String, where + " format_version");
  if (version.str.substr(0, version.str.find('.')) != "1")
    bad(where, "format version " + version.str + " is incompatible with this runtime (reads 1.x)");
  const Value& files = need_kind(member(meta, "files", where), Kind::Object, where + " files");
  std::map<std::string, std::string> out;
  for (const char* f : kFiles) {
    const Value* sha = files.find(f);
    if (!sha || sha->kind != Kind::String) bad(where, std::string("entry 'files' has no SHA-256 for '") + f + "'");
    std::string data = read_file(dir / f);
    if (nask::sha256_hex(reinterpret_cast<const uint8_t*>(data.data()), data.size()) != sha->str)
      throw Error(NAS_ERR_HASH, (dir / f).string() +
                                    ": content does not match its hash in metadata.json (corrupt, truncated or modified)");
    out[f] = std::move(data);
  }
  return out;
}

}  // namespace

void nas_model::load(const std::filesystem::path& dir) {
  isa = choose_isa();
  const std::map<std::string, std::string> files = read_checked(dir);
  const std::string arch_file = (dir / "arch.json").string();
  const Value arch = parse_json(files.at("arch.json"), arch_file);
  height = width = static_cast<int>(int_of(member(arch, "resolution", arch_file), arch_file + " resolution", 1, 1 << 15));
  channels = static_cast<int>(int_of(member(arch, "in_channels", arch_file), arch_file + " in_channels", 1, 1 << 12));

  const std::string wfile = (dir / "weights.safetensors").string();
  const std::map<std::string, Tensor> tensors = parse_safetensors(files.at("weights.safetensors"), wfile);
  const std::string nfile = (dir / "network.json").string();
  const Value net = parse_json(files.at("network.json"), nfile);
  const Arrays arrays{tensors, wfile};

  const Value& q = member(net, "input_q", nfile);
  need_type(q, "QParams", {"scale", "zero_point"}, 2, nfile + " input_q");
  const Value& scale = need_kind(*q.find("scale"), Kind::Number, nfile + " input_q.scale");
  in_scale = static_cast<float>(scale.number);  // np.float32(q.scale), as QuantizedNetwork.run
  if (!(in_scale > 0.0f) || !std::isfinite(in_scale)) bad(nfile + " input_q.scale", "must be a positive finite number");
  in_zp = static_cast<int>(int_of(*q.find("zero_point"), nfile + " input_q.zero_point", 0, 255));

  // Layers in execution order, wired as QuantizedNetwork._wiring: each takes the previous output; a GEMM with a
  // residual adds its block's input (the output before the block's first layer).
  const Value& ls = need_kind(member(net, "layers", nfile), Kind::Array, nfile + " layers");
  if (ls.items.empty()) bad(nfile, "no layers");
  int prev = -1, block_input = -1;
  std::string block;
  bool in_block = false;
  for (size_t i = 0; i < ls.items.size(); ++i) {
    const Value& l = ls.items[i];
    std::string where = nfile + " layers[" + std::to_string(i) + "]";
    need_type(l, "QuantizedLayer", {"name", "op", "spec"}, 3, where);
    const std::string name = need_kind(*l.find("name"), Kind::String, where + ".name").str;
    where += " ('" + name + "')";
    const Value& spec = need_kind(*l.find("spec"), Kind::Object, where + ".spec");
    const Value& type = need_kind(member(spec, "__type__", where + ".spec"), Kind::String, where + ".spec");
    Layer layer;
    layer.where = where;
    layer.name = name;
    const std::string at = where + ".spec";
    if (type.str == "GemmSpec") layer.gemm = gemm(arrays, spec, isa, at);
    else if (type.str == "ConvSpec") layer.conv = conv(arrays, spec, isa, at);
    else if (type.str == "DepthwiseSpec") layer.dw = depthwise(arrays, spec, isa, at);
    else if (type.str == "PoolSpec") layer.pool = pool(spec, isa, at);
    else if (type.str == "SESpec") layer.se = squeeze_excite(arrays, spec, isa, at);
    else bad(where, "unknown op type '" + type.str + "'");
    if (name.rfind("blocks.", 0) == 0) {
      const std::string b = name.substr(7, name.find('.', 7) - 7);
      if (!in_block || b != block) block = b, block_input = prev, in_block = true;
    }
    layer.src = prev;
    if (layer.gemm && layer.gemm->residual()) layer.res = block_input, layer.has_res = true;
    layers.push_back(std::move(layer));
    prev = static_cast<int>(i);
  }

  // Shapes for one image: every layer must accept its input, only the classifier writes int32 logits.
  std::vector<Shape> shapes;
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& l = layers[i];
    const Shape x = l.src < 0 ? Shape{1, height, width, channels} : shapes[l.src];
    shapes.push_back(l.out_shape(x));
    if (l.has_res && (l.res < 0 ? Shape{1, height, width, channels} : shapes[l.res]) != shapes.back())
      bad(l.where, "the residual input's shape differs from the output " + shape_str(shapes.back()));
    const bool int32_out = l.gemm && l.gemm->out_int32();
    if (int32_out != (i + 1 == layers.size()))
      bad(l.where, int32_out ? "only the last layer may write int32" : "the last layer must be a GEMM with int32 output");
  }
  const Shape& last = shapes.back();
  const std::vector<float> ls_scale =
      arrays.float32(member(net, "logit_scale", nfile), {-1}, nfile + " logit_scale");
  if (last.size() != 2 || last[1] != static_cast<int64_t>(ls_scale.size()))
    bad(nfile, "logit_scale has " + std::to_string(ls_scale.size()) + " entries, the network outputs " +
                   shape_str(last));
  logit_scale = ls_scale;
  group_layers();
}

namespace {

// "blocks.<id>" for a layer of a block, "" for any other (as name.split(".")[:2] in nas.kernels.memory).
std::string block_of(const std::string& name) {
  return name.rfind("blocks.", 0) == 0 ? name.substr(0, name.find('.', 7)) : std::string();
}

std::string role_of(const std::string& name) { return name.substr(name.rfind('.') + 1); }

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

}  // namespace

void nas_model::group_layers() {
  groups.clear();
  stem = Group{};
  if (layers.size() > 1 && layers[0].name == "stem" && layers[0].conv && !block_of(layers[1].name).empty()) {
    std::vector<std::string> roles;
    for (size_t t = 1; t < layers.size() && block_of(layers[t].name) == block_of(layers[1].name); ++t)
      roles.push_back(role_of(layers[t].name));
    const bool project = roles == std::vector<std::string>{"dw", "project"};
    const bool se = roles == std::vector<std::string>{"dw", "se", "project"};
    // as for blocks: the ops must be what the names say; a residual first block does not fuse with the stem
    const Layer& last = layers[roles.size()];
    if ((project || se) && layers[1].dw && last.gemm && !last.gemm->residual() && (project || layers[2].se)) {
      stem.layers = project ? std::vector<int>{0, 1, 2} : std::vector<int>{0, 1};
      try {
        stem.fused = std::make_shared<nask::FusedBlock>(nullptr, layers[1].dw, project ? last.gemm : nullptr, 0,
                                                        layers[0].conv);
      } catch (const std::invalid_argument& e) {
        bad(layers[0].where, std::string("stem does not fuse with the first block: ") + e.what());
      }
    }
  }
  for (size_t i = 0; i < layers.size();) {
    const std::string block = block_of(layers[i].name);
    size_t j = i;
    while (!block.empty() && j < layers.size() && block_of(layers[j].name) == block) ++j;
    std::vector<std::string> roles;
    for (size_t t = i; t < j; ++t) roles.push_back(role_of(layers[t].name));
    const bool three = roles == std::vector<std::string>{"expand", "dw", "project"};
    const bool two = roles == std::vector<std::string>{"dw", "project"};
    // the ops must be what the names say (always so in an exported network); otherwise the layers run one by one
    if ((three || two) && layers[j - 2].dw && layers[j - 1].gemm && (two || layers[i].gemm)) {
      Group g;
      for (size_t t = i; t < j; ++t) g.layers.push_back(static_cast<int>(t));
      try {
        g.fused = std::make_shared<nask::FusedBlock>(three ? layers[i].gemm : nullptr, layers[j - 2].dw,
                                                     layers[j - 1].gemm);
      } catch (const std::invalid_argument& e) {
        bad(layers[i].where, std::string("block does not fuse: ") + e.what());
      }
      groups.push_back(std::move(g));
      i = j;
    } else {
      groups.push_back(Group{{static_cast<int>(i)}, nullptr});
      ++i;
    }
  }
}

void nas_model::prepare(int batch, int threads) {
  if (batch == plan_batch && threads == plan_threads) return;
  plan_batch = plan_threads = 0;
  plan = nask::Plan();
  const Shape in{batch, height, width, channels};
  std::vector<Shape> shapes;  // shapes[i]: layer i's output
  for (const Layer& l : layers) shapes.push_back(l.out_shape(l.src < 0 ? in : shapes[l.src]));
  auto input_of = [&](int i) -> const Shape& { return layers[i].src < 0 ? in : shapes[layers[i].src]; };
  auto bytes = [&](int i) { return static_cast<size_t>(numel(shapes[i])); };
  // ops.h: how far before its input layer i's output starts when it runs in place (kNotInPlace: it cannot)
  auto in_place_headroom = [&](int i) -> int64_t {
    const Layer& l = layers[i];
    if (l.se) return 0;
    if (!l.dw || l.dw->stride() != 1) return nask::kNotInPlace;
    return nask::dw_in_place_headroom(threads, static_cast<int>(input_of(i)[2]), l.dw->c(), l.dw->k());
  };

  // The steps, as QuantizedNetwork.steps: a group fused where its step needs no more bytes than its layers.
  struct Step {
    std::vector<int> layers;
    const nask::FusedBlock* fused = nullptr;
    size_t scratch = 0;  // the fused step's band buffers: `slots` x FusedBlock::scratch_bytes
    int slots = 0;
  };
  // with_stem: the stem fused into the first block where ops.h stem_fused_pays says so
  auto build_steps = [&](bool with_stem) {
    std::vector<Step> steps;
    int covered = -1;  // the last layer the stem-fused step runs
    if (with_stem && stem.fused) {
      const nask::FusedBlock& f = *stem.fused;
      const int h = height, w = width, out = stem.layers.back();
      const int slots = nask::fused_scratch_slots(threads, static_cast<int64_t>(batch) * f.out_size(h));
      const size_t scratch = f.scratch_bytes(h, w) * slots;
      const nask::Depthwise& dw = *layers[1].dw;
      const int h1 = f.head_size(h), w1 = f.head_size(w);
      const size_t block_scratch =
          f.has_project() ? nask::FusedBlock::scratch_bytes(h1, w1, dw.c(), dw.k(), dw.stride(), false) *
                                nask::fused_scratch_slots(threads, static_cast<int64_t>(batch) * dw.out_size(h1))
                          : 0;
      if (nask::stem_fused_pays(static_cast<size_t>(numel(in)), bytes(0), bytes(1), bytes(out), scratch,
                                f.has_project(), false, in_place_headroom(1), block_scratch)) {
        steps.push_back(Step{stem.layers, stem.fused.get(), scratch, slots});
        covered = out;
      }
    }
    for (const Group& g : groups) {
      if (g.layers[0] <= covered) continue;
      if (g.fused) {
        const std::vector<int>& ls = g.layers;
        const Shape& xs = input_of(ls[0]);
        const int h = static_cast<int>(xs[1]), w = static_cast<int>(xs[2]);
        const bool expand = ls.size() == 3;
        const int dw = ls[ls.size() - 2], out = ls.back();
        const int slots = nask::fused_scratch_slots(threads, static_cast<int64_t>(batch) * g.fused->out_size(h));
        const size_t scratch = g.fused->scratch_bytes(h, w) * slots;
        if (nask::fused_block_pays(static_cast<size_t>(numel(xs)), expand ? bytes(ls[0]) : 0, bytes(dw), bytes(out),
                                   scratch, expand, layers[out].gemm->residual(), in_place_headroom(dw))) {
          steps.push_back(Step{ls, g.fused.get(), scratch, slots});
          continue;
        }
      }
      for (int i : g.layers) steps.push_back(Step{{i}});
    }
    return steps;
  };

  // The input and every step's output, then the fused steps' band buffers, in one arena planned as
  // nas.kernels.memory.plan: step 0 writes the input, step s + 1 runs steps[s] (which reads the previous step's
  // output and, a residual GEMM, its block's input), a buffer lives until the last step that reads it.
  struct Arena {
    std::vector<size_t> sizes, scratch_buf;  // scratch_buf: index into sizes of each fused step's band buffers
    std::vector<int> res;                    // res: -2 none, -1 the input, else a step's output
    nask::ArenaPlan ap;
  };
  constexpr size_t kAlign = 64;
  auto plan_of = [&](const std::vector<Step>& steps) {
    std::vector<size_t> sizes{static_cast<size_t>(numel(in))};
    std::vector<int> first{0}, last{0}, res(steps.size(), -2);  // res: -2 none, -1 the input, else a step's output
    // a step's output may be written over its input (ops.h in_place_pays, decided by plan_arena)
    std::vector<int> over{0};
    std::vector<int64_t> headroom{nask::kNotInPlace};
    std::vector<int> step_of(layers.size(), -1);                // the step that writes layer i's output
    for (size_t s = 0; s < steps.size(); ++s) {
      const int step = static_cast<int>(s) + 1, l = steps[s].layers.back();
      step_of[l] = static_cast<int>(s);
      // a fused block adds its residual itself; a block's input is the output of the step before it
      if (!steps[s].fused && layers[l].has_res) res[s] = layers[l].res < 0 ? -1 : step_of[layers[l].res];
      sizes.push_back(bytes(l) * (layers[l].gemm && layers[l].gemm->out_int32() ? 4 : 1));
      first.push_back(step);
      last.push_back(step);
      over.push_back(static_cast<int>(s));  // the buffer this step reads
      headroom.push_back(steps[s].fused ? nask::kNotInPlace : in_place_headroom(l));
      last[s] = std::max(last[s], step);  // the previous step's output (s = 0: the input)
      if (res[s] != -2) last[res[s] + 1] = std::max(last[res[s] + 1], step);
    }
    std::vector<size_t> scratch_buf(steps.size(), 0);  // index into sizes of each fused step's band buffers
    for (size_t s = 0; s < steps.size(); ++s) {
      if (!steps[s].scratch) continue;
      scratch_buf[s] = sizes.size();
      sizes.push_back(steps[s].scratch);
      first.push_back(static_cast<int>(s) + 1);
      last.push_back(static_cast<int>(s) + 1);
      over.push_back(0);
      headroom.push_back(nask::kNotInPlace);
    }
    nask::ArenaPlan ap = nask::plan_arena(sizes, first, last, kAlign, over, headroom);
    return Arena{std::move(sizes), std::move(scratch_buf), std::move(res), std::move(ap)};
  };

  // The stem fused only where the arena shrinks (nas.kernels.memory.stem_lowers_arena: the greedy placement can fit
  // the steps around the fused one worse than the larger stem step it replaces).
  std::vector<Step> steps = build_steps(true);
  Arena plan_ = plan_of(steps);
  if (steps[0].fused && steps[0].layers[0] == 0 && stem.fused) {
    std::vector<Step> without = build_steps(false);
    Arena other = plan_of(without);
    if (other.ap.bytes <= plan_.ap.bytes) {
      steps = std::move(without);
      plan_ = std::move(other);
    }
  }
  const std::vector<size_t>& sizes = plan_.sizes;
  const std::vector<size_t>& scratch_buf = plan_.scratch_buf;
  const std::vector<int>& res = plan_.res;
  const nask::ArenaPlan& ap = plan_.ap;
  arena.assign(ap.bytes + kAlign, 0);
  uint8_t* base = arena.data() + (kAlign - reinterpret_cast<uintptr_t>(arena.data()) % kAlign) % kAlign;
  auto buffer = [&](int s) { return base + ap.offsets[s + 1]; };  // s = -1: the input
  input = buffer(-1);
  input_bytes = sizes[0];
  for (size_t s = 0; s < steps.size(); ++s) {
    const Step& st = steps[s];
    const int i = static_cast<int>(s);
    const Shape& xs = input_of(st.layers[0]);
    if (st.fused) {
      plan.add(st.fused->task(buffer(i - 1), batch, static_cast<int>(xs[1]), static_cast<int>(xs[2]), buffer(i),
                              base + ap.offsets[scratch_buf[s]], st.slots));
    } else {
      plan.add(layers[st.layers[0]].task(buffer(i - 1), xs, buffer(i), res[s] == -2 ? nullptr : buffer(res[s])));
    }
  }
  logits_acc = buffer(static_cast<int>(steps.size()) - 1);
  arena_bytes = ap.bytes;
  plan_batch = batch;
  plan_threads = threads;
}

void nas_model::run(const float* xf, const uint8_t* xu, int batch, float* logits, int threads) {
  if ((!xf && !xu) || !logits) throw Error(NAS_ERR_ARGUMENT, "input and logits must not be NULL");
  if (batch < 1 || batch > (1 << 20)) throw Error(NAS_ERR_ARGUMENT, "batch=" + std::to_string(batch) + " outside [1, 1048576]");
  if (threads < 1 || threads > 1024) throw Error(NAS_ERR_ARGUMENT, "threads=" + std::to_string(threads) + " outside [1, 1024]");
  const std::lock_guard<std::mutex> lock(mu);
  prepare(batch, threads);
  if (xu) std::memcpy(input, xu, input_bytes);
  else nask::quantize_nchw(xf, batch, channels, height, width, in_scale, in_zp, input);
  plan.run(threads);
  const size_t classes = logit_scale.size();
  for (size_t i = 0; i < static_cast<size_t>(batch) * classes; ++i) {
    int32_t a;
    std::memcpy(&a, logits_acc + 4 * i, 4);
    logits[i] = static_cast<float>(a) * logit_scale[i % classes];  // out.astype(float32) * logit_scale
  }
}

// ---------------------------------------------------------------- the C functions
namespace {

thread_local std::string last_error;

template <class F>
nas_status guarded(F f) {
  auto fail = [](nas_status code, const std::string& msg) {
    last_error = msg;
    return code;
  };
  try {
    f();
    return NAS_OK;
  } catch (const Error& e) {
    return fail(e.code, e.what());
  } catch (const std::bad_alloc&) {
    return fail(NAS_ERR_MEMORY, "out of memory");
  } catch (const std::invalid_argument& e) {
    return fail(NAS_ERR_ARGUMENT, e.what());
  } catch (const std::exception& e) {
    return fail(NAS_ERR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return fail(NAS_ERR_INTERNAL, "internal error");
  }
}

}  // namespace

extern "C" {

nas_status nas_model_load(const char* dir, nas_model** model) {
  return guarded([&] {
    if (!dir || !model) throw Error(NAS_ERR_ARGUMENT, "dir and model must not be NULL");
    *model = nullptr;
    auto m = std::make_unique<nas_model>();
    m->load(dir);
    *model = m.release();
  });
}

void nas_model_free(nas_model* model) { delete model; }

nas_status nas_model_input_shape(const nas_model* model, int* channels, int* height, int* width) {
  return guarded([&] {
    if (!model || !channels || !height || !width) throw Error(NAS_ERR_ARGUMENT, "arguments must not be NULL");
    *channels = model->channels;
    *height = model->height;
    *width = model->width;
  });
}

int nas_model_num_classes(const nas_model* model) { return model ? static_cast<int>(model->logit_scale.size()) : 0; }

const char* nas_model_isa(const nas_model* model) { return model ? model->isa.c_str() : ""; }

nas_status nas_model_run(nas_model* model, const float* input, int batch, float* logits, int threads) {
  return guarded([&] {
    if (!model || !input) throw Error(NAS_ERR_ARGUMENT, "model and input must not be NULL");
    model->run(input, nullptr, batch, logits, threads);
  });
}

nas_status nas_model_run_u8(nas_model* model, const uint8_t* input, int batch, float* logits, int threads) {
  return guarded([&] {
    if (!model || !input) throw Error(NAS_ERR_ARGUMENT, "model and input must not be NULL");
    model->run(nullptr, input, batch, logits, threads);
  });
}

nas_status nas_model_arena_bytes(nas_model* model, int batch, int threads, size_t* bytes) {
  return guarded([&] {
    if (!model || !bytes) throw Error(NAS_ERR_ARGUMENT, "model and bytes must not be NULL");
    if (batch < 1 || batch > (1 << 20))
      throw Error(NAS_ERR_ARGUMENT, "batch=" + std::to_string(batch) + " outside [1, 1048576]");
    if (threads < 1 || threads > 1024)
      throw Error(NAS_ERR_ARGUMENT, "threads=" + std::to_string(threads) + " outside [1, 1024]");
    const std::lock_guard<std::mutex> lock(model->mu);
    model->prepare(batch, threads);  // the plan a run with these arguments uses (kept for it)
    *bytes = model->arena_bytes;
  });
}

const char* nas_last_error(void) { return last_error.c_str(); }

const char* nas_status_name(nas_status status) {
  switch (status) {
    case NAS_OK: return "NAS_OK";
    case NAS_ERR_ARGUMENT: return "NAS_ERR_ARGUMENT";
    case NAS_ERR_IO: return "NAS_ERR_IO";
    case NAS_ERR_FORMAT: return "NAS_ERR_FORMAT";
    case NAS_ERR_HASH: return "NAS_ERR_HASH";
    case NAS_ERR_ISA: return "NAS_ERR_ISA";
    case NAS_ERR_MEMORY: return "NAS_ERR_MEMORY";
    case NAS_ERR_INTERNAL: return "NAS_ERR_INTERNAL";
  }
  return "unknown status";
}

}  // extern "C"
