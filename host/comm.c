/* Data-parallel communication, independent of the library that carries it: the communicator
 * options, attaching the caller's communicator, the first-step comparison of the ranks' variable
 * tables, and the aggregate stage's entry point. MPI (host backend) is in host/comm_mpi.c, NCCL
 * (CUDA backend) in host/comm_nccl.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "multi.h"

#define DEFAULT_BUCKET_BYTES ((size_t)25 << 20)
#define TABLE_MAGIC 0x63756f7074696d31ull /* "cuoptim1": a rank that is not cuoptim's fails it */

cuoptimStatus_t cuoptimCommOptionsInit(cuoptimCommOptions_t *options) {
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimCommOptionsInit", options);
  memset(options, 0, sizeof *options);
  options->aggregate = 1;
  options->reduce = CUOPTIM_REDUCE_MEAN;
  options->bucket_bytes = DEFAULT_BUCKET_BYTES;
  options->shard_state = 0;
  options->timeout_seconds = 0.0;
  options->accumulate_locally = 1;
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t validate_options(const cuoptimCommOptions_t *o, const char *caller) {
  if (o->aggregate != 0 && o->aggregate != 1)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: options->aggregate = %d: must be 0 or 1", caller,
                         o->aggregate);
  if (o->reduce != CUOPTIM_REDUCE_MEAN && o->reduce != CUOPTIM_REDUCE_SUM)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: options->reduce = %d is not a cuoptimReduceOp_t", caller,
                         (int)o->reduce);
  if (o->bucket_bytes == 0)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: options->bucket_bytes = 0: must be > 0", caller);
  if (o->shard_state != 0 && o->shard_state != 1)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: options->shard_state = %d: must be 0 or 1", caller,
                         o->shard_state);
  if (o->accumulate_locally != 0 && o->accumulate_locally != 1)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE, "%s: options->accumulate_locally = %d: must be 0 or 1", caller,
                         o->accumulate_locally);
  if (!(o->timeout_seconds >= 0.0) || isinf(o->timeout_seconds))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: options->timeout_seconds = %g: must be finite and >= 0 (0 waits forever)", caller,
                         o->timeout_seconds);
  return CUOPTIM_STATUS_SUCCESS;
}

void cuoptim_comm_release(cuoptimOptimizer_t opt) {
  if (!opt->comm) return;
  opt->comm->ops->detach(opt, opt->comm);
  free(opt->comm);
  opt->comm = NULL;
}

/* The rule constants that depend on the world: the mean's 1/world. A world of 1 multiplies by
 * nothing, so its steps are bit for bit those of an optimizer without communicator. */
static void set_world_scale(cuoptimOptimizer_t opt) {
  const cuoptimComm *c = opt->comm;
  int mean = c && c->options.aggregate && c->options.reduce == CUOPTIM_REDUCE_MEAN && c->world > 1;
  opt->prologue.rule.mean_over_ranks = mean;
  opt->prologue.rule.inv_world = mean ? (float)(1.0 / (double)c->world) : 1.0f;
}

/* Checks `options` for `opt` and attaches `communicator` into a new cuoptimComm (*out); changes
 * nothing of `opt`'s own (install_comm does). */
static cuoptimStatus_t attach_comm(cuoptimOptimizer_t opt, const void *communicator,
                                   const cuoptimCommOptions_t *options, const char *caller, cuoptimComm **out) {
  CUOPTIM_CHECK(validate_options(options, caller));
  if (options->shard_state && opt->config.kind == CUOPTIM_ADAFACTOR)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: options->shard_state = 1: Adafactor's row and column accumulators reduce across a whole "
                         "variable, which a share of its elements does not hold; use shard_state = 0",
                         caller);
  const cuoptimCommOps *ops = opt->backend == CUOPTIM_BACKEND_CUDA ? cuoptim_nccl_comm : cuoptim_mpi_comm;
  if (options->shard_state && opt->config.kind == CUOPTIM_MUON)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: options->shard_state = 1: Muon cannot shard its state (a Newton-Schulz iteration needs "
                         "every element of its matrix)",
                         caller);
  if (ops && options->shard_state && !ops->gather_parameters)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "%s: options->shard_state = 1: the %s backend cannot shard yet",
                         caller, opt->ops->name);
  if (!ops)
    return cuoptim_error(CUOPTIM_STATUS_NOT_SUPPORTED, "%s: this build of cuoptim has no %s for the %s backend", caller,
                         opt->backend == CUOPTIM_BACKEND_CUDA ? "NCCL" : "MPI", opt->ops->name);
  cuoptimComm *comm = calloc(1, sizeof *comm);
  if (!comm) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  comm->ops = ops;
  comm->options = *options;
  cuoptimStatus_t status = ops->attach(opt, comm, communicator, caller);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    free(comm);
    return status;
  }
  *out = comm;
  return CUOPTIM_STATUS_SUCCESS;
}

/* `comm` (attached, or NULL: none) replaces `opt`'s communicator. */
static void install_comm(cuoptimOptimizer_t opt, cuoptimComm *comm) {
  cuoptim_comm_release(opt);
  opt->comm = comm;
  set_world_scale(opt);
}

/* A MultiOptimizer's communicator is its sub-optimizers': each attaches `communicator` (a
 * duplicate of its own on MPI), in their order, on every rank alike; they are installed only once
 * all are attached, so a failure leaves every sub-optimizer as it was. The error names the
 * sub-optimizer that failed. */
static cuoptimStatus_t set_multi_communicator(cuoptimOptimizer_t opt, const void *communicator,
                                              const cuoptimCommOptions_t *options, const char *caller) {
  struct cuoptimMulti *m = opt->multi;
  int built = m->built;
  for (int k = 0; k < m->num_optimizers; k++) built |= m->optimizers[k]->built;
  if (built)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: the optimizer state is built: set the communicator before the first step or state access",
                         caller);
  if (!communicator) {
    for (int k = 0; k < m->num_optimizers; k++) install_comm(m->optimizers[k], NULL);
    return CUOPTIM_STATUS_SUCCESS;
  }
  CUOPTIM_REQUIRE_NOT_NULL(caller, options);
  cuoptimComm **attached = calloc((size_t)m->num_optimizers, sizeof *attached);
  if (!attached) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  int k = 0;
  for (; k < m->num_optimizers && status == CUOPTIM_STATUS_SUCCESS; k++)
    status = attach_comm(m->optimizers[k], communicator, options, caller, &attached[k]);
  if (status != CUOPTIM_STATUS_SUCCESS) {
    char why[1024];
    snprintf(why, sizeof why, "%s", cuoptimGetLastErrorMessage());
    for (int j = 0; j < k - 1; j++) {
      attached[j]->ops->detach(m->optimizers[j], attached[j]);
      free(attached[j]);
    }
    free(attached);
    return cuoptim_error(status, "%s (sub-optimizer %d, %s)", why, k - 1,
                         cuoptimOptimizerName(m->optimizers[k - 1]->config.kind));
  }
  for (k = 0; k < m->num_optimizers; k++) install_comm(m->optimizers[k], attached[k]);
  free(attached);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimSetCommunicator(cuoptimOptimizer_t opt, const void *communicator,
                                       const cuoptimCommOptions_t *options) {
  static const char *caller = "cuoptimSetCommunicator";
  if (opt && opt->multi) return set_multi_communicator(opt, communicator, options, caller);
  CUOPTIM_REQUIRE_OPTIMIZER(caller, opt);
  /* The sub-optimizers of a MultiOptimizer attach together or not at all: one attached alone
   * would reduce its gradients while the others step on each rank's own. */
  if (opt->parent)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                         "%s: optimizer is a sub-optimizer of a MultiOptimizer: set the communicator on the "
                         "MultiOptimizer, which attaches every sub-optimizer",
                         caller);
  if (opt->built)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: the optimizer state is built: set the communicator before the first step or state access",
                         caller);
  if (!communicator) {
    install_comm(opt, NULL);
    return CUOPTIM_STATUS_SUCCESS;
  }
  CUOPTIM_REQUIRE_NOT_NULL(caller, options);
  cuoptimComm *comm = NULL;
  CUOPTIM_CHECK(attach_comm(opt, communicator, options, caller, &comm));
  install_comm(opt, comm); /* the new one replaces the old, once it is attached */
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetRank(cuoptimOptimizer_t opt, int *rank, int *world) {
  if (opt && opt->multi) return cuoptimGetRank(opt->multi->optimizers[0], rank, world); /* all attach alike */
  CUOPTIM_REQUIRE_OPTIMIZER("cuoptimGetRank", opt);
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetRank", rank);
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetRank", world);
  *rank = opt->comm ? opt->comm->rank : 0;
  *world = opt->comm ? opt->comm->world : 1;
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptimGetStateBytes(cuoptimOptimizer_t opt, size_t *bytes) {
  if (opt && opt->multi) return cuoptim_multi_state_bytes(opt, bytes);
  CUOPTIM_REQUIRE_OPTIMIZER("cuoptimGetStateBytes", opt);
  CUOPTIM_REQUIRE_NOT_NULL("cuoptimGetStateBytes", bytes);
  *bytes = (opt->built ? opt->arena_bytes : 0) +
           (opt->comm && opt->comm->ops->buffer_bytes ? opt->comm->ops->buffer_bytes(opt) : 0);
  return CUOPTIM_STATUS_SUCCESS;
}

void cuoptim_comm_share(size_t count, int world, int rank, size_t *offset, size_t *length) {
  size_t base = count / (size_t)world, r = (size_t)rank;
  *offset = r * base;
  *length = rank == world - 1 ? count - r * base : base;
}

/* ---- the first-step comparison of the variable tables ---------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *data, size_t bytes) {
  const unsigned char *p = data;
  for (size_t i = 0; i < bytes; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

#define FNV_OFFSET 0xcbf29ce484222325ull

static uint64_t variable_hash(const cuoptimVariableRec *v) {
  uint64_t count = v->count, dtype = (uint64_t)v->dtype;
  uint64_t h = fnv1a(FNV_OFFSET, v->name, strlen(v->name) + 1);
  h = fnv1a(h, &count, sizeof count);
  h = fnv1a(h, &dtype, sizeof dtype);
  uint64_t rank = (uint64_t)v->rank;
  h = fnv1a(h, &rank, sizeof rank);
  return fnv1a(h, v->dims, (size_t)v->rank * sizeof v->dims[0]);
}

/* What every rank tells the others at the first step: everything that must agree. */
enum {
  ENTRY_MAGIC,
  ENTRY_WORLD,
  ENTRY_RANK,
  ENTRY_VARIABLES,
  ENTRY_TABLE_HASH,
  ENTRY_OPTIMIZER,
  ENTRY_CONFIG,
  ENTRY_AGGREGATE,
  ENTRY_REDUCE,
  ENTRY_BUCKET_BYTES,
  ENTRY_SHARD,
  ENTRY_ACCUMULATE_LOCALLY,
  ENTRY_FAILED, /* the status with which this rank's first step failed before the exchange, or 0 */
  ENTRY_COUNT
};
static const char *const entry_names[ENTRY_COUNT] = {
    "cuoptim's handshake",   "world size",          "rank",
    "number of variables",   "variable table",      "optimizer",
    "optimizer's config (its Keras JSON: hyperparameters, schedule, clipping, loss scaling; a hash)",
    "options->aggregate",    "options->reduce",     "options->bucket_bytes",
    "options->shard_state",  "options->accumulate_locally", "first step"};

/* A hash of the config's Keras JSON: the hyperparameters every rank must share. */
static uint64_t config_hash(const cuoptimOptimizer_t opt) {
  static _Thread_local char text[16384];
  size_t length = 0;
  if (cuoptimConfigToKerasJSON(&opt->config, text, sizeof text, &length) == CUOPTIM_STATUS_SUCCESS)
    return fnv1a(FNV_OFFSET, text, length);
  char *big = length ? malloc(length + 1) : NULL;
  uint64_t h = (uint64_t)opt->config.kind; /* no text (out of memory): the kind alone */
  if (big && cuoptimConfigToKerasJSON(&opt->config, big, length + 1, &length) == CUOPTIM_STATUS_SUCCESS)
    h = fnv1a(FNV_OFFSET, big, length);
  free(big);
  return h;
}

static void describe_rank(const cuoptimOptimizer_t opt, uint64_t *entry, uint64_t *hashes) {
  const cuoptimComm *c = opt->comm;
  uint64_t table = FNV_OFFSET;
  for (int k = 0; k < opt->num_variables; k++) {
    hashes[k] = variable_hash(&opt->variables[k]);
    table = fnv1a(table, &hashes[k], sizeof hashes[k]);
  }
  entry[ENTRY_MAGIC] = TABLE_MAGIC;
  entry[ENTRY_WORLD] = (uint64_t)c->world;
  entry[ENTRY_RANK] = (uint64_t)c->rank;
  entry[ENTRY_VARIABLES] = (uint64_t)opt->num_variables;
  entry[ENTRY_TABLE_HASH] = table;
  entry[ENTRY_OPTIMIZER] = (uint64_t)opt->config.kind;
  entry[ENTRY_CONFIG] = config_hash(opt);
  entry[ENTRY_AGGREGATE] = (uint64_t)c->options.aggregate;
  entry[ENTRY_REDUCE] = (uint64_t)c->options.reduce;
  entry[ENTRY_BUCKET_BYTES] = (uint64_t)c->options.bucket_bytes;
  entry[ENTRY_SHARD] = (uint64_t)c->options.shard_state;
  entry[ENTRY_ACCUMULATE_LOCALLY] = (uint64_t)c->options.accumulate_locally;
}

/* One rank's variable at one position of its table, as the others are told when the tables
 * differ. */
typedef struct {
  char name[CUOPTIM_MAX_NAME];
  uint64_t count, dtype;
  uint64_t present; /* 0: the rank has fewer variables */
  int64_t rank, dims[CUOPTIM_MAX_DIMS];
} variable_record;

static void describe_variable(char *out, size_t size, const variable_record *v) {
  char shape[CUOPTIM_MAX_DIMS * 22 + 3] = "[";
  for (int64_t d = 0; d < v->rank && d < CUOPTIM_MAX_DIMS; d++)
    snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? ", " : "", (long long)v->dims[d]);
  snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "]");
  snprintf(out, size, "\"%s\" (%llu %s, shape %s)", v->name, (unsigned long long)v->count,
           cuoptim_dtype_name((cuoptimDtype_t)v->dtype), shape);
}

/* The first position `k` where rank `r`'s table differs from rank 0's (a variable with another
 * name, count or dtype, or no variable on one of them), the smallest r at that position. */
static int first_difference(const uint64_t *hashes, const uint64_t *lengths, int world, size_t stride, size_t *k,
                            int *r) {
  for (size_t i = 0; i < stride; i++)
    for (int q = 1; q < world; q++) {
      int here = i < lengths[0], there = i < lengths[q];
      if (here != there || (here && hashes[(size_t)q * stride + i] != hashes[i])) {
        *k = i;
        *r = q;
        return 1;
      }
    }
  return 0;
}

/* The ranks' tables differ (in length or in a variable): every rank learns every rank's variable
 * hashes, finds the same first difference, and learns both ranks' variables there, so that every
 * rank fails with the same message naming them. `lengths[q]` is rank q's number of variables. */
static cuoptimStatus_t name_differing_variable(cuoptimOptimizer_t opt, const uint64_t *lengths, const char *caller) {
  const cuoptimComm *c = opt->comm;
  size_t stride = 1;
  for (int q = 0; q < c->world; q++)
    if (lengths[q] > stride) stride = (size_t)lengths[q];
  uint64_t *mine = calloc(stride, sizeof *mine);
  uint64_t *all = malloc((size_t)c->world * stride * sizeof *all);
  variable_record *records = malloc((size_t)c->world * sizeof *records);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (!mine || !all || !records) status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  for (int k = 0; status == CUOPTIM_STATUS_SUCCESS && k < opt->num_variables; k++)
    mine[k] = variable_hash(&opt->variables[k]);
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = c->ops->allgather_host(opt, mine, all, stride * sizeof *mine, "the variable table check");
  size_t k = 0;
  int r = 0;
  if (status == CUOPTIM_STATUS_SUCCESS && !first_difference(all, lengths, c->world, stride, &k, &r))
    status = cuoptim_error(CUOPTIM_STATUS_INTERNAL_ERROR, "%s: the table hashes differ but no variable does", caller);
  if (status == CUOPTIM_STATUS_SUCCESS) {
    variable_record record;
    memset(&record, 0, sizeof record);
    if (k < (size_t)opt->num_variables) {
      const cuoptimVariableRec *v = &opt->variables[k];
      snprintf(record.name, sizeof record.name, "%s", v->name);
      record.count = v->count;
      record.dtype = (uint64_t)v->dtype;
      record.present = 1;
      record.rank = v->rank;
      for (int d = 0; d < v->rank; d++) record.dims[d] = v->dims[d];
    }
    status = c->ops->allgather_host(opt, &record, records, sizeof record, "the variable table check");
  }
  if (status == CUOPTIM_STATUS_SUCCESS) {
    char first[CUOPTIM_MAX_NAME + CUOPTIM_MAX_DIMS * 22 + 64], other[CUOPTIM_MAX_NAME + CUOPTIM_MAX_DIMS * 22 + 64];
    describe_variable(first, sizeof first, &records[0]);
    describe_variable(other, sizeof other, &records[r]);
    static const char *const hint = "every rank must register the same variables, in the same order";
    if (records[0].present && records[r].present)
      status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             "%s: the ranks' variables differ: variable %zu is %s on rank 0 but %s on rank %d (%s)", caller,
                             k, first, other, r, hint);
    else if (records[0].present)
      status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             "%s: the ranks' variables differ: variable %zu is %s on rank 0 but rank %d has %llu "
                             "variables (%s)",
                             caller, k, first, r, (unsigned long long)lengths[r], hint);
    else
      status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                             "%s: the ranks' variables differ: variable %zu is %s on rank %d but rank 0 has %llu "
                             "variables (%s)",
                             caller, k, other, r, (unsigned long long)lengths[0], hint);
  }
  free(mine);
  free(all);
  free(records);
  return status;
}

/* A rank whose first step failed before the exchange (its state could not be built): every rank
 * fails that step, naming it, instead of waiting for it. */
static cuoptimStatus_t check_failures(const cuoptimOptimizer_t opt, const uint64_t *all, cuoptimStatus_t mine,
                                      const char *caller) {
  const cuoptimComm *c = opt->comm;
  for (int r = 0; r < c->world; r++) {
    uint64_t failed = all[(size_t)r * ENTRY_COUNT + ENTRY_FAILED];
    if (failed == 0) continue;
    if (r == c->rank) return mine; /* its own message stays */
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: rank %d's first step failed (%s) before the ranks compared their tables: no rank took "
                         "the step (rank %d's message says why)",
                         caller, r, cuoptimGetStatusString((cuoptimStatus_t)failed), r);
  }
  return CUOPTIM_STATUS_SUCCESS;
}

static cuoptimStatus_t check_tables(cuoptimOptimizer_t opt, cuoptimStatus_t failed, const char *caller) {
  cuoptimComm *c = opt->comm;
  uint64_t entry[ENTRY_COUNT];
  uint64_t *hashes = malloc((size_t)(opt->num_variables ? opt->num_variables : 1) * sizeof *hashes);
  uint64_t *all = malloc((size_t)c->world * sizeof entry);
  uint64_t *lengths = malloc((size_t)c->world * sizeof *lengths);
  if (!hashes || !all || !lengths) {
    free(hashes);
    free(all);
    free(lengths);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  }
  describe_rank(opt, entry, hashes);
  entry[ENTRY_FAILED] = (uint64_t)failed;
  char message[1024] = ""; /* a failed rank's own message, kept through the exchange */
  if (failed != CUOPTIM_STATUS_SUCCESS) snprintf(message, sizeof message, "%s", cuoptimGetLastErrorMessage());
  cuoptimStatus_t status = c->ops->allgather_host(opt, entry, all, sizeof entry, "the variable table check");
  if (status == CUOPTIM_STATUS_SUCCESS) {
    status = check_failures(opt, all, failed, caller);
    if (status != CUOPTIM_STATUS_SUCCESS && status == failed) cuoptim_error(failed, "%s", message);
    if (status != CUOPTIM_STATUS_SUCCESS) {
      free(hashes);
      free(all);
      free(lengths);
      return status;
    }
  }
  for (int r = 0; status == CUOPTIM_STATUS_SUCCESS && r < c->world; r++)
    lengths[r] = all[(size_t)r * ENTRY_COUNT + ENTRY_VARIABLES];
  for (int r = 0; status == CUOPTIM_STATUS_SUCCESS && r < c->world; r++) {
    const uint64_t *other = all + (size_t)r * ENTRY_COUNT;
    for (int e = 0; e < ENTRY_COUNT; e++) {
      uint64_t expected = e == ENTRY_RANK ? (uint64_t)r : all[e]; /* rank 0's, or its own position */
      if (other[e] == expected) continue;
      if (e == ENTRY_VARIABLES || e == ENTRY_TABLE_HASH) {
        status = name_differing_variable(opt, lengths, caller);
      } else {
        status = cuoptim_error(CUOPTIM_STATUS_INVALID_VALUE,
                               "%s: the ranks disagree on the %s: rank %d has %llu, rank %d has %llu (every rank must "
                               "register the same variables and pass the same options)",
                               caller, entry_names[e], r, (unsigned long long)other[e], e == ENTRY_RANK ? r : 0,
                               (unsigned long long)expected);
      }
      break;
    }
  }
  free(hashes);
  free(all);
  free(lengths);
  if (status == CUOPTIM_STATUS_SUCCESS) c->tables_checked = 1;
  return status;
}

int cuoptim_comm_active(const cuoptimOptimizer_t opt) { return opt->comm != NULL; }

cuoptimStatus_t cuoptim_comm_first_step_failed(cuoptimOptimizer_t opt, cuoptimStatus_t failed, const char *caller) {
  cuoptimComm *c = opt->comm;
  if (!c || c->tables_checked || c->broken || c->world == 1) return failed;
  cuoptimStatus_t status = check_tables(opt, failed, caller);
  if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR)
    c->broken = 1;
  return failed; /* the tables stay unchecked: the next first step compares them again */
}

cuoptimStatus_t cuoptim_comm_check_tables(cuoptimOptimizer_t opt, const char *caller) {
  if (!opt->comm || opt->comm->tables_checked) return CUOPTIM_STATUS_SUCCESS;
  cuoptimStatus_t status = check_tables(opt, CUOPTIM_STATUS_SUCCESS, caller);
  if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR)
    opt->comm->broken = 1;
  return status;
}

#ifndef CUOPTIM_HAVE_NCCL
const cuoptimCommOps *const cuoptim_nccl_comm = NULL;
#endif

/* ---- gradient accumulation with local accumulators ---------------------------------------- */

int cuoptim_comm_accumulates_locally(const cuoptimOptimizer_t opt) {
  const cuoptimComm *c = opt->comm;
  return c && c->options.aggregate && c->options.accumulate_locally && c->world > 1 && !c->options.shard_state &&
         opt->prologue.rule.accumulation_steps > 0;
}

/* The raw counter the step about to be enqueued on `stream` will read, when the host knows it:
 * in host memory on the host backend; on the CUDA backend the count of the steps it enqueued,
 * unless a micro-step may be skipped on the device (dynamic loss scaling), the count was lost (a
 * captured step, a failed step) or this step is being captured (its replays come unseen). */
static int counter_known(const cuoptimOptimizer_t opt, cuoptimStream_t stream, int64_t *iterations) {
  if (opt->ops->state_in_host_memory) {
    *iterations = opt->state->iterations;
    return 1;
  }
  if (opt->prologue.rule.dynamic_loss_scale || !opt->iterations_known || opt->ops->capturing(opt, stream)) return 0;
  *iterations = opt->enqueued_iterations;
  return 1;
}

cuoptimStepKind cuoptim_comm_step_kind(const cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (!cuoptim_comm_accumulates_locally(opt)) return CUOPTIM_STEP_PLAIN;
  int64_t iterations = 0;
  if (!counter_known(opt, stream, &iterations)) return CUOPTIM_STEP_UNSURE;
  /* Keras: a step applies when (iterations + 1) % gradient_accumulation_steps == 0. */
  if ((iterations + 1) % opt->prologue.rule.accumulation_steps == 0) return CUOPTIM_STEP_APPLY;
  /* Accumulators that are the same on every rank (after a step that was not sure, a read, a
   * state write) stay so until the cycle ends: this micro-step reduces its gradients. */
  return opt->accumulators == CUOPTIM_ACCUMULATORS_REPLICATED ? CUOPTIM_STEP_UNSURE : CUOPTIM_STEP_LOCAL;
}

void cuoptim_comm_end_accumulation(cuoptimOptimizer_t opt, cuoptimStepKind kind, cuoptimStream_t stream,
                                   cuoptimStatus_t status) {
  if (kind == CUOPTIM_STEP_PLAIN) return;
  if (status != CUOPTIM_STATUS_SUCCESS) {
    opt->iterations_known = 0; /* the device may or may not have counted it */
    return;
  }
  if (opt->ops->capturing(opt, stream))
    opt->iterations_known = 0;
  else
    opt->enqueued_iterations++;
  if (kind == CUOPTIM_STEP_LOCAL) {
    opt->accumulators = CUOPTIM_ACCUMULATORS_PARTIAL;
  } else if (kind == CUOPTIM_STEP_APPLY) {
    /* Applied: the accumulators of the variables it updated are zero on every rank. Those of
     * variables without a gradient, and all of them when a LossScaleOptimizer skipped the step
     * (host backend), keep the sums the step reduced them to: the same on every rank too. */
    int skipped = opt->ops->state_in_host_memory && opt->scalars->skip, all_updated = 1;
    for (int k = 0; k < opt->num_variables; k++) all_updated &= opt->step_grads[k].grad != NULL;
    opt->accumulators = skipped || !all_updated ? CUOPTIM_ACCUMULATORS_REPLICATED : CUOPTIM_ACCUMULATORS_ZERO;
  } else {
    opt->accumulators = CUOPTIM_ACCUMULATORS_REPLICATED;
  }
}

void cuoptim_note_iterations(cuoptimOptimizer_t opt, int64_t iterations) {
  opt->enqueued_iterations = iterations;
  opt->iterations_known = 1;
}

int cuoptim_comm_accumulators_partial(const cuoptimOptimizer_t opt) {
  return cuoptim_comm_accumulates_locally(opt) && opt->accumulators == CUOPTIM_ACCUMULATORS_PARTIAL;
}

cuoptimStatus_t cuoptim_comm_sum_accumulator(cuoptimOptimizer_t opt, const float *mine, size_t count, float *sum,
                                             const char *caller) {
  const cuoptimComm *c = opt->comm;
  float *all = count <= SIZE_MAX / sizeof *all / (size_t)c->world ? malloc(count * sizeof *all * (size_t)c->world)
                                                                  : NULL;
  if (!all) return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "%s: out of host memory", caller);
  cuoptimStatus_t status = c->ops->allgather_host(opt, mine, all, count * sizeof *all, "summing the ranks' accumulators");
  for (size_t i = 0; status == CUOPTIM_STATUS_SUCCESS && i < count; i++) {
    float x = all[i];
    for (int r = 1; r < c->world; r++) x += all[(size_t)r * count + i]; /* rank order: the same on every rank */
    sum[i] = x;
  }
  free(all);
  if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR)
    opt->comm->broken = 1;
  return status;
}

cuoptimStatus_t cuoptim_comm_check_capture(const cuoptimOptimizer_t opt, cuoptimStream_t stream, const char *caller) {
  /* Summing the ranks' parts is a one-time change of what the accumulators hold, which a graph
   * replayed many times cannot hold. */
  if (cuoptim_comm_accumulators_partial(opt) && opt->ops->capturing(opt, stream))
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: this step is captured in a CUDA graph while each rank's gradient accumulators hold its "
                         "own part of the sum (options.accumulate_locally): capture a step that follows an applied "
                         "step (iterations a multiple of gradient_accumulation_steps)",
                         caller);
  return CUOPTIM_STATUS_SUCCESS;
}

cuoptimStatus_t cuoptim_comm_begin_step(cuoptimOptimizer_t opt, cuoptimStream_t stream, cuoptimStepKind kind,
                                        const char *caller) {
  cuoptimComm *c = opt->comm;
  if (!c) return CUOPTIM_STATUS_SUCCESS;
  if (c->broken)
    return cuoptim_error(CUOPTIM_STATUS_INVALID_STATE,
                         "%s: an earlier collective of this optimizer timed out or failed: its communicator is in an "
                         "unknown state (abort it)",
                         caller);
  /* An error the library found since the last step: nothing more is enqueued on the communicator. */
  cuoptimStatus_t status = c->ops->poll ? c->ops->poll(opt, caller) : CUOPTIM_STATUS_SUCCESS;
  if (status == CUOPTIM_STATUS_SUCCESS) status = cuoptim_comm_check_tables(opt, caller);
  /* Gradient arena: the buckets the marks have not started, in their fixed order, before any
   * other collective, so every rank issues the same sequence. */
  if (status == CUOPTIM_STATUS_SUCCESS && opt->grad_arena) status = cuoptim_arena_start_all(opt, stream);
  c->local_step = kind == CUOPTIM_STEP_LOCAL;
  /* A micro-step with local accumulators: nothing to reduce. */
  if (kind == CUOPTIM_STEP_LOCAL) return status;
  /* A step that may apply: the accumulators' sums first (Keras's accumulator), then its gradients. */
  if (status == CUOPTIM_STATUS_SUCCESS && opt->accumulators == CUOPTIM_ACCUMULATORS_PARTIAL) {
    status = c->ops->reduce_accumulators(opt, stream);
    if (status == CUOPTIM_STATUS_SUCCESS) {
      c->accumulator_reductions++;
      opt->accumulators = CUOPTIM_ACCUMULATORS_REPLICATED;
    }
  }
  if (status == CUOPTIM_STATUS_SUCCESS && c->options.aggregate && c->world > 1) {
    status = c->ops->aggregate(opt, stream);
    if (status == CUOPTIM_STATUS_SUCCESS) c->gradient_reductions++;
  }
  if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR)
    c->broken = 1;
  return status;
}

/* ---- sharded state ----------------------------------------------------------------------------- */

int cuoptim_comm_sharded(const struct cuoptimOptimizer *opt) {
  return opt->comm && opt->comm->options.shard_state && opt->comm->world > 1;
}

void cuoptim_comm_assign_shares(cuoptimOptimizer_t opt) {
  int sharded = cuoptim_comm_sharded(opt);
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimVariableRec *v = &opt->variables[k];
    v->local_offset = 0;
    v->local_count = v->count;
    if (sharded) cuoptim_comm_share(v->count, opt->comm->world, opt->comm->rank, &v->local_offset, &v->local_count);
    v->local_param = (char *)v->param + v->local_offset * cuoptim_dtype_size(v->dtype);
  }
}

void cuoptim_comm_prepare_step(cuoptimOptimizer_t opt) {
  if (!cuoptim_comm_sharded(opt)) return;
  const cuoptimComm *c = opt->comm;
  /* Reduced by the caller, or summed in place: this rank reads its share where it lies. */
  if (c->options.aggregate && !c->ops->shares_in_place) return;
  for (int k = 0; k < opt->num_variables; k++) {
    cuoptimStepGradient *g = &opt->step_grads[k];
    if (g->listed)
      g->grad = (const char *)g->listed + opt->variables[k].local_offset * cuoptim_dtype_size(g->dtype);
  }
}

/* What the inspect pass measured on one rank's shares, as the ranks exchange it. */
typedef struct {
  double grad_sumsq;
  int64_t nonfinite;
} InspectPartial;

cuoptimStatus_t cuoptim_comm_combine_inspect(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (!cuoptim_comm_sharded(opt) && !(opt->comm && opt->comm->local_step)) return CUOPTIM_STATUS_SUCCESS;
  const cuoptimComm *c = opt->comm;
  if (c->ops->combine_inspect && cuoptim_comm_sharded(opt)) {
    cuoptimStatus_t status = c->ops->combine_inspect(opt, stream);
    if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR)
      opt->comm->broken = 1;
    return status;
  }
  size_t n = (size_t)opt->num_variables;
  InspectPartial *mine = calloc(n, sizeof *mine);
  InspectPartial *all = calloc(n * (size_t)c->world, sizeof *all);
  if (!mine || !all) {
    free(mine);
    free(all);
    return cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
  }
  cuoptimTensorScalars *tensors = malloc(n * sizeof *tensors);
  cuoptimStatus_t status = tensors ? opt->ops->download(opt, tensors, opt->tensors, n * sizeof *tensors)
                                   : cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
  for (size_t k = 0; status == CUOPTIM_STATUS_SUCCESS && k < n; k++) {
    mine[k].grad_sumsq = tensors[k].grad_sumsq;
    mine[k].nonfinite = tensors[k].nonfinite;
  }
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = c->ops->allgather_host(opt, mine, all, n * sizeof *mine, "aggregate (combining the shards' norms)");
  if (status == CUOPTIM_STATUS_SUCCESS) {
    for (size_t k = 0; k < n; k++) {
      double sumsq = 0.0;
      int nonfinite = 0;
      for (int r = 0; r < c->world; r++) { /* rank order: the same sum on every rank */
        sumsq += all[(size_t)r * n + k].grad_sumsq;
        nonfinite |= all[(size_t)r * n + k].nonfinite != 0;
      }
      tensors[k].grad_sumsq = sumsq;
      tensors[k].nonfinite = nonfinite;
    }
    status = opt->ops->upload(opt, opt->tensors, tensors, n * sizeof *tensors);
  }
  free(tensors);
  free(mine);
  free(all);
  return status;
}

int64_t cuoptim_comm_reductions(const cuoptimOptimizer_t opt, int accumulators) {
  if (!opt->comm) return 0;
  return accumulators ? opt->comm->accumulator_reductions : opt->comm->gradient_reductions;
}

cuoptimStatus_t cuoptim_comm_end_step(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (!cuoptim_comm_sharded(opt)) return CUOPTIM_STATUS_SUCCESS;
  cuoptimStatus_t status = opt->comm->ops->gather_parameters(opt, stream);
  if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR)
    opt->comm->broken = 1;
  return status;
}

/* Lamb's two norms per variable, as the ranks exchange their parts. */
typedef struct {
  double w_sumsq, u_sumsq;
} LambPartial;

cuoptimStatus_t cuoptim_comm_combine_lamb(cuoptimOptimizer_t opt, cuoptimStream_t stream) {
  if (!cuoptim_comm_sharded(opt)) return CUOPTIM_STATUS_SUCCESS;
  const cuoptimComm *c = opt->comm;
  if (c->ops->combine_lamb) {
    cuoptimStatus_t status = c->ops->combine_lamb(opt, stream);
    if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR || status == CUOPTIM_STATUS_NCCL_ERROR)
      opt->comm->broken = 1;
    return status;
  }
  size_t n = (size_t)opt->num_variables;
  LambPartial *mine = calloc(n ? n : 1, sizeof *mine), *all = calloc((n ? n : 1) * (size_t)c->world, sizeof *all);
  cuoptimStatus_t status = CUOPTIM_STATUS_SUCCESS;
  if (!mine || !all) status = cuoptim_error(CUOPTIM_STATUS_ALLOC_FAILED, "cuoptimApplyGradients: out of host memory");
  for (size_t k = 0; status == CUOPTIM_STATUS_SUCCESS && k < n; k++) {
    mine[k].w_sumsq = opt->tensors[k].lamb_w_sumsq;
    mine[k].u_sumsq = opt->tensors[k].lamb_u_sumsq;
  }
  if (status == CUOPTIM_STATUS_SUCCESS)
    status = c->ops->allgather_host(opt, mine, all, n * sizeof *mine, "update (combining the shards' Lamb norms)");
  for (size_t k = 0; status == CUOPTIM_STATUS_SUCCESS && k < n; k++) {
    double w = 0.0, u = 0.0;
    for (int r = 0; r < c->world; r++) { /* rank order: the same sums on every rank */
      w += all[(size_t)r * n + k].w_sumsq;
      u += all[(size_t)r * n + k].u_sumsq;
    }
    opt->tensors[k].lamb_w_sumsq = w;
    opt->tensors[k].lamb_u_sumsq = u;
  }
  free(mine);
  free(all);
  if (status == CUOPTIM_STATUS_TIMEOUT || status == CUOPTIM_STATUS_MPI_ERROR) opt->comm->broken = 1;
  return status;
}
