/* train_mlp's checkpoints (checkpoint.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"

static const char program_magic[16] = "train_mlp ckpt 1";

/* Writing goes to PATH.tmp, renamed to PATH once complete. */
typedef struct {
  FILE *file;
  char final_path[4096], temp_path[4112];
} output_t;

static int output_open(output_t *out, const char *path) {
  if (snprintf(out->final_path, sizeof out->final_path, "%s", path) >= (int)sizeof out->final_path)
    return mlp_fail("checkpoint %s: the path is too long", path);
  snprintf(out->temp_path, sizeof out->temp_path, "%s.tmp", path);
  out->file = fopen(out->temp_path, "wb");
  if (!out->file) return mlp_fail("checkpoint %s: cannot write: %s", out->temp_path, strerror(errno));
  return 0;
}

static int output_write(output_t *out, const void *data, size_t bytes) {
  if (bytes && fwrite(data, 1, bytes, out->file) != bytes) return mlp_fail("checkpoint %s: write failed", out->temp_path);
  return 0;
}

/* Closes and renames on success (status 0); closes and removes the partial file otherwise. */
static int output_close(output_t *out, int status) {
  if (fclose(out->file) != 0 && status == 0) status = mlp_fail("checkpoint %s: write failed", out->temp_path);
  if (status == 0 && rename(out->temp_path, out->final_path) != 0)
    status = mlp_fail("checkpoint %s: cannot rename to %s: %s", out->temp_path, out->final_path, strerror(errno));
  if (status != 0) remove(out->temp_path);
  return status;
}

static int read_exactly(FILE *file, void *data, size_t bytes, const char *path) {
  if (fread(data, 1, bytes, file) != bytes) return mlp_fail("--resume %s: the file ends early", path);
  return 0;
}

static int optimizer_path(char *buffer, size_t capacity, const char *path, int shard_rank) {
  int n = shard_rank < 0 ? snprintf(buffer, capacity, "%s.optimizer", path)
                         : snprintf(buffer, capacity, "%s.optimizer.rank%d", path, shard_rank);
  if (n >= (int)capacity) return mlp_fail("checkpoint %s: the path is too long", path);
  return 0;
}

int checkpoint_save(const char *path, const checkpoint_identity_t *identity, const checkpoint_position_t *position,
                    const float *params, size_t count, cuoptimOptimizer_t optimizer, int shard_rank) {
  /* The optimizer first: a program file is only ever beside the state it was saved with. */
  if (checkpoint_save_optimizer(path, optimizer, shard_rank)) return -1;
  output_t out;
  if (output_open(&out, path)) return -1;
  uint64_t n = count;
  int status = output_write(&out, program_magic, sizeof program_magic);
  if (!status) status = output_write(&out, identity, sizeof *identity);
  if (!status) status = output_write(&out, position, sizeof *position);
  if (!status) status = output_write(&out, &n, sizeof n);
  if (!status) status = output_write(&out, params, count * sizeof *params);
  return output_close(&out, status);
}

/* Names the first field in which the checkpoint's run differs from this one. */
static int check_identity(const char *path, const checkpoint_identity_t *saved, const checkpoint_identity_t *now) {
#define SAME_NUMBER(field, option, format)                                                                    \
  if (saved->field != now->field)                                                                            \
    return mlp_fail("--resume %s: the checkpoint was made with " option " " format ", this run has " format, path, \
                    saved->field, now->field)
  SAME_NUMBER(seed, "--seed", "%llu");
  SAME_NUMBER(points, "--points", "%d");
  SAME_NUMBER(classes, "--classes", "%d");
  SAME_NUMBER(batch_size, "--batch-size", "%d");
  SAME_NUMBER(dtype, "--dtype (cuoptimDtype_t)", "%d");
  SAME_NUMBER(noise, "--noise", "%g");
  SAME_NUMBER(test_fraction, "--test-fraction", "%g");
#undef SAME_NUMBER
  int same_shape = saved->shape.num_layers == now->shape.num_layers;
  for (int l = 0; same_shape && l <= now->shape.num_layers; l++) same_shape = saved->shape.sizes[l] == now->shape.sizes[l];
  if (!same_shape) return mlp_fail("--resume %s: the checkpoint was made with other --hidden layers", path);
  if (strcmp(saved->optimizer_json, now->optimizer_json) != 0)
    return mlp_fail("--resume %s: the checkpoint was made with another optimizer config:\n  %s\nthis run has:\n  %s",
                    path, saved->optimizer_json, now->optimizer_json);
  return 0;
}

int checkpoint_load_program(const char *path, const checkpoint_identity_t *identity,
                            checkpoint_position_t *position, float *params, size_t count) {
  FILE *file = fopen(path, "rb");
  if (!file) return mlp_fail("--resume %s: cannot read: %s", path, strerror(errno));
  char magic[sizeof program_magic];
  checkpoint_identity_t saved;
  checkpoint_position_t at;
  uint64_t n = 0;
  int status = read_exactly(file, magic, sizeof magic, path);
  if (!status && memcmp(magic, program_magic, sizeof magic) != 0)
    status = mlp_fail("--resume %s: not a train_mlp checkpoint", path);
  if (!status) status = read_exactly(file, &saved, sizeof saved, path);
  if (!status) status = read_exactly(file, &at, sizeof at, path);
  if (!status) status = read_exactly(file, &n, sizeof n, path);
  if (!status) {
    saved.optimizer_json[sizeof saved.optimizer_json - 1] = '\0';
    status = check_identity(path, &saved, identity);
  }
  if (!status && n != count)
    status = mlp_fail("--resume %s: %llu parameters saved, the model has %zu", path, (unsigned long long)n, count);
  if (!status) status = read_exactly(file, params, count * sizeof *params, path);
  fclose(file);
  if (!status) *position = at;
  return status;
}

/* The optimizer's whole state, its float32 masters included, in one safetensors file written
 * crash-safely by cuoptim (cuoptimSave); cuoptimLoad checks it against the optimizer before it
 * changes anything. */
int checkpoint_save_optimizer(const char *path, cuoptimOptimizer_t optimizer, int shard_rank) {
  char state_path[4112];
  if (optimizer_path(state_path, sizeof state_path, path, shard_rank)) return -1;
  if (cuoptimSave(optimizer, state_path) != CUOPTIM_STATUS_SUCCESS)
    return mlp_fail("checkpoint %s: %s", state_path, cuoptimGetLastErrorMessage());
  return 0;
}

int checkpoint_load_optimizer(const char *path, cuoptimOptimizer_t optimizer, int shard_rank) {
  char state_path[4112];
  if (optimizer_path(state_path, sizeof state_path, path, shard_rank)) return -1;
  if (cuoptimLoad(optimizer, state_path) != CUOPTIM_STATUS_SUCCESS)
    return mlp_fail("--resume %s: %s", state_path, cuoptimGetLastErrorMessage());
  return 0;
}
