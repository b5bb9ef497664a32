/*
 * ggml's RPC backend: a worker's server, a probe that never aborts, and the
 * remote devices of a model.
 *
 * ggml's RPC client aborts the whole process when a worker cannot be
 * reached or answers badly, so nothing here lets it connect to a worker
 * that has not just answered our own probe: a short HELLO / DEVICE_COUNT /
 * GET_DEVICE_MEMORY exchange over a fresh socket with timeouts.  The wire
 * format (little-endian): request = command byte, u64 payload size, payload;
 * response = u64 payload size, payload.  The RPC functions are looked up in
 * ggml's backend registry ("RPC"), so the core loads, and reports the lack
 * plainly, against a llama.cpp built without GGML_RPC.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "ggml-backend.h"
#include "ggml-rpc.h"

enum { CMD_GET_DEVICE_MEMORY = 11, CMD_HELLO = 14, CMD_DEVICE_COUNT = 15 };
enum { HELLO_CAPS = 24 };   /* transport capability bytes; zero = plain TCP */

typedef ggml_backend_reg_t (*rpc_add_server_fn)(const char *endpoint);
typedef void (*rpc_start_server_fn)(const char *endpoint, const char *cache_dir, size_t n_threads,
                                    size_t n_devices, ggml_backend_dev_t *devices);

static void *rpc_proc(const char *name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    return reg ? ggml_backend_reg_get_proc_address(reg, name) : NULL;
}

bool hearth_rpc_available(void) {
    return rpc_proc("ggml_backend_rpc_add_server") != NULL;
}

/* Splits "HOST:PORT" (ggml's endpoint syntax: IPv4 or a name, one colon). */
static hearth_status split_endpoint(const char *endpoint, char *host, size_t host_len,
                                    char *port, size_t port_len) {
    const char *colon = endpoint ? strchr(endpoint, ':') : NULL;
    if (!colon || colon == endpoint || strchr(colon + 1, ':') || !colon[1] ||
        (size_t)(colon - endpoint) >= host_len || strlen(colon + 1) >= port_len) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                           "RPC worker %s: expected HOST:PORT (IPv4 or a host name)",
                           endpoint ? endpoint : "(null)");
    }
    for (const char *c = colon + 1; *c; c++) {
        if (*c < '0' || *c > '9') {
            return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "RPC worker %s: bad port", endpoint);
        }
    }
    memcpy(host, endpoint, (size_t)(colon - endpoint));
    host[colon - endpoint] = '\0';
    snprintf(port, port_len, "%s", colon + 1);
    return HEARTH_OK;
}

static int connect_within(const char *endpoint, int32_t timeout_ms) {
    char host[256], port[16];
    if (split_endpoint(endpoint, host, sizeof host, port, sizeof port) != HEARTH_OK) {
        return -2;
    }
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res) {
        hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                    "RPC worker %s: cannot resolve %s to an IPv4 address", endpoint, host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = fd < 0 ? -1 : connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (fd >= 0 && rc < 0 && errno == EINPROGRESS) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t len = sizeof err;
        if (poll(&pfd, 1, timeout_ms) == 1 &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
            rc = 0;
        } else {
            errno = err ? err : ETIMEDOUT;
        }
    }
    if (rc < 0) {
        int saved = errno;
        if (fd >= 0) close(fd);
        hearth_fail(HEARTH_E_FAILED_PRECONDITION, "RPC worker %s is not reachable: %s",
                    endpoint, strerror(saved));
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static bool io_all(int fd, void *buf, size_t n, bool writing) {
    char *p = buf;
    while (n > 0) {
        ssize_t k = writing ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* One command and its fixed-size answer. */
static bool exchange(int fd, uint8_t cmd, const void *in, uint64_t in_size, void *out,
                     uint64_t out_size) {
    uint64_t got = 0;
    return io_all(fd, &cmd, 1, true) && io_all(fd, &in_size, sizeof in_size, true) &&
           (in_size == 0 || io_all(fd, (void *)in, in_size, true)) &&
           io_all(fd, &got, sizeof got, false) && got == out_size &&
           io_all(fd, out, out_size, false);
}

static hearth_status probe_fd(int fd, const char *endpoint, hearth_rpc_worker_info *out) {
    uint8_t caps[HELLO_CAPS] = {0};
    uint8_t hello[4 + HELLO_CAPS];
    if (!exchange(fd, CMD_HELLO, caps, sizeof caps, hello, sizeof hello)) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "RPC worker %s accepted the connection but did not answer HELLO "
                           "(not a ggml RPC server, another protocol version, or busy with "
                           "another client: it serves one at a time)", endpoint);
    }
    out->proto_major = hello[0];
    out->proto_minor = hello[1];
    out->proto_patch = hello[2];
    if (hello[0] != RPC_PROTO_MAJOR_VERSION || hello[1] > RPC_PROTO_MINOR_VERSION) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "RPC worker %s speaks protocol %u.%u.%u; this build needs %d.x "
                           "(at most %d.%d): install the same Hearth release on both ends",
                           endpoint, hello[0], hello[1], hello[2], RPC_PROTO_MAJOR_VERSION,
                           RPC_PROTO_MAJOR_VERSION, RPC_PROTO_MINOR_VERSION);
    }
    uint32_t count = 0;
    if (!exchange(fd, CMD_DEVICE_COUNT, NULL, 0, &count, sizeof count)) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "RPC worker %s did not say how many devices it has", endpoint);
    }
    if (count == 0 || count > HEARTH_RPC_MAX_DEVICES) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "RPC worker %s offers %u devices (1..%d supported)", endpoint, count,
                           HEARTH_RPC_MAX_DEVICES);
    }
    out->n_devices = (int32_t)count;
    for (uint32_t d = 0; d < count; d++) {
        uint64_t mem[2];
        if (!exchange(fd, CMD_GET_DEVICE_MEMORY, &d, sizeof d, mem, sizeof mem)) {
            return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                               "RPC worker %s did not report the memory of device %u",
                               endpoint, d);
        }
        out->free_bytes[d] = mem[0];
        out->total_bytes[d] = mem[1];
    }
    return HEARTH_OK;
}

hearth_status hearth_rpc_probe(const char *endpoint, int32_t timeout_ms,
                               hearth_rpc_worker_info *out) {
    if (!out || timeout_ms < 1) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "hearth_rpc_probe: bad arguments");
    }
    memset(out, 0, sizeof *out);
    int fd = connect_within(endpoint, timeout_ms);
    if (fd == -2) return HEARTH_E_INVALID_ARGUMENT;
    if (fd < 0) return HEARTH_E_FAILED_PRECONDITION;
    out->reachable = true;
    hearth_status st = probe_fd(fd, endpoint, out);
    close(fd);
    return st;
}

hearth_status hearth_rpc_serve(const char *endpoint, const char *device, int32_t n_threads) {
    char host[256], port[16];
    hearth_status st = split_endpoint(endpoint, host, sizeof host, port, sizeof port);
    if (st != HEARTH_OK) return st;
    if (!hearth_rpc_available()) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "the installed llama.cpp has no RPC backend (build llama-cpp-python "
                           "with GGML_RPC=ON)");
    }
    ggml_backend_dev_t devs[HEARTH_RPC_MAX_DEVICES];
    size_t n = 0;
    if (device && device[0]) {
        devs[n] = ggml_backend_dev_by_name(device);
        if (!devs[n]) return hearth_fail(HEARTH_E_NOT_FOUND, "no device named %s", device);
        n++;
    } else {   /* every GPU, else the CPU */
        for (size_t i = 0; i < ggml_backend_dev_count() && n < HEARTH_RPC_MAX_DEVICES; i++) {
            ggml_backend_dev_t d = ggml_backend_dev_get(i);
            enum ggml_backend_dev_type t = ggml_backend_dev_type(d);
            if (t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU) {
                devs[n++] = d;
            }
        }
        if (n == 0) devs[n++] = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    }
    rpc_start_server_fn start = (rpc_start_server_fn)rpc_proc("ggml_backend_rpc_start_server");
    if (!start) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION, "ggml's RPC server is not exported");
    }
    /* No cache directory: ggml would write received tensors to the worker's disk. */
    start(endpoint, NULL, (size_t)(n_threads > 0 ? n_threads : 1), n, devs);
    return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                       "RPC server on %s stopped: it could not bind or accept (see above)",
                       endpoint);
}

bool hearth_offload_possible(const char *workers) {
    if (workers && workers[0]) return true;
    /* llama_supports_gpu_offload() is true in any RPC build, GPU or not */
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        enum ggml_backend_dev_type t = ggml_backend_dev_type(ggml_backend_dev_get(i));
        if (t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU) return true;
    }
    return false;
}

/* Workers this process has registered: ggml keeps one connection per
 * worker and reuses it. */
static pthread_mutex_t known_lock = PTHREAD_MUTEX_INITIALIZER;
static char known[HEARTH_RPC_MAX_DEVICES][256];
static int n_known;

static bool seen_before(const char *endpoint, bool add) {
    pthread_mutex_lock(&known_lock);
    bool found = false;
    for (int i = 0; i < n_known && !found; i++) found = strcmp(known[i], endpoint) == 0;
    if (!found && add && n_known < HEARTH_RPC_MAX_DEVICES) {
        snprintf(known[n_known++], sizeof known[0], "%s", endpoint);
    }
    pthread_mutex_unlock(&known_lock);
    return found;
}

hearth_status hearth_rpc_model_devices(const char *workers, ggml_backend_dev_t *devs, int32_t cap,
                                       int32_t *n_out) {
    *n_out = 0;
    if (!hearth_rpc_available()) {
        return hearth_fail(HEARTH_E_FAILED_PRECONDITION,
                           "rpc_workers: the installed llama.cpp has no RPC backend "
                           "(build llama-cpp-python with GGML_RPC=ON)");
    }
    rpc_add_server_fn add = (rpc_add_server_fn)rpc_proc("ggml_backend_rpc_add_server");
    char list[1024];
    if (snprintf(list, sizeof list, "%s", workers) >= (int)sizeof list) {
        return hearth_fail(HEARTH_E_INVALID_ARGUMENT, "rpc_workers: list too long");
    }
    int32_t n = 0;
    char *save = NULL;
    for (char *w = strtok_r(list, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        /* A worker this process already uses accepts a second connection
         * but answers nothing until ggml's connection closes: from it,
         * silence is expected; unreachable is not. */
        bool seen = seen_before(w, false);
        hearth_rpc_worker_info info;
        hearth_status st = hearth_rpc_probe(w, seen ? 1000 : 5000, &info);
        if (st != HEARTH_OK && !(seen && info.reachable)) {
            return st;                           /* the message names the worker */
        }
        ggml_backend_reg_t reg = add(w);
        if (!reg) {
            return hearth_fail(HEARTH_E_FAILED_PRECONDITION, "RPC worker %s offers no device", w);
        }
        seen_before(w, true);
        for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); i++) {
            if (n >= cap) {
                return hearth_fail(HEARTH_E_INVALID_ARGUMENT,
                                   "rpc_workers: more than %d devices in all", cap);
            }
            devs[n++] = ggml_backend_reg_dev_get(reg, i);
        }
    }
    /* Then this box's own GPUs, as llama.cpp's default selection would take
     * them (the CPU holds whatever n_gpu_layers leaves). */
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        enum ggml_backend_dev_type t = ggml_backend_dev_type(d);
        bool remote = strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(d)), "RPC") == 0;
        if ((t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU) && !remote) {
            if (n >= cap) break;
            devs[n++] = d;
        }
    }
    *n_out = n;
    return HEARTH_OK;
}
