/* Native kernels of the PrefixIndex (scheduler/index.py): the router's decision path.
 *
 * Same functions, same arguments and same results as scheduler/_index_py.py, which is the
 * reference and the fallback where this module is not built (there the entries are a dict;
 * the deque of hashes that may be idle is a Python object in both):
 *
 *   BlockEntry   one block: parent hash, four node masks (HBM, DRAM, disk, pending) as
 *                fixed 256-bit words, pins, demand window, idle time. Python sees the masks
 *                as ints (attributes hbm, dram, disk, pending), exactly as the fallback.
 *   EntryMap     block hash -> BlockEntry: an open-addressing table of (64-bit hash, entry)
 *                slots with a dict's interface (len, in, [], get, del, items, keys, values).
 *                A probe reads one 16-byte slot, where a dict reads its index array, its
 *                entry array and the stored int key; large tables sit in transparent huge
 *                pages where the kernel offers them. Block hashes are ints in [0, 2**64).
 *   walk         lookup/match: demand counting and per-node tier split in one pass.
 *   store, remove, clear_pending, add_pending, expire: the mutations of the hot paths.
 *   hbm_scan     the eviction price's walk down a node's LRU (held in HBM? demand?).
 *
 * Pure: no clock, no I/O; `now` is passed in.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define W 4                 /* 64-bit words per node mask */
#define MAX_NODES (64 * W)  /* 256 nodes */
#define HBM 0
#define DRAM 1
#define DISK 2
#define PENDING 3

typedef struct { uint64_t w[W]; } mask_t;

typedef struct {
    PyObject_HEAD
    uint64_t parent;    /* parent block hash, when has_parent */
    int has_parent;     /* 0: a chain's first block (parent None) */
    mask_t m[4];        /* HBM, DRAM, DISK, PENDING */
    long long pins;
    double idle_at;
    long long bucket;
    long long demand_cur;
    long long demand_prev;
    double last_access;
} Entry;

static PyTypeObject EntryType;

/* ------------------------------------------------------------------ masks */
static inline int m_zero(const mask_t *a) { return !(a->w[0] | a->w[1] | a->w[2] | a->w[3]); }
static inline int m_eq(const mask_t *a, const mask_t *b) {
    return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}
static inline mask_t m_or(mask_t a, mask_t b) { for (int i = 0; i < W; i++) a.w[i] |= b.w[i]; return a; }
static inline mask_t m_and(mask_t a, mask_t b) { for (int i = 0; i < W; i++) a.w[i] &= b.w[i]; return a; }
static inline mask_t m_andnot(mask_t a, mask_t b) { for (int i = 0; i < W; i++) a.w[i] &= ~b.w[i]; return a; }
static inline mask_t m_xor(mask_t a, mask_t b) { for (int i = 0; i < W; i++) a.w[i] ^= b.w[i]; return a; }
static inline int m_test(const mask_t *a, int n) { return (a->w[n >> 6] >> (n & 63)) & 1; }
static inline void m_set(mask_t *a, int n) { a->w[n >> 6] |= (uint64_t)1 << (n & 63); }
static inline void m_clear(mask_t *a, int n) { a->w[n >> 6] &= ~((uint64_t)1 << (n & 63)); }

/* Iterate the set bits of a mask: for (MASK_EACH(m, n)) { ... } */
#define MASK_FOR(mask, n, body)                                              \
    do {                                                                     \
        for (int _wi = 0; _wi < W; _wi++) {                                  \
            uint64_t _w = (mask).w[_wi];                                     \
            while (_w) {                                                     \
                int n = _wi * 64 + __builtin_ctzll(_w);                      \
                _w &= _w - 1;                                                \
                body                                                         \
            }                                                                \
        }                                                                    \
    } while (0)

static PyObject *mask_to_int(const mask_t *m) {
    if (!(m->w[1] | m->w[2] | m->w[3]))
        return PyLong_FromUnsignedLongLong(m->w[0]);
    unsigned char buf[8 * W];
    for (int i = 0; i < W; i++)
        for (int b = 0; b < 8; b++)
            buf[i * 8 + b] = (unsigned char)(m->w[i] >> (8 * b));
    return _PyLong_FromByteArray(buf, sizeof buf, 1, 0);
}

/* `v` (a non-negative int below 2**256) as a mask; `*out` is written only on success. */
static int int_to_mask(PyObject *v, mask_t *out) {
    if (!PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError, "a node mask must be an int, not %.100s", Py_TYPE(v)->tp_name);
        return -1;
    }
    mask_t m = {{0}};
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (!(x == (unsigned long long)-1 && PyErr_Occurred())) {
        m.w[0] = x;
        *out = m;
        return 0;
    }
    PyErr_Clear();
    /* int.to_bytes itself (not an override on a subclass), so the result is bytes of 8 * W */
    PyObject *b = PyObject_CallMethod((PyObject *)&PyLong_Type, "to_bytes", "Ois", v, 8 * W, "little");
    if (b == NULL || !PyBytes_Check(b) || PyBytes_GET_SIZE(b) != 8 * W) {
        Py_XDECREF(b);
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "node mask %R is negative or names a node >= %d "
                     "(the native index holds %d nodes; more use the Python index)", v, MAX_NODES, MAX_NODES);
        return -1;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(b);
    for (int i = 0; i < W; i++)
        for (int k = 0; k < 8; k++)
            m.w[i] |= (uint64_t)p[i * 8 + k] << (8 * k);
    Py_DECREF(b);
    *out = m;
    return 0;
}

static int check_node(long node) {
    if (node < 0 || node >= MAX_NODES) {
        PyErr_Format(PyExc_ValueError, "node %ld out of range: the native index holds nodes 0-%d", node, MAX_NODES - 1);
        return -1;
    }
    return 0;
}

static int check_tier(long tier) {
    if (tier < HBM || tier > DISK) {
        PyErr_Format(PyExc_ValueError, "tier %ld is not HBM (0), DRAM (1) or DISK (2)", tier);
        return -1;
    }
    return 0;
}

/* `v` as a block hash (an int in [0, 2**64)); the errors say "`what` must be `expected`". */
static inline int hash_key(PyObject *v, uint64_t *out, const char *what, const char *expected) {
    if (!PyLong_CheckExact(v)) {  /* exact ints, as the Python kernel: True is not a hash */
        PyErr_Format(PyExc_TypeError, "%s must be %s, not %.100s", what, expected, Py_TYPE(v)->tp_name);
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be in [0, 2**64) (64-bit unsigned), not %R", what, v);
        return -1;
    }
    *out = x;
    return 0;
}

/* ------------------------------------------------------------------ BlockEntry */
static Entry *entry_new(int has_parent, uint64_t parent) {
    Entry *e = (Entry *)EntryType.tp_alloc(&EntryType, 0);  /* zero-filled */
    if (e == NULL)
        return NULL;
    e->has_parent = has_parent;
    e->parent = parent;
    e->idle_at = -Py_HUGE_VAL;
    e->bucket = -1;
    e->last_access = -Py_HUGE_VAL;
    return e;
}

static inline int entry_kept(const Entry *e) {
    return !(m_zero(&e->m[HBM]) && m_zero(&e->m[DRAM]) && m_zero(&e->m[DISK]) && m_zero(&e->m[PENDING])) || e->pins;
}

static void Entry_dealloc(Entry *e) {
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int Entry_init(Entry *e, PyObject *args, PyObject *kw) {
    static char *names[] = {"parent", "hbm", "dram", "disk", "pending", "pins", "idle_at", "bucket",
                            "demand_cur", "demand_prev", "last_access", NULL};
    PyObject *parent = Py_None, *masks[4] = {NULL, NULL, NULL, NULL};
    long long pins = 0, bucket = -1, dcur = 0, dprev = 0;
    double idle_at = -Py_HUGE_VAL, last = -Py_HUGE_VAL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOOOLdLLLd", names, &parent, &masks[HBM], &masks[DRAM],
                                     &masks[DISK], &masks[PENDING], &pins, &idle_at, &bucket, &dcur, &dprev, &last))
        return -1;
    uint64_t pk = 0;
    if (parent != Py_None && hash_key(parent, &pk, "parent", "a block hash (int) or None") < 0)
        return -1;
    mask_t m[4] = {{{0}}};  /* all checked before anything changes */
    for (int t = 0; t < 4; t++)
        if (masks[t] != NULL && int_to_mask(masks[t], &m[t]) < 0)
            return -1;
    memcpy(e->m, m, sizeof m);
    e->has_parent = parent != Py_None;
    e->parent = pk;
    e->pins = pins;
    e->idle_at = idle_at;
    e->bucket = bucket;
    e->demand_cur = dcur;
    e->demand_prev = dprev;
    e->last_access = last;
    return 0;
}

static PyObject *Entry_get_mask(Entry *e, void *slot) { return mask_to_int(&e->m[(intptr_t)slot]); }

static PyObject *Entry_get_parent(Entry *e, void *unused) {
    if (!e->has_parent)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(e->parent);
}

static int Entry_set_mask(Entry *e, PyObject *v, void *slot) {
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a node mask cannot be deleted");
        return -1;
    }
    return int_to_mask(v, &e->m[(intptr_t)slot]);
}

static PyObject *Entry_get_kept(Entry *e, void *unused) { return PyBool_FromLong(entry_kept(e)); }

static PyObject *Entry_mask(Entry *e, PyObject *tier) {
    long t = PyLong_AsLong(tier);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    if (check_tier(t) < 0)
        return NULL;
    return mask_to_int(&e->m[t]);
}

static PyObject *Entry_repr(Entry *e) {
    PyObject *h = mask_to_int(&e->m[HBM]), *d = mask_to_int(&e->m[DRAM]), *k = mask_to_int(&e->m[DISK]),
             *p = mask_to_int(&e->m[PENDING]);
    PyObject *out = NULL, *par = Entry_get_parent(e, NULL);
    if (h && d && k && p && par)
        out = PyUnicode_FromFormat("BlockEntry(parent=%R, hbm=%R, dram=%R, disk=%R, pending=%R, pins=%lld, "
                                   "bucket=%lld, demand_cur=%lld, demand_prev=%lld)",
                                   par, h, d, k, p, e->pins, e->bucket, e->demand_cur, e->demand_prev);
    Py_XDECREF(h); Py_XDECREF(d); Py_XDECREF(k); Py_XDECREF(p); Py_XDECREF(par);
    return out;
}

static PyMemberDef Entry_members[] = {
    {"pins", T_LONGLONG, offsetof(Entry, pins), 0, "counted pins (admin); a pinned entry never expires"},
    {"idle_at", T_DOUBLE, offsetof(Entry, idle_at), 0, "when it last lost its residency, pending mark or pin"},
    {"bucket", T_LONGLONG, offsetof(Entry, bucket), 0, "window bucket index that demand_cur counts"},
    {"demand_cur", T_LONGLONG, offsetof(Entry, demand_cur), 0, NULL},
    {"demand_prev", T_LONGLONG, offsetof(Entry, demand_prev), 0, NULL},
    {"last_access", T_DOUBLE, offsetof(Entry, last_access), 0, NULL},
    {NULL},
};

static PyGetSetDef Entry_getset[] = {
    {"parent", (getter)Entry_get_parent, NULL, "parent block hash (None for a chain's first block)", NULL},
    {"hbm", (getter)Entry_get_mask, (setter)Entry_set_mask, "nodes holding it in HBM (bitmask)", (void *)HBM},
    {"dram", (getter)Entry_get_mask, (setter)Entry_set_mask, "nodes holding it in DRAM (bitmask)", (void *)DRAM},
    {"disk", (getter)Entry_get_mask, (setter)Entry_set_mask, "nodes holding it on disk (bitmask)", (void *)DISK},
    {"pending", (getter)Entry_get_mask, (setter)Entry_set_mask,
     "nodes that will hold it in HBM once a dispatched request computes it", (void *)PENDING},
    {"kept", (getter)Entry_get_kept, NULL, "held, pending or pinned: never expired", NULL},
    {NULL},
};

static PyObject *Entry_holds(Entry *e, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "holds(tier, node) takes 2 arguments");
        return NULL;
    }
    long t = PyLong_AsLong(args[0]);
    if ((t == -1 && PyErr_Occurred()) || check_tier(t) < 0)
        return NULL;
    long node = PyLong_AsLong(args[1]);
    if (node == -1 && PyErr_Occurred())
        return NULL;
    if (node < 0) {
        PyErr_Format(PyExc_ValueError, "node %ld out of range: node ids are >= 0", node);
        return NULL;
    }
    return PyBool_FromLong(node < MAX_NODES && m_test(&e->m[t], (int)node));
}

static PyMethodDef Entry_methods[] = {
    {"mask", (PyCFunction)Entry_mask, METH_O, "the node mask of a tier"},
    {"holds", (PyCFunction)(void (*)(void))Entry_holds, METH_FASTCALL, "holds(tier, node): whether node holds it in tier"},
    {NULL},
};

static PyTypeObject EntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "preble_tiered.scheduler._index_native.BlockEntry",
    .tp_doc = "What the router knows of one block (native; see scheduler/_index_py.BlockEntry).",
    .tp_basicsize = sizeof(Entry),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Entry_init,
    .tp_dealloc = (destructor)Entry_dealloc,
    .tp_repr = (reprfunc)Entry_repr,
    .tp_members = Entry_members,
    .tp_getset = Entry_getset,
    .tp_methods = Entry_methods,
};


/* ------------------------------------------------------------------ EntryMap */
typedef struct { uint64_t key; Entry *val; } Slot;  /* val NULL: empty */

typedef struct {
    PyObject_HEAD
    Slot *slots;
    size_t cap;        /* a power of two, or 0 before the first insert */
    Py_ssize_t used;
    int shift;         /* 64 - log2(cap) */
    int mapped;        /* slots come from mmap (large tables), else PyMem */
    uint64_t version;  /* bumped by every insert and delete: iterators check it */
} EntryMap;

static PyTypeObject EntryMapType;

#define MAP_MIN_CAP 64
#define MAP_MMAP_BYTES ((size_t)2 << 20)  /* from here on: mmap, in huge pages where offered */

static inline size_t map_slot(const EntryMap *m, uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> m->shift);  /* Fibonacci hashing */
}

static Slot *slots_alloc(size_t cap, int *mapped) {
    size_t bytes = cap * sizeof(Slot);
#if defined(__linux__)
    if (bytes >= MAP_MMAP_BYTES) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            PyErr_NoMemory();
            return NULL;
        }
#ifdef MADV_HUGEPAGE
        madvise(p, bytes, MADV_HUGEPAGE);  /* advice only: without it the table still works */
#endif
        *mapped = 1;
        return (Slot *)p;  /* zero-filled */
    }
#endif
    Slot *p = (Slot *)PyMem_Calloc(cap, sizeof(Slot));
    if (p == NULL)
        PyErr_NoMemory();
    *mapped = 0;
    return p;
}

static void slots_free(Slot *p, size_t cap, int mapped) {
    if (p == NULL)
        return;
#if defined(__linux__)
    if (mapped) {
        munmap(p, cap * sizeof(Slot));
        return;
    }
#endif
    PyMem_Free(p);
}

static inline Entry *map_get(const EntryMap *m, uint64_t key) {
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1, i = map_slot(m, key);
    for (;;) {
        const Slot *s = &m->slots[i];
        if (s->val == NULL)
            return NULL;
        if (s->key == key)
            return s->val;
        i = (i + 1) & mask;
    }
}

/* Rebuild with `cap` slots (a power of two above used / 0.6). */
static int map_resize(EntryMap *m, size_t cap) {
    int mapped;
    Slot *ns = slots_alloc(cap, &mapped);
    if (ns == NULL)
        return -1;
    int shift = 64;
    for (size_t c = cap; c > 1; c >>= 1)
        shift--;
    size_t mask = cap - 1;
    for (size_t k = 0; k < m->cap; k++) {
        Slot s = m->slots[k];
        if (s.val == NULL)
            continue;
        size_t i = (size_t)((s.key * 0x9E3779B97F4A7C15ull) >> shift);
        while (ns[i].val != NULL)
            i = (i + 1) & mask;
        ns[i] = s;
    }
    slots_free(m->slots, m->cap, m->mapped);
    m->slots = ns;
    m->cap = cap;
    m->shift = shift;
    m->mapped = mapped;
    return 0;
}

/* Insert `e` under `key`, which must be absent; the map takes a new reference. */
static int map_insert(EntryMap *m, uint64_t key, Entry *e) {
    if ((size_t)(m->used + 1) * 5 > m->cap * 3) {  /* load factor 0.6 */
        size_t cap = m->cap ? m->cap * 2 : MAP_MIN_CAP;
        if (map_resize(m, cap) < 0)
            return -1;
    }
    size_t mask = m->cap - 1, i = map_slot(m, key);
    while (m->slots[i].val != NULL)
        i = (i + 1) & mask;
    Py_INCREF(e);
    m->slots[i].key = key;
    m->slots[i].val = e;
    m->used++;
    m->version++;
    return 0;
}

/* Remove `key`'s slot (backward-shift deletion: no tombstones, probes stay short) and
 * return its entry, whose reference passes to the caller; NULL when absent. */
static Entry *map_pop(EntryMap *m, uint64_t key) {
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1, i = map_slot(m, key);
    for (;;) {
        if (m->slots[i].val == NULL)
            return NULL;
        if (m->slots[i].key == key)
            break;
        i = (i + 1) & mask;
    }
    Entry *out = m->slots[i].val;
    size_t j = i;
    for (;;) {  /* move later members of the cluster back into the hole when allowed */
        j = (j + 1) & mask;
        if (m->slots[j].val == NULL)
            break;
        size_t home = map_slot(m, m->slots[j].key);
        /* slot j may move to i when its home is not cyclically within (i, j] */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].val = NULL;
    m->slots[i].key = 0;
    m->used--;
    m->version++;
    if (m->cap > MAP_MIN_CAP && (size_t)m->used * 8 < m->cap) {  /* shrink: memory follows the index */
        size_t cap = m->cap;
        while (cap > MAP_MIN_CAP && (size_t)m->used * 4 < cap)
            cap >>= 1;
        if (map_resize(m, cap) < 0)
            PyErr_Clear();  /* keeping the larger table is correct */
    }
    return out;
}

/* Start loading every key's slot, then every found entry, before the walk needs them: the
 * misses of a cold chain overlap instead of following one another block by block. Hints
 * only (nothing is kept: a callback may change the map before the walk gets there). */
#define PREFETCH_MAX 128  /* keys ahead: ~40 KB of lines, what the near caches hold */

static void map_prefetch(const EntryMap *m, const uint64_t *keys, Py_ssize_t n) {
    if (m->cap == 0)
        return;
    if (n > PREFETCH_MAX)
        n = PREFETCH_MAX;  /* a long document's later blocks would evict its first ones */
    for (Py_ssize_t k = 0; k < n; k++)
        __builtin_prefetch(&m->slots[map_slot(m, keys[k])]);
    for (Py_ssize_t k = 0; k < n; k++) {
        const char *e = (const char *)map_get(m, keys[k]);
        if (e != NULL)  /* the whole entry: refcount and demand are written, masks read */
            for (size_t off = 0; off < sizeof(Entry); off += 64)
                __builtin_prefetch(e + off, 1);
    }
}

static void map_clear(EntryMap *m) {
    Slot *slots = m->slots;
    size_t cap = m->cap;
    int mapped = m->mapped;
    m->slots = NULL;
    m->cap = 0;
    m->used = 0;
    m->shift = 64;
    m->version++;
    for (size_t k = 0; k < cap; k++)  /* the map is empty before any entry's dealloc runs */
        Py_XDECREF(slots[k].val);
    slots_free(slots, cap, mapped);
}

static PyObject *EntryMap_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if ((args && PyTuple_GET_SIZE(args)) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "EntryMap() takes no arguments");
        return NULL;
    }
    EntryMap *m = (EntryMap *)type->tp_alloc(type, 0);
    if (m != NULL)
        m->shift = 64;
    return (PyObject *)m;
}

static void EntryMap_dealloc(EntryMap *m) {
    map_clear(m);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static Py_ssize_t EntryMap_len(EntryMap *m) { return m->used; }

/* A key for reading: anything that is not a block hash is simply absent (as in a dict). */
static inline int read_key(PyObject *k, uint64_t *out) {
    if (!PyLong_Check(k))
        return 0;
    unsigned long long x = PyLong_AsUnsignedLongLong(k);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return 1;
}

static int EntryMap_contains(EntryMap *m, PyObject *k) {
    uint64_t key;
    return read_key(k, &key) && map_get(m, key) != NULL;
}

static PyObject *EntryMap_subscript(EntryMap *m, PyObject *k) {
    uint64_t key;
    Entry *e = read_key(k, &key) ? map_get(m, key) : NULL;
    if (e == NULL) {
        PyErr_SetObject(PyExc_KeyError, k);
        return NULL;
    }
    Py_INCREF(e);
    return (PyObject *)e;
}

static int EntryMap_ass_subscript(EntryMap *m, PyObject *k, PyObject *v) {
    uint64_t key;
    if (v == NULL) {
        Entry *e = read_key(k, &key) ? map_pop(m, key) : NULL;
        if (e == NULL) {
            PyErr_SetObject(PyExc_KeyError, k);
            return -1;
        }
        Py_DECREF(e);
        return 0;
    }
    if (hash_key(k, &key, "block hashes", "ints") < 0)
        return -1;
    if (Py_TYPE(v) != &EntryType) {
        PyErr_Format(PyExc_TypeError, "an EntryMap holds only the native BlockEntry, not %.100s "
                     "(an entry of the Python kernel?)", Py_TYPE(v)->tp_name);
        return -1;
    }
    if (m->cap) {  /* an existing key: swap the value in place (no rehash, no version bump) */
        size_t mask = m->cap - 1, i = map_slot(m, key);
        for (; m->slots[i].val != NULL; i = (i + 1) & mask) {
            if (m->slots[i].key == key) {
                Entry *old = m->slots[i].val;
                Py_INCREF(v);
                m->slots[i].val = (Entry *)v;
                Py_DECREF(old);
                return 0;
            }
        }
    }
    return map_insert(m, key, (Entry *)v);
}

static PyObject *EntryMap_get(EntryMap *m, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get(hash, default=None) takes 1 or 2 arguments");
        return NULL;
    }
    uint64_t key;
    PyObject *e = read_key(args[0], &key) ? (PyObject *)map_get(m, key) : NULL;
    if (e == NULL)
        e = nargs == 2 ? args[1] : Py_None;
    Py_INCREF(e);
    return e;
}

static PyObject *EntryMap_clear(EntryMap *m, PyObject *unused) {
    map_clear(m);
    Py_RETURN_NONE;
}

static PyObject *EntryMap_memory(EntryMap *m, PyObject *unused) {
    return PyLong_FromSize_t(m->cap * sizeof(Slot));
}

/* Iteration over keys (0), values (1) or items (2); a change in size or content during
 * iteration raises RuntimeError, as for a dict. */
typedef struct {
    PyObject_HEAD
    EntryMap *map;
    size_t pos;
    uint64_t version;
    int kind;
} MapIter;

static PyTypeObject MapIterType;

static PyObject *map_iter(EntryMap *m, int kind) {
    MapIter *it = PyObject_New(MapIter, &MapIterType);
    if (it == NULL)
        return NULL;
    Py_INCREF(m);
    it->map = m;
    it->pos = 0;
    it->version = m->version;
    it->kind = kind;
    return (PyObject *)it;
}

static void MapIter_dealloc(MapIter *it) {
    Py_XDECREF(it->map);
    PyObject_Free(it);
}

static PyObject *MapIter_next(MapIter *it) {
    EntryMap *m = it->map;
    if (m == NULL)
        return NULL;
    if (m->version != it->version) {
        PyErr_SetString(PyExc_RuntimeError, "EntryMap changed during iteration");
        return NULL;
    }
    while (it->pos < m->cap) {
        Slot s = m->slots[it->pos++];
        if (s.val == NULL)
            continue;
        /* owned before any allocation: a collection it triggers may run a finalizer that
         * changes the map */
        PyObject *v = (PyObject *)s.val;
        Py_INCREF(v);
        if (it->kind == 1)
            return v;
        if (it->kind == 0) {
            Py_DECREF(v);  /* freeing an entry runs no Python code */
            return PyLong_FromUnsignedLongLong(s.key);
        }
        PyObject *k = PyLong_FromUnsignedLongLong(s.key), *t = k ? PyTuple_New(2) : NULL;
        if (t == NULL) {
            Py_XDECREF(k);
            Py_DECREF(v);
            return NULL;
        }
        PyTuple_SET_ITEM(t, 0, k);
        PyTuple_SET_ITEM(t, 1, v);
        return t;
    }
    Py_CLEAR(it->map);
    return NULL;
}

static PyTypeObject MapIterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "preble_tiered.scheduler._index_native.EntryMapIterator",
    .tp_basicsize = sizeof(MapIter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)MapIter_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)MapIter_next,
};

static PyObject *EntryMap_iter(EntryMap *m) { return map_iter(m, 0); }
static PyObject *EntryMap_keys(EntryMap *m, PyObject *unused) { return map_iter(m, 0); }
static PyObject *EntryMap_values(EntryMap *m, PyObject *unused) { return map_iter(m, 1); }
static PyObject *EntryMap_items(EntryMap *m, PyObject *unused) { return map_iter(m, 2); }

static PyMethodDef EntryMap_methods[] = {
    {"get", (PyCFunction)(void (*)(void))EntryMap_get, METH_FASTCALL, "get(hash, default=None)"},
    {"keys", (PyCFunction)EntryMap_keys, METH_NOARGS, "an iterator over the hashes"},
    {"values", (PyCFunction)EntryMap_values, METH_NOARGS, "an iterator over the entries"},
    {"items", (PyCFunction)EntryMap_items, METH_NOARGS, "an iterator over (hash, entry)"},
    {"clear", (PyCFunction)EntryMap_clear, METH_NOARGS, "drop every entry"},
    {"table_bytes", (PyCFunction)EntryMap_memory, METH_NOARGS, "bytes of the slot table"},
    {NULL},
};

static PyMappingMethods EntryMap_as_mapping = {
    .mp_length = (lenfunc)EntryMap_len,
    .mp_subscript = (binaryfunc)EntryMap_subscript,
    .mp_ass_subscript = (objobjargproc)EntryMap_ass_subscript,
};

static PySequenceMethods EntryMap_as_sequence = {
    .sq_contains = (objobjproc)EntryMap_contains,
};

static PyTypeObject EntryMapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "preble_tiered.scheduler._index_native.EntryMap",
    .tp_doc = "Block hash (int in [0, 2**64)) -> native BlockEntry: the native index's table.",
    .tp_basicsize = sizeof(EntryMap),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = EntryMap_new,
    .tp_dealloc = (destructor)EntryMap_dealloc,
    .tp_as_mapping = &EntryMap_as_mapping,
    .tp_as_sequence = &EntryMap_as_sequence,
    .tp_iter = (getiterfunc)EntryMap_iter,
    .tp_methods = EntryMap_methods,
};

/* ------------------------------------------------------------------ helpers */
static EntryMap *as_map(PyObject *entries) {
    if (Py_TYPE(entries) != &EntryMapType) {
        PyErr_Format(PyExc_TypeError, "entries must be an EntryMap, not %.100s", Py_TYPE(entries)->tp_name);
        return NULL;
    }
    return (EntryMap *)entries;
}

/* `hashes` as a list/tuple of ints (a new reference in *seq) and their 64-bit keys (in `buf`
 * when it holds them, else in a PyMem block the caller frees when *keys != buf), all checked
 * before anything changes, so a bad hash never leaves a call half done. */
static int hash_keys(PyObject *hashes, PyObject **seq, uint64_t **keys, uint64_t *buf, Py_ssize_t buf_n) {
    *seq = PySequence_Fast(hashes, "hashes must be an iterable of ints");
    if (*seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(*seq);
    PyObject **hs = PySequence_Fast_ITEMS(*seq);
    *keys = n <= buf_n ? buf : (uint64_t *)PyMem_Malloc((size_t)n * sizeof(uint64_t));
    if (*keys == NULL) {
        Py_CLEAR(*seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        if (hash_key(hs[k], &(*keys)[k], "block hashes", "ints") < 0) {
            if (*keys != buf)
                PyMem_Free(*keys);
            Py_CLEAR(*seq);
            return -1;
        }
    }
    return 0;
}

#define KEYS_BUF 256  /* hashes converted on the stack; longer prompts use the heap */

/* `idle_append(key)` with a fresh int: never an item of the caller's hash list, which the
 * callback could change under us. */
static int queue_idle(PyObject *idle_append, uint64_t key) {
    PyObject *h = PyLong_FromUnsignedLongLong(key);
    if (h == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(idle_append, h);
    Py_DECREF(h);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Count a request for block `keys[i]` (entry `e`, created with the previous key as parent
 * when NULL and queued as idle) and append it to `walked`, which then keeps it alive
 * whatever `idle_append` does. Returns the entry (borrowed from `walked`), NULL on error. */
static Entry *touch(EntryMap *map, PyObject *idle_append, Entry *e, const uint64_t *keys,
                    Py_ssize_t i, double now, long long bucket, PyObject *walked) {
    int is_new = e == NULL;
    if (is_new) {
        if ((e = entry_new(i > 0, i > 0 ? keys[i - 1] : 0)) == NULL)
            return NULL;
    } else {
        Py_INCREF(e);
    }
    if (e->bucket != bucket) {
        e->demand_prev = e->bucket == bucket - 1 ? e->demand_cur : 0;
        e->demand_cur = 0;
        e->bucket = bucket;
    }
    e->demand_cur += 1;
    e->last_access = now;
    int rc = PyList_Append(walked, (PyObject *)e);
    if (rc == 0 && is_new && (rc = map_insert(map, keys[i], e)) == 0)
        rc = queue_idle(idle_append, keys[i]);  /* a new entry is idle until held */
    Py_DECREF(e);
    return rc < 0 ? NULL : e;
}

static PyObject *make_node_match(PyTypeObject *nm_type, int node, const int *c, int hbm_prefix) {
    /* NodeMatch(node, hbm, dram, disk, pending, hbm_prefix); c = (hbm, pending, dram, disk).
     * Allocated as tuple.__new__ does for a subtype (tp_alloc, then the items), without a
     * Python frame or an argument tuple; the caller checked that nm_type is a tuple subtype
     * (a namedtuple: no __dict__, a tuple's layout). */
    long v[6] = {node, c[0], c[2], c[3], c[1], hbm_prefix};
    PyObject *t = nm_type->tp_alloc(nm_type, 6);
    if (t == NULL)
        return NULL;
    for (int k = 0; k < 6; k++) {
        PyObject *x = PyLong_FromLong(v[k]);
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, k, x);
    }
    return t;
}

/* Masks of the `alive` nodes whose best copy is HBM, pending, DRAM, disk (tier order of
 * the counts: 0 hbm, 1 pending, 2 dram, 3 disk). */
static inline void best_tiers(const Entry *e, mask_t alive, mask_t out[4]) {
    mask_t hb = m_and(e->m[HBM], alive);
    mask_t pe = m_andnot(m_and(e->m[PENDING], alive), hb);
    mask_t dr = m_andnot(m_and(e->m[DRAM], alive), m_or(hb, pe));
    out[0] = hb;
    out[1] = pe;
    out[2] = dr;
    out[3] = m_andnot(alive, m_or(m_or(hb, pe), dr));
}

/* ------------------------------------------------------------------ walk */
PyDoc_STRVAR(walk_doc,
"walk(entries, idle_append, hashes, now, bucket, node_match) ->\n"
"    (nodes, longest, holders, longest_hbm, hbm_holders, walked, source, shapes)\n\n"
"Match `hashes` against the index, counting a request for every block when `now` is not\n"
"None (then `walked` lists every block's entry, created as needed; else None).\n"
"`source` is the NodeMatch of the best pull source: no pending block, the most blocks held,\n"
"then the most in HBM, then the lowest node id; None when no node holds a block.\n"
"`shapes` maps each distinct (hbm, dram, disk, pending, hbm_prefix) to its nodes, ascending.");

static PyObject *walk(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "walk takes 6 arguments");
        return NULL;
    }
    PyObject *idle_append = args[1], *now_obj = args[3];
    PyTypeObject *nm_type = (PyTypeObject *)args[5];
    EntryMap *map = as_map(args[0]);
    if (map == NULL)
        return NULL;
    if (!PyType_Check(args[5]) || !PyType_IsSubtype(nm_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "walk: node_match must be a tuple type");
        return NULL;
    }
    int record = now_obj != Py_None;
    double now = 0.0;
    long long bucket = 0;
    if (record) {
        now = PyFloat_AsDouble(now_obj);
        if (now == -1.0 && PyErr_Occurred())
            return NULL;
        bucket = PyLong_AsLongLong(args[4]);
        if (bucket == -1 && PyErr_Occurred())
            return NULL;
    }
    PyObject *seq;
    uint64_t kbuf[KEYS_BUF], *keys;
    if (hash_keys(args[2], &seq, &keys, kbuf, KEYS_BUF) < 0)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    map_prefetch(map, keys, n);
    PyObject *walked = NULL, *nodes = NULL, *shapes = NULL, *result = NULL;
    if (record && (walked = PyList_New(0)) == NULL)
        goto done;
    if ((nodes = PyDict_New()) == NULL || (shapes = PyDict_New()) == NULL)
        goto done;

    mask_t alive = {{0}}, alive_hbm = {{0}}, first_alive = {{0}};
    Py_ssize_t i = 0;
    if (n > 0) {
        Entry *e = map_get(map, keys[0]);
        if (record) {
            if ((e = touch(map, idle_append, e, keys, 0, now, bucket, walked)) == NULL)
                goto done;
        }
        i = 1;
        if (e != NULL)
            alive = m_or(m_or(e->m[HBM], e->m[DRAM]), m_or(e->m[DISK], e->m[PENDING]));
        if (!m_zero(&alive)) {
            /* counts[node][t], since[t][node], hbm_prefix[node]: only `first_alive` nodes are
             * read, each initialised below (on the stack, ~9 KB: reentrant, nothing to clear) */
            int counts[MAX_NODES][4], since[4][MAX_NODES], hbm_prefix[MAX_NODES];
            first_alive = alive;
            MASK_FOR(alive, nd, { counts[nd][0] = counts[nd][1] = counts[nd][2] = counts[nd][3] = 0;
                                  hbm_prefix[nd] = 0; });
            alive_hbm = m_and(m_or(e->m[HBM], e->m[PENDING]), alive);
            mask_t cur[4], nw[4];
            best_tiers(e, alive, cur);
            for (int t = 0; t < 4; t++)
                MASK_FOR(cur[t], nd, { since[t][nd] = 0; });
            mask_t prev[4];  /* the previous block's masks (values: the entry may go away) */
            memcpy(prev, e->m, sizeof prev);
            while (i < n) {
                Entry *x = map_get(map, keys[i]);
                if (x == NULL) {
                    if (record) {
                        if (touch(map, idle_append, NULL, keys, i, now, bucket, walked) == NULL)
                            goto done;
                    }
                    break;
                }
                if (record) {
                    if (x->bucket != bucket) {
                        x->demand_prev = x->bucket == bucket - 1 ? x->demand_cur : 0;
                        x->demand_cur = 0;
                        x->bucket = bucket;
                    }
                    x->demand_cur += 1;
                    x->last_access = now;
                    if (PyList_Append(walked, (PyObject *)x) < 0)
                        goto done;
                }
                if (m_eq(&x->m[HBM], &prev[HBM]) && m_eq(&x->m[PENDING], &prev[PENDING]) &&
                    m_eq(&x->m[DRAM], &prev[DRAM]) && m_eq(&x->m[DISK], &prev[DISK])) {
                    i++;
                    continue;  /* same residency as the previous block: nothing flips */
                }
                memcpy(prev, x->m, sizeof prev);
                mask_t new_alive = m_and(alive, m_or(m_or(x->m[HBM], x->m[DRAM]), m_or(x->m[DISK], x->m[PENDING])));
                mask_t new_hbm = m_and(alive_hbm, m_or(x->m[HBM], x->m[PENDING]));
                MASK_FOR(m_andnot(alive_hbm, new_hbm), nd, { hbm_prefix[nd] = (int)i; });
                alive_hbm = new_hbm;
                best_tiers(x, new_alive, nw);
                for (int t = 0; t < 4; t++) {
                    mask_t flips = m_xor(cur[t], nw[t]);
                    if (m_zero(&flips))
                        continue;
                    MASK_FOR(m_and(cur[t], flips), nd, { counts[nd][t] += (int)i - since[t][nd]; });
                    MASK_FOR(m_and(nw[t], flips), nd, { since[t][nd] = (int)i; });
                }
                memcpy(cur, nw, sizeof cur);
                if (m_zero(&new_alive))
                    break;
                alive = new_alive;
                i++;
            }
            for (int t = 0; t < 4; t++)
                MASK_FOR(cur[t], nd, { counts[nd][t] += (int)i - since[t][nd]; });
            MASK_FOR(alive_hbm, nd, { hbm_prefix[nd] = (int)i; });
            int best = 0;
            mask_t hbm_holders = {{0}};
            MASK_FOR(first_alive, nd, { if (hbm_prefix[nd] > best) best = hbm_prefix[nd]; });
            if (best)
                MASK_FOR(first_alive, nd, { if (hbm_prefix[nd] == best) m_set(&hbm_holders, nd); });
            int failed = 0, src_held = 0, src_hbm = 0;
            PyObject *source = Py_None;  /* borrowed from `nodes` */
            /* nodes grouped by shape (hbm, dram, disk, pending, hbm_prefix) through a small
             * open-addressing table of shape ids: O(holders) even when every node's layout
             * differs (a linear search over the shapes would be O(holders x shapes)) */
            int shape_of[MAX_NODES][5], n_shapes = 0, slot_of[2 * MAX_NODES];
            PyObject *shape_nodes[MAX_NODES];
            memset(slot_of, -1, sizeof slot_of);
            MASK_FOR(first_alive, nd, {
                if (!failed) {
                    PyObject *key = PyLong_FromLong(nd);
                    PyObject *nm = key ? make_node_match(nm_type, nd, counts[nd], hbm_prefix[nd]) : NULL;
                    if (nm == NULL || PyDict_SetItem(nodes, key, nm) < 0)
                        failed = 1;
                    if (!failed) {
                        int sh[5];  /* no braces initialiser: commas would split MASK_FOR's body */
                        sh[0] = counts[nd][0];
                        sh[1] = counts[nd][2];
                        sh[2] = counts[nd][3];
                        sh[3] = counts[nd][1];
                        sh[4] = hbm_prefix[nd];
                        uint32_t hsh = 0;
                        for (int f = 0; f < 5; f++)
                            hsh = (hsh ^ (uint32_t)sh[f]) * 0x9E3779B1u;
                        unsigned j = (hsh >> 16) & (2 * MAX_NODES - 1);
                        while (slot_of[j] >= 0 && memcmp(shape_of[slot_of[j]], sh, sizeof sh))
                            j = (j + 1) & (2 * MAX_NODES - 1);
                        int k = slot_of[j];
                        if (k < 0) {
                            k = n_shapes;
                            if ((shape_nodes[k] = PyList_New(0)) == NULL)
                                failed = 1;
                            else {
                                memcpy(shape_of[k], sh, sizeof sh);
                                slot_of[j] = k;
                                n_shapes++;
                            }
                        }
                        if (!failed && PyList_Append(shape_nodes[k], key) < 0)
                            failed = 1;
                    }
                    if (!failed && counts[nd][1] == 0) {  /* a pull source: nothing pending */
                        int held = counts[nd][0] + counts[nd][2] + counts[nd][3];
                        if (held > src_held || (held == src_held && held && counts[nd][0] > src_hbm)) {
                            src_held = held;
                            src_hbm = counts[nd][0];
                            source = nm;  /* ascending ids: ties keep the lowest */
                        }
                    }
                    Py_XDECREF(key);
                    Py_XDECREF(nm);
                }
            });
            for (int k = 0; k < n_shapes; k++) {
                if (!failed) {
                    const int *v = shape_of[k];
                    PyObject *key = Py_BuildValue("(iiiii)", v[0], v[1], v[2], v[3], v[4]);
                    if (key == NULL || PyDict_SetItem(shapes, key, shape_nodes[k]) < 0)
                        failed = 1;
                    Py_XDECREF(key);
                }
                Py_DECREF(shape_nodes[k]);
            }
            if (failed)
                goto done;
            if (record) {  /* the blocks past the match are counted too */
                for (Py_ssize_t j = i + 1; j < n; j++) {
                    if (touch(map, idle_append, map_get(map, keys[j]), keys, j, now, bucket, walked) == NULL)
                        goto done;
                }
            }
            PyObject *holders = mask_to_int(&alive), *hh = mask_to_int(&hbm_holders);
            if (holders && hh)
                result = Py_BuildValue("(OnNiNOOO)", nodes, i, holders, best, hh, record ? walked : Py_None,
                                       source, shapes);
            else {
                Py_XDECREF(holders);
                Py_XDECREF(hh);
            }
            goto done;
        }
    }
    /* nothing usable: count the rest of the blocks */
    if (record) {
        for (Py_ssize_t j = 1; j < n; j++) {
            if (touch(map, idle_append, map_get(map, keys[j]), keys, j, now, bucket, walked) == NULL)
                goto done;
        }
    }
    result = Py_BuildValue("(OiiiiOOO)", nodes, 0, 0, 0, 0, record ? walked : Py_None, Py_None, shapes);
done:
    if (keys != kbuf)
        PyMem_Free(keys);
    Py_DECREF(seq);
    Py_XDECREF(walked);
    Py_XDECREF(nodes);
    Py_XDECREF(shapes);
    return result;
}

/* ------------------------------------------------------------------ mutations */
static int parse_tier_node(PyObject *tier_obj, PyObject *node_obj, long *tier, long *node) {
    *tier = PyLong_AsLong(tier_obj);
    if (*tier == -1 && PyErr_Occurred())
        return -1;
    *node = PyLong_AsLong(node_obj);
    if (*node == -1 && PyErr_Occurred())
        return -1;
    return check_tier(*tier) < 0 || check_node(*node) < 0 ? -1 : 0;
}

PyDoc_STRVAR(store_doc, "store(entries, hashes, tier, node, parent) -> blocks newly held");

static PyObject *store(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "store takes 5 arguments");
        return NULL;
    }
    long tier, node;
    if (parse_tier_node(args[2], args[3], &tier, &node) < 0)
        return NULL;
    uint64_t parent = 0;
    if (args[4] != Py_None && hash_key(args[4], &parent, "parent", "a block hash (int) or None") < 0)
        return NULL;
    EntryMap *map = as_map(args[0]);
    PyObject *seq;
    uint64_t kbuf[KEYS_BUF], *keys;
    if (map == NULL || hash_keys(args[1], &seq, &keys, kbuf, KEYS_BUF) < 0)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    long added = 0;  /* no prefetch: a store's blocks were just walked, or are new (measured: no gain) */
    for (Py_ssize_t k = 0; k < n; k++) {
        Entry *e = map_get(map, keys[k]);
        if (e == NULL) {
            if ((e = entry_new(k || args[4] != Py_None, k ? keys[k - 1] : parent)) == NULL)
                goto fail;
            int rc = map_insert(map, keys[k], e);
            Py_DECREF(e);  /* the map holds it */
            if (rc < 0)
                goto fail;
        }
        if (!m_test(&e->m[tier], (int)node)) {
            m_set(&e->m[tier], (int)node);
            added++;
        }
        if (tier == HBM)
            m_clear(&e->m[PENDING], (int)node);  /* the promised block arrived */
    }
    if (keys != kbuf)
        PyMem_Free(keys);
    Py_DECREF(seq);
    return PyLong_FromLong(added);
fail:
    if (keys != kbuf)
        PyMem_Free(keys);
    Py_DECREF(seq);
    return NULL;
}

/* Clear `node`'s bit in mask `slot` of the entries of `hashes`; an entry left with nothing
 * is stamped idle and queued. Returns how many bits were set, -1 on error. */
static long clear_bits(PyObject *entries, PyObject *idle_append, PyObject *hashes, int slot, int node, double now) {
    EntryMap *map = as_map(entries);
    PyObject *seq;
    uint64_t kbuf[KEYS_BUF], *keys;
    if (map == NULL || hash_keys(hashes, &seq, &keys, kbuf, KEYS_BUF) < 0)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    map_prefetch(map, keys, n);
    long cleared = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Entry *e = map_get(map, keys[k]);  /* afresh: idle_append may have changed the map */
        if (e == NULL)
            continue;  /* unknown hashes are ignored */
        if (!m_test(&e->m[slot], node))
            continue;
        m_clear(&e->m[slot], node);
        cleared++;
        if (!entry_kept(e)) {
            e->idle_at = now;
            if (queue_idle(idle_append, keys[k]) < 0) {
                cleared = -1;
                break;
            }
        }
    }
    if (keys != kbuf)
        PyMem_Free(keys);
    Py_DECREF(seq);
    return cleared;
}

PyDoc_STRVAR(remove_doc, "remove(entries, idle_append, hashes, tier, node, now) -> blocks actually removed");

static PyObject *remove_(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "remove takes 6 arguments");
        return NULL;
    }
    long tier, node;
    if (parse_tier_node(args[3], args[4], &tier, &node) < 0)
        return NULL;
    double now = PyFloat_AsDouble(args[5]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    long removed = clear_bits(args[0], args[1], args[2], (int)tier, (int)node, now);
    return removed < 0 ? NULL : PyLong_FromLong(removed);
}

PyDoc_STRVAR(clear_pending_doc, "clear_pending(entries, idle_append, hashes, node, now)");

static PyObject *clear_pending(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "clear_pending takes 5 arguments");
        return NULL;
    }
    long node = PyLong_AsLong(args[3]);
    if ((node == -1 && PyErr_Occurred()) || check_node(node) < 0)
        return NULL;
    double now = PyFloat_AsDouble(args[4]);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    long cleared = clear_bits(args[0], args[1], args[2], PENDING, (int)node, now);
    if (cleared < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(add_pending_doc, "add_pending(walked_entries, node): mark pending where not in the node's HBM");

static PyObject *add_pending(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add_pending takes 2 arguments");
        return NULL;
    }
    long node = PyLong_AsLong(args[1]);
    if ((node == -1 && PyErr_Occurred()) || check_node(node) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(args[0], "entries must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (Py_TYPE(items[i]) != &EntryType) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_TypeError, "add_pending: not a native BlockEntry");
            return NULL;
        }
        Entry *e = (Entry *)items[i];
        if (!m_test(&e->m[HBM], (int)node))
            m_set(&e->m[PENDING], (int)node);
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(expire_doc,
"expire(entries, idle, cutoff, batch, fresh_limit)\n\n"
"Look at up to `batch` queued hashes: drop the expired, let go of the held, re-queue the\n"
"rest, stopping after `fresh_limit` not yet due (see index.py).");

static PyObject *expire(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "expire takes 5 arguments");
        return NULL;
    }
    PyObject *idle = args[1];
    EntryMap *map = as_map(args[0]);
    if (map == NULL)
        return NULL;
    double cutoff = PyFloat_AsDouble(args[2]);
    if (cutoff == -1.0 && PyErr_Occurred())
        return NULL;
    Py_ssize_t batch = PyLong_AsSsize_t(args[3]), fresh_limit = PyLong_AsSsize_t(args[4]);
    if ((batch == -1 || fresh_limit == -1) && PyErr_Occurred())
        return NULL;
    Py_ssize_t queued = PyObject_Length(idle);
    if (queued < 0)
        return NULL;
    if (batch > queued)
        batch = queued;
    if (batch == 0)
        Py_RETURN_NONE;
    PyObject *popleft = PyObject_GetAttrString(idle, "popleft"), *append = PyObject_GetAttrString(idle, "append");
    PyObject *ret = NULL;
    if (popleft == NULL || append == NULL)
        goto out;
    Py_ssize_t fresh = 0;
    for (Py_ssize_t k = 0; k < batch; k++) {
        PyObject *h = PyObject_CallNoArgs(popleft);
        if (h == NULL)
            goto out;
        uint64_t key;
        Entry *e = read_key(h, &key) ? map_get(map, key) : NULL;  /* not a hash: nothing to drop */
        if (e == NULL || entry_kept(e)) {
            Py_DECREF(h);  /* already dropped (a duplicate), or held again: re-queued when idle */
            continue;
        }
        if (e->last_access <= cutoff && e->idle_at <= cutoff) {
            Py_DECREF(h);
            Py_DECREF(map_pop(map, key));
            continue;
        }
        PyObject *r = PyObject_CallOneArg(append, h);
        Py_DECREF(h);
        if (r == NULL)
            goto out;
        Py_DECREF(r);
        if (++fresh == fresh_limit)
            break;  /* the queue behind is newer still */
    }
    ret = Py_None;
    Py_INCREF(ret);
out:
    Py_XDECREF(popleft);
    Py_XDECREF(append);
    return ret;
}

PyDoc_STRVAR(shared_depth_doc,
"shared_depth(entries, hashes, bucket, min_requests) -> blocks\n\n"
"Blocks of the longest prefix of `hashes` requested at least `min_requests` times in the\n"
"current and previous window buckets (binary search: demand never grows along a chain).");

static PyObject *shared_depth(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "shared_depth takes 4 arguments");
        return NULL;
    }
    long long b = PyLong_AsLongLong(args[2]);
    if (b == -1 && PyErr_Occurred())
        return NULL;
    long long min_req = PyLong_AsLongLong(args[3]);
    if (min_req == -1 && PyErr_Occurred())
        return NULL;
    EntryMap *map = as_map(args[0]);
    PyObject *seq;
    uint64_t kbuf[KEYS_BUF], *keys;
    if (map == NULL || hash_keys(args[1], &seq, &keys, kbuf, KEYS_BUF) < 0)
        return NULL;
    Py_ssize_t lo = 0, hi = PySequence_Fast_GET_SIZE(seq);  /* invariant: prefix of lo blocks qualifies */
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi + 1) / 2;
        Entry *e = map_get(map, keys[mid - 1]);
        long long r = e == NULL ? 0 : e->bucket == b ? e->demand_cur + e->demand_prev
                                                     : e->bucket == b - 1 ? e->demand_cur : 0;
        if (r >= min_req)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (keys != kbuf)
        PyMem_Free(keys);
    Py_DECREF(seq);
    return PyLong_FromSsize_t(lo);
}

PyDoc_STRVAR(hbm_scan_doc,
"hbm_scan(entries, items, node, bucket, limit) -> (stale, seen)\n\n"
"Walk `items` ((key, size) pairs, least recently used first) until `limit` keys held in\n"
"HBM by `node` were seen. `stale` lists the keys passed over (unknown, or not in that HBM);\n"
"`seen` the (size, requests in the window beyond the first) of those held, in order.");

static PyObject *hbm_scan(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "hbm_scan takes 5 arguments");
        return NULL;
    }
    EntryMap *map = as_map(args[0]);
    if (map == NULL)
        return NULL;
    long node = PyLong_AsLong(args[2]);
    if ((node == -1 && PyErr_Occurred()) || check_node(node) < 0)
        return NULL;
    long long b = PyLong_AsLongLong(args[3]);
    if (b == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[4]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    PyObject *it = PyObject_GetIter(args[1]), *stale = PyList_New(0), *seen = PyList_New(0), *item = NULL;
    if (it == NULL || stale == NULL || seen == NULL)
        goto fail;
    while (PyList_GET_SIZE(seen) < limit && (item = PyIter_Next(it)) != NULL) {
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "hbm_scan: items must be (key, size) pairs");
            goto fail;
        }
        PyObject *key = PyTuple_GET_ITEM(item, 0), *size = PyTuple_GET_ITEM(item, 1);
        uint64_t k;
        Entry *e = read_key(key, &k) ? map_get(map, k) : NULL;
        if (e == NULL || !m_test(&e->m[HBM], (int)node)) {
            if (PyList_Append(stale, key) < 0)
                goto fail;
        } else {
            long long hits = (e->bucket == b ? e->demand_cur + e->demand_prev
                                             : e->bucket == b - 1 ? e->demand_cur : 0) - 1;
            PyObject *pair = Py_BuildValue("(OL)", size, hits);
            if (pair == NULL || PyList_Append(seen, pair) < 0) {
                Py_XDECREF(pair);
                goto fail;
            }
            Py_DECREF(pair);
        }
        Py_CLEAR(item);
    }
    if (PyErr_Occurred())
        goto fail;
    Py_DECREF(it);
    return Py_BuildValue("(NN)", stale, seen);
fail:
    Py_XDECREF(item);
    Py_XDECREF(it);
    Py_XDECREF(stale);
    Py_XDECREF(seen);
    return NULL;
}

/* ------------------------------------------------------------------ module */
static PyMethodDef methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL, walk_doc},
    {"store", (PyCFunction)(void (*)(void))store, METH_FASTCALL, store_doc},
    {"remove", (PyCFunction)(void (*)(void))remove_, METH_FASTCALL, remove_doc},
    {"clear_pending", (PyCFunction)(void (*)(void))clear_pending, METH_FASTCALL, clear_pending_doc},
    {"add_pending", (PyCFunction)(void (*)(void))add_pending, METH_FASTCALL, add_pending_doc},
    {"expire", (PyCFunction)(void (*)(void))expire, METH_FASTCALL, expire_doc},
    {"shared_depth", (PyCFunction)(void (*)(void))shared_depth, METH_FASTCALL, shared_depth_doc},
    {"hbm_scan", (PyCFunction)(void (*)(void))hbm_scan, METH_FASTCALL, hbm_scan_doc},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_index_native",
    "Native kernels of the PrefixIndex (same interface as scheduler/_index_py.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__index_native(void) {
    if (PyType_Ready(&EntryType) < 0 || PyType_Ready(&EntryMapType) < 0 || PyType_Ready(&MapIterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "BlockEntry", (PyObject *)&EntryType) < 0 ||
        PyModule_AddObjectRef(m, "EntryMap", (PyObject *)&EntryMapType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_NODES", MAX_NODES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
