/* encoder.c - a backbone plus its projection head over flat buffers (encoder.h). */
#include "core.h"
#include "encoder.h"

cv_status cv_encoder_finish(cv_encoder *enc, ptrdiff_t proj_hidden, ptrdiff_t proj_dim,
                            int freeze_prefix, uint64_t seed)
{
    enc->feature_dim = enc->backbone.feature_dim;
    enc->proj_dim = proj_dim;
    cv_status status =
        head_create(&enc->head, &enc->table, enc->feature_dim, proj_hidden, proj_dim);
    if (status != CV_OK)
        return status;
    if (freeze_prefix < 0 || freeze_prefix > enc->table.count)
        return cv_fail(CV_ERR_VALUE, "cannot freeze %d of %d tensors", freeze_prefix,
                       enc->table.count);
    enc->trainable_offset = 0;
    for (int i = 0; i < enc->table.count; i++) {
        cv_tensor *t = &enc->table.tensors[i];
        if (i < freeze_prefix && !t->is_buffer) {
            t->frozen = 1;
            enc->trainable_offset = t->offset + t->size;
        }
    }
    size_t np = enc->table.n_params, nb = enc->table.n_buffers;
    /* parameters and gradients (np floats each) and the buffers, in bytes */
    const size_t bytes = cv_mul_sat(cv_add_sat(cv_mul_sat(np, 2), nb), sizeof(float));
    const size_t memory = cv_physical_memory();
    if (bytes == SIZE_MAX || (memory && bytes > memory))
        return cv_fail(CV_ERR_MEMORY,
                       "an encoder of %zu parameters needs %.3g GiB for its parameters, "
                       "gradients and buffers; this machine has %.3g GiB",
                       np, (double)bytes / 1073741824.0, (double)memory / 1073741824.0);
    enc->params = cv_alloc_floats(np);
    enc->grads = cv_alloc_floats(np);
    enc->buffers = nb ? cv_alloc_floats(nb) : NULL;
    if (!enc->params || !enc->grads || (nb && !enc->buffers))
        return cv_fail(CV_ERR_MEMORY, "out of memory for %zu parameters", np);
    /* Alignment gaps too: a zeroed buffer has no garbage anywhere. */
    memset(enc->params, 0, np * sizeof(float));
    memset(enc->grads, 0, np * sizeof(float));
    if (nb)
        memset(enc->buffers, 0, nb * sizeof(float));
    enc->backbone.bind(enc->backbone.model, enc->params, enc->grads, enc->buffers);
    head_bind(&enc->head, enc->params, enc->grads);
    enc->backbone.init(enc->backbone.model, seed);
    head_init(&enc->head, seed);
    return CV_OK;
}

cv_status cv_encoder_check_batch(const cv_encoder *enc, const cv_batch *batch)
{
    const ptrdiff_t n = batch->n;
    if (n < 1)
        return cv_fail(CV_ERR_VALUE, "empty batch");
    /* A lower bound of the activations: the first convolution's 64 channels at a
     * quarter of the pixels, float32 (64 bytes per input pixel); for text, one float
     * per token and hidden unit in each of the six buffers of a layer. */
    size_t bytes;
    if (batch->kind == CV_INPUT_IMAGES) {
        if (batch->h < 1 || batch->w < 1)
            return cv_fail(CV_ERR_VALUE, "empty images (%td x %td)", batch->h, batch->w);
        bytes = cv_mul_sat(
            cv_mul_sat(cv_mul_sat((size_t)n, (size_t)batch->h), (size_t)batch->w), 64);
    } else {
        if (batch->t < 1)
            return cv_fail(CV_ERR_VALUE, "empty token batch (%td x %td)", n, batch->t);
        bytes = cv_mul_sat(
            cv_mul_sat(cv_mul_sat((size_t)n, (size_t)batch->t), (size_t)enc->feature_dim),
            6 * sizeof(float));
    }
    const size_t memory = cv_physical_memory();
    if (bytes == SIZE_MAX || (memory && bytes > memory))
        return cv_fail(CV_ERR_MEMORY,
                       "a batch of %td %s of %td x %td needs more than %.3g GiB of "
                       "activations; this machine has %.3g GiB",
                       n, batch->kind == CV_INPUT_IMAGES ? "images" : "sequences",
                       batch->kind == CV_INPUT_IMAGES ? batch->h : 1,
                       batch->kind == CV_INPUT_IMAGES ? batch->w : batch->t,
                       (double)bytes / 1073741824.0, (double)memory / 1073741824.0);
    return CV_OK;
}

cv_status cv_encoder_forward(cv_encoder *enc, float *features, float *embeddings,
                             const cv_batch *batch, int training)
{
    const ptrdiff_t n = batch->n;
    cv_status status = cv_encoder_check_batch(enc, batch);
    if (status != CV_OK)
        return status;
    /* The head needs the features; keep them in the encoder when the caller does not
     * want them, or when training (the caller's buffer may change before backward). */
    float *feats = features;
    if (!feats || (training && embeddings)) {
        if (cv_reserve((void **)&enc->features, &enc->features_cap,
                       cv_mul_sat((size_t)n, (size_t)enc->feature_dim), sizeof(float)))
            return cv_fail(CV_ERR_MEMORY, "out of memory for %td x %td features", n,
                           enc->feature_dim);
        feats = enc->features;
    }
    enc->has_forward = 0;
    status = enc->backbone.forward(enc->backbone.model, feats, batch, training);
    if (status != CV_OK)
        return status;
    if (embeddings) {
        if ((status = cv_check_interrupt()) != CV_OK ||
            (status = head_forward(&enc->head, embeddings, feats, n)) != CV_OK)
            return status;
    }
    if (features && feats != features)
        memcpy(features, feats, (size_t)(n * enc->feature_dim) * sizeof(float));
    enc->n = n;
    enc->has_forward = training && embeddings;
    if (training && !embeddings)
        enc->has_forward = 2; /* backbone only: backward takes d_features alone */
    return CV_OK;
}

cv_status cv_encoder_backward(cv_encoder *enc, float *d_input, const float *d_embeddings,
                              const float *d_features)
{
    if (!enc->has_forward)
        return cv_fail(CV_ERR_STATE,
                       "backward needs a forward in training mode first (call train())");
    if (d_embeddings && enc->has_forward == 2)
        return cv_fail(CV_ERR_STATE,
                       "the last forward did not compute embeddings, so there is no "
                       "gradient path from them");
    const ptrdiff_t n = enc->n;
    size_t count = (size_t)(n * enc->feature_dim);
    if (cv_reserve((void **)&enc->d_features, &enc->d_features_cap, count, sizeof(float)))
        return cv_fail(CV_ERR_MEMORY, "out of memory for feature gradients");
    float *dh = enc->d_features;
    if (d_embeddings) {
        cv_status status = head_backward(
            &enc->head, enc->freeze_backbone && !d_input ? NULL : dh, d_embeddings);
        if (status != CV_OK)
            return status;
    } else {
        memset(dh, 0, count * sizeof(float));
    }
    if (enc->freeze_backbone && !d_input)
        return CV_OK;
    if (d_features)
        for (size_t i = 0; i < count; i++)
            dh[i] += d_features[i];
    return enc->backbone.backward(enc->backbone.model, d_input, dh);
}

cv_status cv_encoder_set_batchnorm_reduce(cv_encoder *enc, cv_reduce_fn fn, void *user)
{
    if (!enc->backbone.set_batchnorm_reduce)
        return cv_fail(CV_ERR_VALUE, "the %s backbone has no batch norm to synchronise",
                       enc->backbone.kind);
    enc->backbone.set_batchnorm_reduce(enc->backbone.model, fn, user);
    return CV_OK;
}

void cv_encoder_zero_grad(cv_encoder *enc)
{
    if (enc->grads)
        memset(enc->grads, 0, enc->table.n_params * sizeof(float));
}

void cv_encoder_free(cv_encoder *enc)
{
    if (enc->backbone.free && enc->backbone.model)
        enc->backbone.free(enc->backbone.model);
    head_free(&enc->head);
    cv_table_free(&enc->table);
    free(enc->params);
    free(enc->grads);
    free(enc->buffers);
    free(enc->features);
    free(enc->d_features);
    memset(enc, 0, sizeof *enc);
}
