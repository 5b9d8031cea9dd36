#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && !defined(MINIGROK_PORTABLE)
#include <immintrin.h>
#define USE_AVX2 1
/* 8 int8 -> 8 int32 -> 8 float32, in registers */
#define WIDEN(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#endif

enum { TILE = 16384 };       /* partial sums per thread: 64 KB, in the second-level cache */

/* part[t][j] += x[t][k] * w[k][j] for tokens t < T, columns j < n and rows k < rows (at
   most 4), one row after another. part's rows are ld apart, x's x_stride, w's stride. */
static void add_rows(float *restrict part, int64_t ld, const int8_t *restrict w,
                     int64_t stride, const float *restrict x, int64_t x_stride, int64_t T,
                     int rows, int64_t n) {
    int64_t j = 0;
#ifdef USE_AVX2
    if (rows == 4) {
        __m256 x0 = _mm256_set1_ps(x[0]), x1 = _mm256_set1_ps(x[1]);
        __m256 x2 = _mm256_set1_ps(x[2]), x3 = _mm256_set1_ps(x[3]);
        for (; j + 8 <= n; j += 8) {
            if (j % 64 == 0) {
                /* The next 4 rows' bytes, a cache line at a time: the hardware prefetcher
                   stops at each 4 KB page, and the next rows start on new pages. (Past the
                   last row this touches nothing: a prefetch never faults.) */
                for (int k = 4; k < 8; k++)
                    _mm_prefetch((const char *)(w + k * stride + j), _MM_HINT_T1);
            }
            /* each row's 8 weights widened once, for all the tokens */
            __m256 w0 = WIDEN(w + j), w1 = WIDEN(w + stride + j);
            __m256 w2 = WIDEN(w + 2 * stride + j), w3 = WIDEN(w + 3 * stride + j);
            if (T == 1) {                   /* decoding: x's 4 values stay in registers */
                __m256 s = _mm256_loadu_ps(part + j);
                s = _mm256_fmadd_ps(x0, w0, s);
                s = _mm256_fmadd_ps(x1, w1, s);
                s = _mm256_fmadd_ps(x2, w2, s);
                s = _mm256_fmadd_ps(x3, w3, s);
                _mm256_storeu_ps(part + j, s);
                continue;
            }
            for (int64_t t = 0; t < T; t++) {
                const float *xt = x + t * x_stride;
                __m256 s = _mm256_loadu_ps(part + t * ld + j);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[0]), w0, s);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[1]), w1, s);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[2]), w2, s);
                s = _mm256_fmadd_ps(_mm256_set1_ps(xt[3]), w3, s);
                _mm256_storeu_ps(part + t * ld + j, s);
            }
        }
    }
#endif
    for (int64_t t = 0; t < T; t++) {      /* plain C: the rest, or everything without AVX2 */
        const float *xt = x + t * x_stride;
        float *pt = part + t * ld;
        if (rows == 4) {                    /* spelled out, so that compilers vectorise it */
            const int8_t *w1 = w + stride, *w2 = w1 + stride, *w3 = w2 + stride;
            for (int64_t i = j; i < n; i++) {
                float s = pt[i];
                s += xt[0] * (float)w[i];
                s += xt[1] * (float)w1[i];
                s += xt[2] * (float)w2[i];
                s += xt[3] * (float)w3[i];
                pt[i] = s;
            }
        } else {                            /* the last rows of a scale block, fewer than 4 */
            for (int64_t i = j; i < n; i++) {
                float s = pt[i];
                for (int k = 0; k < rows; k++) s += xt[k] * (float)w[k * stride + i];
                pt[i] = s;
            }
        }
    }
}

/* One scale block: y[:, c0:c1] = (x [T, rows] @ w[:, c0:c1]) * scales[c0:c1], w int8
   [rows, n_out], y [T, n_out]; x's rows are x_stride apart. T at most TILE / 64. */
void int8_matmul(const float *x, int64_t x_stride, const int8_t *w, const float *scales,
                 float *y, int64_t T, int64_t rows, int64_t n_out, int64_t c0, int64_t c1) {
    /* The sums stay on the stack until the end: summing in y itself measured 20-25% slower
       here, and up to 2x slower for some distances between y and w in memory. */
    float part[TILE];
    /* T rows of sums fill TILE, each ld floats apart. ld is kept off multiples of 1024
       floats (4 KB): with 8 tokens and rows 2048 apart, the 8 rows of sums and the 4 weight
       rows (n_out apart, a multiple of 4 KB on Grok-1) all fell into one set of the 8-way
       first-level cache, and 8 tokens took twice as long as 6. */
    int64_t ld = TILE / T / 16 * 16 - 16, cols = ld - 16;
    for (int64_t j0 = c0; j0 < c1; j0 += cols) {
        int64_t n = c1 - j0 < cols ? c1 - j0 : cols;
        for (int64_t t = 0; t < T; t++) memset(part + t * ld, 0, n * sizeof(float));
        for (int64_t r = 0; r < rows; r += 4)
            add_rows(part, ld, w + r * n_out + j0, n_out, x + r, x_stride, T,
                     rows - r < 4 ? (int)(rows - r) : 4, n);
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < n; j++)
                y[t * n_out + j0 + j] = part[t * ld + j] * scales[j0 + j];
    }
}
