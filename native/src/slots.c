/*
 * Slot choice and prefix reuse.
 *
 * Every slot remembers which tokens its KV cache holds.  A new request goes
 * to the free slot whose cache shares the longest prefix with its prompt, so
 * a follow-up turn or a repeated system prompt is not computed again.  When
 * some other slot (busy or not) holds a clearly longer prefix, that KV is
 * copied into a free slot instead: a metadata update with a unified KV pool,
 * a buffer copy with one stream per slot.  A shared system prompt is thus
 * computed once, not once per slot.
 */
#include "internal.h"

/* With one stream per slot a copy moves the whole stream buffer; below this
 * many tokens recomputing is cheaper. */
#define MIN_COPY_GAIN_STREAMS 32

int32_t hearth_common_prefix(const int32_t *a, int32_t na, const int32_t *b, int32_t nb) {
    int32_t n = na < nb ? na : nb;
    int32_t i = 0;
    while (i < n && a[i] == b[i]) {
        i++;
    }
    return i;
}

/* Whether the first n positions of seq are still usable.  Sliding-window
 * caches drop old positions; the next token needs the last n_swa of them. */
static bool prefix_usable(hearth_engine *e, int32_t seq, int32_t n) {
    if (n <= 0) {
        return true;
    }
    llama_pos pmin = llama_memory_seq_pos_min(llama_get_memory(e->ctx), seq);
    if (pmin <= 0) {
        return true;
    }
    return e->n_swa > 0 && pmin <= n - e->n_swa;
}

static void slot_clear(hearth_engine *e, slot *s) {
    llama_memory_seq_rm(llama_get_memory(e->ctx), s->id, -1, -1);
    s->cache.len = 0;
}

/* Keeps the first n cached tokens of s and drops the rest; returns how many
 * survived (0 if llama.cpp cannot cut the sequence there). */
static int32_t slot_trim(hearth_engine *e, slot *s, int32_t n) {
    if (n >= s->cache.len) {
        return s->cache.len;
    }
    if (n <= 0 || !llama_memory_seq_rm(llama_get_memory(e->ctx), s->id, n, -1)) {
        slot_clear(e, s);
        return 0;
    }
    s->cache.len = n;
    return n;
}

static int32_t lru_free_slot(const hearth_engine *e) {
    int32_t best = -1;
    for (int32_t i = 0; i < e->params.n_parallel; i++) {
        const slot *s = &e->slots[i];
        if (s->req) {
            continue;
        }
        if (best < 0 || s->last_used < e->slots[best].last_used) {
            best = i;
        }
    }
    return best;
}

int32_t hearth_slots_assign(hearth_engine *e, hearth_request *r) {
    const int32_t *prompt = r->prompt.data;
    /* The last prompt token is always computed: its logits give the first
     * generated token (a score request's first scored row, likewise). */
    const int32_t limit = r->score ? hearth_score_reuse_limit(r) : r->prompt.len - 1;
    int32_t own = -1;
    int32_t own_len = -1;
    int32_t src = -1;
    int32_t src_len = 0;
    for (int32_t i = 0; i < e->params.n_parallel; i++) {
        slot *s = &e->slots[i];
        /* KV computed under another adapter is another model's. */
        bool same = s->adapter == r->adapter &&
                    (r->adapter == 0 || s->adapter_scale == r->adapter_scale);
        int32_t l = same ? hearth_common_prefix(s->cache.data, s->cache.len, prompt, limit) : 0;
        if (!s->req && (l > own_len || (l == own_len && s->last_used < e->slots[own].last_used))) {
            own = i;
            own_len = l;
        }
        if (l > src_len) {
            src = i;
            src_len = l;
        }
    }
    if (own < 0) {
        return -1; /* the scheduler admitted more than there are slots */
    }
    int32_t min_gain = e->params.kv_unified ? 1 : MIN_COPY_GAIN_STREAMS;
    int32_t dst = own;
    int32_t reuse;
    llama_memory_t mem = llama_get_memory(e->ctx);
    if (src >= 0 && src != own && src_len >= own_len + min_gain &&
        prefix_usable(e, src, src_len)) {
        dst = lru_free_slot(e);
        slot *d = &e->slots[dst];
        slot *s = &e->slots[src];
        slot_clear(e, d);
        if (e->params.kv_unified) {
            llama_memory_seq_cp(mem, s->id, d->id, 0, src_len);
        } else {
            llama_memory_seq_cp(mem, s->id, d->id, -1, -1);
            llama_memory_seq_rm(mem, d->id, src_len, -1);
        }
        d->cache.len = 0;
        htokens_append(&d->cache, s->cache.data, src_len);
        e->stats.tokens_copied += (uint64_t)src_len;
        reuse = src_len;
    } else {
        slot *d = &e->slots[dst];
        reuse = prefix_usable(e, d->id, own_len) ? slot_trim(e, d, own_len) : 0;
        if (reuse == 0) {
            slot_clear(e, d);
        }
    }
    slot *d = &e->slots[dst];
    d->req = r;
    d->adapter = r->adapter;
    d->adapter_scale = r->adapter_scale;
    r->slot = dst;
    r->n_past = reuse;
    r->n_cached = reuse;
    return dst;
}

int32_t hearth_slots_rewind(hearth_engine *e, hearth_request *r, int32_t n) {
    slot *s = &e->slots[r->slot];
    int32_t kept = prefix_usable(e, s->id, n) ? slot_trim(e, s, n) : 0;
    if (kept == 0) {
        slot_clear(e, s);
    }
    return kept;
}

void hearth_slots_release(hearth_engine *e, hearth_request *r, bool keep_cache) {
    if (r->slot < 0) {
        return;
    }
    slot *s = &e->slots[r->slot];
    s->req = NULL;
    s->last_used = ++e->use_counter;
    if (!keep_cache) {
        slot_clear(e, s);
    }
    r->slot = -1;
}
