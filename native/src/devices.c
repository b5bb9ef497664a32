/* Devices as ggml's backend registry sees them, and build information. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#include "ggml-backend.h"

#ifndef HEARTH_VERSION
#define HEARTH_VERSION "0.0.0"
#endif
#ifndef HEARTH_LLAMA_CPP_PYTHON_VERSION
#define HEARTH_LLAMA_CPP_PYTHON_VERSION "unknown"
#endif
#ifdef HEARTH_WITH_CUDA
#define HEARTH_CUDA_FLAG "1"
#else
#define HEARTH_CUDA_FLAG "0"
#endif

const char *hearth_build_info(void) {
    return "hearth-core " HEARTH_VERSION " llama-cpp-python " HEARTH_LLAMA_CPP_PYTHON_VERSION
           " cuda=" HEARTH_CUDA_FLAG;
}

int32_t hearth_device_count(void) { return (int32_t)ggml_backend_dev_count(); }

hearth_status hearth_device_get(int32_t index, hearth_device_info *out) {
    if (!out || index < 0 || (size_t)index >= ggml_backend_dev_count()) {
        return hearth_fail(HEARTH_E_NOT_FOUND, "no device %d", index);
    }
    ggml_backend_dev_t dev = ggml_backend_dev_get((size_t)index);
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", ggml_backend_dev_name(dev));
    snprintf(out->description, sizeof out->description, "%s", ggml_backend_dev_description(dev));
    switch (ggml_backend_dev_type(dev)) {
    case GGML_BACKEND_DEVICE_TYPE_CPU: out->type = HEARTH_DEVICE_CPU; break;
    case GGML_BACKEND_DEVICE_TYPE_GPU: out->type = HEARTH_DEVICE_GPU; break;
    case GGML_BACKEND_DEVICE_TYPE_IGPU: out->type = HEARTH_DEVICE_IGPU; break;
    case GGML_BACKEND_DEVICE_TYPE_ACCEL: out->type = HEARTH_DEVICE_ACCEL; break;
    default: out->type = HEARTH_DEVICE_OTHER; break;
    }
    size_t free_b = 0, total_b = 0;
    ggml_backend_dev_memory(dev, &free_b, &total_b);
    out->free_bytes = free_b;
    out->total_bytes = total_b;
    return HEARTH_OK;
}
