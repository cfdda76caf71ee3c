/* selftest.h — the emulated device's self-test kernels (emu/selftest.cc), for tests/test_emu.c. */
#ifndef CUOPTIM_EMU_SELFTEST_H
#define CUOPTIM_EMU_SELFTEST_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

int emu_selftest_barrier_sum(int *out, int blocks, int threads);
int emu_selftest_warp_ops(int *sums, int *any, int threads, int pick);
int emu_selftest_syncthreads_or(int *out, int threads, int pick);
int emu_selftest_coordinates(int *out, int blocks, int threads);
int emu_selftest_mixed_barrier(int *out, int threads);
int emu_selftest_add(int *data, int n, int value, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
