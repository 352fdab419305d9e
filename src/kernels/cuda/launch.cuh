// Programmatic dependent launch (PDL, Hopper) for the decode path's kernels. A decode step is a
// chain of dependent kernels, 13 a dense layer and 19 a MoE one at batch 1, most too small to fill
// the GPU or ending in a tail of a few blocks. Launched with the attribute, a kernel's blocks may
// start while the kernel before it is still running: they take their place on the SMs, may fetch
// what no earlier kernel writes (the query absorption's weights), and wait in pdl_wait() until
// every earlier kernel has finished and its writes are visible. Each kernel calls pdl_trigger()
// first, so the next can do the same; the gemvs call it once their weights are read (gemv.cu says
// why).
//
// The rule every kernel launched by launch_pdl must keep: before pdl_wait() it reads only
// memory no kernel writes (weights, norms, tables made at load) and writes nothing. A kernel
// that waits completes after everything before it, so the order is transitive down the chain;
// one launched plainly (<<<>>>, cuBLASLt) still waits for all of its predecessor, as before.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"

namespace dsv3::cuda {

// Whether launch_pdl sets the attribute (set_programmatic_launch in kernels.h; basic.cu holds
// the setting).
bool pdl_enabled();

// Lets the next kernel's blocks launch once every block of this one has called it (or exited).
__device__ __forceinline__ void pdl_trigger() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}
// Until every kernel this one depends on has completed and its writes are visible; returns at
// once for a kernel launched without the attribute.
__device__ __forceinline__ void pdl_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}

// Both at once, for kernels with nothing to fetch early.
__device__ __forceinline__ void pdl_enter() {
  pdl_trigger();
  pdl_wait();
}

template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  DSV3_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, static_cast<Params>(args)...));
}

}  // namespace dsv3::cuda
