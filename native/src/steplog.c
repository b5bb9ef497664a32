/*
 * The step log: which requests took part in each engine step, and how many
 * prompt (prefill) and generated (decode) tokens each contributed, for
 * energy accounting.  The engine thread appends one record per request per
 * step (once per step, under the log's own mutex, after llama_decode and
 * sampling); a caller drains the records in windows (about a second), so
 * nothing crosses into Python per token.  A ring: when the caller does not
 * drain in time, the oldest records are overwritten and counted as lost.
 * Off (no memory, no work) until hearth_engine_step_log enables it.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

struct step_log {
    pthread_mutex_t mu;
    hearth_step_record *ring;
    int32_t cap;
    int32_t head;      /* oldest record */
    int32_t len;
    uint64_t lost;     /* overwritten before a drain, since the last drain */
    /* Engine thread only: this step's records until it is committed. */
    hearth_step_record *stage;
    int32_t n_stage;
    int32_t cap_stage;
    int64_t t_step_start;
};

static void log_push(struct step_log *l, const hearth_step_record *rec) {
    if (l->len == l->cap) {
        l->head = (l->head + 1) % l->cap;
        l->len--;
        l->lost++;
    }
    l->ring[(l->head + l->len) % l->cap] = *rec;
    l->len++;
}

static void log_free(struct step_log *l) {
    if (!l) {
        return;
    }
    pthread_mutex_destroy(&l->mu);
    free(l->ring);
    free(l->stage);
    free(l);
}

hearth_status hearth_engine_step_log(hearth_engine *e, int32_t capacity) {
    if (!e || capacity < 0 || capacity > (1 << 24)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "step_log: capacity must be 0..16777216");
    }
    struct step_log *fresh = NULL;
    if (capacity > 0) {
        fresh = calloc(1, sizeof *fresh);
        if (!fresh) {
            return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
        }
        fresh->ring = calloc((size_t)capacity, sizeof(hearth_step_record));
        fresh->cap_stage = e->params.n_parallel;
        fresh->stage = calloc((size_t)fresh->cap_stage, sizeof(hearth_step_record));
        if (!fresh->ring || !fresh->stage) {
            free(fresh->ring);
            free(fresh->stage);
            free(fresh);
            return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
        }
        pthread_mutex_init(&fresh->mu, NULL);
        fresh->cap = capacity;
    }
    /* step_mu: the engine thread's step (which stages into the log) is not
     * running; mu: nor is a finish (which appends). */
    hearth_step_lock_outside(e);
    pthread_mutex_lock(&e->mu);
    struct step_log *old = e->step_log;
    e->step_log = fresh;
    pthread_mutex_unlock(&e->mu);
    hearth_step_unlock_outside(e);
    log_free(old);
    return HEARTH_OK;
}

int32_t hearth_engine_drain_steps(hearth_engine *e, hearth_step_record *out, int32_t cap,
                                  uint64_t *n_lost) {
    if (n_lost) {
        *n_lost = 0;
    }
    if (!e || !out || cap <= 0) {
        return 0;
    }
    /* e->mu only to read the pointer: the log itself has its own lock, so
     * a drain never waits for the engine's step. */
    pthread_mutex_lock(&e->mu);
    struct step_log *l = e->step_log;
    if (!l) {
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    pthread_mutex_lock(&l->mu);
    pthread_mutex_unlock(&e->mu);
    int32_t n = l->len < cap ? l->len : cap;
    for (int32_t i = 0; i < n; i++) {
        out[i] = l->ring[(l->head + i) % l->cap];
    }
    l->head = (l->head + n) % l->cap;
    l->len -= n;
    if (n_lost) {
        *n_lost = l->lost;
    }
    l->lost = 0;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void hearth_steplog_begin(hearth_engine *e) {
    if (e->step_log) {
        e->step_log->t_step_start = hearth_now_ns();
        e->step_log->n_stage = 0;
    }
}

void hearth_steplog_stage(hearth_engine *e, int32_t n_plan) {
    struct step_log *l = e->step_log;
    if (!l) {
        return;
    }
    for (int32_t i = 0; i < n_plan && l->n_stage < l->cap_stage; i++) {
        const hearth_sched_entry *ent = &e->plan[i];
        hearth_step_record *rec = &l->stage[l->n_stage++];
        memset(rec, 0, sizeof *rec);
        rec->request_id = ent->id;
        if (ent->action == HEARTH_SCHED_DECODE) {
            /* its last token plus the draft proposals verified with it */
            rec->n_decode = 1 + e->plan_reqs[i]->drafts.len;
        } else {
            rec->n_prefill = ent->n_tokens;
        }
    }
}

void hearth_steplog_commit(hearth_engine *e) {
    struct step_log *l = e->step_log;
    if (!l || l->n_stage == 0) {
        return;
    }
    int64_t now = hearth_now_ns();
    pthread_mutex_lock(&l->mu);
    for (int32_t i = 0; i < l->n_stage; i++) {
        l->stage[i].t_start_ns = l->t_step_start;
        l->stage[i].t_end_ns = now;
        log_push(l, &l->stage[i]);
    }
    pthread_mutex_unlock(&l->mu);
    l->n_stage = 0;
}

void hearth_steplog_work(hearth_engine *e, uint64_t id, int64_t t_start_ns, int32_t n_prefill) {
    struct step_log *l = e->step_log;
    if (!l) {
        return;
    }
    hearth_step_record rec = {.request_id = id, .t_start_ns = t_start_ns,
                              .t_end_ns = hearth_now_ns(), .n_prefill = n_prefill};
    pthread_mutex_lock(&l->mu);
    log_push(l, &rec);
    pthread_mutex_unlock(&l->mu);
}

void hearth_steplog_finished(hearth_engine *e, uint64_t id) {
    struct step_log *l = e->step_log;
    if (!l) {
        return;
    }
    int64_t now = hearth_now_ns();
    hearth_step_record rec = {.request_id = id, .t_start_ns = now, .t_end_ns = now,
                              .flags = HEARTH_STEP_FINISHED};
    pthread_mutex_lock(&l->mu);
    log_push(l, &rec);
    pthread_mutex_unlock(&l->mu);
}

void hearth_steplog_free(hearth_engine *e) {
    log_free(e->step_log);
    e->step_log = NULL;
}
