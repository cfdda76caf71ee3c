/*
 * host_work.h — host work in stream order on the emulated device: what emu/nccl.cc's collectives
 * use to run in order with the kernels, and to be recorded into a graph when the stream captures.
 */
#ifndef CUOPTIM_EMU_HOST_WORK_H
#define CUOPTIM_EMU_HOST_WORK_H

#include <cuda_runtime_api.h>

#include <functional>

/* Runs `work` now on an eager stream (the emulated device runs every stream's work at once, in
 * call order), or records it into the capture of `stream`, to run at each replay of the graph.
 * Fails as a launch does (an invalidated capture, the legacy stream while a blocking stream
 * captures). */
cudaError_t cuoptim_emu_enqueue_host_work(cudaStream_t stream, std::function<void()> work);

#endif /* CUOPTIM_EMU_HOST_WORK_H */
