/* objects.h - the C layout of the binding's Python types, shared so that the fused
 * training step (trainer.c) can drive the encoders, the loss, the transforms and the
 * optimiser it is given without going back to Python. */
#ifndef CONVIRT_PY_OBJECTS_H
#define CONVIRT_PY_OBJECTS_H

#include "../adam.h"
#include "../augment.h"
#include "../encoder.h"
#include "arrays.h"

typedef struct {
    PyObject_HEAD
    cv_encoder enc;
    int built;
    int is_image;
    int training;
    int busy;
    int in_channels;
    float mean[4], std[4]; /* image normalisation per channel */
    int vocab_size, max_positions, type_vocab_size;
    npy_intp last_h, last_w; /* the last training input, for the input gradient's shape */
    int last_ndim;
    /* The images of the last training forward: the ResNet's backward reads them again
     * (the first convolution's weight gradient), so they are kept alive until then,
     * with where they are and a fingerprint of their values: backward refuses images
     * that changed in between (the gradient would silently be wrong). */
    PyObject *last_input;
    cv_batch last_batch;
    uint64_t last_fingerprint;
} EncoderObject;

typedef struct {
    PyObject_HEAD
    double image_to_text_weight; /* the paper's lambda */
    double logit_scale;          /* log(1 / temperature) */
    double max_logit_scale;      /* clamp of exp(logit_scale) when learnable */
    int learnable;
    int busy;
    cv_loss_workspace ws;
} LossObject;

typedef struct {
    PyObject_HEAD
    cv_augment_ranges ranges;
    ptrdiff_t size;
    float fill;
    int norm_len; /* 0: no normalisation, else 1 or 3 values */
    float mean[3], std[3];
    uint64_t seed;
    int busy;
    cv_augment_workspace ws;
    PyObject *pool[2]; /* outputs reused once nobody else holds them */
} AugmentObject;

typedef struct {
    PyObject_HEAD
    cv_adam adam;
    int initialized;
    int busy;
    PyObject *parameters; /* tuple of the arrays updated in place */
    PyObject *gradients;  /* tuple of the arrays read */
} AdamObject;

extern PyTypeObject cv_EncoderType, cv_LossType, cv_LossResultType, cv_AugmentType,
    cv_AdamType;

/* Images as the transforms read them: a uint8 array (N, H, W[, C]) or a sequence of
 * uint8 arrays (H, W[, C]), validated; release with cv_image_batch_release. */
typedef struct {
    PyObject *keep; /* the array or a tuple of arrays, held during the call */
    cv_image *images;
    npy_intp n, channels;
    int ndim; /* of the output: 3 (N, S, S) or 4 (N, S, S, C) */
} image_batch;

int cv_read_images(PyObject *obj, image_batch *b);
void cv_image_batch_release(image_batch *b);

/* Token ids, attention mask and optional token types validated for a text encoder. */
int cv_token_batch(EncoderObject *self, PyObject *ids_obj, PyObject *mask_obj,
                   PyObject *types_obj, cv_batch *batch);

/* exp(logit_scale), clamped when the temperature is learnable. */
double cv_loss_scale(const LossObject *self);
/* A LossResult from a core result; steals grad_a and grad_b (either may be NULL). */
PyObject *cv_make_loss_result(LossObject *self, const cv_loss_result *out,
                              PyArrayObject *grad_a, PyArrayObject *grad_b);

#endif
