/*
 * Score requests: occlusion scoring for explanations (hearth_core.h).
 *
 * One request holds one slot and runs its variants there one after another:
 * the whole prompt first, then the prompt without each span, spans by
 * decreasing start.  A variant's tokens are prompt[0:start] + prompt[end:]
 * + target.  The variant before it left out a span that starts later (or
 * nothing), so the slot's KV already holds prompt[0:start]: the variant
 * rewinds the sequence to there and computes only the rest.  n spans cost
 * n + 1 prefills and, for spans spread evenly, about half the tokens of
 * computing every variant from scratch.
 *
 * Each variant is an ordinary prefill to the scheduler (chunked, batched
 * with the other requests of the step, decode first); the rows that predict
 * target tokens ask for logits, and the log-softmax of each target token is
 * added up after the step.  Nothing is sampled, so the target is
 * teacher-forced.  The first scored row is always computed, so admission
 * never reuses more of a cached prefix than the tokens before it.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct score_job {
    htokens base;          /* the whole prompt */
    htokens target;
    int32_t *spans;        /* 2 per span: [start, end) */
    int32_t n_spans;
    int32_t *order;        /* variant of each turn: 0, then 1 + span index */
    int32_t turn;          /* index into order of the variant being computed */
    double *logprob;       /* per variant */
    double acc;            /* the current variant's sum so far */
    bool started;          /* the current variant has had a chunk packed */
    bool variant_done;     /* its last chunk ran this step: next after it */
    int32_t *row_batch;    /* this step's scored rows: batch row */
    int32_t *row_token;    /* and the target token it predicts */
    int32_t n_rows;
    int32_t n_prefills;
    int64_t prefill_tokens;
    int64_t reused_tokens;
} score_job;

void hearth_score_params_init(hearth_score_params *p) {
    memset(p, 0, sizeof *p);
    p->adapter_scale = 1.0f;
}

static void job_free(score_job *j) {
    if (!j) {
        return;
    }
    htokens_free(&j->base);
    htokens_free(&j->target);
    free(j->spans);
    free(j->order);
    free(j->logprob);
    free(j->row_batch);
    free(j->row_token);
    free(j);
}

void hearth_score_free(hearth_request *r) {
    job_free(r->score);
    r->score = NULL;
}

typedef struct span_key {
    int32_t start;
    int32_t index;
} span_key;

static int later_start_first(const void *a, const void *b) {
    const span_key *x = a, *y = b;
    if (x->start != y->start) {
        return x->start > y->start ? -1 : 1;
    }
    return x->index < y->index ? -1 : (x->index > y->index);
}

/* Writes variant v's tokens into r->prompt (capacity reserved at submit). */
static void build_variant(hearth_request *r, int32_t v) {
    const score_job *j = r->score;
    int32_t a = j->base.len, b = j->base.len;
    if (v > 0) {
        a = j->spans[2 * (v - 1)];
        b = j->spans[2 * (v - 1) + 1];
    }
    htokens *t = &r->prompt;
    t->len = 0;
    htokens_append(t, j->base.data, a);
    htokens_append(t, j->base.data + b, j->base.len - b);
    htokens_append(t, j->target.data, j->target.len);
}

static hearth_status validate(const hearth_engine *e, const hearth_score_params *p) {
    if (p->n_prompt < 1 || !p->prompt || p->n_target < 1 || !p->target) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "score: prompt and target must not be empty");
    }
    if (p->n_spans < 0 || p->n_spans > HEARTH_MAX_SCORE_SPANS || (p->n_spans > 0 && !p->spans)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "score: n_spans must be in 0..%d, got %d",
                           HEARTH_MAX_SCORE_SPANS, p->n_spans);
    }
    if ((int64_t)p->n_prompt + p->n_target > e->n_ctx_slot) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "score: prompt (%d tokens) + target (%d) exceeds the context of a slot "
                           "(%d tokens)", p->n_prompt, p->n_target, e->n_ctx_slot);
    }
    for (int32_t i = 0; i < p->n_prompt + p->n_target; i++) {
        int32_t tok = i < p->n_prompt ? p->prompt[i] : p->target[i - p->n_prompt];
        if (tok < 0 || tok >= e->n_vocab) {
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                               "score: token %d at index %d is outside the vocabulary", tok, i);
        }
    }
    for (int32_t i = 0; i < p->n_spans; i++) {
        int32_t a = p->spans[2 * i], b = p->spans[2 * i + 1];
        if (a < 0 || b <= a || b > p->n_prompt || p->n_prompt - (b - a) < 1) {
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                               "score: span %d [%d, %d) must satisfy 0 <= start < end <= %d and "
                               "leave a prompt token", i, a, b, p->n_prompt);
        }
    }
    if (!isfinite(p->adapter_scale) || fabsf(p->adapter_scale) > 16.0f) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "adapter_scale must be in [-16, 16], got %g",
                           (double)p->adapter_scale);
    }
    return HEARTH_OK;
}

static score_job *job_new(const hearth_score_params *p) {
    score_job *j = calloc(1, sizeof *j);
    if (!j) {
        return NULL;
    }
    int32_t n_var = p->n_spans + 1;
    j->n_spans = p->n_spans;
    j->spans = malloc((size_t)(2 * p->n_spans + 1) * sizeof(int32_t));
    j->order = malloc((size_t)n_var * sizeof(int32_t));
    j->logprob = calloc((size_t)n_var, sizeof(double));
    j->row_batch = malloc((size_t)p->n_target * sizeof(int32_t));
    j->row_token = malloc((size_t)p->n_target * sizeof(int32_t));
    span_key *keys = malloc((size_t)(p->n_spans + 1) * sizeof(span_key));
    if (!j->spans || !j->order || !j->logprob || !j->row_batch || !j->row_token || !keys ||
        !htokens_append(&j->base, p->prompt, p->n_prompt) ||
        !htokens_append(&j->target, p->target, p->n_target)) {
        free(keys);
        job_free(j);
        return NULL;
    }
    if (p->n_spans > 0) {
        memcpy(j->spans, p->spans, (size_t)(2 * p->n_spans) * sizeof(int32_t));
    }
    for (int32_t i = 0; i < p->n_spans; i++) {
        keys[i] = (span_key){.start = p->spans[2 * i], .index = i};
    }
    qsort(keys, (size_t)p->n_spans, sizeof(span_key), later_start_first);
    j->order[0] = 0;
    for (int32_t i = 0; i < p->n_spans; i++) {
        j->order[1 + i] = 1 + keys[i].index;
    }
    free(keys);
    return j;
}

hearth_status hearth_engine_submit_score(hearth_engine *e, const hearth_score_params *p,
                                         hearth_request **out) {
    if (!e || !p || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "submit_score: NULL argument");
    }
    *out = NULL;
    hearth_status st = validate(e, p);
    if (st != HEARTH_OK) {
        return st;
    }
    hearth_request *r = hearth_request_new(REQ_GENERATE, 0);
    if (!r || !(r->score = job_new(p)) ||
        !htokens_reserve(&r->prompt, p->n_prompt + p->n_target) ||
        hearth_textstream_create(NULL, 0, &r->text) != HEARTH_OK) {
        hearth_request_discard(r);
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "score: out of memory");
    }
    build_variant(r, 0);
    r->max_tokens = 1;
    r->deadline_ns = p->deadline_ns;
    r->n_logprobs = -1;
    r->speculate = false;
    r->adapter_scale = p->adapter_scale;
    hearth_drift_request_init(e, r, false);
    if ((st = hearth_engine_enqueue(e, r, p->adapter)) != HEARTH_OK) {
        return st;
    }
    *out = r;
    return HEARTH_OK;
}

int32_t hearth_score_reuse_limit(const hearth_request *r) {
    return r->prompt.len - r->score->target.len - 1;
}

/* Rows left in this step for r: one of its own (every sequence has one),
 * plus what the other score requests of the step left of score_rows. */
static int32_t rows_available(hearth_engine *e) {
    if (e->score_step != e->stats.decode_steps) {
        e->score_step = e->stats.decode_steps; /* a new step */
        e->score_rows_used = 0;
    }
    return 1 + e->params.score_rows - e->score_rows_used;
}

void hearth_score_pack(hearth_engine *e, hearth_request *r, hearth_sched_entry *ent) {
    score_job *j = r->score;
    struct llama_batch *b = &e->batch;
    if (!j->started) {
        j->started = true;
        j->n_prefills++;
        j->reused_tokens += r->n_past;
    }
    const int32_t first = hearth_score_reuse_limit(r); /* predicts target[0] */
    const int32_t last = r->prompt.len - 2;           /* predicts the last one */
    const int32_t room = rows_available(e);
    j->n_rows = 0;
    int32_t k = 0;
    for (; k < ent->n_tokens; k++) {
        int32_t pos = r->n_past + k;
        bool scored = pos >= first && pos <= last;
        if (scored && j->n_rows == room) {
            break; /* the rest in the next step: the chunk ends here */
        }
        if (scored) {
            j->row_batch[j->n_rows] = b->n_tokens;
            j->row_token[j->n_rows++] = r->prompt.data[pos + 1];
        }
        hearth_batch_add(b, r->prompt.data[pos], pos, r->slot, scored);
    }
    if (k < ent->n_tokens) {
        ent->n_tokens = k;
        ent->completes_prompt = false;
    }
    e->score_rows_used += j->n_rows > 0 ? j->n_rows - 1 : 0;
    j->prefill_tokens += k;
}

void hearth_score_collect(hearth_engine *e, hearth_request *r, const hearth_sched_entry *ent) {
    score_job *j = r->score;
    for (int32_t k = 0; k < j->n_rows; k++) {
        const float *logits = llama_get_logits_ith(e->ctx, j->row_batch[k]);
        if (!logits) {
            r->pending_finish = HEARTH_FINISH_ERROR;
            free(r->error);
            r->error = strdup("score: llama.cpp returned no logits for a scored row");
            return;
        }
        hearth_logprob lp;
        hearth_logprobs_compute(logits, e->n_vocab, j->row_token[k], 0, &lp);
        j->acc += lp.logprob;
    }
    j->n_rows = 0;
    if (!ent->completes_prompt) {
        return;
    }
    j->logprob[j->order[j->turn]] = j->acc;
    j->acc = 0.0;
    j->started = false;
    if (++j->turn == j->n_spans + 1) {
        r->pending_finish = HEARTH_FINISH_STOP;
    } else {
        j->variant_done = true;
    }
}

void hearth_score_advance(hearth_engine *e, hearth_request *r) {
    score_job *j = r->score;
    if (!j->variant_done) {
        return;
    }
    j->variant_done = false;
    pthread_mutex_lock(&r->mu); /* take reads prompt.len */
    build_variant(r, j->order[j->turn]);
    pthread_mutex_unlock(&r->mu);
    const slot *s = &e->slots[r->slot];
    int32_t keep = hearth_common_prefix(s->cache.data, s->cache.len, r->prompt.data, r->prompt.len);
    int32_t limit = hearth_score_reuse_limit(r);
    keep = hearth_slots_rewind(e, r, keep < limit ? keep : limit);
    r->n_past = keep;
    if (hearth_sched_restart_prefill(e->sched, r->id, r->prompt.len, r->prompt.len - keep) !=
        HEARTH_OK) {
        r->pending_finish = HEARTH_FINISH_ERROR;
        free(r->error);
        r->error = strdup(hearth_last_error());
    }
}

hearth_status hearth_request_score(hearth_request *r, hearth_score_result *out) {
    if (!r || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "request_score: NULL argument");
    }
    if (!r->score) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "request_score: not a score request");
    }
    pthread_mutex_lock(&r->mu);
    bool done = r->finished && r->finish_reason == HEARTH_FINISH_STOP;
    pthread_mutex_unlock(&r->mu);
    if (!done) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "request_score: the request has not finished with a result");
    }
    const score_job *j = r->score;
    memset(out, 0, sizeof *out);
    out->logprob = j->logprob;
    out->n_variants = j->n_spans + 1;
    out->n_prefills = j->n_prefills;
    out->prefill_tokens = j->prefill_tokens;
    out->reused_tokens = j->reused_tokens;
    return HEARTH_OK;
}
