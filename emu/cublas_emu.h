/*
 * cublas_emu.h — a test hook of the emulated cuBLAS (emu/cublas.cc). Only the emulated build
 * (CUOPTIM_EMULATE_DEVICE=ON) has it.
 */
#ifndef CUOPTIM_EMU_CUBLAS_EMU_H
#define CUOPTIM_EMU_CUBLAS_EMU_H

#ifdef __cplusplus
extern "C" {
#endif

/* Matrix-product calls (cublasSgemmStridedBatched) run so far, as cuoptim_emu_kernels_run counts
 * kernels: each eager call once it runs, each call of a graph at every replay. */
long cuoptim_emu_cublas_calls(void);

#ifdef __cplusplus
}
#endif

#endif /* CUOPTIM_EMU_CUBLAS_EMU_H */
