/*
 * selftest.cc — small kernels that pin down the emulated device's thread semantics, called by
 * tests/test_emu.c (built only with CUOPTIM_EMULATE_DEVICE). Each returns cudaGetLastError().
 */
#include "device.h"

#include "selftest.h"

/* Every thread writes its slot, a barrier, thread 0 sums the block's slots. */
__global__ void barrier_sum_kernel(int *out) {
  __shared__ int slots[1024];
  slots[threadIdx.x] = (int)threadIdx.x + 1;
  __syncthreads();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (unsigned t = 0; t < blockDim.x; t++) sum += slots[t];
    out[blockIdx.x] = sum;
  }
}

/* Per warp: the sum of the lanes by a shuffle tree; per thread: whether any lane of its warp is
 * `lane == pick`. */
__global__ void warp_ops_kernel(int *sums, int *any, int pick) {
  int lane = (int)threadIdx.x % 32;
  int x = lane;
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  int hit = __any_sync(0xffffffffu, lane == pick);
  /* Lane 0 holds the sum; every lane gets the vote. */
  if (lane == 0) sums[threadIdx.x / 32] = x;
  any[threadIdx.x] = hit;
}

/* __syncthreads_or of "thread == pick". */
__global__ void syncthreads_or_kernel(int *out, int pick) {
  int any = __syncthreads_or((int)threadIdx.x == pick);
  if (threadIdx.x == 0) *out = any;
}

/* Coordinates: out[block * blockDim + thread] = block * 1000 + thread. */
__global__ void coordinates_kernel(int *out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = (int)(blockIdx.x * 1000 + threadIdx.x);
}

/* Half of each warp at a block barrier, the other half in a full-mask shuffle (a kernel bug that
 * can hang a GPU): the emulator aborts. */
__global__ void mixed_barrier_kernel(int *out) {
  int x = (int)threadIdx.x;
  if (threadIdx.x % 32 < 16)
    __syncthreads();
  else
    x = __shfl_down_sync(0xffffffffu, x, 1);
  out[threadIdx.x] = x;
}

/* Adds `value` to every element (the launch argument is captured when the launch is made). */
__global__ void add_kernel(int *data, int n, int value) {
  for (int i = (int)threadIdx.x; i < n; i += (int)blockDim.x) data[i] += value;
}

extern "C" int emu_selftest_barrier_sum(int *out, int blocks, int threads) {
  CUOPTIM_LAUNCH(barrier_sum_kernel, blocks, threads, 0, out);
  return (int)cudaGetLastError();
}

extern "C" int emu_selftest_warp_ops(int *sums, int *any, int threads, int pick) {
  CUOPTIM_LAUNCH(warp_ops_kernel, 1, threads, 0, sums, any, pick);
  return (int)cudaGetLastError();
}

extern "C" int emu_selftest_syncthreads_or(int *out, int threads, int pick) {
  CUOPTIM_LAUNCH(syncthreads_or_kernel, 1, threads, 0, out, pick);
  return (int)cudaGetLastError();
}

extern "C" int emu_selftest_coordinates(int *out, int blocks, int threads) {
  CUOPTIM_LAUNCH(coordinates_kernel, blocks, threads, 0, out);
  return (int)cudaGetLastError();
}

extern "C" int emu_selftest_mixed_barrier(int *out, int threads) {
  CUOPTIM_LAUNCH(mixed_barrier_kernel, 1, threads, 0, out);
  return (int)cudaGetLastError();
}

extern "C" int emu_selftest_add(int *data, int n, int value, cudaStream_t stream) {
  CUOPTIM_LAUNCH(add_kernel, 1, 64, stream, data, n, value);
  return (int)cudaGetLastError();
}
