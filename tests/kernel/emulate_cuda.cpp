// Runs minigrok's CUDA int8 GEMV kernels (minigrok/engine/kernels/gemv.cu, included) on the CPU:
// one std::thread per CUDA thread, a std::barrier for __syncthreads, blocks one after the
// other. It checks the kernel's indexing, tiling and shared-memory reduction where there is
// no GPU; speed and the GPU's own behaviour are tests/test_cupy.py's job.
//
//   emulate_cuda GRID_X GRID_Y BLOCK_X BLOCK_Y N_IN N_OUT ROWS ROWS_PER_SCALE TOKENS IN OUT
//
// TOKENS is 1 (the kernel int8_gemv) or GEMV_TOKENS (int8_gemv_tokens). IN holds x (float32
// [TOKENS, N_IN]), then w (int8 [N_IN, N_OUT]), then the scales (bf16 bits, uint16
// [N_IN / ROWS_PER_SCALE, N_OUT]); OUT receives y (float32 [TOKENS, N_OUT]), then the arrival
// counters (uint32 [GRID_X], which the kernel must leave as the zeros it was given).
//
//   emulate_cuda routed GRID_X GRID_Y GRID_Z N_IN N_OUT ROWS ROWS_PER_SCALE E PER_EXPERT X_STEP IN OUT
//
// int8_gemv_routed, blocks (32, 8), K = GRID_Z / PER_EXPERT experts: IN holds x (float32
// [X_STEP ? K : 1, N_IN]), w_a (int8 [E, N_IN, N_OUT]), s_a (uint16 [E, N_IN / ROWS_PER_SCALE,
// N_OUT]), w_b, s_b, then the experts (int32 [K]); OUT receives y (float32 [GRID_Z, N_OUT]),
// then the arrival counters (uint32 [GRID_Z * GRID_X]).
//
//   emulate_cuda three GRID_X GRID_Y GRID_Z N_IN ROWS WIDEST N0 RPS0 N1 RPS1 N2 RPS2 IN OUT
//
// int8_gemv_three, blocks (32, 8), GRID_Z matrices [N_IN, Nz] with Nz / RPSz rows per scale
// block: IN holds x (float32 [N_IN]), then each matrix's w (int8) and scales (uint16); OUT
// receives each y (float32 [Nz]), then the arrival counters (uint32 [GRID_Z * GRID_X]).
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct dim3 { int x = 0, y = 0, z = 0; };
thread_local dim3 threadIdx;
dim3 blockIdx, gridDim;
static std::barrier<>* block_barrier;
struct alignas(16) int4 { int x, y, z, w; };
inline void __syncthreads() { block_barrier->arrive_and_wait(); }
inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
// Blocks run one after the other, so every write is seen by the next block without a fence.
inline void __threadfence() {}
inline float __ldcg(const float* p) { return *p; }
// Byte i of the result is byte (s >> 4i) & 7 of y:x (no sign-replicate mode).
inline unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    unsigned long long both = ((unsigned long long)y << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned int)((both >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
#define __global__
#define __device__
#define __restrict__
// Shared memory becomes a function-static array: one copy that all threads of a block see,
// which is right because blocks run one at a time.
#define __shared__ static
#include "gemv.cu"

// Every block of the grid, one after the other, each with one std::thread per CUDA thread.
static void launch(int gx, int gy, int gz, int bx, int by, const std::function<void()>& kernel) {
    gridDim.x = gx; gridDim.y = gy; gridDim.z = gz;
    for (int k = 0; k < gz; k++)
        for (int j = 0; j < gy; j++)
            for (int i = 0; i < gx; i++) {
                blockIdx.x = i; blockIdx.y = j; blockIdx.z = k;
                std::barrier<> barrier(bx * by);
                block_barrier = &barrier;
                std::vector<std::thread> threads;
                for (int ty = 0; ty < by; ty++)
                    for (int tx = 0; tx < bx; tx++)
                        threads.emplace_back([&, tx, ty] {
                            threadIdx.x = tx; threadIdx.y = ty;
                            kernel();
                        });
                for (auto& t : threads) t.join();
            }
}

template <typename T>
static bool read(FILE* in, std::vector<T>& v) { return std::fread(v.data(), sizeof(T), v.size(), in) == v.size(); }

static int routed(char** argv) {
    int gx = std::atoi(argv[2]), gy = std::atoi(argv[3]), gz = std::atoi(argv[4]),
        n_in = std::atoi(argv[5]), n_out = std::atoi(argv[6]), rows = std::atoi(argv[7]),
        rows_per_scale = std::atoi(argv[8]), E = std::atoi(argv[9]),
        per_expert = std::atoi(argv[10]), x_step = std::atoi(argv[11]);
    int K = gz / per_expert;
    size_t nw = (size_t)E * n_in * n_out, ns = (size_t)E * (n_in / rows_per_scale) * n_out;
    std::vector<float> x((size_t)(x_step ? K : 1) * n_in), partial((size_t)gz * gy * n_out),
        y((size_t)gz * n_out, -1.0f);
    std::vector<signed char> w_a(nw), w_b(nw);
    std::vector<unsigned short> s_a(ns), s_b(ns);
    std::vector<int> experts(K);
    std::vector<unsigned int> arrived((size_t)gz * gx, 0);
    FILE* in = std::fopen(argv[12], "rb");
    if (!in || !read(in, x) || !read(in, w_a) || !read(in, s_a) || !read(in, w_b) ||
        !read(in, s_b) || !read(in, experts)) { std::fprintf(stderr, "bad input\n"); return 2; }
    std::fclose(in);
    launch(gx, gy, gz, 32, 8, [&] {
        int8_gemv_routed(x.data(), x_step, w_a.data(), s_a.data(), w_b.data(), s_b.data(),
                         experts.data(), per_expert, partial.data(), arrived.data(), y.data(),
                         n_out, rows, rows_per_scale);
    });
    FILE* out = std::fopen(argv[13], "wb");
    std::fwrite(y.data(), 4, y.size(), out);
    std::fwrite(arrived.data(), 4, arrived.size(), out);
    std::fclose(out);
    return 0;
}

static int three(char** argv) {
    int gx = std::atoi(argv[2]), gy = std::atoi(argv[3]), gz = std::atoi(argv[4]),
        n_in = std::atoi(argv[5]), rows = std::atoi(argv[6]), widest = std::atoi(argv[7]);
    int n[3], rps[3];
    for (int z = 0; z < 3; z++) { n[z] = std::atoi(argv[8 + 2 * z]); rps[z] = std::atoi(argv[9 + 2 * z]); }
    std::vector<float> x(n_in), partial((size_t)gz * gy * widest), y[3];
    std::vector<signed char> w[3];
    std::vector<unsigned short> s[3];
    std::vector<unsigned int> arrived((size_t)gz * gx, 0);
    FILE* in = std::fopen(argv[14], "rb");
    bool ok = in && read(in, x);
    for (int z = 0; z < 3; z++) {
        w[z].resize(z < gz ? (size_t)n_in * n[z] : 16);
        s[z].resize(z < gz ? (size_t)(n_in / rps[z]) * n[z] : 1);
        y[z].assign(z < gz ? n[z] : 1, -1.0f);
        if (z < gz) ok = ok && read(in, w[z]) && read(in, s[z]);
    }
    if (!ok) { std::fprintf(stderr, "bad input\n"); return 2; }
    std::fclose(in);
    launch(gx, gy, gz, 32, 8, [&] {
        int8_gemv_three(x.data(), w[0].data(), s[0].data(), y[0].data(), n[0], rps[0],
                        w[1].data(), s[1].data(), y[1].data(), n[1], rps[1], w[2].data(),
                        s[2].data(), y[2].data(), n[2], rps[2], partial.data(), arrived.data(),
                        widest, rows);
    });
    FILE* out = std::fopen(argv[15], "wb");
    for (int z = 0; z < gz; z++) std::fwrite(y[z].data(), 4, y[z].size(), out);
    std::fwrite(arrived.data(), 4, arrived.size(), out);
    std::fclose(out);
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 14 && std::strcmp(argv[1], "routed") == 0) return routed(argv);
    if (argc == 16 && std::strcmp(argv[1], "three") == 0) return three(argv);
    if (argc != 12) { std::fprintf(stderr, "usage: see the top of emulate_cuda.cpp\n"); return 2; }
    int gx = std::atoi(argv[1]), gy = std::atoi(argv[2]), bx = std::atoi(argv[3]),
        by = std::atoi(argv[4]), n_in = std::atoi(argv[5]), n_out = std::atoi(argv[6]),
        rows = std::atoi(argv[7]), rows_per_scale = std::atoi(argv[8]),
        tokens = std::atoi(argv[9]);
    if (tokens != 1 && tokens != GEMV_TOKENS) { std::fprintf(stderr, "bad TOKENS\n"); return 2; }
    size_t nw = (size_t)n_in * n_out, ns = (size_t)(n_in / rows_per_scale) * n_out;
    std::vector<float> x((size_t)tokens * n_in), partial((size_t)gy * tokens * n_out),
        y((size_t)tokens * n_out, -1.0f);
    std::vector<unsigned int> arrived(gx, 0);
    signed char* w = static_cast<signed char*>(std::aligned_alloc(16, (nw + 15) / 16 * 16));
    std::vector<unsigned short> scales(ns);
    FILE* in = std::fopen(argv[10], "rb");
    if (!in || !read(in, x) || std::fread(w, 1, nw, in) != nw || !read(in, scales)) {
        std::fprintf(stderr, "bad input\n"); return 2;
    }
    std::fclose(in);
    launch(gx, gy, 1, bx, by, [&] {
        (tokens == 1 ? int8_gemv : int8_gemv_tokens)(
            x.data(), w, scales.data(), partial.data(), arrived.data(), y.data(), n_out, rows,
            rows_per_scale);
    });
    FILE* out = std::fopen(argv[11], "wb");
    std::fwrite(y.data(), 4, y.size(), out);
    std::fwrite(arrived.data(), 4, arrived.size(), out);
    std::fclose(out);
    std::free(w);
    return 0;
}
