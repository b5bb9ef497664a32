/* Internal declarations shared by the core's translation units. */
#ifndef HEARTH_INTERNAL_H
#define HEARTH_INTERNAL_H

#include "hearth_core.h"
#include "rows.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "llama.h"

/* ---- errors.c: thread-local last error ---- */
hearth_status hearth_fail(hearth_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- clock ---- */
int64_t hearth_now_ns(void);

/* ---- growable buffers ---- */
typedef struct hbytes {
    char *data;
    int32_t len;
    int32_t cap;
} hbytes;

typedef struct htokens {
    int32_t *data;
    int32_t len;
    int32_t cap;
} htokens;

bool hbytes_append(hbytes *b, const char *src, int32_t n);
void hbytes_free(hbytes *b);
bool htokens_append(htokens *t, const int32_t *src, int32_t n);
bool htokens_reserve(htokens *t, int32_t cap);
void htokens_free(htokens *t);

typedef struct hlogprobs {
    hearth_logprob *data;
    int32_t len;
    int32_t cap;
} hlogprobs;

/* Appends one token of sequence `seq` to a batch with room for it. */
void hearth_batch_add(struct llama_batch *b, llama_token tok, llama_pos pos, int32_t seq,
                      bool logits);

bool hlogprobs_append(hlogprobs *l, const hearth_logprob *src, int32_t n);
void hlogprobs_free(hlogprobs *l);

/* ---- rpc.c: the devices of a model's RPC workers (probed first), then the
 * local GPUs; *n_out of them written to devs. ---- */
hearth_status hearth_rpc_model_devices(const char *workers, ggml_backend_dev_t *devs, int32_t cap,
                                       int32_t *n_out);
/* Whether layers can leave the CPU: a local GPU, or RPC workers given. */
bool hearth_offload_possible(const char *workers);

/* ---- log.c: the last error llama.cpp logged on this thread ---- */
const char *hearth_llama_last_error(void);
void hearth_llama_clear_error(void);

/* ---- sampling.c ---- */

/* Where a UTF-8 sequence stands: `need` continuation bytes still to come,
 * the next one in lo..hi. */
typedef struct utf8_state {
    uint8_t need, lo, hi;
} utf8_state;

/* Tokens by what their bytes do to UTF-8 text: 0 complete valid UTF-8,
 * 1 anything else that may still be valid in context (byte tokens, split
 * characters), 2 bytes that never occur in UTF-8.  Built once per engine. */
typedef struct utf8_index {
    uint8_t *cls;
    int32_t *partial;          /* the class-1 tokens */
    int32_t n_partial;
} utf8_index;

/* A grammar-constrained pick that did not fit in one step: the full
 * vocabulary is tested against the grammar in chunks, across engine steps,
 * so one grammar can never hold the other requests of its model. */
typedef struct grammar_job {
    float *logits;               /* copy of the logits row being constrained */
    uint8_t *allowed;            /* per token: grammar and UTF-8 allow it */
    int32_t next;                /* next token to test; -1: no job open */
    int32_t chunk;               /* tokens to test next time (the engine sizes
                                    it to the time the last chunk took) */
} grammar_job;

typedef struct hearth_sampler {
    struct llama_sampler *chain; /* NULL on the greedy fast path */
    struct llama_sampler *grammar; /* NULL without a grammar */
    const struct llama_vocab *vocab;
    utf8_state utf8;             /* of the text generated under the grammar */
    grammar_job job;
    const uint8_t *eog_mask;     /* borrowed from the engine; NULL unless
                                    end-of-generation tokens are banned */
    int32_t n_vocab;
    int32_t penalty_window;      /* tokens the penalties see; < 0: all */
} hearth_sampler;

bool hearth_sampler_init(hearth_sampler *s, const hearth_sampling *cfg,
                         const struct llama_vocab *vocab,
                         const uint8_t *eog_mask, const int32_t *eog_ids,
                         int32_t n_eog, bool ignore_eos);
/* Feeds the prompt's last penalty_window tokens to the penalties. */
void hearth_sampler_prime(hearth_sampler *s, const int32_t *tokens, int32_t n);
/* Picks the next token from logits row idx (requests without a grammar). */
llama_token hearth_sampler_sample(hearth_sampler *s, struct llama_context *ctx, int32_t idx);
/* The greedy choice over a logits row: the largest logit, lowest index on
 * ties (as llama.cpp's greedy sampler), skipping tokens whose ban byte is 1
 * (ban may be NULL); token 0 when every logit is NaN or banned. */
llama_token hearth_greedy_token(const float *logits, int32_t n, const uint8_t *ban);
/* Grammar requests, in two parts whose cost is bounded separately.
 *
 * grammar_first: picks the token the sampler would pick without the
 * grammar and tests only that one token against the grammar (and against
 * UTF-8 validity when `utf8` is given).  If both allow it, it is accepted
 * and returned: the cost is one candidate, not the vocabulary.  Otherwise a
 * job is opened on a copy of the row (*pending = true) and LLAMA_TOKEN_NULL
 * returned; LLAMA_TOKEN_NULL with *pending false means out of memory.
 * For greedy sampling the result equals masking first; for sampled tokens
 * it is llama.cpp's own "sample, then resample under the mask if
 * rejected" order.
 *
 * grammar_step: tests up to n more tokens of an open job.  True once the
 * whole vocabulary is done: *out is then the token picked among those
 * allowed (accepted), or LLAMA_TOKEN_NULL when the grammar allows none.
 * `scratch` holds n_vocab entries (engine-owned). */
llama_token hearth_sampler_grammar_first(hearth_sampler *s, const float *logits,
                                         llama_token_data *scratch, const utf8_index *utf8,
                                         bool *pending);
bool hearth_sampler_grammar_step(hearth_sampler *s, int32_t n, llama_token_data *scratch,
                                 const utf8_index *utf8, llama_token *out);
static inline bool hearth_sampler_grammar_pending(const hearth_sampler *s) {
    return s->grammar && s->job.next >= 0;
}
bool hearth_utf8_index_build(const struct llama_vocab *vocab, utf8_index *ix);
void hearth_utf8_index_free(utf8_index *ix);
hearth_status hearth_sampler_set_grammar(hearth_sampler *s,
                                         const struct llama_vocab *vocab,
                                         const char *gbnf);
/* Log-softmax of a logits row: the chosen token's and the k best. */
void hearth_logprobs_compute(const float *logits, int32_t n_vocab,
                             llama_token chosen, int32_t k, hearth_logprob *out);
void hearth_sampler_free(hearth_sampler *s);
hearth_status hearth_sampling_validate(const hearth_sampling *s);

/* ---- steplog.c: per-step token work for energy accounting (no-ops while
 * the log is off).  Engine thread: begin before packing, stage after
 * llama_decode (the plan's entries), commit under e->mu before the step's
 * finishes are published; finished/work under e->mu. ---- */
struct hearth_engine;
void hearth_steplog_begin(struct hearth_engine *e);
void hearth_steplog_stage(struct hearth_engine *e, int32_t n_plan);
void hearth_steplog_commit(struct hearth_engine *e);
void hearth_steplog_work(struct hearth_engine *e, uint64_t id, int64_t t_start_ns,
                         int32_t n_prefill);
void hearth_steplog_finished(struct hearth_engine *e, uint64_t id);
void hearth_steplog_free(struct hearth_engine *e);

/* ---- signals.c: a request's drift signals (engine thread until it
 * finishes; read by take once finished) ---- */
typedef struct drift_signals {
    bool on;               /* asked for (hearth_request_params.drift_signals) */
    int32_t stride;        /* every stride-th prompt position is scored */
    double nll_sum;        /* negative log-likelihood of the scored positions */
    int32_t nll_n;
    float entropy;         /* first generated token's; NaN until then */
    float *pool;           /* mean input embedding of the prompt, or NULL */
    int32_t n_pool;
} drift_signals;

/* ---- requests ---- */
typedef enum request_kind { REQ_GENERATE = 0, REQ_EMBED = 1 } request_kind;

/* What the engine thread hands over after a step; guarded by the request's
 * mutex because the caller takes it from another thread. */
typedef struct request_output {
    htokens tokens;
    hbytes text;
    hlogprobs logprobs;
    float *embedding;
    int32_t n_embd;
} request_output;

struct hearth_request {
    atomic_int refs;
    atomic_bool cancel;
    uint64_t id;
    request_kind kind;

    /* Immutable after submit. */
    htokens prompt;
    int32_t max_tokens;
    hearth_sampling sampling;
    int64_t deadline_ns;
    bool ignore_eos;
    bool normalize;
    int32_t n_logprobs;    /* -1 none, else top-k (0 = chosen token only) */
    bool speculate;
    int32_t adapter;       /* adapter id, 0 for none (holds a use) */
    float adapter_scale;

    /* Engine-thread state. */
    int32_t slot;
    int32_t n_past;        /* prompt tokens whose KV is in the slot */
    int32_t n_cached;
    int32_t n_generated;
    int32_t batch_index;   /* logits row of the last step, -1 if none */
    llama_token last_token;
    hearth_sampler sampler;
    hearth_textstream *text;
    htokens stage_tokens;  /* produced this step, not yet published */
    hlogprobs stage_logprobs;
    htokens drafts;        /* this step's proposals from the draft model */
    int32_t n_drafted;
    int32_t n_draft_accepted;
    drift_signals drift;
    struct score_job *score; /* score requests (score.c), else NULL */
    hearth_finish_reason pending_finish; /* decided during a step */
    bool finished_engine;  /* engine has finished it (publish pending) */
    hearth_finish_reason finish_reason;
    int32_t stop_index;
    char *error;

    /* Shared with the caller; guarded by mu. */
    pthread_mutex_t mu;
    request_output pending;
    request_output taken;
    bool ready_pending;
    bool finished;
    int32_t slot_public;
    int32_t pub_generated;
    int32_t pub_cached;
    int32_t pub_drafted;
    int32_t pub_draft_accepted;
    int64_t t_submit_ns;
    int64_t t_admit_ns;
    int64_t t_first_token_ns;
    int64_t t_finish_ns;
};

hearth_request *hearth_request_new(request_kind kind, uint64_t id);
void hearth_request_unref(hearth_request *r);
void hearth_request_discard(hearth_request *r);

/* ---- engine (engine.c, engine_loop.c, slots.c, model.c) ---- */
typedef struct slot {
    int32_t id;            /* llama seq_id */
    int32_t adapter;       /* adapter the cached KV was computed under */
    float adapter_scale;
    hearth_request *req;   /* NULL when free */
    htokens cache;         /* tokens whose KV this sequence holds, at
                              positions 0 .. cache.len - 1 */
    uint64_t last_used;
} slot;

/* speculate.c: the draft model of speculative decoding.  Engine thread. */
typedef struct draft_model {
    struct llama_model *model;
    struct llama_context *ctx;
    struct llama_batch batch;
    htokens *cache;        /* per slot: tokens whose KV the draft holds */
    int32_t n_draft;
} draft_model;

#define HEARTH_MAX_ADAPTERS 32

typedef struct adapter_entry {
    struct llama_adapter_lora *lora; /* NULL: free entry */
    int32_t id;
    int32_t users;         /* requests holding it (guarded by e->mu) */
    bool retired;          /* unloaded: no new users; freed at 0 users */
} adapter_entry;

struct hearth_engine {
    hearth_engine_params params;
    /* Held by the engine thread for each step, and by adapter load/free:
     * llama.cpp's model keeps its adapters in a set that graph building
     * reads. */
    pthread_mutex_t step_mu;
    /* Threads other than the engine's waiting for step_mu, and the
     * condition the engine thread waits on until they have had it
     * (hearth_step_lock_outside). */
    atomic_int step_waiters;
    pthread_cond_t step_cv;
    adapter_entry adapters[HEARTH_MAX_ADAPTERS]; /* guarded by mu + step_mu */
    int32_t next_adapter_id;
    int32_t active_adapter;      /* engine thread: what the context applies */
    float active_scale;
    int32_t steps_in_group;
    bool retire_pending;         /* guarded by mu: wake the idle loop to free */
    draft_model *draft;    /* NULL without a draft model */
    struct drift_table *drift_table; /* signals.c: token embeddings, mapped lazily */
    struct drift_step *drift_step;   /* signals.c: this step's prompt rows to score */
    struct step_log *step_log;       /* steplog.c: NULL while off; swapped under
                                        step_mu + mu */
    uint64_t score_step;             /* score.c: the step score_rows_used counts */
    int32_t score_rows_used;
    struct llama_model *model;
    struct llama_context *ctx;
    struct llama_context *embd_ctx; /* created on first embedding request */
    const struct llama_vocab *vocab;
    int32_t n_vocab;
    int32_t n_ctx;
    int32_t n_ctx_slot;
    int32_t n_swa;
    uint64_t kv_bytes;
    uint8_t *eog_mask;
    int32_t *eog_ids;
    int32_t n_eog;

    /* Engine thread only. */
    llama_token_data *candidates; /* n_vocab; grammar sampling scratch */
    utf8_index utf8;              /* built on the first grammar request */
    slot *slots;
    struct llama_batch batch;
    hearth_sched_entry *plan;
    hearth_request **plan_reqs;
    hearth_request **jobs;        /* requests with an open grammar job */
    int32_t n_jobs;
    hearth_request **jobs_done;   /* whose job ended in this step */
    int32_t n_jobs_done;
    uint32_t job_turn;            /* which job starts the next step's round */
    uint64_t use_counter;

    /* Guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool thread_started;
    bool stop;
    bool admission_open;
    hearth_scheduler *sched;
    hearth_request **live;      /* generation requests, queued or running */
    int32_t n_live;
    int32_t cap_live;
    hearth_request **embed_q;   /* embedding requests, FIFO */
    int32_t n_embed_q;
    int32_t cap_embed_q;
    uint64_t next_id;
    hearth_engine_stats stats;
    atomic_llong heartbeat_ns;

    /* Ready list, guarded by ready_mu. */
    pthread_mutex_t ready_mu;
    uint64_t *ready;
    int32_t n_ready;
    int32_t cap_ready;
    int event_fd;
};

void *hearth_engine_main(void *arg);
/* Decides what a new token means for a request (stop, length, text). */
void hearth_engine_accept_token(struct hearth_engine *e, hearth_request *r, llama_token tok,
                                const float *logits);

/* grammar_jobs.c: sampling under a grammar, in bounded pieces.  Engine
 * thread.  hearth_grammar_sample takes the request's logits row of this
 * step: true when it produced a token, false when the request opened a job
 * (it is then in e->jobs) or failed (pending_finish set). */
bool hearth_grammar_sample(struct hearth_engine *e, hearth_request *r);
/* Advances the open jobs within the step's budget; returns the tokens
 * produced, whose requests are in e->jobs_done. */
uint64_t hearth_grammar_run_jobs(struct hearth_engine *e, int64_t decode_ns);
void hearth_engine_publish(struct hearth_engine *e, hearth_request *r);
void hearth_engine_finish(struct hearth_engine *e, hearth_request *r,
                          hearth_finish_reason reason, const char *error);
/* engine.c: takes the adapter's use, queues r for a slot and lists it live;
 * on failure r is discarded.  Shared by generation and score requests. */
hearth_status hearth_engine_enqueue(struct hearth_engine *e, hearth_request *r, int32_t adapter);

/* slots.c: choose a slot for a request and reuse what its KV cache holds. */
int32_t hearth_slots_assign(struct hearth_engine *e, hearth_request *r);
void hearth_slots_release(struct hearth_engine *e, hearth_request *r, bool keep_cache);
int32_t hearth_common_prefix(const int32_t *a, int32_t na, const int32_t *b, int32_t nb);
/* Keeps the first n tokens of r's slot cache (less if llama.cpp cannot cut
 * the sequence there or a sliding window dropped what the next token needs);
 * returns how many it kept. */
int32_t hearth_slots_rewind(struct hearth_engine *e, hearth_request *r, int32_t n);

/* model.c */
hearth_status hearth_model_open(const char *path, int32_t fd, struct llama_model_params mp,
                                struct llama_model **out);
hearth_status hearth_model_load(struct hearth_engine *e);
/* The params' flash_attn setting (-1 auto, 0 off, 1 on) for llama.cpp. */
enum llama_flash_attn_type hearth_flash_attn_type(int32_t setting);
hearth_status hearth_model_create_context(struct hearth_engine *e);
hearth_status hearth_model_embed(struct hearth_engine *e, hearth_request *r);
/* model.c: the pages of a new context's zeroed logits buffer (n_rows rows)
 * back to the kernel, on the CPU only. */
void hearth_release_cleared_logits(const struct hearth_engine *e, struct llama_context *ctx,
                                   int32_t n_gpu_layers, int32_t n_rows);

static inline bool hearth_engine_has_draft(const hearth_engine_params *p) {
    return (p->draft_path && p->draft_path[0]) || p->draft_fd >= 0;
}

/* adapters.c */
/* Takes a use of adapter `id` for a request (e->mu held). */
hearth_status hearth_adapter_acquire(struct hearth_engine *e, int32_t id);
void hearth_adapter_release(struct hearth_engine *e, int32_t id);
/* Engine thread, step_mu held: frees retired adapters nobody uses, then
 * keeps from the plan only the requests of one adapter, taking turns, and
 * sets it on the context.  Returns the new plan length. */
int32_t hearth_adapters_select(struct hearth_engine *e, int32_t n_plan);
void hearth_adapters_free_all(struct hearth_engine *e);

/* speculate.c */
hearth_status hearth_draft_create(struct hearth_engine *e);
void hearth_draft_free(draft_model *d, int32_t n_slots);
/* Fills r->drafts of each request (all decoding, none with a grammar) with
 * at most `room` proposals in all. */
void hearth_draft_propose(struct hearth_engine *e, hearth_request **reqs, int32_t n,
                          int32_t room);

/* signals.c: drift signals (see the file's comment) */
hearth_status hearth_drift_engine_init(struct hearth_engine *e);
void hearth_drift_engine_free(struct hearth_engine *e);
/* At submit, on the caller's thread: pools the prompt's input embeddings. */
void hearth_drift_request_init(struct hearth_engine *e, hearth_request *r, bool on);
void hearth_drift_request_free(hearth_request *r);
/* Engine thread, just after the request got its slot (e->mu held). */
void hearth_drift_admitted(struct hearth_engine *e, hearth_request *r);
/* Engine thread, per step: start the step's list of rows to score; whether
 * the prompt token at `pos` (batch row `batch_row`) needs its logits; score
 * the listed rows once llama_decode has run; the first token's entropy. */
void hearth_drift_step_begin(struct hearth_engine *e);
bool hearth_drift_want_logits(struct hearth_engine *e, hearth_request *r, int32_t pos,
                              int32_t batch_row);
void hearth_drift_score_prompt(struct hearth_engine *e);
void hearth_drift_first_token(struct hearth_engine *e, hearth_request *r);
/* r->mu held: the signals into a finished request's output. */
void hearth_drift_output(const hearth_request *r, hearth_output *out);

/* scheduler.c: a running sequence starts another prompt of n_prompt
 * tokens of which n_remaining still need computing (a score request's next
 * variant, in the same slot). */
hearth_status hearth_sched_restart_prefill(hearth_scheduler *s, uint64_t id, int32_t n_prompt,
                                           int32_t n_remaining);

/* score.c: score requests (see hearth_core.h), engine thread.  The most
 * prompt tokens admission may reuse (the first scored row is computed);
 * packs a prefill chunk, listing the rows that predict target tokens (the
 * chunk is cut short when the step's score rows run out); adds
 * up those rows once decoded; after the step (e->mu held) moves on to the
 * next variant, or marks the request finished. */
int32_t hearth_score_reuse_limit(const hearth_request *r);
void hearth_score_pack(struct hearth_engine *e, hearth_request *r, hearth_sched_entry *ent);
void hearth_score_collect(struct hearth_engine *e, hearth_request *r, const hearth_sched_entry *ent);
void hearth_score_advance(struct hearth_engine *e, hearth_request *r);
void hearth_score_free(hearth_request *r);

/* step_mu for a thread other than the engine's (adapter load and unload,
 * a step log resize).  The engine thread takes step_mu again right after
 * each step, and a mutex is not fair: on a busy machine a waiter could wait
 * for the engine to go idle (a hot swap under load once took as long as the
 * eight streams it ran beside).  The engine thread lets a counted waiter in
 * before its next step. */
void hearth_step_lock_outside(hearth_engine *e);
void hearth_step_unlock_outside(hearth_engine *e);

#endif
