/*
 * nccl_emu.h — test hooks of the emulated NCCL (emu/nccl.cc), for faults that one CPU cannot
 * produce by itself. Only the emulated build (CUOPTIM_EMULATE_DEVICE=ON) has them.
 */
#ifndef CUOPTIM_EMU_NCCL_EMU_H
#define CUOPTIM_EMU_NCCL_EMU_H

#include <nccl.h>

#ifdef __cplusplus
extern "C" {
#endif

/* From now on ncclCommGetAsyncError(comm) reports `error`, and ncclGetLastError says `text`: what
 * NCCL reports after a collective failed on the device or a remote rank went away. */
void cuoptim_emu_nccl_inject_async_error(ncclComm_t comm, ncclResult_t error, const char *text);

/* From now on ncclCommCuDevice(comm) reports `device` (the emulated machine has only device 0). */
void cuoptim_emu_nccl_set_cu_device(ncclComm_t comm, int device);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_EMU_NCCL_EMU_H */
