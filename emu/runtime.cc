/*
 * runtime.cc — the emulated device: the part of the CUDA runtime API that cuoptim, its tests and
 * its tools call, on host memory, and a scheduler that runs kernels thread by thread.
 *
 * One device (0). Memory from cudaMalloc is host memory of exactly the requested size (256-byte
 * aligned), so AddressSanitizer sees every out-of-bounds kernel access. Streams run their work
 * at once, in call order, unless a test holds a stream (emu/control.h): its work then waits in
 * the stream's queue, with the records of events and the work of other streams that wait for
 * them, until the test runs it. A host wait for such work (cudaStreamSynchronize,
 * cudaEventSynchronize, cudaDeviceSynchronize, cudaFree, cudaMemcpy behind the legacy stream)
 * would never end: the emulator says so and aborts. cudaDeviceSynchronize and the calls that
 * synchronize implicitly are counted. Stream capture records launches, asynchronous
 * copies and memsets into a graph that cudaGraphLaunch replays; the calls a global-mode capture
 * forbids (cudaMalloc, cudaMemcpy, cudaMemset, cudaDeviceSynchronize, ...) fail with
 * cudaErrorStreamCaptureUnsupported and invalidate the capture, as on a device.
 *
 * Kernels: blocks run one after another; a block's threads are fibers switched only at barriers.
 * Each fiber is made once (ucontext) and reused by every block; switches are _setjmp/_longjmp
 * (no system call; swapcontext would make two per switch).
 * CUOPTIM_EMU_SCHEDULE=reverse runs blocks and threads in the opposite order. A barrier that
 * cannot complete (threads of one block waiting at different barriers, a full-mask warp
 * operation with an exited lane) is a kernel bug: the emulator prints the kernel's name and
 * aborts.
 */
#include <cuda_runtime_api.h>
#include <setjmp.h>
#include <ucontext.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "control.h"
#include "device.h"
#include "host_work.h"

/* ---- errors ------------------------------------------------------------------------------- */

static thread_local cudaError_t last_error = cudaSuccess;

static cudaError_t fail(cudaError_t err) {
  if (err != cudaSuccess) last_error = err;
  return err;
}

extern "C" cudaError_t cudaGetLastError(void) {
  cudaError_t err = last_error;
  last_error = cudaSuccess;
  return err;
}

extern "C" cudaError_t cudaPeekAtLastError(void) { return last_error; }

struct ErrorText {
  cudaError_t err;
  const char *name, *text;
};

static const ErrorText ERROR_TEXTS[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorStreamCaptureUnsupported, "cudaErrorStreamCaptureUnsupported",
     "operation not permitted when stream is capturing"},
    {cudaErrorStreamCaptureInvalidated, "cudaErrorStreamCaptureInvalidated",
     "operation failed due to a previous error during capture"},
    {cudaErrorStreamCaptureImplicit, "cudaErrorStreamCaptureImplicit",
     "operation would make the legacy stream depend on a capturing blocking stream"},
    {cudaErrorStreamCaptureWrongThread, "cudaErrorStreamCaptureWrongThread",
     "attempt to terminate a thread-local capture sequence from another thread"},
    {cudaErrorIllegalState, "cudaErrorIllegalState", "operation not permitted in the current state"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
};

static const ErrorText *error_text(cudaError_t err) {
  for (const ErrorText &e : ERROR_TEXTS)
    if (e.err == err) return &e;
  return NULL;
}

extern "C" const char *cudaGetErrorName(cudaError_t err) {
  const ErrorText *e = error_text(err);
  return e ? e->name : "cudaErrorUnknown";
}

extern "C" const char *cudaGetErrorString(cudaError_t err) {
  const ErrorText *e = error_text(err);
  return e ? e->text : "unrecognized error code (emulated device)";
}

/* ---- device ------------------------------------------------------------------------------- */

static thread_local int current_device = 0;

extern "C" cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return fail(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int *device) {
  if (!device) return fail(cudaErrorInvalidValue);
  *device = current_device;
  return cudaSuccess;
}

extern "C" cudaError_t cudaSetDevice(int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

/* The emulated device says what it is wherever a GPU's name would be printed. */
extern "C" cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
  if (!prop) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  memset(prop, 0, sizeof *prop);
  snprintf(prop->name, sizeof prop->name, "cuoptim emulated device (CPU; timings mean nothing)");
  prop->multiProcessorCount = 1;
  prop->maxThreadsPerBlock = 1024;
  prop->warpSize = 32;
  prop->totalGlobalMem = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
  if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
  *total_bytes = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
  *free_bytes = (size_t)sysconf(_SC_AVPHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
  return cudaSuccess;
}

extern "C" cudaError_t cudaDriverGetVersion(int *version) {
  if (!version) return fail(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

extern "C" cudaError_t cudaRuntimeGetVersion(int *version) {
  if (!version) return fail(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

/* ---- streams, capture, graphs ------------------------------------------------------------- */

using Operation = std::function<void()>;

/* One piece of stream work as a graph keeps it. An event record is numbered when it is enqueued,
 * so every launch of a graph records anew. */
struct Work {
  Operation run;
  cudaEvent_t records = nullptr; /* set: the work records this event */
};

/* Work enqueued on a stream and not run yet (only while a test holds a stream, or while a stream
 * waits for an event that such work records): it runs once its stream is not held and, for an
 * event wait, once the record it waits for has run. */
struct Pending {
  Operation run;
  cudaEvent_t waits_on = nullptr;
  uint64_t record = 0;
};

struct CUstream_st {
  unsigned flags = 0;
  bool capturing = false;
  bool invalidated = false;
  enum cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::vector<Work> recorded;
  bool held = false;      /* cuoptim_emu_hold_stream: work stays pending until the test runs it */
  bool destroyed = false; /* cudaStreamDestroy with work pending: freed once that work has run */
  std::deque<Pending> pending;
};

struct CUgraph_st {
  std::vector<Work> operations;
};

struct CUgraphExec_st {
  std::vector<Work> operations;
};

struct CUevent_st {
  unsigned flags = 0;
  bool recorded = false;
  double host_ms = 0.0;           /* when the record ran on the host clock (the emulation's only clock) */
  uint64_t records = 0;           /* records enqueued so far; the latest one is the event's state */
  std::set<uint64_t> unfinished;  /* records enqueued and not run yet */
  int users = 0;                  /* pending records and waits that still refer to the event */
  bool destroyed = false;         /* cudaEventDestroy while users remain: freed with the last one */
};

/* The legacy default stream (NULL) as a queue, and every stream with its queue. */
static cudaStream_t legacy_queue(void) {
  static CUstream_st legacy;
  return &legacy;
}

static std::vector<cudaStream_t> &live_streams() {
  static std::vector<cudaStream_t> streams{legacy_queue()};
  return streams;
}

static cudaStream_t queue_of(cudaStream_t stream) { return stream ? stream : legacy_queue(); }

static bool latest_record_unfinished(const CUevent_st *event) {
  return event->records != 0 && event->unfinished.count(event->records) != 0;
}

static void release_event_use(cudaEvent_t event) {
  if (--event->users == 0 && event->destroyed) delete event;
}

static bool ready(const Pending &p) { return !p.waits_on || p.waits_on->unfinished.count(p.record) == 0; }

static void run_pending(cudaStream_t s) {
  Pending p = std::move(s->pending.front());
  s->pending.pop_front();
  if (p.run) p.run();
  if (p.waits_on) release_event_use(p.waits_on);
}

/* Runs every pending operation that can run, stream after stream, until none can. */
static void pump(void) {
  std::vector<cudaStream_t> &streams = live_streams();
  for (bool progress = true; progress;) {
    progress = false;
    for (cudaStream_t s : streams)
      while (!s->held && !s->pending.empty() && ready(s->pending.front())) {
        run_pending(s);
        progress = true;
      }
  }
  for (size_t i = 0; i < streams.size();)
    if (streams[i]->destroyed && streams[i]->pending.empty()) {
      delete streams[i];
      streams.erase(streams.begin() + (long)i);
    } else {
      i++;
    }
}

static bool has_pending(cudaStream_t stream) { return !queue_of(stream)->pending.empty(); }

/* The legacy stream waits for itself and for every blocking stream. */
static bool legacy_stream_busy(void) {
  for (cudaStream_t s : live_streams())
    if (!s->pending.empty() && (s == legacy_queue() || !(s->flags & cudaStreamNonBlocking))) return true;
  return false;
}

static bool device_busy(void) {
  for (cudaStream_t s : live_streams())
    if (!s->pending.empty()) return true;
  return false;
}

/* A host wait for work that only the test can release never ends: on a GPU the program would
 * hang. The emulation says so and aborts. */
[[noreturn]] static void waits_forever(const char *call, const char *what) {
  fprintf(stderr,
          "cuoptim emulated device: %s would wait forever: %s has work pending behind a stream held by "
          "cuoptim_emu_hold_stream\n",
          call, what);
  abort();
}

/* Calls that synchronize more than the stream they name (emu/control.h). */
static long device_synchronize_calls = 0;
static long implicit_synchronizations = 0;
static int memory_pools_supported = 1;

/* Streams now capturing (a forbidden call invalidates them all). */
static std::vector<cudaStream_t> &capturing_streams() {
  static std::vector<cudaStream_t> streams;
  return streams;
}

static bool global_capture_active(void) {
  for (cudaStream_t s : capturing_streams())
    if (s->mode != cudaStreamCaptureModeRelaxed) return true;
  return false;
}

/* A call that a global-mode capture forbids: it fails and every capture in progress is lost. */
static bool forbidden_during_capture(void) {
  if (!global_capture_active()) return false;
  for (cudaStream_t s : capturing_streams()) s->invalidated = true;
  return true;
}

#define FORBIDDEN_DURING_CAPTURE()                                             \
  do {                                                                         \
    if (forbidden_during_capture()) return fail(cudaErrorStreamCaptureUnsupported); \
  } while (0)

/* The legacy default stream (NULL) synchronizes with blocking streams: using it while one of
 * them is capturing is an error. */
static bool legacy_stream_blocked(cudaStream_t stream) {
  if (stream != NULL) return false;
  for (cudaStream_t s : capturing_streams())
    if (!(s->flags & cudaStreamNonBlocking)) return true;
  return false;
}

static double host_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

/* The operation that runs a record of `event` numbered now. */
static Operation numbered_record(cudaEvent_t event) {
  uint64_t n = ++event->records;
  event->unfinished.insert(n);
  event->users++;
  return [event, n] {
    event->unfinished.erase(n);
    event->recorded = true;
    event->host_ms = host_ms();
    release_event_use(event);
  };
}

/* Runs work on a stream (now, unless the stream or what it waits for is held), or records it when
 * the stream is capturing. */
static cudaError_t enqueue(cudaStream_t stream, Work work) {
  if (legacy_stream_blocked(stream)) {
    for (cudaStream_t s : capturing_streams()) s->invalidated = true;
    return fail(cudaErrorStreamCaptureImplicit);
  }
  if (stream && stream->capturing) {
    if (stream->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
    stream->recorded.push_back(std::move(work));
    return cudaSuccess;
  }
  Pending p;
  p.run = work.records ? numbered_record(work.records) : std::move(work.run);
  queue_of(stream)->pending.push_back(std::move(p));
  pump();
  return cudaSuccess;
}

static cudaError_t enqueue(cudaStream_t stream, Operation op) {
  Work work;
  work.run = std::move(op);
  return enqueue(stream, std::move(work));
}

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags) {
  if (!stream) return fail(cudaErrorInvalidValue);
  *stream = new CUstream_st();
  (*stream)->flags = flags;
  live_streams().push_back(*stream);
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *stream) { return cudaStreamCreateWithFlags(stream, 0); }

/* As on a device, work still pending runs before the stream goes. */
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!stream) return fail(cudaErrorInvalidResourceHandle);
  if (stream->capturing) return fail(cudaErrorIllegalState);
  stream->destroyed = true;
  stream->held = false;
  pump();
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (stream && stream->capturing) return fail(cudaErrorStreamCaptureUnsupported);
  if (legacy_stream_blocked(stream)) return fail(cudaErrorStreamCaptureImplicit);
  if (stream ? has_pending(stream) : legacy_stream_busy()) waits_forever("cudaStreamSynchronize", "the stream");
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamQuery(cudaStream_t stream) {
  FORBIDDEN_DURING_CAPTURE();
  return (stream ? has_pending(stream) : legacy_stream_busy()) ? cudaErrorNotReady : cudaSuccess;
}

/* The stream's later work waits for the event's latest record (when it has not run yet). */
extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  if (legacy_stream_blocked(stream)) return fail(cudaErrorStreamCaptureImplicit);
  if ((stream && stream->capturing) || !latest_record_unfinished(event)) return cudaSuccess;
  Pending gate;
  gate.waits_on = event;
  gate.record = event->records;
  event->users++;
  queue_of(stream)->pending.push_back(std::move(gate));
  pump();
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus *status) {
  if (!status) return fail(cudaErrorInvalidValue);
  if (legacy_stream_blocked(stream)) return fail(cudaErrorStreamCaptureImplicit);
  if (stream && stream->capturing)
    *status = stream->invalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  else
    *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  if (!stream) return fail(cudaErrorStreamCaptureUnsupported); /* the legacy stream cannot be captured */
  if (stream->capturing) return fail(cudaErrorIllegalState);
  stream->capturing = true;
  stream->invalidated = false;
  stream->mode = mode;
  stream->recorded.clear();
  capturing_streams().push_back(stream);
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph) {
  if (!graph) return fail(cudaErrorInvalidValue);
  *graph = NULL;
  if (!stream || !stream->capturing) return fail(cudaErrorIllegalState);
  std::vector<cudaStream_t> &active = capturing_streams();
  for (size_t i = 0; i < active.size(); i++)
    if (active[i] == stream) active.erase(active.begin() + (long)i);
  stream->capturing = false;
  std::vector<Work> recorded;
  recorded.swap(stream->recorded);
  if (stream->invalidated) return fail(cudaErrorStreamCaptureInvalidated);
  *graph = new CUgraph_st();
  (*graph)->operations = std::move(recorded);
  return cudaSuccess;
}

extern "C" cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  if (!graph) return fail(cudaErrorInvalidValue);
  delete graph;
  return cudaSuccess;
}

extern "C" cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
  if (!exec || !graph) return fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st();
  (*exec)->operations = graph->operations;
  return cudaSuccess;
}

extern "C" cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t *exec, cudaGraph_t graph,
                                                     unsigned long long flags) {
  return cudaGraphInstantiate(exec, graph, flags);
}

extern "C" cudaError_t cudaGraphUpload(cudaGraphExec_t exec, cudaStream_t stream) {
  if (!exec) return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}

extern "C" cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (!exec) return fail(cudaErrorInvalidValue);
  delete exec;
  return cudaSuccess;
}

extern "C" cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (!exec) return fail(cudaErrorInvalidValue);
  if (stream && stream->capturing) return fail(cudaErrorNotSupported); /* not needed by cuoptim */
  for (const Work &work : exec->operations) {
    cudaError_t err = enqueue(stream, work);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags) {
  if (!event) return fail(cudaErrorInvalidValue);
  *event = new CUevent_st();
  (*event)->flags = flags;
  return cudaSuccess;
}

extern "C" cudaError_t cudaEventCreate(cudaEvent_t *event) { return cudaEventCreateWithFlags(event, 0); }

/* As on a device, pending records and waits of the event still complete. */
extern "C" cudaError_t cudaEventDestroy(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  event->destroyed = true;
  if (event->users == 0) delete event;
  return cudaSuccess;
}

/* Captured, a record is a node of the graph (what cudaEventRecordExternal asks for). */
extern "C" cudaError_t cudaEventRecordWithFlags(cudaEvent_t event, cudaStream_t stream, unsigned int flags) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  Work work;
  work.records = event;
  return enqueue(stream, std::move(work));
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  return cudaEventRecordWithFlags(event, stream, cudaEventRecordDefault);
}

extern "C" cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  FORBIDDEN_DURING_CAPTURE();
  return latest_record_unfinished(event) ? cudaErrorNotReady : cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle);
  FORBIDDEN_DURING_CAPTURE();
  if (latest_record_unfinished(event)) waits_forever("cudaEventSynchronize", "the event's stream");
  return cudaSuccess;
}

/* The host time between the two records: what the emulation took, nothing about a GPU. */
extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return fail(cudaErrorInvalidValue);
  if (!start || !end || !start->recorded || !end->recorded) return fail(cudaErrorInvalidResourceHandle);
  if ((start->flags | end->flags) & cudaEventDisableTiming) return fail(cudaErrorInvalidResourceHandle);
  *ms = (float)(end->host_ms - start->host_ms);
  return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void) {
  device_synchronize_calls++;
  FORBIDDEN_DURING_CAPTURE();
  if (device_busy()) waits_forever("cudaDeviceSynchronize", "a stream");
  return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attribute, int device) {
  if (!value) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  if (attribute != cudaDevAttrMemoryPoolsSupported) return fail(cudaErrorInvalidValue); /* not emulated */
  *value = memory_pools_supported;
  return cudaSuccess;
}

/* ---- the test's controls (emu/control.h) -------------------------------------------------- */

extern "C" void cuoptim_emu_hold_stream(cudaStream_t stream) { queue_of(stream)->held = true; }

extern "C" int cuoptim_emu_run_one(cudaStream_t stream) {
  cudaStream_t s = queue_of(stream);
  if (s->pending.empty() || !ready(s->pending.front())) return 0;
  run_pending(s);
  pump();
  return 1;
}

extern "C" void cuoptim_emu_release_stream(cudaStream_t stream) {
  queue_of(stream)->held = false;
  pump();
}

extern "C" int cuoptim_emu_pending_operations(cudaStream_t stream) { return (int)queue_of(stream)->pending.size(); }

extern "C" long cuoptim_emu_device_synchronize_calls(void) { return device_synchronize_calls; }

extern "C" long cuoptim_emu_implicit_synchronizations(void) { return implicit_synchronizations; }

extern "C" void cuoptim_emu_set_memory_pools_supported(int supported) { memory_pools_supported = supported != 0; }

/* ---- memory ------------------------------------------------------------------------------- */

struct Allocation {
  size_t bytes;
  enum cudaMemoryType type;
};

static std::map<uintptr_t, Allocation> &allocations() {
  static std::map<uintptr_t, Allocation> map;
  return map;
}

/* The allocation holding p, or end(). */
static std::map<uintptr_t, Allocation>::iterator find_allocation(const void *p) {
  std::map<uintptr_t, Allocation> &map = allocations();
  uintptr_t a = (uintptr_t)p;
  auto it = map.upper_bound(a);
  if (it == map.begin()) return map.end();
  --it;
  if (a < it->first || a >= it->first + (it->second.bytes ? it->second.bytes : 1)) return map.end();
  return it;
}

static cudaError_t allocate(void **ptr, size_t bytes, enum cudaMemoryType type) {
  if (!ptr) return fail(cudaErrorInvalidValue);
  FORBIDDEN_DURING_CAPTURE();
  *ptr = NULL;
  void *p = NULL;
  if (bytes > ((size_t)1 << 40) || posix_memalign(&p, 256, bytes ? bytes : 1) != 0) return fail(cudaErrorMemoryAllocation);
  allocations()[(uintptr_t)p] = Allocation{bytes, type};
  *ptr = p;
  return cudaSuccess;
}

/* Whether ptr is an allocation of that type (device and managed memory are freed alike). */
static bool is_allocation(void *ptr, enum cudaMemoryType type) {
  auto it = allocations().find((uintptr_t)ptr);
  return it != allocations().end() && (it->second.type == cudaMemoryTypeHost) == (type == cudaMemoryTypeHost);
}

static void release_now(void *ptr) {
  allocations().erase((uintptr_t)ptr);
  free(ptr);
}

static cudaError_t release(void *ptr, enum cudaMemoryType type) {
  if (!ptr) return cudaSuccess;
  FORBIDDEN_DURING_CAPTURE();
  if (!is_allocation(ptr, type))
    return fail(type == cudaMemoryTypeHost ? cudaErrorInvalidValue : cudaErrorInvalidDevicePointer);
  release_now(ptr);
  return cudaSuccess;
}

/* cudaMalloc and cudaFree synchronize the device (CUDA Programming Guide, "Stream-Ordered Memory
 * Allocator"): counted; a free with work pending would wait for it. */
extern "C" cudaError_t cudaMalloc(void **ptr, size_t bytes) {
  implicit_synchronizations++;
  return allocate(ptr, bytes, cudaMemoryTypeDevice);
}

/* Stream-ordered: the memory is there at once (host memory), and freed when the stream reaches
 * the free. */
extern "C" cudaError_t cudaMallocAsync(void **ptr, size_t bytes, cudaStream_t stream) {
  if (stream && stream->capturing) return fail(cudaErrorNotSupported); /* graph allocations: not emulated */
  return allocate(ptr, bytes, cudaMemoryTypeDevice);
}

extern "C" cudaError_t cudaFreeAsync(void *ptr, cudaStream_t stream) {
  if (!ptr) return cudaSuccess;
  if (stream && stream->capturing) return fail(cudaErrorNotSupported);
  if (!is_allocation(ptr, cudaMemoryTypeDevice)) return fail(cudaErrorInvalidDevicePointer);
  return enqueue(stream, [ptr] { release_now(ptr); });
}

extern "C" cudaError_t cudaMallocManaged(void **ptr, size_t bytes, unsigned int flags) {
  return allocate(ptr, bytes, cudaMemoryTypeManaged);
}

extern "C" cudaError_t cudaMallocHost(void **ptr, size_t bytes) { return allocate(ptr, bytes, cudaMemoryTypeHost); }

extern "C" cudaError_t cudaFree(void *ptr) {
  implicit_synchronizations++;
  if (ptr && device_busy()) waits_forever("cudaFree", "a stream");
  return release(ptr, cudaMemoryTypeDevice);
}

extern "C" cudaError_t cudaFreeHost(void *ptr) { return release(ptr, cudaMemoryTypeHost); }

extern "C" cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes, const void *ptr) {
  if (!attributes) return fail(cudaErrorInvalidValue);
  memset(attributes, 0, sizeof *attributes);
  auto it = find_allocation(ptr);
  if (it == allocations().end()) {
    attributes->type = cudaMemoryTypeUnregistered;
    attributes->device = -2;
    return cudaSuccess;
  }
  attributes->type = it->second.type;
  attributes->device = 0;
  if (it->second.type != cudaMemoryTypeHost) attributes->devicePointer = (void *)ptr;
  if (it->second.type != cudaMemoryTypeDevice) attributes->hostPointer = (void *)ptr;
  return cudaSuccess;
}

/* Device memory may only be reached through the runtime: a copy whose device side is not an
 * allocation of ours (or is too short) is an error, as an invalid device pointer is. */
static bool device_range_ok(const void *p, size_t bytes) {
  auto it = find_allocation(p);
  if (it == allocations().end()) return false;
  return (uintptr_t)p + bytes <= it->first + it->second.bytes;
}

static cudaError_t check_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
  if (bytes == 0) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue);
  bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_device && !device_range_ok(dst, bytes)) || (src_device && !device_range_ok(src, bytes)))
    return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}

/* cudaMemcpy and cudaMemset run on the legacy default stream, which synchronizes with every
 * blocking stream: counted; the copy waits for that work. */
extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
  implicit_synchronizations++;
  FORBIDDEN_DURING_CAPTURE();
  cudaError_t err = check_copy(dst, src, bytes, kind);
  if (err != cudaSuccess || bytes == 0) return err;
  if (legacy_stream_busy()) waits_forever("cudaMemcpy", "the legacy default stream");
  memmove(dst, src, bytes);
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                                       cudaStream_t stream) {
  cudaError_t err = check_copy(dst, src, bytes, kind);
  if (err != cudaSuccess || bytes == 0) return err;
  return enqueue(stream, [dst, src, bytes] { memmove(dst, src, bytes); });
}

extern "C" cudaError_t cudaMemset(void *dst, int value, size_t bytes) {
  implicit_synchronizations++;
  FORBIDDEN_DURING_CAPTURE();
  if (bytes == 0) return cudaSuccess;
  if (!device_range_ok(dst, bytes)) return fail(cudaErrorInvalidValue);
  return enqueue(NULL, [dst, value, bytes] { memset(dst, value, bytes); });
}

extern "C" cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return cudaSuccess;
  if (!device_range_ok(dst, bytes)) return fail(cudaErrorInvalidValue);
  return enqueue(stream, [dst, value, bytes] { memset(dst, value, bytes); });
}

/* ---- kernels: blocks of fibers ------------------------------------------------------------ */

#define MAX_THREADS 1024
#define WARP 32
#define FIBER_STACK_BYTES (256 * 1024)

enum FiberState { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

/* A saved point of execution. */
typedef jmp_buf JumpBuffer;

struct Fiber {
  JumpBuffer context;
  char *stack;
  FiberState state;
  cuoptimEmuThread thread;
  uint64_t exchange; /* this lane's value in a warp exchange */
  int flag;          /* this lane's value in a warp vote */
  void *fake_stack;  /* AddressSanitizer's, while switched away */
};

struct BlockRun {
  const char *kernel;
  const std::function<void()> *body;
  int threads;
  int block_or;     /* the OR of the last completed block barrier */
  int pending_or;   /* the OR of the arrivals at the block barrier so far */
  int at_block;     /* threads waiting at the block barrier */
  int at_warp;      /* threads waiting at a warp barrier */
  int done;         /* threads finished */
  JumpBuffer scheduler;
  Fiber *current;
  Fiber fibers[MAX_THREADS];
};

static BlockRun *block_run(void);

static void die(const BlockRun *run, const char *why) {
  const Fiber *f = run->current;
  fprintf(stderr, "cuoptim emulated device: kernel %s, block %u: %s\n", run->kernel ? run->kernel : "?",
          f ? f->thread.block_idx.x : 0u, why);
  abort();
}

/* AddressSanitizer must be told when the stack changes (a sanitizer build of the emulation
 * checks the kernels' memory accesses). */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
static void *scheduler_fake_stack;
static const void *scheduler_stack_bottom;
static size_t scheduler_stack_size;
#define TO_FIBER(f) __sanitizer_start_switch_fiber(&scheduler_fake_stack, (f)->stack, FIBER_STACK_BYTES)
#define IN_FIBER(f) __sanitizer_finish_switch_fiber((f)->fake_stack, &scheduler_stack_bottom, &scheduler_stack_size)
#define TO_SCHEDULER(f) __sanitizer_start_switch_fiber(&(f)->fake_stack, scheduler_stack_bottom, scheduler_stack_size)
#define IN_SCHEDULER() __sanitizer_finish_switch_fiber(scheduler_fake_stack, NULL, NULL)
#else
#define TO_FIBER(f) ((void)0)
#define IN_FIBER(f) ((void)0)
#define TO_SCHEDULER(f) ((void)0)
#define IN_SCHEDULER() ((void)0)
#endif

/* Continues where `to` was saved. */
__attribute__((noinline, noreturn)) static void jump(JumpBuffer to) { _longjmp(to, 1); }

/* The running fiber gives control back to the scheduler; returns when the scheduler resumes it. */
static void yield_to_scheduler(BlockRun *run, Fiber *f) {
  if (_setjmp(f->context) == 0) {
    TO_SCHEDULER(f);
    jump(run->scheduler);
  }
  IN_FIBER(f);
}

/* The scheduler runs fiber f until it yields. */
static void resume(BlockRun *run, Fiber *f) {
  run->current = f;
  if (_setjmp(run->scheduler) == 0) {
    TO_FIBER(f);
    jump(f->context);
  }
  IN_SCHEDULER();
}

/* A fiber's whole life: parked at once, then one kernel thread per resume-to-DONE cycle. */
static ucontext_t boot_return;
static ucontext_t boot_fiber;

static void fiber_main(void) {
  BlockRun *run = block_run();
  Fiber *f = run->current;
  IN_FIBER(f);
  if (_setjmp(f->context) == 0) { /* made: park */
    TO_SCHEDULER(f);
    setcontext(&boot_return);
  }
  IN_FIBER(f);
  for (;;) {
    (*run->body)();
    f = run->current;
    f->state = DONE;
    run->done++;
    yield_to_scheduler(run, f);
  }
}

static void make_fiber(BlockRun *run, Fiber *f) {
  void *stack =
      mmap(NULL, FIBER_STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (stack == MAP_FAILED) die(run, "cannot map a fiber stack");
  mprotect(stack, 4096, PROT_NONE); /* guard page: a stack overflow faults */
  f->stack = (char *)stack;
  getcontext(&boot_fiber);
  boot_fiber.uc_stack.ss_sp = f->stack;
  boot_fiber.uc_stack.ss_size = FIBER_STACK_BYTES;
  boot_fiber.uc_link = NULL;
  makecontext(&boot_fiber, fiber_main, 0);
  run->current = f;
  TO_FIBER(f);
  swapcontext(&boot_return, &boot_fiber);
  IN_SCHEDULER();
  run->current = NULL;
}

static BlockRun *block_run(void) {
  static BlockRun *run = NULL;
  if (!run) {
    run = new BlockRun();
    for (int t = 0; t < MAX_THREADS; t++) make_fiber(run, &run->fibers[t]);
  }
  return run;
}

const cuoptimEmuThread *cuoptim_emu_thread(void) {
  BlockRun *run = block_run();
  if (!run->current) {
    fprintf(stderr, "cuoptim emulated device: thread coordinates read outside a kernel\n");
    abort();
  }
  return &run->current->thread;
}

/* Leaves the running fiber in `state` and returns to the scheduler; back here when released. */
static void wait_in(FiberState state) {
  BlockRun *run = block_run();
  Fiber *f = run->current;
  f->state = state;
  if (state == AT_BLOCK_BARRIER) run->at_block++;
  if (state == AT_WARP_BARRIER) run->at_warp++;
  yield_to_scheduler(run, f);
}

int cuoptim_emu_block_barrier(int value) {
  BlockRun *run = block_run();
  run->pending_or |= value;
  wait_in(AT_BLOCK_BARRIER);
  return run->block_or;
}

/* A warp operation in two barriers: every lane publishes its value and waits for the others
 * (publish), reads what it needs, then waits again so that no lane publishes its next value
 * before every lane has read this one (wait_for_lanes, which leaves the published values alone). */
static Fiber *wait_for_lanes(unsigned mask) {
  BlockRun *run = block_run();
  Fiber *f = run->current;
  if (mask != 0xffffffffu) die(run, "warp operation with a partial mask (not emulated)");
  wait_in(AT_WARP_BARRIER);
  return f;
}

static Fiber *publish(uint64_t mine, int flag, unsigned mask) {
  Fiber *f = block_run()->current;
  f->exchange = mine;
  f->flag = flag;
  return wait_for_lanes(mask);
}

static Fiber *warp_base(Fiber *f) {
  BlockRun *run = block_run();
  return &run->fibers[(f - run->fibers) / WARP * WARP];
}

uint64_t cuoptim_emu_warp_exchange(uint64_t mine, int source_lane, unsigned mask) {
  Fiber *f = publish(mine, 0, mask);
  uint64_t value = warp_base(f)[source_lane].exchange;
  wait_for_lanes(mask);
  return value;
}

int cuoptim_emu_warp_any(int value, unsigned mask) {
  Fiber *f = publish(0, value, mask);
  const Fiber *base = warp_base(f);
  int any = 0;
  for (int lane = 0; lane < WARP; lane++) any |= base[lane].flag;
  wait_for_lanes(mask);
  return any;
}

/* Releases the warps whose every lane waits at a warp barrier; false when none can go on. */
static bool release_warps(BlockRun *run) {
  if (run->at_warp == 0) return false;
  bool released = false;
  for (int base = 0; base < run->threads; base += WARP) {
    int lanes = run->threads - base < WARP ? run->threads - base : WARP;
    int waiting = 0, done = 0;
    for (int l = 0; l < lanes; l++) {
      waiting += run->fibers[base + l].state == AT_WARP_BARRIER;
      done += run->fibers[base + l].state == DONE;
    }
    if (waiting == 0) continue;
    if (lanes < WARP || done > 0) die(run, "full-mask warp operation in a warp with missing or exited lanes");
    if (waiting < lanes) continue;
    for (int l = 0; l < lanes; l++) run->fibers[base + l].state = RUNNABLE;
    run->at_warp -= lanes;
    released = true;
  }
  return released;
}

/* Releases the block barrier when every live thread waits at it. */
static bool release_block(BlockRun *run) {
  if (run->at_block == 0 || run->at_block + run->done < run->threads) return false;
  run->block_or = run->pending_or;
  run->pending_or = 0;
  run->at_block = 0;
  for (int t = 0; t < run->threads; t++)
    if (run->fibers[t].state == AT_BLOCK_BARRIER) run->fibers[t].state = RUNNABLE;
  return true;
}

/* CUOPTIM_EMU_SCHEDULE=reverse runs blocks, and threads between barriers, last first. A kernel
 * whose result depends on the order (a missing barrier, one block reading what another writes)
 * then gives other results than in the default order. */
static bool schedule_reversed(void) {
  static int reversed = -1;
  if (reversed < 0) {
    const char *v = getenv("CUOPTIM_EMU_SCHEDULE");
    reversed = v && strcmp(v, "reverse") == 0;
  }
  return reversed != 0;
}

static void run_block(BlockRun *run, dim3 grid, dim3 block, unsigned block_x) {
  for (int t = 0; t < run->threads; t++) {
    Fiber *f = &run->fibers[t];
    f->state = RUNNABLE;
    f->thread.thread_idx = make_uint3((unsigned)t, 0, 0);
    f->thread.block_idx = make_uint3(block_x, 0, 0);
    f->thread.block_dim = block;
    f->thread.grid_dim = grid;
  }
  run->pending_or = run->at_block = run->at_warp = run->done = 0;
  const bool reverse = schedule_reversed();
  for (;;) {
    for (int i = 0; i < run->threads; i++) {
      int t = reverse ? run->threads - 1 - i : i;
      if (run->fibers[t].state == RUNNABLE) resume(run, &run->fibers[t]);
    }
    run->current = NULL;
    if (run->done == run->threads) return;
    if (release_warps(run) || release_block(run)) continue;
    die(run, "threads wait at different barriers (a barrier in divergent code)");
  }
}

/* Kernels run so far, by the name the launch gave (the kernel's expression as written). */
static long kernels_run = 0;
static std::map<std::string, long> &kernels_run_by_name() {
  static std::map<std::string, long> map;
  return map;
}

extern "C" long cuoptim_emu_kernels_run(const char *prefix) {
  if (!prefix) return kernels_run;
  long n = 0;
  for (const auto &entry : kernels_run_by_name())
    if (entry.first.compare(0, strlen(prefix), prefix) == 0) n += entry.second;
  return n;
}

void cuoptim_emu_launch_body(dim3 grid, dim3 block, cudaStream_t stream, const char *name,
                             std::function<void()> body) {
  if (grid.x == 0 || grid.y != 1 || grid.z != 1 || block.x == 0 || block.x > MAX_THREADS || block.y != 1 ||
      block.z != 1) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  /* A failed enqueue (an invalidated capture) is already the last error, as for a launch. */
  (void)enqueue(stream, [grid, block, name, body = std::move(body)] {
    kernels_run++;
    kernels_run_by_name()[name]++;
    BlockRun *run = block_run();
    run->kernel = name;
    run->body = &body;
    run->threads = (int)block.x;
    for (unsigned i = 0; i < grid.x; i++) run_block(run, grid, block, schedule_reversed() ? grid.x - 1 - i : i);
  });
}

/* ---- host work in stream order (emu/host_work.h) ------------------------------------------ */

cudaError_t cuoptim_emu_enqueue_host_work(cudaStream_t stream, std::function<void()> work) {
  return enqueue(stream, std::move(work));
}
