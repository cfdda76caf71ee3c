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
