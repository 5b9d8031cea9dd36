#include <stdint.h>
#if defined(__AVX2__) && defined(__FMA__) && !defined(MINIGROK_PORTABLE)
#include <immintrin.h>
#define USE_AVX2 1

static float sum8(__m256 a) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
}
#endif

/* out[r] = dot(h, m[r]) for n <= 4 rows m[r] = row + r * D. */
static void dot_rows(const float *h, const float *row, int64_t D, int n, float *out) {
    int64_t k = 0;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#ifdef USE_AVX2
    if (n == 4) {
        __m256 a[4], b[4];
        for (int r = 0; r < 4; r++) a[r] = b[r] = _mm256_setzero_ps();
        for (; k + 16 <= D; k += 16) {
            __m256 h0 = _mm256_loadu_ps(h + k), h1 = _mm256_loadu_ps(h + k + 8);
            for (int r = 0; r < 4; r++) {
                a[r] = _mm256_fmadd_ps(h0, _mm256_loadu_ps(row + r * D + k), a[r]);
                b[r] = _mm256_fmadd_ps(h1, _mm256_loadu_ps(row + r * D + k + 8), b[r]);
            }
        }
        for (int r = 0; r < 4; r++) sum[r] = sum8(_mm256_add_ps(a[r], b[r]));
    }
#endif
    for (int r = 0; r < n; r++) {
        float s = sum[r];
        for (int64_t i = k; i < D; i++) s += h[i] * row[r * D + i];
        out[r] = s;
    }
}

/* out[t * ld + r] = dot(h[t], m[r]) for rows r0 <= r < r1 of m [V, D] and tokens t < T of
   h [T, D]: the logits h @ m.T over the tied embedding.

   The loads are unaligned, so the checkpoint's float32 payload, which starts wherever its
   pickle header ends, is read in place: numpy hands unaligned arrays to no BLAS, and copying
   the rows into aligned buffers first had held this product to 20-22 GB/s. Four rows at a
   time, each read once for all the tokens (96 KB on Grok-1, in the second-level cache while
   the tokens pass). On the 2-core EPYC, Grok-1's 3.2 GB embedding, one token (medians of 9
   alternating rounds): one row at a time 24.8-27.2 GB/s, two 25.8-28.2, four 28.9-29.8. */
void unembed(const float *h, int64_t T, const float *m, int64_t D, float *out, int64_t ld,
             int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r += 4) {
        int n = r1 - r < 4 ? (int)(r1 - r) : 4;
        for (int64_t t = 0; t < T; t++) dot_rows(h + t * D, m + r * D, D, n, out + t * ld + r);
    }
}
