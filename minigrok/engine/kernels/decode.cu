// minigrok's GPU decode kernels: one token through a decoder layer in few launches
// (engine/decode.py launches them; tests/kernel/emulate_decode.cpp runs them on the CPU).
// The token's position is read from device memory (begin_step writes it), never passed by
// value: a layer's launches are then the same every step and can be replayed as one CUDA graph.
// Each follows the reference function it replaces, step for step, and is compiled without
// fused multiply-adds so that each product and sum rounds as CuPy's separate operations do.
// Every Grok-1 constant (eps, the RoPE base, the soft cap, the masked score) comes in as an
// argument from the reference module that defines it.
#define NEG_INF __int_as_float(0xff800000)
// The block's dynamic shared memory. (The CPU emulator defines it as a pointer of its own.)
#ifndef DYNAMIC_SHARED
#define DYNAMIC_SHARED(name) extern __shared__ float name[]
#endif

// Sum (or max) over a warp's 32 lanes, by halves; every lane gets the result.
__device__ float warp_reduce(float v, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    return v;
}

// Sum (or max) over the block, whose size is a multiple of 32; every thread gets the result.
// red: 32 floats of shared memory.
__device__ float block_reduce(float v, float* red, bool is_max) {
    v = warp_reduce(v, is_max);
    __syncthreads();                                   // red may be in use by the last call
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    int lane = threadIdx.x % 32;
    v = lane < blockDim.x / 32 ? red[lane] : (is_max ? NEG_INF : 0.0f);
    return warp_reduce(v, is_max);
}

// A decode step's inputs into the layer's fixed buffers: the token's activations h [n] to inp,
// its keep flag and position to step_keep[0], step_pos[0]. h may already be inp.
extern "C" __global__ void begin_step(const float* h, const bool* keep, int pos, float* inp,
                                      bool* step_keep, int* step_pos, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) inp[i] = h[i];
    if (i == 0) {
        step_keep[0] = keep[0];
        step_pos[0] = pos;
    }
}

// rmsnorm.rms_norm of one row, plus `residual` when has_residual (layer.py's h + norm(a)).
extern "C" __global__ void rms_norm(const float* x, const float* scale, const float* residual,
                                    int has_residual, float* out, int n, float eps) {
    __shared__ float red[32];
    float sq = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sq += x[i] * x[i];
    float root = sqrtf(block_reduce(sq, red, false) / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float y = x[i] / root * scale[i];
        out[i] = has_residual ? residual[i] + y : y;
    }
}

// rope.apply_rope on the token's H query heads and K key heads at position pos = step_pos[0]
// (rotate-half: feature f turns with feature f + d/2), then attention.py's cache writes at row
// pos: the rotated key, the value and the token's keep flag. One thread per rotated pair.
extern "C" __global__ void rope_and_cache(
        const float* q, const float* k, const float* v, const bool* keep, float* q_rot,
        float* cache_k, float* cache_v, bool* cache_keep, const int* step_pos, int H, int K,
        int d, float base) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, half = d / 2, pos = step_pos[0];
    if (i < K * d) cache_v[(size_t)pos * K * d + i] = v[i];
    if (i == 0) cache_keep[pos] = keep[0];
    if (i >= (H + K) * half) return;
    int head = i / half, f = i % half;
    float inv_freq = 1.0f / powf(base, (float)(2 * f) / (float)d);
    float angle = (float)pos * inv_freq;
    float c = cosf(angle), s = sinf(angle);
    const float* src = head < H ? q + head * d : k + (head - H) * d;
    float* dst = head < H ? q_rot + head * d : cache_k + ((size_t)pos * K + head - H) * d;
    float x1 = src[f], x2 = src[f + half];
    dst[f] = x1 * c + -x2 * s;
    dst[f + half] = x2 * c + x1 * s;
}

// attention.attention_weights and the weighted sum of values for the token's H = K G query
// heads over cache rows 0..S-1, S = step_pos[0] + 1, in two steps. A long cache must be read
// by many blocks at once to be read at the memory's speed, and each row should be read once,
// not once for each of the G query heads that share its kv head. So block b takes kv head
// b / P_max with its G query heads and rows [c0, c0 + chunk), c0 = c chunk, c = b % P_max:
// q.k * multiplier, cap tanh(s / cap), padding keys at masked, a softmax over its own rows,
// and those probabilities @ values; it leaves its scores' maximum and sum of exponentials
// too, and attention_combine weights the P = ceil(S / chunk) parts: part c counts
// exp(max_c - max) sum_c / (the same summed over the parts), which is exactly the share of
// the probability its rows get from a softmax over all S rows. The grid has room for the
// whole cache, P_max blocks per kv head (gridDim.x = K P_max), so that it need not change as
// S grows; blocks past P return at once.
// part: [P_max, H, d]; part_max, part_sum: [P_max, H]. Scores live in shared memory: [G, chunk].
extern "C" __global__ void attention_part(
        const float* q_rot, const float* cache_k, const float* cache_v, const bool* cache_keep,
        float* part, float* part_max, float* part_sum, const int* step_pos, int K, int G, int d,
        int chunk, float multiplier, float cap, float masked) {
    DYNAMIC_SHARED(shared);
    int S = step_pos[0] + 1, P = (S + chunk - 1) / chunk, P_max = gridDim.x / K, H = K * G;
    int kv = blockIdx.x / P_max, c = blockIdx.x % P_max, c0 = c * chunk, n = min(chunk, S - c0);
    if (c >= P) return;
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const float* q = q_rot + (size_t)kv * G * d;       // the kv head's G query heads
    // A warp per key, against each of the G queries in turn. The key loop is unrolled so that
    // several rows are in flight at once: one at a time, the cache would be read at the
    // memory's latency, not its bandwidth.
    #pragma unroll 4
    for (int j = warp; j < n; j += warps) {
        const float* kj = cache_k + ((size_t)(c0 + j) * K + kv) * d;
        bool kept = cache_keep[c0 + j];
        for (int g = 0; g < G; g++) {
            float dot = 0.0f;
            for (int e = lane; e < d; e += 32) dot += q[g * d + e] * kj[e];
            dot = warp_reduce(dot, false);
            float s = dot * multiplier;
            s = cap * tanhf(s / cap);
            if (lane == 0) shared[g * chunk + j] = kept ? s : masked;
        }
    }
    __syncthreads();
    for (int g = warp; g < G; g += warps) {            // a warp per query head: the softmax
        float* p = shared + g * chunk;
        float top = NEG_INF, total = 0.0f;
        for (int j = lane; j < n; j += 32) top = fmaxf(top, p[j]);
        top = warp_reduce(top, true);
        for (int j = lane; j < n; j += 32) {
            p[j] = expf(p[j] - top);
            total += p[j];
        }
        total = warp_reduce(total, false);
        for (int j = lane; j < n; j += 32) p[j] = p[j] / total;
        if (lane == 0) {
            part_max[c * H + kv * G + g] = top;
            part_sum[c * H + kv * G + g] = total;
        }
    }
    __syncthreads();
    // A thread per feature e, eight query heads at a time: each value row is read once for
    // them all, the rows in order (and unrolled, as the keys are).
    for (int e = threadIdx.x; e < d; e += blockDim.x)
        for (int g0 = 0; g0 < G; g0 += 8) {
            int m = min(8, G - g0);
            float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            #pragma unroll 8
            for (int j = 0; j < n; j++) {
                float v = cache_v[((size_t)(c0 + j) * K + kv) * d + e];
                #pragma unroll                         // (acc stays in registers)
                for (int g = 0; g < 8; g++)
                    if (g < m) acc[g] += shared[(g0 + g) * chunk + j] * v;
            }
            #pragma unroll
            for (int g = 0; g < 8; g++)
                if (g < m) part[((size_t)c * H + kv * G + g0 + g) * d + e] = acc[g];
        }
}

// The P parts of attention_part into out [H, d]: a block per query head. With one part its
// share is part_sum / part_sum = 1 exactly, and out is that part, bit for bit.
extern "C" __global__ void attention_combine(const float* part, const float* part_max,
                                             const float* part_sum, float* out,
                                             const int* step_pos, int chunk, int H, int d) {
    int h = blockIdx.x, P = (step_pos[0] + chunk) / chunk;         // ceil((pos + 1) / chunk)
    float top = NEG_INF, total = 0.0f;
    for (int c = 0; c < P; c++) top = fmaxf(top, part_max[c * H + h]);
    for (int c = 0; c < P; c++) total += part_sum[c * H + h] * expf(part_max[c * H + h] - top);
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < P; c++) {
            float share = part_sum[c * H + h] * expf(part_max[c * H + h] - top) / total;
            acc += share * part[((size_t)c * H + h) * d + e];
        }
        out[(size_t)h * d + e] = acc;
    }
}

// moe.route's router product for one token: logits [E] = x [D] @ router [D, E], as the
// reference computes it: each product and sum in float64 (a float32 product is exact there),
// rounded to float32 once at the end. So the logits do not depend on the order of the sum
// (to within float64's rounding, ~1e-13 of the terms), and the experts are chosen as the
// reference chooses them even where two logits are an ulp apart or equal. A block per expert,
// 256 threads (the block size the shared sums are made for), each summing every 256th row,
// then halving in shared memory: the same order every run.
#define ROUTER_THREADS 256
extern "C" __global__ void router_logits(const float* x, const float* router, float* logits,
                                         int D, int E) {
    __shared__ double sums[ROUTER_THREADS];
    int e = blockIdx.x, t = threadIdx.x;
    double sum = 0.0;
    for (int i = t; i < D; i += ROUTER_THREADS)
        sum += (double)x[i] * (double)router[(size_t)i * E + e];
    sums[t] = sum;
    for (int half = ROUTER_THREADS / 2; half > 0; half /= 2) {
        __syncthreads();
        if (t < half) sums[t] += sums[t + half];
    }
    if (t == 0) logits[e] = (float)sums[0];
}

// moe.route for one token: softmax over the E router logits for the gates, and the k largest
// logits for the experts (k rounds of "largest left", the lower index winning a tie, as
// jax.lax.top_k does). One thread: E is 8. ids, gates: [k], by ascending expert index.
extern "C" __global__ void route_top_k(const float* logits, float* probs, int* ids,
                                       float* gates, int E, int k) {
    float top = logits[0], total = 0.0f;
    for (int e = 1; e < E; e++) top = fmaxf(top, logits[e]);
    for (int e = 0; e < E; e++) total += probs[e] = expf(logits[e] - top);
    for (int e = 0; e < E; e++) probs[e] = probs[e] / total;
    bool taken[64] = {false};
    for (int r = 0; r < k; r++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || logits[e] > logits[best])) best = e;
        taken[best] = true;
    }
    // The chosen experts in ascending order, the order moe.moe adds them in.
    for (int e = 0, r = 0; e < E; e++)
        if (taken[e]) {
            ids[r] = e;
            gates[r++] = probs[e];
        }
}

// moe.expert's gelu(x W) * (x V), with moe.gelu's tanh approximation, for every routed
// expert: xwv holds int8_gemv_routed's rows x W, x V of each expert in turn ([2k, width]),
// out is [k, width] and n = k * width.
extern "C" __global__ void gelu_mul(const float* xwv, float* out, int width, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int e = i / width, c = i - e * width;
    float x = xwv[(size_t)2 * e * width + c], v = xwv[(size_t)(2 * e + 1) * width + c];
    out[i] = 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))) * v;
}

// moe.moe's sum of gate * expert output over the k routed experts, in its order (from
// zeros, ascending expert index): y [k, n], gates [k] -> m [n].
extern "C" __global__ void add_experts(const float* gates, const float* y, float* m, int k,
                                       int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float total = 0.0f;
    for (int e = 0; e < k; e++) total = total + gates[e] * y[(size_t)e * n + i];
    m[i] = total;
}
