// Errors: every failure the user can cause (bad file, wrong shape, bad flag) is a
// dsv3::Error with a one-line message that names the file/tensor and says what to do.
// The CLI catches it, prints it and exits non-zero; nothing aborts on user input.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dsv3 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace dsv3

// Checks a condition that user input can violate; throws dsv3::Error with the message.
#define DSV3_CHECK(cond, ...)               \
  do {                                      \
    if (!(cond)) ::dsv3::fail(__VA_ARGS__); \
  } while (0)

// Checks an internal invariant (a bug in dsv3 if it fails); names the source location.
#define DSV3_ASSERT(cond)                                                                       \
  do {                                                                                          \
    if (!(cond)) ::dsv3::fail("internal error: {} failed at {}:{}", #cond, __FILE__, __LINE__); \
  } while (0)
