/*
 * nccl.cc — the emulated NCCL: the part of NCCL's API that cuoptim, its tests and its examples
 * call (declared by the real nccl.h, so the code that calls it compiles unchanged), for the
 * emulated device's processes, with the collectives carried over MPI. Linked instead of libnccl
 * in the emulated build only.
 *
 * Communicators: ncclCommInitRank with nranks > 1 needs MPI initialized and one MPI process per
 * rank, all of them (nranks == the size of MPI_COMM_WORLD); it splits MPI_COMM_WORLD into a
 * communicator ordered by the NCCL rank and checks that every rank passed the same id and a rank
 * of its own. A communicator of one rank (nranks == 1, ncclCommInitAll of the one emulated
 * device) needs no MPI: its collectives are copies.
 *
 * Collectives run in stream order with the kernels: each group becomes one piece of host work on
 * its stream (emu/host_work.h), run at once on an eager stream or recorded into the graph of a
 * capturing stream and run at each replay. Inside the work, every input of the group is read
 * before any output is written, and the MPI operations are non-blocking ones started together and
 * waited together: the operations of a group may run concurrently in NCCL, so one that depends on
 * another of its group gives wrong results here too. float16 and bfloat16 sums round to the
 * element type after each addition (NCCL's __hadd), in the order MPI picks; a reduce-scatter sums
 * each element on one rank.
 *
 * Errors: argument errors return at the call with NCCL's status and a text for ncclGetLastError;
 * an MPI failure inside the work becomes the communicator's asynchronous error
 * (ncclCommGetAsyncError), as a failed kernel does in NCCL. With config.blocking = 0
 * (ncclCommInitRankConfig), the init and each group end return ncclInProgress and the next
 * ncclCommGetAsyncError says ncclInProgress once more, as a non-blocking NCCL communicator may.
 * Not emulated: reductions other than ncclSum, the 8-bit float types, a group spanning several
 * streams, more than 2^31 - 1 elements per call, ncclCommSplit and the point-to-point calls.
 */
/* MPI's C API only: the C++ bindings would need their own library. */
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <nccl.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <random>
#include <string>
#include <utility>
#include <vector>

#include "host_work.h"
#include "nccl_emu.h"

struct ncclComm {
  MPI_Comm mpi = MPI_COMM_NULL; /* MPI_COMM_NULL: one rank, no MPI */
  int rank = 0, nranks = 1, device = 0;
  bool blocking = true;
  ncclResult_t async_error = ncclSuccess;
  int pending_progress = 0; /* non-blocking: ncclCommGetAsyncError answers ncclInProgress this many times */
};

/* ---- errors ------------------------------------------------------------------------------- */

static thread_local std::string last_error;

__attribute__((format(printf, 2, 3))) static ncclResult_t fail(ncclResult_t result, const char *fmt, ...) {
  char text[512];
  va_list args;
  va_start(args, fmt);
  vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  last_error = text;
  return result;
}

extern "C" const char *ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

extern "C" const char *ncclGetLastError(ncclComm_t comm) { return last_error.c_str(); }

extern "C" ncclResult_t ncclGetVersion(int *version) {
  if (!version) return fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

/* ---- communicators ------------------------------------------------------------------------ */

static const char ID_MAGIC[] = "cuoptim emulated NCCL id";

extern "C" ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
  memset(id, 0, sizeof *id);
  memcpy(id->internal, ID_MAGIC, sizeof ID_MAGIC);
  std::random_device random;
  for (size_t i = sizeof ID_MAGIC; i + sizeof(unsigned) <= sizeof id->internal; i += sizeof(unsigned)) {
    unsigned r = random();
    memcpy(id->internal + i, &r, sizeof r);
  }
  return ncclSuccess;
}

static bool mpi_usable(void) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

static std::string mpi_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
  return text;
}

static uint64_t id_hash(const ncclUniqueId &id) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < sizeof id.internal; i++) h = (h ^ (unsigned char)id.internal[i]) * 0x100000001b3ull;
  return h;
}

/* What every rank tells the others at init, so that all reach the same verdict. */
struct RankCard {
  int32_t rank, nranks;
  uint64_t id;
};

/* An MPI communicator of every process, ordered by NCCL rank, after checking the ranks agree. */
static ncclResult_t split_world(ncclComm *c, const ncclUniqueId &id) {
  if (!mpi_usable())
    return fail(ncclInvalidUsage,
                "ncclCommInitRank: nranks = %d: the emulated NCCL carries collectives over MPI: call MPI_Init "
                "first and start one process per rank under mpirun",
                c->nranks);
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world != c->nranks)
    return fail(ncclInvalidUsage,
                "ncclCommInitRank: nranks = %d, but %d MPI processes: the emulated NCCL needs one process per rank, "
                "all of MPI_COMM_WORLD",
                c->nranks, world);
  int code = MPI_Comm_split(MPI_COMM_WORLD, 0, c->rank, &c->mpi);
  if (code == MPI_SUCCESS) code = MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
  std::vector<RankCard> cards((size_t)world);
  RankCard mine = {c->rank, c->nranks, id_hash(id)};
  if (code == MPI_SUCCESS)
    code = MPI_Allgather(&mine, (int)sizeof mine, MPI_BYTE, cards.data(), (int)sizeof mine, MPI_BYTE, c->mpi);
  if (code != MPI_SUCCESS) {
    if (c->mpi != MPI_COMM_NULL) MPI_Comm_free(&c->mpi);
    return fail(ncclSystemError, "ncclCommInitRank: %s", mpi_text(code).c_str());
  }
  for (int r = 0; r < world; r++) {
    const RankCard &other = cards[(size_t)r];
    const char *why = other.nranks != c->nranks ? "another nranks"
                      : other.id != cards[0].id ? "another unique id"
                      : other.rank != r         ? "a rank that another process passed too"
                                                : NULL;
    if (why) {
      MPI_Comm_free(&c->mpi);
      return fail(ncclInvalidUsage, "ncclCommInitRank: the process with NCCL rank %d passed %s than the others",
                  (int)other.rank, why);
    }
  }
  return ncclSuccess;
}

static ncclResult_t init_rank(ncclComm_t *out, int nranks, const ncclUniqueId &id, int rank, bool blocking,
                              const char *call) {
  if (!out) return fail(ncclInvalidArgument, "%s: comm is NULL", call);
  if (nranks < 1 || rank < 0 || rank >= nranks)
    return fail(ncclInvalidArgument, "%s: rank %d of nranks %d is out of range", call, rank, nranks);
  if (memcmp(id.internal, ID_MAGIC, sizeof ID_MAGIC) != 0)
    return fail(ncclInvalidArgument, "%s: commId was not made by ncclGetUniqueId", call);
  ncclComm *c = new ncclComm();
  c->rank = rank;
  c->nranks = nranks;
  c->blocking = blocking;
  if (cudaGetDevice(&c->device) != cudaSuccess) c->device = 0;
  if (nranks > 1) {
    ncclResult_t result = split_world(c, id);
    if (result != ncclSuccess) {
      delete c;
      return result;
    }
  }
  *out = c;
  if (blocking) return ncclSuccess;
  c->pending_progress = 1;
  return ncclInProgress;
}

extern "C" ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank) {
  return init_rank(comm, nranks, commId, rank, true, "ncclCommInitRank");
}

extern "C" ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank,
                                               ncclConfig_t *config) {
  bool blocking = !config || config->blocking == NCCL_CONFIG_UNDEF_INT || config->blocking != 0;
  return init_rank(comm, nranks, commId, rank, blocking, "ncclCommInitRankConfig");
}

/* One communicator of one rank on the one emulated device. */
extern "C" ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist) {
  if (!comms) return fail(ncclInvalidArgument, "ncclCommInitAll: comms is NULL");
  if (ndev != 1)
    return fail(ncclInvalidArgument, "ncclCommInitAll: ndev = %d: the emulated machine has one device", ndev);
  if (devlist && devlist[0] != 0)
    return fail(ncclInvalidArgument, "ncclCommInitAll: devlist[0] = %d: the emulated machine has only device 0",
                devlist[0]);
  comms[0] = new ncclComm();
  return ncclSuccess;
}

static ncclResult_t free_comm(ncclComm_t comm, const char *call) {
  if (!comm) return fail(ncclInvalidArgument, "%s: comm is NULL", call);
  if (comm->mpi != MPI_COMM_NULL && mpi_usable()) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}

extern "C" ncclResult_t ncclCommDestroy(ncclComm_t comm) { return free_comm(comm, "ncclCommDestroy"); }

extern "C" ncclResult_t ncclCommAbort(ncclComm_t comm) { return free_comm(comm, "ncclCommAbort"); }

/* Every collective has run when its group ended (or runs at each replay): nothing to flush. */
extern "C" ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (!comm) return fail(ncclInvalidArgument, "ncclCommFinalize: comm is NULL");
  return ncclSuccess;
}

extern "C" ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
  if (!comm || !count) return fail(ncclInvalidArgument, "ncclCommCount: %s is NULL", comm ? "count" : "comm");
  *count = comm->nranks;
  return ncclSuccess;
}

extern "C" ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
  if (!comm || !rank) return fail(ncclInvalidArgument, "ncclCommUserRank: %s is NULL", comm ? "rank" : "comm");
  *rank = comm->rank;
  return ncclSuccess;
}

extern "C" ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
  if (!comm || !device) return fail(ncclInvalidArgument, "ncclCommCuDevice: %s is NULL", comm ? "device" : "comm");
  *device = comm->device;
  return ncclSuccess;
}

extern "C" ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError) {
  if (!comm || !asyncError)
    return fail(ncclInvalidArgument, "ncclCommGetAsyncError: %s is NULL", comm ? "asyncError" : "comm");
  *asyncError = comm->async_error;
  if (comm->async_error == ncclSuccess && comm->pending_progress > 0) {
    comm->pending_progress--;
    *asyncError = ncclInProgress;
  }
  return ncclSuccess;
}

extern "C" void cuoptim_emu_nccl_inject_async_error(ncclComm_t comm, ncclResult_t error, const char *text) {
  comm->async_error = error;
  last_error = text ? text : "";
}

extern "C" void cuoptim_emu_nccl_set_cu_device(ncclComm_t comm, int device) { comm->device = device; }

/* ---- collectives -------------------------------------------------------------------------- */

enum Kind { ALL_REDUCE, REDUCE_SCATTER, ALL_GATHER, REDUCE, BROADCAST };

struct Collective {
  Kind kind;
  const void *send;
  void *recv;
  size_t count; /* NCCL's count: per rank for reduce-scatter (recvcount) and all-gather (sendcount) */
  ncclDataType_t type;
  int root;     /* REDUCE and BROADCAST */
  ncclComm_t comm;
  cudaStream_t stream;
};

static size_t element_bytes(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
    case ncclUint8: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
  }
}

/* Bytes the collective reads from send (the root's only, for a broadcast) and writes to recv
 * (the root's only, for a reduce). */
static size_t input_bytes(const Collective &c) {
  size_t elements = c.kind == REDUCE_SCATTER ? c.count * (size_t)c.comm->nranks : c.count;
  if (c.kind == BROADCAST && c.comm->rank != c.root) elements = 0;
  return elements * element_bytes(c.type);
}

static size_t output_bytes(const Collective &c) {
  size_t elements = c.kind == ALL_GATHER ? c.count * (size_t)c.comm->nranks : c.count;
  return elements * element_bytes(c.type);
}

static bool writes_output(const Collective &c) { return c.kind != REDUCE || c.comm->rank == c.root; }

/* Sums of 16-bit floats as NCCL forms them: each addition rounded to the element type. */
static void sum_float16(void *in, void *inout, int *len, MPI_Datatype *) {
  const __half *a = (const __half *)in;
  __half *b = (__half *)inout;
  for (int i = 0; i < *len; i++) b[i] = __float2half_rn(__half2float(a[i]) + __half2float(b[i]));
}

static void sum_bfloat16(void *in, void *inout, int *len, MPI_Datatype *) {
  const __nv_bfloat16 *a = (const __nv_bfloat16 *)in;
  __nv_bfloat16 *b = (__nv_bfloat16 *)inout;
  for (int i = 0; i < *len; i++) b[i] = __float2bfloat16_rn(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

struct SixteenBit {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_Op sum_float16 = MPI_OP_NULL, sum_bfloat16 = MPI_OP_NULL;
};

/* Made once, when a collective first crosses processes; MPI_Finalize frees them. */
static const SixteenBit &sixteen_bit(void) {
  static SixteenBit s;
  if (s.type == MPI_DATATYPE_NULL) {
    MPI_Type_contiguous(2, MPI_BYTE, &s.type);
    MPI_Type_commit(&s.type);
    MPI_Op_create(sum_float16, 1, &s.sum_float16);
    MPI_Op_create(sum_bfloat16, 1, &s.sum_bfloat16);
  }
  return s;
}

static void mpi_element(ncclDataType_t type, MPI_Datatype *datatype, MPI_Op *sum) {
  *sum = MPI_SUM;
  switch (type) {
    case ncclInt8: *datatype = MPI_INT8_T; break;
    case ncclUint8: *datatype = MPI_UINT8_T; break;
    case ncclInt32: *datatype = MPI_INT32_T; break;
    case ncclUint32: *datatype = MPI_UINT32_T; break;
    case ncclInt64: *datatype = MPI_INT64_T; break;
    case ncclUint64: *datatype = MPI_UINT64_T; break;
    case ncclFloat32: *datatype = MPI_FLOAT; break;
    case ncclFloat64: *datatype = MPI_DOUBLE; break;
    default:
      *datatype = sixteen_bit().type;
      *sum = type == ncclFloat16 ? sixteen_bit().sum_float16 : sixteen_bit().sum_bfloat16;
      break;
  }
}

static int start_mpi(const Collective &c, const void *in, void *out, MPI_Request *request) {
  MPI_Datatype type;
  MPI_Op sum;
  mpi_element(c.type, &type, &sum);
  int n = (int)c.count;
  switch (c.kind) {
    case ALL_REDUCE: return MPI_Iallreduce(in, out, n, type, sum, c.comm->mpi, request);
    case REDUCE_SCATTER: return MPI_Ireduce_scatter_block(in, out, n, type, sum, c.comm->mpi, request);
    case ALL_GATHER: return MPI_Iallgather(in, n, type, out, n, type, c.comm->mpi, request);
    case REDUCE: return MPI_Ireduce(in, out, n, type, sum, c.root, c.comm->mpi, request);
    case BROADCAST: return MPI_Ibcast(out, n, type, c.root, c.comm->mpi, request);
  }
  return MPI_ERR_OTHER;
}

static const char *const KIND_CALLS[] = {"ncclAllReduce", "ncclReduceScatter", "ncclAllGather", "ncclReduce",
                                         "ncclBroadcast"};

static void fail_async(const Collective &c, int code) {
  c.comm->async_error = ncclSystemError;
  fail(ncclSystemError, "%s (emulated over MPI): %s", KIND_CALLS[c.kind], mpi_text(code).c_str());
}

/* The host work of one group. A communicator with an asynchronous error does nothing more. */
static void run_group(const std::vector<Collective> &ops) {
  const size_t n = ops.size();
  std::vector<std::vector<unsigned char>> in(n), out(n);
  for (size_t i = 0; i < n; i++) {
    const unsigned char *send = (const unsigned char *)ops[i].send;
    in[i].assign(send, send + input_bytes(ops[i]));
    out[i].resize(output_bytes(ops[i]));
  }
  std::vector<MPI_Request> requests(n, MPI_REQUEST_NULL);
  std::vector<bool> done(n, false);
  for (size_t i = 0; i < n; i++) {
    const Collective &c = ops[i];
    if (c.comm->async_error != ncclSuccess) continue;
    if (c.kind == BROADCAST && c.comm->rank == c.root) memcpy(out[i].data(), in[i].data(), in[i].size());
    if (c.comm->mpi == MPI_COMM_NULL) { /* one rank: every collective is a copy */
      if (c.kind != BROADCAST) memcpy(out[i].data(), in[i].data(), in[i].size());
      done[i] = true;
      continue;
    }
    int code = start_mpi(c, in[i].data(), out[i].data(), &requests[i]);
    if (code != MPI_SUCCESS) fail_async(c, code);
  }
  for (size_t i = 0; i < n; i++) {
    if (requests[i] == MPI_REQUEST_NULL) continue;
    int code = MPI_Wait(&requests[i], MPI_STATUS_IGNORE);
    if (code == MPI_SUCCESS)
      done[i] = true;
    else
      fail_async(ops[i], code);
  }
  for (size_t i = 0; i < n; i++)
    if (done[i] && writes_output(ops[i])) memcpy(ops[i].recv, out[i].data(), out[i].size());
}

/* ---- groups ------------------------------------------------------------------------------- */

static thread_local int group_depth;
static thread_local std::vector<Collective> group_ops;
static thread_local ncclResult_t group_error = ncclSuccess;

extern "C" ncclResult_t ncclGroupStart(void) {
  group_depth++;
  return ncclSuccess;
}

/* Enqueues the group's work on its stream. */
static ncclResult_t launch(std::vector<Collective> ops) {
  if (ops.empty()) return ncclSuccess;
  cudaStream_t stream = ops[0].stream;
  for (const Collective &c : ops)
    if (c.stream != stream)
      return fail(ncclInvalidUsage, "ncclGroupEnd: the group's collectives are on several streams (not emulated)");
  bool blocking = true;
  for (const Collective &c : ops) blocking = blocking && c.comm->blocking;
  std::vector<ncclComm_t> comms;
  for (const Collective &c : ops) comms.push_back(c.comm);
  cudaError_t err = cuoptim_emu_enqueue_host_work(stream, [ops = std::move(ops)] { run_group(ops); });
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return fail(ncclUnhandledCudaError, "ncclGroupEnd: enqueueing on the stream: %s", cudaGetErrorString(err));
  }
  if (blocking) return ncclSuccess;
  for (ncclComm_t c : comms)
    if (!c->blocking) c->pending_progress = 1;
  return ncclInProgress;
}

extern "C" ncclResult_t ncclGroupEnd(void) {
  if (group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: no ncclGroupStart to end");
  if (--group_depth > 0) return ncclSuccess;
  std::vector<Collective> ops;
  ops.swap(group_ops);
  ncclResult_t error = group_error;
  group_error = ncclSuccess;
  if (error != ncclSuccess) return error; /* a call of the group failed: none of it runs */
  return launch(std::move(ops));
}

/* A collective inside a group waits for its end; outside, it is a group of its own. */
static ncclResult_t submit(const Collective &c) {
  if (c.count == 0) return ncclSuccess;
  if (group_depth > 0) {
    group_ops.push_back(c);
    return ncclSuccess;
  }
  return launch(std::vector<Collective>{c});
}

static bool device_range(const void *p, size_t bytes) {
  if (bytes == 0) return true;
  for (const void *q : {p, (const void *)((const char *)p + bytes - 1)}) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, q) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeManaged) return false;
  }
  return true;
}

/* NCCL's argument checks; a failure inside a group fails the whole group. */
static ncclResult_t check(const Collective &c, bool reduction, ncclRedOp_t op) {
  const char *call = KIND_CALLS[c.kind];
  if (!c.comm) return fail(ncclInvalidArgument, "%s: comm is NULL", call);
  if (c.comm->async_error != ncclSuccess)
    return fail(c.comm->async_error, "%s: the communicator failed earlier (ncclCommGetAsyncError)", call);
  if (element_bytes(c.type) == 0)
    return fail(ncclInvalidArgument, "%s: datatype %d is not emulated", call, (int)c.type);
  if (reduction && op != ncclSum)
    return fail(ncclInvalidArgument, "%s: op %d: only ncclSum is emulated", call, (int)op);
  if ((c.kind == REDUCE || c.kind == BROADCAST) && (c.root < 0 || c.root >= c.comm->nranks))
    return fail(ncclInvalidArgument, "%s: root %d: the communicator has %d ranks", call, c.root, c.comm->nranks);
  if (c.count > (size_t)INT_MAX)
    return fail(ncclInvalidArgument, "%s: count %zu: more than the emulation carries (2^31 - 1)", call, c.count);
  if (!device_range(c.send, input_bytes(c)))
    return fail(ncclInvalidArgument, "%s: sendbuff %p is not device memory of %zu bytes", call, c.send,
                input_bytes(c));
  if (writes_output(c) && !device_range(c.recv, output_bytes(c)))
    return fail(ncclInvalidArgument, "%s: recvbuff %p is not device memory of %zu bytes", call, c.recv,
                output_bytes(c));
  return ncclSuccess;
}

static ncclResult_t collective(const Collective &c, bool reduction, ncclRedOp_t op) {
  ncclResult_t result = check(c, reduction, op);
  if (result == ncclSuccess) return submit(c);
  if (group_depth > 0 && group_error == ncclSuccess) group_error = result;
  return result;
}

extern "C" ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                                      ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  return collective({ALL_REDUCE, sendbuff, recvbuff, count, datatype, 0, comm, stream}, true, op);
}

extern "C" ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                                          ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                          cudaStream_t stream) {
  return collective({REDUCE_SCATTER, sendbuff, recvbuff, recvcount, datatype, 0, comm, stream}, true, op);
}

extern "C" ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                                      ncclComm_t comm, cudaStream_t stream) {
  return collective({ALL_GATHER, sendbuff, recvbuff, sendcount, datatype, 0, comm, stream}, false, ncclSum);
}

extern "C" ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                                   ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  return collective({REDUCE, sendbuff, recvbuff, count, datatype, root, comm, stream}, true, op);
}

extern "C" ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                                      int root, ncclComm_t comm, cudaStream_t stream) {
  return collective({BROADCAST, sendbuff, recvbuff, count, datatype, root, comm, stream}, false, ncclSum);
}
