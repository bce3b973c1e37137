/* nas_runtime: run an exported nas checkpoint (nas.export.save) from C or C++, without Python.
 *
 *   nas_model* m;
 *   if (nas_model_load("ck", &m) != NAS_OK) { fprintf(stderr, "%s\n", nas_last_error()); return 1; }
 *   float* logits = malloc(sizeof(float) * batch * nas_model_num_classes(m));
 *   nas_model_run(m, images, batch, logits, 1);   // float32 NCHW, as the PyTorch model takes
 *   nas_model_free(m);
 *
 * The logits are bit-identical to QuantizedNetwork.run in Python on the same CPU kernels (ISA: NAS_KERNELS_ISA when
 * set, else the best this CPU supports), run the same way: inverted-residual blocks fused where that needs less
 * memory (nas.kernels.memory.fusing_pays), squeeze-excite and (on one thread) stride-1 depthwise steps in place over
 * their inputs where ops.h in_place_pays says so, all activations in one arena (nas_model_arena_bytes). Every function returns NAS_OK or an error code and never crashes on a bad
 * checkpoint; nas_last_error() then says what went wrong, naming the file. One model may be used from several
 * threads (runs on it are serialized).
 */
#ifndef NAS_RUNTIME_H
#define NAS_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define NAS_API __declspec(dllexport)
#else
#define NAS_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum nas_status {
  NAS_OK = 0,
  NAS_ERR_ARGUMENT = 1, /* a NULL pointer, batch < 1, threads outside [1, 1024] */
  NAS_ERR_IO = 2,       /* a checkpoint file is missing or unreadable */
  NAS_ERR_FORMAT = 3,   /* corrupt, truncated or incompatible: JSON, safetensors, dtype, shape, unknown op */
  NAS_ERR_HASH = 4,     /* a file's SHA-256 differs from metadata.json */
  NAS_ERR_ISA = 5,      /* NAS_KERNELS_ISA names an unknown ISA or one this CPU cannot run */
  NAS_ERR_MEMORY = 6,   /* out of memory */
  NAS_ERR_INTERNAL = 7  /* anything else (a bug) */
} nas_status;

typedef struct nas_model nas_model;

/* Loads the checkpoint directory `dir` (checks every file's SHA-256, packs the weights). */
NAS_API nas_status nas_model_load(const char* dir, nas_model** model);

/* Frees a model (NULL is fine). */
NAS_API void nas_model_free(nas_model* model);

/* The input image: channels, height, width (float input is [batch][c][h][w], uint8 input [batch][h][w][c]). */
NAS_API nas_status nas_model_input_shape(const nas_model* model, int* channels, int* height, int* width);

/* Number of logits per image (0 for a NULL model). */
NAS_API int nas_model_num_classes(const nas_model* model);

/* The kernel ISA the model runs on, e.g. "avx2" ("" for a NULL model). */
NAS_API const char* nas_model_isa(const nas_model* model);

/* float32 NCHW images -> logits [batch][num_classes], quantized on the model's input grid as in Python. */
NAS_API nas_status nas_model_run(nas_model* model, const float* input, int batch, float* logits, int threads);

/* Already-quantized uint8 NHWC images -> logits [batch][num_classes]. */
NAS_API nas_status nas_model_run_u8(nas_model* model, const uint8_t* input, int batch, float* logits, int threads);

/* Bytes of the activation arena a run of `batch` images on `threads` threads uses: the input, every step's output
 * and the fused blocks' band buffers in one planned buffer (weights and an op's own small scratch not counted), as
 * nas.kernels.memory.peak_activation_bytes(arch, batch, threads=threads) predicts. Plans it (kept for such runs). */
NAS_API nas_status nas_model_arena_bytes(nas_model* model, int batch, int threads, size_t* bytes);

/* The message of the last failed call on this thread ("" when none). */
NAS_API const char* nas_last_error(void);

/* The name of a status code, e.g. "NAS_ERR_HASH". */
NAS_API const char* nas_status_name(nas_status status);

#ifdef __cplusplus
}
#endif

#endif /* NAS_RUNTIME_H */
