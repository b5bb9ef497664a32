/*
 * hearth_core.h - the C API of Hearth's native engine.
 *
 * This one header is both the contract of libhearth_core and the cffi cdef
 * that the Python package feeds to ffi.cdef() (the text between the CDEF
 * markers, with HEARTH_API removed).  Keep everything between the markers
 * plain C declarations and integer #defines so cffi can parse it.
 *
 * Conventions
 *   - Handles are opaque.  Every *_create has a matching *_free; ownership is
 *     written next to each function.
 *   - Functions that can fail return a hearth_status (0 = HEARTH_OK).  The
 *     message of the last failure on the calling thread is returned by
 *     hearth_last_error(); it stays valid until the next failing call on that
 *     thread.
 *   - Nothing here calls back into the caller.  An engine reports progress by
 *     making its event fd readable; the caller then drains the ready list and
 *     takes each request's output.
 *   - The llama.cpp headers are an implementation detail: no llama type
 *     appears below.
 */
#ifndef HEARTH_CORE_H
#define HEARTH_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define HEARTH_API __declspec(dllexport)
#else
#define HEARTH_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* HEARTH_CDEF_BEGIN */

/* Bumped whenever a struct layout or a signature below changes. */
#define HEARTH_CORE_ABI_VERSION 7

/* Seed value that asks for a random seed. */
#define HEARTH_SEED_RANDOM 4294967295

typedef enum hearth_status {
    HEARTH_OK = 0,
    HEARTH_E_INVALID_ARGUMENT = 1,   /* a caller-supplied value is out of range */
    HEARTH_E_NOT_FOUND = 2,          /* unknown request id, device index, key */
    HEARTH_E_RESOURCE_EXHAUSTED = 3, /* admission queue full, buffer too small */
    HEARTH_E_FAILED_PRECONDITION = 4,/* engine stopping, feature not built in */
    HEARTH_E_LOAD_FAILED = 5,        /* llama.cpp refused the model */
    HEARTH_E_OUT_OF_MEMORY = 6,
    HEARTH_E_INTERNAL = 7            /* llama.cpp or the OS failed unexpectedly */
} hearth_status;

/* Message for the last failing call on this thread; never NULL. */
HEARTH_API const char *hearth_last_error(void);
HEARTH_API int hearth_abi_version(void);
/* "hearth-core <ver> llama.cpp <commit> cuda=<0|1>"; static storage. */
HEARTH_API const char *hearth_build_info(void);

/* ---------------------------------------------------------------- logging */

typedef enum hearth_log_format {
    HEARTH_LOG_TEXT = 0,
    HEARTH_LOG_JSON = 1
} hearth_log_format;

/* Levels follow ggml: 1 debug, 2 info, 3 warn, 4 error.  llama.cpp messages
 * below min_level are dropped; the rest go to stderr in the given format. */
HEARTH_API void hearth_log_configure(int min_level, hearth_log_format format);

/* ---------------------------------------------------------------- devices */

typedef enum hearth_device_type {
    HEARTH_DEVICE_CPU = 0,
    HEARTH_DEVICE_GPU = 1,
    HEARTH_DEVICE_IGPU = 2,
    HEARTH_DEVICE_ACCEL = 3,
    HEARTH_DEVICE_OTHER = 4
} hearth_device_type;

typedef struct hearth_device_info {
    char name[64];
    char description[128];
    hearth_device_type type;
    uint64_t free_bytes;
    uint64_t total_bytes;
} hearth_device_info;

/* Devices registered with ggml (CPU always, GPUs in a CUDA build). */
HEARTH_API int32_t hearth_device_count(void);
HEARTH_API hearth_status hearth_device_get(int32_t index, hearth_device_info *out);

/* ---------------------------------------------------------------- RPC */

/* ggml's RPC backend (llama.cpp's rpc-server protocol): a worker lends its
 * devices to a daemon over TCP.  The protocol has no authentication or
 * encryption: run it over a private, authenticated link only
 * (docs/scale-out.md). */
#define HEARTH_RPC_MAX_DEVICES 16

typedef struct hearth_rpc_worker_info {
    bool reachable;            /* the TCP connection was accepted */
    uint8_t proto_major;       /* the worker's RPC protocol version */
    uint8_t proto_minor;
    uint8_t proto_patch;
    int32_t n_devices;
    uint64_t free_bytes[16];   /* per device, as the worker reports them */
    uint64_t total_bytes[16];
} hearth_rpc_worker_info;

/* Whether the installed llama.cpp was built with the RPC backend. */
HEARTH_API bool hearth_rpc_available(void);

/* Connects to the worker at endpoint "HOST:PORT" (IPv4 or a name), asks
 * its protocol version, devices and their memory, and disconnects; every
 * step waits timeout_ms at most.  HEARTH_E_FAILED_PRECONDITION with a
 * message naming the worker when it is unreachable, silent (a worker serves
 * one client at a time) or speaks another protocol version;
 * *out->reachable tells the first case from the others. */
HEARTH_API hearth_status hearth_rpc_probe(const char *endpoint, int32_t timeout_ms,
                                          hearth_rpc_worker_info *out);

/* Runs ggml's RPC server on endpoint "IPV4:PORT" (bound to exactly that
 * address) with the named ggml device, or every GPU (else the CPU) when
 * device is NULL or "".  Blocks for the life of the process; returns only
 * on failure (bad endpoint, no RPC backend, unknown device, bind or accept
 * failed).  The caller decides which addresses are acceptable. */
HEARTH_API hearth_status hearth_rpc_serve(const char *endpoint, const char *device,
                                          int32_t n_threads);

/* ---------------------------------------------------------------- engine */

typedef struct hearth_engine hearth_engine;
typedef struct hearth_request hearth_request;

typedef struct hearth_engine_params {
    const char *model_path;    /* GGUF path; ignored when model_fd >= 0 */
    int32_t model_fd;          /* fd to load from (e.g. a sealed memfd), or -1;
                                  the engine dups it, the caller keeps its own */
    int32_t n_ctx;             /* total KV cells, shared out across slots */
    int32_t n_parallel;        /* slots: sequences decoded together */
    int32_t n_batch;           /* most tokens in one llama_decode */
    int32_t n_ubatch;          /* physical micro-batch */
    int32_t prefill_chunk;     /* most prompt tokens admitted per step */
    int32_t max_queue;         /* waiting requests beyond the slots */
    int32_t burst_window_us;   /* an idle engine waits this long at most for
                                  the rest of a burst before its first step
                                  (0 = start at once) */
    int32_t grammar_budget_us; /* time for grammar work per step (masking
                                  the vocabulary for grammar requests whose
                                  sampled token the grammar refused); 0:
                                  4 ms, or the step's decode time if longer.
                                  Each open grammar job advances by at least
                                  one chunk per step whatever the budget, so
                                  tests set 1 to spread every job over many
                                  steps */
    int32_t n_threads;         /* decode threads */
    int32_t n_threads_batch;   /* prefill threads */
    int32_t n_gpu_layers;      /* 0 none, -1 all */
    int32_t main_gpu;
    float tensor_split[16];    /* per-device share of layers; all 0 = default */
    int32_t flash_attn;        /* -1 auto, 0 off, 1 on */
    int32_t type_k;            /* ggml_type of the K cache (1 = f16) */
    int32_t type_v;            /* ggml_type of the V cache (1 = f16) */
    bool kv_unified;           /* one KV pool for all slots (default): any mix
                                  of sequences fits one micro-batch and
                                  prefixes are shared by reference; false
                                  gives each slot its own stream */
    bool swa_full;             /* full-size cache for sliding-window layers */
    bool use_mmap;
    bool use_mlock;
    bool enable_embeddings;    /* allow embedding requests */
    bool repack_weights;       /* let ggml repack weights for its faster CPU
                                  kernels (default true).  Those kernels give
                                  a row slightly different results depending
                                  on how many rows share the matmul, so with
                                  a draft, verification batches can flip a
                                  near-tied greedy choice; false keeps the
                                  output bit-identical to decoding alone */
    /* Speculative decoding: a small draft model that shares the target's
     * vocabulary proposes up to n_draft tokens per step, which the target
     * verifies in the same batch.  Every emitted token is still sampled from
     * the target's distribution, so outputs do not change.  A vocabulary
     * mismatch fails create with HEARTH_E_INVALID_ARGUMENT. */
    const char *draft_path;    /* GGUF of the draft model, or NULL */
    int32_t draft_fd;          /* or an fd to load it from (dup'ed), or -1 */
    int32_t n_draft;           /* tokens proposed per step (1..16) */
    int32_t draft_n_gpu_layers;
    /* Drift signals: logits rows per step for scoring prompt positions of
     * requests that ask for drift_signals (0..256, default 0: their prompt
     * NLL is then NaN).  Each row reserves n_vocab floats twice (logits and
     * compute buffer); a prompt has at most drift_rows / n_parallel
     * positions scored (at least 1). */
    int32_t drift_rows;
    /* ggml RPC workers ("HOST:PORT,HOST:PORT", or NULL): their devices come
     * first in the model's device list, then this box's GPUs; n_gpu_layers
     * layers go to that list (tensor_split shares in that order), the rest
     * stay on the local CPU.  Each worker is probed first, so an unreachable
     * one fails create with HEARTH_E_FAILED_PRECONDITION naming it.  Read
     * during hearth_engine_create only. */
    const char *rpc_workers;
    /* Score requests (explanations): logits rows per step they may use
     * beyond one per sequence (0..256, default 16).  Each row reserves
     * n_vocab floats twice, like drift_rows; with 0 a score request scores
     * one target token per step. */
    int32_t score_rows;
} hearth_engine_params;

/* Fill *p with defaults (n_ctx 4096, n_parallel 4, ...). */
HEARTH_API void hearth_engine_params_init(hearth_engine_params *p);

/* Loads the model and starts the engine thread.  On success *out owns the
 * engine; release it with hearth_engine_free. */
HEARTH_API hearth_status hearth_engine_create(const hearth_engine_params *p,
                                              hearth_engine **out);

/* Stops the engine thread, finishes every open request with
 * HEARTH_FINISH_CANCELLED and frees the model.  Requests still held by the
 * caller stay valid until hearth_request_free. NULL is ignored. */
HEARTH_API void hearth_engine_free(hearth_engine *e);

/* Stop admitting new requests (HEARTH_E_FAILED_PRECONDITION on submit);
 * running and queued requests carry on. */
HEARTH_API void hearth_engine_close_admission(hearth_engine *e);

/* Readable whenever hearth_engine_drain_ready has ids to return.  Owned by
 * the engine: do not close it. */
HEARTH_API int hearth_engine_event_fd(const hearth_engine *e);

/* Copies up to cap ids of requests with new output into ids and returns how
 * many were copied.  Resets the event fd once the list is empty. */
HEARTH_API int32_t hearth_engine_drain_ready(hearth_engine *e, uint64_t *ids,
                                             int32_t cap);

typedef struct hearth_model_info {
    char arch[32];
    char description[128];
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_swa;
    uint64_t n_params;
    uint64_t size_bytes;       /* weights */
    uint64_t kv_bytes;         /* KV cache as allocated */
    int32_t n_ctx;             /* total KV cells */
    int32_t n_ctx_slot;        /* most tokens (prompt + output) per request */
    int32_t n_parallel;
    int32_t n_gpu_layers;      /* as requested */
    bool add_bos;
    bool has_encoder;
    bool embeddings_enabled;
} hearth_model_info;

HEARTH_API hearth_status hearth_engine_model_info(const hearth_engine *e,
                                                  hearth_model_info *out);

/* Reads GGUF metadata value `key` as a string.  *n_out receives the full
 * length; HEARTH_E_RESOURCE_EXHAUSTED when cap is too small,
 * HEARTH_E_NOT_FOUND for an absent key. */
HEARTH_API hearth_status hearth_engine_meta(const hearth_engine *e,
                                            const char *key, char *buf,
                                            int32_t cap, int32_t *n_out);

/* Thread-safe; may be called from any thread.  When cap is too small the
 * call returns HEARTH_E_RESOURCE_EXHAUSTED and *n_out is the size needed. */
HEARTH_API hearth_status hearth_engine_tokenize(const hearth_engine *e,
                                                const char *text, int32_t len,
                                                bool add_special,
                                                bool parse_special,
                                                int32_t *tokens, int32_t cap,
                                                int32_t *n_out);
HEARTH_API hearth_status hearth_engine_detokenize(const hearth_engine *e,
                                                  const int32_t *tokens,
                                                  int32_t n, bool render_special,
                                                  char *buf, int32_t cap,
                                                  int32_t *n_out);

/* The bytes of one token as generation emits them (special tokens
 * rendered, a leading space kept); may be part of a UTF-8 character. */
HEARTH_API hearth_status hearth_engine_token_piece(const hearth_engine *e,
                                                   int32_t token, char *buf,
                                                   int32_t cap, int32_t *n_out);

/* Renders a chat with the model's built-in template (or `tmpl` if not NULL)
 * through llama.cpp's template engine.  HEARTH_E_NOT_FOUND when the model
 * has no template, HEARTH_E_INVALID_ARGUMENT when llama.cpp does not know
 * the template (the caller may fall back to a Jinja renderer). */
HEARTH_API hearth_status hearth_engine_apply_chat_template(
    const hearth_engine *e, const char *tmpl, const char *const *roles,
    const char *const *contents, int32_t n_messages, bool add_assistant,
    char *buf, int32_t cap, int32_t *n_out);

/* ---------------------------------------------------------------- adapters
 *
 * LoRA adapters for the engine's model.  llama.cpp applies adapters to a
 * whole context, so the engine runs each step for the requests of one
 * adapter (taking turns between adapters) and never reuses a prefix's KV
 * computed under another adapter.  Loading and unloading wait for the step
 * in progress; requests already running keep the adapter they started with,
 * so a new version can be swapped in under load.
 */

/* Loads an adapter GGUF from fd (read from its start; dup'ed) or path.
 * *id_out is its id (> 0).  HEARTH_E_LOAD_FAILED when llama.cpp refuses it
 * (another architecture, missing tensors). */
HEARTH_API hearth_status hearth_engine_adapter_load(hearth_engine *e, const char *path,
                                                    int32_t fd, int32_t *id_out);
/* New requests can no longer name it; it is freed once the last request
 * using it has finished.  HEARTH_E_NOT_FOUND for an unknown id. */
HEARTH_API hearth_status hearth_engine_adapter_unload(hearth_engine *e, int32_t id);
/* Adapters loaded and not yet freed (retired ones included). */
HEARTH_API int32_t hearth_engine_adapter_count(hearth_engine *e);

typedef struct hearth_sampling {
    float temperature;         /* <= 0 means greedy */
    int32_t top_k;             /* 0 disables */
    float top_p;               /* 1 disables */
    float min_p;               /* 0 disables */
    float repeat_penalty;      /* 1 disables */
    float frequency_penalty;   /* 0 disables */
    float presence_penalty;    /* 0 disables */
    int32_t penalty_last_n;    /* window of the three penalties */
    uint32_t seed;             /* HEARTH_SEED_RANDOM for a random seed */
} hearth_sampling;

HEARTH_API void hearth_sampling_init(hearth_sampling *s);

typedef struct hearth_request_params {
    const int32_t *prompt;     /* copied by submit */
    int32_t n_prompt;
    int32_t max_tokens;        /* 1 .. n_ctx_slot - n_prompt */
    hearth_sampling sampling;
    const char *const *stop;   /* stop strings, copied by submit */
    int32_t n_stop;
    int64_t deadline_ns;       /* CLOCK_MONOTONIC, 0 = none */
    bool ignore_eos;           /* never pick an end-of-generation token */
    const char *grammar;       /* GBNF whose start rule is "root", enforced
                                  by llama.cpp's grammar sampler; NULL or ""
                                  for none.  Not with ignore_eos.  A grammar
                                  llama.cpp rejects fails submit with
                                  HEARTH_E_INVALID_ARGUMENT.  It is compiled
                                  in submit, on the caller's thread: bound
                                  its cost first (runtime/core/gbnf_cost.py
                                  limits its parse stacks and compiled size).
                                  Per token the engine tests the sampler's
                                  own pick against the grammar; only when
                                  the grammar refuses it is the vocabulary
                                  masked, in chunks spread over steps under
                                  a time budget of about one decode per
                                  step, so a grammar never holds the other
                                  requests of the model, and cancel and
                                  deadline take effect at the next step.
                                  Greedy output is what masking first gives;
                                  a sampled token is drawn unconstrained
                                  and redrawn under the mask if refused */
    int32_t logprobs;          /* -1: none; 0: the log-probability of each
                                  generated token; 1..20: also the k most
                                  likely tokens at each position */
    bool speculate;            /* use the engine's draft model, if it has
                                  one (output is unchanged either way) */
    int32_t adapter;           /* a loaded LoRA adapter's id, 0 for none */
    float adapter_scale;       /* its strength (default 1) */
    bool drift_signals;        /* compute the drift signals (hearth_output's
                                  drift_* fields): costs logits rows for a
                                  bounded sample of prompt positions */
} hearth_request_params;

HEARTH_API void hearth_request_params_init(hearth_request_params *p);

/* Queues a generation.  On success *out is owned by the caller (free it with
 * hearth_request_free).  HEARTH_E_RESOURCE_EXHAUSTED when the admission
 * queue is full, HEARTH_E_FAILED_PRECONDITION after close_admission. */
HEARTH_API hearth_status hearth_engine_submit(hearth_engine *e,
                                              const hearth_request_params *p,
                                              hearth_request **out);

/* Queues an embedding of `tokens` (mean-pooled; L2-normalised if asked). */
HEARTH_API hearth_status hearth_engine_submit_embedding(hearth_engine *e,
                                                        const int32_t *tokens,
                                                        int32_t n_tokens,
                                                        bool normalize,
                                                        hearth_request **out);

/* Most alternatives per position in hearth_logprob (the array size below). */
#define HEARTH_MAX_TOP_LOGPROBS 20

/* Log-probabilities of one generated token under the model's distribution
 * (log-softmax of the raw logits: before penalties, temperature, truncation
 * or a grammar), and of the n_top most likely tokens, most likely first. */
typedef struct hearth_logprob {
    int32_t token;
    float logprob;
    int32_t n_top;
    int32_t top_token[20];
    float top_logprob[20];
} hearth_logprob;

typedef enum hearth_finish_reason {
    HEARTH_FINISH_NONE = 0,
    HEARTH_FINISH_STOP = 1,      /* end-of-generation token or stop string */
    HEARTH_FINISH_LENGTH = 2,    /* max_tokens or the slot's context */
    HEARTH_FINISH_CANCELLED = 3,
    HEARTH_FINISH_DEADLINE = 4,
    HEARTH_FINISH_ERROR = 5
} hearth_finish_reason;

typedef struct hearth_output {
    const int32_t *tokens;     /* tokens generated since the last take */
    int32_t n_tokens;
    const char *text;          /* complete UTF-8 text since the last take */
    int32_t n_text;
    const float *embedding;    /* embedding requests, once finished */
    int32_t n_embd;
    const hearth_logprob *logprobs; /* one per token, when asked for */
    int32_t n_logprobs;
    int32_t n_drafted;         /* draft tokens proposed so far (speculation) */
    int32_t n_draft_accepted;  /* of which the target model accepted */
    bool finished;
    hearth_finish_reason finish_reason;
    int32_t stop_index;        /* matched stop string, or -1 */
    const char *error;         /* when finish_reason is ERROR, else NULL */
    int32_t n_prompt;
    int32_t n_cached;          /* prompt tokens reused from the KV cache */
    int32_t n_generated;
    int32_t slot;              /* -1 while queued */
    int64_t t_submit_ns;       /* CLOCK_MONOTONIC */
    int64_t t_admit_ns;        /* 0 while queued */
    int64_t t_first_token_ns;  /* 0 before the first token */
    int64_t t_finish_ns;       /* 0 while running */
    /* Drift signals, once finished, of a request that asked for them: */
    float drift_prompt_nll;    /* mean negative log-likelihood (nats/token)
                                  of the prompt positions scored; NaN if none */
    int32_t drift_nll_positions; /* how many were scored */
    float drift_first_entropy; /* entropy (nats) of the first generated
                                  token's distribution; NaN if none */
    const float *drift_prompt_pool; /* mean of the model's input token
                                  embeddings over the prompt, or NULL; valid
                                  until the request is freed */
    int32_t drift_n_pool;
} hearth_output;

/* Moves the output produced since the last take into *out.  The pointers in
 * *out stay valid until the next take or free of this request. */
HEARTH_API hearth_status hearth_request_take(hearth_request *r,
                                             hearth_output *out);
HEARTH_API uint64_t hearth_request_id(const hearth_request *r);

/* Asks the engine to stop the request; its slot is freed before the next
 * decode step, and the request finishes with HEARTH_FINISH_CANCELLED. */
HEARTH_API void hearth_request_cancel(hearth_request *r);

/* Drops the caller's reference, cancelling the request if it is still
 * running.  NULL is ignored. */
HEARTH_API void hearth_request_free(hearth_request *r);

/* ---------------------------------------------------------------- scoring
 *
 * Occlusion scoring (explanations): the log-probability of a fixed target
 * continuation, teacher-forced (nothing is sampled), under the whole prompt
 * and under the prompt with each of n_spans token spans left out.  One
 * request, one slot, going through the scheduler like a generation: the
 * whole prompt first, then the spans by decreasing start, so each variant
 * keeps the KV of the tokens before its span (the previous variant computed
 * them) and computes only the tokens after it plus the target.  n_spans
 * spans cost at most n_spans + 1 prefills; the engine counts them.
 */

/* Most spans one score request may name. */
#define HEARTH_MAX_SCORE_SPANS 4096

typedef struct hearth_score_params {
    const int32_t *prompt;     /* the whole prompt; copied by submit */
    int32_t n_prompt;
    const int32_t *target;     /* the continuation scored (>= 1 token); copied */
    int32_t n_target;
    const int32_t *spans;      /* 2 * n_spans token offsets into prompt:
                                  [start, end) left out, one variant each;
                                  0 <= start < end <= n_prompt, and a
                                  variant keeps at least one prompt token */
    int32_t n_spans;
    int64_t deadline_ns;       /* CLOCK_MONOTONIC, 0 = none */
    int32_t adapter;           /* a loaded LoRA adapter's id, 0 for none */
    float adapter_scale;
} hearth_score_params;

HEARTH_API void hearth_score_params_init(hearth_score_params *p);

/* Queues a score request; it finishes like a generation (ready list,
 * hearth_request_take: finished, finish_reason STOP, no tokens), then
 * hearth_request_score reads its result.  HEARTH_E_INVALID_ARGUMENT for bad
 * spans or a prompt plus target longer than a slot's context; admission
 * errors as for hearth_engine_submit. */
HEARTH_API hearth_status hearth_engine_submit_score(hearth_engine *e,
                                                    const hearth_score_params *p,
                                                    hearth_request **out);

typedef struct hearth_score_result {
    const double *logprob;     /* n_variants sums of the target's token
                                  log-probabilities: [0] under the whole
                                  prompt, [1 + i] without span i; valid
                                  until the request is freed */
    int32_t n_variants;        /* n_spans + 1 */
    int32_t n_prefills;        /* variants whose tokens were computed, one
                                  prefill each (its chunks count once) */
    int64_t prefill_tokens;    /* tokens computed for the request */
    int64_t reused_tokens;     /* tokens whose KV was reused instead */
} hearth_score_result;

/* The result of a finished score request.  HEARTH_E_INVALID_ARGUMENT for a
 * request that is not one, HEARTH_E_FAILED_PRECONDITION before it finished
 * with HEARTH_FINISH_STOP. */
HEARTH_API hearth_status hearth_request_score(hearth_request *r, hearth_score_result *out);

typedef struct hearth_engine_stats {
    int32_t n_slots;
    int32_t slots_busy;
    int32_t queue_depth;
    int32_t max_queue;
    int64_t kv_cells_total;
    int64_t kv_cells_used;
    uint64_t requests_submitted;
    uint64_t requests_rejected;
    uint64_t requests_finished;
    uint64_t requests_cancelled;
    uint64_t tokens_prompt;      /* prompt tokens computed */
    uint64_t tokens_cached;      /* prompt tokens reused from KV */
    uint64_t tokens_copied;      /* of which copied from another slot's KV */
    uint64_t tokens_generated;
    uint64_t decode_steps;
    uint64_t decode_failures;
    uint64_t decode_ns_total;    /* time inside llama_decode */
    uint64_t grammar_jobs;       /* grammar picks whose sampled token the
                                    grammar refused, so the vocabulary was
                                    tested in chunks over later steps */
    int64_t last_heartbeat_ns;   /* CLOCK_MONOTONIC of the engine loop's
                                    last iteration (watchdog) */
    bool admission_open;
} hearth_engine_stats;

HEARTH_API hearth_status hearth_engine_get_stats(hearth_engine *e,
                                                 hearth_engine_stats *out);

/* ---------------------------------------------------------------- step log
 *
 * For energy accounting: which requests took part in each engine step (one
 * llama_decode) and how many prompt and generated tokens each contributed.
 * Off until enabled; the caller drains it in windows (about a second), never
 * per token.
 */

/* The record is the request's end, not work: it carries no tokens, and
 * t_start_ns = t_end_ns = when the engine finished it (any reason). */
#define HEARTH_STEP_FINISHED 1

typedef struct hearth_step_record {
    uint64_t request_id;       /* hearth_request_id() of the request */
    int64_t t_start_ns;        /* CLOCK_MONOTONIC: the step began (packing) */
    int64_t t_end_ns;          /* its output was published */
    int32_t n_prefill;         /* prompt tokens computed for it in the step
                                  (an embedding request: all of its tokens) */
    int32_t n_decode;          /* tokens decoded for it: its last token plus
                                  any draft proposals verified with it */
    uint32_t flags;            /* HEARTH_STEP_FINISHED */
} hearth_step_record;

/* Keeps the last `capacity` records in a ring (0 turns the log off and frees
 * it; enabling again starts an empty log).  Waits for the step in progress. */
HEARTH_API hearth_status hearth_engine_step_log(hearth_engine *e, int32_t capacity);

/* Moves up to cap records, oldest first, into out and returns how many.
 * *n_lost (may be NULL) receives how many records were overwritten unread
 * since the last drain.  0 when the log is off. */
HEARTH_API int32_t hearth_engine_drain_steps(hearth_engine *e, hearth_step_record *out,
                                             int32_t cap, uint64_t *n_lost);

/* ---------------------------------------------------------------- scheduler
 *
 * The scheduling policy on its own, with no model: a bounded FIFO admission
 * queue, a fixed set of slots, and a per-step token budget that serves every
 * decoding sequence first and gives the rest to prompt prefill, oldest
 * request first, in chunks.  The engine drives one of these; tests drive it
 * directly.
 */

typedef struct hearth_scheduler hearth_scheduler;

typedef struct hearth_sched_config {
    int32_t n_slots;
    int32_t max_queue;          /* waiting requests allowed beyond slots */
    int32_t max_batch_tokens;   /* most tokens per step */
    int32_t prefill_chunk;      /* most prefill tokens per step */
} hearth_sched_config;

typedef enum hearth_sched_action {
    HEARTH_SCHED_DECODE = 1,    /* one token of a generating sequence */
    HEARTH_SCHED_PREFILL = 2    /* n_tokens prompt tokens */
} hearth_sched_action;

typedef struct hearth_sched_entry {
    uint64_t id;
    hearth_sched_action action;
    int32_t n_tokens;
    bool completes_prompt;      /* PREFILL that ends the prompt: sample */
} hearth_sched_entry;

typedef struct hearth_sched_stats {
    int32_t n_waiting;
    int32_t n_running;
    int32_t n_prefilling;
    int32_t n_decoding;
} hearth_sched_stats;

/* Owned by the caller; free with hearth_sched_free. */
HEARTH_API hearth_status hearth_sched_create(const hearth_sched_config *cfg,
                                             hearth_scheduler **out);
HEARTH_API void hearth_sched_free(hearth_scheduler *s);

/* Appends a request to the queue; HEARTH_E_RESOURCE_EXHAUSTED when it is
 * full, HEARTH_E_INVALID_ARGUMENT for a duplicate id or n_prompt < 1. */
HEARTH_API hearth_status hearth_sched_enqueue(hearth_scheduler *s, uint64_t id,
                                              int32_t n_prompt);

/* Moves as many queued requests as there are free slots into the running
 * set, in FIFO order; writes their ids and returns how many. */
HEARTH_API int32_t hearth_sched_admit(hearth_scheduler *s, uint64_t *ids,
                                      int32_t cap);

/* After admission the engine may find a cached prefix: it reports how many
 * prompt tokens still need computing (at least 1). */
HEARTH_API hearth_status hearth_sched_set_prefill(hearth_scheduler *s,
                                                  uint64_t id,
                                                  int32_t n_remaining);

/* Plans one step; writes at most cap entries, returns how many.  Decode
 * entries come first, in admission order; then prefill chunks. */
HEARTH_API int32_t hearth_sched_plan(hearth_scheduler *s,
                                     hearth_sched_entry *out, int32_t cap);

/* Records that the planned step ran: prefill progresses, and a sequence
 * whose prompt is complete starts decoding. */
HEARTH_API hearth_status hearth_sched_commit(hearth_scheduler *s,
                                             const hearth_sched_entry *done,
                                             int32_t n);

/* Removes a queued or running request (finished, cancelled, failed). */
HEARTH_API hearth_status hearth_sched_remove(hearth_scheduler *s, uint64_t id);

HEARTH_API void hearth_sched_get_stats(const hearth_scheduler *s,
                                       hearth_sched_stats *out);

/* ---------------------------------------------------------------- text
 *
 * Turns the byte pieces of generated tokens into text that is safe to send:
 * complete UTF-8 only (a split sequence is held until its last byte comes;
 * invalid bytes become U+FFFD), and stop strings matched across piece
 * boundaries, with any tail that could still become a stop string held back.
 */

typedef struct hearth_textstream hearth_textstream;

HEARTH_API hearth_status hearth_textstream_create(const char *const *stops,
                                                  int32_t n_stops,
                                                  hearth_textstream **out);
HEARTH_API void hearth_textstream_free(hearth_textstream *t);

/* Feeds a piece.  Text that is now safe is appended to the stream's output
 * (read it with hearth_textstream_take).  Returns the index of the stop
 * string that matched, or -1. After a match the stream ignores input. */
HEARTH_API int32_t hearth_textstream_feed(hearth_textstream *t,
                                          const char *piece, int32_t len);

/* End of generation without a stop: releases held text (an unfinished UTF-8
 * sequence becomes U+FFFD). */
HEARTH_API void hearth_textstream_flush(hearth_textstream *t);

/* Returns the text released since the last take; valid until the next call
 * on the stream. */
HEARTH_API const char *hearth_textstream_take(hearth_textstream *t,
                                              int32_t *n_out);

/* HEARTH_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* HEARTH_CORE_H */
