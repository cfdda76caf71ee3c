/*
 * test_emu.c — the emulated CUDA device itself (emu/), built only with CUOPTIM_EMULATE_DEVICE:
 * thread coordinates, block barriers, warp shuffles and votes, a barrier bug, stream capture and
 * replay, the calls a capture forbids, pointer attributes and copy checks. The GPU suites trust
 * these semantics when they run on the emulation.
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <signal.h>
#include <string.h>

#include "selftest.h"
#include "testutil.h"

static int *device_ints(int n) {
  int *p = NULL;
  CUDA_OK(cudaMalloc((void **)&p, (size_t)n * sizeof *p));
  CUDA_OK(cudaMemset(p, 0, (size_t)n * sizeof *p));
  return p;
}

static void download_ints(int *dst, const int *src, int n) {
  CUDA_OK(cudaMemcpy(dst, src, (size_t)n * sizeof *dst, cudaMemcpyDeviceToHost));
}

Test(emu_threads, coordinates_cover_every_block_and_thread) {
  enum { BLOCKS = 3, THREADS = 96 };
  int *d = device_ints(BLOCKS * THREADS), h[BLOCKS * THREADS];
  cr_assert_eq(emu_selftest_coordinates(d, BLOCKS, THREADS), cudaSuccess);
  download_ints(h, d, BLOCKS * THREADS);
  for (int b = 0; b < BLOCKS; b++)
    for (int t = 0; t < THREADS; t++) cr_expect_eq(h[b * THREADS + t], b * 1000 + t, "block %d thread %d", b, t);
  CUDA_OK(cudaFree(d));
}

Test(emu_threads, a_block_barrier_makes_every_write_visible) {
  int *d = device_ints(2), h[2];
  cr_assert_eq(emu_selftest_barrier_sum(d, 2, 1024), cudaSuccess);
  download_ints(h, d, 2);
  cr_expect_eq(h[0], 1024 * 1025 / 2);
  cr_expect_eq(h[1], 1024 * 1025 / 2);
  CUDA_OK(cudaFree(d));
}

/* Every shuffle of the tree reads the source lane's value of that round; every lane gets the
 * vote. In both schedules (the reverse one runs the high lanes first). */
Test(emu_threads, shuffle_tree_sums_each_warp_and_any_votes_per_warp) {
  enum { THREADS = 128, WARPS = THREADS / 32 };
  int *sums = device_ints(WARPS), *any = device_ints(THREADS), hs[WARPS], ha[THREADS];
  cr_assert_eq(emu_selftest_warp_ops(sums, any, THREADS, 5), cudaSuccess);
  download_ints(hs, sums, WARPS);
  download_ints(ha, any, THREADS);
  for (int w = 0; w < WARPS; w++) cr_expect_eq(hs[w], 31 * 32 / 2, "warp %d sum", w);
  for (int t = 0; t < THREADS; t++) cr_expect_eq(ha[t], 1, "thread %d any(lane == 5)", t);
  cr_assert_eq(emu_selftest_warp_ops(sums, any, THREADS, 40), cudaSuccess); /* no lane is 40 */
  download_ints(ha, any, THREADS);
  for (int t = 0; t < THREADS; t++) cr_expect_eq(ha[t], 0, "thread %d any(lane == 40)", t);
  CUDA_OK(cudaFree(sums));
  CUDA_OK(cudaFree(any));
}

Test(emu_threads, syncthreads_or_sees_one_thread) {
  int *d = device_ints(1), h = -1;
  cr_assert_eq(emu_selftest_syncthreads_or(d, 256, 200), cudaSuccess);
  download_ints(&h, d, 1);
  cr_expect_eq(h, 1);
  cr_assert_eq(emu_selftest_syncthreads_or(d, 256, 300), cudaSuccess); /* no thread is 300 */
  download_ints(&h, d, 1);
  cr_expect_eq(h, 0);
  CUDA_OK(cudaFree(d));
}

Test(emu_threads, threads_split_between_a_barrier_and_a_shuffle_abort, .signal = SIGABRT) {
  int *d = device_ints(64);
  emu_selftest_mixed_barrier(d, 64);
}

Test(emu_launch, a_bad_configuration_is_a_launch_error) {
  int *d = device_ints(1);
  cr_expect_eq(emu_selftest_coordinates(d, 0, 32), cudaErrorInvalidConfiguration, "grid of 0 blocks");
  cr_expect_eq(emu_selftest_coordinates(d, 1, 2048), cudaErrorInvalidConfiguration, "2048 threads");
  cr_expect_eq(cudaGetLastError(), cudaSuccess, "the error was reported once");
  CUDA_OK(cudaFree(d));
}

Test(emu_capture, a_captured_launch_replays_with_its_launch_time_arguments) {
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  int *d = device_ints(8), h[8];
  int staging[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  enum cudaStreamCaptureStatus status;
  CUDA_OK(cudaStreamIsCapturing(stream, &status));
  cr_expect_eq(status, cudaStreamCaptureStatusActive);
  CUDA_OK(cudaMemcpyAsync(d, staging, sizeof staging, cudaMemcpyHostToDevice, stream));
  int value = 10;
  cr_assert_eq(emu_selftest_add(d, 8, value, stream), cudaSuccess);
  value = 1000; /* after the launch: the graph keeps 10 */
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  download_ints(h, d, 8);
  cr_expect_eq(h[0], 0, "captured work does not run at capture time");
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  staging[0] = 100; /* a memcpy node reads its source when it runs */
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  download_ints(h, d, 8);
  cr_expect_eq(h[0], 110);
  cr_expect_eq(h[7], 18);
  (void)value;
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaFree(d));
  CUDA_OK(cudaStreamDestroy(stream));
}

Test(emu_capture, a_forbidden_call_fails_and_invalidates_the_capture) {
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  void *p = NULL;
  cr_expect_eq(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
  cr_expect_eq(cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);
  enum cudaStreamCaptureStatus status;
  CUDA_OK(cudaStreamIsCapturing(stream, &status));
  cr_expect_eq(status, cudaStreamCaptureStatusInvalidated);
  cudaGraph_t graph = (cudaGraph_t)1;
  cr_expect_eq(cudaStreamEndCapture(stream, &graph), cudaErrorStreamCaptureInvalidated);
  cr_expect_null(graph);
  (void)cudaGetLastError();
  CUDA_OK(cudaMalloc(&p, 64)); /* after the capture: allowed again */
  CUDA_OK(cudaFree(p));
  CUDA_OK(cudaStreamDestroy(stream));
}

Test(emu_memory, pointer_attributes_tell_device_managed_pinned_and_plain_host) {
  void *device = NULL, *managed = NULL, *pinned = NULL;
  int plain = 0;
  CUDA_OK(cudaMalloc(&device, 100));
  CUDA_OK(cudaMallocManaged(&managed, 100, cudaMemAttachGlobal));
  CUDA_OK(cudaMallocHost(&pinned, 100));
  struct cudaPointerAttributes a;
  CUDA_OK(cudaPointerGetAttributes(&a, (char *)device + 99));
  cr_expect_eq(a.type, cudaMemoryTypeDevice, "inside a device allocation");
  cr_expect_eq(a.device, 0);
  CUDA_OK(cudaPointerGetAttributes(&a, managed));
  cr_expect_eq(a.type, cudaMemoryTypeManaged);
  CUDA_OK(cudaPointerGetAttributes(&a, pinned));
  cr_expect_eq(a.type, cudaMemoryTypeHost);
  CUDA_OK(cudaPointerGetAttributes(&a, &plain));
  cr_expect_eq(a.type, cudaMemoryTypeUnregistered);
  CUDA_OK(cudaFree(device));
  CUDA_OK(cudaFree(managed));
  CUDA_OK(cudaFreeHost(pinned));
  cr_expect_eq(cudaFree(&plain), cudaErrorInvalidDevicePointer, "freeing what cudaMalloc did not give");
}

Test(emu_memory, a_copy_past_a_device_allocation_is_refused) {
  int *d = device_ints(4), h[8] = {0};
  cr_expect_eq(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  cr_expect_eq(cudaMemcpy(h, d + 1, 4 * sizeof *d, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  cr_expect_eq(cudaMemcpy(h, h + 4, 16, cudaMemcpyDeviceToHost), cudaErrorInvalidValue, "host memory as the source");
  (void)cudaGetLastError();
  CUDA_OK(cudaFree(d));
}

/* ---- the emulated NCCL (emu/nccl.cc), one rank in this process --------------------------------- */

#ifdef CUOPTIM_TEST_HAVE_NCCL
#include <nccl.h>

static ncclComm_t emu_comm(void) {
  ncclComm_t comm = NULL;
  cr_assert_eq(ncclCommInitAll(&comm, 1, NULL), ncclSuccess);
  return comm;
}

static float *device_floats(const float *values, int n) {
  float *p = NULL;
  CUDA_OK(cudaMalloc((void **)&p, (size_t)n * sizeof *p));
  CUDA_OK(cudaMemcpy(p, values, (size_t)n * sizeof *p, cudaMemcpyHostToDevice));
  return p;
}

/* NCCL may run a group's operations concurrently: here every input is read before any output is
 * written, so an operation that depends on another of its group sees the old data. */
Test(emu_nccl, a_group_reads_every_input_before_it_writes_an_output) {
  ncclComm_t comm = emu_comm();
  float x[4] = {1, 2, 3, 4}, y[4] = {10, 20, 30, 40}, z[4] = {0};
  float *dx = device_floats(x, 4), *dy = device_floats(y, 4), *dz = device_floats(z, 4);
  cr_assert_eq(ncclGroupStart(), ncclSuccess);
  cr_assert_eq(ncclAllReduce(dx, dy, 4, ncclFloat32, ncclSum, comm, NULL), ncclSuccess);
  cr_assert_eq(ncclAllReduce(dy, dz, 4, ncclFloat32, ncclSum, comm, NULL), ncclSuccess);
  cr_assert_eq(ncclGroupEnd(), ncclSuccess);
  CUDA_OK(cudaMemcpy(y, dy, sizeof y, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(z, dz, sizeof z, cudaMemcpyDeviceToHost));
  cr_expect(y[3] == 4 && z[3] == 40, "y[3] = %g (want 4), z[3] = %g (want the old 40)", y[3], z[3]);
  CUDA_OK(cudaFree(dx));
  CUDA_OK(cudaFree(dy));
  CUDA_OK(cudaFree(dz));
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

/* In stream order with the kernels: recorded by a capture, run at each replay, not at capture. */
Test(emu_nccl, a_captured_collective_runs_at_each_replay) {
  ncclComm_t comm = emu_comm();
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8] = {0};
  float *dx = device_floats(y, 8), *dy = device_floats(y, 8);
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  CUDA_OK(cudaMemcpyAsync(dx, x, sizeof x, cudaMemcpyHostToDevice, stream)); /* reads x when it runs */
  cr_assert_eq(ncclAllGather(dx, dy, 8, ncclFloat32, comm, stream), ncclSuccess);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaMemcpy(y, dy, sizeof y, cudaMemcpyDeviceToHost));
  cr_expect_eq(y[7], 0.0f, "the all-gather ran at capture time");
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  x[7] = 80; /* the copy before the all-gather in the stream brings it */
  CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaMemcpy(y, dy, sizeof y, cudaMemcpyDeviceToHost));
  cr_expect(y[0] == 1 && y[7] == 80, "after the replay y = {%g, ..., %g}, want {1, ..., 80}", y[0], y[7]);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaFree(dx));
  CUDA_OK(cudaFree(dy));
  CUDA_OK(cudaStreamDestroy(stream));
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

/* NCCL's argument errors at the call, with a text for ncclGetLastError; a failed call makes its
 * group fail, and nothing of the group runs. */
Test(emu_nccl, a_bad_argument_fails_the_call_and_its_group) {
  ncclComm_t comm = emu_comm();
  float host[4] = {1, 2, 3, 4}, y[4] = {0};
  float *dx = device_floats(host, 4), *dy = device_floats(y, 4);
  cr_expect_eq(ncclAllReduce(host, dy, 4, ncclFloat32, ncclSum, comm, NULL), ncclInvalidArgument);
  cr_expect(strstr(ncclGetLastError(comm), "sendbuff"), "last error: %s", ncclGetLastError(comm));
  cr_expect_eq(ncclReduce(dx, dy, 4, ncclFloat32, ncclSum, 1, comm, NULL), ncclInvalidArgument, "root 1 of 1 rank");
  cr_expect_eq(ncclAllReduce(dx, dy, 4, ncclFloat32, ncclMax, comm, NULL), ncclInvalidArgument, "not emulated");
  cr_assert_eq(ncclGroupStart(), ncclSuccess);
  cr_expect_eq(ncclAllGather(dx, dy, 4, ncclFloat32, comm, NULL), ncclSuccess);
  cr_expect_eq(ncclBroadcast(dx, host, 4, ncclFloat32, 0, comm, NULL), ncclInvalidArgument);
  cr_expect_eq(ncclGroupEnd(), ncclInvalidArgument);
  CUDA_OK(cudaMemcpy(y, dy, sizeof y, cudaMemcpyDeviceToHost));
  cr_expect_eq(y[0], 0.0f, "the all-gather of the failed group ran");
  cr_expect_eq(ncclGroupEnd(), ncclInvalidUsage, "an end without a start");
  CUDA_OK(cudaFree(dx));
  CUDA_OK(cudaFree(dy));
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

/* config.blocking = 0: the init and each group end answer ncclInProgress, and
 * ncclCommGetAsyncError says ncclInProgress once more before ncclSuccess. */
Test(emu_nccl, a_non_blocking_communicator_answers_in_progress) {
  ncclUniqueId id;
  cr_assert_eq(ncclGetUniqueId(&id), ncclSuccess);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = NULL;
  cr_assert_eq(ncclCommInitRankConfig(&comm, 1, id, 0, &config), ncclInProgress);
  ncclResult_t state = ncclSuccess;
  cr_expect_eq(ncclCommGetAsyncError(comm, &state), ncclSuccess);
  cr_expect_eq(state, ncclInProgress);
  cr_expect_eq(ncclCommGetAsyncError(comm, &state), ncclSuccess);
  cr_expect_eq(state, ncclSuccess);
  float x[2] = {1, 2}, y[2] = {0};
  float *dx = device_floats(x, 2), *dy = device_floats(y, 2);
  cr_assert_eq(ncclGroupStart(), ncclSuccess);
  cr_expect_eq(ncclReduceScatter(dx, dy, 2, ncclFloat32, ncclSum, comm, NULL), ncclSuccess);
  cr_expect_eq(ncclGroupEnd(), ncclInProgress);
  cr_expect_eq(ncclCommGetAsyncError(comm, &state), ncclSuccess);
  cr_expect_eq(state, ncclInProgress);
  cr_expect_eq(ncclCommGetAsyncError(comm, &state), ncclSuccess);
  cr_expect_eq(state, ncclSuccess);
  CUDA_OK(cudaFree(dx));
  CUDA_OK(cudaFree(dy));
  cr_expect_eq(ncclCommDestroy(comm), ncclSuccess);
}

/* More than one rank needs the ranks' processes under MPI: refused, saying so, without it. */
Test(emu_nccl, several_ranks_without_mpi_are_refused) {
  ncclUniqueId id;
  cr_assert_eq(ncclGetUniqueId(&id), ncclSuccess);
  ncclComm_t comm = NULL;
  cr_expect_eq(ncclCommInitRank(&comm, 2, id, 0), ncclInvalidUsage);
  cr_expect(strstr(ncclGetLastError(NULL), "MPI_Init"), "last error: %s", ncclGetLastError(NULL));
  ncclUniqueId forged;
  memset(&forged, 0x5a, sizeof forged);
  cr_expect_eq(ncclCommInitRank(&comm, 1, forged, 0), ncclInvalidArgument, "an id ncclGetUniqueId did not make");
}
#endif /* CUOPTIM_TEST_HAVE_NCCL */
