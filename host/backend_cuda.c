/* CUOPTIM_BACKEND_CUDA: the stages as fused kernels (cuda/kernels.cu) on the caller's stream.
 *
 * Tables are built once (cuoptim_build): one entry per variable, a chunk list, the prologue's
 * constants. A step launches inspect (when needed), prologue, update and finish; the only
 * per-step upload is the gradient table, and only for entries whose pointer or dtype changed since
 * the last step — done by a kernel whose argument carries the new entries, so it is captured by
 * value in a CUDA graph and needs no host synchronization. */
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "internal.h"
#include "launch.h"

/* Makes the optimizer's device current for the duration of a call; restores the caller's. */
typedef struct {
  int previous;
  int changed;
} DeviceGuard;

typedef struct {
  DeviceGuard guard;                /* the caller's device during a step */
  int ever_captured;                /* a graph may rewrite the gradient table: always upload it */
  int capturing;                    /* the step in progress is being captured */
  cudaEvent_t step_done;            /* recorded after each eager step on its stream */
  cuoptimStream_t last_stream;      /* the stream of the last eager step */
  int has_last_stream;
  cuoptimDeviceStep step;           /* device pointers the kernels read */
  cuoptimDeviceVariable *variables; /* device */
  cuoptimDeviceGradient *grads;     /* device */
  cuoptimChunk *chunks;             /* device */
  cuoptimChunkPartial *partials;    /* device */
  cuoptimPrologueParams *prologue;  /* device */
  cuoptimDeviceGradient *uploaded;  /* host: what the device table holds */
  cuoptimGradientBatch *batch;             /* host scratch of the scatter launch */
} CudaBackend;

static CudaBackend *data_of(cuoptimOptimizer_t opt) { return (CudaBackend *)opt->backend_data; }

static cuoptimStatus_t cuda_fail(cudaError_t err, const char *what) {
  (void)cudaGetLastError(); /* clear a non-sticky error so later calls start clean */
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
    return cuoptim_error(CUOPTIM_STATUS_NO_DEVICE, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
  return cuoptim_error(CUOPTIM_STATUS_CUDA_ERROR, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

#define CUDA_CHECK(call, what)              \
  do {                                      \
    cudaError_t err_ = (call);              \
    if (err_ != cudaSuccess) return cuda_fail(err_, what); \
  } while (0)

static cuoptimStatus_t enter_device(cuoptimOptimizer_t opt, DeviceGuard *guard) {
  guard->changed = 0;
  CUDA_CHECK(cudaGetDevice(&guard->previous), "cudaGetDevice");
  if (guard->previous != opt->device) {
    CUDA_CHECK(cudaSetDevice(opt->device), "cudaSetDevice");
    guard->changed = 1;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static void leave_device(const DeviceGuard *guard) {
  if (guard->changed) cudaSetDevice(guard->previous);
}

static cuoptimStatus_t cuda_init(cuoptimOptimizer_t opt) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return cuda_fail(err, "cuoptimCreate: cudaGetDeviceCount");
  if (count == 0) return cuoptim_error(CUOPTIM_STATUS_NO_DEVICE, "cuoptimCreate: no CUDA device");
  if (opt->device >= count)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "cuoptimCreate: device = %d: only %d CUDA devices", opt->device,
                         count);
  CudaBackend *b = calloc(1, sizeof *b);
  if (!b) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimCreate: out of host memory");
  b->batch = malloc(sizeof *b->batch);
  if (!b->batch) {
    free(b);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimCreate: out of host memory");
  }
  DeviceGuard guard;
  cuoptimStatus_t status = enter_device(opt, &guard);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    err = cudaEventCreateWithFlags(&b->step_done, cudaEventDisableTiming);
    leave_device(&guard);
    if (err != cudaSuccess) status = cuda_fail(err, "cuoptimCreate: cudaEventCreate");
  }
  if (status != CUOPTIM_STATUS_SUCCESS) {
    free(b->batch);
    free(b);
    return status;
  }
  opt->backend_data = b;
  return CUOPTIM_STATUS_SUCCESS;
}

static void cuda_free_ptr(void *p) {
  if (p) cudaFree(p);
}

static void free_tables(CudaBackend *b) {
  cuda_free_ptr(b->variables);
  cuda_free_ptr(b->grads);
  cuda_free_ptr(b->chunks);
  cuda_free_ptr(b->partials);
  cuda_free_ptr(b->prologue);
  b->variables = NULL;
  b->grads = NULL;
  b->chunks = NULL;
  b->partials = NULL;
  b->prologue = NULL;
  free(b->uploaded);
  b->uploaded = NULL;
}

static void cuda_release(cuoptimOptimizer_t opt) {
  CudaBackend *b = data_of(opt);
  if (!b) return;
  DeviceGuard guard;
  if (enter_device(opt, &guard) == CUOPTIM_STATUS_SUCCESS) {
    cudaDeviceSynchronize();
    free_tables(b);
    if (b->step_done) cudaEventDestroy(b->step_done);
    leave_device(&guard);
  }
  free(b->uploaded);
  free(b->batch);
  free(b);
  opt->backend_data = NULL;
}

static cuoptimStatus_t cuda_check_pointer(cuoptimOptimizer_t opt, const void *ptr, cuoptimDtype_t dtype,
                                          const char *caller, const char *what) {
  /* Kernels access elements in place: a buffer must be aligned to its element size. */
  if ((uintptr_t)ptr % cuoptim_dtype_size(dtype) != 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: %s = %p is not aligned to its %zu-byte %s elements (the CUDA backend needs "
                         "element-aligned buffers)",
                         caller, what, ptr, cuoptim_dtype_size(dtype), cuoptim_dtype_name(dtype));
  struct cudaPointerAttributes attributes;
  cudaError_t err = cudaPointerGetAttributes(&attributes, ptr);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: %s = %p is not a CUDA device pointer (%s)", caller, what,
                         ptr, cudaGetErrorString(err));
  }
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: %s = %p is host memory: the CUDA backend needs device (or managed) memory", caller, what,
                         ptr);
  if (attributes.type == cudaMemoryTypeDevice && attributes.device != opt->device)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: %s = %p lives on device %d, the optimizer on device %d",
                         caller, what, ptr, attributes.device, opt->device);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_alloc(cuoptimOptimizer_t opt, size_t bytes, void **ptr) {
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cudaError_t err = cudaMalloc(ptr, bytes ? bytes : 256);
  if (err == cudaSuccess) err = cudaMemset(*ptr, 0, bytes ? bytes : 256);
  leave_device(&guard);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate %zu bytes on device %d", bytes,
                         opt->device);
  }
  if (err != cudaSuccess) return cuda_fail(err, "cudaMalloc");
  return CUOPTIM_STATUS_SUCCESS;
}

static void cuda_free(cuoptimOptimizer_t opt, void *ptr) {
  DeviceGuard guard;
  if (enter_device(opt, &guard) != CUOPTIM_STATUS_SUCCESS) return;
  cudaDeviceSynchronize();
  cuda_free_ptr(ptr);
  leave_device(&guard);
}

/* Synchronous copies wait for everything on the device first, so they see finished steps
 * whatever stream the caller used. */
static cuoptimStatus_t copy(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cudaError_t err = cudaDeviceSynchronize();
  if (err == cudaSuccess) err = cudaMemcpy(dst, src, bytes, kind);
  leave_device(&guard);
  if (err != cudaSuccess) return cuda_fail(err, "cudaMemcpy");
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_upload(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes) {
  return copy(opt, dst, src, bytes, cudaMemcpyHostToDevice);
}

static cuoptimStatus_t cuda_download(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes) {
  return copy(opt, dst, src, bytes, cudaMemcpyDeviceToHost);
}

static int64_t chunks_of(size_t count) { return (int64_t)((count + CUOPTIM_CHUNK - 1) / CUOPTIM_CHUNK); }

/* Tables: variables, chunk list, prologue constants; then the build kernel fills the slots. */
static cuoptimStatus_t build_tables(cuoptimOptimizer_t opt, CudaBackend *b) {
  free_tables(b); /* a retry after a failed build starts clean */
  int n = opt->num_variables;
  int64_t total_chunks = 0;
  for (int k = 0; k < n; k++) total_chunks += chunks_of(opt->variables[k].local_count);
  if (total_chunks > INT32_MAX)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "cuoptim: %lld chunks of %d elements: more than a grid holds",
                         (long long)total_chunks, CUOPTIM_CHUNK);

  size_t table_count = n > 0 ? (size_t)n : 1; /* a build with no variable still gets valid tables */
  cuoptimDeviceVariable *variables = calloc(table_count, sizeof *variables);
  cuoptimChunk *chunks = malloc((size_t)(total_chunks ? total_chunks : 1) * sizeof *chunks);
  b->uploaded = calloc(table_count, sizeof *b->uploaded);
  if (!variables || !chunks || !b->uploaded) {
    free(variables);
    free(chunks);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: out of host memory");
  }
  int64_t next = 0;
  for (int k = 0; k < n; k++) {
    const cuoptimVariableRec *v = &opt->variables[k];
    cuoptimDeviceVariable *d = &variables[k];
    d->param = v->local_param;
    d->master = v->master;
    for (int s = 0; s < 3; s++) d->slots[s] = v->slots[s];
    d->average = v->average;
    d->accumulator = v->accumulator;
    d->count = v->local_count;
    d->param_dtype = v->dtype;
    d->use_weight_decay = v->use_weight_decay;
    d->first_chunk = next;
    for (int64_t c = 0; c < chunks_of(v->local_count); c++) {
      chunks[next].variable = k;
      chunks[next].chunk = (int32_t)c;
      next++;
    }
  }
  cudaError_t err = cudaSuccess;
  size_t partial_count = (size_t)(total_chunks ? total_chunks : 1);
  if (err == cudaSuccess) err = cudaMalloc((void **)&b->variables, table_count * sizeof *variables);
  if (err == cudaSuccess) err = cudaMalloc((void **)&b->grads, table_count * sizeof(cuoptimDeviceGradient));
  if (err == cudaSuccess) err = cudaMalloc((void **)&b->chunks, partial_count * sizeof *chunks);
  if (err == cudaSuccess) err = cudaMalloc((void **)&b->partials, partial_count * sizeof(cuoptimChunkPartial));
  if (err == cudaSuccess) err = cudaMalloc((void **)&b->prologue, sizeof(cuoptimPrologueParams));
  if (err == cudaSuccess) err = cudaMemcpy(b->variables, variables, table_count * sizeof *variables, cudaMemcpyHostToDevice);
  if (err == cudaSuccess) err = cudaMemset(b->grads, 0, table_count * sizeof(cuoptimDeviceGradient));
  if (err == cudaSuccess) err = cudaMemcpy(b->chunks, chunks, (size_t)total_chunks * sizeof *chunks, cudaMemcpyHostToDevice);
  if (err == cudaSuccess) err = cudaMemset(b->partials, 0, partial_count * sizeof(cuoptimChunkPartial));
  if (err == cudaSuccess)
    err = cudaMemcpy(b->prologue, &opt->prologue, sizeof(cuoptimPrologueParams), cudaMemcpyHostToDevice);
  free(variables);
  free(chunks);
  if (err != cudaSuccess) return cuda_fail(err, "cuoptim: building the device tables");

  cuoptimDeviceStep *step = &b->step;
  step->variables = b->variables;
  step->grads = b->grads;
  step->chunks = b->chunks;
  step->partials = b->partials;
  step->state = opt->state;
  step->scalars = opt->scalars;
  step->tensors = opt->tensors;
  step->prologue = b->prologue;
  step->num_variables = n;
  step->num_chunks = total_chunks;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_build(cuoptimOptimizer_t opt) {
  CudaBackend *b = data_of(opt);
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cuoptimStatus_t status = build_tables(opt, b);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    /* The masters copy the caller's parameters: wait for whatever stream wrote them. */
    cudaError_t err = cudaDeviceSynchronize();
    if (err == cudaSuccess)
      err = (cudaError_t)cuoptim_launch_build(&b->step, cuoptim_slot_initial_value(&opt->config, 0), NULL);
    if (err == cudaSuccess) err = cudaDeviceSynchronize();
    if (err != cudaSuccess) status = cuda_fail(err, "cuoptim: initialising the optimizer state");
  }
  if (status != CUOPTIM_STATUS_SUCCESS) free_tables(b);
  leave_device(&guard);
  return status;
}

/* Brings the device's gradient table up to date with opt->step_grads: only changed entries, in
 * batches carried by kernel arguments. */
/* What the host mirror holds for an entry whose device value is unknown. */
#define UNKNOWN_GRADIENT ((const void *)1)

static cuoptimStatus_t upload_gradient_table(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  int n = opt->num_variables;
  /* Inside a stream capture the whole table is uploaded (the graph must restore it on every
   * replay, whatever eager steps did in between), and the mirror forgets what the device holds
   * (a replay may change it behind our back). */
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing((cudaStream_t)stream, &capture);
  if (err != cudaSuccess) return cuda_fail(err, "cuoptimApplyGradients: cudaStreamIsCapturing");
  int capturing = capture != cudaStreamCaptureStatusNone;
  b->capturing = capturing;
  if (capturing) b->ever_captured = 1;
  int k = 0;
  while (k < n) {
    const cuoptimStepGradient *g = &opt->step_grads[k];
    if (!b->ever_captured && b->uploaded[k].grad == g->grad &&
        (g->grad == NULL || b->uploaded[k].dtype == (int32_t)g->dtype)) {
      k++;
      continue;
    }
    cuoptimGradientBatch *batch = b->batch;
    batch->first = k;
    batch->count = 0;
    while (k < n && batch->count < CUOPTIM_GRADIENT_BATCH) {
      cuoptimDeviceGradient *e = &batch->entries[batch->count++];
      e->grad = opt->step_grads[k].grad;
      e->dtype = opt->step_grads[k].grad ? (int32_t)opt->step_grads[k].dtype : 0;
      e->reserved = 0;
      b->uploaded[k] = *e;
      if (capturing) b->uploaded[k].grad = UNKNOWN_GRADIENT;
      k++;
    }
    err = (cudaError_t)cuoptim_launch_scatter_gradients(b->grads, batch, stream);
    if (err != cudaSuccess) {
      for (int j = batch->first; j < batch->first + batch->count; j++) b->uploaded[j].grad = UNKNOWN_GRADIENT;
      return cuda_fail(err, "cuoptimApplyGradients: uploading the gradient table");
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_begin_step(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  CUOPTIM_CHECK(enter_device(opt, &b->guard));
  cuoptimStatus_t status = upload_gradient_table(opt, stream);
  /* Steps share the optimizer's device buffers: a step on another stream than the last one waits
   * for it (eager steps; a captured step is ordered by the graph's launch stream). */
  if (status == CUOPTIM_STATUS_SUCCESS && !b->capturing && b->has_last_stream && stream != b->last_stream) {
    cudaError_t err = cudaStreamWaitEvent((cudaStream_t)stream, b->step_done, 0);
    if (err != cudaSuccess) status = cuda_fail(err, "cuoptimApplyGradients: cudaStreamWaitEvent");
  }
  if (status != CUOPTIM_STATUS_SUCCESS) leave_device(&b->guard);
  return status;
}

static void cuda_end_step(cuoptimOptimizer_t opt) { leave_device(&data_of(opt)->guard); }

static cuoptimStatus_t launched(int err, const char *stage) {
  if (err != cudaSuccess) return cuda_fail((cudaError_t)err, stage);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_inspect(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return launched(cuoptim_launch_inspect(&data_of(opt)->step, &opt->prologue.rule, stream),
                  "cuoptimApplyGradients: inspect kernel");
}

static cuoptimStatus_t cuda_prologue(cuoptimOptimizer_t opt, int inspected, cuoptimStream_t stream) {
  return launched(cuoptim_launch_prologue(&data_of(opt)->step, inspected, stream),
                  "cuoptimApplyGradients: prologue kernel");
}

static cuoptimStatus_t cuda_update(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return launched(cuoptim_launch_update(&data_of(opt)->step, &opt->prologue.rule, stream),
                  "cuoptimApplyGradients: update kernel");
}

static cuoptimStatus_t cuda_finish(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  CUOPTIM_CHECK(launched(cuoptim_launch_finish(&b->step, stream), "cuoptimApplyGradients: finish kernel"));
  if (b->capturing) return CUOPTIM_STATUS_SUCCESS;
  cudaError_t err = cudaEventRecord(b->step_done, (cudaStream_t)stream);
  if (err != cudaSuccess) return cuda_fail(err, "cuoptimApplyGradients: cudaEventRecord");
  b->last_stream = stream;
  b->has_last_stream = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_finalize(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cuoptimStatus_t status =
      launched(cuoptim_launch_finalize(&data_of(opt)->step, stream), "cuoptimFinalizeVariableValues: kernel");
  leave_device(&guard);
  return status;
}

static cuoptimStatus_t cuda_synchronize(cuoptimOptimizer_t opt) {
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cudaError_t err = cudaDeviceSynchronize();
  leave_device(&guard);
  if (err != cudaSuccess) return cuda_fail(err, "cuoptimSynchronize");
  return CUOPTIM_STATUS_SUCCESS;
}

/* ---- checkpoint copies: a pinned staging buffer and a stream of their own ----------------------
 * The stream waits for the optimizer's last eager step (step_done) and for nothing else; the
 * scratch buffer is allocated and freed on that stream, so no call here waits for the device. */

static cuoptimStatus_t cuda_transfer_fail(cudaError_t err, const char *what, size_t bytes) {
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: %s: cannot allocate %zu bytes", what, bytes);
  }
  return cuda_fail(err, what);
}

static cuoptimStatus_t cuda_transfer_begin(cuoptimOptimizer_t opt, size_t staging_bytes, size_t scratch_bytes,
                                           cuoptimTransfer *t) {
  memset(t, 0, sizeof *t);
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cudaStream_t stream = NULL;
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (err != cudaSuccess) status = cuda_fail(err, "cuoptim: cudaStreamCreateWithFlags");
  if (status == CUOPTIM_STATUS_SUCCESS) {
    t->backend_data = stream;
    /* An event never recorded (no eager step yet) is complete: nothing to wait for. */
    err = cudaStreamWaitEvent(stream, data_of(opt)->step_done, 0);
    if (err != cudaSuccess) status = cuda_fail(err, "cuoptim: cudaStreamWaitEvent");
  }
  if (status == CUOPTIM_STATUS_SUCCESS) {
    err = cudaMallocHost(&t->staging, staging_bytes);
    if (err != cudaSuccess) {
      t->staging = NULL;
      status = cuda_transfer_fail(err, "cudaMallocHost (checkpoint staging buffer)", staging_bytes);
    }
  }
  if (status == CUOPTIM_STATUS_SUCCESS && scratch_bytes > 0) {
    err = cudaMallocAsync(&t->scratch, scratch_bytes, stream);
    if (err == cudaErrorNotSupported) { /* a device without memory pools */
      (void)cudaGetLastError();
      t->scratch_synchronous = 1;
      err = cudaMalloc(&t->scratch, scratch_bytes);
    }
    if (err != cudaSuccess) {
      t->scratch = NULL;
      status = cuda_transfer_fail(err, "cudaMallocAsync (checkpoint scratch copy)", scratch_bytes);
    }
  }
  leave_device(&guard);
  return status;
}

static cuoptimStatus_t cuda_transfer_copy(cuoptimOptimizer_t opt, cuoptimTransfer *t, void *dst, const void *src,
                                          size_t bytes, cuoptimCopyKind kind) {
  enum cudaMemcpyKind direction = kind == CUOPTIM_COPY_TO_HOST      ? cudaMemcpyDeviceToHost
                                  : kind == CUOPTIM_COPY_TO_BACKEND ? cudaMemcpyHostToDevice
                                                                    : cudaMemcpyDeviceToDevice;
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cudaError_t err = cudaMemcpyAsync(dst, src, bytes, direction, (cudaStream_t)t->backend_data);
  leave_device(&guard);
  if (err != cudaSuccess) return cuda_fail(err, "cuoptim: cudaMemcpyAsync (checkpoint)");
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_transfer_wait(cuoptimOptimizer_t opt, cuoptimTransfer *t) {
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cudaError_t err = cudaStreamSynchronize((cudaStream_t)t->backend_data);
  leave_device(&guard);
  if (err != cudaSuccess) return cuda_fail(err, "cuoptim: cudaStreamSynchronize (checkpoint)");
  return CUOPTIM_STATUS_SUCCESS;
}

static void cuda_transfer_end(cuoptimOptimizer_t opt, cuoptimTransfer *t) {
  DeviceGuard guard;
  if (enter_device(opt, &guard) == CUOPTIM_STATUS_SUCCESS) {
    cudaStream_t stream = (cudaStream_t)t->backend_data;
    if (t->scratch && t->scratch_synchronous) cudaFree(t->scratch);
    else if (t->scratch) cudaFreeAsync(t->scratch, stream);
    if (stream) {
      cudaStreamSynchronize(stream); /* the staging buffer may still be a copy's source */
      cudaStreamDestroy(stream);
    }
    if (t->staging) cudaFreeHost(t->staging);
    (void)cudaGetLastError();
    leave_device(&guard);
  }
  memset(t, 0, sizeof *t);
}

static const cuoptimBackendOps cuda_backend = {
    .name = "cuda",
    .init = cuda_init,
    .release = cuda_release,
    .check_pointer = cuda_check_pointer,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .build = cuda_build,
    .begin_step = cuda_begin_step,
    .end_step = cuda_end_step,
    .inspect = cuda_inspect,
    .prologue = cuda_prologue,
    .update = cuda_update,
    .finish = cuda_finish,
    .finalize = cuda_finalize,
    .synchronize = cuda_synchronize,
    .transfer_begin = cuda_transfer_begin,
    .transfer_copy = cuda_transfer_copy,
    .transfer_wait = cuda_transfer_wait,
    .transfer_end = cuda_transfer_end,
};

const cuoptimBackendOps *const cuoptim_cuda_backend = &cuda_backend;
