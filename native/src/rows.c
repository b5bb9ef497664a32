/*
 * Scans over one logits row.  Gemma's rows hold 262,144 entries, and the
 * engine reads one per decoding request per step, so these loops are the
 * per-token cost outside llama_decode.  A plain `best = max(best, x[i])`
 * loop is bound by the latency of its one max instruction (about 4 cycles
 * an entry, 0.4 ms a Gemma row: 7 ms of an 86 ms step at 16 streams); here
 * 16 independent lanes become vector accumulators, so the loop runs at load
 * throughput.  On x86-64 the compiler also emits AVX2 and AVX-512 copies,
 * chosen once at load time by the CPU the library finds (an offline bundle
 * moves between machines, so -march=native is not an option).
 */
#include "rows.h"

#include <math.h>
#include <string.h>

#define LANES 16
#define HIT_BLOCK 64

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* NaN never wins (x > m is false), so an all-NaN row gives -INFINITY.
 * Static, because GCC exports a cloned function's resolver whatever the
 * visibility; hearth_row_max below is the library-internal name. */
VECTOR_CLONES
static float row_max(const float *x, int32_t n) {
    float acc[LANES];
    for (int32_t j = 0; j < LANES; j++) {
        acc[j] = -INFINITY;
    }
    int32_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        for (int32_t j = 0; j < LANES; j++) {
            acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
        }
    }
    float m = -INFINITY;
    for (; i < n; i++) {
        m = x[i] > m ? x[i] : m;
    }
    for (int32_t j = 0; j < LANES; j++) {
        m = acc[j] > m ? acc[j] : m;
    }
    return m;
}

float hearth_row_max(const float *x, int32_t n) { return row_max(x, n); }

/* The first i with x[i] == v, or -1: whole blocks are tested with a
 * vectorised any-equal before one is scanned entry by entry. */
VECTOR_CLONES
static int32_t first_equal(const float *x, int32_t n, float v) {
    int32_t i = 0;
    for (; i + HIT_BLOCK <= n; i += HIT_BLOCK) {
        int hit = 0;
        for (int32_t j = 0; j < HIT_BLOCK; j++) {
            hit |= x[i + j] == v;
        }
        if (hit) {
            break;
        }
    }
    for (; i < n; i++) {
        if (x[i] == v) {
            return i;
        }
    }
    return -1;
}

/* Tokens are banned by a 0/1 mask with few ones (the end-of-generation
 * tokens); the row is cut at each, and every piece is scanned whole. */
int32_t hearth_row_argmax(const float *x, int32_t n, const uint8_t *ban) {
    float best = -INFINITY;
    int32_t at = -1;
    int32_t start = 0;
    while (start < n) {
        int32_t end = n;
        if (ban) {
            const uint8_t *b = memchr(ban + start, 1, (size_t)(n - start));
            end = b ? (int32_t)(b - ban) : n;
        }
        if (end > start) {
            float m = row_max(x + start, end - start);
            if (m > best) { /* strictly: the lowest index wins ties */
                best = m;
                at = start + first_equal(x + start, end - start, m);
            }
        }
        start = end + 1;
    }
    return at;
}
