/* Runs an exported nas checkpoint on raw float32 NCHW images and writes the float32 logits.
 *   run_checkpoint CHECKPOINT_DIR IMAGES.f32 BATCH LOGITS.f32 [THREADS]
 * IMAGES.f32 holds BATCH * C * H * W float32 values (C, H, W: nas_model_input_shape). */
#include <stdio.h>
#include <stdlib.h>

#include "nas_runtime.h"

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s CHECKPOINT_DIR IMAGES.f32 BATCH LOGITS.f32 [THREADS]\n", argv[0]);
    return 2;
  }
  const int batch = atoi(argv[3]), threads = argc > 5 ? atoi(argv[5]) : 1;
  nas_model* model;
  if (nas_model_load(argv[1], &model) != NAS_OK) {
    fprintf(stderr, "%s\n", nas_last_error());
    return 1;
  }
  int c, h, w;
  nas_model_input_shape(model, &c, &h, &w);
  const size_t n_in = (size_t)batch * c * h * w, n_out = (size_t)batch * nas_model_num_classes(model);
  float* images = malloc(n_in * sizeof(float));
  float* logits = malloc(n_out * sizeof(float));
  FILE* f = fopen(argv[2], "rb");
  if (!images || !logits || !f || fread(images, sizeof(float), n_in, f) != n_in) {
    fprintf(stderr, "%s: expected %zu float32 values\n", argv[2], n_in);
    return 1;
  }
  fclose(f);
  if (nas_model_run(model, images, batch, logits, threads) != NAS_OK) {
    fprintf(stderr, "%s\n", nas_last_error());
    return 1;
  }
  f = fopen(argv[4], "wb");
  if (!f || fwrite(logits, sizeof(float), n_out, f) != n_out || fclose(f) != 0) {
    fprintf(stderr, "%s: cannot write the logits\n", argv[4]);
    return 1;
  }
  size_t arena = 0; /* the activation memory that run used (input, outputs, fused blocks' band buffers) */
  if (nas_model_arena_bytes(model, batch, threads, &arena) != NAS_OK) {
    fprintf(stderr, "%s\n", nas_last_error());
    return 1;
  }
  printf("%s: %d images -> %d logits each on %s, activation arena %zu bytes\n", argv[1], batch,
         nas_model_num_classes(model), nas_model_isa(model), arena);
  nas_model_free(model);
  free(images);
  free(logits);
  return 0;
}
