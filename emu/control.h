/*
 * control.h — what a test may do to the emulated device (emu/runtime.cc) beyond the CUDA runtime:
 * hold a stream's work back, to see what waits for it, and count the calls that synchronize more
 * than the stream they name. Only in the emulated build (CUOPTIM_EMULATE_DEVICE).
 */
#ifndef CUOPTIM_EMU_CONTROL_H
#define CUOPTIM_EMU_CONTROL_H

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* From now on, work enqueued on `stream` (NULL: the legacy default stream) waits until the test
 * runs it: the stream's events are not reached, streams that wait for them wait too, and a host
 * wait for any of it aborts the program (on a GPU it would never return). */
void cuoptim_emu_hold_stream(cudaStream_t stream);
/* Runs the first operation waiting on `stream` (a launch, a copy, a memset, an event record or an
 * event wait), if it can run; returns 1 when one ran, 0 when none could. The stream stays held. */
int cuoptim_emu_run_one(cudaStream_t stream);
/* Ends the hold: everything waiting on the stream runs. */
void cuoptim_emu_release_stream(cudaStream_t stream);
/* Operations enqueued on `stream` that have not run. */
int cuoptim_emu_pending_operations(cudaStream_t stream);

/* Calls of cudaDeviceSynchronize so far. */
long cuoptim_emu_device_synchronize_calls(void);
/* Calls so far that synchronize beyond their stream: cudaMalloc and cudaFree (the whole device),
 * cudaMemcpy and cudaMemset (the legacy default stream, and so every blocking stream). */
long cuoptim_emu_implicit_synchronizations(void);

/* Kernels run so far whose launch named them starting with `prefix` (NULL: every kernel): each
 * eager launch once it runs, each kernel of a graph at every replay. Names are the kernel
 * expressions as the launch wrote them ("update_kernel<KIND>", "prologue_kernel"). */
long cuoptim_emu_kernels_run(const char *prefix);

/* What cudaDeviceGetAttribute(cudaDevAttrMemoryPoolsSupported) answers (1 at start): 0 makes the
 * device one without stream-ordered allocation. */
void cuoptim_emu_set_memory_pools_supported(int supported);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_EMU_CONTROL_H */
