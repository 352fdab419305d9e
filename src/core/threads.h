// A fixed pool of worker threads for data-parallel loops over the CPU cores.
// parallel_for splits [0, n) into contiguous chunks, one per thread, and blocks until
// all are done. The thread count comes from DSV3_THREADS or the machine's core count.
#pragma once

#include <cstdint>
#include <functional>

namespace dsv3 {

int num_threads();
void set_num_threads(int n);
// fn(begin, end, thread_index) over chunks of [0, n); chunks are at least `grain` long.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn,
                  int64_t grain = 1);

}  // namespace dsv3
