/* cactus._kernels: the only file that knows CPython. Every entry point checks its arguments
 * (type, dtype, contiguity, shape), then releases the GIL while the C runs. It owns the context:
 * the kernel table (CACTUS_ISA / set_isa) and the thread pool (set_threads), and a time counter
 * for profiling (time spent inside kernels, read by `cactus bench`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tape.h"

static Ctx ctx;
static Arena arena = {NULL, 0, ATOMIC_FLAG_INIT};
static pid_t ctx_pid;
static int n_threads = 1;
static int pin_cpus[256], n_pin_cpus;  /* set_threads' CPU order (pool.h: pool_new) */
static int profiling;
static long long prof_ns, prof_calls;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int ensure_pool(void) {
    if (ctx.pool && ctx_pid == getpid()) return 0;
    ctx.pool = pool_new(n_threads, pin_cpus, n_pin_cpus);  /* after fork the old pool's threads are gone: start anew */
    ctx_pid = getpid();
    if (!ctx.pool) { PyErr_NoMemory(); return -1; }
    return 0;
}

#define RUN(stmt)                                          \
    do {                                                   \
        long long t0_ = profiling ? now_ns() : 0;          \
        Py_BEGIN_ALLOW_THREADS stmt; Py_END_ALLOW_THREADS  \
        if (profiling) { prof_ns += now_ns() - t0_; prof_calls++; } \
    } while (0)

/* ------------------------------------------------------------------ argument checks */

static PyArrayObject *arr(PyObject *o, const char *name, int typenum, int ndim) {
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy array, got %s", name, Py_TYPE(o)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (typenum >= 0 && PyArray_TYPE(a) != typenum) {
        PyArray_Descr *want = PyArray_DescrFromType(typenum);
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %S, got %S", name, (PyObject *)want, (PyObject *)PyArray_DESCR(a));
        Py_XDECREF(want);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got %d", name, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: must be C-contiguous and aligned", name);
        return NULL;
    }
    return a;
}

static PyArrayObject *out_arr(PyArrayObject *ref_or_null, int nd, npy_intp *dims, int typenum) {
    (void)ref_or_null;
    return (PyArrayObject *)PyArray_EMPTY(nd, dims, typenum, 0);
}

static int writable(PyArrayObject *a, const char *name) {
    if (!PyArray_ISWRITEABLE(a)) { PyErr_Format(PyExc_ValueError, "%s: must be writeable", name); return 0; }
    return 1;
}

/* ------------------------------------------------------------------ Weight */

typedef struct {
    PyObject_HEAD
    QStack s;
    PyObject *data, *scales;
} WeightObject;

static int Weight_init(WeightObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"data", "scales", "fmt", "group", "k", NULL};
    PyObject *data, *scales = Py_None;
    const char *fmt;
    int group = 0;
    Py_ssize_t k;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOsin", kwlist, &data, &scales, &fmt, &group, &k)) return -1;
    const Format *F = format_by_name(fmt);
    if (!F) { PyErr_Format(PyExc_ValueError, "Weight: unknown format '%s'", fmt); return -1; }
    const int f = (int)(F - FORMATS);
    PyArrayObject *d = arr(data, "Weight data", -1, -1);
    if (!d) return -1;
    if (PyArray_DESCR(d)->kind != F->kind || PyArray_ITEMSIZE(d) != F->itemsize) {
        PyErr_Format(PyExc_TypeError, "Weight data: format %s is stored as %c%d, got %S", fmt, F->kind, F->itemsize,
                     (PyObject *)PyArray_DESCR(d));
        return -1;
    }
    int nd = PyArray_NDIM(d);
    if (nd != 2 && nd != 3) { PyErr_SetString(PyExc_ValueError, "Weight data: expected (N, K) or (E, N, K)"); return -1; }
    npy_intp *dims = PyArray_DIMS(d);
    QStack *s = &self->s;
    memset(s, 0, sizeof *s);
    s->m.fmt = f;
    s->m.k = k;
    s->m.n = dims[nd - 2];
    s->e = nd == 3 ? dims[0] : 1;
    s->m.data = (const uint8_t *)PyArray_DATA(d);
    s->m.row_bytes = PyArray_STRIDES(d)[nd - 2];
    s->data_stride = nd == 3 ? PyArray_STRIDES(d)[0] : 0;
    if (k <= 0 || s->m.n <= 0) { PyErr_SetString(PyExc_ValueError, "Weight: empty matrix"); return -1; }
    if (F->quantized && (group <= 0 || group % 32)) {
        PyErr_Format(PyExc_ValueError, "Weight: group size must be a positive multiple of 32, got %d", group);
        return -1;
    }
    s->m.group = F->quantized ? group : 0;
    s->m.kp = F->quantized ? (k + group - 1) / group * group : k;
    s->m.ng = F->quantized ? s->m.kp / group : 0;
    const npy_intp want = F->row_bytes(s->m.kp) / F->itemsize;
    if (dims[nd - 1] != want) {
        PyErr_Format(PyExc_ValueError, "Weight data: last dim %zd, format %s with K=%zd, G=%d needs %zd",
                     (Py_ssize_t)dims[nd - 1], fmt, k, group, (Py_ssize_t)want);
        return -1;
    }
    if (F->quantized) {
        PyArrayObject *sc = arr(scales, "Weight scales", NPY_FLOAT16, nd);
        if (!sc) return -1;
        npy_intp *sd = PyArray_DIMS(sc);
        if (sd[nd - 1] != s->m.ng || sd[nd - 2] != s->m.n || (nd == 3 && sd[0] != dims[0])) {
            PyErr_SetString(PyExc_ValueError, "Weight scales: shape does not match (..., N, Kp/G)");
            return -1;
        }
        s->m.scales = (const uint16_t *)PyArray_DATA(sc);
        s->scale_stride = nd == 3 ? s->m.n * s->m.ng : 0;
        Py_INCREF(scales);
        Py_XSETREF(self->scales, scales);
    }
    Py_INCREF(data);
    Py_XSETREF(self->data, data);
    return 0;
}

static void Weight_dealloc(WeightObject *self) {
    Py_XDECREF(self->data);
    Py_XDECREF(self->scales);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Weight_get(WeightObject *self, void *which) {
    switch ((int)(intptr_t)which) {
    case 0: return PyLong_FromLongLong(self->s.m.n);
    case 1: return PyLong_FromLongLong(self->s.m.k);
    case 2: return PyLong_FromLongLong(self->s.e);
    default: return PyUnicode_FromString(FORMATS[self->s.m.fmt].name);
    }
}

static PyGetSetDef Weight_getset[] = {
    {"n", (getter)Weight_get, NULL, "rows", (void *)0},
    {"k", (getter)Weight_get, NULL, "logical K", (void *)1},
    {"experts", (getter)Weight_get, NULL, "stacked matrices (1 for a plain matrix)", (void *)2},
    {"fmt", (getter)Weight_get, NULL, "weight format", (void *)3},
    {NULL}};

static PyTypeObject WeightType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cactus._kernels.Weight",
    .tp_doc = "Weight(data, scales, fmt, group, k): an (N, K) or (E, N, K) weight read in place.",
    .tp_basicsize = sizeof(WeightObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Weight_init,
    .tp_dealloc = (destructor)Weight_dealloc,
    .tp_getset = Weight_getset,
};

static WeightObject *weight(PyObject *o, const char *name) {
    if (!PyObject_TypeCheck(o, &WeightType)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a cactus._kernels.Weight", name);
        return NULL;
    }
    return (WeightObject *)o;
}

#define NARGS(n, fname)                                                                   \
    if (nargs != (n)) {                                                                   \
        PyErr_Format(PyExc_TypeError, fname "() takes %d arguments (%zd given)", (n), nargs); \
        return NULL;                                                                      \
    }

static PyObject *nomem(void) { return PyErr_NoMemory(); }

/* ------------------------------------------------------------------ matmul ops */

/* linear(x (T, K) f32, w: Weight, expert: int) -> y (T, N) f32 */
static PyObject *py_linear(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(3, "linear");
    PyArrayObject *x = arr(args[0], "x", NPY_FLOAT32, 2);
    WeightObject *w = weight(args[1], "w");
    long long e = PyLong_AsLongLong(args[2]);
    if (!x || !w || (e == -1 && PyErr_Occurred())) return NULL;
    if (e < 0 || e >= w->s.e) return PyErr_Format(PyExc_IndexError, "expert %lld out of range [0, %lld)", e, (long long)w->s.e);
    if (PyArray_DIM(x, 1) != w->s.m.k)
        return PyErr_Format(PyExc_ValueError, "linear: x has K=%zd, weight has K=%lld", (Py_ssize_t)PyArray_DIM(x, 1), (long long)w->s.m.k);
    if (ensure_pool()) return NULL;
    npy_intp dims[2] = {PyArray_DIM(x, 0), w->s.m.n};
    PyArrayObject *y = out_arr(x, 2, dims, NPY_FLOAT32);
    if (!y) return NULL;
    QMat m = w->s.m;
    m.data += e * w->s.data_stride;
    if (m.scales) m.scales += e * w->s.scale_stride;
    int rc = 0;
    if (dims[0] > 0) RUN(rc = drv_linear(&ctx, PyArray_DATA(y), PyArray_DATA(x), dims[0], &m));
    if (rc) { Py_DECREF(y); return nomem(); }
    return (PyObject *)y;
}

static int same_k(WeightObject *a, int64_t k, const char *name) {
    if (a->s.m.k != k) { PyErr_Format(PyExc_ValueError, "%s: K=%lld, expected %lld", name, (long long)a->s.m.k, (long long)k); return 0; }
    return 1;
}

/* w1, w3 (E, I, D) and w2 (E, D, I) fit together (E = 1 for SwiGLU's 2-D weights); w3 shares w1's
 * format and group, since both read one quantized copy of x */
static int ffn_weights(WeightObject *w1, WeightObject *w3, WeightObject *w2, int64_t D, int dense, const char *op) {
    const int64_t E = w1->s.e, NI = w1->s.m.n;
    if (dense && E != 1) { PyErr_Format(PyExc_ValueError, "%s: 2-D weights only", op); return 0; }
    if (!same_k(w1, D, "w1") || !same_k(w3, D, "w3") || !same_k(w2, NI, "w2")) return 0;
    if (w3->s.e != E || w2->s.e != E || w3->s.m.n != NI || w2->s.m.n != D || w3->s.m.fmt != w1->s.m.fmt ||
        w3->s.m.group != w1->s.m.group) {
        PyErr_Format(PyExc_ValueError, dense ? "%s: w1 (I, D), w3 (I, D), w2 (D, I) do not match"
                                             : "%s: w1 (E, I, D), w3 (E, I, D), w2 (E, D, I) do not match", op);
        return 0;
    }
    return 1;
}

/* swiglu(x (T, D), w1 (I, D), w3 (I, D), w2 (D, I)) -> (T, D) */
static PyObject *py_swiglu(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(4, "swiglu");
    PyArrayObject *x = arr(args[0], "x", NPY_FLOAT32, 2);
    WeightObject *w1 = weight(args[1], "w1"), *w3 = weight(args[2], "w3"), *w2 = weight(args[3], "w2");
    if (!x || !w1 || !w3 || !w2) return NULL;
    const int64_t D = PyArray_DIM(x, 1);
    if (!ffn_weights(w1, w3, w2, D, 1, "swiglu")) return NULL;
    if (ensure_pool()) return NULL;
    npy_intp dims[2] = {PyArray_DIM(x, 0), D};
    PyArrayObject *y = out_arr(x, 2, dims, NPY_FLOAT32);
    if (!y) return NULL;
    int rc = 0;
    if (dims[0] > 0) RUN(rc = drv_swiglu(&ctx, PyArray_DATA(y), PyArray_DATA(x), dims[0], &w1->s.m, &w3->s.m, &w2->s.m));
    if (rc) { Py_DECREF(y); return nomem(); }
    return (PyObject *)y;
}

/* moe(x (T, D), idx (T, A) int32, wts (T, A) f32, w1 (E, I, D), w3 (E, I, D), w2 (E, D, I)) -> (T, D) */
static PyObject *py_moe(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(6, "moe");
    PyArrayObject *x = arr(args[0], "x", NPY_FLOAT32, 2), *idx = arr(args[1], "idx", NPY_INT32, 2),
                  *wts = arr(args[2], "wts", NPY_FLOAT32, 2);
    WeightObject *w1 = weight(args[3], "w1"), *w3 = weight(args[4], "w3"), *w2 = weight(args[5], "w2");
    if (!x || !idx || !wts || !w1 || !w3 || !w2) return NULL;
    const int64_t T = PyArray_DIM(x, 0), D = PyArray_DIM(x, 1), A = PyArray_DIM(idx, 1), E = w1->s.e;
    if (PyArray_DIM(idx, 0) != T || PyArray_DIM(wts, 0) != T || PyArray_DIM(wts, 1) != A)
        return PyErr_Format(PyExc_ValueError, "moe: idx and wts must be (T, A) with T=%lld", (long long)T);
    if (!ffn_weights(w1, w3, w2, D, 0, "moe")) return NULL;
    const int32_t *ip = PyArray_DATA(idx);
    for (int64_t i = 0; i < T * A; i++)
        if (ip[i] < 0 || ip[i] >= E) return PyErr_Format(PyExc_IndexError, "moe: expert id %d out of range [0, %lld)", ip[i], (long long)E);
    for (int64_t t = 0; t < T; t++)  /* a token picks distinct experts */
        for (int64_t a = 0; a < A; a++)
            for (int64_t b = 0; b < a; b++)
                if (ip[t * A + a] == ip[t * A + b]) return PyErr_Format(PyExc_ValueError, "moe: token %lld picks expert %d twice", (long long)t, ip[t * A + a]);
    if (ensure_pool()) return NULL;
    npy_intp dims[2] = {T, D};
    PyArrayObject *y = out_arr(x, 2, dims, NPY_FLOAT32);
    if (!y) return NULL;
    int rc = 0;
    if (T > 0) RUN(rc = drv_moe(&ctx, PyArray_DATA(y), PyArray_DATA(x), T, ip, PyArray_DATA(wts), A, &w1->s, &w3->s, &w2->s));
    if (rc) { Py_DECREF(y); return nomem(); }
    return (PyObject *)y;
}

/* ------------------------------------------------------------------ attention and cache */

static int kv_pair(PyArrayObject **kt, PyArrayObject **v, PyObject *ko, PyObject *vo, int64_t *hkv, int64_t *cap,
                   int64_t hd, int *f16) {
    if (!PyArray_Check(ko)) { PyErr_SetString(PyExc_TypeError, "kt: expected a numpy array"); return 0; }
    int tn = PyArray_TYPE((PyArrayObject *)ko);
    if (tn != NPY_FLOAT16 && tn != NPY_FLOAT32) { PyErr_SetString(PyExc_TypeError, "kt: expected float16 or float32"); return 0; }
    *kt = arr(ko, "kt", tn, 4);
    *v = arr(vo, "v", tn, 3);
    if (!*kt || !*v) return 0;
    npy_intp *kd = PyArray_DIMS(*kt), *vd = PyArray_DIMS(*v);
    *hkv = vd[0];
    *cap = vd[1];
    *f16 = tn == NPY_FLOAT16;
    if (vd[2] != hd || kd[0] != vd[0] || kd[1] * ATTN_BLOCK != vd[1] || kd[2] != hd || kd[3] != ATTN_BLOCK) {
        PyErr_SetString(PyExc_ValueError, "cache: kt must be (Hkv, cap/16, hd, 16) and v (Hkv, cap, hd)");
        return 0;
    }
    return 1;
}

/* attention(q (T, H, hd) f32, kt, v, start, scale) -> (T, H, hd); the cache holds start + T positions */
static PyObject *py_attention(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(5, "attention");
    PyArrayObject *q = arr(args[0], "q", NPY_FLOAT32, 3), *kt, *v;
    if (!q) return NULL;
    const int64_t T = PyArray_DIM(q, 0), H = PyArray_DIM(q, 1), hd = PyArray_DIM(q, 2);
    int64_t hkv, cap;
    int f16;
    if (!kv_pair(&kt, &v, args[1], args[2], &hkv, &cap, hd, &f16)) return NULL;
    long long start = PyLong_AsLongLong(args[3]);
    double scale = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (hkv <= 0 || H % hkv) return PyErr_Format(PyExc_ValueError, "attention: %lld heads over %lld KV heads", (long long)H, (long long)hkv);
    if (start < 0 || start + T > cap) return PyErr_Format(PyExc_ValueError, "attention: positions up to %lld exceed the cache (%lld)", start + T, (long long)cap);
    if (ensure_pool()) return NULL;
    npy_intp dims[3] = {T, H, hd};
    PyArrayObject *out = out_arr(q, 3, dims, NPY_FLOAT32);
    if (!out) return NULL;
    int rc = 0;
    if (T > 0) RUN(rc = drv_attention(&ctx, PyArray_DATA(out), PyArray_DATA(q), T, H, hkv, hd, PyArray_DATA(kt), PyArray_DATA(v), cap, f16, start, (float)scale));
    if (rc) { Py_DECREF(out); return nomem(); }
    return (PyObject *)out;
}

/* kv_store(kt, v, k (T, Hkv, hd) f32, vv (T, Hkv, hd) f32, pos) */
static PyObject *py_kv_store(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(5, "kv_store");
    PyArrayObject *k = arr(args[2], "k", NPY_FLOAT32, 3), *vv = arr(args[3], "v_new", NPY_FLOAT32, 3), *kt, *v;
    if (!k || !vv) return NULL;
    const int64_t T = PyArray_DIM(k, 0), hd = PyArray_DIM(k, 2);
    int64_t hkv, cap;
    int f16;
    if (!kv_pair(&kt, &v, args[0], args[1], &hkv, &cap, hd, &f16)) return NULL;
    if (!writable(kt, "kt") || !writable(v, "v")) return NULL;
    long long pos = PyLong_AsLongLong(args[4]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    if (PyArray_DIM(k, 1) != hkv || PyArray_DIM(vv, 0) != T || PyArray_DIM(vv, 1) != hkv || PyArray_DIM(vv, 2) != hd)
        return PyErr_Format(PyExc_ValueError, "kv_store: k and v must be (T, %lld, %lld)", (long long)hkv, (long long)hd);
    if (pos < 0 || pos + T > cap) return PyErr_Format(PyExc_ValueError, "kv_store: positions up to %lld exceed the cache (%lld)", pos + T, (long long)cap);
    RUN(k_kv_store(PyArray_DATA(kt), PyArray_DATA(v), PyArray_DATA(k), PyArray_DATA(vv), T, hkv, hd, pos, cap, f16));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ small ops */

/* rmsnorm(x (..., D) f32, w (D,) f32, eps) -> same shape */
static PyObject *py_rmsnorm(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(3, "rmsnorm");
    PyArrayObject *x = arr(args[0], "x", NPY_FLOAT32, -1), *w = arr(args[1], "w", NPY_FLOAT32, 1);
    double eps = PyFloat_AsDouble(args[2]);
    if (!x || !w || PyErr_Occurred()) return NULL;
    int nd = PyArray_NDIM(x);
    if (nd < 1 || PyArray_DIM(x, nd - 1) != PyArray_DIM(w, 0)) return PyErr_Format(PyExc_ValueError, "rmsnorm: x (..., D) and w (D,) do not match");
    PyArrayObject *out = out_arr(x, nd, PyArray_DIMS(x), NPY_FLOAT32);
    if (!out) return NULL;
    const int64_t d = PyArray_DIM(w, 0), rows = d ? PyArray_SIZE(x) / d : 0;
    RUN(k_rmsnorm(PyArray_DATA(out), PyArray_DATA(x), PyArray_DATA(w), (float)eps, rows, d));
    return (PyObject *)out;
}

/* rope(x (T, H, hd) f32, start, theta): rotates x in place */
static PyObject *py_rope(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(3, "rope");
    PyArrayObject *x = arr(args[0], "x", NPY_FLOAT32, 3);
    long long start = PyLong_AsLongLong(args[1]);
    double theta = PyFloat_AsDouble(args[2]);
    if (!x || PyErr_Occurred() || !writable(x, "x")) return NULL;
    if (PyArray_DIM(x, 2) % 2 || PyArray_DIM(x, 2) > 1024) return PyErr_Format(PyExc_ValueError, "rope: head dim must be even and <= 1024");
    RUN(k_rope(PyArray_DATA(x), PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2), start, (float)theta));
    Py_RETURN_NONE;
}

/* silu_mul(a, b) -> silu(a) * b, same shape */
static PyObject *py_silu_mul(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(2, "silu_mul");
    PyArrayObject *a = arr(args[0], "a", NPY_FLOAT32, -1), *b = arr(args[1], "b", NPY_FLOAT32, -1);
    if (!a || !b) return NULL;
    if (!PyArray_SAMESHAPE(a, b)) return PyErr_Format(PyExc_ValueError, "silu_mul: a and b differ in shape");
    PyArrayObject *out = out_arr(a, PyArray_NDIM(a), PyArray_DIMS(a), NPY_FLOAT32);
    if (!out) return NULL;
    RUN(k_silu_mul(PyArray_DATA(out), PyArray_DATA(a), PyArray_DATA(b), PyArray_SIZE(a)));
    return (PyObject *)out;
}

/* conv_gate(bcx (T, 3D), state (L-1, D), w (D, L), bias (D,) or None) -> (T, D); state updated */
static PyObject *py_conv_gate(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(4, "conv_gate");
    PyArrayObject *bcx = arr(args[0], "bcx", NPY_FLOAT32, 2), *st = arr(args[1], "state", NPY_FLOAT32, 2),
                  *w = arr(args[2], "w", NPY_FLOAT32, 2), *b = NULL;
    if (!bcx || !st || !w || !writable(st, "state")) return NULL;
    const int64_t T = PyArray_DIM(bcx, 0), D = PyArray_DIM(w, 0), L = PyArray_DIM(w, 1);
    if (args[3] != Py_None) {
        if (!(b = arr(args[3], "bias", NPY_FLOAT32, 1))) return NULL;
        if (PyArray_DIM(b, 0) != D) return PyErr_Format(PyExc_ValueError, "conv_gate: bias must be (D,)");
    }
    if (L < 1 || PyArray_DIM(bcx, 1) != 3 * D || PyArray_DIM(st, 0) != L - 1 || PyArray_DIM(st, 1) != D)
        return PyErr_Format(PyExc_ValueError, "conv_gate: bcx (T, 3D), state (L-1, D), w (D, L) do not match");
    npy_intp dims[2] = {T, D};
    PyArrayObject *y = out_arr(bcx, 2, dims, NPY_FLOAT32);
    if (!y) return NULL;
    RUN(k_conv_gate(PyArray_DATA(y), PyArray_DATA(bcx), PyArray_DATA(st), PyArray_DATA(w), b ? PyArray_DATA(b) : NULL, T, D, L));
    return (PyObject *)y;
}

/* route(logits (T, E) f32, bias (E,) or None, k, norm, scale) -> (idx (T, k) int32, wts (T, k) f32) */
static PyObject *py_route(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(5, "route");
    PyArrayObject *lg = arr(args[0], "logits", NPY_FLOAT32, 2), *b = NULL;
    if (!lg) return NULL;
    const int64_t T = PyArray_DIM(lg, 0), E = PyArray_DIM(lg, 1);
    if (args[1] != Py_None) {
        if (!(b = arr(args[1], "bias", NPY_FLOAT32, 1))) return NULL;
        if (PyArray_DIM(b, 0) != E) return PyErr_Format(PyExc_ValueError, "route: bias must be (E,)");
    }
    long long k = PyLong_AsLongLong(args[2]);
    int norm = PyObject_IsTrue(args[3]);
    double scale = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred() || norm < 0) return NULL;
    if (k < 1 || k > E || E > 1024) return PyErr_Format(PyExc_ValueError, "route: need 1 <= k <= E <= 1024");
    npy_intp dims[2] = {T, k};
    PyArrayObject *idx = out_arr(lg, 2, dims, NPY_INT32), *wts = out_arr(lg, 2, dims, NPY_FLOAT32);
    if (!idx || !wts) { Py_XDECREF(idx); Py_XDECREF(wts); return NULL; }
    RUN(k_route(PyArray_DATA(idx), PyArray_DATA(wts), PyArray_DATA(lg), b ? PyArray_DATA(b) : NULL, T, E, k, norm, (float)scale));
    return Py_BuildValue("(NN)", idx, wts);
}

/* embed(ids (T,) int64, w: Weight (vocab, D)) -> (T, D) f32 */
static PyObject *py_embed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(2, "embed");
    PyArrayObject *ids = arr(args[0], "ids", NPY_INT64, 1);
    WeightObject *w = weight(args[1], "w");
    if (!ids || !w) return NULL;
    const int64_t T = PyArray_DIM(ids, 0);
    const int64_t *ip = PyArray_DATA(ids);
    for (int64_t t = 0; t < T; t++)
        if (ip[t] < 0 || ip[t] >= w->s.m.n) return PyErr_Format(PyExc_IndexError, "embed: id %lld out of range [0, %lld)", (long long)ip[t], (long long)w->s.m.n);
    if (w->s.e != 1) return PyErr_Format(PyExc_ValueError, "embed: 2-D weight only");
    npy_intp dims[2] = {T, w->s.m.k};
    PyArrayObject *out = out_arr(ids, 2, dims, NPY_FLOAT32);
    if (!out) return NULL;
    RUN(k_embed(PyArray_DATA(out), ip, T, &w->s.m));
    return (PyObject *)out;
}

/* ------------------------------------------------------------------ the tape (tape.c) */

typedef struct {
    PyObject_HEAD
    Tape t;
    TapeOp *ops;
    int64_t *width;
    TapeLayer *layers;
    PyObject *refs;  /* every object the ops point into, kept alive with them */
} TapeObject;

static void Tape_dealloc(TapeObject *self) {
    free(self->ops);
    free(self->width);
    free(self->layers);
    Py_XDECREF(self->refs);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* a tuple of at most n items of o, each checked by fn(item, k) (None passed to it as NULL) */
static int items(PyObject *o, Py_ssize_t n, const char *what, Py_ssize_t j, PyObject *refs, void *dst,
                 int (*fn)(PyObject *, Py_ssize_t, void *, PyObject *)) {
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) > n) {
        PyErr_Format(PyExc_ValueError, "tape op %zd: %s must be a tuple of at most %zd", j, what, n);
        return 0;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(o); k++) {
        PyObject *x = PyTuple_GET_ITEM(o, k);
        if (PyList_Append(refs, x) || !fn(x == Py_None ? NULL : x, k, dst, refs)) return 0;
    }
    return 1;
}

static int item_weight(PyObject *o, Py_ssize_t k, void *dst, PyObject *refs) {
    WeightObject *w = o ? weight(o, "tape weight") : NULL;
    ((TapeOp *)dst)->w[k] = w ? &w->s : NULL;
    return w != NULL;
}

static int item_vec(PyObject *o, Py_ssize_t k, void *dst, PyObject *refs) {
    TapeOp *op = dst;
    if (!o) return 1;
    PyArrayObject *a = arr(o, "tape vector", NPY_FLOAT32, -1);
    if (!a) return 0;
    op->v[k] = PyArray_DATA(a);
    op->vn[k] = PyArray_SIZE(a);
    return 1;
}

static int item_int(PyObject *o, Py_ssize_t k, void *dst, PyObject *refs) {
    long long v = o ? PyLong_AsLongLong(o) : -1;
    ((TapeOp *)dst)->i[k] = v;
    return o && !(v == -1 && PyErr_Occurred());
}

static int item_float(PyObject *o, Py_ssize_t k, void *dst, PyObject *refs) {
    double v = o ? PyFloat_AsDouble(o) : -1.0;
    ((TapeOp *)dst)->f[k] = (float)v;
    return o && !PyErr_Occurred();
}

static int small_int(PyObject *o, int32_t *out, int64_t lo, int64_t hi, const char *what, Py_ssize_t j) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return 0;
    if (v < lo || v >= hi) { PyErr_Format(PyExc_ValueError, "tape op %zd: %s %lld out of range", j, what, v); return 0; }
    *out = (int32_t)v;
    return 1;
}

/* Tape(ops, widths, out): ops a tuple of (name, out, ins, layer, weights, vecs, ints, floats), as
 * ops.Tape records them (tape.h says what each op reads); widths the floats per token of each slot;
 * out the logits' slot. Checked once here (tape_check). */
static int Tape_init(TapeObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ops", "widths", "out", NULL};
    PyObject *ops, *widths;
    long out;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!l", kwlist, &PyTuple_Type, &ops, &PyTuple_Type, &widths, &out))
        return -1;
    PyObject *refs = PyList_New(0);
    if (!refs) return -1;
    Py_XSETREF(self->refs, refs);
    free(self->ops); free(self->width); free(self->layers);
    self->ops = NULL; self->width = NULL; self->layers = NULL;
    memset(&self->t, 0, sizeof self->t);
    const Py_ssize_t n = PyTuple_GET_SIZE(ops), ns = PyTuple_GET_SIZE(widths);
    self->ops = calloc(n ? (size_t)n : 1, sizeof(TapeOp));
    self->width = calloc(ns ? (size_t)ns : 1, sizeof(int64_t));
    if (!self->ops || !self->width) { PyErr_NoMemory(); return -1; }
    for (Py_ssize_t s = 0; s < ns; s++) {
        long long w = PyLong_AsLongLong(PyTuple_GET_ITEM(widths, s));
        if (w == -1 && PyErr_Occurred()) return -1;
        if (w < 1) { PyErr_Format(PyExc_ValueError, "tape: slot %zd has width %lld", s, w); return -1; }
        self->width[s] = w;
    }
    int32_t max_layer = -1;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *o = PyTuple_GET_ITEM(ops, j);
        TapeOp *op = &self->ops[j];
        if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 8 || !PyUnicode_Check(PyTuple_GET_ITEM(o, 0))) {
            PyErr_Format(PyExc_ValueError, "tape op %zd: expected (name, out, ins, layer, weights, vecs, ints, floats)", j);
            return -1;
        }
        const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(o, 0));
        if (!name) return -1;
        op->code = -1;
        for (int c = 0; c < TAPE_N_OPS; c++) if (!strcmp(name, TAPE_OP_NAMES[c])) op->code = c;
        if (op->code < 0) { PyErr_Format(PyExc_ValueError, "tape op %zd: unknown op '%s'", j, name); return -1; }
        PyObject *ins = PyTuple_GET_ITEM(o, 2);
        op->in[0] = op->in[1] = -1;
        if (!PyTuple_Check(ins) || PyTuple_GET_SIZE(ins) > 2) { PyErr_Format(PyExc_ValueError, "tape op %zd: ins must be a tuple of at most 2", j); return -1; }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(ins); k++)
            if (!small_int(PyTuple_GET_ITEM(ins, k), &op->in[k], 0, ns, "input slot", j)) return -1;
        if (!small_int(PyTuple_GET_ITEM(o, 1), &op->out, -1, ns, "output slot", j) ||
            !small_int(PyTuple_GET_ITEM(o, 3), &op->layer, -1, 1 << 20, "layer", j) ||
            !items(PyTuple_GET_ITEM(o, 4), 4, "weights", j, refs, op, item_weight) ||
            !items(PyTuple_GET_ITEM(o, 5), 2, "vecs", j, refs, op, item_vec) ||
            !items(PyTuple_GET_ITEM(o, 6), 3, "ints", j, refs, op, item_int) ||
            !items(PyTuple_GET_ITEM(o, 7), 1, "floats", j, refs, op, item_float))
            return -1;
        if (op->layer > max_layer) max_layer = op->layer;
    }
    self->layers = calloc((size_t)max_layer + 2, sizeof(TapeLayer));
    if (!self->layers) { PyErr_NoMemory(); return -1; }
    self->t = (Tape){.ops = self->ops, .n_ops = n, .n_slots = ns, .width = self->width, .layers = self->layers,
                     .n_layers = max_layer + 1};
    if (out < 0 || out >= ns) { PyErr_Format(PyExc_ValueError, "tape: output slot %ld out of range", out); return -1; }
    self->t.out = (int32_t)out;
    char err[256];
    if (tape_check(&self->t, err, sizeof err)) {
        PyErr_SetString(PyExc_ValueError, err);
        self->t.n_ops = 0;
        return -1;
    }
    return 0;
}

/* Tape.run(ids (T,) int64, seqs (T,) int64, positions (T,) int64, states) -> logits (T, vocab).
 * states: per sequence a tuple of its layers' caches, a conv state (L-1, D) f32 or (kt, v); both
 * are updated at each token's position (writes are checked against each cache's capacity). */
static PyObject *Tape_run(TapeObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(4, "run");
    const Tape *t = &self->t;
    if (!t->n_ops) return PyErr_Format(PyExc_ValueError, "run: the Tape was not initialised");
    PyArrayObject *ids = arr(args[0], "ids", NPY_INT64, 1), *seq = arr(args[1], "seqs", NPY_INT64, 1),
                  *pos = arr(args[2], "positions", NPY_INT64, 1);
    if (!ids || !seq || !pos) return NULL;
    const int64_t T = PyArray_DIM(ids, 0);
    if (T < 1 || PyArray_DIM(seq, 0) != T || PyArray_DIM(pos, 0) != T)
        return PyErr_Format(PyExc_ValueError, "run: ids, seqs and positions must be (T,) with T >= 1");
    if (!PyTuple_Check(args[3])) return PyErr_Format(PyExc_TypeError, "run: states must be a tuple per sequence");
    const int64_t S = PyTuple_GET_SIZE(args[3]), NL = t->n_layers;
    const int64_t *ip = PyArray_DATA(ids), *sp = PyArray_DATA(seq), *pp = PyArray_DATA(pos);
    for (int64_t r = 0; r < T; r++) {
        if (ip[r] < 0 || ip[r] >= t->vocab) return PyErr_Format(PyExc_IndexError, "run: id %lld out of range [0, %lld)", (long long)ip[r], (long long)t->vocab);
        if (sp[r] < 0 || sp[r] >= S) return PyErr_Format(PyExc_IndexError, "run: sequence %lld out of range [0, %lld)", (long long)sp[r], (long long)S);
        if (pp[r] < 0) return PyErr_Format(PyExc_ValueError, "run: negative position");
    }
    TapeCache *caches = calloc((size_t)(S * NL) + 1, sizeof(TapeCache));
    if (!caches) return nomem();
    for (int64_t s = 0; s < S; s++) {
        PyObject *layers = PyTuple_GET_ITEM(args[3], s);
        if (!PyTuple_Check(layers) || PyTuple_GET_SIZE(layers) < NL) {
            PyErr_Format(PyExc_ValueError, "run: states must be a tuple of %lld layer caches", (long long)NL);
            goto fail;
        }
        int64_t cap = -1;  /* the smallest KV capacity of this sequence */
        for (int64_t l = 0; l < NL; l++) {
            const TapeLayer *tl = &t->layers[l];
            PyObject *o = PyTuple_GET_ITEM(layers, l);
            TapeCache *c = &caches[s * NL + l];
            if (tl->kind == 2) {
                PyObject *ho = NULL;  /* (state, hist): hist (T, D) gets each token's conv input */
                if (PyTuple_Check(o) && PyTuple_GET_SIZE(o) == 2) { ho = PyTuple_GET_ITEM(o, 1); o = PyTuple_GET_ITEM(o, 0); }
                PyArrayObject *st = arr(o, "conv state", NPY_FLOAT32, 2);
                if (!st || !writable(st, "conv state")) goto fail;
                if (PyArray_DIM(st, 0) != tl->a || PyArray_DIM(st, 1) != tl->b) {
                    PyErr_Format(PyExc_ValueError, "run: layer %lld conv state must be (%lld, %lld)", (long long)l, (long long)tl->a, (long long)tl->b);
                    goto fail;
                }
                c->state = PyArray_DATA(st);
                if (ho) {
                    PyArrayObject *h = arr(ho, "conv history", NPY_FLOAT32, 2);
                    if (!h || !writable(h, "conv history")) goto fail;
                    if (PyArray_DIM(h, 0) != T || PyArray_DIM(h, 1) != tl->b) {
                        PyErr_Format(PyExc_ValueError, "run: layer %lld conv history must be (%lld, %lld)", (long long)l, (long long)T, (long long)tl->b);
                        goto fail;
                    }
                    c->hist = PyArray_DATA(h);
                }
            } else if (tl->kind == 1) {
                PyArrayObject *kt, *v;
                int64_t hkv;
                if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 2) {
                    PyErr_Format(PyExc_ValueError, "run: layer %lld state must be (kt, v)", (long long)l);
                    goto fail;
                }
                if (!kv_pair(&kt, &v, PyTuple_GET_ITEM(o, 0), PyTuple_GET_ITEM(o, 1), &hkv, &c->cap, tl->b, &c->f16) ||
                    !writable(kt, "kt") || !writable(v, "v"))
                    goto fail;
                if (hkv != tl->a) {
                    PyErr_Format(PyExc_ValueError, "run: layer %lld cache holds %lld KV heads, not %lld", (long long)l, (long long)hkv, (long long)tl->a);
                    goto fail;
                }
                c->kt = PyArray_DATA(kt);
                c->v = PyArray_DATA(v);
                if (cap < 0 || c->cap < cap) cap = c->cap;
            }
        }
        for (int64_t r = 0; r < T; r++)
            if (sp[r] == s && cap >= 0 && pp[r] >= cap) {
                PyErr_Format(PyExc_ValueError, "run: position %lld exceeds the cache positions (%lld) of sequence %lld",
                             (long long)pp[r], (long long)cap, (long long)s);
                goto fail;
            }
    }
    if (ensure_pool()) goto fail;
    npy_intp dims[2] = {T, t->width[t->out]};
    PyArrayObject *y = out_arr(NULL, 2, dims, NPY_FLOAT32);
    if (!y) goto fail;
    int rc = 0;
    RUN(rc = tape_run(&ctx, t, T, ip, sp, pp, caches, PyArray_DATA(y)));
    free(caches);
    if (rc) { Py_DECREF(y); return nomem(); }
    return (PyObject *)y;
fail:
    free(caches);
    return NULL;
}

static PyMethodDef Tape_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Tape_run, METH_FASTCALL, "run(ids, seqs, positions, states) -> logits (T, vocab)"},
    {NULL}};

static PyTypeObject TapeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cactus._kernels.Tape",
    .tp_doc = "Tape(ops, widths, out): a recorded forward (ops.Tape), checked once; run() per T tokens.",
    .tp_basicsize = sizeof(TapeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tape_init,
    .tp_dealloc = (destructor)Tape_dealloc,
    .tp_methods = Tape_methods,
};

/* ------------------------------------------------------------------ control */

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const Kernels *k = kernels_by_name(name);
    if (!k) return PyErr_Format(PyExc_ValueError, "ISA '%s' is unknown or not supported by this CPU", name);
    ctx.k = k;
    kernels_select(k);
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *unused) { return PyUnicode_FromString(ctx.k->name); }

static PyObject *py_supported(PyObject *self, PyObject *unused) {
    PyObject *out = PyList_New(0);
    const char *name;
    for (size_t i = 0; out && (name = kernels_level_name(i)); i++)
        if (kernels_by_name(name)) {
            PyObject *s = PyUnicode_FromString(name);
            if (!s || PyList_Append(out, s)) { Py_XDECREF(s); Py_DECREF(out); return NULL; }
            Py_DECREF(s);
        }
    return out;
}

static PyObject *py_set_threads(PyObject *self, PyObject *args) {
    long n;
    PyObject *cpus = NULL;
    if (!PyArg_ParseTuple(args, "l|O", &n, &cpus)) return NULL;
    if (n < 1 || n > 256) return PyErr_Format(PyExc_ValueError, "threads must be in 1..256, got %ld", n);
    int order[256], norder = 0;
    if (cpus && cpus != Py_None) {
        PyObject *seq = PySequence_Fast(cpus, "cpus must be a sequence of CPU numbers");
        if (!seq) return NULL;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq) && norder < 256; i++) {
            long c = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
            if (c == -1 && PyErr_Occurred()) { Py_DECREF(seq); return NULL; }
            if (c < 0 || c > 65535) { Py_DECREF(seq); return PyErr_Format(PyExc_ValueError, "CPU number %ld out of range", c); }
            order[norder++] = (int)c;
        }
        Py_DECREF(seq);
    }
    Pool *old = ctx.pool;
    n_threads = (int)n;
    memcpy(pin_cpus, order, (size_t)norder * sizeof *order);
    n_pin_cpus = norder;
    ctx.pool = NULL;
    if (old && ctx_pid == getpid()) {
        Py_BEGIN_ALLOW_THREADS pool_free(old); Py_END_ALLOW_THREADS
    }
    if (ensure_pool()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_threads(PyObject *self, PyObject *unused) { return PyLong_FromLong(n_threads); }

/* set_prefetch(l2_bytes, l1_bytes) -> the previous pair: decode's software prefetch distances
 * (kernels.h). They change speed only, never results. */
static PyObject *py_set_prefetch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(2, "set_prefetch");
    long long l2 = PyLong_AsLongLong(args[0]), l1 = PyLong_AsLongLong(args[1]);
    if ((l2 == -1 || l1 == -1) && PyErr_Occurred()) return NULL;
    if (l2 < 64 || l2 > (1 << 20) || l1 < 0 || l1 > l2)
        return PyErr_Format(PyExc_ValueError, "set_prefetch: need 64 <= l2 <= 1 MiB and 0 <= l1 <= l2, got l2=%lld l1=%lld", l2, l1);
    PyObject *old = Py_BuildValue("(LL)", (long long)kernels_prefetch_l2, (long long)kernels_prefetch_l1);
    kernels_prefetch_l2 = l2;
    kernels_prefetch_l1 = l1;
    return old;
}

static PyObject *py_pool_stats(PyObject *self, PyObject *unused) {
    long long team = 0, solo = 0;
    if (ctx.pool) pool_stats(ctx.pool, &team, &solo);
    return Py_BuildValue("(LL)", team, solo);
}

/* read_bandwidth(buf, stride_lines) -> checksum: every thread streams its share of buf */
static PyObject *py_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    NARGS(2, "read_memory");
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE)) return NULL;
    long long stride = PyLong_AsLongLong(args[1]);
    if (stride == -1 && PyErr_Occurred()) { PyBuffer_Release(&view); return NULL; }
    if (ensure_pool()) { PyBuffer_Release(&view); return NULL; }
    uint64_t s = 0;
    const int64_t n = view.len / (64 * 256) * (64 * 256);
    RUN(s = drv_read(&ctx, view.buf, n, stride));
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(s);
}

static PyObject *py_profile(PyObject *self, PyObject *arg) {
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    profiling = on;
    PyObject *r = Py_BuildValue("(LL)", prof_calls, prof_ns);
    prof_calls = prof_ns = 0;
    return r;
}

static PyMethodDef methods[] = {
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_FASTCALL, "linear(x, w, expert) -> x @ W[expert]^T"},
    {"swiglu", (PyCFunction)(void (*)(void))py_swiglu, METH_FASTCALL, "swiglu(x, w1, w3, w2) -> w2(silu(w1 x) * w3 x)"},
    {"moe", (PyCFunction)(void (*)(void))py_moe, METH_FASTCALL, "moe(x, idx, wts, w1, w3, w2) -> weighted sum of the chosen experts"},
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_FASTCALL, "attention(q, kt, v, start, scale) -> causal attention over the cache"},
    {"kv_store", (PyCFunction)(void (*)(void))py_kv_store, METH_FASTCALL, "kv_store(kt, v, k, v_new, pos)"},
    {"rmsnorm", (PyCFunction)(void (*)(void))py_rmsnorm, METH_FASTCALL, "rmsnorm(x, w, eps)"},
    {"rope", (PyCFunction)(void (*)(void))py_rope, METH_FASTCALL, "rope(x, start, theta): in place"},
    {"silu_mul", (PyCFunction)(void (*)(void))py_silu_mul, METH_FASTCALL, "silu_mul(a, b)"},
    {"conv_gate", (PyCFunction)(void (*)(void))py_conv_gate, METH_FASTCALL, "conv_gate(bcx, state, w, bias)"},
    {"route", (PyCFunction)(void (*)(void))py_route, METH_FASTCALL, "route(logits, bias, k, norm, scale) -> (idx, wts)"},
    {"embed", (PyCFunction)(void (*)(void))py_embed, METH_FASTCALL, "embed(ids, w) -> rows"},
    {"read_memory", (PyCFunction)(void (*)(void))py_read, METH_FASTCALL, "read_memory(buf, stride) -> checksum"},
    {"set_isa", py_set_isa, METH_O, "set_isa(name): use this kernel level"},
    {"isa", py_isa, METH_NOARGS, "the kernel level in use"},
    {"supported", py_supported, METH_NOARGS, "kernel levels this CPU runs"},
    {"set_threads", py_set_threads, METH_VARARGS, "set_threads(n, cpus=None): n kernel threads, workers pinned in the order of cpus"},
    {"threads", py_threads, METH_NOARGS, "threads in use"},
    {"set_prefetch", (PyCFunction)(void (*)(void))py_set_prefetch, METH_FASTCALL, "set_prefetch(l2_bytes, l1_bytes) -> previous"},
    {"pool_stats", py_pool_stats, METH_NOARGS, "(jobs run on several threads, jobs run on the caller alone)"},
    {"profile", py_profile, METH_O, "profile(on) -> (calls, ns) inside kernels since the last call; resets"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "cactus C kernels (see docs/KERNELS.md)", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) {
    import_array();
    if (PyType_Ready(&WeightType) < 0 || PyType_Ready(&TapeType) < 0) return NULL;
    ctx.k = kernels_best();
    kernels_select(ctx.k);
    ctx.arena = &arena;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&WeightType);
    if (PyModule_AddObject(m, "Weight", (PyObject *)&WeightType) < 0) { Py_DECREF(&WeightType); Py_DECREF(m); return NULL; }
    Py_INCREF(&TapeType);
    if (PyModule_AddObject(m, "Tape", (PyObject *)&TapeType) < 0) { Py_DECREF(&TapeType); Py_DECREF(m); return NULL; }
    return m;
}
