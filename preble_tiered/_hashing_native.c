/* Native chained block hashing for token lists: the same bytes and the same xxh3 as
 * preble_tiered/hashing.py (the one definition; this only skips the interpreter):
 *
 *     h_i = xxh3_64(seed, h_{i-1} as 8 LE bytes (0 for the first block) || block i as LE uint32)
 *
 * block_hashes(tokens: list | tuple, block_size, seed, parent) -> list[int]
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include "xxhash.h"

static inline void put_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static inline void put_le32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

PyDoc_STRVAR(block_hashes_doc,
"block_hashes(tokens, block_size, seed, parent) -> list[int]\n\n"
"Chained xxh3 hashes of the full blocks of a list or tuple of token ids (see hashing.py).");

static PyObject *block_hashes(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "block_hashes takes 4 arguments");
        return NULL;
    }
    if (!PyList_Check(args[0]) && !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "block_hashes: tokens must be a list or tuple");
        return NULL;
    }
    Py_ssize_t bs = PyLong_AsSsize_t(args[1]);
    if (bs == -1 && PyErr_Occurred())
        return NULL;
    if (bs <= 0) {
        PyErr_Format(PyExc_ValueError, "block_size must be positive, got %zd", bs);
        return NULL;
    }
    uint64_t seed = PyLong_AsUnsignedLongLong(args[2]);
    if (seed == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    uint64_t prev = 0;
    if (args[3] != Py_None) {
        prev = PyLong_AsUnsignedLongLong(args[3]);
        if (prev == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *seq = args[0];  /* a list or tuple: items are stable while we hold the GIL */
    Py_ssize_t n_blocks = PySequence_Fast_GET_SIZE(seq) / bs;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyList_New(n_blocks);
    if (out == NULL || n_blocks == 0)
        return out;
    size_t len = 8 + 4 * (size_t)bs;
    unsigned char stack[8 + 4 * 256], *buf = len <= sizeof stack ? stack : PyMem_Malloc(len);
    if (buf == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t b = 0; b < n_blocks; b++) {
        put_le64(buf, prev);
        PyObject **tok = items + b * bs;
        for (Py_ssize_t j = 0; j < bs; j++) {
            unsigned long v = PyLong_AsUnsignedLong(tok[j]);
            if ((v == (unsigned long)-1 && PyErr_Occurred()) || v > 0xFFFFFFFFUL) {
                if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError))
                    goto fail;  /* not an int: TypeError as raised */
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "token ids must be in [0, 2**32)");
                goto fail;
            }
            put_le32(buf + 8 + 4 * j, (uint32_t)v);
        }
        prev = XXH3_64bits_withSeed(buf, len, seed);
        PyObject *h = PyLong_FromUnsignedLongLong(prev);
        if (h == NULL)
            goto fail;
        PyList_SET_ITEM(out, b, h);
    }
    if (buf != stack)
        PyMem_Free(buf);
    return out;
fail:
    if (buf != stack)
        PyMem_Free(buf);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"block_hashes", (PyCFunction)(void (*)(void))block_hashes, METH_FASTCALL, block_hashes_doc},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_hashing_native", "Native chained block hashing (see hashing.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__hashing_native(void) { return PyModule_Create(&moduledef); }
