// A small strict JSON reader for the C runtime (capi.cpp): RFC 8259 plus the NaN / Infinity / -Infinity that
// Python's json module writes. No dependencies; documents nest at most kMaxDepth deep.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace nask::json {

constexpr int kMaxDepth = 256;

struct Value {
  enum class Kind { Null, Bool, Number, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  bool is_int = false;  // an integer literal (no fraction or exponent) that fits int64
  int64_t integer = 0;
  std::string str;
  std::vector<Value> items;                             // Array
  std::vector<std::pair<std::string, Value>> members;  // Object, in document order

  // The member called `key` (the last one, as Python's json), or nullptr.
  const Value* find(const std::string& key) const;
};

// The kind's name for messages: "null", "a boolean", "a number", "a string", "an array", "an object".
const char* kind_name(Value::Kind k);

// Parses one whole document; throws std::runtime_error("line L, column C: what") on any syntax error.
Value parse(const std::string& text);

}  // namespace nask::json
