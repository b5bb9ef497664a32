#define _GNU_SOURCE
/*
 * Drift signals: what the drift monitor (runtime/drift/) learns about a
 * request without keeping its text.  Computed only for requests that ask
 * (hearth_request_params.drift_signals, a sampled fraction), and published
 * with the request's final output.
 *
 *   prompt NLL     mean negative log-likelihood of the prompt's tokens under
 *                  the served model (base plus the request's adapter).  The
 *                  rows of prompt positions to score get logits in the same
 *                  llama_decode that prefills them; each row is reduced to
 *                  one number right after the step.  Every stride-th
 *                  position is scored, at most drift_rows / n_parallel per
 *                  prompt (drift_rows is an engine parameter), so a step
 *                  never needs more than drift_rows rows and the context's
 *                  logits buffer is bounded by (n_parallel + drift_rows)
 *                  rows whatever the prompt length.  A
 *                  sampled request recomputes any prefix the KV cache held
 *                  (hearth_drift_admitted), so which positions are scored
 *                  does not depend on earlier traffic.  The mean is over the
 *                  positions scored (drift_nll_positions).
 *   first-token    entropy of the model's distribution (raw logits, before
 *   entropy        sampling settings or a grammar) at the first
 *                  generated position.
 *   prompt pool    mean of the model's own input token embeddings
 *                  (token_embd.weight, dequantized row by row) over the
 *                  prompt.  The final hidden states would be the richer
 *                  choice, but llama.cpp gives them only in embeddings mode,
 *                  which computes outputs for every token of every request
 *                  in the batch; the input embeddings cost one row read per
 *                  prompt token, on the submitting thread.
 */
#include "internal.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ggml.h"
#include "gguf.h"


/* The model's token embedding table, mapped read-only from the GGUF. */
struct drift_table {
    pthread_mutex_t mu;
    bool tried;             /* opened once, successfully or not */
    char *path;             /* model source: path, or a dup of its fd */
    int fd;
    void *map;
    size_t map_len;
    const uint8_t *rows;
    size_t row_bytes;
    int64_t n_embd;
    int64_t n_rows;
    enum ggml_type type;
    ggml_to_float_t to_float;
};

typedef struct drift_row {
    hearth_request *r;
    int32_t batch_row;
    llama_token target;     /* the prompt token this row's logits predict */
} drift_row;

struct drift_step {
    int32_t n;
    int32_t cap;            /* engine param drift_rows */
    drift_row rows[];
};

static bool table_open(struct drift_table *t);

hearth_status hearth_drift_engine_init(hearth_engine *e) {
    struct drift_table *t = calloc(1, sizeof *t);
    int32_t cap = e->params.drift_rows;
    struct drift_step *s = calloc(1, sizeof *s + (size_t)cap * sizeof(drift_row));
    if (!t || !s) {
        free(t);
        free(s);
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    pthread_mutex_init(&t->mu, NULL);
    s->cap = cap;
    t->fd = -1;
    if (e->params.model_fd >= 0) {
        t->fd = fcntl(e->params.model_fd, F_DUPFD_CLOEXEC, 0);
    } else if (e->params.model_path) {
        t->path = strdup(e->params.model_path);
    }
    e->drift_table = t;
    e->drift_step = s;
    if (cap > 0) {
        /* Drift is on: parse the GGUF's header now, at load, rather than in
         * the first sampled request's submit (the caller's event loop). */
        pthread_mutex_lock(&t->mu);
        t->tried = true;
        if (!table_open(t)) {
            t->rows = NULL;
        }
        pthread_mutex_unlock(&t->mu);
    }
    return HEARTH_OK;
}

void hearth_drift_engine_free(hearth_engine *e) {
    struct drift_table *t = e->drift_table;
    if (t) {
        if (t->map) {
            munmap(t->map, t->map_len);
        }
        if (t->fd >= 0) {
            close(t->fd);
        }
        free(t->path);
        pthread_mutex_destroy(&t->mu);
        free(t);
    }
    free(e->drift_step);
    e->drift_table = NULL;
    e->drift_step = NULL;
}

/* Maps token_embd.weight; false (once, for good) when the model has none
 * we can read.  t->mu held. */
static bool table_open(struct drift_table *t) {
    int fd = -1;
    if (t->fd >= 0) {
        /* A file description of our own: a dup would share (and move) the
         * offset of the descriptor the model is loaded from. */
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", t->fd);
        fd = open(proc, O_RDONLY | O_CLOEXEC);
    } else if (t->path) {
        fd = open(t->path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        return false;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return false;
    }
    struct ggml_context *meta = NULL;
    struct gguf_init_params gp = {.no_alloc = true, .ctx = &meta};
    struct gguf_context *g = gguf_init_from_file_ptr(f, gp);
    bool ok = false;
    struct stat st;
    if (g && meta && fstat(fd, &st) == 0) {
        int64_t id = gguf_find_tensor(g, "token_embd.weight");
        struct ggml_tensor *w = ggml_get_tensor(meta, "token_embd.weight");
        const struct ggml_type_traits *tr = NULL;
        if (id >= 0 && w) {
            t->type = gguf_get_tensor_type(g, id);
            tr = ggml_get_type_traits(t->type);
            t->n_embd = w->ne[0];
            t->n_rows = w->ne[1];
            t->row_bytes = ggml_row_size(t->type, t->n_embd);
            t->to_float = tr ? tr->to_float : NULL;
        }
        size_t start = id >= 0 ? gguf_get_data_offset(g) + gguf_get_tensor_offset(g, id) : 0;
        bool readable = t->to_float || t->type == GGML_TYPE_F32;
        if (id >= 0 && w && readable && start + t->row_bytes * (size_t)t->n_rows <= (size_t)st.st_size) {
            void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
            if (m != MAP_FAILED) {
                t->map = m;
                t->map_len = (size_t)st.st_size;
                t->rows = (const uint8_t *)m + start;
                ok = true;
            }
        }
    }
    if (g) {
        gguf_free(g);
    }
    if (meta) {
        ggml_free(meta);
    }
    fclose(f);
    return ok;
}

/* Mean input embedding of the prompt into r->drift.pool; nothing when the
 * table cannot be read (the signal is then absent, not wrong). */
static void pool_prompt(hearth_engine *e, hearth_request *r) {
    struct drift_table *t = e->drift_table;
    if (!t) {
        return;
    }
    pthread_mutex_lock(&t->mu);
    if (!t->tried) {
        t->tried = true;
        if (!table_open(t)) {
            t->rows = NULL;
        }
    }
    pthread_mutex_unlock(&t->mu);
    if (!t->rows || t->n_embd <= 0) {
        return;
    }
    float *sum = calloc((size_t)t->n_embd, sizeof(float));
    float *row = malloc((size_t)t->n_embd * sizeof(float));
    if (!sum || !row) {
        free(sum);
        free(row);
        return;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < r->prompt.len; i++) {
        int32_t tok = r->prompt.data[i];
        if (tok < 0 || tok >= t->n_rows) {
            continue;
        }
        const uint8_t *src = t->rows + (size_t)tok * t->row_bytes;
        if (t->type == GGML_TYPE_F32) {
            memcpy(row, src, (size_t)t->n_embd * sizeof(float));
        } else {
            t->to_float(src, row, t->n_embd);
        }
        for (int64_t k = 0; k < t->n_embd; k++) {
            sum[k] += row[k];
        }
        n++;
    }
    free(row);
    if (n == 0) {
        free(sum);
        return;
    }
    for (int64_t k = 0; k < t->n_embd; k++) {
        sum[k] /= (float)n;
    }
    r->drift.pool = sum;
    r->drift.n_pool = (int32_t)t->n_embd;
}

void hearth_drift_request_init(hearth_engine *e, hearth_request *r, bool on) {
    r->drift.on = on;
    r->drift.entropy = NAN;
    if (!on) {
        return;
    }
    int32_t scorable = r->prompt.len - 1; /* the last position predicts output */
    /* Each slot's fair share of the step's rows: even when every slot
     * prefills a sampled prompt in one step, all their positions fit, so
     * which positions are scored never depends on what else is running. */
    int32_t most = e->drift_step->cap / e->params.n_parallel;
    most = most > 0 ? most : 1;
    r->drift.stride = scorable > most ? (scorable + most - 1) / most : 1;
    pool_prompt(e, r);
}

void hearth_drift_request_free(hearth_request *r) {
    free(r->drift.pool);
    r->drift.pool = NULL;
}

/* A sampled request does not reuse cached prefix KV: its prompt NLL then
 * covers the same positions whatever the cache held, so the signal does not
 * depend on what other requests came before.  The cost is recomputing that
 * prefix for the sampled fraction of requests only. */
void hearth_drift_admitted(hearth_engine *e, hearth_request *r) {
    if (!r->drift.on || e->drift_step->cap == 0 || r->n_past == 0) {
        return;
    }
    slot *s = &e->slots[r->slot];
    /* Only this sequence's hold on the cells goes; slots sharing them keep theirs. */
    llama_memory_seq_rm(llama_get_memory(e->ctx), s->id, -1, -1);
    s->cache.len = 0;
    r->n_past = 0;
    r->n_cached = 0;
}

void hearth_drift_step_begin(hearth_engine *e) { e->drift_step->n = 0; }

bool hearth_drift_want_logits(hearth_engine *e, hearth_request *r, int32_t pos,
                              int32_t batch_row) {
    struct drift_step *s = e->drift_step;
    if (!r->drift.on || pos + 1 >= r->prompt.len || pos % r->drift.stride != 0 ||
        s->n >= s->cap) {
        return false;
    }
    s->rows[s->n++] = (drift_row){r, batch_row, r->prompt.data[pos + 1]};
    return true;
}

/* log(sum(exp(x))) over a logits row, with the row's max factored out. */
static double log_sum_exp(const float *x, int32_t n, float *max_out) {
    float m = x[0];
    for (int32_t i = 1; i < n; i++) {
        m = x[i] > m ? x[i] : m;
    }
    double s = 0.0;
    for (int32_t i = 0; i < n; i++) {
        s += exp((double)(x[i] - m));
    }
    *max_out = m;
    return (double)m + log(s);
}

void hearth_drift_score_prompt(hearth_engine *e) {
    struct drift_step *s = e->drift_step;
    for (int32_t i = 0; i < s->n; i++) {
        const float *logits = llama_get_logits_ith(e->ctx, s->rows[i].batch_row);
        if (!logits) {
            continue;
        }
        float m;
        double lse = log_sum_exp(logits, e->n_vocab, &m);
        hearth_request *r = s->rows[i].r;
        r->drift.nll_sum += lse - (double)logits[s->rows[i].target];
        r->drift.nll_n++;
    }
    s->n = 0;
}

void hearth_drift_first_token(hearth_engine *e, hearth_request *r) {
    if (!r->drift.on || r->n_generated != 0 || r->batch_index < 0) {
        return;
    }
    const float *x = llama_get_logits_ith(e->ctx, r->batch_index);
    if (!x) {
        return;
    }
    /* H = lse - sum(p * x), with p = exp(x - lse). */
    float m;
    double lse = log_sum_exp(x, e->n_vocab, &m);
    double ex = 0.0;
    for (int32_t i = 0; i < e->n_vocab; i++) {
        ex += exp((double)x[i] - lse) * (double)x[i];
    }
    r->drift.entropy = (float)(lse - ex);
}

void hearth_drift_output(const hearth_request *r, hearth_output *out) {
    out->drift_prompt_nll = NAN;
    out->drift_first_entropy = NAN;
    if (!r->drift.on || !r->finished) {
        return;
    }
    if (r->drift.nll_n > 0) {
        out->drift_prompt_nll = (float)(r->drift.nll_sum / r->drift.nll_n);
    }
    out->drift_nll_positions = r->drift.nll_n;
    out->drift_first_entropy = r->drift.entropy;
    out->drift_prompt_pool = r->drift.pool;
    out->drift_n_pool = r->drift.n_pool;
}
