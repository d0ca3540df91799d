// The CUDA kernels of edge/kernels/riad_kernels.cu, compiled for the host and launched
// like cuLaunchKernel does: a grid of blocks, a block of threads, an array of pointers
// to the arguments. tests/host_device.py drives edge/backends/gpu_map.py through this, so the
// kernels' own bodies, gpu_map's launches and its buffers run in CI without a GPU.
//
// Threads of a block run one after another, except in a kernel that synchronizes its
// block (max_value): there each thread is a host thread and __syncthreads a barrier.
#include <barrier>
#include <cmath>
#include <cstring>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;

#define __global__
#define __shared__ static  // one block runs at a time, so a static is that block's memory

static void __syncthreads() {
    if (block_barrier == nullptr) std::abort();  // the kernel table must mark this kernel
    block_barrier->arrive_and_wait();
}

static float __int_as_float(int bits) {
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

#include "riad_kernels.cu"

namespace {

// kernel(*(A0*)params[0], *(A1*)params[1], ...), as the driver reads kernelParams.
template <typename... Args, std::size_t... I>
void call(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<Args>*>(params[I])...);
}

template <typename... Args>
void run_grid(void (*kernel)(Args...), bool synchronizes, void** params) {
    for (unsigned block = 0; block < gridDim.x; ++block) {
        auto thread_body = [&](unsigned thread) {
            blockIdx = {block, 0, 0};
            threadIdx = {thread, 0, 0};
            call(kernel, params, std::index_sequence_for<Args...>{});
        };
        if (!synchronizes) {
            for (unsigned thread = 0; thread < blockDim.x; ++thread) thread_body(thread);
            continue;
        }
        std::barrier<> barrier(blockDim.x);
        block_barrier = &barrier;
        std::vector<std::thread> threads;
        for (unsigned thread = 0; thread < blockDim.x; ++thread) threads.emplace_back(thread_body, thread);
        for (auto& thread : threads) thread.join();
        block_barrier = nullptr;
    }
}

}  // namespace

extern "C" int host_launch(const char* name, unsigned grid, unsigned block, void** params) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    const std::string kernel(name);
    if (kernel == "expand_variants") run_grid(expand_variants, false, params);
    else if (kernel == "frame_gray") run_grid(frame_gray, false, params);
    else if (kernel == "recombined_gray") run_grid(recombined_gray, false, params);
    else if (kernel == "pool_level") run_grid(pool_level, false, params);
    else if (kernel == "gms_level") run_grid(gms_level, false, params);
    else if (kernel == "raw_anomaly") run_grid(raw_anomaly, false, params);
    else if (kernel == "gaussian_pass") run_grid(gaussian_pass, false, params);
    else if (kernel == "subtract_reference") run_grid(subtract_reference, false, params);
    else if (kernel == "max_value") run_grid(max_value, true, params);
    else return 1;
    return 0;
}
