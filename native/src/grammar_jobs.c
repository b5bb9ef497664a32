/*
 * Grammar requests in the engine: the cost of a grammar is paid in bounded
 * pieces.
 *
 * After a step's decode, a grammar request's token is the sampler's own
 * pick when the grammar allows it (one candidate tested: sampling.c).
 * Otherwise the request opens a job: the vocabulary is tested against the
 * grammar in chunks, and the request skips decoding (keeping its slot)
 * until its token is chosen.  Each step gives the open jobs one chunk each,
 * then more in turns while a time budget lasts, checking cancel and
 * deadline between chunks.  So a grammar request holds the other requests
 * of its model for at most about one more decode per step, and its cancel
 * or deadline takes effect at the next step.  What one call into llama.cpp's
 * grammar can cost, whatever the chunk, is bounded before the grammar is
 * compiled (runtime/core/gbnf_cost.py).  Engine thread only.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

/* Engine thread; NULL if memory ran out (the grammar still holds). */
static const utf8_index *grammar_utf8(hearth_engine *e) {
    if (!e->utf8.cls && !hearth_utf8_index_build(e->vocab, &e->utf8)) {
        return NULL;
    }
    return &e->utf8;
}

static void fail_request(hearth_request *r, const char *why) {
    r->pending_finish = HEARTH_FINISH_ERROR;
    free(r->error);
    r->error = strdup(why);
}

static const char GRAMMAR_DEAD_END[] =
    "grammar: no token of this model's vocabulary can continue the grammar here";

/* A grammar request's row: the sampler's own pick when the grammar allows
 * it, else a job that tests the vocabulary over the next steps (the request
 * skips decoding until its token is chosen). */
bool hearth_grammar_sample(hearth_engine *e, hearth_request *r) {
    const float *logits = llama_get_logits_ith(e->ctx, r->batch_index);
    bool pending = false;
    llama_token tok = logits ? hearth_sampler_grammar_first(&r->sampler, logits, e->candidates,
                                                            grammar_utf8(e), &pending)
                             : LLAMA_TOKEN_NULL;
    if (pending) {
        e->jobs[e->n_jobs++] = r;
        r->batch_index = -1; /* published when its job ends */
        return false;
    }
    if (tok == LLAMA_TOKEN_NULL) {
        fail_request(r, "grammar: out of memory");
        return false;
    }
    hearth_engine_accept_token(e, r, tok, logits);
    return true;
}

/* Grammar work per step (unless grammar_budget_us says otherwise): at
 * least this long, or as long as the step's llama_decode took, so other
 * requests of the model wait at most about one more decode for it.  Between
 * chunks the clock and cancel/deadline are checked; a chunk is sized from
 * the last one to take about GRAMMAR_CHUNK_NS, or a quarter of a smaller
 * budget (a token costs one test per parse stack, and the stacks differ by
 * grammar and by position; runtime/core/gbnf_cost.py bounds what one
 * call into llama.cpp's grammar can cost whatever the chunk). */
#define GRAMMAR_MIN_BUDGET_NS 4000000LL
#define GRAMMAR_CHUNK_NS 500000LL
#define GRAMMAR_CHUNK_FIRST 64
#define GRAMMAR_CHUNK_MIN 8
#define GRAMMAR_CHUNK_MAX 16384

static int32_t next_chunk(int32_t n, int64_t dt, int64_t target) {
    int64_t want = dt > 0 ? (int64_t)n * target / dt : GRAMMAR_CHUNK_MAX;
    return want < GRAMMAR_CHUNK_MIN   ? GRAMMAR_CHUNK_MIN
           : want > GRAMMAR_CHUNK_MAX ? GRAMMAR_CHUNK_MAX
                                      : (int32_t)want;
}

static bool job_abandoned(const hearth_request *r, int64_t now) {
    return atomic_load(&r->cancel) || (r->deadline_ns > 0 && now >= r->deadline_ns);
}

/* One chunk of r's job; true when it ended (r then in e->jobs_done). */
static bool advance_job(hearth_engine *e, hearth_request *r, const utf8_index *utf8,
                        int64_t target, uint64_t *n_sampled) {
    grammar_job *job = &r->sampler.job;
    int32_t n = job->chunk > 0 ? job->chunk : GRAMMAR_CHUNK_FIRST;
    int64_t t0 = hearth_now_ns();
    llama_token tok;
    bool done = hearth_sampler_grammar_step(&r->sampler, n, e->candidates, utf8, &tok);
    job->chunk = next_chunk(n, hearth_now_ns() - t0, target);
    if (!done) {
        return false;
    }
    r->pending_finish = HEARTH_FINISH_NONE;
    r->batch_index = -1;
    if (tok == LLAMA_TOKEN_NULL) {
        fail_request(r, GRAMMAR_DEAD_END);
    } else {
        hearth_engine_accept_token(e, r, tok, job->logits);
        (*n_sampled)++;
    }
    e->jobs_done[e->n_jobs_done++] = r;
    return true;
}

/* Advances the open grammar jobs: one chunk each, then more in turns until
 * the budget is spent.  A cancelled or expired request is left alone: the
 * next reap finishes it and frees its slot.  Returns how many tokens were
 * produced; the requests concerned are in e->jobs_done. */
uint64_t hearth_grammar_run_jobs(hearth_engine *e, int64_t decode_ns) {
    e->n_jobs_done = 0;
    if (e->n_jobs == 0) {
        return 0;
    }
    int64_t budget = e->params.grammar_budget_us > 0
                         ? (int64_t)e->params.grammar_budget_us * 1000
                         : (decode_ns > GRAMMAR_MIN_BUDGET_NS ? decode_ns : GRAMMAR_MIN_BUDGET_NS);
    int64_t target = budget / 4 < GRAMMAR_CHUNK_NS ? budget / 4 : GRAMMAR_CHUNK_NS;
    int64_t end = hearth_now_ns() + budget;
    const utf8_index *utf8 = grammar_utf8(e);
    uint64_t n_sampled = 0;
    int32_t first = (int32_t)(e->job_turn++ % (uint32_t)e->n_jobs);
    for (int32_t round = 0;; round++) {
        bool progress = false;
        for (int32_t k = 0; k < e->n_jobs; k++) {
            int64_t now = hearth_now_ns();
            if (round > 0 && now >= end) {
                return n_sampled;
            }
            hearth_request *r = e->jobs[(first + k) % e->n_jobs];
            if (!hearth_sampler_grammar_pending(&r->sampler) || job_abandoned(r, now)) {
                continue;
            }
            progress = true;
            advance_job(e, r, utf8, target, &n_sampled);
        }
        if (!progress) {
            return n_sampled;
        }
    }
}
