/*
 * device.h — the CUDA language as the emulated device sees it: cuda/kernels.cu compiled by a
 * host C++ compiler (emu/kernels.cc includes this first), its kernels run by emu/runtime.cc.
 *
 * Each thread of a block is a fiber; __syncthreads, __syncthreads_or and the warp operations
 * are barriers of the scheduler, so the kernels' own indexing, reductions and control flow run
 * as written. Numerics are the host's (rules.h as the host backend compiles it), not the GPU's.
 */
#ifndef CUOPTIM_EMU_DEVICE_H
#define CUOPTIM_EMU_DEVICE_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#define CUOPTIM_EMULATED_DEVICE 1

/* Device code is plain host code here; shared memory is one static object per kernel, which the
 * blocks of a launch use one after another (blocks run in sequence). */
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)

/* The running thread's coordinates. */
struct cuoptimEmuThread {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
const cuoptimEmuThread *cuoptim_emu_thread(void);
#define threadIdx (cuoptim_emu_thread()->thread_idx)
#define blockIdx (cuoptim_emu_thread()->block_idx)
#define blockDim (cuoptim_emu_thread()->block_dim)
#define gridDim (cuoptim_emu_thread()->grid_dim)

/* Barriers: every live thread of the block (or warp) arrives, then all go on. `value` is OR-ed
 * over the arrivals; a warp exchange publishes 8 bytes per lane. */
int cuoptim_emu_block_barrier(int value);
uint64_t cuoptim_emu_warp_exchange(uint64_t mine, int source_lane, unsigned mask);
int cuoptim_emu_warp_any(int value, unsigned mask);

inline void __syncthreads(void) { (void)cuoptim_emu_block_barrier(0); }
inline int __syncthreads_or(int predicate) { return cuoptim_emu_block_barrier(predicate != 0); }
inline int __any_sync(unsigned mask, int predicate) { return cuoptim_emu_warp_any(predicate != 0, mask); }

template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of 8 bytes at most");
  uint64_t bits = 0;
  memcpy(&bits, &value, sizeof value);
  unsigned lane = cuoptim_emu_thread()->thread_idx.x % 32;
  /* Lanes past the warp's end keep their own value, as on the device. */
  unsigned source = lane + delta < 32 ? lane + delta : lane;
  bits = cuoptim_emu_warp_exchange(bits, (int)source, mask);
  T out;
  memcpy(&out, &bits, sizeof out);
  return out;
}

/* Blocks run one after another: an atomic is a plain read-modify-write, a fence orders nothing
 * that is not already in order. */
inline unsigned atomicAdd(unsigned *address, unsigned value) {
  unsigned old = *address;
  *address = old + value;
  return old;
}
inline void __threadfence(void) {}

using std::isfinite;

/* A launch: arguments converted to the kernel's parameter types now (as <<<>>> does), the body
 * run later by every thread — at once on an eager stream, at each replay when captured. */
void cuoptim_emu_launch_body(dim3 grid, dim3 block, cudaStream_t stream, const char *name,
                             std::function<void()> body);

template <typename... Params, typename... Args>
void cuoptim_emu_launch(dim3 grid, dim3 block, cudaStream_t stream, const char *name, void (*kernel)(Params...),
                        Args &&...args) {
  auto bound = std::make_shared<std::tuple<std::decay_t<Params>...>>(std::forward<Args>(args)...);
  cuoptim_emu_launch_body(grid, block, stream, name, [kernel, bound] { std::apply(kernel, *bound); });
}

#define CUOPTIM_LAUNCH(kernel, grid, block, stream, ...) \
  cuoptim_emu_launch(dim3(grid), dim3(block), (cudaStream_t)(stream), #kernel, kernel, __VA_ARGS__)

#endif /* CUOPTIM_EMU_DEVICE_H */
