#include <stdint.h>
#if defined(__AVX2__) && !defined(MINIGROK_PORTABLE)
#include <immintrin.h>
#define USE_AVX2 1
#endif

/* The XOR of the 8-byte words of p[0:n] (n a multiple of 8): a loop that only reads, for
   `bench`'s yardstick, the memory's own read bandwidth (read_gb_s). Returning the XOR keeps
   the compiler from skipping the reads, and lets the tests check that every byte was read. */
uint64_t read_memory(const uint8_t *p, int64_t n) {
    uint64_t x = 0;
    int64_t i = 0;
#ifdef USE_AVX2
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (; i + 128 <= n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes,
                        _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3)));
    x = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        __builtin_memcpy(&word, p + i, 8);
        x ^= word;
    }
    return x;
}
