/* Thread-local last error, the clock, and growable buffers. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Thread_local char last_error[512] = "no error";

hearth_status hearth_fail(hearth_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

const char *hearth_last_error(void) { return last_error; }

int hearth_abi_version(void) { return HEARTH_CORE_ABI_VERSION; }

int64_t hearth_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Grow to at least `need` elements of `elem` bytes, doubling. */
static bool grow(void **data, int32_t *cap, int32_t need, size_t elem) {
    if (need <= *cap) {
        return true;
    }
    int64_t ncap = *cap > 0 ? *cap : 16;
    while (ncap < need) {
        ncap *= 2;
    }
    if (ncap > INT32_MAX) {
        return false;
    }
    void *p = realloc(*data, (size_t)ncap * elem);
    if (!p) {
        return false;
    }
    *data = p;
    *cap = (int32_t)ncap;
    return true;
}

bool hbytes_append(hbytes *b, const char *src, int32_t n) {
    if (n <= 0) {
        return true;
    }
    /* +1 keeps room for a terminating NUL so the text can be read as a C
     * string by callers that want one. */
    if (!grow((void **)&b->data, &b->cap, b->len + n + 1, 1)) {
        return false;
    }
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    b->data[b->len] = '\0';
    return true;
}

void hbytes_free(hbytes *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

bool htokens_reserve(htokens *t, int32_t cap) {
    return grow((void **)&t->data, &t->cap, cap, sizeof(int32_t));
}

bool htokens_append(htokens *t, const int32_t *src, int32_t n) {
    if (n <= 0) {
        return true;
    }
    if (!htokens_reserve(t, t->len + n)) {
        return false;
    }
    memcpy(t->data + t->len, src, (size_t)n * sizeof(int32_t));
    t->len += n;
    return true;
}

void htokens_free(htokens *t) {
    free(t->data);
    t->data = NULL;
    t->len = t->cap = 0;
}

bool hlogprobs_append(hlogprobs *l, const hearth_logprob *src, int32_t n) {
    if (n <= 0) {
        return true;
    }
    if (!grow((void **)&l->data, &l->cap, l->len + n, sizeof(hearth_logprob))) {
        return false;
    }
    memcpy(l->data + l->len, src, (size_t)n * sizeof(hearth_logprob));
    l->len += n;
    return true;
}

void hlogprobs_free(hlogprobs *l) {
    free(l->data);
    l->data = NULL;
    l->len = l->cap = 0;
}

void hearth_batch_add(struct llama_batch *b, llama_token tok, llama_pos pos, int32_t seq,
                      bool logits) {
    int32_t i = b->n_tokens++;
    b->token[i] = tok;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = seq;
    b->logits[i] = logits;
}
