#include <stdint.h>
#include <math.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && !defined(MINIGROK_PORTABLE)
#include <immintrin.h>
#define USE_AVX2 1
/* 8 int8 -> 8 int32 -> 8 float32, in registers */
#define WIDEN(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
/* The plain loops multiply-add as the vector ones do, rounding once: a token's sums are then
   the same bits whichever loop a column falls to, and whether it came alone (the AVX-512
   pass) or with others. */
#define MADD(a, b, c) fmaf(a, b, c)
#if defined(__AVX512F__)
#define USE_AVX512 1
/* 16 int8 -> 16 float32 */
#define WIDEN16(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#endif
#endif
#ifndef MADD
#define MADD(a, b, c) ((c) + (a) * (b))
#endif

enum { TILE = 16384 };       /* partial sums per thread: 64 KB, in the second-level cache */

#ifdef USE_AVX512
/* One token, up to 8 rows at a time: part[j] += x[k] * w[k][j], the rows added in order
   (the same sums as add_rows). Twice add_rows' rows per pass halves the partial sums'
   traffic, and 64 columns per step keep four independent chains of multiply-adds. On the
   2-core EPYC (Zen 4), a layer's 10 products, medians of 11 alternating rounds: add_rows
   22.0 GB/s against 24.1 for 8 rows of AVX-512 at 16 columns a step; in another set, 16
   columns a step 22.1 against 24.8 for 64. */
static void add_rows_one_token(float *restrict part, const int8_t *restrict w, int64_t stride,
                               const float *restrict x, int rows, int64_t n) {
    __m512 xs[8];
    for (int k = 0; k < 8; k++) xs[k] = _mm512_set1_ps(k < rows ? x[k] : 0.0f);
    int64_t j = 0;
    for (; j + 64 <= n; j += 64) {
        for (int k = 0; k < rows; k++)      /* the next pass's rows, as in add_rows */
            _mm_prefetch((const char *)(w + (k + 8) * stride + j), _MM_HINT_T1);
        __m512 s0 = _mm512_loadu_ps(part + j), s1 = _mm512_loadu_ps(part + j + 16);
        __m512 s2 = _mm512_loadu_ps(part + j + 32), s3 = _mm512_loadu_ps(part + j + 48);
        for (int k = 0; k < rows; k++) {
            const int8_t *p = w + k * stride + j;
            s0 = _mm512_fmadd_ps(xs[k], WIDEN16(p), s0);
            s1 = _mm512_fmadd_ps(xs[k], WIDEN16(p + 16), s1);
            s2 = _mm512_fmadd_ps(xs[k], WIDEN16(p + 32), s2);
            s3 = _mm512_fmadd_ps(xs[k], WIDEN16(p + 48), s3);
        }
        _mm512_storeu_ps(part + j, s0);
        _mm512_storeu_ps(part + j + 16, s1);
        _mm512_storeu_ps(part + j + 32, s2);
        _mm512_storeu_ps(part + j + 48, s3);
    }
    for (; j < n; j++) {
        float s = part[j];
        for (int k = 0; k < rows; k++) s = MADD(x[k], (float)w[k * stride + j], s);
        part[j] = s;
    }
}
#endif

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
                s = MADD(xt[0], (float)w[i], s);
                s = MADD(xt[1], (float)w1[i], s);
                s = MADD(xt[2], (float)w2[i], s);
                s = MADD(xt[3], (float)w3[i], s);
                pt[i] = s;
            }
        } else {                            /* the last rows of a scale block, fewer than 4 */
            for (int64_t i = j; i < n; i++) {
                float s = pt[i];
                for (int k = 0; k < rows; k++) s = MADD(xt[k], (float)w[k * stride + i], s);
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
#ifdef USE_AVX512
        if (T == 1) {
            for (int64_t r = 0; r < rows; r += 8)
                add_rows_one_token(part, w + r * n_out + j0, n_out, x + r,
                                   rows - r < 8 ? (int)(rows - r) : 8, n);
        } else
#endif
        for (int64_t r = 0; r < rows; r += 4)
            add_rows(part, ld, w + r * n_out + j0, n_out, x + r, x_stride, T,
                     rows - r < 4 ? (int)(rows - r) : 4, n);
        for (int64_t t = 0; t < T; t++)
            for (int64_t j = 0; j < n; j++)
                y[t * n_out + j0 + j] = part[t * ld + j] * scales[j0 + j];
    }
}
