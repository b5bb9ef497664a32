/*
 * LoRA adapters: loading, retiring, and which adapter each step runs.
 *
 * llama.cpp applies adapters to the whole context and re-reserves its
 * compute graph whenever the set changes, so a step runs the requests of
 * one adapter only.  The group keeps the context while it has work, for at
 * most GROUP_STEPS steps when other adapters' requests wait, and then the
 * oldest waiting request's adapter takes its turn.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Steps a group keeps the context while requests of other adapters wait:
 * long enough to amortise a graph re-reserve, short enough to stay fair. */
#define GROUP_STEPS 8

static adapter_entry *find(hearth_engine *e, int32_t id) {
    for (int32_t i = 0; i < HEARTH_MAX_ADAPTERS; i++) {
        if (e->adapters[i].lora && e->adapters[i].id == id) {
            return &e->adapters[i];
        }
    }
    return NULL;
}

hearth_status hearth_engine_adapter_load(hearth_engine *e, const char *path, int32_t fd,
                                         int32_t *id_out) {
    if (!e || !id_out || (fd < 0 && (!path || !path[0]))) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "adapter_load: a path or an fd is needed");
    }
    FILE *f = NULL;
    if (fd >= 0) {
        int dfd = dup(fd);
        f = dfd >= 0 ? fdopen(dfd, "rb") : NULL;
        if (!f) {
            if (dfd >= 0) close(dfd);
            return hearth_fail(HEARTH_E_LOAD_FAILED, "cannot open adapter fd %d", fd);
        }
        fseek(f, 0, SEEK_SET);
    }
    hearth_step_lock_outside(e);
    hearth_llama_clear_error();
    struct llama_adapter_lora *lora = f ? llama_adapter_lora_init_from_file_ptr(e->model, f)
                                        : llama_adapter_lora_init(e->model, path);
    hearth_status st = HEARTH_OK;
    if (!lora) {
        const char *why = hearth_llama_last_error();
        st = hearth_fail(HEARTH_E_LOAD_FAILED, "llama.cpp refused the adapter%s%s",
                         *why ? ": " : "", why);
    } else {
        pthread_mutex_lock(&e->mu);
        adapter_entry *entry = NULL;
        for (int32_t i = 0; i < HEARTH_MAX_ADAPTERS && !entry; i++) {
            entry = e->adapters[i].lora ? NULL : &e->adapters[i];
        }
        if (!entry) {
            st = hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED,
                             "at most %d adapters per model are loaded at once",
                             HEARTH_MAX_ADAPTERS);
        } else {
            *entry = (adapter_entry){.lora = lora, .id = ++e->next_adapter_id};
            *id_out = entry->id;
        }
        pthread_mutex_unlock(&e->mu);
        if (st != HEARTH_OK) {
            llama_adapter_lora_free(lora);
        }
    }
    hearth_step_unlock_outside(e);
    if (f) {
        fclose(f);
    }
    return st;
}

/* e->mu not held; step_mu held (the engine thread between steps, or a
 * caller that waited for the step to end). */
static void collect_retired(hearth_engine *e, bool engine_thread) {
    pthread_mutex_lock(&e->mu);
    if (engine_thread) {
        e->retire_pending = false;
    }
    for (int32_t i = 0; i < HEARTH_MAX_ADAPTERS; i++) {
        adapter_entry *a = &e->adapters[i];
        if (a->lora && a->retired && a->users == 0) {
            if (e->active_adapter == a->id) {
                if (!engine_thread) {
                    continue; /* only the engine thread touches its context */
                }
                llama_set_adapters_lora(e->ctx, NULL, 0, NULL);
                e->active_adapter = 0;
                e->active_scale = 0.0f;
            }
            llama_adapter_lora_free(a->lora);
            *a = (adapter_entry){0};
        }
    }
    pthread_mutex_unlock(&e->mu);
}

hearth_status hearth_engine_adapter_unload(hearth_engine *e, int32_t id) {
    if (!e) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "adapter_unload: NULL engine");
    }
    hearth_step_lock_outside(e);
    pthread_mutex_lock(&e->mu);
    adapter_entry *a = find(e, id);
    hearth_status st = HEARTH_OK;
    if (!a || a->retired) {
        st = hearth_fail(HEARTH_E_NOT_FOUND, "no adapter with id %d is loaded", id);
    } else {
        a->retired = true; /* freed now if unused, else after its last request */
        e->retire_pending = true;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    if (st == HEARTH_OK) {
        collect_retired(e, false);
    }
    hearth_step_unlock_outside(e);
    return st;
}

int32_t hearth_engine_adapter_count(hearth_engine *e) {
    if (!e) {
        return 0;
    }
    int32_t n = 0;
    pthread_mutex_lock(&e->mu);
    for (int32_t i = 0; i < HEARTH_MAX_ADAPTERS; i++) {
        n += e->adapters[i].lora != NULL;
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

hearth_status hearth_adapter_acquire(hearth_engine *e, int32_t id) {
    if (id == 0) {
        return HEARTH_OK;
    }
    adapter_entry *a = find(e, id);
    if (!a || a->retired) {
        return hearth_fail(HEARTH_E_NOT_FOUND, "no adapter with id %d is loaded", id);
    }
    a->users++;
    return HEARTH_OK;
}

void hearth_adapter_release(hearth_engine *e, int32_t id) {
    adapter_entry *a = id ? find(e, id) : NULL;
    if (a && a->users > 0) {
        a->users--;
    }
}

static bool same_group(const hearth_request *r, int32_t adapter, float scale) {
    return r->adapter == adapter && (adapter == 0 || r->adapter_scale == scale);
}

int32_t hearth_adapters_select(hearth_engine *e, int32_t n_plan) {
    collect_retired(e, true);
    if (n_plan == 0) {
        return 0;
    }
    bool active_has_work = false;
    bool others_wait = false;
    for (int32_t i = 0; i < n_plan; i++) {
        bool mine = same_group(e->plan_reqs[i], e->active_adapter, e->active_scale);
        active_has_work |= mine;
        others_wait |= !mine;
    }
    if (!active_has_work || (others_wait && e->steps_in_group >= GROUP_STEPS)) {
        /* The oldest waiting request of another group (decode entries come
         * first in admission order, then prefill). */
        const hearth_request *next = NULL;
        for (int32_t i = 0; i < n_plan && !next; i++) {
            if (!same_group(e->plan_reqs[i], e->active_adapter, e->active_scale)) {
                next = e->plan_reqs[i];
            }
        }
        if (next) {
            adapter_entry *a = NULL;
            pthread_mutex_lock(&e->mu);
            a = next->adapter ? find(e, next->adapter) : NULL;
            struct llama_adapter_lora *lora = a ? a->lora : NULL;
            pthread_mutex_unlock(&e->mu);
            float scale = next->adapter_scale;
            llama_set_adapters_lora(e->ctx, lora ? &lora : NULL, lora ? 1 : 0,
                                    lora ? &scale : NULL);
            e->active_adapter = next->adapter;
            e->active_scale = next->adapter_scale;
            e->steps_in_group = 0;
        }
    }
    int32_t kept = 0;
    for (int32_t i = 0; i < n_plan; i++) {
        if (same_group(e->plan_reqs[i], e->active_adapter, e->active_scale)) {
            e->plan[kept] = e->plan[i];
            e->plan_reqs[kept++] = e->plan_reqs[i];
        }
    }
    e->steps_in_group++;
    return kept;
}

void hearth_adapters_free_all(hearth_engine *e) {
    for (int32_t i = 0; i < HEARTH_MAX_ADAPTERS; i++) {
        if (e->adapters[i].lora) {
            llama_adapter_lora_free(e->adapters[i].lora);
            e->adapters[i] = (adapter_entry){0};
        }
    }
}
