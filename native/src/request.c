/*
 * Request objects and the hand-over of their output.
 *
 * A request is shared by the engine thread, which produces output, and the
 * caller, which takes it; each holds one reference.  The caller may drop its
 * reference at any time (that cancels the request); the engine drops its own
 * once the request has finished and its last output is published.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

hearth_request *hearth_request_new(request_kind kind, uint64_t id) {
    hearth_request *r = calloc(1, sizeof *r);
    if (!r) {
        return NULL;
    }
    atomic_init(&r->refs, 2);
    atomic_init(&r->cancel, false);
    r->id = id;
    r->kind = kind;
    r->slot = -1;
    r->slot_public = -1;
    r->batch_index = -1;
    r->stop_index = -1;
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

static void output_free(request_output *o) {
    htokens_free(&o->tokens);
    hbytes_free(&o->text);
    hlogprobs_free(&o->logprobs);
    free(o->embedding);
    o->embedding = NULL;
    o->n_embd = 0;
}

void hearth_request_unref(hearth_request *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) {
        return;
    }
    htokens_free(&r->prompt);
    htokens_free(&r->stage_tokens);
    hlogprobs_free(&r->stage_logprobs);
    htokens_free(&r->drafts);
    hearth_sampler_free(&r->sampler);
    hearth_textstream_free(r->text);
    free(r->error);
    hearth_drift_request_free(r);
    hearth_score_free(r);
    output_free(&r->pending);
    output_free(&r->taken);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* Frees a request that never left submit (both references at once). */
void hearth_request_discard(hearth_request *r) {
    if (r) {
        atomic_store(&r->refs, 1);
        hearth_request_unref(r);
    }
}

uint64_t hearth_request_id(const hearth_request *r) { return r ? r->id : 0; }

void hearth_request_cancel(hearth_request *r) {
    if (r) {
        /* The engine looks at this flag before it plans every step, so the
         * slot is released before the next decode; nothing else to wake. */
        atomic_store(&r->cancel, true);
    }
}

void hearth_request_free(hearth_request *r) {
    if (!r) {
        return;
    }
    atomic_store(&r->cancel, true);
    hearth_request_unref(r);
}

hearth_status hearth_request_take(hearth_request *r, hearth_output *out) {
    if (!r || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "request_take: NULL argument");
    }
    pthread_mutex_lock(&r->mu);
    /* Swap buffers: the caller reads `taken` while the engine refills
     * `pending`; no copy of the token data is made. */
    request_output old = r->taken;
    r->taken = r->pending;
    old.tokens.len = 0;
    old.text.len = 0;
    old.logprobs.len = 0;
    free(old.embedding);
    old.embedding = NULL;
    old.n_embd = 0;
    r->pending = old;
    r->ready_pending = false;

    memset(out, 0, sizeof *out);
    out->tokens = r->taken.tokens.data;
    out->n_tokens = r->taken.tokens.len;
    out->text = r->taken.text.len ? r->taken.text.data : "";
    out->n_text = r->taken.text.len;
    out->embedding = r->taken.embedding;
    out->n_embd = r->taken.n_embd;
    out->logprobs = r->taken.logprobs.len ? r->taken.logprobs.data : NULL;
    out->n_logprobs = r->taken.logprobs.len;
    out->n_drafted = r->pub_drafted;
    out->n_draft_accepted = r->pub_draft_accepted;
    out->finished = r->finished;
    out->finish_reason = r->finished ? r->finish_reason : HEARTH_FINISH_NONE;
    out->stop_index = r->finished ? r->stop_index : -1;
    out->error = r->finished ? r->error : NULL;
    out->n_prompt = r->prompt.len;
    out->n_cached = r->pub_cached;
    out->n_generated = r->pub_generated;
    out->slot = r->slot_public;
    out->t_submit_ns = r->t_submit_ns;
    out->t_admit_ns = r->t_admit_ns;
    out->t_first_token_ns = r->t_first_token_ns;
    out->t_finish_ns = r->t_finish_ns;
    hearth_drift_output(r, out);
    pthread_mutex_unlock(&r->mu);
    return HEARTH_OK;
}
