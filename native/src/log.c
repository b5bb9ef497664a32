/*
 * llama.cpp's log output, filtered by level and written as text or JSON
 * lines to stderr.  llama.cpp logs from its own threads, so this never calls
 * into Python; ggml sends a message in pieces (level CONT continues a line),
 * which are joined per thread before writing.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static atomic_int min_level = 3; /* warn */
static atomic_int log_format = HEARTH_LOG_TEXT;
static _Thread_local char line[2048];
static _Thread_local size_t line_len;
static _Thread_local int line_level;
/* The last error-level message llama.cpp logged on this thread, whatever the
 * filter: a failing call (a grammar llama.cpp rejects) reports it to the
 * caller instead of leaving it only in the log. */
static _Thread_local char last_error[512];
static _Thread_local size_t last_error_len;
static _Thread_local bool in_error;

const char *hearth_llama_last_error(void) { return last_error; }

void hearth_llama_clear_error(void) {
    last_error[0] = '\0';
    last_error_len = 0;
}

static void remember_error(const char *text) {
    size_t n = strlen(text);
    if (n > sizeof last_error - 1 - last_error_len) {
        n = sizeof last_error - 1 - last_error_len;
    }
    memcpy(last_error + last_error_len, text, n);
    last_error_len += n;
    while (last_error_len > 0 && (last_error[last_error_len - 1] == '\n' ||
                                  last_error[last_error_len - 1] == ' ')) {
        last_error_len--;
    }
    last_error[last_error_len] = '\0';
}

static const char *level_name(int level) {
    switch (level) {
    case GGML_LOG_LEVEL_DEBUG: return "debug";
    case GGML_LOG_LEVEL_INFO: return "info";
    case GGML_LOG_LEVEL_WARN: return "warning";
    case GGML_LOG_LEVEL_ERROR: return "error";
    default: return "info";
    }
}

static void write_json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

static void emit(void) {
    while (line_len > 0 && (line[line_len - 1] == '\n' || line[line_len - 1] == ' ')) {
        line_len--;
    }
    if (line_len == 0) {
        return;
    }
    if (atomic_load(&log_format) == HEARTH_LOG_JSON) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        flockfile(stderr);
        fprintf(stderr, "{\"ts\": %lld.%03ld, \"level\": \"%s\", \"logger\": \"llama.cpp\", \"msg\": ",
                (long long)ts.tv_sec, ts.tv_nsec / 1000000L, level_name(line_level));
        write_json_string(stderr, line, line_len);
        fputs("}\n", stderr);
        funlockfile(stderr);
    } else {
        fprintf(stderr, "%s llama.cpp: %.*s\n", level_name(line_level), (int)line_len, line);
    }
    line_len = 0;
}

static void on_log(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level != GGML_LOG_LEVEL_CONT) {
        if (line_len > 0) {
            emit();
        }
        line_level = (int)level;
        in_error = level == GGML_LOG_LEVEL_ERROR;
        if (in_error) {
            hearth_llama_clear_error();
        }
    }
    if (in_error) {
        remember_error(text);
    }
    int effective = line_level == GGML_LOG_LEVEL_NONE ? GGML_LOG_LEVEL_INFO : line_level;
    if (effective < atomic_load(&min_level)) {
        line_len = 0;
        return;
    }
    size_t n = strlen(text);
    if (n > sizeof line - 1 - line_len) {
        n = sizeof line - 1 - line_len;
    }
    memcpy(line + line_len, text, n);
    line_len += n;
    if (line_len > 0 && line[line_len - 1] == '\n') {
        emit();
    }
}

void hearth_log_configure(int level, hearth_log_format format) {
    atomic_store(&min_level, level);
    atomic_store(&log_format, (int)format);
    llama_log_set(on_log, NULL);
}
