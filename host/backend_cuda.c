/* CUOPTIM_BACKEND_CUDA: the stages as fused kernels (cuda/kernels.cu) on the caller's stream.
 *
 * Tables are built once (cuoptim_build): one entry per variable, a chunk list, the prologue's
 * constants. A step launches inspect (when needed), prologue (which also advances the state: no
 * finish stage) and update; the only
 * per-step upload is the gradient table, and only for entries whose pointer or dtype changed since
 * the last step — done by a kernel whose argument carries the new entries, so it needs no host
 * synchronization. A captured step reads a gradient table of its own instead (CaptureTable),
 * written once when the step is captured: its replays upload nothing, and eager steps keep theirs.
 *
 * Waits: never for the whole device, only for the optimizer's own work. The optimizer owns a
 * non-blocking stream (`own`) for its copies, allocations and frees (stream-ordered where the
 * device has memory pools). After each piece of eager work it enqueues on a caller's stream (each
 * stage of a step, the build kernel, finalize) it records an event, a mark. Work on another stream
 * waits for the newest mark on the GPU; a host wait (state reads and writes, scalar queries,
 * cuoptimSynchronize, destroy) makes `own` wait for the newest mark and the latest graph replay,
 * then waits for `own`; cuoptimSynchronizeTimeout polls the marks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "internal.h"
#include "launch.h"

/* Makes the optimizer's device current for the duration of a call; restores the caller's. */
typedef struct {
  int previous;
  int changed;
} DeviceGuard;

/* A piece of eager work the optimizer enqueued on a caller's stream, and the event recorded after
 * it there. */
typedef struct {
  const char *what; /* a stage of a step ("update"), or what else it is */
  uint64_t step;    /* the eager step it belongs to (1 for the first), 0 for work outside a step */
  cudaEvent_t event;
} WorkMark;

/* The marks of the eager work not yet seen complete, oldest first: a ring of `capacity` slots
 * holding `count` marks from `first`; every slot has its event. All eager work forms one chain
 * (work on a stream waits for the newest mark when that mark is on another stream), so marks
 * complete in order: the oldest incomplete one names the work in flight. */
typedef struct {
  WorkMark *slots;
  int capacity, first, count;
} WorkMarks;

/* The gradient table that a captured step reads instead of the eager one: written once, on the
 * optimizer's stream, while the step is captured; the graph waits for that write through an
 * external event node, so its replays carry no upload, and the eager table stays what eager steps
 * wrote. Captures with the same entries share one. Kept until the tables go (cuoptimDestroy), since
 * a graph may replay until then: 16 bytes per variable for each distinct set of gradient pointers
 * captured. */
typedef struct CaptureTable {
  cuoptimDeviceGradient *device;
  cuoptimDeviceGradient *image; /* host: what `device` holds (num_variables entries) */
  cudaEvent_t written;          /* recorded on the optimizer's stream after the write */
  struct CaptureTable *next;
} CaptureTable;

typedef struct {
  DeviceGuard guard;                /* the caller's device during a step */
  cudaStream_t own;                 /* the optimizer's stream: its copies, allocations and frees */
  int stream_ordered_memory;        /* cudaMallocAsync/cudaFreeAsync on `own`; else cudaMalloc/cudaFree */
  int ever_captured;                /* a graph may replay: wait for replay_done */
  int replays_write_table;          /* a graph scatters into `grads` (its capture had no table of
                                       its own): eager steps upload every entry */
  int capturing;                    /* the step in progress is being captured */
  WorkMarks marks;
  cuoptimStream_t last_stream;      /* the stream of the newest mark */
  cudaEvent_t replay_done;          /* recorded by every replay of a captured step */
  uint64_t steps;                   /* eager steps begun */
  cuoptimDeviceStep step;           /* device pointers the kernels read */
  cuoptimDeviceVariable *variables; /* device */
  cuoptimDeviceGradient *grads;     /* device */
  cuoptimChunk *chunks;             /* device */
  cuoptimWorkItem *items;           /* device: the fixed update instances' blocks */
  cuoptimAdafactorItem *af_items;   /* device: Adafactor's moments stage blocks (NULL for other kinds) */
  float *af_row_means;              /* device: Adafactor's per-batch mean(r) of every factored variable */
  cuoptimChunkPartial *partials;    /* device */
  cuoptimPrologueParams *prologue;  /* device */
  uint32_t *chunks_done;            /* device, per variable (the inspect, Lamb and Adafactor counts) */
  cuoptimDeviceGradient *uploaded;  /* host: what the device table holds */
  int any_half_variable;            /* some variable has half parameters (and a float32 master) */
  cuoptimGradientBatch *batch;      /* host scratch of the scatter launch */
  int batch_pending;                /* *batch is this step's last table upload, for the prologue */
  CaptureTable *capture_tables;     /* written by captures, newest first */
  CaptureTable *spare;              /* allocated, not written: the next capture's (a capture cannot
                                       allocate); NULL when memory was short */
  struct CudaMuon *muon;            /* Muon's matrices and cuBLAS (NULL for the other kinds) */
} CudaBackend;

static void free_muon(CudaBackend *b);

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

/* ---- events: what the optimizer waits for ------------------------------------------------------ */

/* cudaEventQuery's "not yet": no error, but cleared in case the runtime kept it as the last one. */
static cudaError_t query_event(cudaEvent_t event) {
  cudaError_t err = cudaEventQuery(event);
  if (err == cudaErrorNotReady && cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
  return err;
}

static WorkMark *mark_at(WorkMarks *m, int i) { return &m->slots[(m->first + i) % m->capacity]; }

static cuoptimStatus_t create_events(WorkMark *slots, int count) {
  for (int i = 0; i < count; i++)
    CUDA_CHECK(cudaEventCreateWithFlags(&slots[i].event, cudaEventDisableTiming), "cuoptim: cudaEventCreate");
  return CUOPTIM_STATUS_SUCCESS;
}

static void destroy_events(WorkMarks *m) {
  for (int i = 0; m->slots && i < m->capacity; i++)
    if (m->slots[i].event) cudaEventDestroy(m->slots[i].event);
  free(m->slots);
  memset(m, 0, sizeof *m);
}

/* Forgets the marks that have completed: the oldest ones, found by bisection (marks complete in
 * order), a few queries when the ring is full. */
static void forget_completed(WorkMarks *m) {
  int low = 0, high = m->count;
  while (low < high) {
    int middle = low + (high - low) / 2;
    if (query_event(mark_at(m, middle)->event) == cudaSuccess)
      low = middle + 1;
    else
      high = middle;
  }
  m->first = (m->first + low) % m->capacity;
  m->count -= low;
}

/* Marks to start with: some twenty steps of three stages before the oldest are looked at again. */
#define FIRST_MARK_CAPACITY 64

/* Twice the slots, the marks kept in order at the start. */
static cuoptimStatus_t grow_marks(WorkMarks *m) {
  int capacity = m->capacity ? m->capacity * 2 : FIRST_MARK_CAPACITY;
  WorkMark *slots = calloc((size_t)capacity, sizeof *slots);
  if (!slots) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: out of host memory");
  for (int i = 0; i < m->capacity; i++) slots[i] = *mark_at(m, i);
  cuoptimStatus_t status = create_events(slots + m->capacity, capacity - m->capacity);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    for (int i = m->capacity; i < capacity; i++)
      if (slots[i].event) cudaEventDestroy(slots[i].event);
    free(slots);
    return status;
  }
  free(m->slots);
  m->slots = slots;
  m->first = 0;
  m->capacity = capacity;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Records a mark after the work just enqueued on `stream`. */
static cuoptimStatus_t record_mark(CudaBackend *b, const char *what, uint64_t step, cuoptimStream_t stream,
                                   const char *caller) {
  WorkMarks *m = &b->marks;
  if (m->count == m->capacity) forget_completed(m);
  if (m->count == m->capacity) CUOPTIM_CHECK(grow_marks(m));
  WorkMark *mark = mark_at(m, m->count);
  cudaError_t err = cudaEventRecord(mark->event, (cudaStream_t)stream);
  if (err != cudaSuccess) return cuda_fail(err, caller);
  mark->what = what;
  mark->step = step;
  m->count++;
  b->last_stream = stream;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Orders the next work on `stream` after the optimizer's work on other streams: the newest mark
 * (the chain holds the rest) and the latest replay of a captured step. A GPU-side wait: the host
 * goes on. cudaStreamPerThread names another stream in each thread: it always waits. */
static cuoptimStatus_t wait_for_optimizer_work(CudaBackend *b, cudaStream_t stream, const char *caller) {
  int same_stream = (cuoptimStream_t)stream == b->last_stream && stream != cudaStreamPerThread;
  if (b->marks.count > 0 && !same_stream) {
    cudaError_t err = cudaStreamWaitEvent(stream, mark_at(&b->marks, b->marks.count - 1)->event, 0);
    if (err != cudaSuccess) return cuda_fail(err, caller);
  }
  if (b->ever_captured) {
    cudaError_t err = cudaStreamWaitEvent(stream, b->replay_done, 0);
    if (err != cudaSuccess) return cuda_fail(err, caller);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The host waits for the optimizer's stream, made to wait for the optimizer's work before the
 * work just enqueued on it: every mark has then completed. */
static cuoptimStatus_t wait_for_own_stream(CudaBackend *b, const char *caller) {
  cudaError_t err = cudaStreamSynchronize(b->own);
  if (err != cudaSuccess) return cuda_fail(err, caller);
  b->marks.count = 0;
  return CUOPTIM_STATUS_SUCCESS;
}

/* Waits on the host until everything the optimizer enqueued has completed, and for nothing else. */
static cuoptimStatus_t settle(CudaBackend *b, const char *caller) {
  CUOPTIM_CHECK(wait_for_optimizer_work(b, b->own, caller));
  return wait_for_own_stream(b, caller);
}

/* ---- memory: stream-ordered on the optimizer's stream where the device allows ------------------ */

static cudaError_t device_malloc(CudaBackend *b, void **ptr, size_t bytes) {
  return b->stream_ordered_memory ? cudaMallocAsync(ptr, bytes, b->own) : cudaMalloc(ptr, bytes);
}

static void device_free(CudaBackend *b, void *ptr) {
  if (!ptr) return;
  if (b->stream_ordered_memory)
    cudaFreeAsync(ptr, b->own);
  else
    cudaFree(ptr);
}

static cuoptimStatus_t create_backend(cuoptimOptimizer_t opt, CudaBackend *b) {
  CUDA_CHECK(cudaStreamCreateWithFlags(&b->own, cudaStreamNonBlocking), "cuoptimCreate: cudaStreamCreateWithFlags");
  CUDA_CHECK(cudaEventCreateWithFlags(&b->replay_done, cudaEventDisableTiming), "cuoptimCreate: cudaEventCreate");
  int pools = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, opt->device),
             "cuoptimCreate: cudaDeviceGetAttribute");
  b->stream_ordered_memory = pools != 0;
  return grow_marks(&b->marks);
}

static void destroy_backend(CudaBackend *b) {
  destroy_events(&b->marks);
  if (b->replay_done) cudaEventDestroy(b->replay_done);
  if (b->own) cudaStreamDestroy(b->own);
  free(b->uploaded);
  free(b->batch);
  free(b);
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
    status = create_backend(opt, b);
    if (status != CUOPTIM_STATUS_SUCCESS) destroy_backend(b);
    leave_device(&guard);
  } else {
    destroy_backend(b);
  }
  if (status != CUOPTIM_STATUS_SUCCESS) return status;
  opt->backend_data = b;
  return CUOPTIM_STATUS_SUCCESS;
}

static void free_capture_table(CudaBackend *b, CaptureTable *t) {
  if (!t) return;
  device_free(b, t->device);
  if (t->written) cudaEventDestroy(t->written);
  free(t->image);
  free(t);
}

/* A table for a later capture, or NULL when host or device memory is short (that capture then
 * scatters into the eager table from its graph, as a fallback). */
static CaptureTable *new_capture_table(CudaBackend *b, int num_variables) {
  size_t count = num_variables > 0 ? (size_t)num_variables : 1;
  CaptureTable *t = calloc(1, sizeof *t);
  if (t) t->image = calloc(count, sizeof *t->image);
  if (!t || !t->image || device_malloc(b, (void **)&t->device, count * sizeof *t->device) != cudaSuccess ||
      cudaEventCreateWithFlags(&t->written, cudaEventDisableTiming) != cudaSuccess) {
    (void)cudaGetLastError(); /* a shortage here is not the step's error */
    free_capture_table(b, t);
    return NULL;
  }
  return t;
}

static void free_capture_tables(CudaBackend *b) {
  while (b->capture_tables) {
    CaptureTable *next = b->capture_tables->next;
    free_capture_table(b, b->capture_tables);
    b->capture_tables = next;
  }
  free_capture_table(b, b->spare);
  b->spare = NULL;
}

static void free_tables(CudaBackend *b) {
  free_capture_tables(b);
  free_muon(b);
  device_free(b, b->variables);
  device_free(b, b->grads);
  device_free(b, b->chunks);
  device_free(b, b->items);
  b->items = NULL;
  device_free(b, b->af_items);
  b->af_items = NULL;
  device_free(b, b->af_row_means);
  b->af_row_means = NULL;
  device_free(b, b->partials);
  device_free(b, b->prologue);
  device_free(b, b->chunks_done);
  b->chunks_done = NULL;
  b->variables = NULL;
  b->grads = NULL;
  b->chunks = NULL;
  b->partials = NULL;
  b->prologue = NULL;
  free(b->uploaded);
  b->uploaded = NULL;
}

/* The frees are ordered after the optimizer's work on its stream; the host then waits for that
 * stream, so the optimizer's work has completed when cuoptimDestroy returns. */
static cuoptimStatus_t cuda_release(cuoptimOptimizer_t opt) {
  CudaBackend *b = data_of(opt);
  if (!b) return CUOPTIM_STATUS_SUCCESS;
  DeviceGuard guard;
  cuoptimStatus_t status = enter_device(opt, &guard);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    status = wait_for_optimizer_work(b, b->own, "cuoptimDestroy");
    free_tables(b);
    cudaError_t err = cudaStreamSynchronize(b->own);
    if (err != cudaSuccess && status == CUOPTIM_STATUS_SUCCESS) status = cuda_fail(err, "cuoptimDestroy");
    destroy_backend(b);
    leave_device(&guard);
  } else {
    free(b->uploaded);
    free(b->batch);
    free(b);
  }
  opt->backend_data = NULL;
  return status;
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

/* Zeroed memory, ready for any stream when this returns: allocated and cleared on the optimizer's
 * stream, which the host then waits for (it holds nothing else). */
static cuoptimStatus_t cuda_alloc(cuoptimOptimizer_t opt, size_t bytes, void **ptr) {
  CudaBackend *b = data_of(opt);
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  size_t size = bytes ? bytes : 256;
  *ptr = NULL;
  cudaError_t err = device_malloc(b, ptr, size);
  if (err == cudaSuccess) err = cudaMemsetAsync(*ptr, 0, size, b->own);
  if (err == cudaSuccess) err = cudaStreamSynchronize(b->own);
  if (err != cudaSuccess && *ptr) {
    device_free(b, *ptr);
    *ptr = NULL;
  }
  leave_device(&guard);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: cannot allocate %zu bytes on device %d", bytes,
                         opt->device);
  }
  if (err != cudaSuccess) return cuda_fail(err, "cuoptim: allocating device memory");
  return CUOPTIM_STATUS_SUCCESS;
}

/* Freed once the optimizer's work is done with it, without a host wait. */
static void cuda_free(cuoptimOptimizer_t opt, void *ptr) {
  CudaBackend *b = data_of(opt);
  DeviceGuard guard;
  if (enter_device(opt, &guard) != CUOPTIM_STATUS_SUCCESS) return;
  if (wait_for_optimizer_work(b, b->own, "cuoptim: freeing device memory") == CUOPTIM_STATUS_SUCCESS)
    device_free(b, ptr);
  leave_device(&guard);
}

/* A copy on the optimizer's stream after the optimizer's work, waited for: it sees every step and
 * finalize enqueued before, and the next step sees what it wrote. It waits for no other work. */
static cuoptimStatus_t copy(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
  CudaBackend *b = data_of(opt);
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  const char *what = kind == cudaMemcpyHostToDevice ? "cuoptim: writing the optimizer state"
                                                    : "cuoptim: reading the optimizer state";
  cuoptimStatus_t status = wait_for_optimizer_work(b, b->own, what);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    cudaError_t err = cudaMemcpyAsync(dst, src, bytes, kind, b->own);
    status = err == cudaSuccess ? wait_for_own_stream(b, what) : cuda_fail(err, what);
  }
  leave_device(&guard);
  return status;
}

static cuoptimStatus_t cuda_upload(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes) {
  return copy(opt, dst, src, bytes, cudaMemcpyHostToDevice);
}

static cuoptimStatus_t cuda_download(cuoptimOptimizer_t opt, void *dst, const void *src, size_t bytes) {
  return copy(opt, dst, src, bytes, cudaMemcpyDeviceToHost);
}

static int64_t chunks_of(size_t count) { return (int64_t)((count + CUOPTIM_CHUNK - 1) / CUOPTIM_CHUNK); }

static int64_t blocks_of(uint64_t lines) { return (int64_t)((lines + CUOPTIM_BLOCK - 1) / CUOPTIM_BLOCK); }

/* The batches of a factored Adafactor variable: the matrices of its last two dimensions. */
static size_t adafactor_batches(const cuoptimVariableRec *v) {
  return v->local_count / (size_t)(v->dims[v->rank - 2] * v->dims[v->rank - 1]);
}

/* Adafactor's moments stage blocks of variable v (table NULL: only counted): its rows, then its
 * columns (rank >= 2), or its chunks (a full velocity). Returns the count. */
static int64_t adafactor_items(const cuoptimVariableRec *v, int32_t k, cuoptimAdafactorItem *table) {
  int64_t n = 0;
  if (v->rank < 2) {
    for (int64_t c = 0; c < chunks_of(v->local_count); c++, n++)
      if (table) table[n] = (cuoptimAdafactorItem){k, CUOPTIM_AF_FULL, c * CUOPTIM_CHUNK};
    return n;
  }
  for (int axis = CUOPTIM_AF_ROWS; axis <= CUOPTIM_AF_COLUMNS; axis++) {
    uint64_t lines = cuoptim_factored_count(v, axis);
    for (int64_t j = 0; j < blocks_of(lines); j++, n++)
      if (table) table[n] = (cuoptimAdafactorItem){k, axis, j * CUOPTIM_BLOCK};
  }
  return n;
}

/* Tables: variables, chunk list, prologue constants; then the build kernel fills the slots. */
static cuoptimStatus_t build_tables(cuoptimOptimizer_t opt, CudaBackend *b) {
  free_tables(b); /* a retry after a failed build starts clean */
  b->any_half_variable = 0;
  int n = opt->num_variables;
  int64_t total_chunks = 0;
  for (int k = 0; k < n; k++) total_chunks += chunks_of(opt->variables[k].local_count);
  if (total_chunks > INT32_MAX)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "cuoptim: %lld chunks of %d elements: more than a grid holds",
                         (long long)total_chunks, CUOPTIM_CHUNK);

  const int adafactor = opt->config.kind == CUOPTIM_ADAFACTOR;
  int64_t num_af_items = 0;
  for (int k = 0; adafactor && k < n; k++) num_af_items += adafactor_items(&opt->variables[k], k, NULL);
  if (num_af_items > INT32_MAX)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                         "cuoptim: %lld blocks of Adafactor's row and column means: more than a grid holds",
                         (long long)num_af_items);

  /* Each factored variable's batches of mean(r), in one device buffer the variables' table points
   * into (so allocated first). */
  size_t row_means = 0;
  for (int k = 0; adafactor && k < n; k++)
    if (opt->variables[k].rank >= 2) row_means += adafactor_batches(&opt->variables[k]);
  if (row_means > 0) {
    cudaError_t err = device_malloc(b, (void **)&b->af_row_means, row_means * sizeof(float));
    if (err != cudaSuccess) return cuda_fail(err, "cuoptim: allocating Adafactor's row means");
  }

  size_t table_count = n > 0 ? (size_t)n : 1; /* a build with no variable still gets valid tables */
  cuoptimDeviceVariable *variables = calloc(table_count, sizeof *variables);
  cuoptimChunk *chunks = malloc((size_t)(total_chunks ? total_chunks : 1) * sizeof *chunks);
  cuoptimWorkItem *items = malloc((size_t)(total_chunks ? total_chunks : 1) * sizeof *items);
  cuoptimAdafactorItem *af_items = malloc((size_t)(num_af_items ? num_af_items : 1) * sizeof *af_items);
  b->uploaded = calloc(table_count, sizeof *b->uploaded);
  if (!variables || !chunks || !items || !af_items || !b->uploaded) {
    free(variables);
    free(chunks);
    free(items);
    free(af_items);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: out of host memory");
  }
  for (int k = 0, next_item = 0; adafactor && k < n; k++)
    next_item += (int)adafactor_items(&opt->variables[k], k, af_items + next_item);
  size_t next_row_mean = 0;
  int64_t next = 0;
  int every_variable_has_chunks = 1;
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
    if (adafactor && v->rank >= 2) {
      d->factored[0] = v->factored[0];
      d->factored[1] = v->factored[1];
      d->rows = v->dims[v->rank - 2];
      d->cols = v->dims[v->rank - 1];
      d->row_means = b->af_row_means + next_row_mean;
      next_row_mean += adafactor_batches(v);
    }
    if (v->dtype != CUOPTIM_FLOAT32) b->any_half_variable = 1;
    if (chunks_of(v->local_count) == 0) every_variable_has_chunks = 0; /* sharded: none on this rank */
    for (int64_t c = 0; c < chunks_of(v->local_count); c++) {
      chunks[next].variable = k;
      chunks[next].chunk = (int32_t)c;
      next++;
    }
  }
  /* The fixed update instances' blocks: a chunk each, but runs of small variables a warp each. */
  int32_t num_items = 0;
  for (int k = 0; k < n;) {
    size_t count = opt->variables[k].local_count;
    if (count == 0 || count > CUOPTIM_PACK_COUNT) {
      for (int64_t c = 0; c < chunks_of(count); c++) items[num_items++] = (cuoptimWorkItem){k, (int32_t)c, 1, 0};
      k++;
      continue;
    }
    int first = k;
    while (k < n && k - first < CUOPTIM_PACK_VARIABLES && opt->variables[k].local_count > 0 &&
           opt->variables[k].local_count <= CUOPTIM_PACK_COUNT)
      k++;
    items[num_items++] = (cuoptimWorkItem){first, 0, k - first, 0};
  }
  /* Allocated, filled and waited for on the optimizer's stream, which holds nothing else: the
   * host arrays can go, and any stream can use the tables. */
  cudaError_t err = cudaSuccess;
  size_t partial_count = (size_t)(total_chunks ? total_chunks : 1);
  cudaStream_t own = b->own;
  if (err == cudaSuccess) err = device_malloc(b, (void **)&b->variables, table_count * sizeof *variables);
  if (err == cudaSuccess) err = device_malloc(b, (void **)&b->grads, table_count * sizeof(cuoptimDeviceGradient));
  if (err == cudaSuccess) err = device_malloc(b, (void **)&b->chunks, partial_count * sizeof *chunks);
  if (err == cudaSuccess) err = device_malloc(b, (void **)&b->items, partial_count * sizeof *items);
  if (err == cudaSuccess && adafactor)
    err = device_malloc(b, (void **)&b->af_items, (size_t)(num_af_items ? num_af_items : 1) * sizeof *af_items);
  if (err == cudaSuccess) err = device_malloc(b, (void **)&b->partials, partial_count * sizeof(cuoptimChunkPartial));
  if (err == cudaSuccess) err = device_malloc(b, (void **)&b->prologue, sizeof(cuoptimPrologueParams));
  if (err == cudaSuccess) err = device_malloc(b, (void **)&b->chunks_done, table_count * sizeof(uint32_t));
  if (err == cudaSuccess) err = cudaMemsetAsync(b->chunks_done, 0, table_count * sizeof(uint32_t), own);
  if (err == cudaSuccess)
    err = cudaMemcpyAsync(b->variables, variables, table_count * sizeof *variables, cudaMemcpyHostToDevice, own);
  if (err == cudaSuccess) err = cudaMemsetAsync(b->grads, 0, table_count * sizeof(cuoptimDeviceGradient), own);
  if (err == cudaSuccess)
    err = cudaMemcpyAsync(b->chunks, chunks, (size_t)total_chunks * sizeof *chunks, cudaMemcpyHostToDevice, own);
  if (err == cudaSuccess)
    err = cudaMemcpyAsync(b->items, items, (size_t)num_items * sizeof *items, cudaMemcpyHostToDevice, own);
  if (err == cudaSuccess && num_af_items > 0)
    err = cudaMemcpyAsync(b->af_items, af_items, (size_t)num_af_items * sizeof *af_items, cudaMemcpyHostToDevice,
                          own);
  if (err == cudaSuccess) err = cudaMemsetAsync(b->partials, 0, partial_count * sizeof(cuoptimChunkPartial), own);
  if (err == cudaSuccess)
    err = cudaMemcpyAsync(b->prologue, &opt->prologue, sizeof(cuoptimPrologueParams), cudaMemcpyHostToDevice, own);
  cudaError_t waited = cudaStreamSynchronize(own); /* also after a failure: the copies read the host arrays */
  if (err == cudaSuccess) err = waited;
  free(variables);
  free(chunks);
  free(items);
  free(af_items);
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
  step->chunks_done = b->chunks_done;
  step->every_variable_has_chunks = every_variable_has_chunks;
  step->num_variables = n;
  step->num_chunks = total_chunks;
  step->items = b->items;
  step->num_items = num_items;
  step->af_items = b->af_items;
  step->num_af_items = (int32_t)num_af_items;
  b->spare = new_capture_table(b, n);
  return CUOPTIM_STATUS_SUCCESS;
}

/* Whether `stream` is capturing; a stream that cannot say counts as capturing (the caller then
 * takes the path that holds either way). */
static int cuda_capturing(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  DeviceGuard guard;
  if (enter_device(opt, &guard) != CUOPTIM_STATUS_SUCCESS) return 1;
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing((cudaStream_t)stream, &capture);
  leave_device(&guard);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return 1;
  }
  return capture != cudaStreamCaptureStatusNone;
}

/* A graph cannot hold what building does (allocations, host waits, work that must run once). */
static cuoptimStatus_t cuda_check_build_stream(cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller) {
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing((cudaStream_t)stream, &capture);
  leave_device(&guard);
  if (err != cudaSuccess) return cuda_fail(err, caller);
  if (capture != cudaStreamCaptureStatusNone)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: stream %p is capturing a CUDA graph, and this call would build the optimizer state "
                         "(allocations and its initialisation, which a graph cannot hold): build it first, with one "
                         "eager step or cuoptimGetWeightCount",
                         caller, (void *)stream);
  return CUOPTIM_STATUS_SUCCESS;
}

/* The build kernel (slots filled, masters from the half parameters) runs on the stream of the call
 * that builds, after the work the caller enqueued there, and is marked like a step's stage; without
 * such a stream (a state call), on the optimizer's stream, waited for. */
static cuoptimStatus_t launch_build(cuoptimOptimizer_t opt, CudaBackend *b, const cuoptimStream_t *stream) {
  static const char *what = "cuoptim: initialising the optimizer state";
  cudaStream_t target = stream ? (cudaStream_t)*stream : b->own;
  cudaError_t err = (cudaError_t)cuoptim_launch_build(&b->step, cuoptim_slot_initial_value(&opt->config, 0),
                                                    cuoptim_slot_copies_variable(&opt->config, 0), target);
  if (err != cudaSuccess) return cuda_fail(err, what);
  if (!stream) {
    err = cudaStreamSynchronize(target);
    return err == cudaSuccess ? CUOPTIM_STATUS_SUCCESS : cuda_fail(err, what);
  }
  cuoptimStatus_t status = record_mark(b, "building the optimizer state", 0, *stream, what);
  /* Unmarked, the kernel would be waited for by nothing: the tables must outlive it. */
  if (status != CUOPTIM_STATUS_SUCCESS) (void)cudaStreamSynchronize(target);
  return status;
}

static cuoptimStatus_t build_muon(cuoptimOptimizer_t opt, CudaBackend *b);

static cuoptimStatus_t cuda_build(cuoptimOptimizer_t opt, const cuoptimStream_t *stream) {
  CudaBackend *b = data_of(opt);
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cuoptimStatus_t status = build_tables(opt, b);
  if (status == CUOPTIM_STATUS_SUCCESS && opt->config.kind == CUOPTIM_MUON) status = build_muon(opt, b);
  if (status == CUOPTIM_STATUS_SUCCESS) status = launch_build(opt, b, stream);
  if (status != CUOPTIM_STATUS_SUCCESS) free_tables(b);
  leave_device(&guard);
  return status;
}

/* Brings the device's gradient table up to date with opt->step_grads: only changed entries, in
 * batches carried by kernel arguments. */
/* What the host mirror holds for an entry whose device value is unknown. */
#define UNKNOWN_GRADIENT ((const void *)1)

/* The device does not hold what the mirror says for the entries of b->batch (a launch that carried
 * them failed, or never came). */
static void forget_pending_batch(CudaBackend *b) {
  const cuoptimGradientBatch *batch = b->batch;
  for (int j = batch->first; j < batch->first + batch->count; j++) b->uploaded[j].grad = UNKNOWN_GRADIENT;
  b->batch_pending = 0;
}

static cuoptimStatus_t launch_pending_batch(CudaBackend *b, cuoptimStream_t stream) {
  cudaError_t err = (cudaError_t)cuoptim_launch_scatter_gradients(b->grads, b->batch, stream);
  if (err != cudaSuccess) {
    forget_pending_batch(b);
    return cuda_fail(err, "cuoptimApplyGradients: uploading the gradient table");
  }
  b->batch_pending = 0;
  return CUOPTIM_STATUS_SUCCESS;
}

/* The device table's entry for a step's gradient. */
static cuoptimDeviceGradient table_entry(const cuoptimStepGradient *g) {
  cuoptimDeviceGradient e;
  e.grad = g->grad;
  e.dtype = g->grad ? (int32_t)g->dtype : 0;
  e.reserved = 0;
  return e;
}

static int capture_table_matches(const CaptureTable *t, cuoptimOptimizer_t opt) {
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimDeviceGradient e = table_entry(&opt->step_grads[k]);
    if (t->image[k].grad != e.grad || t->image[k].dtype != e.dtype) return 0;
  }
  return 1;
}

/* Writes t->image into t->device on the optimizer's stream (which is never captured), in batches
 * carried by the scatter kernel's argument, and records t->written after them. */
static cudaError_t write_capture_table(CudaBackend *b, CaptureTable *t, int num_variables) {
  cuoptimGradientBatch *batch = b->batch; /* no batch is pending while a step is captured */
  for (int first = 0; first < num_variables; first += CUOPTIM_GRADIENT_BATCH) {
    int count = num_variables - first < CUOPTIM_GRADIENT_BATCH ? num_variables - first : CUOPTIM_GRADIENT_BATCH;
    batch->first = first;
    batch->count = count;
    memcpy(batch->entries, t->image + first, (size_t)count * sizeof *batch->entries);
    cudaError_t err = (cudaError_t)cuoptim_launch_scatter_gradients(t->device, batch, b->own);
    if (err != cudaSuccess) return err;
  }
  return cudaEventRecord(t->written, b->own);
}

/* A captured step reads a table of its own (CaptureTable): one an earlier capture wrote with the
 * same entries, else the spare, written now. The capturing stream waits for the write through an
 * external event node, so each replay of the graph waits for that one write (long complete). *used
 * is 0 when there is neither (the caller then uploads into the eager table, from the graph). */
static cuoptimStatus_t read_capture_table(cuoptimOptimizer_t opt, cuoptimStream_t stream, int *used) {
  static const char *what = "cuoptimApplyGradients: writing the captured step's gradient table";
  CudaBackend *b = data_of(opt);
  int n = opt->num_variables;
  *used = 0;
  CaptureTable *t = b->capture_tables;
  while (t && !capture_table_matches(t, opt)) t = t->next;
  if (!t && b->spare) {
    t = b->spare;
    for (int k = 0; k < n; k++) t->image[k] = table_entry(&opt->step_grads[k]);
    cudaError_t err = write_capture_table(b, t, n);
    if (err != cudaSuccess) return cuda_fail(err, what); /* the spare stays one: written again next time */
    b->spare = NULL;
    t->next = b->capture_tables;
    b->capture_tables = t;
  }
  if (!t) return CUOPTIM_STATUS_SUCCESS;
  cudaError_t err = cudaStreamWaitEvent((cudaStream_t)stream, t->written, cudaEventWaitExternal);
  if (err != cudaSuccess) return cuda_fail(err, what);
  b->step.grads = t->device;
  *used = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t upload_gradient_table(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  int n = opt->num_variables;
  /* The update instance reads each gradient in its variable's dtype (cuoptim_update_features). */
  int gradients_match = 1;
  for (int j = 0; j < n; j++)
    if (opt->step_grads[j].grad && opt->step_grads[j].dtype != opt->variables[j].dtype) gradients_match = 0;
  b->step.features = cuoptim_update_features(&opt->prologue.rule, b->any_half_variable, gradients_match);
  /* Without a table of its own, a captured step uploads the whole eager table from its graph (every
   * replay must restore it, whatever eager steps did in between), and the mirror forgets what the
   * device holds (a replay may change it behind our back). */
  int capturing = b->capturing;
  if (capturing && n > 0) {
    int used = 0;
    CUOPTIM_CHECK(read_capture_table(opt, stream, &used));
    if (used) return CUOPTIM_STATUS_SUCCESS;
    b->replays_write_table = 1;
  }
  int k = 0;
  while (k < n) {
    const cuoptimStepGradient *g = &opt->step_grads[k];
    if (!b->replays_write_table && b->uploaded[k].grad == g->grad &&
        (g->grad == NULL || b->uploaded[k].dtype == (int32_t)g->dtype)) {
      k++;
      continue;
    }
    cuoptimGradientBatch *batch = b->batch;
    if (b->batch_pending) CUOPTIM_CHECK(launch_pending_batch(b, stream));
    batch->first = k;
    batch->count = 0;
    while (k < n && batch->count < CUOPTIM_GRADIENT_BATCH) {
      cuoptimDeviceGradient *e = &batch->entries[batch->count++];
      *e = table_entry(&opt->step_grads[k]);
      b->uploaded[k] = *e;
      if (capturing) b->uploaded[k].grad = UNKNOWN_GRADIENT;
      k++;
    }
    b->batch_pending = 1;
    /* The last batch of a step without an inspect pass rides on the prologue's argument (nothing
     * before the prologue reads the table); any other is launched now. */
  }
  if (b->batch_pending && cuoptim_needs_inspect(opt)) CUOPTIM_CHECK(launch_pending_batch(b, stream));
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_begin_step(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  CUOPTIM_CHECK(enter_device(opt, &b->guard));
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing((cudaStream_t)stream, &capture);
  cuoptimStatus_t status =
      err == cudaSuccess ? CUOPTIM_STATUS_SUCCESS : cuda_fail(err, "cuoptimApplyGradients: cudaStreamIsCapturing");
  b->capturing = capture != cudaStreamCaptureStatusNone;
  if (b->capturing) b->ever_captured = 1;
  /* Steps share the optimizer's device buffers, the gradient table first: an eager step waits for
   * the optimizer's work on other streams before it writes anything (a captured step is ordered by
   * the stream its graph is launched on). */
  if (status == CUOPTIM_STATUS_SUCCESS && !b->capturing)
    status = wait_for_optimizer_work(b, (cudaStream_t)stream, "cuoptimApplyGradients: cudaStreamWaitEvent");
  /* The next capture's table, allocated here since a capture cannot allocate. */
  if (status == CUOPTIM_STATUS_SUCCESS && !b->capturing && !b->spare) b->spare = new_capture_table(b, opt->num_variables);
  if (status == CUOPTIM_STATUS_SUCCESS) status = upload_gradient_table(opt, stream);
  if (status == CUOPTIM_STATUS_SUCCESS && !b->capturing) b->steps++;
  if (status != CUOPTIM_STATUS_SUCCESS) {
    b->step.grads = b->grads;
    leave_device(&b->guard);
  }
  return status;
}

/* An eager stage is marked where it ends; a captured one is not (its graph may never run, or run
 * many times): the replay's end is marked instead (cuda_end_step). */
static cuoptimStatus_t cuda_stage_enqueued(cuoptimOptimizer_t opt, const char *stage, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  if (b->capturing) return CUOPTIM_STATUS_SUCCESS;
  return record_mark(b, stage, b->steps, stream, "cuoptimApplyGradients: cudaEventRecord");
}

/* A captured step ends with a record of replay_done in its graph (an external event node): each
 * replay then records it, so the optimizer's waits see replays too. */
static cuoptimStatus_t record_replay(CudaBackend *b, cuoptimStream_t stream, const char *caller) {
  cudaError_t err = cudaEventRecordWithFlags(b->replay_done, (cudaStream_t)stream, cudaEventRecordExternal);
  if (err != cudaSuccess) return cuda_fail(err, caller);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_end_step(cuoptimOptimizer_t opt, cuoptimStream_t stream, cuoptimStatus_t status) {
  CudaBackend *b = data_of(opt);
  if (b->batch_pending) forget_pending_batch(b); /* the step failed before its prologue */
  if (status == CUOPTIM_STATUS_SUCCESS && b->capturing)
    status = record_replay(b, stream, "cuoptimApplyGradients: cudaEventRecordWithFlags");
  b->step.grads = b->grads; /* a captured step's own table served this step alone */
  leave_device(&b->guard);
  return status;
}

static cuoptimStatus_t launched(int err, const char *stage) {
  if (err != cudaSuccess) return cuda_fail((cudaError_t)err, stage);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t cuda_inspect(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return launched(cuoptim_launch_inspect(&data_of(opt)->step, &opt->prologue.rule, stream),
                  "cuoptimApplyGradients: inspect kernel");
}

static cuoptimStatus_t cuda_prologue(cuoptimOptimizer_t opt, int inspected, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  int err = cuoptim_launch_prologue(&b->step, inspected, b->batch_pending ? b->batch : NULL, stream);
  if (b->batch_pending) {
    if (err == cudaSuccess)
      b->batch_pending = 0;
    else
      forget_pending_batch(b);
  }
  return launched(err, "cuoptimApplyGradients: prologue kernel");
}

static cuoptimStatus_t muon_update(cuoptimOptimizer_t opt, cuoptimStream_t stream);

static cuoptimStatus_t cuda_update(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (opt->config.kind == CUOPTIM_MUON) return muon_update(opt, stream);
  if (opt->config.kind == CUOPTIM_LAMB && cuoptim_comm_sharded(opt)) {
    /* Sharded: each rank's part of Lamb's norms, combined across the ranks before pass 2. */
    const cuoptimDeviceStep *step = &data_of(opt)->step;
    CUOPTIM_CHECK(launched(cuoptim_launch_lamb_pass1(step, &opt->prologue.rule, stream),
                           "cuoptimApplyGradients: Lamb pass 1 kernel"));
    CUOPTIM_CHECK(cuoptim_comm_combine_lamb(opt, stream));
    return launched(cuoptim_launch_lamb_pass2(step, &opt->prologue.rule, stream),
                    "cuoptimApplyGradients: Lamb pass 2 kernel");
  }
  return launched(cuoptim_launch_update(&data_of(opt)->step, &opt->prologue.rule, stream),
                  "cuoptimApplyGradients: update kernel");
}

/* Work outside a step on the optimizer's buffers (finalize, the averaged weights) is ordered and
 * marked like a step (captured: like a captured step). begin: enters the device and, eager, waits
 * on the GPU for the optimizer's work on other streams; *capturing says which. */
static cuoptimStatus_t begin_outside_step(cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller,
                                          DeviceGuard *guard, int *capturing) {
  CUOPTIM_CHECK(enter_device(opt, guard));
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t err = cudaStreamIsCapturing((cudaStream_t)stream, &capture);
  cuoptimStatus_t status = err == cudaSuccess ? CUOPTIM_STATUS_SUCCESS : cuda_fail(err, caller);
  *capturing = capture != cudaStreamCaptureStatusNone;
  if (status == CUOPTIM_STATUS_SUCCESS && !*capturing)
    status = wait_for_optimizer_work(data_of(opt), (cudaStream_t)stream, caller);
  if (status != CUOPTIM_STATUS_SUCCESS) leave_device(guard);
  return status;
}

/* end: after the launch (`status`), the mark or the replay's record; leaves the device. */
static cuoptimStatus_t end_outside_step(cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller,
                                        const DeviceGuard *guard, int capturing, cuoptimStatus_t status) {
  CudaBackend *b = data_of(opt);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    if (capturing) {
      b->ever_captured = 1;
      status = record_replay(b, stream, caller);
    } else {
      status = record_mark(b, caller, 0, stream, caller);
    }
  }
  leave_device(guard);
  return status;
}

static cuoptimStatus_t cuda_finalize(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  static const char *caller = "cuoptimFinalizeVariableValues";
  DeviceGuard guard;
  int capturing = 0;
  CUOPTIM_CHECK(begin_outside_step(opt, stream, caller, &guard, &capturing));
  cuoptimStatus_t status =
      launched(cuoptim_launch_finalize(&data_of(opt)->step, stream), "cuoptimFinalizeVariableValues: kernel");
  return end_outside_step(opt, stream, caller, &guard, capturing, status);
}

static cuoptimStatus_t cuda_averaged_weights(cuoptimOptimizer_t opt, int k, void *out, cuoptimStream_t stream) {
  static const char *caller = "cuoptimScheduleFreeAveragedWeights";
  DeviceGuard guard;
  int capturing = 0;
  CUOPTIM_CHECK(begin_outside_step(opt, stream, caller, &guard, &capturing));
  int err = cuoptim_launch_schedule_free_average(&data_of(opt)->step, &opt->prologue.rule, k,
                                                 opt->variables[k].local_count, out, stream);
  cuoptimStatus_t status = launched(err, "cuoptimScheduleFreeAveragedWeights: kernel");
  return end_outside_step(opt, stream, caller, &guard, capturing, status);
}

static cuoptimStatus_t cuda_synchronize(cuoptimOptimizer_t opt) {
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cuoptimStatus_t status = settle(data_of(opt), "cuoptimSynchronize");
  leave_device(&guard);
  return status;
}

static void describe_mark(const WorkMark *mark, char *text, size_t size) {
  if (mark->step > 0)
    snprintf(text, size, "stage \"%s\" of step %llu", mark->what, (unsigned long long)mark->step);
  else
    snprintf(text, size, "%s", mark->what);
}

/* The oldest mark not complete, or the latest replay; complete marks are forgotten on the way. */
static cuoptimStatus_t cuda_query(cuoptimOptimizer_t opt, int *complete, char *in_flight, size_t size) {
  static const char *caller = "cuoptimSynchronizeTimeout: cudaEventQuery";
  CudaBackend *b = data_of(opt);
  DeviceGuard guard;
  CUOPTIM_CHECK(enter_device(opt, &guard));
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  *complete = 0;
  WorkMarks *m = &b->marks;
  cudaError_t err = cudaSuccess;
  while (m->count > 0 && (err = query_event(mark_at(m, 0)->event)) == cudaSuccess) {
    m->first = (m->first + 1) % m->capacity;
    m->count--;
  }
  if (m->count > 0) {
    if (err == cudaErrorNotReady)
      describe_mark(mark_at(m, 0), in_flight, size);
    else
      status = cuda_fail(err, caller);
  } else if (b->ever_captured && (err = query_event(b->replay_done)) != cudaSuccess) {
    if (err == cudaErrorNotReady)
      snprintf(in_flight, size, "the latest replay of a CUDA graph that captured a step");
    else
      status = cuda_fail(err, caller);
  } else {
    *complete = 1;
  }
  leave_device(&guard);
  return status;
}

/* ---- checkpoint copies: a pinned staging buffer and a stream of their own ----------------------
 * The stream waits for the optimizer's own work (wait_for_optimizer_work) and for nothing else; the
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
    /* Ordered after every piece of the optimizer's work (steps, finalize, copies, graph replays). */
    status = wait_for_optimizer_work(data_of(opt), stream, "cuoptim: cudaStreamWaitEvent (checkpoint copies)");
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

/* ---- Muon: the matrices' Newton-Schulz products on cuBLAS -------------------------------------
 * Built with the tables: each Muon matrix gets X, Y (r x c) and A, cA, B (r x r) in one device
 * area, the matrices of one shape side by side so that one strided-batched product covers them;
 * the kernels' matrix table and chunk list; the chunk list of the AdamW path's variables (the
 * update kernel runs only those); a cuBLAS handle, made here when some matrix exists, with a
 * workspace of the optimizer's (cublasSetWorkspace: a captured step then allocates nothing).
 * Products are cublasSgemmStridedBatched in float32 with CUBLAS_DEFAULT_MATH, which never uses
 * TF32 (CUBLAS_TF32_TENSOR_OP_MATH would). A step: the AdamW path's update, the prepare stages,
 * ns_steps x (a product per shape, the scale kernel, two products per shape), the apply kernel. */

/* The workspace cuBLAS recommends for Hopper (4 MiB serve earlier architectures). */
#define MUON_CUBLAS_WORKSPACE ((size_t)32 << 20)
/* Each region of the work area starts at a multiple of 64 floats (256 bytes). */
#define MUON_ALIGN 64

/* The matrices of one shape, consecutive in the table and in the work area. */
typedef struct {
  int count;
  int r, c;
  float *x, *y, *a, *ca, *b; /* the first matrix's; matrix i at + i r c (x, y) or + i r r */
} MuonGroup;

typedef struct CudaMuon {
  cublasHandle_t handle;     /* NULL without a matrix */
  void *workspace;           /* device, MUON_CUBLAS_WORKSPACE bytes */
  float *work;               /* device: every matrix's X, Y, A, cA, B */
  cuoptimMuonMatrix *matrices; /* device */
  cuoptimChunk *chunks;      /* device: the matrices' chunks */
  double *partials;          /* device: per chunk */
  cuoptimChunk *adamw_chunks; /* device: the chunks of the AdamW path's variables */
  int64_t num_adamw_chunks;
  cuoptimMuonStep step;      /* device pointers the Muon kernels read */
  MuonGroup *groups;         /* host */
  int num_groups;
} CudaMuon;

static cuoptimStatus_t cublas_fail(cublasStatus_t status, const char *what) {
  return cuoptim_error(status == CUBLAS_STATUS_ALLOC_FAILED ? CUOPTIM_STATUS_ALLOC_FAILED : CUOPTIM_STATUS_CUDA_ERROR,
                       "%s: %s (cuBLAS status %d)", what, cublasGetStatusString(status), (int)status);
}

#define CUBLAS_CHECK(call, what)                                         \
  do {                                                                   \
    cublasStatus_t status_ = (call);                                     \
    if (status_ != CUBLAS_STATUS_SUCCESS) return cublas_fail(status_, what); \
  } while (0)

static void free_muon(CudaBackend *b) {
  CudaMuon *mu = b->muon;
  if (!mu) return;
  /* cuBLAS documents that releasing a handle synchronizes the device: only when the tables go. */
  if (mu->handle) cublasDestroy(mu->handle);
  device_free(b, mu->workspace);
  device_free(b, mu->work);
  device_free(b, mu->matrices);
  device_free(b, mu->chunks);
  device_free(b, mu->partials);
  device_free(b, mu->adamw_chunks);
  free(mu->groups);
  free(mu);
  b->muon = NULL;
}

static size_t muon_aligned(size_t floats) { return (floats + MUON_ALIGN - 1) / MUON_ALIGN * MUON_ALIGN; }

/* The matrices' shapes in groups (first appearance order); group_of[k]: variable k's, -1 off the
 * matrix path. Refuses a matrix whose dimensions cuBLAS's int arguments cannot hold. */
static cuoptimStatus_t group_muon_matrices(cuoptimOptimizer_t opt, CudaMuon *mu, int *group_of) {
  for (int k = 0; k < opt->num_variables; k++) group_of[k] = -1;
  for (int k = 0; k < opt->num_variables; k++) {
    const cuoptimVariableRec *v = &opt->variables[k];
    if (!v->muon_matrix) continue;
    cuoptimMuonShape m = cuoptim_muon_shape(v);
    if (m.c > INT32_MAX)
      return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                           "cuoptim: variable \"%s\" (%lld x %lld): a Muon matrix's dimensions must fit cuBLAS's int "
                           "arguments on the CUDA backend",
                           v->name, (long long)m.rows, (long long)m.cols);
    int g = 0;
    while (g < mu->num_groups && (mu->groups[g].r != m.r || mu->groups[g].c != m.c)) g++;
    if (g == mu->num_groups) {
      mu->groups[g] = (MuonGroup){0, (int)m.r, (int)m.c, NULL, NULL, NULL, NULL, NULL};
      mu->num_groups++;
    }
    mu->groups[g].count++;
    group_of[k] = g;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The work area's regions: per group X, Y, A, cA, B of all its matrices. Returns the floats. */
static size_t layout_muon_work(CudaMuon *mu, float *base) {
  size_t at = 0;
  for (int g = 0; g < mu->num_groups; g++) {
    MuonGroup *gr = &mu->groups[g];
    size_t xy = muon_aligned((size_t)gr->count * (size_t)gr->r * (size_t)gr->c);
    size_t sq = muon_aligned((size_t)gr->count * (size_t)gr->r * (size_t)gr->r);
    float **regions[5] = {&gr->x, &gr->y, &gr->a, &gr->ca, &gr->b};
    for (int i = 0; i < 5; i++) {
      *regions[i] = base ? base + at : NULL;
      at += i < 2 ? xy : sq;
    }
  }
  return at;
}

/* The host tables: the matrices in group order, their chunks, the AdamW path's chunks. */
static void fill_muon_tables(cuoptimOptimizer_t opt, const CudaMuon *mu, const int *group_of,
                             cuoptimMuonMatrix *matrices, cuoptimChunk *chunks, cuoptimChunk *adamw) {
  int32_t next_matrix = 0;
  int64_t next_chunk = 0, next_adamw = 0;
  for (int g = 0; g < mu->num_groups; g++) {
    const MuonGroup *gr = &mu->groups[g];
    int index = 0; /* within the group */
    for (int k = 0; k < opt->num_variables; k++) {
      if (group_of[k] != g) continue;
      cuoptimMuonShape m = cuoptim_muon_shape(&opt->variables[k]);
      size_t xy = (size_t)index * (size_t)(m.r * m.c), sq = (size_t)index * (size_t)(m.r * m.r);
      cuoptimMuonMatrix *d = &matrices[next_matrix];
      *d = (cuoptimMuonMatrix){gr->x + xy, gr->y + xy, gr->a + sq, gr->ca + sq, gr->b + sq, m.rows, m.cols, m.r, m.c,
                               next_chunk, k, m.tall, cuoptim_sqrtf((float)m.c), 0};
      for (int64_t c = 0; c < chunks_of(opt->variables[k].local_count); c++)
        chunks[next_chunk++] = (cuoptimChunk){next_matrix, (int32_t)c};
      next_matrix++;
      index++;
    }
  }
  for (int k = 0; k < opt->num_variables; k++)
    if (group_of[k] < 0)
      for (int64_t c = 0; c < chunks_of(opt->variables[k].local_count); c++) adamw[next_adamw++] = (cuoptimChunk){k, (int32_t)c};
}

static cuoptimStatus_t build_muon(cuoptimOptimizer_t opt, CudaBackend *b) {
  static const char *what = "cuoptim: building Muon's matrix tables";
  CudaMuon *mu = calloc(1, sizeof *mu);
  int n = opt->num_variables;
  int *group_of = malloc((size_t)(n > 0 ? n : 1) * sizeof *group_of);
  if (mu) mu->groups = malloc((size_t)(n > 0 ? n : 1) * sizeof *mu->groups);
  if (!mu || !group_of || !mu->groups) {
    if (mu) free(mu->groups);
    free(mu);
    free(group_of);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: out of host memory");
  }
  b->muon = mu;
  cuoptimStatus_t status = group_muon_matrices(opt, mu, group_of);
  int32_t num_matrices = 0;
  int64_t num_chunks = 0, num_adamw = 0;
  for (int k = 0; k < n; k++) {
    int64_t chunks = chunks_of(opt->variables[k].local_count);
    if (group_of[k] >= 0) num_matrices++, num_chunks += chunks;
    else num_adamw += chunks;
  }
  cuoptimMuonMatrix *matrices = malloc((size_t)(num_matrices ? num_matrices : 1) * sizeof *matrices);
  cuoptimChunk *chunks = malloc((size_t)(num_chunks ? num_chunks : 1) * sizeof *chunks);
  cuoptimChunk *adamw = malloc((size_t)(num_adamw ? num_adamw : 1) * sizeof *adamw);
  if (status == CUOPTIM_STATUS_SUCCESS && (!matrices || !chunks || !adamw))
    status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptim: out of host memory");
  cudaError_t err = cudaSuccess;
  if (status == CUOPTIM_STATUS_SUCCESS && num_matrices > 0) {
    err = device_malloc(b, (void **)&mu->work, layout_muon_work(mu, NULL) * sizeof(float));
    if (err == cudaSuccess) err = cudaMemsetAsync(mu->work, 0, layout_muon_work(mu, NULL) * sizeof(float), b->own);
    if (err == cudaSuccess) err = device_malloc(b, &mu->workspace, MUON_CUBLAS_WORKSPACE);
    if (err == cudaSuccess) err = device_malloc(b, (void **)&mu->matrices, (size_t)num_matrices * sizeof *matrices);
    if (err == cudaSuccess) err = device_malloc(b, (void **)&mu->chunks, (size_t)num_chunks * sizeof *chunks);
    if (err == cudaSuccess) err = device_malloc(b, (void **)&mu->partials, (size_t)num_chunks * sizeof(double));
  }
  if (status == CUOPTIM_STATUS_SUCCESS && err == cudaSuccess && num_adamw > 0)
    err = device_malloc(b, (void **)&mu->adamw_chunks, (size_t)num_adamw * sizeof *adamw);
  if (status == CUOPTIM_STATUS_SUCCESS && err == cudaSuccess) {
    layout_muon_work(mu, mu->work);
    fill_muon_tables(opt, mu, group_of, matrices, chunks, adamw);
    if (num_matrices > 0)
      err = cudaMemcpyAsync(mu->matrices, matrices, (size_t)num_matrices * sizeof *matrices, cudaMemcpyHostToDevice,
                            b->own);
    if (err == cudaSuccess && num_matrices > 0)
      err = cudaMemcpyAsync(mu->chunks, chunks, (size_t)num_chunks * sizeof *chunks, cudaMemcpyHostToDevice, b->own);
    if (err == cudaSuccess && num_adamw > 0)
      err = cudaMemcpyAsync(mu->adamw_chunks, adamw, (size_t)num_adamw * sizeof *adamw, cudaMemcpyHostToDevice, b->own);
    /* As build_tables's: a copy from pageable memory has read it when the call returns. */
  }
  free(matrices);
  free(chunks);
  free(adamw);
  free(group_of);
  if (status == CUOPTIM_STATUS_SUCCESS && err != cudaSuccess) status = cuda_fail(err, what);
  if (status != CUOPTIM_STATUS_SUCCESS) return status;
  mu->num_adamw_chunks = num_adamw;
  mu->step = (cuoptimMuonStep){mu->matrices, mu->chunks, mu->partials, num_chunks, num_matrices,
                               opt->prologue.rule.muon_ns_steps};
  if (num_matrices == 0) return CUOPTIM_STATUS_SUCCESS;
  CUBLAS_CHECK(cublasCreate(&mu->handle), "cuoptim: cublasCreate (Muon's Newton-Schulz products)");
  CUBLAS_CHECK(cublasSetMathMode(mu->handle, CUBLAS_DEFAULT_MATH), "cuoptim: cublasSetMathMode");
  return CUOPTIM_STATUS_SUCCESS;
}

/* The products of one shape's matrices: C = op(A) B (+ C with accumulate), column-major as cuBLAS
 * reads the row-major buffers (a row-major M is the column-major M^T). */
static cuoptimStatus_t muon_gemm(const CudaMuon *mu, const MuonGroup *g, cublasOperation_t op_a, int m, int n, int k,
                                 const float *a, int lda, long long stride_a, const float *b, int ldb,
                                 long long stride_b, int accumulate, float *c, int ldc, long long stride_c) {
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasSgemmStridedBatched(mu->handle, op_a, CUBLAS_OP_N, m, n, k, &one, a, lda, stride_a, b, ldb,
                                         stride_b, &beta, c, ldc, stride_c, g->count),
               "cuoptimApplyGradients: cublasSgemmStridedBatched (Muon's Newton-Schulz)");
  return CUOPTIM_STATUS_SUCCESS;
}

/* One Newton-Schulz iteration of every matrix: A = X X^T (row-major A[j][i] = sum_k X[i][k]
 * X[j][k], the column-major (X^T)^T X^T), the scale kernel, B += cA A, out += B X. */
static cuoptimStatus_t muon_iteration(cuoptimOptimizer_t opt, const CudaMuon *mu, int iteration,
                                      cuoptimStream_t stream) {
  for (int i = 0; i < mu->num_groups; i++) {
    const MuonGroup *g = &mu->groups[i];
    const float *x = iteration % 2 ? g->y : g->x;
    long long rc = (long long)g->r * g->c, rr = (long long)g->r * g->r;
    CUOPTIM_CHECK(muon_gemm(mu, g, CUBLAS_OP_T, g->r, g->r, g->c, x, g->c, rc, x, g->c, rc, 0, g->a, g->r, rr));
  }
  CUOPTIM_CHECK(launched(cuoptim_launch_muon_scale(&mu->step, &opt->prologue.rule, iteration, stream),
                         "cuoptimApplyGradients: Muon scale kernel"));
  for (int i = 0; i < mu->num_groups; i++) {
    const MuonGroup *g = &mu->groups[i];
    long long rr = (long long)g->r * g->r;
    CUOPTIM_CHECK(muon_gemm(mu, g, CUBLAS_OP_N, g->r, g->r, g->r, g->a, g->r, rr, g->ca, g->r, rr, 1, g->b, g->r, rr));
  }
  for (int i = 0; i < mu->num_groups; i++) {
    const MuonGroup *g = &mu->groups[i];
    const float *x = iteration % 2 ? g->y : g->x;
    float *out = iteration % 2 ? g->x : g->y;
    long long rc = (long long)g->r * g->c, rr = (long long)g->r * g->r;
    CUOPTIM_CHECK(muon_gemm(mu, g, CUBLAS_OP_N, g->c, g->r, g->r, x, g->c, rc, g->b, g->r, rr, 1, out, g->c, rc));
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t muon_update(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  CudaBackend *b = data_of(opt);
  const CudaMuon *mu = b->muon;
  const cuoptimRuleParams *p = &opt->prologue.rule;
  CUOPTIM_CHECK(launched(cuoptim_launch_muon_adamw(&b->step, mu->adamw_chunks, mu->num_adamw_chunks, p, stream),
                         "cuoptimApplyGradients: update kernel (Muon's AdamW path)"));
  if (mu->step.num_matrices == 0) return CUOPTIM_STATUS_SUCCESS;
  CUOPTIM_CHECK(launched(cuoptim_launch_muon_prepare(&b->step, &mu->step, p, stream),
                         "cuoptimApplyGradients: Muon momentum and norm kernels"));
  /* cublasSetStream drops the workspace: set again after it. */
  CUBLAS_CHECK(cublasSetStream(mu->handle, (cudaStream_t)stream), "cuoptimApplyGradients: cublasSetStream");
  CUBLAS_CHECK(cublasSetWorkspace(mu->handle, mu->workspace, MUON_CUBLAS_WORKSPACE),
               "cuoptimApplyGradients: cublasSetWorkspace");
  for (int iteration = 0; iteration < p->muon_ns_steps; iteration++)
    CUOPTIM_CHECK(muon_iteration(opt, mu, iteration, stream));
  return launched(cuoptim_launch_muon_apply(&b->step, &mu->step, p, stream), "cuoptimApplyGradients: Muon apply kernel");
}

const cuoptimDeviceStep *cuoptim_cuda_device_step(cuoptimOptimizer_t opt) { return &data_of(opt)->step; }

static const cuoptimBackendOps cuda_backend = {
    .name = "cuda",
    .capturing = cuda_capturing,
    .init = cuda_init,
    .release = cuda_release,
    .check_pointer = cuda_check_pointer,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .check_build_stream = cuda_check_build_stream,
    .build = cuda_build,
    .begin_step = cuda_begin_step,
    .stage_enqueued = cuda_stage_enqueued,
    .end_step = cuda_end_step,
    .inspect = cuda_inspect,
    .prologue = cuda_prologue,
    .update = cuda_update,
    .finish = NULL, /* the prologue kernel advances the state */
    .finalize = cuda_finalize,
    .averaged_weights = cuda_averaged_weights,
    .synchronize = cuda_synchronize,
    .transfer_begin = cuda_transfer_begin,
    .transfer_copy = cuda_transfer_copy,
    .transfer_wait = cuda_transfer_wait,
    .transfer_end = cuda_transfer_end,
    .query = cuda_query,
};

const cuoptimBackendOps *const cuoptim_cuda_backend = &cuda_backend;
