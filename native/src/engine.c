/*
 * Engine lifecycle and the thread-safe entry points: submit, the ready list,
 * stats.  The loop that owns the llama context is in engine_loop.c.
 */
#include "internal.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

void hearth_engine_params_init(hearth_engine_params *p) {
    memset(p, 0, sizeof *p);
    p->model_fd = -1;
    p->n_ctx = 4096;
    p->n_parallel = 4;
    p->n_batch = 512;
    p->n_ubatch = 512;
    p->prefill_chunk = 512;
    p->max_queue = 64;
    p->burst_window_us = 3000;
    p->grammar_budget_us = 0;
    p->n_threads = 4;
    p->n_threads_batch = 4;
    p->n_gpu_layers = 0;
    p->flash_attn = -1;
    p->type_k = 1;
    p->type_v = 1;
    p->kv_unified = true;
    p->use_mmap = true;
    p->enable_embeddings = true;
    p->draft_fd = -1;
    p->n_draft = 4;
    p->repack_weights = true;
    p->score_rows = 16;
}

void hearth_request_params_init(hearth_request_params *p) {
    memset(p, 0, sizeof *p);
    p->max_tokens = 16;
    p->logprobs = -1;
    p->speculate = true;
    p->adapter_scale = 1.0f;
    hearth_sampling_init(&p->sampling);
}

static hearth_status validate_params(const hearth_engine_params *p) {
    if (p->drift_rows < 0 || p->drift_rows > 256) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "drift_rows must be in 0..256, got %d",
                           p->drift_rows);
    }
    if (p->score_rows < 0 || p->score_rows > 256) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "score_rows must be in 0..256, got %d",
                           p->score_rows);
    }
    if (p->n_parallel < 1 || p->n_parallel > 256) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "n_parallel must be in 1..256, got %d",
                           p->n_parallel);
    }
    if (p->n_ctx < 16 * p->n_parallel) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "n_ctx=%d leaves fewer than 16 tokens per slot for n_parallel=%d",
                           p->n_ctx, p->n_parallel);
    }
    if (p->n_batch < p->n_parallel || p->n_ubatch < 1 || p->n_ubatch > p->n_batch) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "need n_batch >= n_parallel and 1 <= n_ubatch <= n_batch "
                           "(n_batch=%d, n_ubatch=%d, n_parallel=%d)",
                           p->n_batch, p->n_ubatch, p->n_parallel);
    }
    if (p->prefill_chunk < 1 || p->max_queue < 0 || p->n_threads < 1 || p->n_threads_batch < 1 ||
        p->burst_window_us < 0 || p->burst_window_us > 1000000) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "prefill_chunk and thread counts must be >= 1, max_queue >= 0, "
                           "burst_window_us in 0..1000000");
    }
    if (p->n_gpu_layers < -1) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "n_gpu_layers must be >= -1");
    }
    if (p->grammar_budget_us < 0 || p->grammar_budget_us > 1000000) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "grammar_budget_us must be in 0..1000000");
    }
    const int32_t kv_types[] = {0, 1, 2, 8}; /* f32, f16, q4_0, q8_0 */
    bool ok_k = false, ok_v = false;
    for (size_t i = 0; i < sizeof kv_types / sizeof kv_types[0]; i++) {
        ok_k |= p->type_k == kv_types[i];
        ok_v |= p->type_v == kv_types[i];
    }
    if (!ok_k || !ok_v) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "KV cache types must be f32, f16, q8_0 or q4_0");
    }
    return HEARTH_OK;
}

static void engine_destroy(hearth_engine *e) {
    if (e->slots) {
        for (int32_t i = 0; i < e->params.n_parallel; i++) {
            htokens_free(&e->slots[i].cache);
        }
        free(e->slots);
    }
    if (e->batch.token) {
        llama_batch_free(e->batch);
    }
    hearth_draft_free(e->draft, e->params.n_parallel);
    if (e->model) hearth_adapters_free_all(e);
    if (e->embd_ctx) llama_free(e->embd_ctx);
    if (e->ctx) llama_free(e->ctx);
    if (e->model) llama_model_free(e->model);
    hearth_sched_free(e->sched);
    free(e->plan);
    free(e->plan_reqs);
    free(e->jobs);
    free(e->jobs_done);
    free(e->live);
    free(e->embed_q);
    free(e->ready);
    free(e->eog_mask);
    free(e->eog_ids);
    free(e->candidates);
    hearth_utf8_index_free(&e->utf8);
    hearth_drift_engine_free(e);
    hearth_steplog_free(e);
    free((char *)e->params.model_path);
    free((char *)e->params.draft_path);
    if (e->event_fd >= 0) close(e->event_fd);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->step_mu);
    pthread_cond_destroy(&e->step_cv);
    pthread_mutex_destroy(&e->ready_mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

void hearth_step_lock_outside(hearth_engine *e) {
    atomic_fetch_add(&e->step_waiters, 1);
    pthread_mutex_lock(&e->step_mu);
}

void hearth_step_unlock_outside(hearth_engine *e) {
    atomic_fetch_sub(&e->step_waiters, 1);
    pthread_cond_broadcast(&e->step_cv);   /* the engine thread may be waiting for us */
    pthread_mutex_unlock(&e->step_mu);
}

hearth_status hearth_engine_create(const hearth_engine_params *p, hearth_engine **out) {
    if (!p || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "engine_create: NULL argument");
    }
    *out = NULL;
    hearth_status st = validate_params(p);
    if (st != HEARTH_OK) {
        return st;
    }
    hearth_engine *e = calloc(1, sizeof *e);
    if (!e) {
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    e->event_fd = -1;
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->step_mu, NULL);
    pthread_cond_init(&e->step_cv, NULL);
    atomic_init(&e->step_waiters, 0);
    pthread_mutex_init(&e->ready_mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->params = *p;
    e->params.model_path = p->model_path ? strdup(p->model_path) : NULL;
    e->params.draft_path = p->draft_path ? strdup(p->draft_path) : NULL;
    e->admission_open = true;
    e->next_id = 1;
    atomic_init(&e->heartbeat_ns, hearth_now_ns());

    if ((st = hearth_drift_engine_init(e)) != HEARTH_OK ||
        (st = hearth_model_load(e)) != HEARTH_OK || (st = hearth_model_create_context(e)) != HEARTH_OK ||
        (hearth_engine_has_draft(p) && (st = hearth_draft_create(e)) != HEARTH_OK)) {
        engine_destroy(e);
        return st;
    }
    int32_t n = p->n_parallel;
    hearth_sched_config sc = {.n_slots = n,
                              .max_queue = p->max_queue,
                              .max_batch_tokens = p->n_batch,
                              .prefill_chunk = p->prefill_chunk};
    if ((st = hearth_sched_create(&sc, &e->sched)) != HEARTH_OK) {
        engine_destroy(e);
        return st;
    }
    e->slots = calloc((size_t)n, sizeof(slot));
    e->plan = calloc((size_t)n, sizeof(hearth_sched_entry));
    e->plan_reqs = calloc((size_t)n, sizeof(hearth_request *));
    e->jobs = calloc((size_t)n, sizeof(hearth_request *));
    e->jobs_done = calloc((size_t)n, sizeof(hearth_request *));
    e->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    /* Pages are only touched once a grammar request samples. */
    e->candidates = malloc((size_t)e->n_vocab * sizeof(llama_token_data));
    if (!e->slots || !e->plan || !e->plan_reqs || !e->jobs || !e->jobs_done || e->event_fd < 0 ||
        !e->candidates) {
        engine_destroy(e);
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory or file descriptors");
    }
    for (int32_t i = 0; i < n; i++) {
        e->slots[i].id = i;
        if (!htokens_reserve(&e->slots[i].cache, e->n_ctx_slot)) {
            engine_destroy(e);
            return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
        }
    }
    e->batch = llama_batch_init(p->n_batch, 0, 1);
    e->stats.n_slots = n;
    e->stats.max_queue = p->max_queue;
    e->stats.kv_cells_total = e->n_ctx;
    if (pthread_create(&e->thread, NULL, hearth_engine_main, e) != 0) {
        engine_destroy(e);
        return hearth_fail(HEARTH_E_INTERNAL, "cannot start the engine thread");
    }
    e->thread_started = true;
    *out = e;
    return HEARTH_OK;
}

void hearth_engine_free(hearth_engine *e) {
    if (!e) {
        return;
    }
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    e->admission_open = false;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (e->thread_started) {
        pthread_join(e->thread, NULL);
    }
    /* The thread is gone: finish what is left so callers still holding
     * requests see them end. */
    for (int32_t i = e->n_live - 1; i >= 0; i--) {
        hearth_engine_finish(e, e->live[i], HEARTH_FINISH_CANCELLED, NULL);
    }
    while (e->n_embed_q > 0) {
        hearth_request *r = e->embed_q[--e->n_embed_q];
        r->finished_engine = true;
        r->finish_reason = HEARTH_FINISH_CANCELLED;
        hearth_engine_publish(e, r);
    }
    engine_destroy(e);
}

void hearth_engine_close_admission(hearth_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->admission_open = false;
    pthread_mutex_unlock(&e->mu);
}

int hearth_engine_event_fd(const hearth_engine *e) { return e ? e->event_fd : -1; }

int32_t hearth_engine_drain_ready(hearth_engine *e, uint64_t *ids, int32_t cap) {
    if (!e || !ids || cap <= 0) {
        return 0;
    }
    pthread_mutex_lock(&e->ready_mu);
    int32_t n = e->n_ready < cap ? e->n_ready : cap;
    memcpy(ids, e->ready, (size_t)n * sizeof(uint64_t));
    memmove(e->ready, e->ready + n, (size_t)(e->n_ready - n) * sizeof(uint64_t));
    e->n_ready -= n;
    if (e->n_ready == 0) {
        uint64_t v;
        while (read(e->event_fd, &v, sizeof v) < 0 && errno == EINTR) {
        }
    }
    pthread_mutex_unlock(&e->ready_mu);
    return n;
}

/* Makes the request's staged output visible to the caller and queues its id
 * on the ready list.  Engine thread (or engine_free after the thread ended). */
void hearth_engine_publish(hearth_engine *e, hearth_request *r) {
    int32_t n_text = 0;
    const char *text = r->text ? hearth_textstream_take(r->text, &n_text) : NULL;
    pthread_mutex_lock(&r->mu);
    htokens_append(&r->pending.tokens, r->stage_tokens.data, r->stage_tokens.len);
    hlogprobs_append(&r->pending.logprobs, r->stage_logprobs.data, r->stage_logprobs.len);
    if (n_text > 0) {
        hbytes_append(&r->pending.text, text, n_text);
    }
    r->stage_tokens.len = 0;
    r->stage_logprobs.len = 0;
    r->pub_drafted = r->n_drafted;
    r->pub_draft_accepted = r->n_draft_accepted;
    r->pub_generated = r->n_generated;
    r->pub_cached = r->n_cached;
    r->slot_public = r->slot;
    if (r->finished_engine && !r->finished) {
        r->finished = true;
        r->t_finish_ns = hearth_now_ns();
    }
    bool push = !r->ready_pending;
    r->ready_pending = true;
    pthread_mutex_unlock(&r->mu);
    if (!push) {
        return;
    }
    pthread_mutex_lock(&e->ready_mu);
    if (e->n_ready == e->cap_ready) {
        int32_t ncap = e->cap_ready ? e->cap_ready * 2 : 64;
        uint64_t *grown = realloc(e->ready, (size_t)ncap * sizeof(uint64_t));
        if (grown) {
            e->ready = grown;
            e->cap_ready = ncap;
        }
    }
    if (e->n_ready < e->cap_ready) {
        bool was_empty = e->n_ready == 0;
        e->ready[e->n_ready++] = r->id;
        if (was_empty) {
            uint64_t one = 1;
            while (write(e->event_fd, &one, sizeof one) < 0 && errno == EINTR) {
            }
        }
    }
    pthread_mutex_unlock(&e->ready_mu);
}

static bool push_ptr(hearth_request ***arr, int32_t *n, int32_t *cap, hearth_request *r) {
    if (*n == *cap) {
        int32_t ncap = *cap ? *cap * 2 : 32;
        hearth_request **grown = realloc(*arr, (size_t)ncap * sizeof *grown);
        if (!grown) {
            return false;
        }
        *arr = grown;
        *cap = ncap;
    }
    (*arr)[(*n)++] = r;
    return true;
}

static hearth_status copy_stops(hearth_request *r, const char *const *stop, int32_t n) {
    if (n < 0 || n > 16 || (n > 0 && !stop)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "stop: at most 16 strings, got %d", n);
    }
    return hearth_textstream_create(stop, n, &r->text);
}

hearth_status hearth_engine_submit(hearth_engine *e, const hearth_request_params *p,
                                   hearth_request **out) {
    if (!e || !p || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "submit: NULL argument");
    }
    *out = NULL;
    if (p->n_prompt < 1 || !p->prompt) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "prompt is empty");
    }
    if (p->max_tokens < 1) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "max_tokens must be >= 1, got %d",
                           p->max_tokens);
    }
    if ((int64_t)p->n_prompt + p->max_tokens > e->n_ctx_slot) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "prompt (%d tokens) + max_tokens (%d) exceeds the context of a slot "
                           "(%d tokens)", p->n_prompt, p->max_tokens, e->n_ctx_slot);
    }
    for (int32_t i = 0; i < p->n_prompt; i++) {
        if (p->prompt[i] < 0 || p->prompt[i] >= e->n_vocab) {
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                               "prompt token %d at index %d is outside the vocabulary", p->prompt[i], i);
        }
    }
    hearth_status st = hearth_sampling_validate(&p->sampling);
    if (st != HEARTH_OK) {
        return st;
    }
    if (p->logprobs < -1 || p->logprobs > HEARTH_MAX_TOP_LOGPROBS) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "logprobs must be in -1..%d, got %d",
                           HEARTH_MAX_TOP_LOGPROBS, p->logprobs);
    }
    if (!isfinite(p->adapter_scale) || fabsf(p->adapter_scale) > 16.0f) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "adapter_scale must be in [-16, 16], got %g",
                           (double)p->adapter_scale);
    }
    bool has_grammar = p->grammar && p->grammar[0];
    if (has_grammar && p->ignore_eos) {
        /* A finished grammar allows only an end-of-generation token. */
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "grammar: cannot be combined with ignore_eos");
    }
    hearth_request *r = hearth_request_new(REQ_GENERATE, 0);
    if (!r || !htokens_append(&r->prompt, p->prompt, p->n_prompt)) {
        hearth_request_discard(r);
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    r->max_tokens = p->max_tokens;
    r->sampling = p->sampling;
    r->deadline_ns = p->deadline_ns;
    r->ignore_eos = p->ignore_eos;
    r->n_logprobs = p->logprobs;
    r->speculate = p->speculate;
    r->adapter_scale = p->adapter_scale;
    hearth_drift_request_init(e, r, p->drift_signals);
    if ((st = copy_stops(r, p->stop, p->n_stop)) != HEARTH_OK ||
        !hearth_sampler_init(&r->sampler, &p->sampling, e->vocab, e->eog_mask, e->eog_ids,
                             e->n_eog, p->ignore_eos)) {
        hearth_request_discard(r);
        return st != HEARTH_OK ? st : hearth_fail(HEARTH_E_OUT_OF_MEMORY, "sampler: out of memory");
    }
    if (has_grammar && (st = hearth_sampler_set_grammar(&r->sampler, e->vocab, p->grammar)) !=
                           HEARTH_OK) {
        hearth_request_discard(r);
        return st;
    }
    hearth_sampler_prime(&r->sampler, p->prompt, p->n_prompt);

    if ((st = hearth_engine_enqueue(e, r, p->adapter)) != HEARTH_OK) {
        return st;
    }
    *out = r;
    return HEARTH_OK;
}

hearth_status hearth_engine_enqueue(hearth_engine *e, hearth_request *r, int32_t adapter) {
    hearth_status st;
    pthread_mutex_lock(&e->mu);
    if (!e->admission_open) {
        pthread_mutex_unlock(&e->mu);
        hearth_request_discard(r);
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION, "the engine is not admitting requests");
    }
    if ((st = hearth_adapter_acquire(e, adapter)) != HEARTH_OK) {
        pthread_mutex_unlock(&e->mu);
        hearth_request_discard(r);
        return st;
    }
    r->adapter = adapter;
    r->id = e->next_id++;
    st = hearth_sched_enqueue(e->sched, r->id, r->prompt.len);
    if (st == HEARTH_OK && !push_ptr(&e->live, &e->n_live, &e->cap_live, r)) {
        hearth_sched_remove(e->sched, r->id);
        st = hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    if (st != HEARTH_OK) {
        e->stats.requests_rejected++;
        hearth_adapter_release(e, r->adapter);
        pthread_mutex_unlock(&e->mu);
        hearth_request_discard(r);
        return st;
    }
    r->t_submit_ns = hearth_now_ns();
    e->stats.requests_submitted++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return HEARTH_OK;
}

hearth_status hearth_engine_submit_embedding(hearth_engine *e, const int32_t *tokens,
                                             int32_t n_tokens, bool normalize,
                                             hearth_request **out) {
    if (!e || !out || (n_tokens > 0 && !tokens)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "submit_embedding: NULL argument");
    }
    *out = NULL;
    if (!e->params.enable_embeddings) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION, "embeddings are disabled for this model");
    }
    if (n_tokens < 1 || n_tokens > e->n_ctx_slot) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "input of %d tokens is outside 1..%d (the context of a slot)", n_tokens,
                           e->n_ctx_slot);
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= e->n_vocab) {
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                               "token %d at index %d is outside the vocabulary", tokens[i], i);
        }
    }
    hearth_request *r = hearth_request_new(REQ_EMBED, 0);
    if (!r || !htokens_append(&r->prompt, tokens, n_tokens)) {
        hearth_request_discard(r);
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    r->normalize = normalize;
    pthread_mutex_lock(&e->mu);
    hearth_status st = HEARTH_OK;
    if (!e->admission_open) {
        st = hearth_fail(HEARTH_E_FAILED_PRECONDITION, "the engine is not admitting requests");
    } else if (e->n_embed_q >= e->params.max_queue + e->params.n_parallel) {
        e->stats.requests_rejected++;
        st = hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED, "embedding queue full (%d waiting)",
                         e->n_embed_q);
    } else if (!push_ptr(&e->embed_q, &e->n_embed_q, &e->cap_embed_q, r)) {
        st = hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    if (st != HEARTH_OK) {
        pthread_mutex_unlock(&e->mu);
        hearth_request_discard(r);
        return st;
    }
    r->id = e->next_id++;
    r->t_submit_ns = hearth_now_ns();
    e->stats.requests_submitted++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    *out = r;
    return HEARTH_OK;
}

hearth_status hearth_engine_get_stats(hearth_engine *e, hearth_engine_stats *out) {
    if (!e || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "get_stats: NULL argument");
    }
    pthread_mutex_lock(&e->mu);
    *out = e->stats;
    hearth_sched_stats ss;
    hearth_sched_get_stats(e->sched, &ss);
    out->slots_busy = ss.n_running;
    out->queue_depth = ss.n_waiting + e->n_embed_q;
    int64_t used = 0;
    for (int32_t i = 0; i < e->params.n_parallel; i++) {
        used += e->slots[i].cache.len;
    }
    out->kv_cells_used = used;
    out->admission_open = e->admission_open;
    out->last_heartbeat_ns = atomic_load(&e->heartbeat_ns);
    pthread_mutex_unlock(&e->mu);
    return HEARTH_OK;
}
