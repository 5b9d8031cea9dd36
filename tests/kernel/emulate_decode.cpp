// Runs minigrok's GPU decode kernels (minigrok/engine/kernels/decode.cu, included) on the CPU,
// as a shared library that tests/test_kernel_emulated.py calls through ctypes: one
// std::thread per CUDA thread, a std::barrier for __syncthreads and one per warp for
// __shfl_xor_sync, blocks one after the other. It checks the kernels' indexing, reductions
// and formulas where there is no GPU; the GPU's own behaviour is tests/test_cupy.py's job.
//
// decode.cu's dynamic shared memory (DYNAMIC_SHARED) becomes a pointer to this block's
// buffer, since C++ has no `extern __shared__` declaration.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <math.h>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 { int x = 1, y = 1, z = 1; };
thread_local dim3 threadIdx;
dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static std::vector<float> warp_slots;
static std::vector<char> dynamic_shared;

inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __shfl_xor_sync(unsigned, float v, int offset) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    warp_slots[threadIdx.x] = v;
    warp_barriers[warp]->arrive_and_wait();
    float other = warp_slots[warp * 32 + (lane ^ offset)];
    warp_barriers[warp]->arrive_and_wait();
    return other;
}
using std::min;                                     // CUDA's integer min
#define __global__
#define __device__
// Static shared memory becomes a function-static array: one copy that all threads of a block
// see, which is right because blocks run one at a time.
#define __shared__ static
#define DYNAMIC_SHARED(name) float* name = reinterpret_cast<float*>(dynamic_shared.data())
#include "decode.cu"

// Every block of a one-dimensional grid, one after the other.
static void launch(int grid, int block, size_t shared_bytes, const std::function<void()>& kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    dynamic_shared.assign(shared_bytes, 0);
    warp_slots.assign(block, 0.0f);
    for (int b = 0; b < grid; b++) {
        blockIdx.x = b;
        std::barrier<> barrier(block);
        block_barrier = &barrier;
        warp_barriers.clear();
        for (int w = 0; w < (block + 31) / 32; w++)
            warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32, block - 32 * w)));
        std::vector<std::thread> threads;
        for (int t = 0; t < block; t++)
            threads.emplace_back([&, t] { threadIdx.x = t; kernel(); });
        for (auto& t : threads) t.join();
    }
}

extern "C" {
void run_begin_step(int grid, int block, const float* h, const bool* keep, int pos, float* inp,
                    bool* step_keep, int* step_pos, int n) {
    launch(grid, block, 0, [&] { begin_step(h, keep, pos, inp, step_keep, step_pos, n); });
}
void run_rms_norm(int grid, int block, const float* x, const float* scale, const float* residual,
                  int has_residual, float* out, int n, float eps) {
    launch(grid, block, 0, [&] { rms_norm(x, scale, residual, has_residual, out, n, eps); });
}
void run_rope_and_cache(int grid, int block, const float* q, const float* k, const float* v,
                        const bool* keep, float* q_rot, float* cache_k, float* cache_v,
                        bool* cache_keep, const int* step_pos, int H, int K, int d, float base) {
    launch(grid, block, 0, [&] {
        rope_and_cache(q, k, v, keep, q_rot, cache_k, cache_v, cache_keep, step_pos, H, K, d,
                       base);
    });
}
void run_attention_part(int grid, int block, size_t shared_bytes, const float* q_rot,
                        const float* cache_k, const float* cache_v, const bool* cache_keep,
                        float* part, float* part_max, float* part_sum, const int* step_pos,
                        int K, int G, int d, int chunk, float multiplier, float cap,
                        float masked) {
    launch(grid, block, shared_bytes, [&] {
        attention_part(q_rot, cache_k, cache_v, cache_keep, part, part_max, part_sum, step_pos,
                       K, G, d, chunk, multiplier, cap, masked);
    });
}
void run_attention_combine(int grid, int block, const float* part, const float* part_max,
                           const float* part_sum, float* out, const int* step_pos, int chunk,
                           int H, int d) {
    launch(grid, block, 0, [&] {
        attention_combine(part, part_max, part_sum, out, step_pos, chunk, H, d);
    });
}
void run_router_logits(const float* x, const float* router, float* logits, int D, int E) {
    launch(E, ROUTER_THREADS, 0, [&] { router_logits(x, router, logits, D, E); });
}
void run_route_top_k(const float* logits, float* probs, int* ids, float* gates, int E, int k) {
    launch(1, 1, 0, [&] { route_top_k(logits, probs, ids, gates, E, k); });
}
void run_gelu_mul(int grid, int block, const float* xwv, float* out, int width, int n) {
    launch(grid, block, 0, [&] { gelu_mul(xwv, out, width, n); });
}
void run_add_experts(int grid, int block, const float* gates, const float* y, float* m, int k,
                     int n) {
    launch(grid, block, 0, [&] { add_experts(gates, y, m, k, n); });
}
}
