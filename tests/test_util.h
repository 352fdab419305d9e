// Small helpers shared by the tests.
#pragma once

#include <functional>
#include <string>

#include "core/error.h"

namespace dsv3::test_util {

// The message of the dsv3::Error that f throws, or "(no error)".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A fixture checkpoint directory under tests/fixtures/models/.
inline std::string model_fixture(const std::string& name) {
  return std::string(DSV3_SOURCE_DIR) + "/tests/fixtures/models/" + name;
}

}  // namespace dsv3::test_util
