/* MPI for the host backend's data-parallel path. The optimizer works on its own duplicate of the
 * caller's communicator, so its collectives never match the caller's. Each gradient is summed as
 * a reduce-scatter (every rank sums its share, cuoptim_comm_share) followed by an all-gather into
 * the gradient buffer: each element is summed by one rank only, so every rank ends with the same
 * bytes whatever algorithm MPI picks. Waits poll non-blocking requests against the timeout. */
#include "internal.h"

#ifdef CUOPTIM_HAVE_MPI

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  MPI_Comm comm;      /* cuoptim's duplicate */
  MPI_Datatype half;  /* two bytes: float16 and bfloat16 elements */
  MPI_Op sum_float16, sum_bfloat16;
  void *scratch;      /* this rank's shares of a bucket */
  size_t scratch_bytes;
  char *shares;       /* sharded state: this rank's share of every gradient, 4 bytes per element */
  size_t *share_offsets; /* byte offset of each variable's share in `shares` */
  int *counts, *displs; /* per rank, for the v-collectives */
  MPI_Request *requests;
  int request_capacity;
  MPI_Request *arena_requests; /* gradient arena: each variable's reduce-scatter in flight */
} MpiComm;

static MpiComm *mpi_of(cuoptimOptimizer_t opt) { return (MpiComm *)opt->comm->impl; }

static cuoptimStatus_t mpi_fail(int code, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
  return cuoptim_error(CUOPTIM_STATUS_MPI_ERROR, "%s: %s", what, text);
}

/* Element sums of half-precision values, rounded to the element type after each addition (the
 * sum a float16 all-reduce forms). */
static void sum_float16(void *in, void *inout, int *len, MPI_Datatype *type) {
  const uint16_t *a = in;
  uint16_t *b = inout;
  for (int i = 0; i < *len; i++) b[i] = cuoptim_float_to_half(cuoptim_half_to_float(a[i]) + cuoptim_half_to_float(b[i]));
}

static void sum_bfloat16(void *in, void *inout, int *len, MPI_Datatype *type) {
  const uint16_t *a = in;
  uint16_t *b = inout;
  for (int i = 0; i < *len; i++)
    b[i] = cuoptim_float_to_bfloat16(cuoptim_bfloat16_to_float(a[i]) + cuoptim_bfloat16_to_float(b[i]));
}

static void free_mpi(MpiComm *m) {
  if (m->sum_float16 != MPI_OP_NULL) MPI_Op_free(&m->sum_float16);
  if (m->sum_bfloat16 != MPI_OP_NULL) MPI_Op_free(&m->sum_bfloat16);
  if (m->half != MPI_DATATYPE_NULL) MPI_Type_free(&m->half);
  if (m->comm != MPI_COMM_NULL) MPI_Comm_free(&m->comm);
  free(m->scratch);
  free(m->shares);
  free(m->share_offsets);
  free(m->counts);
  free(m->displs);
  free(m->requests);
  free(m->arena_requests);
  free(m);
}

static void mpi_detach(cuoptimOptimizer_t opt, cuoptimComm *c) {
  MpiComm *m = c->impl;
  if (!m) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  /* After a timeout a request may still write into the scratch: keep it (a bounded leak) rather
   * than hand MPI freed memory. Without MPI any more, nothing can be freed through it. */
  if (c->broken || finalized) return;
  free_mpi(m);
  c->impl = NULL;
}

static double now_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Waits for `n` requests, at most `timeout` seconds (0: forever); past it TIMEOUT, naming `caller`
 * and `stage`, the requests left pending. */
static cuoptimStatus_t wait_requests(double timeout, int n, MPI_Request *requests, const char *caller,
                                     const char *stage) {
  if (timeout == 0.0) {
    int code = MPI_Waitall(n, requests, MPI_STATUSES_IGNORE);
    return code == MPI_SUCCESS ? CUOPTIM_STATUS_SUCCESS : mpi_fail(code, stage);
  }
  double deadline = now_seconds() + timeout;
  for (;;) {
    int done = 0;
    int code = MPI_Testall(n, requests, &done, MPI_STATUSES_IGNORE);
    if (code != MPI_SUCCESS) return mpi_fail(code, stage);
    if (done) return CUOPTIM_STATUS_SUCCESS;
    if (now_seconds() > deadline)
      return cuoptim_error(CUOPTIM_STATUS_TIMEOUT,
                           "%s: %s: the other ranks did not join within %g s; the communicator must be aborted", caller,
                           stage, timeout);
    struct timespec pause = {0, 20000}; /* 20 us: progress without a busy core */
    nanosleep(&pause, NULL);
  }
}

/* Waits for `n` requests of a step, at most options.timeout_seconds (0: forever). */
static cuoptimStatus_t wait_all(cuoptimOptimizer_t opt, int n, MPI_Request *requests, const char *stage) {
  cuoptimStatus_t status = wait_requests(opt->comm->options.timeout_seconds, n, requests, "cuoptimApplyGradients", stage);
  if (status == CUOPTIM_STATUS_TIMEOUT) {
    char message[1024]; /* the last-error text is rewritten: copied first */
    snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
    return cuoptim_error(CUOPTIM_STATUS_TIMEOUT, "%s (rank %d of %d)", message, opt->comm->rank, opt->comm->world);
  }
  return status;
}

static cuoptimStatus_t mpi_attach(cuoptimOptimizer_t opt, cuoptimComm *c, const void *handle, const char *caller) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE, "%s: MPI is %s: call MPI_Init first", caller,
                         finalized ? "finalized" : "not initialized");
  MPI_Comm given = *(const MPI_Comm *)handle;
  if (given == MPI_COMM_NULL)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: *communicator is MPI_COMM_NULL", caller);
  MpiComm *m = calloc(1, sizeof *m);
  if (!m) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  m->comm = MPI_COMM_NULL;
  m->half = MPI_DATATYPE_NULL;
  m->sum_float16 = m->sum_bfloat16 = MPI_OP_NULL;
  /* Errors come back as codes (cuoptim turns them into statuses), not as an abort. */
  /* The duplicate is a collective: waited for at most options.timeout_seconds, as a step's. */
  MPI_Request request = MPI_REQUEST_NULL;
  int code = MPI_Comm_idup(given, &m->comm, &request);
  if (code == MPI_SUCCESS) {
    cuoptimStatus_t status = wait_requests(c->options.timeout_seconds, 1, &request, caller, "MPI_Comm_idup");
    if (status == CUOPTIM_STATUS_TIMEOUT) return status; /* m stays: MPI may still write m->comm */
    if (status != CUOPTIM_STATUS_SUCCESS) {
      free_mpi(m);
      return status;
    }
  }
  if (code == MPI_SUCCESS) code = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN);
  if (code == MPI_SUCCESS) code = MPI_Comm_rank(m->comm, &c->rank);
  if (code == MPI_SUCCESS) code = MPI_Comm_size(m->comm, &c->world);
  if (code == MPI_SUCCESS) code = MPI_Type_contiguous(2, MPI_BYTE, &m->half);
  if (code == MPI_SUCCESS) code = MPI_Type_commit(&m->half);
  if (code == MPI_SUCCESS) code = MPI_Op_create(sum_float16, 1, &m->sum_float16);
  if (code == MPI_SUCCESS) code = MPI_Op_create(sum_bfloat16, 1, &m->sum_bfloat16);
  if (code == MPI_SUCCESS) {
    m->counts = calloc((size_t)c->world, sizeof *m->counts);
    m->displs = calloc((size_t)c->world, sizeof *m->displs);
  }
  if (code != MPI_SUCCESS || !m->counts || !m->displs) {
    free_mpi(m);
    if (code != MPI_SUCCESS) return mpi_fail(code, caller);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  }
  c->impl = m;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t mpi_allgather_host(cuoptimOptimizer_t opt, const void *send, void *recv, size_t bytes,
                                          const char *stage) {
  if (bytes > INT32_MAX)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "cuoptim: %s: %zu bytes per rank is more than MPI counts", stage,
                         bytes);
  MPI_Request request;
  int code = MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, mpi_of(opt)->comm, &request);
  if (code != MPI_SUCCESS) return mpi_fail(code, stage);
  return wait_all(opt, 1, &request, stage);
}

static cuoptimStatus_t reserve(cuoptimOptimizer_t opt, size_t scratch_bytes, int requests) {
  MpiComm *m = mpi_of(opt);
  if (scratch_bytes > m->scratch_bytes) {
    void *p = realloc(m->scratch, scratch_bytes);
    if (!p) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
    m->scratch = p;
    m->scratch_bytes = scratch_bytes;
  }
  if (requests > m->request_capacity) {
    MPI_Request *p = realloc(m->requests, (size_t)requests * sizeof *p);
    if (!p) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
    m->requests = p;
    m->request_capacity = requests;
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static void element_type(const MpiComm *m, cuoptimDtype_t dtype, MPI_Datatype *type, MPI_Op *op) {
  *type = dtype == CUOPTIM_FLOAT32 ? MPI_FLOAT : m->half;
  *op = dtype == CUOPTIM_FLOAT32 ? MPI_SUM : dtype == CUOPTIM_FLOAT16 ? m->sum_float16 : m->sum_bfloat16;
}

/* Whether MPI can count a gradient of `count` elements (an int per collective). */
static cuoptimStatus_t check_countable(size_t count) {
  if (count > INT32_MAX)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED,
                         "cuoptimApplyGradients: a gradient of %zu elements is more than MPI counts (2^31 - 1)", count);
  return CUOPTIM_STATUS_SUCCESS;
}

/* The counts and offsets of every rank's share of `count` elements (check_countable passed). */
static void fill_shares(cuoptimOptimizer_t opt, size_t count) {
  MpiComm *m = mpi_of(opt);
  int world = opt->comm->world;
  for (int r = 0; r < world; r++) {
    size_t offset, length;
    cuoptim_comm_share(count, world, r, &offset, &length);
    m->counts[r] = (int)length;
    m->displs[r] = (int)offset;
  }
}

/* Sharded state: the buffer that holds this rank's share of every gradient, laid out once (the
 * variables are fixed once the state is built). */
static cuoptimStatus_t reserve_shares(cuoptimOptimizer_t opt) {
  MpiComm *m = mpi_of(opt);
  if (m->shares) return CUOPTIM_STATUS_SUCCESS;
  size_t n = (size_t)opt->num_variables, total = 0;
  m->share_offsets = malloc((n ? n : 1) * sizeof *m->share_offsets);
  if (!m->share_offsets) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
  for (size_t k = 0; k < n; k++) {
    m->share_offsets[k] = total;
    total += (opt->variables[k].local_count * sizeof(float) + 15) / 16 * 16;
  }
  m->shares = malloc(total ? total : 16);
  if (!m->shares) {
    free(m->share_offsets);
    m->share_offsets = NULL;
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* What a bucket sums for variable k: the step's gradient as listed, or (local accumulation) the
 * accumulator; NULL when there is nothing. */
static void *bucket_buffer(cuoptimOptimizer_t opt, int k, int accumulators, cuoptimDtype_t *dtype) {
  if (accumulators) {
    *dtype = CUOPTIM_FLOAT32;
    return opt->variables[k].accumulator;
  }
  *dtype = opt->step_grads[k].dtype;
  return opt->step_grads[k].grad ? (void *)(uintptr_t)opt->step_grads[k].listed : NULL;
}

/* One bucket, variables [first, last): reduce-scatter every gradient (or accumulator) into this
 * rank's shares; then, unsharded, all-gather the sums back into the buffers, or, sharded, point
 * the step's gradients at the shares. */
static cuoptimStatus_t reduce_bucket(cuoptimOptimizer_t opt, int first, int last, int accumulators) {
  MpiComm *m = mpi_of(opt);
  const cuoptimComm *c = opt->comm;
  int sharded = cuoptim_comm_sharded(opt);
  int n = 0;
  size_t scratch_bytes = 0;
  for (int k = first; k < last; k++) {
    cuoptimDtype_t dtype;
    if (!bucket_buffer(opt, k, accumulators, &dtype)) continue;
    size_t offset, length;
    cuoptim_comm_share(opt->variables[k].count, c->world, c->rank, &offset, &length);
    scratch_bytes += length * cuoptim_dtype_size(dtype);
    n++;
  }
  if (n == 0) return CUOPTIM_STATUS_SUCCESS;
  CUOPTIM_CHECK(reserve(opt, sharded ? 0 : scratch_bytes, n));
  for (int pass = 0; pass < (sharded ? 1 : 2); pass++) {
    const char *stage = pass == 0 ? "aggregate (reduce-scatter)" : "aggregate (all-gather)";
    char *share = m->scratch;
    int issued = 0;
    for (int k = first; k < last; k++) {
      cuoptimDtype_t dtype;
      void *buffer = bucket_buffer(opt, k, accumulators, &dtype);
      if (!buffer) continue;
      if (sharded) share = m->shares + m->share_offsets[k];
      fill_shares(opt, opt->variables[k].count);
      MPI_Datatype type;
      MPI_Op op;
      element_type(m, dtype, &type, &op);
      int code = pass == 0 ? MPI_Ireduce_scatter(buffer, share, m->counts, type, op, m->comm, &m->requests[issued])
                           : MPI_Iallgatherv(share, m->counts[c->rank], type, buffer, m->counts, m->displs, type,
                                             m->comm, &m->requests[issued]);
      if (code != MPI_SUCCESS) return mpi_fail(code, stage);
      issued++;
      share += (size_t)m->counts[c->rank] * cuoptim_dtype_size(dtype);
    }
    CUOPTIM_CHECK(wait_all(opt, issued, m->requests, stage));
  }
  if (sharded)
    for (int k = first; k < last; k++)
      if (opt->step_grads[k].grad) opt->step_grads[k].grad = m->shares + m->share_offsets[k];
  return CUOPTIM_STATUS_SUCCESS;
}

/* Every variable's buffer summed, in buckets of about options.bucket_bytes. */
static cuoptimStatus_t reduce_in_buckets(cuoptimOptimizer_t opt, int accumulators) {
  size_t bucket = opt->comm->options.bucket_bytes, filled = 0;
  int first = 0;
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimDtype_t dtype;
    if (bucket_buffer(opt, k, accumulators, &dtype)) filled += opt->variables[k].count * cuoptim_dtype_size(dtype);
    if (filled >= bucket || k + 1 == opt->num_variables) {
      CUOPTIM_CHECK(reduce_bucket(opt, first, k + 1, accumulators));
      first = k + 1;
      filled = 0;
    }
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* Local accumulation: the accumulators' sums, on every rank. */
static cuoptimStatus_t mpi_reduce_accumulators(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  for (int k = 0; k < opt->num_variables; k++) CUOPTIM_CHECK(check_countable(opt->variables[k].count));
  return reduce_in_buckets(opt, 1);
}

/* Sharded state: each rank updated its share of every parameter; all of them gathered in place,
 * in the parameter's own type (half-precision parameters travel as half). */
static cuoptimStatus_t mpi_gather_parameters(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  MpiComm *m = mpi_of(opt);
  static const char *stage = "aggregate (all-gather of the parameters)";
  int n = opt->num_variables, issued = 0;
  CUOPTIM_CHECK(reserve(opt, 0, n));
  for (int k = 0; k < n; k++) {
    const cuoptimVariableRec *v = &opt->variables[k];
    CUOPTIM_CHECK(check_countable(v->count));
    fill_shares(opt, v->count);
    MPI_Datatype type;
    MPI_Op op;
    element_type(m, v->dtype, &type, &op);
    int code = MPI_Iallgatherv(MPI_IN_PLACE, 0, type, v->param, m->counts, m->displs, type, m->comm,
                               &m->requests[issued]);
    if (code != MPI_SUCCESS) return mpi_fail(code, stage);
    issued++;
  }
  return wait_all(opt, issued, m->requests, stage);
}

static cuoptimStatus_t mpi_allgather_shares_host(cuoptimOptimizer_t opt, const void *share, void *full, size_t count,
                                                 size_t element_bytes, const char *stage) {
  MpiComm *m = mpi_of(opt);
  const cuoptimComm *c = opt->comm;
  if (count > INT32_MAX / element_bytes)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "cuoptim: %s: %zu elements are more than MPI counts", stage,
                         count);
  for (int r = 0; r < c->world; r++) {
    size_t offset, length;
    cuoptim_comm_share(count, c->world, r, &offset, &length);
    m->counts[r] = (int)(length * element_bytes);
    m->displs[r] = (int)(offset * element_bytes);
  }
  MPI_Request request;
  int code = MPI_Iallgatherv(share, m->counts[c->rank], MPI_BYTE, full, m->counts, m->displs, MPI_BYTE, m->comm,
                             &request);
  if (code != MPI_SUCCESS) return mpi_fail(code, stage);
  return wait_all(opt, 1, &request, stage);
}

/* What a rank has for variable k this step: 0 no gradient, else the gradient's dtype + 1. */
static uint8_t gradient_code(const cuoptimOptimizer_t opt, int k) {
  const cuoptimStepGradient *g = &opt->step_grads[k];
  return g->grad ? (uint8_t)(g->dtype + 1) : 0;
}

/* "a float32 gradient", "a bfloat16 one" (after another rank's), "no gradient" or "none". */
static void describe_gradient(char *out, size_t size, uint8_t code, int second, int other_has_one) {
  if (code == 0)
    snprintf(out, size, "%s", second ? "none" : "no gradient");
  else
    snprintf(out, size, "a %s %s", cuoptim_dtype_name((cuoptimDtype_t)(code - 1)),
             second && other_has_one ? "one" : "gradient");
}

/* The ranks' lists differ: every rank learns every rank's codes and names the same first
 * variable where a rank differs from rank 0. */
static cuoptimStatus_t name_differing_gradient(cuoptimOptimizer_t opt) {
  const cuoptimComm *c = opt->comm;
  size_t n = (size_t)opt->num_variables; /* the same on every rank: the tables were checked */
  uint8_t *mine = malloc(n), *all = malloc((size_t)c->world * n);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (!mine || !all) status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
  for (size_t k = 0; status == CUOPTIM_STATUS_SUCCESS && k < n; k++) mine[k] = gradient_code(opt, (int)k);
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = mpi_allgather_host(opt, mine, all, n, "aggregate (gradient list check)");
  for (size_t k = 0; status == CUOPTIM_STATUS_SUCCESS && k < n; k++)
    for (int r = 1; r < c->world; r++) {
      uint8_t first = all[k], other = all[(size_t)r * n + k];
      if (other == first) continue;
      char a[64], b[64];
      describe_gradient(a, sizeof a, first, 0, 0);
      describe_gradient(b, sizeof b, other, 1, first != 0);
      status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             "cuoptimApplyGradients: the ranks pass different gradients in this step: variable %zu "
                             "(\"%s\") has %s on rank 0 but %s on rank %d (every rank must list the same non-NULL "
                             "gradients, of the same dtypes)",
                             k, opt->variables[k].name, a, b, r);
      goto done;
    }
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR,
                           "cuoptimApplyGradients: the gradient list hashes differ but no gradient does");
done:
  free(mine);
  free(all);
  return status;
}

/* Before any gradient moves, the ranks compare which variables have one this step and of what
 * type: a difference would pair unrelated collectives. One small exchange per step (and a second
 * one, to name the variable, only when they differ). */
static cuoptimStatus_t check_step_gradients(cuoptimOptimizer_t opt) {
  const cuoptimComm *c = opt->comm;
  uint64_t h = 0xcbf29ce484222325ull;
  for (int k = 0; k < opt->num_variables; k++) h = (h ^ gradient_code(opt, k)) * 0x100000001b3ull;
  uint64_t *all = malloc((size_t)c->world * sizeof *all);
  if (!all) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
  cuoptimStatus_t status = mpi_allgather_host(opt, &h, all, sizeof h, "aggregate (gradient list check)");
  int differ = 0;
  for (int r = 1; status == CUOPTIM_STATUS_SUCCESS && r < c->world; r++) differ |= all[r] != all[0];
  free(all);
  if (status == CUOPTIM_STATUS_SUCCESS && differ) status = name_differing_gradient(opt);
  return status;
}

/* Gradient arena: the reduce-scatter of every gradient of bucket b (the whole arena region of
 * each of its variables, listed in the step or not) into this rank's shares; the step finishes it. */
static cuoptimStatus_t mpi_start_bucket(cuoptimOptimizer_t opt, int b, cuoptimStream_t stream) {
  MpiComm *m = mpi_of(opt);
  CUOPTIM_CHECK(reserve_shares(opt));
  if (!m->arena_requests) {
    m->arena_requests = malloc((size_t)opt->num_variables * sizeof *m->arena_requests);
    if (!m->arena_requests) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimMarkGradientReady: out of host memory");
    for (int k = 0; k < opt->num_variables; k++) m->arena_requests[k] = MPI_REQUEST_NULL;
  }
  for (int k = opt->bucket_first[b]; k < opt->bucket_first[b + 1]; k++) {
    const cuoptimVariableRec *v = &opt->variables[k];
    CUOPTIM_CHECK(check_countable(v->count));
    fill_shares(opt, v->count);
    MPI_Datatype type;
    MPI_Op op;
    element_type(m, v->dtype, &type, &op);
    int code = MPI_Ireduce_scatter(v->arena_grad, m->shares + m->share_offsets[k], m->counts, type, op, m->comm,
                                   &m->arena_requests[k]);
    if (code != MPI_SUCCESS) return mpi_fail(code, "aggregate (reduce-scatter of a bucket)");
  }
  return CUOPTIM_STATUS_SUCCESS;
}

/* Gradient arena: waits for every bucket's reduce-scatter, then gathers the sums back into the
 * arena (unsharded) or points the step at this rank's shares (sharded). */
static cuoptimStatus_t finish_arena(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  MpiComm *m = mpi_of(opt);
  const cuoptimComm *c = opt->comm;
  int n = opt->num_variables;
  CUOPTIM_CHECK(wait_all(opt, n, m->arena_requests, "aggregate (reduce-scatter)"));
  if (cuoptim_comm_sharded(opt)) {
    for (int k = 0; k < n; k++)
      if (opt->step_grads[k].grad) opt->step_grads[k].grad = m->shares + m->share_offsets[k];
    return CUOPTIM_STATUS_SUCCESS;
  }
  for (int k = 0; k < n; k++) {
    const cuoptimVariableRec *v = &opt->variables[k];
    CUOPTIM_CHECK(check_countable(v->count));
    fill_shares(opt, v->count);
    MPI_Datatype type;
    MPI_Op op;
    element_type(m, v->dtype, &type, &op);
    int code = MPI_Iallgatherv(m->shares + m->share_offsets[k], m->counts[c->rank], type, v->arena_grad, m->counts,
                               m->displs, type, m->comm, &m->arena_requests[k]);
    if (code != MPI_SUCCESS) return mpi_fail(code, "aggregate (all-gather)");
  }
  return wait_all(opt, n, m->arena_requests, "aggregate (all-gather)");
}

static cuoptimStatus_t mpi_aggregate(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  /* With an arena every bucket's reduce-scatter was issued before (cuoptim_comm_begin_step), so
   * this check comes after them on every rank. */
  CUOPTIM_CHECK(check_step_gradients(opt));
  /* Every gradient is checked before the first bucket moves: a step that fails changes nothing.
   * The lists are the same on every rank now, so every rank reaches the same verdict. */
  for (int k = 0; k < opt->num_variables; k++)
    if (opt->step_grads[k].grad) CUOPTIM_CHECK(check_countable(opt->variables[k].count));
  if (opt->grad_arena) return finish_arena(opt, stream);
  if (cuoptim_comm_sharded(opt)) CUOPTIM_CHECK(reserve_shares(opt));
  return reduce_in_buckets(opt, 0);
}

static size_t mpi_buffer_bytes(cuoptimOptimizer_t opt) {
  const MpiComm *m = mpi_of(opt);
  if (!m) return 0;
  size_t shares = 0;
  if (m->shares)
    for (int k = 0; k < opt->num_variables; k++) shares += (opt->variables[k].local_count * sizeof(float) + 15) / 16 * 16;
  return m->scratch_bytes + shares;
}

static const cuoptimCommOps mpi_comm = {
    .library = "MPI",
    .attach = mpi_attach,
    .detach = mpi_detach,
    .allgather_host = mpi_allgather_host,
    .allgather_shares_host = mpi_allgather_shares_host,
    .aggregate = mpi_aggregate,
    .reduce_accumulators = mpi_reduce_accumulators,
    .gather_parameters = mpi_gather_parameters,
    .start_bucket = mpi_start_bucket,
    .buffer_bytes = mpi_buffer_bytes,
};

const cuoptimCommOps *const cuoptim_mpi_comm = &mpi_comm;

#else

const cuoptimCommOps *const cuoptim_mpi_comm = NULL;

#endif
