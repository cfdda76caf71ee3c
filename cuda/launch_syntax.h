/*
 * launch_syntax.h — CUOPTIM_LAUNCH(kernel, grid, block, stream, args...): a kernel launch written
 * once for nvcc (kernel<<<grid, block, 0, stream>>>(args...)) and for the emulated device of emu/,
 * whose device.h defines its own before this header is read.
 */
#ifndef CUOPTIM_LAUNCH
#define CUOPTIM_LAUNCH(kernel, grid, block, stream, ...) kernel<<<grid, block, 0, stream>>>(__VA_ARGS__)
#endif
