#include "infer/step_engine.h"

#include "core/error.h"

namespace dsv3 {

// Checks what step_sample() needs of its arguments (shared by the engines' versions).
void check_sample_inputs(const std::vector<StepEngine::Input>& inputs,
                         const std::vector<infer::Sampler*>& samplers) {
  DSV3_CHECK(samplers.size() == inputs.size(), "step_sample: {} samplers for {} inputs",
             samplers.size(), inputs.size());
  for (const StepEngine::Input& in : inputs)
    DSV3_CHECK(!in.all_logits, "step_sample: an input asks for all its logits; use step()");
}

infer::SampleResult sample_on_host(infer::Sampler& s, std::span<float> logits) {
  if (s.params().logprobs) return s.sample_with_logprobs(logits);
  infer::SampleResult r;
  r.token = s.sample(logits);
  return r;
}

std::vector<infer::SampleResult> StepEngine::step_sample(
    const std::vector<Input>& inputs, const std::vector<infer::Sampler*>& samplers,
    Tensor* hidden) const {
  check_sample_inputs(inputs, samplers);
  Tensor logits = step(inputs, hidden);
  const int64_t v = logits.dim(1);
  std::vector<infer::SampleResult> out(inputs.size());
  for (size_t k = 0; k < inputs.size(); ++k)
    if (samplers[k])
      out[k] = sample_on_host(*samplers[k], {logits.ptr<float>() + int64_t(k) * v, size_t(v)});
  return out;
}

}  // namespace dsv3
