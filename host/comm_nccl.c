/* NCCL for the CUDA backend's data-parallel path, on the caller's communicator (cuoptim never
 * destroys it).
 *
 * The aggregate stage sums each gradient in place, on the step's stream, with no host read and
 * no allocation, so that a whole step, collectives included, can be captured in a CUDA graph.
 * For a gradient of `count` elements and a world of N ranks, the head of (count / N) * N elements
 * is reduce-scattered (rank r sums the r-th of N equal segments into that segment of its own
 * buffer) and all-gathered back into the buffer; the tail of count % N < N elements is reduced to
 * one root and broadcast from it (the root is the variable's index modulo N, which spreads the
 * tails over the ranks). Each element is summed by one rank and copied to the others, so every
 * rank ends with the same bytes whatever algorithm NCCL picks. ncclSum, never ncclAvg: the mean's
 * 1/N is folded into the update kernel (NCCL before 2.29.7 drops tail elements with ncclAvg on
 * one rank).
 *
 * Gradients go in buckets of about options.bucket_bytes (variables in index order). A bucket is
 * two NCCL groups: every reduce-scatter and reduce of the bucket in the first, every all-gather
 * and broadcast in the second, because the operations of one group may run concurrently and the
 * second ones read what the first ones wrote.
 *
 * The first-step comparison of the variable tables (host/comm.c) is the one blocking exchange:
 * an all-gather through a small device buffer on an internal stream, waited for on that stream
 * only (NCCL serializes the operations of one communicator across streams). */
#include "internal.h"

#ifdef CUOPTIM_HAVE_NCCL

#include "launch.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <nvtx3/nvToolsExtCudaRt.h>

typedef struct {
  ncclComm_t comm;              /* the caller's */
  cudaStream_t exchange_stream; /* the table check's exchange, apart from every caller's stream */
  void *exchange;               /* its device buffer */
  size_t exchange_bytes;
  cuoptimTensorScalars *gathered; /* sharded state: every rank's inspect partials, [rank][variable] */
  /* Gradient arena: buckets reduced on a stream of their own while backward goes on. */
  cudaStream_t bucket_stream;
  cudaEvent_t *marked;       /* per variable: recorded on its mark's stream */
  unsigned char *has_mark;   /* per variable: marked (not from a capturing stream) this step */
  cudaEvent_t *bucket_done;  /* per bucket: recorded on bucket_stream after its collectives */
  cudaEvent_t started_from;  /* recorded on the stream of the call that starts a bucket */
  unsigned char *in_flight;  /* per bucket: started on bucket_stream, not yet waited for by a step */
  int buckets;               /* the arena's, when the above exist */
} NcclComm;

static NcclComm *nccl_of(cuoptimOptimizer_t opt) { return (NcclComm *)opt->comm->impl; }

/* ---- errors ------------------------------------------------------------------------------- */

/* NCCL's own words: the status text and the last error it recorded. */
static cuoptimStatus_t nccl_fail(ncclResult_t result, const char *caller, const char *what) {
  (void)cudaGetLastError(); /* a non-sticky CUDA error behind it must not fail the next launch */
  const char *detail = ncclGetLastError(NULL);
  return cuoptim_error(CUOPTIM_STATUS_NCCL_ERROR, "%s: %s: %s%s%s%s", caller, what, ncclGetErrorString(result),
                       detail && *detail ? " (NCCL: " : "", detail && *detail ? detail : "",
                       detail && *detail ? ")" : "");
}

static cuoptimStatus_t cuda_fail(cudaError_t err, const char *caller, const char *what) {
  (void)cudaGetLastError();
  return cuoptim_error(CUOPTIM_STATUS_CUDA_ERROR, "%s: %s: %s (%s)", caller, what, cudaGetErrorString(err),
                       cudaGetErrorName(err));
}

/* A non-blocking communicator (config.blocking = 0) may answer ncclInProgress: the call is done
 * once ncclCommGetAsyncError stops saying so. A host query of NCCL's state, not of the device. */
static cuoptimStatus_t settle(ncclComm_t comm, ncclResult_t result, const char *caller, const char *what) {
  while (result == ncclInProgress) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t query = ncclCommGetAsyncError(comm, &state);
    if (query != ncclSuccess) return nccl_fail(query, caller, "ncclCommGetAsyncError");
    if (state != ncclInProgress) {
      result = state;
      break;
    }
    struct timespec pause = {0, 20000}; /* 20 us */
    nanosleep(&pause, NULL);
  }
  return result == ncclSuccess ? CUOPTIM_STATUS_SUCCESS : nccl_fail(result, caller, what);
}

/* An error NCCL found after the calls returned (a failed kernel, a remote rank gone): the
 * communicator is then unusable, and cuoptim stops enqueuing on it. */
static cuoptimStatus_t check_async(ncclComm_t comm, const char *caller) {
  ncclResult_t state = ncclSuccess;
  ncclResult_t query = ncclCommGetAsyncError(comm, &state);
  if (query != ncclSuccess) return nccl_fail(query, caller, "ncclCommGetAsyncError");
  if (state == ncclSuccess || state == ncclInProgress) return CUOPTIM_STATUS_SUCCESS;
  return nccl_fail(state, caller, "the NCCL communicator reports an asynchronous error (abort it: ncclCommAbort)");
}

static cuoptimStatus_t nccl_poll(cuoptimOptimizer_t opt, const char *caller) {
  return check_async(nccl_of(opt)->comm, caller);
}

/* ---- the optimizer's device, current for the duration of a call ------------------------------ */

typedef struct {
  int previous, changed;
} DeviceScope;

static cuoptimStatus_t enter_device(int device, DeviceScope *scope, const char *caller) {
  scope->changed = 0;
  cudaError_t err = cudaGetDevice(&scope->previous);
  if (err == cudaSuccess && scope->previous != device) {
    err = cudaSetDevice(device);
    scope->changed = err == cudaSuccess;
  }
  return err == cudaSuccess ? CUOPTIM_STATUS_SUCCESS : cuda_fail(err, caller, "cudaSetDevice");
}

static void leave_device(const DeviceScope *scope) {
  if (scope->changed) cudaSetDevice(scope->previous);
}

/* ---- attach, detach ------------------------------------------------------------------------ */

static cuoptimStatus_t read_comm(cuoptimOptimizer_t opt, cuoptimComm *c, ncclComm_t comm, const char *caller) {
  ncclResult_t state = ncclSuccess;
  ncclResult_t result = ncclCommGetAsyncError(comm, &state);
  if (result != ncclSuccess) return nccl_fail(result, caller, "ncclCommGetAsyncError");
  if (state == ncclInProgress)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: the NCCL communicator is still being initialized (non-blocking): wait until "
                         "ncclCommGetAsyncError gives ncclSuccess",
                         caller);
  if (state != ncclSuccess) return nccl_fail(state, caller, "the NCCL communicator has failed");
  int device = -1;
  result = ncclCommCount(comm, &c->world);
  if (result == ncclSuccess) result = ncclCommUserRank(comm, &c->rank);
  if (result != ncclSuccess) return nccl_fail(result, caller, "ncclCommCount / ncclCommUserRank");
  result = ncclCommCuDevice(comm, &device);
  if (result != ncclSuccess) return nccl_fail(result, caller, "ncclCommCuDevice");
  if (device != opt->device)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: the NCCL communicator is on device %d, the optimizer on device %d: each rank's "
                         "communicator and optimizer must use the same GPU",
                         caller, device, opt->device);
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t nccl_attach(cuoptimOptimizer_t opt, cuoptimComm *c, const void *handle, const char *caller) {
  ncclComm_t comm = *(const ncclComm_t *)handle;
  if (!comm)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: *communicator is NULL: pass the address of an ncclComm_t from ncclCommInitRank", caller);
  CUOPTIM_CHECK(read_comm(opt, c, comm, caller));
  NcclComm *m = calloc(1, sizeof *m);
  if (!m) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  m->comm = comm;
  DeviceScope scope;
  cuoptimStatus_t status = enter_device(opt->device, &scope, caller);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    /* Non-blocking: it must not wait for the legacy stream a caller may be using. */
    cudaError_t err = cudaStreamCreateWithFlags(&m->exchange_stream, cudaStreamNonBlocking);
    leave_device(&scope);
    if (err != cudaSuccess) status = cuda_fail(err, caller, "cudaStreamCreateWithFlags");
  }
  if (status != CUOPTIM_STATUS_SUCCESS) {
    free(m);
    return status;
  }
  nvtxNameCudaStreamA(m->exchange_stream, "cuoptim NCCL table exchange");
  c->impl = m;
  return CUOPTIM_STATUS_SUCCESS;
}

static void nccl_detach(cuoptimOptimizer_t opt, cuoptimComm *c) {
  NcclComm *m = c->impl;
  if (!m) return;
  DeviceScope scope;
  if (enter_device(opt->device, &scope, "cuoptimDestroy") == CUOPTIM_STATUS_SUCCESS) {
    /* After a failure NCCL may never finish the exchange: keep its buffer (a bounded leak) rather
     * than free memory a kernel may still write. The stream is released once its work ends. */
    if (!c->broken) {
      cudaStreamSynchronize(m->exchange_stream);
      if (m->exchange) cudaFree(m->exchange);
      if (m->gathered) cudaFree(m->gathered); /* cuoptimDestroy waited for the steps */
      if (m->buckets) cudaStreamSynchronize(m->bucket_stream);
    }
    cudaStreamDestroy(m->exchange_stream);
    if (m->buckets) {
      cudaStreamDestroy(m->bucket_stream);
      cudaEventDestroy(m->started_from);
      for (int k = 0; k < opt->num_variables; k++) cudaEventDestroy(m->marked[k]);
      for (int b = 0; b < m->buckets; b++) cudaEventDestroy(m->bucket_done[b]);
    }
    leave_device(&scope);
  }
  (void)cudaGetLastError();
  free(m->marked);
  free(m->has_mark);
  free(m->bucket_done);
  free(m->in_flight);
  free(m);
  c->impl = NULL;
}

/* ---- the blocking exchange of the table check -------------------------------------------- */

static cuoptimStatus_t reserve_exchange(NcclComm *m, size_t bytes, const char *stage) {
  if (bytes <= m->exchange_bytes) return CUOPTIM_STATUS_SUCCESS;
  if (m->exchange) {
    cudaError_t err = cudaStreamSynchronize(m->exchange_stream);
    if (err == cudaSuccess) err = cudaFree(m->exchange);
    m->exchange = NULL;
    m->exchange_bytes = 0;
    if (err != cudaSuccess) return cuda_fail(err, "cuoptimApplyGradients", stage);
  }
  cudaError_t err = cudaMalloc(&m->exchange, bytes);
  if (err != cudaSuccess) {
    m->exchange = NULL;
    if (err != cudaErrorMemoryAllocation) return cuda_fail(err, "cuoptimApplyGradients", stage);
    (void)cudaGetLastError();
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: %s: cannot allocate %zu bytes", stage,
                         bytes);
  }
  m->exchange_bytes = bytes;
  return CUOPTIM_STATUS_SUCCESS;
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits for the exchange stream, at most options.timeout_seconds (0: forever), polling NCCL's
 * asynchronous error meanwhile (a peer gone ends the wait with its text). Past the deadline: TIMEOUT,
 * the exchange still enqueued (the caller must abort the communicator). */
static cuoptimStatus_t wait_exchange(cuoptimOptimizer_t opt, const char *caller, const char *stage) {
  NcclComm *m = nccl_of(opt);
  double timeout = opt->comm->options.timeout_seconds;
  if (timeout == 0.0) {
    cudaError_t err = cudaStreamSynchronize(m->exchange_stream);
    return err == cudaSuccess ? CUOPTIM_STATUS_SUCCESS : cuda_fail(err, caller, stage);
  }
  double deadline = now_seconds() + timeout;
  for (;;) {
    cudaError_t err = cudaStreamQuery(m->exchange_stream);
    if (err == cudaSuccess) return CUOPTIM_STATUS_SUCCESS;
    if (err != cudaErrorNotReady) return cuda_fail(err, caller, stage);
    (void)cudaGetLastError();
    CUOPTIM_CHECK(check_async(m->comm, caller));
    if (now_seconds() > deadline)
      return cuoptim_error(CUOPTIM_STATUS_TIMEOUT,
                           "%s: %s: the other ranks did not join within %g s (rank %d of %d); the communicator must "
                           "be aborted (ncclCommAbort)",
                           caller, stage, timeout, opt->comm->rank, opt->comm->world);
    struct timespec pause = {0, 20000}; /* 20 us */
    nanosleep(&pause, NULL);
  }
}

static cuoptimStatus_t nccl_allgather_host(cuoptimOptimizer_t opt, const void *send, void *recv, size_t bytes,
                                           const char *stage) {
  static const char *caller = "cuoptimApplyGradients";
  NcclComm *m = nccl_of(opt);
  const cuoptimComm *c = opt->comm;
  DeviceScope scope;
  CUOPTIM_CHECK(enter_device(opt->device, &scope, caller));
  cuoptimStatus_t status = reserve_exchange(m, bytes * (size_t)c->world, stage);
  char *mine = NULL; /* this rank's place in the exchange buffer: in place for ncclAllGather */
  cudaError_t err = cudaSuccess;
  if (status == CUOPTIM_STATUS_SUCCESS) {
    mine = (char *)m->exchange + bytes * (size_t)c->rank;
    err = cudaMemcpyAsync(mine, send, bytes, cudaMemcpyHostToDevice, m->exchange_stream);
    if (err != cudaSuccess) status = cuda_fail(err, caller, stage);
  }
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = settle(m->comm, ncclAllGather(mine, m->exchange, bytes, ncclUint8, m->comm, m->exchange_stream), caller,
                    "ncclAllGather (the variable table check)");
  if (status == CUOPTIM_STATUS_SUCCESS) {
    err = cudaMemcpyAsync(recv, m->exchange, bytes * (size_t)c->world, cudaMemcpyDeviceToHost, m->exchange_stream);
    status = err == cudaSuccess ? wait_exchange(opt, caller, stage) : cuda_fail(err, caller, stage);
  }
  if (status == CUOPTIM_STATUS_SUCCESS) status = check_async(m->comm, caller);
  leave_device(&scope);
  return status;
}

/* ---- the aggregate stage ------------------------------------------------------------------ */

static ncclDataType_t nccl_type(cuoptimDtype_t dtype) {
  return dtype == CUOPTIM_FLOAT32 ? ncclFloat32 : dtype == CUOPTIM_FLOAT16 ? ncclFloat16 : ncclBfloat16;
}

enum { PASS_REDUCE, PASS_SPREAD };

/* The calls of variable k in one pass: reduce-scatter and reduce, or all-gather and broadcast. */
static cuoptimStatus_t issue(cuoptimOptimizer_t opt, int k, void *gradient, cuoptimDtype_t dtype, int pass,
                             cuoptimStream_t stream) {
  static const char *caller = "cuoptimApplyGradients";
  const cuoptimComm *c = opt->comm;
  ncclComm_t comm = nccl_of(opt)->comm;
  const size_t count = opt->variables[k].count, es = cuoptim_dtype_size(dtype);
  const size_t share = count / (size_t)c->world, head = share * (size_t)c->world, tail = count - head;
  const ncclDataType_t type = nccl_type(dtype);
  /* The tail's root: spread over the ranks, or with sharded state the last rank, whose share it
   * is (cuoptim_comm_share). */
  const int root = cuoptim_comm_sharded(opt) ? c->world - 1 : k % c->world;
  cudaStream_t s = (cudaStream_t)stream;
  char *base = gradient; /* the contract: the buffer receives the sum */
  char *segment = base + (size_t)c->rank * share * es, *rest = base + head * es;
  ncclResult_t result = ncclSuccess;
  if (pass == PASS_REDUCE) {
    if (share) result = ncclReduceScatter(base, segment, share, type, ncclSum, comm, s);
    if (share && result != ncclSuccess) return nccl_fail(result, caller, "aggregate: ncclReduceScatter");
    if (tail) result = ncclReduce(rest, rest, tail, type, ncclSum, root, comm, s);
    if (tail && result != ncclSuccess) return nccl_fail(result, caller, "aggregate: ncclReduce");
  } else {
    if (share) result = ncclAllGather(segment, base, share, type, comm, s);
    if (share && result != ncclSuccess) return nccl_fail(result, caller, "aggregate: ncclAllGather");
    if (tail) result = ncclBroadcast(rest, rest, tail, type, root, comm, s);
    if (tail && result != ncclSuccess) return nccl_fail(result, caller, "aggregate: ncclBroadcast");
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* What a bucket sums: the step's listed gradients, every variable's arena region, or (local
 * accumulation) every variable's accumulator. */
enum { SOURCE_STEP, SOURCE_ARENA, SOURCE_ACCUMULATORS };

/* One NCCL group: the calls of one pass for the buffers of variables [first, last) that `source`
 * names. The group is ended even after a failed call, so that NCCL's group state stays balanced. */
static cuoptimStatus_t run_pass(cuoptimOptimizer_t opt, int first, int last, int pass, int source,
                                cuoptimStream_t stream) {
  static const char *caller = "cuoptimApplyGradients";
  ncclComm_t comm = nccl_of(opt)->comm;
  ncclResult_t result = ncclGroupStart();
  if (result != ncclSuccess) return nccl_fail(result, caller, "aggregate: ncclGroupStart");
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  for (int k = first; k < last && status == CUOPTIM_STATUS_SUCCESS; k++) {
    const cuoptimStepGradient *g = &opt->step_grads[k];
    if (source == SOURCE_ARENA)
      status = issue(opt, k, opt->variables[k].arena_grad, opt->variables[k].dtype, pass, stream);
    else if (source == SOURCE_ACCUMULATORS)
      status = issue(opt, k, opt->variables[k].accumulator, CUOPTIM_FLOAT32, pass, stream);
    else if (g->grad)
      status = issue(opt, k, (void *)(uintptr_t)g->listed, g->dtype, pass, stream);
  }
  result = ncclGroupEnd();
  if (status != CUOPTIM_STATUS_SUCCESS) return status;
  return settle(comm, result, caller, pass == PASS_REDUCE ? "aggregate: ncclGroupEnd (reduce-scatter and reduce)"
                                                          : "aggregate: ncclGroupEnd (all-gather and broadcast)");
}

static cuoptimStatus_t reduce_bucket(cuoptimOptimizer_t opt, int first, int last, int source, cuoptimStream_t stream) {
  int any = source != SOURCE_STEP;
  for (int k = first; k < last; k++) any |= opt->step_grads[k].grad != NULL;
  if (!any) return CUOPTIM_STATUS_SUCCESS;
  CUOPTIM_CHECK(run_pass(opt, first, last, PASS_REDUCE, source, stream));
  /* Sharded state: each rank updates from its own share of the sums, where the reduce-scatter put
   * it (cuoptim_comm_prepare_step pointed the step there); nothing to spread. */
  if (cuoptim_comm_sharded(opt)) return CUOPTIM_STATUS_SUCCESS;
  return run_pass(opt, first, last, PASS_SPREAD, source, stream);
}

/* Every rank must list the same non-NULL gradients: unlike MPI's, this path cannot compare the
 * lists per step without a host exchange, which a captured step cannot make. */
/* ---- the gradient arena's buckets ---------------------------------------------------------- */

static int is_capturing(cuoptimStream_t stream) {
  enum cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing((cudaStream_t)stream, &capture) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return capture != cudaStreamCaptureStatusNone;
}

/* The bucket stream and the events, made at the first mark or bucket (never inside a capture:
 * a mark from a capturing stream starts nothing of its own). */
static cuoptimStatus_t reserve_buckets(cuoptimOptimizer_t opt, const char *caller) {
  NcclComm *m = nccl_of(opt);
  if (m->buckets) return CUOPTIM_STATUS_SUCCESS;
  int n = opt->num_variables, b = opt->num_buckets;
  m->marked = calloc((size_t)(n ? n : 1), sizeof *m->marked);
  m->has_mark = calloc((size_t)(n ? n : 1), 1);
  m->bucket_done = calloc((size_t)(b ? b : 1), sizeof *m->bucket_done);
  m->in_flight = calloc((size_t)(b ? b : 1), 1);
  if (!m->marked || !m->has_mark || !m->bucket_done || !m->in_flight)
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cudaError_t err = cudaStreamCreateWithFlags(&m->bucket_stream, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&m->started_from, cudaEventDisableTiming);
  for (int k = 0; k < n && err == cudaSuccess; k++) err = cudaEventCreateWithFlags(&m->marked[k], cudaEventDisableTiming);
  for (int i = 0; i < b && err == cudaSuccess; i++)
    err = cudaEventCreateWithFlags(&m->bucket_done[i], cudaEventDisableTiming);
  if (err != cudaSuccess) return cuda_fail(err, caller, "creating the gradient arena's stream and events");
  nvtxNameCudaStreamA(m->bucket_stream, "cuoptim NCCL gradient buckets");
  m->buckets = b;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t nccl_mark(cuoptimOptimizer_t opt, int variable, cuoptimStream_t stream) {
  static const char *caller = "cuoptimMarkGradientReady";
  if (opt->comm->world == 1 || !opt->comm->options.aggregate || is_capturing(stream)) return CUOPTIM_STATUS_SUCCESS;
  DeviceScope scope;
  CUOPTIM_CHECK(enter_device(opt->device, &scope, caller));
  NcclComm *m = nccl_of(opt);
  cuoptimStatus_t status = reserve_buckets(opt, caller);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    cudaError_t err = cudaEventRecord(m->marked[variable], (cudaStream_t)stream);
    if (err != cudaSuccess) status = cuda_fail(err, caller, "cudaEventRecord");
    else m->has_mark[variable] = 1;
  }
  leave_device(&scope);
  return status;
}

/* Bucket b's collectives: on the bucket stream, after every mark of its variables and the work
 * before this call on `stream`, so that they overlap what the caller enqueues next; or, when
 * `stream` is capturing a graph, on `stream` itself (the graph then holds them). */
static cuoptimStatus_t nccl_start_bucket(cuoptimOptimizer_t opt, int b, cuoptimStream_t stream) {
  static const char *caller = "cuoptimMarkGradientReady";
  int first = opt->bucket_first[b], last = opt->bucket_first[b + 1];
  if (is_capturing(stream)) return reduce_bucket(opt, first, last, SOURCE_ARENA, stream);
  DeviceScope scope;
  CUOPTIM_CHECK(enter_device(opt->device, &scope, caller));
  NcclComm *m = nccl_of(opt);
  cuoptimStatus_t status = reserve_buckets(opt, caller);
  cudaError_t err = cudaSuccess;
  if (status == CUOPTIM_STATUS_SUCCESS) {
    err = cudaEventRecord(m->started_from, (cudaStream_t)stream);
    if (err == cudaSuccess) err = cudaStreamWaitEvent(m->bucket_stream, m->started_from, 0);
    for (int k = first; k < last && err == cudaSuccess; k++)
      if (m->has_mark[k]) err = cudaStreamWaitEvent(m->bucket_stream, m->marked[k], 0);
    if (err != cudaSuccess) status = cuda_fail(err, caller, "ordering a bucket after its marks");
  }
  if (status == CUOPTIM_STATUS_SUCCESS) status = reduce_bucket(opt, first, last, SOURCE_ARENA, m->bucket_stream);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    err = cudaEventRecord(m->bucket_done[b], m->bucket_stream);
    if (err != cudaSuccess) status = cuda_fail(err, caller, "cudaEventRecord");
    else m->in_flight[b] = 1;
  }
  for (int k = first; k < last; k++) m->has_mark[k] = 0;
  leave_device(&scope);
  return status;
}

/* Gradient arena, in the step: every bucket has been started (cuoptim_comm_begin_step); the step
 * waits for those still in flight on the bucket stream. */
static cuoptimStatus_t finish_arena(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  NcclComm *m = nccl_of(opt);
  if (!m->buckets) return CUOPTIM_STATUS_SUCCESS; /* every bucket ran on the step's capturing stream */
  int capturing = is_capturing(stream);
  for (int b = 0; b < m->buckets; b++) {
    if (!m->in_flight[b]) continue;
    if (capturing)
      return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                           "cuoptimApplyGradients: a bucket was started by a mark outside the graph this step is "
                           "captured into: mark the gradients on the capturing stream");
    cudaError_t err = cudaStreamWaitEvent((cudaStream_t)stream, m->bucket_done[b], 0);
    if (err != cudaSuccess) return cuda_fail(err, "cuoptimApplyGradients", "waiting for a bucket's collectives");
    m->in_flight[b] = 0;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The step's gradients or every accumulator, in buckets of about options.bucket_bytes. */
static cuoptimStatus_t reduce_in_buckets(cuoptimOptimizer_t opt, int source, cuoptimStream_t stream) {
  size_t bucket = opt->comm->options.bucket_bytes, filled = 0;
  int first = 0;
  for (int k = 0; k < opt->num_variables; k++) {
    const cuoptimStepGradient *g = &opt->step_grads[k];
    if (source == SOURCE_ACCUMULATORS)
      filled += opt->variables[k].count * sizeof(float);
    else if (g->grad)
      filled += opt->variables[k].count * cuoptim_dtype_size(g->dtype);
    if (filled >= bucket || k + 1 == opt->num_variables) {
      CUOPTIM_CHECK(reduce_bucket(opt, first, k + 1, source, stream));
      first = k + 1;
      filled = 0;
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t nccl_aggregate(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (opt->grad_arena) return finish_arena(opt, stream);
  return reduce_in_buckets(opt, SOURCE_STEP, stream);
}

/* Local accumulation: the accumulators summed in place on the step's stream, before its
 * gradients (the same calls as theirs: every rank ends with the same bytes). */
static cuoptimStatus_t nccl_reduce_accumulators(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  return reduce_in_buckets(opt, SOURCE_ACCUMULATORS, stream);
}

/* ---- sharded state ------------------------------------------------------------------------- */

/* In one group: every share of `count` elements of `dtype` at `base` gathered in place, the equal
 * heads by all-gather, the last rank's rest by broadcast from it (cuoptim_comm_share). */
static cuoptimStatus_t issue_gather(cuoptimOptimizer_t opt, void *base, size_t count, cuoptimDtype_t dtype,
                                    cudaStream_t s, const char *caller) {
  const cuoptimComm *c = opt->comm;
  ncclComm_t comm = nccl_of(opt)->comm;
  const size_t es = cuoptim_dtype_size(dtype), share = count / (size_t)c->world, head = share * (size_t)c->world;
  char *b = base;
  ncclResult_t result = ncclSuccess;
  if (share) result = ncclAllGather(b + (size_t)c->rank * share * es, b, share, nccl_type(dtype), comm, s);
  if (share && result != ncclSuccess) return nccl_fail(result, caller, "ncclAllGather (the shards)");
  if (count > head) result = ncclBroadcast(b + head * es, b + head * es, count - head, nccl_type(dtype), c->world - 1, comm, s);
  if (count > head && result != ncclSuccess) return nccl_fail(result, caller, "ncclBroadcast (the last shard's rest)");
  return CUOPTIM_STATUS_SUCCESS;
}

/* After the update (or the EMA swap): every parameter gathered in its own type, on the step's
 * stream, in one NCCL group. */
static cuoptimStatus_t nccl_gather_parameters(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  static const char *caller = "cuoptimApplyGradients";
  DeviceScope scope;
  CUOPTIM_CHECK(enter_device(opt->device, &scope, caller));
  ncclResult_t result = ncclGroupStart();
  cuoptimStatus_t status = result == ncclSuccess ? CUOPTIM_STATUS_SUCCESS
                                                 : nccl_fail(result, caller, "ncclGroupStart (gathering the parameters)");
  if (result == ncclSuccess) {
    for (int k = 0; k < opt->num_variables && status == CUOPTIM_STATUS_SUCCESS; k++) {
      const cuoptimVariableRec *v = &opt->variables[k];
      status = issue_gather(opt, v->param, v->count, v->dtype, (cudaStream_t)stream, caller);
    }
    result = ncclGroupEnd();
    if (status == CUOPTIM_STATUS_SUCCESS)
      status = settle(nccl_of(opt)->comm, result, caller, "ncclGroupEnd (gathering the parameters)");
  }
  leave_device(&scope);
  return status;
}

/* The buffer of every rank's per-variable sums, made at the first sharded step (which builds the
 * state and is never captured). */
static cuoptimStatus_t reserve_gathered(cuoptimOptimizer_t opt, const char *caller) {
  NcclComm *m = nccl_of(opt);
  if (m->gathered) return CUOPTIM_STATUS_SUCCESS;
  size_t bytes = (size_t)opt->num_variables * sizeof(cuoptimTensorScalars) * (size_t)opt->comm->world;
  cudaError_t err = cudaMalloc((void **)&m->gathered, bytes ? bytes : 1);
  if (err != cudaSuccess) {
    m->gathered = NULL;
    (void)cudaGetLastError();
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: cannot allocate %zu bytes for the shards' norms", caller,
                         bytes);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* The inspect partials of every rank gathered on the step's stream, then summed in rank order by a
 * kernel: no host read, so a sharded step stays capturable. */
static cuoptimStatus_t nccl_combine_inspect(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  static const char *caller = "cuoptimApplyGradients";
  NcclComm *m = nccl_of(opt);
  const cuoptimComm *c = opt->comm;
  size_t bytes = (size_t)opt->num_variables * sizeof(cuoptimTensorScalars);
  CUOPTIM_CHECK(reserve_gathered(opt, caller));
  ncclResult_t result = ncclAllGather(opt->tensors, m->gathered, bytes, ncclUint8, m->comm, (cudaStream_t)stream);
  CUOPTIM_CHECK(settle(m->comm, result, caller, "ncclAllGather (the shards' norms)"));
  int err = cuoptim_launch_combine_shards(cuoptim_cuda_device_step(opt), m->gathered, c->world, stream);
  if (err != cudaSuccess) return cuda_fail((cudaError_t)err, caller, "the kernel combining the shards' norms");
  return CUOPTIM_STATUS_SUCCESS;
}

/* Lamb's norms: the same exchange as the inspect sums, then a kernel adds them and forms the
 * trust ratios; no host read. */
static cuoptimStatus_t nccl_combine_lamb(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  static const char *caller = "cuoptimApplyGradients";
  NcclComm *m = nccl_of(opt);
  const cuoptimComm *c = opt->comm;
  CUOPTIM_CHECK(reserve_gathered(opt, caller));
  size_t bytes = (size_t)opt->num_variables * sizeof(cuoptimTensorScalars);
  ncclResult_t result = ncclAllGather(opt->tensors, m->gathered, bytes, ncclUint8, m->comm, (cudaStream_t)stream);
  CUOPTIM_CHECK(settle(m->comm, result, caller, "ncclAllGather (the shards' Lamb norms)"));
  int err = cuoptim_launch_combine_lamb(cuoptim_cuda_device_step(opt), m->gathered, c->world, stream);
  if (err != cudaSuccess) return cuda_fail((cudaError_t)err, caller, "the kernel combining the shards' Lamb norms");
  return CUOPTIM_STATUS_SUCCESS;
}

/* cuoptimGetWeights of sharded state: the shares gathered through a device buffer on the exchange
 * stream. */
static cuoptimStatus_t nccl_allgather_shares_host(cuoptimOptimizer_t opt, const void *share, void *full, size_t count,
                                                  size_t element_bytes, const char *stage) {
  static const char *caller = "cuoptimGetWeights";
  NcclComm *m = nccl_of(opt);
  const cuoptimComm *c = opt->comm;
  if (element_bytes != sizeof(float))
    return cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR, "%s: %s: %zu-byte elements", caller, stage, element_bytes);
  DeviceScope scope;
  CUOPTIM_CHECK(enter_device(opt->device, &scope, caller));
  size_t offset, length;
  cuoptim_comm_share(count, c->world, c->rank, &offset, &length);
  cuoptimStatus_t status = reserve_exchange(m, count * element_bytes, stage);
  cudaError_t err = cudaSuccess;
  if (status == CUOPTIM_STATUS_SUCCESS) {
    err = cudaMemcpyAsync((char *)m->exchange + offset * element_bytes, share, length * element_bytes,
                          cudaMemcpyHostToDevice, m->exchange_stream);
    if (err != cudaSuccess) status = cuda_fail(err, caller, stage);
  }
  if (status == CUOPTIM_STATUS_SUCCESS) {
    ncclResult_t result = ncclGroupStart();
    if (result == ncclSuccess) {
      status = issue_gather(opt, m->exchange, count, CUOPTIM_FLOAT32, m->exchange_stream, caller);
      result = ncclGroupEnd();
    }
    if (status == CUOPTIM_STATUS_SUCCESS) status = settle(m->comm, result, caller, stage);
  }
  if (status == CUOPTIM_STATUS_SUCCESS) {
    err = cudaMemcpyAsync(full, m->exchange, count * element_bytes, cudaMemcpyDeviceToHost, m->exchange_stream);
    if (err == cudaSuccess) err = cudaStreamSynchronize(m->exchange_stream);
    if (err != cudaSuccess) status = cuda_fail(err, caller, stage);
  }
  if (status == CUOPTIM_STATUS_SUCCESS) status = check_async(m->comm, caller);
  leave_device(&scope);
  return status;
}

static size_t nccl_buffer_bytes(cuoptimOptimizer_t opt) {
  const NcclComm *m = nccl_of(opt);
  return m && m->gathered ? (size_t)opt->num_variables * sizeof(cuoptimTensorScalars) * (size_t)opt->comm->world : 0;
}

static const cuoptimCommOps nccl_comm = {
    .library = "NCCL",
    .attach = nccl_attach,
    .detach = nccl_detach,
    .allgather_host = nccl_allgather_host,
    .allgather_shares_host = nccl_allgather_shares_host,
    .aggregate = nccl_aggregate,
    .reduce_accumulators = nccl_reduce_accumulators,
    .gather_parameters = nccl_gather_parameters,
    .start_bucket = nccl_start_bucket,
    .mark = nccl_mark,
    .shares_in_place = 1,
    .combine_inspect = nccl_combine_inspect,
    .combine_lamb = nccl_combine_lamb,
    .buffer_bytes = nccl_buffer_bytes,
    .poll = nccl_poll,
};

const cuoptimCommOps *const cuoptim_nccl_comm = &nccl_comm;

#endif /* CUOPTIM_HAVE_NCCL */
