/* text_layers.c - the text tower's single layers of the core (embedding.c,
 * layernorm.c, attention.c, gelu.c and the pooling in bert.c), fast and naive, for the
 * tests (convirt._testing). Token rows are packed: a `lengths` sequence gives each
 * sequence's number of rows (layers.h). Inputs must be C-contiguous; outputs are new
 * arrays. */
#include "../bert.h"
#include "../layers.h"
#include "../py/arrays.h"
#include "../py/errors.h"
#include "testing.h"

/* A C-contiguous float32 array of ndim dimensions; shape entries < 0 are free. */
static int floats(PyObject *obj, const char *name, int ndim, npy_intp d0, npy_intp d1,
                  PyArrayObject **arr)
{
    cv_array_spec spec = {name, NPY_FLOAT32, ndim, ndim, {d0, d1, -1, -1}, 0, 1};
    return cv_check_array(obj, &spec, arr);
}

static int ints(PyObject *obj, const char *name, npy_intp d0, PyArrayObject **arr)
{
    cv_array_spec spec = {name, NPY_INT32, 1, 1, {d0, -1, -1, -1}, 0, 1};
    return cv_check_array(obj, &spec, arr);
}

/* lengths -> seq_start (n + 1) and probs_start (n + 1), malloc'ed; returns n or -1. */
static Py_ssize_t packing(PyObject *lengths, ptrdiff_t heads, ptrdiff_t **seq_start,
                          size_t **probs_start)
{
    PyObject *fast = PySequence_Fast(lengths, "lengths must be a sequence of ints");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    *seq_start = malloc((size_t)(n + 1) * sizeof(ptrdiff_t));
    *probs_start = malloc((size_t)(n + 1) * sizeof(size_t));
    if (!*seq_start || !*probs_start) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    (*seq_start)[0] = 0;
    (*probs_start)[0] = 0;
    for (Py_ssize_t s = 0; s < n; s++) {
        Py_ssize_t len = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(fast, s));
        if (len == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (len < 1) {
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "lengths[%zd] = %zd; every sequence needs a row",
                         s, len);
            return -1;
        }
        (*seq_start)[s + 1] = (*seq_start)[s] + len;
        (*probs_start)[s + 1] = (*probs_start)[s] + (size_t)(heads * len * len);
    }
    Py_DECREF(fast);
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "lengths is empty");
        return -1;
    }
    return n;
}

static PyObject *py_layernorm_forward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"x", "gamma", "beta", "eps", "reference", NULL};
    PyObject *x_obj, *g_obj, *b_obj;
    double eps = 1e-12;
    int reference = 0;
    PyArrayObject *x, *g, *b;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|dp", kwlist, &x_obj, &g_obj, &b_obj,
                                     &eps, &reference) ||
        floats(x_obj, "x", 2, -1, -1, &x))
        return NULL;
    npy_intp rows = PyArray_DIM(x, 0), dim = PyArray_DIM(x, 1);
    if (floats(g_obj, "gamma", 1, dim, -1, &g) || floats(b_obj, "beta", 1, dim, -1, &b))
        return NULL;
    npy_intp shape[2] = {rows, dim};
    PyArrayObject *out = cv_new_float_array(2, shape), *xhat = cv_new_float_array(2, shape),
                  *rstd = cv_new_float_array(1, shape);
    if (!out || !xhat || !rstd) {
        Py_XDECREF(out);
        Py_XDECREF(xhat);
        Py_XDECREF(rstd);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    (reference ? layernorm_forward_reference : layernorm_forward)(
        PyArray_DATA(out), PyArray_DATA(xhat), PyArray_DATA(rstd), PyArray_DATA(x),
        PyArray_DATA(g), PyArray_DATA(b), rows, dim, (float)eps);
    Py_END_ALLOW_THREADS;
    return Py_BuildValue("(NNN)", out, xhat, rstd);
}

static PyObject *py_layernorm_backward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"dout", "xhat", "rstd", "gamma", "reference", NULL};
    PyObject *d_obj, *x_obj, *r_obj, *g_obj;
    int reference = 0;
    PyArrayObject *d, *x, *r, *g;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|p", kwlist, &d_obj, &x_obj, &r_obj,
                                     &g_obj, &reference) ||
        floats(d_obj, "dout", 2, -1, -1, &d))
        return NULL;
    npy_intp rows = PyArray_DIM(d, 0), dim = PyArray_DIM(d, 1);
    if (floats(x_obj, "xhat", 2, rows, dim, &x) || floats(r_obj, "rstd", 1, rows, -1, &r) ||
        floats(g_obj, "gamma", 1, dim, -1, &g))
        return NULL;
    npy_intp shape[2] = {rows, dim};
    PyArrayObject *dx = cv_new_float_array(2, shape),
                  *dg = cv_new_float_array(1, shape + 1),
                  *db = cv_new_float_array(1, shape + 1);
    if (!dx || !dg || !db) {
        Py_XDECREF(dx);
        Py_XDECREF(dg);
        Py_XDECREF(db);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    memset(PyArray_DATA(dx), 0, (size_t)(rows * dim) * sizeof(float));
    memset(PyArray_DATA(dg), 0, (size_t)dim * sizeof(float));
    memset(PyArray_DATA(db), 0, (size_t)dim * sizeof(float));
    (reference ? layernorm_backward_reference : layernorm_backward)(
        PyArray_DATA(dx), PyArray_DATA(dg), PyArray_DATA(db), PyArray_DATA(d),
        PyArray_DATA(x), PyArray_DATA(r), PyArray_DATA(g), rows, dim);
    Py_END_ALLOW_THREADS;
    return Py_BuildValue("(NNN)", dx, dg, db);
}

static PyObject *py_gelu(PyObject *self, PyObject *args, int which)
{
    (void)self;
    PyObject *a_obj, *b_obj = NULL;
    PyArrayObject *a, *b = NULL;
    if (!PyArg_ParseTuple(args, which == 1 ? "OO" : "O", &a_obj, &b_obj) ||
        floats(a_obj, which == 1 ? "dout" : "x", 1, -1, -1, &a))
        return NULL;
    npy_intp count = PyArray_DIM(a, 0);
    if (which == 1 && floats(b_obj, "x", 1, count, -1, &b))
        return NULL;
    PyArrayObject *out = cv_new_float_array(1, &count);
    if (!out)
        return NULL;
    float *o = PyArray_DATA(out);
    const float *pa = PyArray_DATA(a);
    Py_BEGIN_ALLOW_THREADS;
    if (which == 0)
        gelu_forward(o, pa, (size_t)count);
    else if (which == 1)
        gelu_backward(o, pa, PyArray_DATA(b), (size_t)count);
    else
        for (npy_intp i = 0; i < count; i++)
            o[i] = gelu_erf(pa[i]);
    Py_END_ALLOW_THREADS;
    return (PyObject *)out;
}

static PyObject *py_gelu_forward(PyObject *self, PyObject *args)
{
    return py_gelu(self, args, 0);
}

static PyObject *py_gelu_backward(PyObject *self, PyObject *args)
{
    return py_gelu(self, args, 1);
}

static PyObject *py_erf(PyObject *self, PyObject *args)
{
    return py_gelu(self, args, 2);
}

/* attention's scratch for these sequences on `threads` threads, or NULL and
 * MemoryError. */
static float *attention_work(const ptrdiff_t *seq_start, Py_ssize_t n, npy_intp head_dim,
                             int threads)
{
    float *work =
        malloc(attention_work_floats(seq_start, n, head_dim, threads) * sizeof(float));
    if (!work)
        PyErr_NoMemory();
    return work;
}

/* qkv (m, 3 * width), lengths, heads -> checks, packing; returns n or -1. */
static Py_ssize_t attention_args(PyObject *qkv_obj, PyObject *lengths, Py_ssize_t heads,
                                 PyArrayObject **qkv, ptrdiff_t **seq_start,
                                 size_t **probs_start, npy_intp *width)
{
    if (heads < 1) {
        PyErr_Format(PyExc_ValueError, "heads must be >= 1, got %zd", heads);
        return -1;
    }
    if (floats(qkv_obj, "qkv", 2, -1, -1, qkv))
        return -1;
    npy_intp cols = PyArray_DIM(*qkv, 1);
    if (cols % (3 * heads) != 0) {
        PyErr_Format(PyExc_ValueError, "qkv has %ld columns, not 3 * heads * head_dim",
                     (long)cols);
        return -1;
    }
    *width = cols / 3;
    Py_ssize_t n = packing(lengths, heads, seq_start, probs_start);
    if (n < 0)
        return -1;
    if ((*seq_start)[n] != PyArray_DIM(*qkv, 0)) {
        PyErr_Format(PyExc_ValueError, "lengths sum to %zd but qkv has %ld rows",
                     (Py_ssize_t)(*seq_start)[n], (long)PyArray_DIM(*qkv, 0));
        return -1;
    }
    return n;
}

static PyObject *py_attention_forward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"qkv", "lengths", "heads", "reference", NULL};
    PyObject *qkv_obj, *lengths, *result = NULL;
    Py_ssize_t heads;
    int reference = 0;
    PyArrayObject *qkv, *ctx = NULL, *probs = NULL;
    ptrdiff_t *seq_start = NULL;
    size_t *probs_start = NULL;
    float *work = NULL;
    npy_intp width;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOn|p", kwlist, &qkv_obj, &lengths,
                                     &heads, &reference))
        return NULL;
    Py_ssize_t n =
        attention_args(qkv_obj, lengths, heads, &qkv, &seq_start, &probs_start, &width);
    if (n < 0)
        goto error;
    npy_intp ctx_shape[2] = {PyArray_DIM(qkv, 0), width};
    npy_intp probs_shape[1] = {(npy_intp)probs_start[n]};
    ctx = cv_new_float_array(2, ctx_shape);
    probs = cv_new_float_array(1, probs_shape);
    if (!ctx || !probs)
        goto error;
    int threads = cv_get_num_threads();
    if (!reference && !(work = attention_work(seq_start, n, width / heads, threads)))
        goto error;
    Py_BEGIN_ALLOW_THREADS;
    if (reference)
        attention_forward_reference(PyArray_DATA(ctx), PyArray_DATA(probs),
                                    PyArray_DATA(qkv), seq_start, probs_start, n, heads,
                                    width / heads);
    else
        attention_forward(PyArray_DATA(ctx), PyArray_DATA(probs), PyArray_DATA(qkv),
                          seq_start, probs_start, n, heads, width / heads, work, threads);
    Py_END_ALLOW_THREADS;
    result = Py_BuildValue("(OO)", ctx, probs);
error:
    Py_XDECREF(ctx);
    Py_XDECREF(probs);
    free(seq_start);
    free(probs_start);
    free(work);
    return result;
}

static PyObject *py_attention_backward(PyObject *self, PyObject *args, PyObject *kwds)
{
    (void)self;
    static char *kwlist[] = {"dctx", "probs", "qkv", "lengths", "heads", "reference", NULL};
    PyObject *dctx_obj, *probs_obj, *qkv_obj, *lengths, *result = NULL;
    Py_ssize_t heads;
    int reference = 0;
    PyArrayObject *qkv, *dctx, *probs, *dqkv = NULL;
    ptrdiff_t *seq_start = NULL;
    size_t *probs_start = NULL;
    float *work = NULL;
    npy_intp width;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOn|p", kwlist, &dctx_obj, &probs_obj,
                                     &qkv_obj, &lengths, &heads, &reference))
        return NULL;
    Py_ssize_t n =
        attention_args(qkv_obj, lengths, heads, &qkv, &seq_start, &probs_start, &width);
    if (n < 0)
        goto error;
    npy_intp m = PyArray_DIM(qkv, 0);
    if (floats(dctx_obj, "dctx", 2, m, width, &dctx) ||
        floats(probs_obj, "probs", 1, (npy_intp)probs_start[n], -1, &probs))
        goto error;
    npy_intp shape[2] = {m, 3 * width};
    if (!(dqkv = cv_new_float_array(2, shape)))
        goto error;
    int threads = cv_get_num_threads();
    if (!reference && !(work = attention_work(seq_start, n, width / heads, threads)))
        goto error;
    Py_BEGIN_ALLOW_THREADS;
    if (reference)
        attention_backward_reference(PyArray_DATA(dqkv), PyArray_DATA(probs),
                                     PyArray_DATA(dctx), PyArray_DATA(qkv), seq_start,
                                     probs_start, n, heads, width / heads);
    else
        attention_backward(PyArray_DATA(dqkv), PyArray_DATA(probs), PyArray_DATA(dctx),
                           PyArray_DATA(qkv), seq_start, probs_start, n, heads,
                           width / heads, work, threads);
    Py_END_ALLOW_THREADS;
    result = (PyObject *)dqkv;
    dqkv = NULL;
error:
    Py_XDECREF(dqkv);
    free(seq_start);
    free(probs_start);
    free(work);
    return result;
}

/* ids, positions, types (m int32) checked against the table sizes. */
static int token_rows(PyObject *ids_obj, PyObject *pos_obj, PyObject *types_obj,
                      npy_intp vocab, npy_intp positions, npy_intp type_vocab,
                      PyArrayObject **ids, PyArrayObject **pos, PyArrayObject **types)
{
    if (ints(ids_obj, "ids", -1, ids))
        return -1;
    npy_intp m = PyArray_DIM(*ids, 0);
    if (ints(pos_obj, "positions", m, pos) || ints(types_obj, "types", m, types))
        return -1;
    const int32_t *a = PyArray_DATA(*ids), *p = PyArray_DATA(*pos),
                  *t = PyArray_DATA(*types);
    for (npy_intp i = 0; i < m; i++)
        if (a[i] < 0 || a[i] >= vocab || p[i] < 0 || p[i] >= positions || t[i] < 0 ||
            t[i] >= type_vocab) {
            PyErr_Format(PyExc_ValueError, "token %ld indexes outside the tables", (long)i);
            return -1;
        }
    return 0;
}

static PyObject *py_embedding_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ids_obj, *pos_obj, *types_obj, *w_obj, *p_obj, *t_obj;
    PyArrayObject *ids, *pos, *types, *w, *p, *t;
    if (!PyArg_ParseTuple(args, "OOOOOO", &ids_obj, &pos_obj, &types_obj, &w_obj, &p_obj,
                          &t_obj) ||
        floats(w_obj, "word", 2, -1, -1, &w))
        return NULL;
    npy_intp dim = PyArray_DIM(w, 1);
    if (floats(p_obj, "position", 2, -1, dim, &p) ||
        floats(t_obj, "token_type", 2, -1, dim, &t) ||
        token_rows(ids_obj, pos_obj, types_obj, PyArray_DIM(w, 0), PyArray_DIM(p, 0),
                   PyArray_DIM(t, 0), &ids, &pos, &types))
        return NULL;
    npy_intp shape[2] = {PyArray_DIM(ids, 0), dim};
    PyArrayObject *out = cv_new_float_array(2, shape);
    if (!out)
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    embedding_forward(PyArray_DATA(out), PyArray_DATA(ids), PyArray_DATA(pos),
                      PyArray_DATA(types), PyArray_DATA(w), PyArray_DATA(p),
                      PyArray_DATA(t), shape[0], dim);
    Py_END_ALLOW_THREADS;
    return (PyObject *)out;
}

static PyObject *py_embedding_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *d_obj, *ids_obj, *pos_obj, *types_obj;
    Py_ssize_t vocab, positions, type_vocab;
    PyArrayObject *d, *ids, *pos, *types;
    if (!PyArg_ParseTuple(args, "OOOOnnn", &d_obj, &ids_obj, &pos_obj, &types_obj, &vocab,
                          &positions, &type_vocab) ||
        floats(d_obj, "dout", 2, -1, -1, &d) ||
        token_rows(ids_obj, pos_obj, types_obj, vocab, positions, type_vocab, &ids, &pos,
                   &types))
        return NULL;
    npy_intp m = PyArray_DIM(d, 0), dim = PyArray_DIM(d, 1);
    if (PyArray_DIM(ids, 0) != m) {
        PyErr_SetString(PyExc_ValueError, "dout and ids have different numbers of rows");
        return NULL;
    }
    npy_intp sw[2] = {vocab, dim}, sp[2] = {positions, dim}, st[2] = {type_vocab, dim};
    PyArrayObject *dw = cv_new_float_array(2, sw), *dp = cv_new_float_array(2, sp),
                  *dt = cv_new_float_array(2, st);
    if (!dw || !dp || !dt) {
        Py_XDECREF(dw);
        Py_XDECREF(dp);
        Py_XDECREF(dt);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    memset(PyArray_DATA(dw), 0, (size_t)(vocab * dim) * sizeof(float));
    memset(PyArray_DATA(dp), 0, (size_t)(positions * dim) * sizeof(float));
    memset(PyArray_DATA(dt), 0, (size_t)(type_vocab * dim) * sizeof(float));
    embedding_backward(PyArray_DATA(dw), PyArray_DATA(dp), PyArray_DATA(dt),
                       PyArray_DATA(d), PyArray_DATA(ids), PyArray_DATA(pos),
                       PyArray_DATA(types), m, dim);
    Py_END_ALLOW_THREADS;
    return Py_BuildValue("(NNN)", dw, dp, dt);
}

static int pooling_code(const char *name)
{
    if (!strcmp(name, "max"))
        return CV_POOL_MAX;
    if (!strcmp(name, "mean"))
        return CV_POOL_MEAN;
    if (!strcmp(name, "cls"))
        return CV_POOL_CLS;
    PyErr_Format(PyExc_ValueError, "pooling must be 'max', 'mean' or 'cls', got '%s'",
                 name);
    return -1;
}

static PyObject *py_bert_pool_forward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *h_obj, *lengths, *result = NULL;
    const char *name;
    PyArrayObject *h, *out = NULL, *argmax = NULL;
    ptrdiff_t *seq_start = NULL;
    size_t *probs_start = NULL;
    if (!PyArg_ParseTuple(args, "OOs", &h_obj, &lengths, &name) ||
        floats(h_obj, "hidden", 2, -1, -1, &h))
        return NULL;
    int pooling = pooling_code(name);
    Py_ssize_t n = pooling < 0 ? -1 : packing(lengths, 1, &seq_start, &probs_start);
    if (n < 0)
        goto error;
    if (seq_start[n] != PyArray_DIM(h, 0)) {
        PyErr_SetString(PyExc_ValueError, "lengths do not sum to the rows of hidden");
        goto error;
    }
    npy_intp shape[2] = {n, PyArray_DIM(h, 1)};
    out = cv_new_float_array(2, shape);
    argmax = (PyArrayObject *)PyArray_SimpleNew(2, shape, NPY_INT32);
    if (!out || !argmax)
        goto error;
    Py_BEGIN_ALLOW_THREADS;
    bert_pool_forward(PyArray_DATA(out), PyArray_DATA(argmax), PyArray_DATA(h), seq_start,
                      n, shape[1], pooling);
    Py_END_ALLOW_THREADS;
    result = Py_BuildValue("(OO)", out, argmax);
error:
    Py_XDECREF(out);
    Py_XDECREF(argmax);
    free(seq_start);
    free(probs_start);
    return result;
}

static PyObject *py_bert_pool_backward(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *d_obj, *a_obj, *lengths, *result = NULL;
    const char *name;
    PyArrayObject *d, *a, *dh = NULL;
    ptrdiff_t *seq_start = NULL;
    size_t *probs_start = NULL;
    if (!PyArg_ParseTuple(args, "OOOs", &d_obj, &a_obj, &lengths, &name) ||
        floats(d_obj, "dout", 2, -1, -1, &d))
        return NULL;
    npy_intp n = PyArray_DIM(d, 0), dim = PyArray_DIM(d, 1);
    cv_array_spec spec = {"argmax", NPY_INT32, 2, 2, {n, dim, -1, -1}, 0, 1};
    if (cv_check_array(a_obj, &spec, &a))
        return NULL;
    int pooling = pooling_code(name);
    if (pooling < 0 || packing(lengths, 1, &seq_start, &probs_start) != n) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError,
                            "lengths and dout disagree on the batch size");
        goto error;
    }
    const int32_t *am = PyArray_DATA(a);
    for (npy_intp s = 0; s < n && pooling == CV_POOL_MAX; s++)
        for (npy_intp j = 0; j < dim; j++)
            if (am[s * dim + j] < seq_start[s] || am[s * dim + j] >= seq_start[s + 1]) {
                PyErr_SetString(PyExc_ValueError, "argmax points outside its sequence");
                goto error;
            }
    npy_intp shape[2] = {seq_start[n], dim};
    if (!(dh = cv_new_float_array(2, shape)))
        goto error;
    Py_BEGIN_ALLOW_THREADS;
    bert_pool_backward(PyArray_DATA(dh), PyArray_DATA(d), am, seq_start, n, dim, pooling);
    Py_END_ALLOW_THREADS;
    result = (PyObject *)dh;
    dh = NULL;
error:
    Py_XDECREF(dh);
    free(seq_start);
    free(probs_start);
    return result;
}

static PyMethodDef text_layer_methods[] = {
    {"layernorm_forward", (PyCFunction)(void (*)(void))py_layernorm_forward,
     METH_VARARGS | METH_KEYWORDS,
     "layernorm_forward(x, gamma, beta, eps=1e-12, reference=False) -> (out, xhat, rstd)"},
    {"layernorm_backward", (PyCFunction)(void (*)(void))py_layernorm_backward,
     METH_VARARGS | METH_KEYWORDS,
     "layernorm_backward(dout, xhat, rstd, gamma, reference=False) -> (dx, dgamma, dbeta)"},
    {"gelu_forward", py_gelu_forward, METH_VARARGS, "gelu_forward(x) -> GELU(x), 1-D"},
    {"gelu_backward", py_gelu_backward, METH_VARARGS,
     "gelu_backward(dout, x) -> dout * GELU'(x), 1-D"},
    {"erf", py_erf, METH_VARARGS, "erf(x) -> the core's float erf, 1-D"},
    {"attention_forward", (PyCFunction)(void (*)(void))py_attention_forward,
     METH_VARARGS | METH_KEYWORDS,
     "attention_forward(qkv, lengths, heads, reference=False) -> (ctx, probs)"},
    {"attention_backward", (PyCFunction)(void (*)(void))py_attention_backward,
     METH_VARARGS | METH_KEYWORDS,
     "attention_backward(dctx, probs, qkv, lengths, heads, reference=False) -> dqkv"},
    {"embedding_forward", py_embedding_forward, METH_VARARGS,
     "embedding_forward(ids, positions, types, word, position, token_type) -> out"},
    {"embedding_backward", py_embedding_backward, METH_VARARGS,
     "embedding_backward(dout, ids, positions, types, vocab, max_positions, type_vocab) -> "
     "(dword, dposition, dtoken_type)"},
    {"bert_pool_forward", py_bert_pool_forward, METH_VARARGS,
     "bert_pool_forward(hidden, lengths, pooling) -> (out, argmax)"},
    {"bert_pool_backward", py_bert_pool_backward, METH_VARARGS,
     "bert_pool_backward(dout, argmax, lengths, pooling) -> dhidden"},
    {NULL, NULL, 0, NULL}};

int cv_testing_add_text_layers(PyObject *module)
{
    return PyModule_AddFunctions(module, text_layer_methods);
}
