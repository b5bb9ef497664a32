/*
 * Per-request sampling.
 *
 * Greedy requests without penalties skip llama.cpp's sampler chain: the chain
 * copies the whole vocabulary (262k entries for Gemma) into a candidate
 * array for every token, while an argmax over the logits row is a single
 * pass.  Everything else uses a llama.cpp chain in llama-server's order:
 * penalties, top-k, top-p, min-p, temperature, then a seeded draw.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

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
    s->eog_mask = ignore_eos ? eog_mask : NULL;
    s->n_vocab = llama_vocab_n_tokens(vocab);
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
    for (int32_t i = 0; i < n; i++) {
        llama_sampler_accept(s->chain, tokens[i]);
    }
}

/* Index of the largest logit, lowest index on ties (as llama.cpp's greedy
 * sampler), skipping banned tokens.  The maximum is found first with a
 * reduction the compiler vectorises (Gemma's 262k-entry rows make this the
 * per-token cost that matters), then its first position. */
static llama_token argmax(const float *logits, int32_t n, const uint8_t *ban) {
    float best = -INFINITY;
    if (ban) {
        for (int32_t i = 0; i < n; i++) {
            float v = ban[i] ? -INFINITY : logits[i];
            best = v > best ? v : best;
        }
    } else {
#pragma omp simd reduction(max : best)
        for (int32_t i = 0; i < n; i++) {
            best = logits[i] > best ? logits[i] : best;
        }
    }
    for (int32_t i = 0; i < n; i++) {
        if (logits[i] == best && !(ban && ban[i])) {
            return i;
        }
    }
    return 0; /* every logit NaN or banned */
}

llama_token hearth_sampler_sample(hearth_sampler *s, struct llama_context *ctx, int32_t idx) {
    if (s->chain) {
        return llama_sampler_sample(s->chain, ctx, idx);
    }
    const float *logits = llama_get_logits_ith(ctx, idx);
    if (!logits) {
        return LLAMA_TOKEN_NULL;
    }
    return argmax(logits, s->n_vocab, s->eog_mask);
}

void hearth_sampler_free(hearth_sampler *s) {
    if (s->chain) {
        llama_sampler_free(s->chain);
        s->chain = NULL;
    }
}
