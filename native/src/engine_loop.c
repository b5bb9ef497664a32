#define _GNU_SOURCE
/*
 * The engine thread: the only code that touches the llama context.
 *
 * Each iteration reaps cancelled and expired requests, admits queued ones
 * into free slots (reusing cached prefixes), asks the scheduler for a plan
 * (plan_step), then runs the step (run_step): packs every planned token into
 * one llama_batch, runs one llama_decode, samples, advances grammar jobs
 * within a time budget (grammar_jobs.c), and publishes the new output.  The engine mutex is never held
 * during llama_decode or sampling, so callers can submit, cancel and take
 * output at any time.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* An idle engine still wakes this often, so the watchdog sees a heartbeat. */
#define IDLE_WAIT_NS 500000000LL
/* A burst is over once no request has arrived for this long. */
#define BURST_QUIET_NS 1000000LL

static void wait_until(hearth_engine *e, int64_t deadline_mono_ns) {
    /* pthread condition variables time out on CLOCK_REALTIME. */
    int64_t delta = deadline_mono_ns - hearth_now_ns();
    if (delta <= 0) {
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + delta;
    ts.tv_sec += (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    pthread_cond_timedwait(&e->cv, &e->mu, &ts);
}

/* Clients of a burst arrive over a few milliseconds.  An idle engine that
 * started at once would prefill the first prompt alone and make the rest
 * wait a whole step; waiting for the burst to end (at most burst_window_us)
 * prefills them together.  e->mu held. */
static void gather_burst(hearth_engine *e) {
    hearth_sched_stats ss;
    hearth_sched_get_stats(e->sched, &ss);
    if (e->params.burst_window_us <= 0 || ss.n_running > 0 || ss.n_waiting == 0) {
        return;
    }
    int64_t end = hearth_now_ns() + (int64_t)e->params.burst_window_us * 1000;
    while (!e->stop && ss.n_waiting < e->params.n_parallel) {
        int32_t before = ss.n_waiting;
        int64_t now = hearth_now_ns();
        if (now >= end) {
            break;
        }
        wait_until(e, now + BURST_QUIET_NS < end ? now + BURST_QUIET_NS : end);
        hearth_sched_get_stats(e->sched, &ss);
        if (ss.n_waiting == before) {
            break; /* quiet: the burst is over */
        }
    }
}

static int32_t find_live_index(const hearth_engine *e, uint64_t id) {
    for (int32_t i = 0; i < e->n_live; i++) {
        if (e->live[i]->id == id) {
            return i;
        }
    }
    return -1;
}

/* Ends a generation request: frees its slot and scheduler entry, publishes
 * its final output and drops the engine's reference.  e->mu held (or the
 * thread has ended). */
void hearth_engine_finish(hearth_engine *e, hearth_request *r, hearth_finish_reason reason,
                          const char *error) {
    if (r->finished_engine) {
        return;
    }
    r->finished_engine = true;
    r->finish_reason = reason;
    hearth_steplog_finished(e, r->id);
    if (error && error != r->error) {
        free(r->error);
        r->error = strdup(error);
    }
    hearth_textstream_flush(r->text);
    hearth_adapter_release(e, r->adapter);
    hearth_slots_release(e, r, reason != HEARTH_FINISH_ERROR);
    hearth_sched_remove(e->sched, r->id);
    int32_t i = find_live_index(e, r->id);
    if (i >= 0) {
        e->live[i] = e->live[--e->n_live];
    }
    e->stats.requests_finished++;
    if (reason == HEARTH_FINISH_CANCELLED || reason == HEARTH_FINISH_DEADLINE) {
        e->stats.requests_cancelled++;
    }
    hearth_engine_publish(e, r);
    hearth_request_unref(r);
}

static void finish_embedding(hearth_engine *e, hearth_request *r, hearth_finish_reason reason,
                             const char *error) {
    r->finished_engine = true;
    r->finish_reason = reason;
    hearth_steplog_finished(e, r->id);
    if (error) {
        r->error = strdup(error);
    }
    e->stats.requests_finished++;
    hearth_engine_publish(e, r);
    hearth_request_unref(r);
}

/* Cancelled and expired requests leave before the next plan, so no token is
 * computed for them after the step in which the cancel arrived. */
static void reap(hearth_engine *e, int64_t now) {
    for (int32_t i = e->n_live - 1; i >= 0; i--) {
        hearth_request *r = e->live[i];
        if (atomic_load(&r->cancel)) {
            hearth_engine_finish(e, r, HEARTH_FINISH_CANCELLED, NULL);
        } else if (r->deadline_ns > 0 && now >= r->deadline_ns) {
            hearth_engine_finish(e, r, HEARTH_FINISH_DEADLINE, NULL);
        }
    }
    for (int32_t i = e->n_embed_q - 1; i >= 0; i--) {
        hearth_request *r = e->embed_q[i];
        if (atomic_load(&r->cancel)) {
            memmove(e->embed_q + i, e->embed_q + i + 1,
                    (size_t)(e->n_embed_q - i - 1) * sizeof(hearth_request *));
            e->n_embed_q--;
            finish_embedding(e, r, HEARTH_FINISH_CANCELLED, NULL);
        }
    }
}

static void admit(hearth_engine *e) {
    uint64_t ids[256];
    int32_t n = hearth_sched_admit(e->sched, ids, e->params.n_parallel);
    int64_t now = hearth_now_ns();
    for (int32_t k = 0; k < n; k++) {
        int32_t i = find_live_index(e, ids[k]);
        if (i < 0) {
            hearth_sched_remove(e->sched, ids[k]);
            continue;
        }
        hearth_request *r = e->live[i];
        if (hearth_slots_assign(e, r) < 0) {
            hearth_engine_finish(e, r, HEARTH_FINISH_ERROR, "no free slot (scheduler bug)");
            continue;
        }
        hearth_drift_admitted(e, r);
        hearth_sched_set_prefill(e->sched, r->id, r->prompt.len - r->n_past);
        e->stats.tokens_cached += (uint64_t)r->n_past;
        pthread_mutex_lock(&r->mu);
        r->t_admit_ns = now;
        r->slot_public = r->slot;
        pthread_mutex_unlock(&r->mu);
    }
}

/* Decides what the new token means for the request; the finish itself
 * happens under the engine mutex afterwards. */
void hearth_engine_accept_token(hearth_engine *e, hearth_request *r, llama_token tok,
                                const float *logits) {
    if (tok < 0 || tok >= e->n_vocab) {
        r->pending_finish = HEARTH_FINISH_ERROR;
        return;
    }
    if (r->n_logprobs >= 0 && logits) {
        hearth_logprob lp;
        hearth_logprobs_compute(logits, e->n_vocab, tok, r->n_logprobs, &lp);
        hlogprobs_append(&r->stage_logprobs, &lp, 1);
    }
    r->n_generated++;
    if (r->n_generated == 1) {
        pthread_mutex_lock(&r->mu);
        r->t_first_token_ns = hearth_now_ns();
        pthread_mutex_unlock(&r->mu);
    }
    htokens_append(&r->stage_tokens, &tok, 1);
    r->last_token = tok;
    if (!r->ignore_eos && e->eog_mask[tok]) {
        r->pending_finish = HEARTH_FINISH_STOP;
        return;
    }
    char small[256];
    char *piece = small;
    int32_t n = llama_token_to_piece(e->vocab, tok, small, sizeof small, 0, false);
    if (n < 0) {
        piece = malloc((size_t)-n);
        n = piece ? llama_token_to_piece(e->vocab, tok, piece, -n, 0, false) : 0;
    }
    int32_t hit = n > 0 ? hearth_textstream_feed(r->text, piece, n) : -1;
    if (piece != small) {
        free(piece);
    }
    if (hit >= 0) {
        r->stop_index = hit;
        r->pending_finish = HEARTH_FINISH_STOP;
    } else if (r->n_generated >= r->max_tokens || r->n_past >= e->n_ctx_slot) {
        r->pending_finish = HEARTH_FINISH_LENGTH;
    }
}

/* Samples the rows of the last token and of each proposal in order, with
 * the request's own sampler, while the sampled token equals the proposal.
 * Each emitted token is a draw from the model's own distribution, so the
 * output is what it would have been without a draft.  The KV of rejected
 * proposals is cut off.  Returns how many tokens were emitted. */
static int32_t verify_drafts(hearth_engine *e, hearth_request *r) {
    slot *s = &e->slots[r->slot];
    int32_t m = r->drafts.len;
    int32_t emitted = 0;
    for (int32_t j = 0; j <= m; j++) {
        int32_t row = r->batch_index + j;
        llama_token tok = hearth_sampler_sample(&r->sampler, e->ctx, row);
        hearth_engine_accept_token(e, r, tok, llama_get_logits_ith(e->ctx, row));
        emitted++;
        if (r->pending_finish != HEARTH_FINISH_NONE || j == m || tok != r->drafts.data[j]) {
            break;
        }
        /* Accepted: its KV, computed in this batch, is now the slot's. */
        htokens_append(&s->cache, &tok, 1);
        r->n_past++;
        r->n_draft_accepted++;
    }
    r->n_drafted += m;
    llama_memory_seq_rm(llama_get_memory(e->ctx), r->slot, r->n_past, -1);
    r->drafts.len = 0;
    return emitted;
}

/* Asks the draft model for proposals for every decoding request that may
 * use them, within the room the plan leaves in the batch. */
static void propose(hearth_engine *e, int32_t n_plan) {
    hearth_request *spec[256];
    int32_t n_spec = 0;
    int32_t planned = 0;
    for (int32_t i = 0; i < n_plan; i++) {
        hearth_request *r = e->plan_reqs[i];
        r->drafts.len = 0;
        planned += e->plan[i].n_tokens;
        /* A grammar's state cannot be rolled back past a rejected proposal. */
        if (e->plan[i].action == HEARTH_SCHED_DECODE && r->speculate && !r->sampler.grammar &&
            n_spec < 256) {
            spec[n_spec++] = r;
        }
    }
    int32_t room = e->params.n_batch - planned;
    if (n_spec > 0 && room > 0) {
        hearth_draft_propose(e, spec, n_spec, room);
    }
}

/* Packs every planned token into the batch: one token (plus any draft
 * proposals) per decoding request, a prompt chunk per prefilling one. */
static void pack_batch(hearth_engine *e, int32_t n_plan) {
    struct llama_batch *b = &e->batch;
    b->n_tokens = 0;
    hearth_drift_step_begin(e);
    if (e->draft) {
        propose(e, n_plan);
    }
    for (int32_t i = 0; i < n_plan; i++) {
        hearth_request *r = e->plan_reqs[i];
        const hearth_sched_entry *ent = &e->plan[i];
        r->batch_index = -1;
        if (ent->action == HEARTH_SCHED_DECODE) {
            hearth_batch_add(b, r->last_token, r->n_past, r->slot, true);
            r->batch_index = b->n_tokens - 1;
            for (int32_t k = 0; k < r->drafts.len; k++) {
                hearth_batch_add(b, r->drafts.data[k], r->n_past + 1 + k, r->slot, true);
            }
            continue;
        }
        if (r->score) {
            hearth_score_pack(e, r, &e->plan[i]);
            continue;
        }
        for (int32_t j = 0; j < ent->n_tokens; j++) {
            bool last = ent->completes_prompt && j == ent->n_tokens - 1;
            bool out = last || hearth_drift_want_logits(e, r, r->n_past + j, b->n_tokens);
            hearth_batch_add(b, r->prompt.data[r->n_past + j], r->n_past + j, r->slot, out);
        }
        if (ent->completes_prompt) {
            r->batch_index = b->n_tokens - 1;
        }
    }
}

/* Runs llama_decode on the batch and records what entered the KV cache.
 * On failure every planned request finishes with an error.  Returns the
 * time spent in llama_decode, or -1 on failure. */
static int64_t decode_batch(hearth_engine *e, int32_t n_plan) {
    int64_t t0 = hearth_now_ns();
    int32_t rc = llama_decode(e->ctx, e->batch);
    int64_t dt = hearth_now_ns() - t0;

    pthread_mutex_lock(&e->mu);
    e->stats.decode_steps++;
    e->stats.decode_ns_total += (uint64_t)dt;
    if (rc != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "llama_decode failed with code %d", rc);
        e->stats.decode_failures++;
        for (int32_t i = 0; i < n_plan; i++) {
            hearth_engine_finish(e, e->plan_reqs[i], HEARTH_FINISH_ERROR, msg);
        }
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    for (int32_t i = 0; i < n_plan; i++) {
        hearth_request *r = e->plan_reqs[i];
        slot *s = &e->slots[r->slot];
        if (e->plan[i].action == HEARTH_SCHED_DECODE) {
            htokens_append(&s->cache, &r->last_token, 1);
            r->n_past += 1;
        } else {
            int32_t k = e->plan[i].n_tokens;
            htokens_append(&s->cache, r->prompt.data + r->n_past, k);
            r->n_past += k;
            e->stats.tokens_prompt += (uint64_t)k;
        }
    }
    hearth_sched_commit(e->sched, e->plan, n_plan);
    pthread_mutex_unlock(&e->mu);
    return dt;
}

/* Samples every request whose logits this step computed.  Sampling reads
 * only this step's logits and request-private state, so e->mu is free.
 * Returns how many tokens were produced. */
static uint64_t sample_plan(hearth_engine *e, int32_t n_plan) {
    hearth_drift_score_prompt(e); /* this step's sampled prompt rows */
    uint64_t n_sampled = 0;
    for (int32_t i = 0; i < n_plan; i++) {
        hearth_request *r = e->plan_reqs[i];
        r->pending_finish = HEARTH_FINISH_NONE;
        if (r->score) {
            hearth_score_collect(e, r, &e->plan[i]);
            continue;
        }
        if (r->batch_index < 0) {
            continue;
        }
        if (atomic_load(&r->cancel)) {
            r->pending_finish = HEARTH_FINISH_CANCELLED;
            continue;
        }
        hearth_drift_first_token(e, r);
        if (r->drafts.len > 0) {
            n_sampled += (uint64_t)verify_drafts(e, r);
        } else if (r->sampler.grammar) {
            n_sampled += hearth_grammar_sample(e, r) ? 1 : 0;
            if (hearth_sampler_grammar_pending(&r->sampler)) {
                /* Its job publishes it (e->jobs_done), this step or later:
                 * settling it here too could finish it twice. */
                e->plan_reqs[i] = NULL;
            }
        } else {
            llama_token tok = hearth_sampler_sample(&r->sampler, e->ctx, r->batch_index);
            hearth_engine_accept_token(e, r, tok, llama_get_logits_ith(e->ctx, r->batch_index));
            n_sampled++;
        }
    }
    return n_sampled;
}

/* Finishes or publishes a request after its step. e->mu held. */
static void settle(hearth_engine *e, hearth_request *r, bool produced) {
    if (r->score && r->pending_finish == HEARTH_FINISH_NONE) {
        hearth_score_advance(e, r); /* its next variant, if this one ended */
    }
    if (r->pending_finish != HEARTH_FINISH_NONE) {
        const char *why = NULL;
        if (r->pending_finish == HEARTH_FINISH_ERROR) {
            why = r->error ? r->error : "the sampler returned an invalid token";
        }
        hearth_engine_finish(e, r, r->pending_finish, why);
    } else if (produced) {
        hearth_engine_publish(e, r);
    }
}

static void publish_step(hearth_engine *e, int32_t n_plan, uint64_t n_sampled,
                         int32_t jobs_opened) {
    pthread_mutex_lock(&e->mu);
    hearth_steplog_commit(e); /* before the step's finishes are logged */
    e->stats.tokens_generated += n_sampled;
    e->stats.grammar_jobs += (uint64_t)jobs_opened;
    for (int32_t i = 0; i < n_plan; i++) {
        hearth_request *r = e->plan_reqs[i];
        if (r) { /* NULL: a grammar job took it over */
            settle(e, r, r->batch_index >= 0);
        }
    }
    for (int32_t i = 0; i < e->n_jobs_done; i++) {
        settle(e, e->jobs_done[i], true);
    }
    pthread_mutex_unlock(&e->mu);
}

/* One engine step: pack, decode, sample, grammar work, publish. */
static void run_step(hearth_engine *e, int32_t n_plan) {
    uint64_t n_sampled = 0;
    int64_t decode_ns = 0;
    int32_t jobs_before = e->n_jobs;
    hearth_steplog_begin(e);
    if (n_plan > 0) {
        pack_batch(e, n_plan);
        decode_ns = decode_batch(e, n_plan);
        if (decode_ns < 0) {
            n_plan = 0; /* all finished with the error */
            decode_ns = 0;
        } else {
            hearth_steplog_stage(e, n_plan); /* before sampling consumes the drafts */
            n_sampled = sample_plan(e, n_plan);
        }
    }
    int32_t jobs_opened = e->n_jobs - jobs_before;
    n_sampled += hearth_grammar_run_jobs(e, decode_ns);
    publish_step(e, n_plan, n_sampled, jobs_opened);
}

static void run_embedding(hearth_engine *e, hearth_request *r) {
    int64_t t0 = hearth_now_ns();
    hearth_status st = hearth_model_embed(e, r);
    pthread_mutex_lock(&e->mu);
    e->stats.tokens_prompt += (uint64_t)r->prompt.len;
    hearth_steplog_work(e, r->id, t0, r->prompt.len);
    if (st == HEARTH_OK) {
        finish_embedding(e, r, HEARTH_FINISH_STOP, NULL);
    } else {
        finish_embedding(e, r, HEARTH_FINISH_ERROR, hearth_last_error());
    }
    pthread_mutex_unlock(&e->mu);
}

/* Plans the step: the scheduler's entries for live requests, less those
 * whose grammar job is still choosing their next token (they hold their
 * slot and decode again once it is chosen); also lists the open jobs.
 * e->mu held.  Returns the plan length. */
static int32_t plan_step(hearth_engine *e) {
    e->n_jobs = 0;
    for (int32_t i = 0; i < e->n_live && e->n_jobs < e->params.n_parallel; i++) {
        if (hearth_sampler_grammar_pending(&e->live[i]->sampler)) {
            e->jobs[e->n_jobs++] = e->live[i];
        }
    }
    int32_t n_planned = hearth_sched_plan(e->sched, e->plan, e->params.n_parallel);
    int32_t n_plan = 0;
    for (int32_t i = 0; i < n_planned; i++) {
        int32_t k = find_live_index(e, e->plan[i].id);
        if (k < 0) {
            hearth_sched_remove(e->sched, e->plan[i].id);
            continue;
        }
        if (hearth_sampler_grammar_pending(&e->live[k]->sampler)) {
            continue;
        }
        e->plan[n_plan] = e->plan[i];
        e->plan_reqs[n_plan++] = e->live[k];
    }
    return n_plan;
}

static bool has_work(const hearth_engine *e) { return e->n_live > 0 || e->n_embed_q > 0; }

#ifdef HEARTH_TEST_HOOKS
/* Test builds only: HEARTH_TEST_HANG_AT_STEP=N wedges the engine thread at
 * its N-th decode step, so the watchdog path can be shown end to end. */
static void test_hang_hook(const hearth_engine *e) {
    static long hang_at = -1;
    if (hang_at < 0) {
        const char *v = getenv("HEARTH_TEST_HANG_AT_STEP");
        hang_at = v ? atol(v) : 0;
    }
    if (hang_at > 0 && e->stats.decode_steps >= (uint64_t)hang_at) {
        for (;;) {
            sleep(1);
        }
    }
}
#else
static void test_hang_hook(const hearth_engine *e) { (void)e; }
#endif

void *hearth_engine_main(void *arg) {
    hearth_engine *e = arg;
    /* Names show in top -H and /proc; ggml's worker threads inherit it. */
    pthread_setname_np(pthread_self(), "hearth-engine");
    for (;;) {
        pthread_mutex_lock(&e->mu);
        for (;;) {
            int64_t now = hearth_now_ns();
            atomic_store(&e->heartbeat_ns, now);
            if (e->stop) {
                break;
            }
            reap(e, now);
            if (has_work(e) || e->retire_pending) {
                break;
            }
            wait_until(e, now + IDLE_WAIT_NS);
        }
        gather_burst(e);
        if (e->stop) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        hearth_request *embed = NULL;
        if (e->n_embed_q > 0) {
            embed = e->embed_q[0];
            memmove(e->embed_q, e->embed_q + 1, (size_t)(e->n_embed_q - 1) * sizeof(hearth_request *));
            e->n_embed_q--;
        }
        admit(e);
        int32_t n_plan = plan_step(e);
        pthread_mutex_unlock(&e->mu);

        pthread_mutex_lock(&e->step_mu);
        while (atomic_load(&e->step_waiters) > 0) {
            pthread_cond_wait(&e->step_cv, &e->step_mu);   /* let them in first */
        }
        n_plan = hearth_adapters_select(e, n_plan);
        if (embed) {
            run_embedding(e, embed);
        }
        if (n_plan > 0 || e->n_jobs > 0) {
            test_hang_hook(e);
            run_step(e, n_plan);
        }
        pthread_mutex_unlock(&e->step_mu);
    }
    return NULL;
}
