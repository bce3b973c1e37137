// SHA-256 (FIPS 180-4) for the C runtime's checkpoint hash checks; no dependencies.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace nask {

// Lower-case hex digest of data[0, n), as Python's hashlib.sha256(data).hexdigest().
std::string sha256_hex(const uint8_t* data, size_t n);

}  // namespace nask
