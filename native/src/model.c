/* Loading the model and its context, and the thread-safe model queries. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static pthread_once_t backend_once = PTHREAD_ONCE_INIT;

static void backend_init(void) { llama_backend_init(); }

static enum llama_load_mode load_mode(const hearth_engine_params *p) {
    if (p->use_mmap && p->use_mlock) return LLAMA_LOAD_MODE_MMAP_MLOCK;
    if (p->use_mmap) return LLAMA_LOAD_MODE_MMAP;
    if (p->use_mlock) return LLAMA_LOAD_MODE_MLOCK;
    return LLAMA_LOAD_MODE_NONE;
}

/* Loads a GGUF from an fd (read from its start; the caller keeps its fd) or
 * a path.  NULL *out with HEARTH_OK: llama.cpp refused the file. */
hearth_status hearth_model_open(const char *path, int32_t fd_in, struct llama_model_params mp,
                                struct llama_model **out) {
    *out = NULL;
    if (fd_in >= 0) {
        int fd = dup(fd_in);
        FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
        if (!f) {
            if (fd >= 0) close(fd);
            return hearth_fail(HEARTH_E_LOAD_FAILED, "cannot open model fd %d", fd_in);
        }
        fseek(f, 0, SEEK_SET);
        *out = llama_model_load_from_file_ptr(f, mp);
        fclose(f);
        return HEARTH_OK;
    }
    if (!path || !path[0]) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "model path is empty");
    }
    *out = llama_model_load_from_file(path, mp);
    return HEARTH_OK;
}

hearth_status hearth_model_load(hearth_engine *e) {
    pthread_once(&backend_once, backend_init);
    const hearth_engine_params *p = &e->params;
    if (p->n_gpu_layers > 0 && !hearth_offload_possible(p->rpc_workers)) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "n_gpu_layers=%d, but the installed llama.cpp has no GPU backend "
                           "(install the CUDA build with `make setup CUDA=1`)",
                           p->n_gpu_layers);
    }
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = llama_supports_gpu_offload() ? p->n_gpu_layers : 0;
    mp.main_gpu = p->main_gpu;
    mp.load_mode = load_mode(p);
    mp.use_extra_bufts = p->repack_weights;
    bool any_split = false;
    for (int i = 0; i < 16; i++) {
        any_split |= p->tensor_split[i] > 0.0f;
    }
    float split[128] = {0};
    if (any_split) {
        size_t n = llama_max_devices();
        for (size_t i = 0; i < n && i < 16 && i < 128; i++) {
            split[i] = p->tensor_split[i];
        }
        mp.tensor_split = split;
    }
    ggml_backend_dev_t devices[HEARTH_RPC_MAX_DEVICES * 2 + 1] = {0};   /* NULL-terminated */
    if (p->rpc_workers && p->rpc_workers[0]) {
        int32_t n_dev = 0;
        hearth_status rst = hearth_rpc_model_devices(p->rpc_workers, devices,
                                                     HEARTH_RPC_MAX_DEVICES * 2, &n_dev);
        if (rst != HEARTH_OK) return rst;
        mp.devices = devices;
    }
    hearth_status st = hearth_model_open(p->model_path, p->model_fd, mp, &e->model);
    if (st != HEARTH_OK) {
        return st;
    }
    if (!e->model) {
        return hearth_fail(HEARTH_E_LOAD_FAILED,
                           "llama.cpp could not load the model (see the log for the reason)");
    }
    e->vocab = llama_model_get_vocab(e->model);
    e->n_vocab = llama_vocab_n_tokens(e->vocab);
    if (llama_model_has_encoder(e->model) && !llama_model_has_decoder(e->model)) {
        return hearth_fail(HEARTH_E_LOAD_FAILED, "encoder-only models cannot generate");
    }
    e->eog_mask = calloc((size_t)e->n_vocab, 1);
    e->eog_ids = malloc(sizeof(int32_t) * 64);
    if (!e->eog_mask || !e->eog_ids) {
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    int32_t cap = 64;
    for (int32_t t = 0; t < e->n_vocab; t++) {
        if (!llama_vocab_is_eog(e->vocab, t)) {
            continue;
        }
        e->eog_mask[t] = 1;
        if (e->n_eog == cap) {
            int32_t *grown = realloc(e->eog_ids, sizeof(int32_t) * (size_t)(cap * 2));
            if (!grown) {
                return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
            }
            e->eog_ids = grown;
            cap *= 2;
        }
        e->eog_ids[e->n_eog++] = t;
    }
    return HEARTH_OK;
}

static int32_t meta_int(const struct llama_model *m, const char *arch, const char *suffix,
                        int32_t fallback) {
    char key[128];
    char val[64];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (llama_model_meta_val_str(m, key, val, sizeof val) <= 0) {
        return fallback;
    }
    return (int32_t)strtol(val, NULL, 10);
}

static size_t cache_type_size(int32_t ggml_type) {
    /* bytes per element of the KV types we allow: f32, f16, q8_0, q4_0 */
    switch (ggml_type) {
    case 0: return 4 * 32;     /* f32, scaled to a 32-block */
    case 1: return 2 * 32;     /* f16 */
    case 8: return 34;         /* q8_0: 32 values in 34 bytes */
    case 2: return 18;         /* q4_0: 32 values in 18 bytes */
    default: return 2 * 32;
    }
}

/* Upper bound of the KV cache size: every layer is counted at full context
 * (sliding-window layers allocate less). */
static uint64_t estimate_kv_bytes(const hearth_engine *e) {
    char arch[32] = "";
    llama_model_meta_val_str(e->model, "general.architecture", arch, sizeof arch);
    int32_t n_embd = llama_model_n_embd(e->model);
    int32_t n_head = llama_model_n_head(e->model);
    int32_t head = n_head > 0 ? n_embd / n_head : 0;
    int32_t k_len = meta_int(e->model, arch, "attention.key_length", head);
    int32_t v_len = meta_int(e->model, arch, "attention.value_length", head);
    uint64_t n_head_kv = (uint64_t)llama_model_n_head_kv(e->model);
    uint64_t per_cell = n_head_kv * ((uint64_t)k_len * cache_type_size(e->params.type_k) +
                                     (uint64_t)v_len * cache_type_size(e->params.type_v)) / 32;
    return per_cell * (uint64_t)llama_model_n_layer(e->model) * (uint64_t)e->n_ctx;
}

enum llama_flash_attn_type hearth_flash_attn_type(int32_t setting) {
    return setting < 0 ? LLAMA_FLASH_ATTN_TYPE_AUTO
           : setting == 0 ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                          : LLAMA_FLASH_ATTN_TYPE_ENABLED;
}

/* llama.cpp zeroes its logits buffer (n_seq_max rows of n_vocab floats:
 * 32 MiB for Gemma 3 at 32 slots) as it creates a context, which makes all
 * of it resident before a single row is used.  Handing those pages back
 * (MADV_DONTNEED on private anonymous memory) leaves them reading as zeros,
 * as llama.cpp left them, and resident only once a step writes its rows.
 * CPU only: with offload the buffer may be pinned host memory a GPU maps. */
void hearth_release_cleared_logits(const hearth_engine *e, struct llama_context *ctx,
                                   int32_t n_gpu_layers, int32_t n_rows) {
    const hearth_engine_params *p = &e->params;
    bool offload = llama_supports_gpu_offload() && n_gpu_layers != 0;
    if (offload || (p->rpc_workers && p->rpc_workers[0]) || n_rows <= 0) return;
    float *logits = llama_get_logits(ctx);
    long page = sysconf(_SC_PAGESIZE);
    if (!logits || page <= 0) return;
    uintptr_t lo = ((uintptr_t)logits + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t hi = ((uintptr_t)logits + (size_t)n_rows * (size_t)e->n_vocab * sizeof(float))
                   & ~((uintptr_t)page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);   /* advice: failure is harmless */
}

hearth_status hearth_model_create_context(hearth_engine *e) {
    const hearth_engine_params *p = &e->params;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)p->n_ctx;
    cp.n_batch = (uint32_t)p->n_batch;
    cp.n_ubatch = (uint32_t)p->n_ubatch;
    cp.n_seq_max = (uint32_t)p->n_parallel;
    cp.n_threads = p->n_threads;
    cp.n_threads_batch = p->n_threads_batch;
    cp.flash_attn_type = hearth_flash_attn_type(p->flash_attn);
    cp.type_k = (enum ggml_type)p->type_k;
    cp.type_v = (enum ggml_type)p->type_v;
    cp.kv_unified = p->kv_unified;
    /* One logits row per sequence and step at most: sizing the output for
     * n_parallel rows instead of n_batch saves a 262k x n_batch float
     * buffer with Gemma's vocabulary. */
    cp.n_outputs_max = (uint32_t)p->n_parallel;
    cp.swa_full = p->swa_full;
    if (hearth_engine_has_draft(p)) {
        /* Verification needs a row for the last token and every proposal.
         * Rejected proposals are cut off the cache's tail after each step,
         * which a sliding-window cache cannot undo once it has dropped the
         * older positions the next step still needs: keep them all. */
        cp.n_outputs_max = (uint32_t)(p->n_parallel * (1 + p->n_draft));
        cp.swa_full = true;
    }
    cp.n_outputs_max += (uint32_t)p->drift_rows; /* signals.c: prompt rows scored */
    cp.n_outputs_max += (uint32_t)p->score_rows; /* score.c: target rows scored */
    cp.no_perf = true;
    cp.embeddings = false;
    e->ctx = llama_init_from_model(e->model, cp);
    if (!e->ctx) {
        return hearth_fail(HEARTH_E_LOAD_FAILED,
                           "llama.cpp could not create a context (n_ctx=%d, n_parallel=%d); "
                           "see the log", p->n_ctx, p->n_parallel);
    }
    hearth_release_cleared_logits(e, e->ctx, p->n_gpu_layers, p->n_parallel);
    e->n_ctx = (int32_t)llama_n_ctx(e->ctx);
    /* With one stream per slot llama.cpp sizes each stream itself; with a
     * unified pool we split it evenly so the slots can never overrun it. */
    e->n_ctx_slot = p->kv_unified ? e->n_ctx / p->n_parallel : (int32_t)llama_n_ctx_seq(e->ctx);
    int32_t n_train = llama_model_n_ctx_train(e->model);
    if (n_train > 0 && e->n_ctx_slot > n_train) {
        e->n_ctx_slot = n_train;
    }
    e->n_swa = cp.swa_full ? 0 : llama_model_n_swa(e->model);
    e->kv_bytes = estimate_kv_bytes(e);
    return HEARTH_OK;
}

/* Runs on the engine thread: one mean-pooled embedding. */
hearth_status hearth_model_embed(hearth_engine *e, hearth_request *r) {
    if (!e->embd_ctx) {
        struct llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t)e->n_ctx_slot;
        cp.n_batch = (uint32_t)e->n_ctx_slot;
        cp.n_ubatch = (uint32_t)e->n_ctx_slot;
        cp.n_seq_max = 1;
        cp.n_threads = e->params.n_threads;
        cp.n_threads_batch = e->params.n_threads_batch;
        cp.embeddings = true;
        cp.pooling_type = LLAMA_POOLING_TYPE_MEAN;
        cp.no_perf = true;
        e->embd_ctx = llama_init_from_model(e->model, cp);
        if (!e->embd_ctx) {
            return hearth_fail(HEARTH_E_INTERNAL, "could not create the embedding context");
        }
    }
    llama_memory_clear(llama_get_memory(e->embd_ctx), true);
    int32_t n = r->prompt.len;
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int32_t i = 0; i < n; i++) {
        b.token[i] = r->prompt.data[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    int32_t rc = llama_decode(e->embd_ctx, b);
    llama_batch_free(b);
    if (rc != 0) {
        return hearth_fail(HEARTH_E_INTERNAL, "llama_decode failed for an embedding (%d)", rc);
    }
    const float *v = llama_get_embeddings_seq(e->embd_ctx, 0);
    if (!v) {
        return hearth_fail(HEARTH_E_INTERNAL, "llama.cpp returned no pooled embedding");
    }
    int32_t d = llama_model_n_embd_out(e->model);
    if (d <= 0) {
        d = llama_model_n_embd(e->model);
    }
    float *out = malloc(sizeof(float) * (size_t)d);
    if (!out) {
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    double norm = 0.0;
    for (int32_t i = 0; i < d; i++) {
        out[i] = v[i];
        norm += (double)v[i] * v[i];
    }
    if (r->normalize && norm > 0.0) {
        float inv = (float)(1.0 / sqrt(norm));
        for (int32_t i = 0; i < d; i++) {
            out[i] *= inv;
        }
    }
    pthread_mutex_lock(&r->mu);
    free(r->pending.embedding);
    r->pending.embedding = out;
    r->pending.n_embd = d;
    pthread_mutex_unlock(&r->mu);
    return HEARTH_OK;
}

hearth_status hearth_engine_model_info(const hearth_engine *e, hearth_model_info *out) {
    if (!e || !out) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "model_info: NULL argument");
    }
    memset(out, 0, sizeof *out);
    llama_model_meta_val_str(e->model, "general.architecture", out->arch, sizeof out->arch);
    llama_model_desc(e->model, out->description, sizeof out->description);
    out->n_vocab = e->n_vocab;
    out->n_ctx_train = llama_model_n_ctx_train(e->model);
    out->n_embd = llama_model_n_embd(e->model);
    out->n_layer = llama_model_n_layer(e->model);
    out->n_head = llama_model_n_head(e->model);
    out->n_head_kv = llama_model_n_head_kv(e->model);
    out->n_swa = llama_model_n_swa(e->model);
    out->n_params = llama_model_n_params(e->model);
    out->size_bytes = llama_model_size(e->model);
    out->kv_bytes = e->kv_bytes;
    out->n_ctx = e->n_ctx;
    out->n_ctx_slot = e->n_ctx_slot;
    out->n_parallel = e->params.n_parallel;
    out->n_gpu_layers = e->params.n_gpu_layers;
    out->add_bos = llama_vocab_get_add_bos(e->vocab);
    out->has_encoder = llama_model_has_encoder(e->model);
    out->embeddings_enabled = e->params.enable_embeddings;
    return HEARTH_OK;
}

hearth_status hearth_engine_meta(const hearth_engine *e, const char *key, char *buf, int32_t cap,
                                 int32_t *n_out) {
    if (!e || !key || !n_out || cap < 0 || (cap > 0 && !buf)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "meta: bad arguments");
    }
    char probe[1];
    int32_t n = llama_model_meta_val_str(e->model, key, cap > 0 ? buf : probe,
                                         cap > 0 ? (size_t)cap : sizeof probe);
    if (n < 0) {
        return hearth_fail(HEARTH_E_NOT_FOUND, "no metadata key %s", key);
    }
    *n_out = n;
    if (n >= cap) {
        return hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED, "buffer too small");
    }
    return HEARTH_OK;
}

hearth_status hearth_engine_tokenize(const hearth_engine *e, const char *text, int32_t len,
                                     bool add_special, bool parse_special, int32_t *tokens,
                                     int32_t cap, int32_t *n_out) {
    if (!e || !text || len < 0 || cap < 0 || !n_out || (cap > 0 && !tokens)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "tokenize: bad arguments");
    }
    int32_t n = llama_tokenize(e->vocab, text, len, tokens, cap, add_special, parse_special);
    if (n == INT32_MIN) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "tokenize: text too long");
    }
    if (n < 0) {
        *n_out = -n;
        return hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED, "tokenize: buffer too small");
    }
    *n_out = n;
    return HEARTH_OK;
}

hearth_status hearth_engine_detokenize(const hearth_engine *e, const int32_t *tokens, int32_t n,
                                       bool render_special, char *buf, int32_t cap,
                                       int32_t *n_out) {
    if (!e || n < 0 || (n > 0 && !tokens) || cap < 0 || !n_out || (cap > 0 && !buf)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "detokenize: bad arguments");
    }
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= e->n_vocab) {
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                               "token id %d at index %d is outside the vocabulary (0..%d)",
                               tokens[i], i, e->n_vocab - 1);
        }
    }
    int32_t m = llama_detokenize(e->vocab, tokens, n, buf, cap, false, render_special);
    if (m < 0) {
        *n_out = -m;
        return hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED, "detokenize: buffer too small");
    }
    *n_out = m;
    return HEARTH_OK;
}

hearth_status hearth_engine_token_piece(const hearth_engine *e, int32_t token, char *buf,
                                       int32_t cap, int32_t *n_out) {
    if (!e || !n_out || cap < 0 || (cap > 0 && !buf)) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "token_piece: bad arguments");
    }
    if (token < 0 || token >= e->n_vocab) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "token id %d is outside the vocabulary (0..%d)", token, e->n_vocab - 1);
    }
    int32_t m = llama_token_to_piece(e->vocab, token, buf, cap, 0, true);
    if (m < 0) {
        *n_out = -m;
        return hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED, "token_piece: buffer too small");
    }
    *n_out = m;
    return HEARTH_OK;
}

hearth_status hearth_engine_apply_chat_template(const hearth_engine *e, const char *tmpl,
                                                const char *const *roles,
                                                const char *const *contents, int32_t n_messages,
                                                bool add_assistant, char *buf, int32_t cap,
                                                int32_t *n_out) {
    if (!e || n_messages < 0 || !n_out || cap < 0 || (cap > 0 && !buf) ||
        (n_messages > 0 && (!roles || !contents))) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "chat template: bad arguments");
    }
    const char *t = tmpl ? tmpl : llama_model_chat_template(e->model, NULL);
    if (!t) {
        return hearth_fail(HEARTH_E_NOT_FOUND, "the model has no chat template");
    }
    llama_chat_message *msgs = calloc((size_t)(n_messages > 0 ? n_messages : 1), sizeof *msgs);
    if (!msgs) {
        return hearth_fail(HEARTH_E_OUT_OF_MEMORY, "out of memory");
    }
    for (int32_t i = 0; i < n_messages; i++) {
        msgs[i].role = roles[i];
        msgs[i].content = contents[i];
    }
    int32_t n = llama_chat_apply_template(t, msgs, (size_t)n_messages, add_assistant, buf, cap);
    free(msgs);
    if (n < 0) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "llama.cpp does not support this chat template");
    }
    *n_out = n;
    if (n > cap) {
        return hearth_fail(HEARTH_E_RESOURCE_EXHAUSTED, "buffer too small");
    }
    return HEARTH_OK;
}
