/*
 * Per-request sampling.
 *
 * Greedy requests without penalties skip llama.cpp's sampler chain: the chain
 * copies the whole vocabulary (262k entries for Gemma) into a candidate
 * array for every token, while an argmax over the logits row is a single
 * pass.  Everything else uses a llama.cpp chain in llama-server's order:
 * penalties, top-k, top-p, min-p, temperature, then a seeded draw.
 *
 * Grammars are the costly case.  llama.cpp tests a candidate against every
 * parse stack the grammar has open, so masking the whole vocabulary costs
 * stacks x vocabulary, which a hostile grammar makes minutes.  So the token
 * the sampler would pick without the grammar is tested first (one
 * candidate); only when the grammar rejects it is the vocabulary tested, in
 * chunks that the engine spreads over steps under a time budget
 * (engine_loop.c).  The number of stacks itself is bounded before a grammar
 * is compiled (runtime/core/gbnf_cost.py).
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void hearth_sampling_init(hearth_sampling *s) {
    s->temperature = 1.0f;
    s->top_k = 0;
    s->top_p = 1.0f;
    s->min_p = 0.0f;
    s->repeat_penalty = 1.0f;
    s->frequency_penalty = 0.0f;
    s->presence_penalty = 0.0f;
    s->penalty_last_n = 64;
    s->seed = HEARTH_SEED_RANDOM;
}

hearth_status hearth_sampling_validate(const hearth_sampling *s) {
    if (!isfinite(s->temperature) || s->temperature < 0.0f) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "temperature must be >= 0, got %g",
                           (double)s->temperature);
    }
    if (s->top_k < 0) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "top_k must be >= 0, got %d", s->top_k);
    }
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "top_p must be in (0, 1], got %g",
                           (double)s->top_p);
    }
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "min_p must be in [0, 1], got %g",
                           (double)s->min_p);
    }
    if (!isfinite(s->repeat_penalty) || s->repeat_penalty <= 0.0f) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "repeat_penalty must be > 0, got %g",
                           (double)s->repeat_penalty);
    }
    if (!isfinite(s->frequency_penalty) || fabsf(s->frequency_penalty) > 2.0f) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "frequency_penalty must be in [-2, 2], got %g",
                           (double)s->frequency_penalty);
    }
    if (!isfinite(s->presence_penalty) || fabsf(s->presence_penalty) > 2.0f) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "presence_penalty must be in [-2, 2], got %g",
                           (double)s->presence_penalty);
    }
    if (s->penalty_last_n < -1) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "penalty_last_n must be >= -1, got %d",
                           s->penalty_last_n);
    }
    return HEARTH_OK;
}

static bool has_penalties(const hearth_sampling *cfg) {
    return cfg->penalty_last_n != 0 &&
           (cfg->repeat_penalty != 1.0f || cfg->frequency_penalty != 0.0f ||
            cfg->presence_penalty != 0.0f);
}

bool hearth_sampler_init(hearth_sampler *s, const hearth_sampling *cfg,
                         const struct llama_vocab *vocab, const uint8_t *eog_mask,
                         const int32_t *eog_ids, int32_t n_eog, bool ignore_eos) {
    s->chain = NULL;
    s->grammar = NULL;
    s->job = (grammar_job){NULL, NULL, -1, 0};
    s->vocab = vocab;
    s->utf8 = (utf8_state){0, 0, 0};
    s->eog_mask = ignore_eos ? eog_mask : NULL;
    s->n_vocab = llama_vocab_n_tokens(vocab);
    s->penalty_window = cfg->penalty_last_n;
    bool greedy = cfg->temperature <= 0.0f;
    if (greedy && !has_penalties(cfg)) {
        return true;
    }
    struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    struct llama_sampler *chain = llama_sampler_chain_init(cp);
    if (!chain) {
        return false;
    }
    if (ignore_eos && n_eog > 0) {
        llama_logit_bias *bias = malloc((size_t)n_eog * sizeof *bias);
        if (!bias) {
            llama_sampler_free(chain);
            return false;
        }
        for (int32_t i = 0; i < n_eog; i++) {
            bias[i].token = eog_ids[i];
            bias[i].bias = -INFINITY;
        }
        llama_sampler_chain_add(chain, llama_sampler_init_logit_bias(s->n_vocab, n_eog, bias));
        free(bias);
    }
    if (has_penalties(cfg)) {
        llama_sampler_chain_add(
            chain, llama_sampler_init_penalties(s->n_vocab, cfg->penalty_last_n,
                                                cfg->repeat_penalty, cfg->frequency_penalty,
                                                cfg->presence_penalty));
    }
    if (greedy) {
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
    } else {
        if (cfg->top_k > 0) {
            llama_sampler_chain_add(chain, llama_sampler_init_top_k(cfg->top_k));
        }
        if (cfg->top_p < 1.0f) {
            llama_sampler_chain_add(chain, llama_sampler_init_top_p(cfg->top_p, 1));
        }
        if (cfg->min_p > 0.0f) {
            llama_sampler_chain_add(chain, llama_sampler_init_min_p(cfg->min_p, 1));
        }
        llama_sampler_chain_add(chain, llama_sampler_init_temp(cfg->temperature));
        llama_sampler_chain_add(chain, llama_sampler_init_dist(cfg->seed));
    }
    s->chain = chain;
    return true;
}

/* Feeds prompt tokens to the penalty window, as llama-server does, so that a
 * repeat penalty also covers what the user wrote. */
void hearth_sampler_prime(hearth_sampler *s, const int32_t *tokens, int32_t n) {
    if (!s->chain) {
        return;
    }
    int32_t window = s->penalty_window;
    for (int32_t i = window >= 0 && n > window ? n - window : 0; i < n; i++) {
        llama_sampler_accept(s->chain, tokens[i]);
    }
}

llama_token hearth_greedy_token(const float *logits, int32_t n, const uint8_t *ban) {
    int32_t at = hearth_row_argmax(logits, n, ban);
    return at < 0 ? 0 : at;
}

hearth_status hearth_sampler_set_grammar(hearth_sampler *s, const struct llama_vocab *vocab,
                                         const char *gbnf) {
    hearth_llama_clear_error();
    s->grammar = llama_sampler_init_grammar(vocab, gbnf, "root");
    if (!s->grammar) {
        const char *why = hearth_llama_last_error();
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "grammar: llama.cpp rejected it%s%s",
                           *why ? ": " : " (not valid GBNF)", why);
    }
    return HEARTH_OK;
}

/* Feeds bytes to a UTF-8 validator (RFC 3629: no overlongs, surrogates or
 * code points past U+10FFFF).  False at the first byte that breaks it. */
static bool utf8_feed(utf8_state *st, const char *bytes, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)bytes[i];
        if (st->need > 0) {
            if (b < st->lo || b > st->hi) {
                return false;
            }
            st->need--;
            st->lo = 0x80;
            st->hi = 0xBF;
            continue;
        }
        st->lo = 0x80;
        st->hi = 0xBF;
        if (b < 0x80) {
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            st->need = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            st->need = 2;
            st->lo = b == 0xE0 ? 0xA0 : 0x80;
            st->hi = b == 0xED ? 0x9F : 0xBF;
        } else if (b >= 0xF0 && b <= 0xF4) {
            st->need = 3;
            st->lo = b == 0xF0 ? 0x90 : 0x80;
            st->hi = b == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
    }
    return true;
}

static int32_t piece_of(const struct llama_vocab *vocab, llama_token t, char *buf, int32_t cap) {
    int32_t n = llama_token_to_piece(vocab, t, buf, cap, 0, false);
    return n < 0 ? -1 : n;
}

bool hearth_utf8_index_build(const struct llama_vocab *vocab, utf8_index *ix) {
    int32_t n_vocab = llama_vocab_n_tokens(vocab);
    ix->cls = calloc((size_t)n_vocab, 1);
    ix->partial = malloc((size_t)n_vocab * sizeof(int32_t));
    ix->n_partial = 0;
    if (!ix->cls || !ix->partial) {
        hearth_utf8_index_free(ix);
        return false;
    }
    char buf[256];
    for (int32_t t = 0; t < n_vocab; t++) {
        int32_t n = piece_of(vocab, t, buf, sizeof buf);
        utf8_state st = {0, 0, 0};
        if (n < 0 || !utf8_feed(&st, buf, n)) {
            /* Invalid from a clean start; with a sequence open it may still
             * be its continuation, so only bytes UTF-8 never uses rule a
             * token out for good. */
            bool never = n < 0;
            for (int32_t i = 0; i < n && !never; i++) {
                uint8_t c = (uint8_t)buf[i];
                never = c == 0xC0 || c == 0xC1 || c >= 0xF5;
            }
            ix->cls[t] = never ? 2 : 1;
        } else {
            ix->cls[t] = st.need > 0 ? 1 : 0;
        }
        if (ix->cls[t] == 1) {
            ix->partial[ix->n_partial++] = t;
        }
    }
    return true;
}

void hearth_utf8_index_free(utf8_index *ix) {
    free(ix->cls);
    free(ix->partial);
    ix->cls = NULL;
    ix->partial = NULL;
    ix->n_partial = 0;
}

/* Whether token t keeps the text valid UTF-8.  llama.cpp's grammar decoder
 * is laxer than UTF-8 (it takes F5..F7 leads and overlong forms), so a
 * constrained JSON string could otherwise hold bytes that show as several
 * U+FFFD and break a maxLength the grammar counted. */
static bool utf8_allows(const hearth_sampler *s, const utf8_index *ix, llama_token t) {
    if (!ix) {
        return true; /* the index could not be built: the grammar still holds */
    }
    if (ix->cls[t] == 2) {
        return false;
    }
    if (ix->cls[t] == 0) {
        /* A complete character: not while a sequence is open. */
        return s->utf8.need == 0;
    }
    char buf[256];
    utf8_state st = s->utf8;
    int32_t n = piece_of(s->vocab, t, buf, sizeof buf);
    return n > 0 && utf8_feed(&st, buf, n);
}

static bool grammar_allows(hearth_sampler *s, const utf8_index *ix, llama_token t) {
    if (t < 0 || t >= s->n_vocab || !utf8_allows(s, ix, t)) {
        return false;
    }
    llama_token_data one = {t, 0.0f, 0.0f};
    llama_token_data_array cur = {&one, 1, -1, false};
    llama_sampler_apply(s->grammar, &cur);
    return one.logit != -INFINITY;
}

/* The token is final: the chain, the grammar and the UTF-8 state move on. */
static void grammar_commit(hearth_sampler *s, llama_token tok) {
    if (s->chain) {
        llama_sampler_accept(s->chain, tok);
    }
    llama_sampler_accept(s->grammar, tok);
    char buf[256];
    int32_t n = piece_of(s->vocab, tok, buf, sizeof buf);
    if (n > 0 && !utf8_feed(&s->utf8, buf, n)) {
        s->utf8 = (utf8_state){0, 0, 0};
    }
}

/* What the sampler picks among `cand` (the chain, or the highest logit,
 * lowest index on ties); LLAMA_TOKEN_NULL when every logit is -inf. */
static llama_token pick(hearth_sampler *s, llama_token_data *cand, int32_t n) {
    bool any = false;
    for (int32_t i = 0; i < n && !any; i++) {
        any = cand[i].logit != -INFINITY;
    }
    if (!any) {
        return LLAMA_TOKEN_NULL; /* accepting anything now would abort llama.cpp */
    }
    if (s->chain) {
        llama_token_data_array cur = {cand, (size_t)n, -1, false};
        llama_sampler_apply(s->chain, &cur);
        if (cur.selected < 0 || (size_t)cur.selected >= cur.size) {
            return LLAMA_TOKEN_NULL;
        }
        return cur.data[cur.selected].id;
    }
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (cand[i].logit > cand[best].logit) {
            best = i;
        }
    }
    return cand[best].id;
}

static void fill_candidates(llama_token_data *cand, const float *logits, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        cand[i].id = i;
        cand[i].logit = logits[i];
        cand[i].p = 0.0f;
    }
}

llama_token hearth_sampler_grammar_first(hearth_sampler *s, const float *logits,
                                         llama_token_data *scratch, const utf8_index *utf8,
                                         bool *pending) {
    *pending = false;
    llama_token tok;
    if (s->chain) {
        fill_candidates(scratch, logits, s->n_vocab);
        tok = pick(s, scratch, s->n_vocab);
    } else {
        tok = hearth_greedy_token(logits, s->n_vocab, NULL);
    }
    if (tok != LLAMA_TOKEN_NULL && grammar_allows(s, utf8, tok)) {
        grammar_commit(s, tok);
        return tok;
    }
    grammar_job *j = &s->job;
    if (!j->logits) {
        j->logits = malloc((size_t)s->n_vocab * sizeof(float));
        j->allowed = malloc((size_t)s->n_vocab);
        if (!j->logits || !j->allowed) {
            free(j->logits);
            free(j->allowed);
            j->logits = NULL;
            j->allowed = NULL;
            return LLAMA_TOKEN_NULL;
        }
    }
    memcpy(j->logits, logits, (size_t)s->n_vocab * sizeof(float));
    j->next = 0;
    *pending = true;
    return LLAMA_TOKEN_NULL;
}

bool hearth_sampler_grammar_step(hearth_sampler *s, int32_t n, llama_token_data *scratch,
                                 const utf8_index *utf8, llama_token *out) {
    grammar_job *j = &s->job;
    int32_t end = n < s->n_vocab - j->next ? j->next + n : s->n_vocab;
    size_t m = 0;
    for (int32_t t = j->next; t < end; t++) {
        j->allowed[t] = 0;
        if (utf8_allows(s, utf8, t)) {
            scratch[m++] = (llama_token_data){t, 0.0f, 0.0f};
        }
    }
    if (m > 0) {
        llama_token_data_array cur = {scratch, m, -1, false};
        llama_sampler_apply(s->grammar, &cur);
        for (size_t i = 0; i < cur.size; i++) {
            if (cur.data[i].logit != -INFINITY) {
                j->allowed[cur.data[i].id] = 1;
            }
        }
    }
    j->next = end;
    if (end < s->n_vocab) {
        return false;
    }
    j->next = -1;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        scratch[i].id = i;
        scratch[i].logit = j->allowed[i] ? j->logits[i] : -INFINITY;
        scratch[i].p = 0.0f;
    }
    *out = pick(s, scratch, s->n_vocab);
    if (*out != LLAMA_TOKEN_NULL) {
        grammar_commit(s, *out);
    }
    return true;
}

llama_token hearth_sampler_sample(hearth_sampler *s, struct llama_context *ctx, int32_t idx) {
    if (s->chain) {
        return llama_sampler_sample(s->chain, ctx, idx);
    }
    const float *logits = llama_get_logits_ith(ctx, idx);
    if (!logits) {
        return LLAMA_TOKEN_NULL;
    }
    return hearth_greedy_token(logits, s->n_vocab, s->eog_mask);
}

void hearth_sampler_free(hearth_sampler *s) {
    if (s->chain) {
        llama_sampler_free(s->chain);
        s->chain = NULL;
    }
    if (s->grammar) {
        llama_sampler_free(s->grammar);
        s->grammar = NULL;
    }
    free(s->job.logits);
    free(s->job.allowed);
    s->job = (grammar_job){NULL, NULL, -1, 0};
}

/* One pass for the maximum (vectorised), one for the partition function,
 * and a k-entry insertion list for the best tokens: k <= 20 keeps the list
 * in cache and the cost close to the two passes. */
void hearth_logprobs_compute(const float *logits, int32_t n_vocab, llama_token chosen, int32_t k,
                             hearth_logprob *out) {
    float mx = hearth_row_max(logits, n_vocab);
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        sum += (double)expf(logits[i] - mx);
    }
    float log_z = mx + (float)log(sum);
    out->token = chosen;
    out->logprob = (chosen >= 0 && chosen < n_vocab) ? logits[chosen] - log_z : -INFINITY;
    if (out->logprob > 0.0f) {
        out->logprob = 0.0f; /* rounding when one token holds all the mass */
    }
    if (k > HEARTH_MAX_TOP_LOGPROBS) {
        k = HEARTH_MAX_TOP_LOGPROBS;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < n_vocab && k > 0; i++) {
        float v = logits[i];
        if (n == k && !(v > logits[out->top_token[n - 1]])) {
            continue;
        }
        int32_t j = n < k ? n++ : k - 1;
        while (j > 0 && v > logits[out->top_token[j - 1]]) {
            out->top_token[j] = out->top_token[j - 1];
            j--;
        }
        out->top_token[j] = i;
    }
    out->n_top = n;
    for (int32_t j = 0; j < n; j++) {
        float lp = logits[out->top_token[j]] - log_z;
        out->top_logprob[j] = lp > 0.0f ? 0.0f : lp;
    }
}
