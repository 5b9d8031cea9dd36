// minigrok's int8 GEMV kernels for the GPU: y = x @ (q * s) reading each weight byte once
// (engine/gemv.py launches them and explains the layout; tests/kernel/emulate_cuda.cpp runs
// them on the CPU). GEMV_TOKENS, the tokens per launch of int8_gemv_tokens, comes from the
// compiler options (engine/gemv.py passes -DGEMV_TOKENS=...).
#ifndef GEMV_TOKENS
#error "compile with -DGEMV_TOKENS=n"
#endif
template <int TOKENS>
__device__ void gemv(
        const float* __restrict__ x,                // [TOKENS, n_in]
        const signed char* __restrict__ w,          // [n_in, n_out], rows 16-byte aligned
        const unsigned short* __restrict__ scales,  // [n_blocks, n_out] bfloat16 bits
        float* __restrict__ partial,                // [n_in / rows, TOKENS, n_out] scratch
        unsigned int* __restrict__ arrived,         // [gridDim.x] zeros, left as zeros
        float* __restrict__ y,                      // [TOKENS, n_out]
        int n_out, int rows, int rows_per_scale) {
    const int COLUMNS = 16, WARPS = 32, LANES = 8;
    __shared__ float sums[LANES][WARPS * COLUMNS];
    __shared__ bool last;
    int tile = blockIdx.x * WARPS * COLUMNS;               // first column of this block
    int col = tile + threadIdx.x * COLUMNS;                // first column of this thread
    int row0 = blockIdx.y * rows;
    int me = threadIdx.y * WARPS + threadIdx.x;            // 0 .. 255
    size_t n_in = (size_t)rows * gridDim.y;
    float acc[TOKENS][COLUMNS];
    for (int t = 0; t < TOKENS; t++)
        for (int j = 0; j < COLUMNS; j++) acc[t][j] = 0.0f;
    if (col < n_out) {
        #pragma unroll 4
        for (int r = row0 + threadIdx.y; r < row0 + rows; r += LANES) {
            int4 packed = *reinterpret_cast<const int4*>(w + (size_t)r * n_out + col);
            const unsigned int* quad = reinterpret_cast<const unsigned int*>(&packed);
            float wf[COLUMNS];                             // widened once for all tokens
            // Not (float)q (see above): q + 128 goes into the low mantissa byte of 2^23,
            // where float32 numbers lie 1 apart, and 2^23 + 128 comes off again: q, exactly.
#ifndef WIDEN_BY_I2F
            #pragma unroll
            for (int j = 0; j < COLUMNS; j++) {
                unsigned int biased = quad[j / 4] ^ 0x80808080u;     // each byte: q + 128
                wf[j] = __uint_as_float(__byte_perm(biased, 0x4B000000u, 0x7540 + j % 4))
                        - 8388736.0f;
            }
#else       // the conversion instruction, only to measure against (tests/gpu_profile.py)
            const signed char* q = reinterpret_cast<const signed char*>(&packed);
            #pragma unroll
            for (int j = 0; j < COLUMNS; j++) wf[j] = (float)q[j];
#endif
            #pragma unroll
            for (int t = 0; t < TOKENS; t++) {
                float xr = x[t * n_in + r];
                #pragma unroll
                for (int j = 0; j < COLUMNS; j++) acc[t][j] += xr * wf[j];
            }
        }
    }
    // Token by token, the 256 threads add the 8 lanes of the 512 columns, two columns each.
    const unsigned short* s = scales + (size_t)(row0 / rows_per_scale) * n_out;
    for (int t = 0; t < TOKENS; t++) {
        for (int j = 0; j < COLUMNS; j++) sums[threadIdx.y][threadIdx.x * COLUMNS + j] = acc[t][j];
        __syncthreads();
        for (int c = me; c < WARPS * COLUMNS && tile + c < n_out; c += WARPS * LANES) {
            float total = 0.0f;
            for (int lane = 0; lane < LANES; lane++) total += sums[lane][c];
            float scale = __uint_as_float((unsigned int)s[tile + c] << 16);   // bf16 -> fp32
            partial[((size_t)blockIdx.y * TOKENS + t) * n_out + tile + c] = total * scale;
        }
        if (t + 1 < TOKENS) __syncthreads();               // before sums is written again
    }
    // Count this block in. The tile's last block to arrive sees every partial row (each
    // writer fenced before it was counted) and adds them.
    __threadfence();
    __syncthreads();
    if (me == 0) last = atomicAdd(&arrived[blockIdx.x], 1u) == gridDim.y - 1;
    __syncthreads();
    if (!last) return;
    // Lane l adds partial rows l, l + 8, ... for 16 columns 32 apart (a warp reads 128
    // contiguous bytes, 16 loads in flight per thread); then the lanes, in lane order.
    for (int t = 0; t < TOKENS; t++) {
        float sum[COLUMNS];
        for (int j = 0; j < COLUMNS; j++) sum[j] = 0.0f;
        for (int b = threadIdx.y; b < gridDim.y; b += LANES) {
            #pragma unroll
            for (int j = 0; j < COLUMNS; j++) {
                int c = tile + threadIdx.x + j * WARPS;
                if (c < n_out) sum[j] += __ldcg(partial + ((size_t)b * TOKENS + t) * n_out + c);
            }
        }
        for (int j = 0; j < COLUMNS; j++) sums[threadIdx.y][threadIdx.x + j * WARPS] = sum[j];
        __syncthreads();
        for (int c = me; c < WARPS * COLUMNS && tile + c < n_out; c += WARPS * LANES) {
            float total = 0.0f;
            for (int lane = 0; lane < LANES; lane++) total += sums[lane][c];
            y[(size_t)t * n_out + tile + c] = total;
        }
        if (t + 1 < TOKENS) __syncthreads();
    }
    if (me == 0) arrived[blockIdx.x] = 0;
}

extern "C" __global__ void int8_gemv(
        const float* x, const signed char* w, const unsigned short* scales, float* partial,
        unsigned int* arrived, float* y, int n_out, int rows, int rows_per_scale) {
    gemv<1>(x, w, scales, partial, arrived, y, n_out, rows, rows_per_scale);
}

// GEMV_TOKENS tokens at once (a prefill): each weight is read and widened once for all.
extern "C" __global__ void int8_gemv_tokens(
        const float* x, const signed char* w, const unsigned short* scales, float* partial,
        unsigned int* arrived, float* y, int n_out, int rows, int rows_per_scale) {
    gemv<GEMV_TOKENS>(x, w, scales, partial, arrived, y, n_out, rows, rows_per_scale);
}

// Up to three products of one token's x in one launch (a decode step's query, key and
// value): product z = blockIdx.z is by w0, w1 or w2, each [n_in, n_z] with its own scales,
// output and scale blocks. The grid's columns cover the widest; a block past its own
// matrix's columns has nothing to do, and returns before it could be counted in.
extern "C" __global__ void int8_gemv_three(
        const float* x, const signed char* w0, const unsigned short* s0, float* y0, int n0,
        int rps0, const signed char* w1, const unsigned short* s1, float* y1, int n1, int rps1,
        const signed char* w2, const unsigned short* s2, float* y2, int n2, int rps2,
        float* partial, unsigned int* arrived, int n_widest, int rows) {
    int z = blockIdx.z;
    int n_out = z == 0 ? n0 : z == 1 ? n1 : n2;
    if (blockIdx.x * 512 >= n_out) return;     // (512 columns a block) before any barrier
    gemv<1>(x, z == 0 ? w0 : z == 1 ? w1 : w2, z == 0 ? s0 : z == 1 ? s1 : s2,
            partial + (size_t)z * gridDim.y * n_widest, arrived + (size_t)z * gridDim.x,
            z == 0 ? y0 : z == 1 ? y1 : y2, n_out, rows, z == 0 ? rps0 : z == 1 ? rps1 : rps2);
}

// A decode step's products by its routed experts, all in one launch. Product z (blockIdx.z)
// is by expert experts[z / per_expert] of stacked weights [E, n_in, n_out] and scales
// [E, n_blocks, n_out]: w_a's for z % per_expert == 0, else w_b's; its x is row
// (z / per_expert) of x when x_step is n_in, the one row when it is 0. The GPU reads the
// experts' indices itself, so the host need not wait for the router to learn them; each
// product has its own partial rows, tile counters and output row z.
extern "C" __global__ void int8_gemv_routed(
        const float* x, int x_step, const signed char* w_a, const unsigned short* s_a,
        const signed char* w_b, const unsigned short* s_b, const int* experts, int per_expert,
        float* partial, unsigned int* arrived, float* y, int n_out, int rows,
        int rows_per_scale) {
    int z = blockIdx.z, slot = z / per_expert;
    size_t e = experts[slot], n_in = (size_t)rows * gridDim.y;
    const signed char* w = z % per_expert == 0 ? w_a : w_b;
    const unsigned short* s = z % per_expert == 0 ? s_a : s_b;
    gemv<1>(x + (size_t)slot * x_step, w + e * n_in * n_out,
            s + e * (n_in / rows_per_scale) * n_out, partial + (size_t)z * gridDim.y * n_out,
            arrived + (size_t)z * gridDim.x, y + (size_t)z * n_out, n_out, rows,
            rows_per_scale);
}
