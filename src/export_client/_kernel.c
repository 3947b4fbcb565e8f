/* export_client._kernel: the compiled counting kernel.
 *
 * count_lines() counts the (patient_id, event_type) pairs of a block of whole CSV lines that
 * hold no quote, with the same result as the pure exact path, or returns None to decline the
 * block (a quote anywhere, or a carriage return anywhere but just before a line end).
 *
 * The scan runs without the GIL on the bytes object's own buffer (bytes are immutable and the
 * caller holds a reference, so nobody can change or free it meanwhile): pairs go into a C hash
 * table keyed by slices of the block, malformed lines are remembered as slices, and only then,
 * with the GIL taken back, are the Python objects built. Nothing here touches Python objects or
 * the Python allocator's object heaps while the GIL is released; PyMem_Raw* is safe without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* KERNEL_PORTABLE builds the plain C fallbacks only (no SSE2, no compiler builtins), so that
 * benchmarks/asan.sh can test them on any machine. */
#if !defined(KERNEL_PORTABLE) && \
    (defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2))
#include <emmintrin.h>
#define KERNEL_SSE2 1
#endif
#if !defined(KERNEL_PORTABLE) && defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif

typedef struct {
    const char *ptr;
    size_t len;
} Slice;

/* One distinct (patient_id, event_type) pair. Further per-key accumulators (sum, min, max, time
 * range for a statistics mode) belong here. */
typedef struct {
    Slice patient;
    Slice event_type;
    uint64_t count;
} Entry;

/* A slot of the open-addressing index: the key's hash, so that probing rarely touches an entry,
 * and the entry's position + 1 (0: empty). */
typedef struct {
    uint64_t hash;
    size_t entry;
} Slot;

typedef struct {
    Entry *entries; /* dense, in order of first appearance, like the dict built from them */
    size_t size;
    size_t capacity;
    Slot *slots; /* a power of two of them, at most half full, probed linearly */
    size_t mask;
} Table;

typedef struct {
    Table table;
    uint64_t rows;
    uint64_t malformed;
    uint64_t blank;
    Slice *examples;
    size_t example_count;
    size_t example_capacity;
    size_t max_examples;
} Scan;

/* ---- helpers ---------------------------------------------------------------------------- */

static inline unsigned
lowest_bit(uint64_t m) /* m != 0 */
{
#if !defined(KERNEL_PORTABLE) && (defined(__GNUC__) || defined(__clang__))
    return (unsigned)__builtin_ctzll(m);
#elif !defined(KERNEL_PORTABLE) && defined(_MSC_VER) && defined(_M_X64)
    unsigned long i;
    _BitScanForward64(&i, m);
    return (unsigned)i;
#else
    /* De Bruijn: isolate the lowest bit, a multiply puts a unique 6-bit index in the top bits. */
    static const unsigned char table[64] = {
        0,  1,  2,  53, 3,  7,  54, 27, 4,  38, 41, 8,  34, 55, 48, 28, 62, 5,  39, 46, 44, 42,
        22, 9,  24, 35, 59, 56, 49, 18, 29, 11, 63, 52, 6,  26, 37, 40, 33, 47, 61, 45, 43, 21,
        23, 58, 17, 10, 51, 25, 36, 32, 60, 20, 57, 16, 50, 31, 19, 15, 30, 14, 13, 12};
    return table[((m & (0 - m)) * UINT64_C(0x022fdd63cc95386d)) >> 58];
#endif
}

/* Loads through memcpy: no alignment or aliasing assumptions; compilers emit one move. */
static inline uint64_t
load64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t
load32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t
mix(uint64_t h, uint64_t v)
{
    h = (h ^ v) * UINT64_C(0x9e3779b97f4a7c15);
    return h ^ (h >> 29);
}

/* Hashes a slice with loads that stay inside it: short slices as two overlapping words (as
 * xxHash does), so the fields of typical rows take one or two multiplies each. */
static inline uint64_t
hash_slice(uint64_t h, const char *p, size_t n)
{
    if (n >= 8) {
        const char *last = p + n - 8;
        for (; p < last; p += 8)
            h = mix(h, load64(p));
        h = mix(h, load64(last));
    }
    else if (n >= 4) {
        h = mix(h, load32(p) << 32 | load32(p + n - 4));
    }
    else if (n > 0) {
        h = mix(h, (uint64_t)(unsigned char)p[0] << 16 | (uint64_t)(unsigned char)p[n / 2] << 8 |
                       (unsigned char)p[n - 1]);
    }
    return mix(h, n);
}

static inline uint64_t
hash_key(Slice patient, Slice event_type)
{
    /* Two independent chains, so that the CPU computes them side by side. */
    uint64_t a = hash_slice(UINT64_C(0x243f6a8885a308d3), patient.ptr, patient.len);
    uint64_t b = hash_slice(UINT64_C(0x13198a2e03707344), event_type.ptr, event_type.len);
    uint64_t h = a ^ (b * UINT64_C(0xc2b2ae3d27d4eb4f));
    h ^= h >> 32;
    h *= UINT64_C(0xff51afd7ed558ccd);
    return h ^ (h >> 33);
}

static inline int
slice_eq(Slice a, Slice b)
{
    if (a.len != b.len)
        return 0;
    /* Keys are mostly short: compare them inline with overlapping loads, like hash_slice
     * reads them; a memcmp call costs more than the comparison itself. */
    size_t n = a.len;
    if (n > 16)
        return memcmp(a.ptr, b.ptr, n) == 0;
    if (n >= 8)
        return load64(a.ptr) == load64(b.ptr) && load64(a.ptr + n - 8) == load64(b.ptr + n - 8);
    if (n >= 4)
        return load32(a.ptr) == load32(b.ptr) && load32(a.ptr + n - 4) == load32(b.ptr + n - 4);
    for (size_t i = 0; i < n; i++)
        if (a.ptr[i] != b.ptr[i])
            return 0;
    return 1;
}

/* ---- the hash table --------------------------------------------------------------------- */

static int
table_init(Table *t)
{
    t->size = 0;
    t->capacity = 16;
    t->mask = 31;
    t->entries = PyMem_RawMalloc(t->capacity * sizeof(Entry));
    t->slots = PyMem_RawCalloc(t->mask + 1, sizeof(Slot));
    return t->entries && t->slots ? 0 : -1;
}

static void
table_free(Table *t)
{
    PyMem_RawFree(t->entries);
    PyMem_RawFree(t->slots);
}

/* Doubles the index and the entry array; -1 (table unchanged) if memory runs out. */
static int
table_grow(Table *t)
{
    size_t slot_count = t->mask + 1;
    if (slot_count > SIZE_MAX / 2 / sizeof(Slot) || t->capacity > SIZE_MAX / 2 / sizeof(Entry))
        return -1;
    Slot *slots = PyMem_RawCalloc(slot_count * 2, sizeof(Slot));
    if (slots == NULL)
        return -1;
    Entry *entries = PyMem_RawRealloc(t->entries, t->capacity * 2 * sizeof(Entry));
    if (entries == NULL) {
        PyMem_RawFree(slots);
        return -1;
    }
    size_t mask = slot_count * 2 - 1;
    for (size_t i = 0; i < slot_count; i++) {
        if (t->slots[i].entry) {
            size_t j = (size_t)t->slots[i].hash & mask;
            while (slots[j].entry)
                j = (j + 1) & mask;
            slots[j] = t->slots[i];
        }
    }
    PyMem_RawFree(t->slots);
    t->slots = slots;
    t->mask = mask;
    t->entries = entries;
    t->capacity *= 2;
    return 0;
}

/* Counts one occurrence of the pair; -1 if memory runs out. */
static inline int
table_add(Table *t, Slice patient, Slice event_type)
{
    uint64_t h = hash_key(patient, event_type);
    size_t i = (size_t)h & t->mask;
    for (;;) {
        Slot *slot = &t->slots[i];
        if (slot->entry == 0)
            break;
        if (slot->hash == h) {
            Entry *e = &t->entries[slot->entry - 1];
            if (slice_eq(e->patient, patient) && slice_eq(e->event_type, event_type)) {
                e->count++;
                return 0;
            }
        }
        i = (i + 1) & t->mask;
    }
    /* A new key. The index stays at most half full, and the entry array (half the slot count)
     * has room as long as it does, so both grow together. */
    if (t->size >= t->capacity || (t->size + 1) * 2 > t->mask + 1) {
        if (table_grow(t) < 0)
            return -1;
        i = (size_t)h & t->mask;
        while (t->slots[i].entry)
            i = (i + 1) & t->mask;
    }
    Entry *e = &t->entries[t->size++];
    e->patient = patient;
    e->event_type = event_type;
    e->count = 1;
    t->slots[i].hash = h;
    t->slots[i].entry = t->size;
    return 0;
}

/* ---- the scan --------------------------------------------------------------------------- */

#ifndef KERNEL_SSE2
#define BYTES(c) (UINT64_C(0x0101010101010101) * (unsigned char)(c))

/* 8 bytes with p[0] as the lowest, whatever the machine's byte order. */
static inline uint64_t
load_le64(const char *p)
{
    static const union {
        uint16_t word;
        unsigned char first;
    } order = {1};
    uint64_t w = load64(p);
    if (!order.first) { /* big-endian: swap (compilers fold the test and emit one bswap) */
        w = (w & UINT64_C(0x00000000ffffffff)) << 32 | w >> 32;
        w = (w & UINT64_C(0x0000ffff0000ffff)) << 16 | (w >> 16 & UINT64_C(0x0000ffff0000ffff));
        w = (w & UINT64_C(0x00ff00ff00ff00ff)) << 8 | (w >> 8 & UINT64_C(0x00ff00ff00ff00ff));
    }
    return w;
}

/* The top bit of each byte of the result is set exactly where that byte of w is zero (no carry
 * crosses a byte: each sum is at most 0x7f + 0x7f). */
static inline uint64_t
zero_bytes(uint64_t w)
{
    const uint64_t low7 = UINT64_C(0x7f7f7f7f7f7f7f7f);
    return ~(((w & low7) + low7) | w | low7);
}

/* Bit i of the result is the top bit of byte i of z (whose other bits are 0): the multiply
 * moves byte i's flag to bit 56 + i, and no other partial product reaches bits 56 to 63. */
static inline uint64_t
gather_flags(uint64_t z)
{
    return ((z >> 7) * UINT64_C(0x0102040810204080)) >> 56;
}
#endif

/* Bit i of the result is set when p[i] (of 64 bytes) is a comma or a newline; bit i of *special
 * when it is a quote or a carriage return. Finding those in the same pass as the separators,
 * rather than with a memchr over the block first, saves reading the block twice more. */
static inline uint64_t
classify64(const char *p, uint64_t *special)
{
#ifdef KERNEL_SSE2
    const __m128i comma = _mm_set1_epi8(','), newline = _mm_set1_epi8('\n');
    const __m128i quote = _mm_set1_epi8('"'), cr = _mm_set1_epi8('\r');
    uint64_t m = 0, q = 0;
    for (int i = 0; i < 4; i++) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * i));
        __m128i sep = _mm_or_si128(_mm_cmpeq_epi8(v, comma), _mm_cmpeq_epi8(v, newline));
        __m128i odd = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, cr));
        m |= (uint64_t)(unsigned)_mm_movemask_epi8(sep) << (16 * i);
        q |= (uint64_t)(unsigned)_mm_movemask_epi8(odd) << (16 * i);
    }
#else
    /* SWAR, 8 bytes at a time: the top bit of each byte flags a match, and one multiply gathers
     * the 8 flags into 8 adjacent bits. */
    uint64_t m = 0, q = 0;
    for (unsigned i = 0; i < 8; i++) {
        uint64_t w = load_le64(p + 8 * i);
        m |= gather_flags(zero_bytes(w ^ BYTES(',')) | zero_bytes(w ^ BYTES('\n'))) << (8 * i);
        q |= gather_flags(zero_bytes(w ^ BYTES('"')) | zero_bytes(w ^ BYTES('\r'))) << (8 * i);
    }
#endif
    *special = q;
    return m;
}

static int
add_example(Scan *s, const char *ptr, size_t len)
{
    if (s->example_count == s->example_capacity) {
        size_t capacity = s->example_capacity ? s->example_capacity * 2 : 8;
        if (capacity > s->max_examples)
            capacity = s->max_examples;
        if (capacity > SIZE_MAX / sizeof(Slice))
            return -1;
        Slice *examples = PyMem_RawRealloc(s->examples, capacity * sizeof(Slice));
        if (examples == NULL)
            return -1;
        s->examples = examples;
        s->example_capacity = capacity;
    }
    s->examples[s->example_count].ptr = ptr;
    s->examples[s->example_count].len = len;
    s->example_count++;
    return 0;
}

/* Counts one line, [start, end) without its "\n" (its "\r", if any, still there). */
static inline int
end_line(Scan *s, const char *start, const char *end, int complete, Slice patient,
         Slice event_type)
{
    if (end > start && end[-1] == '\r')
        end--;
    if (end == start) {
        s->blank++;
        return 0;
    }
    s->rows++;
    if (complete && patient.len && event_type.len)
        return table_add(&s->table, patient, event_type);
    s->malformed++;
    if (s->example_count < s->max_examples)
        return add_example(s, start, (size_t)(end - start));
    return 0;
}

enum { SCAN_OK = 0, SCAN_NO_MEMORY = -1, SCAN_DECLINED = 1 };

/* The scan proper, without the GIL: SCAN_OK, SCAN_NO_MEMORY, or SCAN_DECLINED for a quote or a
 * carriage return that does not end a line (as soon as it is seen: the counts so far are
 * dropped). */
static int
scan_block(Scan *s, const char *block, size_t n, size_t field_count, size_t patient_index,
           size_t event_type_index)
{
    const size_t last_field = field_count - 1;
    const char *line = block; /* start of the current line */
    const char *field = block; /* start of the current field */
    size_t index = 0;         /* of the current field in its line */
    Slice patient = {NULL, 0}, event_type = {NULL, 0};

    for (size_t base = 0; base < n; base += 64) {
        uint64_t m, special;
        if (n - base >= 64) {
            m = classify64(block + base, &special);
        }
        else {
            /* The last bytes go through a zero-padded copy: no load past the buffer. */
            char tail[64] = {0};
            memcpy(tail, block + base, n - base);
            m = classify64(tail, &special);
        }
        while (special) {
            /* Rare but for CRLF lines: a CR is fine only before "\n" or as the block's end. */
            size_t at = base + lowest_bit(special);
            special &= special - 1;
            if (block[at] == '"' || (at + 1 < n && block[at + 1] != '\n'))
                return SCAN_DECLINED;
        }
        while (m) {
            const char *p = block + base + lowest_bit(m);
            m &= m - 1;
            /* The field [field, p) ends here. A counted field that ends its line loses the
             * line's CR, as end_line strips it from the line (the only place a CR can be). */
            if (index == patient_index || index == event_type_index) {
                const char *end = p;
                if (*p == '\n' && end > field && end[-1] == '\r')
                    end--;
                Slice value = {field, (size_t)(end - field)};
                if (index == patient_index)
                    patient = value;
                else
                    event_type = value;
            }
            if (*p == ',') {
                index++;
            }
            else {
                /* Both indexes are below field_count, so a line of exactly field_count fields
                 * has set patient and event_type on this very line. */
                if (end_line(s, line, p, index == last_field, patient, event_type) < 0)
                    return SCAN_NO_MEMORY;
                line = p + 1;
                index = 0;
            }
            field = p + 1;
        }
    }
    if (line < block + n) { /* the last line lacks its "\n" */
        const char *end = block + n;
        if (index == patient_index || index == event_type_index) {
            const char *stop = end[-1] == '\r' ? end - 1 : end;
            Slice value = {field, stop > field ? (size_t)(stop - field) : 0};
            if (index == patient_index)
                patient = value;
            else
                event_type = value;
        }
        if (end_line(s, line, end, index == last_field, patient, event_type) < 0)
            return SCAN_NO_MEMORY;
    }
    return SCAN_OK;
}

/* ---- Python objects --------------------------------------------------------------------- */

static PyObject *
build_pairs(const Table *t)
{
    PyObject *pairs = PyDict_New();
    if (pairs == NULL)
        return NULL;
    for (size_t i = 0; i < t->size; i++) {
        const Entry *e = &t->entries[i];
        PyObject *key = PyTuple_New(2);
        if (key == NULL)
            goto error;
        PyObject *patient = PyBytes_FromStringAndSize(e->patient.ptr, (Py_ssize_t)e->patient.len);
        if (patient == NULL) {
            Py_DECREF(key);
            goto error;
        }
        PyTuple_SET_ITEM(key, 0, patient);
        PyObject *event_type =
            PyBytes_FromStringAndSize(e->event_type.ptr, (Py_ssize_t)e->event_type.len);
        if (event_type == NULL) {
            Py_DECREF(key);
            goto error;
        }
        PyTuple_SET_ITEM(key, 1, event_type);
        PyObject *count = PyLong_FromUnsignedLongLong(e->count);
        if (count == NULL) {
            Py_DECREF(key);
            goto error;
        }
        int failed = PyDict_SetItem(pairs, key, count);
        Py_DECREF(key);
        Py_DECREF(count);
        if (failed)
            goto error;
    }
    return pairs;
error:
    Py_DECREF(pairs);
    return NULL;
}

static PyObject *
build_result(const Scan *s)
{
    PyObject *result = PyTuple_New(5);
    if (result == NULL)
        return NULL;
    /* The tuple owns each item as soon as it is set, so one DECREF cleans up on error. */
    PyObject *item = build_pairs(&s->table);
    if (item == NULL)
        goto error;
    PyTuple_SET_ITEM(result, 0, item);
    const uint64_t counts[3] = {s->rows, s->malformed, s->blank};
    for (Py_ssize_t i = 0; i < 3; i++) {
        if ((item = PyLong_FromUnsignedLongLong(counts[i])) == NULL)
            goto error;
        PyTuple_SET_ITEM(result, i + 1, item);
    }
    if ((item = PyList_New((Py_ssize_t)s->example_count)) == NULL)
        goto error;
    PyTuple_SET_ITEM(result, 4, item);
    for (size_t i = 0; i < s->example_count; i++) {
        PyObject *line =
            PyBytes_FromStringAndSize(s->examples[i].ptr, (Py_ssize_t)s->examples[i].len);
        if (line == NULL)
            goto error;
        PyList_SET_ITEM(item, (Py_ssize_t)i, line);
    }
    return result;
error:
    Py_DECREF(result);
    return NULL;
}

PyDoc_STRVAR(count_lines_doc,
             "count_lines($module, /, block, field_count, patient_index, event_type_index,\n"
             "            max_examples)\n"
             "--\n"
             "\n"
             "Count the (patient_id, event_type) pairs of a block of whole CSV lines:\n"
             "bytes, or a memoryview of bytes (counted where it lies, without a copy).\n"
             "\n"
             "Return (pairs, rows, malformed, blank_lines, examples), or None if the block\n"
             "holds a quote or a carriage return that does not end a line. pairs maps\n"
             "(patient, event_type) bytes to counts; examples are the first max_examples\n"
             "malformed lines, without their line ending. The GIL is released while the\n"
             "block is scanned.");

static PyObject *
count_lines(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {
        "block", "field_count", "patient_index", "event_type_index", "max_examples", NULL};
    PyObject *block;
    Py_ssize_t field_count, patient_index, event_type_index, max_examples;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Onnnn:count_lines", keywords, &block,
                                     &field_count, &patient_index, &event_type_index,
                                     &max_examples))
        return NULL;
    /* The scan runs without the GIL, so the bytes must be immutable: a bytes object, or a
     * memoryview of one (a slice of a network chunk, counted where it lies; its base is
     * checked below, once the view is held). */
    if (!PyBytes_Check(block) && !PyMemoryView_Check(block)) {
        PyErr_Format(PyExc_TypeError, "block must be bytes or a memoryview of bytes, not %.100s",
                     Py_TYPE(block)->tp_name);
        return NULL;
    }
    if (field_count < 2) {
        PyErr_SetString(PyExc_ValueError, "field_count must be at least 2");
        return NULL;
    }
    if (patient_index < 0 || patient_index >= field_count || event_type_index < 0 ||
        event_type_index >= field_count) {
        PyErr_SetString(PyExc_ValueError,
                        "patient_index and event_type_index must be in range(field_count)");
        return NULL;
    }
    if (patient_index == event_type_index) {
        PyErr_SetString(PyExc_ValueError, "patient_index and event_type_index must differ");
        return NULL;
    }
    if (max_examples < 0) {
        PyErr_SetString(PyExc_ValueError, "max_examples must not be negative");
        return NULL;
    }

    /* Held until the end: a memoryview cannot be released while the scan reads it. */
    Py_buffer buffer;
    if (PyObject_GetBuffer(block, &buffer, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    /* Only a view that is held has a base for certain: a released one may point to freed
     * memory there (its bytes gone with the release), and acquiring it fails instead. */
    if (PyMemoryView_Check(block) && !(PyMemoryView_GET_BASE(block) != NULL &&
                                       PyBytes_Check(PyMemoryView_GET_BASE(block)))) {
        PyBuffer_Release(&buffer);
        PyErr_Format(PyExc_TypeError, "block must be bytes or a memoryview of bytes, not %.100s",
                     Py_TYPE(block)->tp_name);
        return NULL;
    }
    if (buffer.itemsize != 1) {
        PyBuffer_Release(&buffer);
        PyErr_SetString(PyExc_TypeError, "block must be a memoryview of bytes, format 'B'");
        return NULL;
    }
    const char *data = buffer.buf;
    size_t n = (size_t)buffer.len;
    Scan s;
    memset(&s, 0, sizeof s);
    s.max_examples = (size_t)max_examples;
    int status;

    Py_BEGIN_ALLOW_THREADS
    status = table_init(&s.table) < 0 ? SCAN_NO_MEMORY
                                      : scan_block(&s, data, n, (size_t)field_count,
                                                   (size_t)patient_index,
                                                   (size_t)event_type_index);
    Py_END_ALLOW_THREADS

    PyObject *result = NULL;
    if (status == SCAN_DECLINED)
        result = Py_NewRef(Py_None);
    else if (status == SCAN_NO_MEMORY)
        PyErr_NoMemory();
    else
        result = build_result(&s);
    table_free(&s.table);
    PyMem_RawFree(s.examples);
    PyBuffer_Release(&buffer);
    return result;
}

static PyMethodDef kernel_methods[] = {
    {"count_lines", (PyCFunction)(void (*)(void))count_lines, METH_VARARGS | METH_KEYWORDS,
     count_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "export_client._kernel",
    .m_doc = "The compiled counting kernel of export_client (optional; see _counting.py).",
    .m_size = 0,
    .m_methods = kernel_methods,
};

PyMODINIT_FUNC
PyInit__kernel(void)
{
    return PyModuleDef_Init(&kernel_module);
}
