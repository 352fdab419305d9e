// One function per subcommand: it adds the subcommand to the CLI and sets its callback.
// Each lives in its own file in apps/.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "core/error.h"
#include "core/tensor.h"

namespace dsv3::apps {

// --device: -1 for the CPU, N for cuda:N (an error in a build without the CUDA backend).
inline int cuda_index_of(const std::string& device) {
  const Device d = Device::parse(device);
  if (d.is_cpu()) return -1;
#ifndef DSV3_HAVE_CUDA
  fail("--device {}: this dsv3 was built without the CUDA backend (no nvcc at build time)", device);
#endif
  return d.index;
}

void add_info(CLI::App& app);
void add_init(CLI::App& app);
void add_forward(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_detokenize(CLI::App& app);
void add_chat_template(CLI::App& app);
void add_tokenizer_train(CLI::App& app);  // `dsv3 tokenizer train`
void add_generate(CLI::App& app);
void add_chat(CLI::App& app);
void add_serve(CLI::App& app);
void add_data(CLI::App& app);  // `dsv3 data prepare`
void add_train(CLI::App& app);
void add_compare(CLI::App& app);  // `dsv3 compare RUN...`

}  // namespace dsv3::apps
