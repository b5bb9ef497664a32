/*
 * The scheduling policy, without a model.
 *
 * Requests wait in a bounded FIFO queue until a slot is free.  Each step
 * serves every decoding sequence one token first (so running streams never
 * stall behind new prompts), then spends what is left of the token budget,
 * capped by prefill_chunk, on prompt prefill, oldest admission first.  Long
 * prompts are therefore computed in chunks across steps, and the time of a
 * step stays bounded no matter what arrives.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef enum seq_state { SEQ_WAITING, SEQ_PREFILL, SEQ_DECODE } seq_state;

typedef struct sched_seq {
    uint64_t id;
    int32_t n_prompt;
    int32_t n_remaining; /* prompt tokens still to compute */
    seq_state state;
} sched_seq;

struct hearth_scheduler {
    hearth_sched_config cfg;
    sched_seq *waiting; /* FIFO, oldest first */
    int32_t n_waiting;
    int32_t cap_waiting;
    sched_seq *running; /* admission order */
    int32_t n_running;
};

hearth_status hearth_sched_create(const hearth_sched_config *cfg, hearth_scheduler **out) {
    if (!cfg || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "scheduler: NULL argument");
    }
    if (cfg->n_slots < 1 || cfg->max_queue < 0 || cfg->prefill_chunk < 1 ||
        cfg->max_batch_tokens < cfg->n_slots) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "scheduler: need n_slots >= 1, max_queue >= 0, prefill_chunk >= 1 "
                           "and max_batch_tokens >= n_slots (got %d, %d, %d, %d)",
                           cfg->n_slots, cfg->max_queue, cfg->prefill_chunk,
                           cfg->max_batch_tokens);
    }
    hearth_scheduler *s = calloc(1, sizeof *s);
    if (!s) {
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "scheduler: out of memory");
    }
    s->cfg = *cfg;
    s->cap_waiting = cfg->n_slots + cfg->max_queue;
    s->waiting = calloc((size_t)s->cap_waiting, sizeof(sched_seq));
    s->running = calloc((size_t)cfg->n_slots, sizeof(sched_seq));
    if (!s->waiting || !s->running) {
        hearth_sched_free(s);
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "scheduler: out of memory");
    }
    *out = s;
    return HEARTH_OK;
}

void hearth_sched_free(hearth_scheduler *s) {
    if (!s) {
        return;
    }
    free(s->waiting);
    free(s->running);
    free(s);
}

static sched_seq *find_running(hearth_scheduler *s, uint64_t id) {
    for (int32_t i = 0; i < s->n_running; i++) {
        if (s->running[i].id == id) {
            return &s->running[i];
        }
    }
    return NULL;
}

static int32_t find_waiting(const hearth_scheduler *s, uint64_t id) {
    for (int32_t i = 0; i < s->n_waiting; i++) {
        if (s->waiting[i].id == id) {
            return i;
        }
    }
    return -1;
}

hearth_status hearth_sched_enqueue(hearth_scheduler *s, uint64_t id, int32_t n_prompt) {
    if (n_prompt < 1) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "scheduler: empty prompt");
    }
    if (find_waiting(s, id) >= 0 || find_running(s, id)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "scheduler: duplicate id %llu",
                           (unsigned long long)id);
    }
    /* Room for every free slot plus max_queue more. */
    int32_t free_slots = s->cfg.n_slots - s->n_running;
    if (s->n_waiting >= free_slots + s->cfg.max_queue) {
        return hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED,
                           "admission queue full: %d running, %d waiting (max_queue %d)",
                           s->n_running, s->n_waiting, s->cfg.max_queue);
    }
    s->waiting[s->n_waiting++] =
        (sched_seq){.id = id, .n_prompt = n_prompt, .n_remaining = n_prompt, .state = SEQ_WAITING};
    return HEARTH_OK;
}

int32_t hearth_sched_admit(hearth_scheduler *s, uint64_t *ids, int32_t cap) {
    int32_t n = 0;
    while (s->n_waiting > 0 && s->n_running < s->cfg.n_slots && n < cap) {
        sched_seq seq = s->waiting[0];
        memmove(s->waiting, s->waiting + 1, (size_t)(s->n_waiting - 1) * sizeof(sched_seq));
        s->n_waiting--;
        seq.state = SEQ_PREFILL;
        s->running[s->n_running++] = seq;
        ids[n++] = seq.id;
    }
    return n;
}

hearth_status hearth_sched_set_prefill(hearth_scheduler *s, uint64_t id, int32_t n_remaining) {
    sched_seq *seq = find_running(s, id);
    if (!seq) {
        return hearth_fail(HEARTH_E_NOT_FOUND, "scheduler: id %llu is not running",
                           (unsigned long long)id);
    }
    if (seq->state != SEQ_PREFILL || n_remaining < 1 || n_remaining > seq->n_prompt) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "scheduler: prefill of %d tokens is out of range 1..%d", n_remaining,
                           seq->n_prompt);
    }
    seq->n_remaining = n_remaining;
    return HEARTH_OK;
}

hearth_status hearth_sched_restart_prefill(hearth_scheduler *s, uint64_t id, int32_t n_prompt,
                                           int32_t n_remaining) {
    sched_seq *seq = find_running(s, id);
    if (!seq) {
        return hearth_fail(HEARTH_E_NOT_FOUND, "scheduler: id %llu is not running",
                           (unsigned long long)id);
    }
    if (n_remaining < 1 || n_remaining > n_prompt) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "scheduler: prefill of %d tokens is out of range 1..%d", n_remaining,
                           n_prompt);
    }
    seq->n_prompt = n_prompt;
    seq->n_remaining = n_remaining;
    seq->state = SEQ_PREFILL;
    return HEARTH_OK;
}

int32_t hearth_sched_plan(hearth_scheduler *s, hearth_sched_entry *out, int32_t cap) {
    int32_t n = 0;
    int32_t budget = s->cfg.max_batch_tokens;
    for (int32_t i = 0; i < s->n_running && n < cap; i++) {
        if (s->running[i].state == SEQ_DECODE) {
            out[n++] = (hearth_sched_entry){.id = s->running[i].id,
                                            .action = HEARTH_SCHED_DECODE,
                                            .n_tokens = 1,
                                            .completes_prompt = false};
            budget--;
        }
    }
    int32_t prefill = budget < s->cfg.prefill_chunk ? budget : s->cfg.prefill_chunk;
    for (int32_t i = 0; i < s->n_running && n < cap && prefill > 0; i++) {
        sched_seq *seq = &s->running[i];
        if (seq->state != SEQ_PREFILL) {
            continue;
        }
        int32_t k = seq->n_remaining < prefill ? seq->n_remaining : prefill;
        out[n++] = (hearth_sched_entry){.id = seq->id,
                                        .action = HEARTH_SCHED_PREFILL,
                                        .n_tokens = k,
                                        .completes_prompt = k == seq->n_remaining};
        prefill -= k;
    }
    return n;
}

hearth_status hearth_sched_commit(hearth_scheduler *s, const hearth_sched_entry *done, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        if (done[i].action != HEARTH_SCHED_PREFILL) {
            continue;
        }
        sched_seq *seq = find_running(s, done[i].id);
        if (!seq) {
            continue; /* removed meanwhile (finished or cancelled) */
        }
        if (seq->state != SEQ_PREFILL || done[i].n_tokens > seq->n_remaining) {
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                               "scheduler: commit of %d prefill tokens does not match plan",
                               done[i].n_tokens);
        }
        seq->n_remaining -= done[i].n_tokens;
        if (seq->n_remaining == 0) {
            seq->state = SEQ_DECODE;
        }
    }
    return HEARTH_OK;
}

hearth_status hearth_sched_remove(hearth_scheduler *s, uint64_t id) {
    int32_t w = find_waiting(s, id);
    if (w >= 0) {
        memmove(s->waiting + w, s->waiting + w + 1,
                (size_t)(s->n_waiting - w - 1) * sizeof(sched_seq));
        s->n_waiting--;
        return HEARTH_OK;
    }
    for (int32_t i = 0; i < s->n_running; i++) {
        if (s->running[i].id == id) {
            memmove(s->running + i, s->running + i + 1,
                    (size_t)(s->n_running - i - 1) * sizeof(sched_seq));
            s->n_running--;
            return HEARTH_OK;
        }
    }
    return hearth_fail(HEARTH_E_NOT_FOUND, "scheduler: unknown id %llu", (unsigned long long)id);
}

void hearth_sched_get_stats(const hearth_scheduler *s, hearth_sched_stats *out) {
    memset(out, 0, sizeof *out);
    out->n_waiting = s->n_waiting;
    out->n_running = s->n_running;
    for (int32_t i = 0; i < s->n_running; i++) {
        if (s->running[i].state == SEQ_PREFILL) {
            out->n_prefilling++;
        } else {
            out->n_decoding++;
        }
    }
}
