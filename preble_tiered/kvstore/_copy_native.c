/* Block copies between the engine's paged KV caches and flat block buffers, one call per
 * block instead of one ctypes.memmove per piece (see kvstore/block_copy.py, which plans the
 * pieces and checks block ids and sizes; this only copies, without the GIL).
 *
 *   gather(plan, block, dst_addr)   pieces of `block` -> dst, in plan order
 *   scatter(plan, block, src)       src (a buffer of the block's size) -> pieces of `block`
 *
 * `plan` is a bytes object of native uint64 triples (address of block 0's piece, block stride
 * in bytes, piece bytes), as BlockLayout packs it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int parse_plan(PyObject *plan, const uint64_t **p, Py_ssize_t *n, uint64_t *total) {
    if (!PyBytes_Check(plan) || PyBytes_GET_SIZE(plan) % (3 * sizeof(uint64_t))) {
        PyErr_SetString(PyExc_TypeError, "plan must be bytes of uint64 triples");
        return -1;
    }
    *p = (const uint64_t *)PyBytes_AS_STRING(plan);
    *n = PyBytes_GET_SIZE(plan) / (3 * sizeof(uint64_t));
    *total = 0;
    for (Py_ssize_t i = 0; i < *n; i++) {
        if ((*p)[3 * i + 2] > UINT64_MAX - *total) {
            PyErr_SetString(PyExc_ValueError, "plan pieces overflow");
            return -1;
        }
        *total += (*p)[3 * i + 2];
    }
    return 0;
}

/* The arguments both calls share: the plan (with its total size) and a block id >= 0. */
static int parse_call(const char *name, PyObject *const *args, Py_ssize_t nargs, const uint64_t **p,
                      Py_ssize_t *n, uint64_t *total, long long *b) {
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s takes 3 arguments", name);
        return -1;
    }
    if (parse_plan(args[0], p, n, total) < 0)
        return -1;
    *b = PyLong_AsLongLong(args[1]);
    if (*b == -1 && PyErr_Occurred())
        return -1;
    if (*b < 0) {
        PyErr_Format(PyExc_ValueError, "%s: negative block id", name);
        return -1;
    }
    return 0;
}

static PyObject *gather(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    const uint64_t *p;
    Py_ssize_t n;
    uint64_t total;
    long long b;
    if (parse_call("gather", args, nargs, &p, &n, &total, &b) < 0)
        return NULL;
    unsigned long long dst = PyLong_AsUnsignedLongLong(args[2]);
    if (dst == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (dst == 0) {
        PyErr_SetString(PyExc_ValueError, "gather: null destination");
        return NULL;
    }
    char *out = (char *)(uintptr_t)dst;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(out, (const char *)(uintptr_t)(p[3 * i] + (uint64_t)b * p[3 * i + 1]), p[3 * i + 2]);
        out += p[3 * i + 2];
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *scatter(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    const uint64_t *p;
    Py_ssize_t n;
    uint64_t total;
    long long b;
    if (parse_call("scatter", args, nargs, &p, &n, &total, &b) < 0)
        return NULL;
    Py_buffer src;
    if (PyObject_GetBuffer(args[2], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if ((uint64_t)src.len != total) {
        PyErr_Format(PyExc_RuntimeError, "stored block has %zd bytes, the engine's layout needs %llu",
                     src.len, (unsigned long long)total);
        PyBuffer_Release(&src);
        return NULL;
    }
    const char *in = (const char *)src.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy((char *)(uintptr_t)(p[3 * i] + (uint64_t)b * p[3 * i + 1]), in, p[3 * i + 2]);
        in += p[3 * i + 2];
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gather", (PyCFunction)(void (*)(void))gather, METH_FASTCALL, "gather(plan, block, dst_addr)"},
    {"scatter", (PyCFunction)(void (*)(void))scatter, METH_FASTCALL, "scatter(plan, block, src)"},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_copy_native", "Block copies between paged KV caches and block buffers.", -1, methods,
};

PyMODINIT_FUNC PyInit__copy_native(void) { return PyModule_Create(&moduledef); }
