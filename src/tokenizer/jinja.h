// A small Jinja2 interpreter: enough of the language to render HF chat templates exactly
// as transformers does (ImmutableSandboxedEnvironment with trim_blocks=True,
// lstrip_blocks=True, keep_trailing_newline=False, loopcontrols, tojson without HTML
// escaping). Anything outside the supported subset fails with a dsv3::Error naming the
// line and column, never by silently rendering something different.
//
// Supported: text, {{ }}, {% %}, {# #}, whitespace control (-/+), if/elif/else, for (with
// loop.*, else, two-name unpacking), set (name or namespace attribute), break/continue;
// expressions with literals, lists, dicts, subscripts/slices, attributes, Python string and
// dict methods, namespace()/range()/raise_exception(), arithmetic, ~, comparisons, in,
// and/or/not, conditional expressions, the common filters and tests.
// Refused with an error (where Jinja might render): macros, raw/include/extends/call blocks,
// block-set, loop filters, tuples, non-ASCII identifiers, upper()/lower() of non-ASCII text,
// ordering of lists, and unknown filters/tests even inside branches that never run.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <string>

namespace dsv3::jinja {

class Template {
 public:
  // Parses `source`; throws dsv3::Error with "<name>:LINE:COL: ..." on a syntax error or an
  // unsupported construct. `name` is used only in messages (e.g. the template's file).
  explicit Template(std::string source, std::string name = "template");
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the top-level variables of `context` (a JSON object; JSON null is Python
  // None, a missing key is undefined). Object key order is kept with ordered_json, which
  // matters only for |tojson and printing dicts. Runtime errors (None + str, attribute of
  // undefined, raise_exception(), ...) throw dsv3::Error with the position.
  std::string render(const nlohmann::ordered_json& context) const;
  std::string render(const nlohmann::json& context) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3::jinja
