/*
 * Speculative decoding with a draft model.
 *
 * Before a step, the draft model (small, same vocabulary) proposes up to
 * n_draft tokens for every decoding request that allows it, greedily and
 * batched across requests.  The target model then decodes each request's
 * last token and its proposals in the same batch, with a logits row for
 * every position.  engine_loop.c samples those rows in order with the
 * request's own sampler and keeps going while the sampled token equals the
 * proposal: every emitted token is still a draw from the target's
 * distribution (with the same random stream as without a draft), so greedy
 * and seeded outputs do not change; only the number of target steps does.
 *
 * The draft context mirrors the target's slots.  Per slot it remembers which
 * tokens its KV holds and catches up on what the target has accepted since,
 * so prompt prefill, accepted drafts and rejected ones are one code path.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static bool same_piece(const struct llama_vocab *a, const struct llama_vocab *b, llama_token t) {
    const char *x = llama_vocab_get_text(a, t);
    const char *y = llama_vocab_get_text(b, t);
    return x && y && strcmp(x, y) == 0;
}

/* Proposals are only useful, and only safe to compare by id, when both
 * models map every id to the same piece. */
static hearth_status check_vocab(const struct llama_vocab *target, const struct llama_vocab *draft) {
    int32_t nt = llama_vocab_n_tokens(target);
    int32_t nd = llama_vocab_n_tokens(draft);
    if (nt != nd) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "draft model: its vocabulary has %d tokens, the model's has %d; "
                           "a draft must share the model's tokenizer", nd, nt);
    }
    if (llama_vocab_type(target) != llama_vocab_type(draft) ||
        llama_vocab_bos(target) != llama_vocab_bos(draft) ||
        llama_vocab_eos(target) != llama_vocab_eos(draft)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "draft model: tokenizer type or BOS/EOS tokens differ from the "
                           "model's");
    }
    for (llama_token t = 0; t < nt; t++) {
        if (!same_piece(target, draft, t)) {
            const char *x = llama_vocab_get_text(target, t);
            const char *y = llama_vocab_get_text(draft, t);
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                               "draft model: token %d is \"%.40s\" in the model and \"%.40s\" "
                               "in the draft; a draft must share the model's tokenizer",
                               t, x ? x : "", y ? y : "");
        }
    }
    return HEARTH_OK;
}

void hearth_draft_free(draft_model *d, int32_t n_slots) {
    if (!d) {
        return;
    }
    if (d->cache) {
        for (int32_t i = 0; i < n_slots; i++) {
            htokens_free(&d->cache[i]);
        }
        free(d->cache);
    }
    if (d->batch.token) llama_batch_free(d->batch);
    if (d->ctx) llama_free(d->ctx);
    if (d->model) llama_model_free(d->model);
    free(d);
}

hearth_status hearth_draft_create(hearth_engine *e) {
    const hearth_engine_params *p = &e->params;
    if (p->n_draft < 1 || p->n_draft > 16) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "n_draft must be in 1..16, got %d",
                           p->n_draft);
    }
    draft_model *d = calloc(1, sizeof *d);
    if (!d) {
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    d->n_draft = p->n_draft;
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = llama_supports_gpu_offload() ? p->draft_n_gpu_layers : 0;
    mp.main_gpu = p->main_gpu;
    /* The draft only proposes: its numerics never reach the output, so it
     * keeps ggml's repacked kernels whatever repack_weights says. */
    hearth_status st = hearth_model_open(p->draft_path, p->draft_fd, mp, &d->model);
    if (st == HEARTH_OK && !d->model) {
        st = hearth_fail(HEARTH_E_LOAD_FAILED,
                         "llama.cpp could not load the draft model (see the log)");
    }
    if (st == HEARTH_OK) {
        st = check_vocab(e->vocab, llama_model_get_vocab(d->model));
    }
    if (st != HEARTH_OK) {
        hearth_draft_free(d, 0);
        return st;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)e->n_ctx;
    cp.n_batch = (uint32_t)p->n_batch;
    cp.n_ubatch = (uint32_t)p->n_ubatch;
    cp.n_seq_max = (uint32_t)p->n_parallel;
    cp.n_outputs_max = (uint32_t)p->n_parallel;
    cp.n_threads = p->n_threads;
    cp.n_threads_batch = p->n_threads_batch;
    cp.kv_unified = p->kv_unified;
    cp.swa_full = true; /* tails are trimmed after every step (see model.c) */
    cp.flash_attn_type = hearth_flash_attn_type(p->flash_attn);
    cp.no_perf = true;
    d->ctx = llama_init_from_model(d->model, cp);
    d->batch = llama_batch_init(p->n_batch, 0, 1);
    d->cache = calloc((size_t)p->n_parallel, sizeof(htokens));
    if (!d->ctx || !d->cache) {
        hearth_draft_free(d, p->n_parallel);
        return hearth_fail(HEARTH_E_LOAD_FAILED, "could not create the draft model's context");
    }
    hearth_release_cleared_logits(e, d->ctx, p->draft_n_gpu_layers, p->n_parallel);
    e->draft = d;
    return HEARTH_OK;
}

/* Drops what the draft KV of slot `seq` holds beyond the first `keep`
 * tokens; returns how many it still holds. */
static int32_t draft_trim(draft_model *d, int32_t seq, int32_t keep) {
    htokens *c = &d->cache[seq];
    if (keep >= c->len) {
        return c->len;
    }
    llama_memory_t mem = llama_get_memory(d->ctx);
    if (!llama_memory_seq_rm(mem, seq, keep, -1)) {
        llama_memory_seq_rm(mem, seq, -1, -1);
        keep = 0;
    }
    c->len = keep;
    return keep;
}

typedef struct spec_job {
    hearth_request *r;
    int32_t seq;
    int32_t want;        /* proposals wanted */
    int32_t next;        /* index in `known` of the next token to decode */
    int32_t n_known;
    int32_t row;         /* batch row of its logits in the current decode, or -1 */
} spec_job;

/* The tokens whose continuation is drafted: what the target slot holds,
 * then the sampled token it has not decoded yet. */
static llama_token known_at(const hearth_engine *e, const spec_job *j, int32_t i) {
    const slot *s = &e->slots[j->r->slot];
    return i < s->cache.len ? s->cache.data[i] : j->r->last_token;
}

/* Decodes the draft batch; on failure no request gets proposals. */
static bool draft_decode(draft_model *d) {
    if (d->batch.n_tokens == 0) {
        return true;
    }
    bool ok = llama_decode(d->ctx, d->batch) == 0;
    d->batch.n_tokens = 0;
    return ok;
}

static void take_proposal(hearth_engine *e, draft_model *d, spec_job *j) {
    const float *logits = llama_get_logits_ith(d->ctx, j->row);
    j->row = -1;
    if (!logits) {
        j->want = 0;
        return;
    }
    llama_token t = hearth_greedy_token(logits, e->n_vocab, NULL);
    htokens_append(&j->r->drafts, &t, 1);
    if (e->eog_mask[t] || j->r->drafts.len >= j->want) {
        j->want = j->r->drafts.len; /* an end token ends the draft */
    }
}

void hearth_draft_propose(hearth_engine *e, hearth_request **reqs, int32_t n, int32_t room) {
    draft_model *d = e->draft;
    spec_job jobs[256];
    int32_t n_jobs = 0;
    for (int32_t i = 0; i < n && n_jobs < 256; i++) {
        hearth_request *r = reqs[i];
        r->drafts.len = 0;
        int32_t share = room / (n - i);
        int32_t want = d->n_draft;
        int32_t left = r->max_tokens - r->n_generated - 1;
        int32_t ctx_left = e->n_ctx_slot - r->n_past - 2;
        want = want < left ? want : left;
        want = want < ctx_left ? want : ctx_left;
        want = want < share ? want : share;
        if (want <= 0) {
            continue;
        }
        room -= want;
        spec_job *j = &jobs[n_jobs++];
        *j = (spec_job){.r = r, .seq = r->slot, .want = want, .row = -1};
        j->n_known = e->slots[r->slot].cache.len + 1;
        /* The last known token is always decoded again: its logits give the
         * first proposal. */
        htokens *c = &d->cache[j->seq];
        int32_t keep = 0;
        while (keep < c->len && keep < j->n_known - 1 && c->data[keep] == known_at(e, j, keep)) {
            keep++;
        }
        j->next = draft_trim(d, j->seq, keep);
    }
    if (n_jobs == 0) {
        return;
    }
    /* Catch up: every known token the draft has not seen, in batches. */
    int32_t cap = e->params.n_batch;
    bool pending = true;
    while (pending) {
        pending = false;
        for (int32_t k = 0; k < n_jobs; k++) {
            spec_job *j = &jobs[k];
            while (j->next < j->n_known && d->batch.n_tokens < cap) {
                llama_token t = known_at(e, j, j->next);
                bool last = j->next == j->n_known - 1;
                if (last) {
                    j->row = d->batch.n_tokens;
                }
                hearth_batch_add(&d->batch, t, j->next, j->seq, last);
                htokens_append(&d->cache[j->seq], &t, 1);
                j->next++;
            }
            pending |= j->next < j->n_known;
        }
        if (!draft_decode(d)) {
            goto failed;
        }
        for (int32_t k = 0; k < n_jobs; k++) {
            if (jobs[k].row >= 0) {
                take_proposal(e, d, &jobs[k]);
            }
        }
    }
    /* One more proposal per decode, for every request that wants more. */
    for (;;) {
        for (int32_t k = 0; k < n_jobs; k++) {
            spec_job *j = &jobs[k];
            int32_t have = j->r->drafts.len;
            if (have == 0 || have >= j->want) {
                continue;
            }
            llama_token t = j->r->drafts.data[have - 1];
            j->row = d->batch.n_tokens;
            hearth_batch_add(&d->batch, t, j->n_known + have - 1, j->seq, true);
            htokens_append(&d->cache[j->seq], &t, 1);
        }
        if (d->batch.n_tokens == 0) {
            return;
        }
        if (!draft_decode(d)) {
            goto failed;
        }
        for (int32_t k = 0; k < n_jobs; k++) {
            if (jobs[k].row >= 0) {
                take_proposal(e, d, &jobs[k]);
            }
        }
    }
failed:
    /* A failed draft decode costs speed, never output: no proposals, and
     * the draft KV is rebuilt next time. */
    d->batch.n_tokens = 0;
    for (int32_t k = 0; k < n_jobs; k++) {
        jobs[k].r->drafts.len = 0;
        draft_trim(d, jobs[k].seq, 0);
    }
}
