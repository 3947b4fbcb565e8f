/* export_client._kernel: the compiled counting kernel.
 *
 * count_lines() counts the (patient_id, event_type) pairs of a block of whole CSV lines that
 * hold no quote, with the same result as the pure exact path, or returns None to decline the
 * block (a quote anywhere, or a carriage return anywhere but just before a line end).
 * count_stats() scans such a block the same way and also parses each row's time and value: per
 * pair a count, the sum, minimum and maximum of the values, how many fall outside the event
 * type's range, and the earliest and latest time. It declines what count_lines declines, and
 * also a block with a decimal value, an integer value of over 18 digits, or a pair whose sum
 * leaves 64 bits: the pure-Python core counts those exactly.
 *
 * The scan runs without the GIL on the bytes object's own buffer (bytes are immutable and the
 * caller holds a reference, so nobody can change or free it meanwhile): pairs go into a C hash
 * table keyed by slices of the block, malformed lines are remembered as slices, and only then,
 * with the GIL taken back, are the Python objects built. Nothing here touches Python objects or
 * the Python allocator's object heaps while the GIL is released; PyMem_Raw* is safe without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
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


/* Inlined into each of its callers, so that the scan, written once, is compiled once for
 * count_lines and once for count_stats, each without the other's work. A hint elsewhere. */
#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define ALWAYS_INLINE __forceinline
#else
#define ALWAYS_INLINE inline
#endif

/* A branch the scan takes for a few rows only (a new minute of times, say), and a function
 * that runs for those only, kept out of the scan's way. */
#if defined(__GNUC__) || defined(__clang__)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define UNLIKELY(x) (x)
#define NOINLINE __declspec(noinline)
#else
#define UNLIKELY(x) (x)
#define NOINLINE
#endif

#if LLONG_MAX != INT64_MAX
#error "the kernel converts its 64-bit counts and sums through long long"
#endif

typedef struct {
    const char *ptr;
    size_t len;
} Slice;

/* One distinct (patient_id, event_type) pair: count_lines' table entry, and the head of
 * count_stats' (StatsEntry), whose accumulators would only make count_lines' table larger. */
typedef struct {
    Slice patient;
    Slice event_type;
    uint64_t count;
} Entry;

/* A pair of count_stats: its count, and the statistics of its values and times. */
typedef struct {
    Entry head;
    int64_t sum; /* kept within +-INT64_MAX, or the block is declined */
    int64_t min;
    int64_t max;
    int64_t earliest; /* microseconds since 1970-01-01T00:00:00 UTC */
    int64_t latest;
    /* The event type's range as lo and hi - lo, so that one unsigned comparison finds a value
     * outside it. INT64_MIN and UINT64_MAX where it has none (never left); INT64_MAX and 0 for
     * an empty one, lo > hi (always left: |value| < 10**18). */
    int64_t lo;
    uint64_t span;
    uint64_t anomalies; /* values outside the range */
    int has_range;
} StatsEntry;

/* A slot of the open-addressing index: the key's hash, so that probing rarely touches an entry,
 * and the entry's position + 1 (0: empty). */
typedef struct {
    uint64_t hash;
    size_t entry;
} Slot;

typedef struct {
    /* entry_size bytes each, an Entry or a StatsEntry; dense, in order of first appearance,
     * like the dict built from them */
    char *entries;
    size_t entry_size;
    size_t size;
    size_t capacity;
    Slot *slots; /* a power of two of them, at most half full, probed linearly */
    size_t mask;
} Table;

/* count_stats' ranges: a C copy of the dict, names and bounds, made before the GIL is released
 * (another thread may change the dict meanwhile), with an index like the table's. */
typedef struct {
    Slice name; /* in memory below */
    int64_t lo;
    int64_t hi;
} Range;

typedef struct {
    Range *items;
    size_t count;
    size_t *slots; /* position + 1 (0: empty); a power of two of them, at most half full */
    size_t mask;
    void *memory; /* one allocation: the items, the slots and the names' bytes */
} Ranges;

/* Which field holds what: count_lines takes the first two, count_stats all four. */
enum { PATIENT, EVENT_TYPE, TIME, VALUE };

typedef struct {
    size_t field_count;
    size_t index[4];
} Layout;

typedef struct {
    Table table;
    uint64_t rows;
    uint64_t malformed;
    uint64_t blank;
    Slice *examples;
    size_t example_count;
    size_t example_capacity;
    size_t max_examples;
    /* count_stats only */
    const Ranges *ranges;
    uint64_t minute_key[2]; /* the first 16 bytes, to the minute, of the last valid time */
    int64_t minute_start;   /* and that minute's start in microseconds since the epoch */
} Scan;

/* What a scan, or a row of it, came to. SCAN_MALFORMED never leaves end_line: the row is
 * counted as malformed. */
enum { SCAN_OK = 0, SCAN_NO_MEMORY = -1, SCAN_DECLINED = 1, SCAN_MALFORMED = 2 };

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

/* c in every byte. */
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
table_init(Table *t, size_t entry_size)
{
    t->size = 0;
    t->entry_size = entry_size;
    t->capacity = 16;
    t->mask = 31;
    t->entries = PyMem_RawMalloc(t->capacity * entry_size);
    t->slots = PyMem_RawCalloc(t->mask + 1, sizeof(Slot));
    return t->entries && t->slots ? 0 : -1;
}

static void
table_free(Table *t)
{
    PyMem_RawFree(t->entries);
    PyMem_RawFree(t->slots);
}

static inline Entry *
table_entry(const Table *t, size_t i)
{
    return (Entry *)(void *)(t->entries + i * t->entry_size);
}

/* Doubles the index and the entry array; -1 (table unchanged) if memory runs out. */
static int
table_grow(Table *t)
{
    size_t slot_count = t->mask + 1;
    if (slot_count > SIZE_MAX / 2 / sizeof(Slot) || t->capacity > SIZE_MAX / 2 / t->entry_size)
        return -1;
    Slot *slots = PyMem_RawCalloc(slot_count * 2, sizeof(Slot));
    if (slots == NULL)
        return -1;
    char *entries = PyMem_RawRealloc(t->entries, t->capacity * 2 * t->entry_size);
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

/* A new key's entry, its slot i (empty) and hash h, its count 0; NULL if memory runs out. The
 * index stays at most half full, and the entry array (half the slot count) has room as long
 * as it does, so both grow together. Out of the scan's line: few rows add a key. */
static NOINLINE Entry *
table_insert(Table *t, size_t i, uint64_t h, Slice patient, Slice event_type)
{
    if (t->size >= t->capacity || (t->size + 1) * 2 > t->mask + 1) {
        if (table_grow(t) < 0)
            return NULL;
        i = (size_t)h & t->mask;
        while (t->slots[i].entry)
            i = (i + 1) & t->mask;
    }
    Entry *e = table_entry(t, t->size++);
    e->patient = patient;
    e->event_type = event_type;
    e->count = 0;
    t->slots[i].hash = h;
    t->slots[i].entry = t->size;
    return e;
}

/* The pair's entry (entry_size: t->entry_size, a constant once inlined), *added set if it is
 * new: then its key is set and its count 0, the rest of it is the caller's to set. NULL if
 * memory runs out. */
static ALWAYS_INLINE Entry *
table_find(Table *t, Slice patient, Slice event_type, size_t entry_size, int *added)
{
    uint64_t h = hash_key(patient, event_type);
    size_t i = (size_t)h & t->mask;
    for (;;) {
        Slot *slot = &t->slots[i];
        if (slot->entry == 0)
            break;
        if (slot->hash == h) {
            Entry *e = (Entry *)(void *)(t->entries + (slot->entry - 1) * entry_size);
            if (slice_eq(e->patient, patient) && slice_eq(e->event_type, event_type)) {
                *added = 0;
                return e;
            }
        }
        i = (i + 1) & t->mask;
    }
    *added = 1;
    return table_insert(t, i, h, patient, event_type);
}

/* ---- count_stats' ranges ---------------------------------------------------------------- */

#define RANGE_SEED UINT64_C(0x13198a2e03707344)

static void
ranges_free(Ranges *r)
{
    PyMem_RawFree(r->memory);
}

/* A bound as a 64-bit int. One beyond 64 bits is clamped: values have at most 18 digits, so
 * every one of them compares with the clamped bound as with the real one. */
static int
range_bound(PyObject *bound, int64_t *out)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(bound, &overflow);
    if (overflow)
        v = overflow < 0 ? LLONG_MIN : LLONG_MAX;
    else if (v == -1 && PyErr_Occurred())
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* The C copy of count_stats' ranges dict; -1 with an exception set. With the GIL held; r is to
 * be freed with ranges_free either way. */
static int
ranges_init(Ranges *r, PyObject *dict)
{
    memset(r, 0, sizeof *r);
    /* Check every item and add up the names' lengths, then copy them. Nothing in between runs
     * Python code, so the dict stays as it is. */
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    size_t count = 0, name_bytes = 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        if (!PyBytes_Check(key)) {
            PyErr_Format(PyExc_TypeError, "ranges keys must be bytes, not %.100s",
                         Py_TYPE(key)->tp_name);
            return -1;
        }
        if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != 2 ||
            !PyLong_Check(PyTuple_GET_ITEM(value, 0)) ||
            !PyLong_Check(PyTuple_GET_ITEM(value, 1))) {
            PyErr_Format(PyExc_TypeError,
                         "ranges values must be (lo, hi) tuples of two ints, not %.100s",
                         Py_TYPE(value)->tp_name);
            return -1;
        }
        count++;
        name_bytes += (size_t)PyBytes_GET_SIZE(key);
    }
    if (count == 0)
        return 0;
    size_t slot_count = 2;
    while (slot_count < count * 2) /* count is far below SIZE_MAX / 2: a dict holds them */
        slot_count *= 2;
    size_t items_size = count * sizeof(Range), slots_size = slot_count * sizeof(size_t);
    if (count > SIZE_MAX / sizeof(Range) || slot_count > SIZE_MAX / sizeof(size_t) ||
        items_size > SIZE_MAX - slots_size - name_bytes) {
        PyErr_NoMemory();
        return -1;
    }
    /* Items and slots are multiples of 8 bytes, so each part is aligned for its type. */
    char *memory = PyMem_RawCalloc(1, items_size + slots_size + name_bytes);
    if (memory == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    r->memory = memory;
    r->items = (Range *)(void *)memory;
    r->slots = (size_t *)(void *)(memory + items_size);
    r->mask = slot_count - 1;
    char *names = memory + items_size + slots_size;
    pos = 0;
    while (r->count < count && PyDict_Next(dict, &pos, &key, &value)) {
        Range *item = &r->items[r->count];
        size_t len = (size_t)PyBytes_GET_SIZE(key);
        memcpy(names, PyBytes_AS_STRING(key), len);
        item->name.ptr = names;
        item->name.len = len;
        names += len;
        if (range_bound(PyTuple_GET_ITEM(value, 0), &item->lo) < 0 ||
            range_bound(PyTuple_GET_ITEM(value, 1), &item->hi) < 0)
            return -1;
        size_t i = (size_t)hash_slice(RANGE_SEED, names - len, len) & r->mask;
        while (r->slots[i] && !slice_eq(r->items[r->slots[i] - 1].name, item->name))
            i = (i + 1) & r->mask;
        if (r->slots[i] == 0) /* equal names (bytes subclasses): the first one counts */
            r->slots[i] = ++r->count;
    }
    return 0;
}

static const Range *
ranges_find(const Ranges *r, Slice name)
{
    if (r->count == 0)
        return NULL;
    size_t i = (size_t)hash_slice(RANGE_SEED, name.ptr, name.len) & r->mask;
    for (; r->slots[i]; i = (i + 1) & r->mask) {
        const Range *item = &r->items[r->slots[i] - 1];
        if (slice_eq(item->name, name))
            return item;
    }
    return NULL;
}

/* ---- the scan --------------------------------------------------------------------------- */

#ifndef KERNEL_SSE2
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

/* ---- count_stats' values and times ------------------------------------------------------ */

/* An integer value: SCAN_OK with *out set, SCAN_MALFORMED unless the field is
 * [+-]?[0-9]+(\.[0-9]+)?, SCAN_DECLINED for a decimal or over 18 digits (leading zeros
 * included), which the pure core counts exactly. At most 18 digits: |value| < 10**18. */
static inline int
parse_value(Slice f, int64_t *out)
{
    const char *p = f.ptr, *end = p + f.len;
    size_t n = f.len;
    if (n - 1 < 3) {
        /* 1 to 3 digits, the common case, without a loop: the first, middle and last bytes
         * (the same ones for fewer), weighted by the length. */
        static const unsigned char weights[3][3] = {{1, 0, 0}, {10, 0, 1}, {100, 10, 1}};
        unsigned a = (unsigned)(unsigned char)p[0] - '0';
        unsigned b = (unsigned)(unsigned char)p[n / 2] - '0';
        unsigned c = (unsigned)(unsigned char)p[n - 1] - '0';
        if (a <= 9 && b <= 9 && c <= 9) {
            const unsigned char *w = weights[n - 1];
            *out = a * w[0] + b * w[1] + c * w[2];
            return SCAN_OK;
        }
    }
    int negative = 0;
    if (p < end && (*p == '+' || *p == '-')) {
        negative = *p == '-';
        p++;
    }
    const char *digits = p;
    uint64_t v = 0; /* wraps harmlessly past 19 digits: then it is not used */
    for (; p < end; p++) {
        unsigned d = (unsigned)(unsigned char)*p - '0';
        if (d > 9)
            break;
        v = v * 10 + d;
    }
    size_t count = (size_t)(p - digits);
    if (count == 0)
        return SCAN_MALFORMED;
    if (p < end) {
        if (*p != '.')
            return SCAN_MALFORMED;
        const char *fraction = ++p;
        while (p < end && (unsigned)(unsigned char)*p - '0' <= 9)
            p++;
        return p > fraction && p == end ? SCAN_DECLINED : SCAN_MALFORMED;
    }
    if (count > 18)
        return SCAN_DECLINED;
    *out = negative ? -(int64_t)v : (int64_t)v;
    return SCAN_OK;
}

/* Two ASCII digits as a number in *out; 0 unless both are digits. */
static inline int
two_digits(const char *p, unsigned *out)
{
    unsigned a = (unsigned)(unsigned char)p[0] - '0', b = (unsigned)(unsigned char)p[1] - '0';
    *out = a * 10 + b;
    return (a <= 9) & (b <= 9);
}

/* The day number (days since 1970-01-01) of "YYYY-MM-DD", its first 10 bytes; 0 unless that is
 * a date of the Gregorian calendar from year 1 to 9999. */
static int
parse_date(const char *p, int64_t *days)
{
    static const unsigned char month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned century, year, month, day;
    if (p[4] != '-' || p[7] != '-' ||
        !(two_digits(p, &century) & two_digits(p + 2, &year) & two_digits(p + 5, &month) &
          two_digits(p + 8, &day)))
        return 0;
    year += century * 100;
    if (year < 1 || month < 1 || month > 12 || day < 1)
        return 0;
    unsigned leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    if (day > month_days[month - 1] + (unsigned)(month == 2 && leap))
        return 0;
    /* Days from the civil date: count years from March, so that a leap day ends its year; a
     * 400-year era has 146097 days, and 719468 days lie from 0000-03-01 to 1970-01-01. */
    unsigned y = year - (month <= 2); /* 0 to 9999 */
    unsigned era = y / 400, year_of_era = y % 400;
    unsigned day_of_year = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
    unsigned day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    *days = (int64_t)era * 146097 + day_of_era - 719468;
    return 1;
}

/* The number that eight digits make, each turned into 0 to 9 in place, the first in the lowest
 * byte (as load_le64 reads them): pairs of digits, then fours, then the eight. No sum carries
 * into the next lane (at most 99, then 9999). */
static inline uint32_t
eight_digits(uint64_t x)
{
    x = (x * 10 + (x >> 8)) & UINT64_C(0x00ff00ff00ff00ff);
    x = (x * 100 + (x >> 16)) & UINT64_C(0x0000ffff0000ffff);
    return (uint32_t)((x & 0xffff) * 10000 + (x >> 32));
}

/* A time YYYY-MM-DDTHH:MM:SS[.f{1,6}][Z] as microseconds since 1970-01-01T00:00:00 UTC in *out;
 * 0 unless it is one (hours to 23, minutes and seconds to 59). The rows of an export come in
 * time order, so the minute of the last valid time is kept (s->minute_key), and the exports' own
 * form, 27 bytes, is read a word at a time after it. */
static ALWAYS_INLINE int
parse_time(Scan *s, Slice f, int64_t *out)
{
    const char *p = f.ptr;
    size_t n = f.len;
    if (n < 19 || n > 27)
        return 0;
    uint64_t head = load64(p), middle = load64(p + 8);
    if (UNLIKELY(head != s->minute_key[0] || middle != s->minute_key[1])) {
        int64_t days;
        unsigned hour, minute;
        if (!parse_date(p, &days) || p[10] != 'T' || p[13] != ':' ||
            !(two_digits(p + 11, &hour) & two_digits(p + 14, &minute)) || hour > 23 ||
            minute > 59)
            return 0;
        s->minute_key[0] = head;
        s->minute_key[1] = middle;
        s->minute_start = (days * 86400 + hour * 3600 + minute * 60) * 1000000;
    }
    if (n == 27) {
        /* ":SS.ffff" and ".ffffffZ", overlapping: the separators where they belong, and the
         * digits turned into the numbers 0 to 9 in place, each at most its limit (5 for the
         * first of the seconds, else 9). A byte b passes if b + 0x7f - limit stays below
         * 0x80; then no sum carries into the next byte. */
        const uint64_t seps = UINT64_C(0x00000000ff0000ff), ends = UINT64_C(0xff000000000000ff);
        const uint64_t limits = UINT64_C(0x0909090900090500); /* the first byte lowest */
        uint64_t w = load_le64(p + 16), v = load_le64(p + 19);
        uint64_t x = (w ^ BYTES('0')) & ~seps, y = (v ^ BYTES('0')) & ~ends;
        if ((w & seps) != ((uint64_t)'.' << 24 | ':') ||
            (v & ends) != ((uint64_t)'Z' << 56 | '.') ||
            ((x + (BYTES(0x7f) - limits)) | x | (y + BYTES(0x76)) | y) & BYTES(0x80))
            return 0;
        unsigned second = (unsigned)(x >> 8 & 0xff) * 10 + (unsigned)(x >> 16 & 0xff);
        *out = s->minute_start + (int64_t)second * 1000000 + eight_digits(y << 8);
        return 1;
    }
    unsigned second;
    if (p[16] != ':' || !two_digits(p + 17, &second) || second > 59)
        return 0;
    uint32_t micro = 0;
    size_t i = 19;
    if (i < n && p[i] == '.') {
        size_t digits = 0;
        for (i++; i < n && digits < 6; i++, digits++) {
            unsigned d = (unsigned)(unsigned char)p[i] - '0';
            if (d > 9)
                break;
            micro = micro * 10 + d;
        }
        if (digits == 0)
            return 0;
        for (; digits < 6; digits++)
            micro *= 10;
    }
    if (i < n && p[i] == 'Z')
        i++;
    if (i != n)
        return 0;
    *out = s->minute_start + (int64_t)second * 1000000 + micro;
    return 1;
}

/* One row of count_lines: its pair counted. */
static ALWAYS_INLINE int
add_count(Scan *s, const Slice *f)
{
    int added;
    Entry *e = table_find(&s->table, f[PATIENT], f[EVENT_TYPE], sizeof(Entry), &added);
    if (e == NULL)
        return SCAN_NO_MEMORY;
    e->count++;
    return SCAN_OK;
}

/* A new pair's statistics, from its first value and time, and its event type's range (NULL:
 * none). Out of the scan's line, where it is run for a few rows only. */
static NOINLINE void
stats_entry_init(StatsEntry *e, const Range *range, int64_t value, int64_t when)
{
    e->sum = 0;
    e->min = e->max = value;
    e->earliest = e->latest = when;
    e->has_range = range != NULL;
    if (range == NULL) {
        e->lo = INT64_MIN;
        e->span = UINT64_MAX;
    }
    else if (range->lo > range->hi) {
        e->lo = INT64_MAX;
        e->span = 0;
    }
    else {
        e->lo = range->lo;
        e->span = (uint64_t)range->hi - (uint64_t)range->lo;
    }
    e->anomalies = 0;
}

/* One row of count_stats: SCAN_MALFORMED for a bad value or time, SCAN_DECLINED as
 * parse_value says or where the pair's sum would leave +-INT64_MAX (as the pure core does). */
static ALWAYS_INLINE int
add_stats(Scan *s, const Slice *f)
{
    int64_t value, when;
    int status = parse_value(f[VALUE], &value);
    if (status != SCAN_OK)
        return status;
    if (!parse_time(s, f[TIME], &when))
        return SCAN_MALFORMED;
    int added;
    StatsEntry *e = (StatsEntry *)(void *)table_find(&s->table, f[PATIENT], f[EVENT_TYPE],
                                                     sizeof(StatsEntry), &added);
    if (e == NULL)
        return SCAN_NO_MEMORY;
    if (UNLIKELY(added))
        stats_entry_init(e, ranges_find(s->ranges, f[EVENT_TYPE]), value, when);
    /* |value| < 10**18 and |sum| <= INT64_MAX, so neither bound below overflows; and a sum
     * within +-(INT64_MAX - 10**18) stays within +-INT64_MAX whatever is added. */
    const uint64_t headroom = (uint64_t)INT64_MAX - UINT64_C(1000000000000000000);
    if (UNLIKELY((uint64_t)e->sum + headroom > 2 * headroom) &&
        (value > 0 ? e->sum > INT64_MAX - value : e->sum < -INT64_MAX - value))
        return SCAN_DECLINED;
    e->sum += value;
    e->head.count++;
    /* Mostly within what was seen: one comparison each (earliest <= latest, min <= max). */
    if ((uint64_t)value - (uint64_t)e->min > (uint64_t)e->max - (uint64_t)e->min) {
        if (value < e->min)
            e->min = value;
        else
            e->max = value;
    }
    e->anomalies += (uint64_t)value - (uint64_t)e->lo > e->span;
    if (when > e->latest)
        e->latest = when;
    else if (when < e->earliest)
        e->earliest = when;
    return SCAN_OK;
}

/* Counts one line, [start, end) without its "\n" (its "\r", if any, still there), whose taken
 * fields are f: SCAN_OK, SCAN_NO_MEMORY or SCAN_DECLINED. */
static ALWAYS_INLINE int
end_line(Scan *s, const char *start, const char *end, int complete, Slice *f,
         const size_t *want, size_t last_field, int stats)
{
    size_t cr = end > start && end[-1] == '\r';
    end -= cr;
    if (end == start) {
        s->blank++;
        return SCAN_OK;
    }
    s->rows++;
    /* count_stats: the taken field that ends a complete line (the constant indexes of the
     * unrolled loop keep the fields in registers). */
    if (stats && cr && complete)
        for (int k = 0; k < 4; k++)
            if (want[k] == last_field)
                f[k].len--;
    if (complete && f[PATIENT].len && f[EVENT_TYPE].len) {
        int status = stats ? add_stats(s, f) : add_count(s, f);
        if (status != SCAN_MALFORMED)
            return status;
    }
    s->malformed++;
    if (s->example_count < s->max_examples && add_example(s, start, (size_t)(end - start)) < 0)
        return SCAN_NO_MEMORY;
    return SCAN_OK;
}

/* The scan proper, without the GIL: SCAN_OK, SCAN_NO_MEMORY, or SCAN_DECLINED for a quote or a
 * carriage return that does not end a line, or as add_stats says (as soon as it is seen: the
 * counts so far are dropped). stats, a constant where it is inlined: count_stats' scan, which
 * takes four fields of each line instead of two. */
static ALWAYS_INLINE int
scan_block(Scan *s, const char *block, size_t n, const Layout *layout, const int stats)
{
    const size_t last_field = layout->field_count - 1;
    const char *line = block; /* start of the current line */
    const char *field = block; /* start of the current field */
    size_t index = 0;         /* of the current field in its line */
    const int taken = stats ? 4 : 2; /* fields taken from each line: PATIENT, EVENT_TYPE, ... */
    size_t want[4]; /* their indexes, as locals: stores through s cannot change them */
    for (int k = 0; k < 4; k++)
        want[k] = layout->index[k];
    Slice f[4] = {{NULL, 0}, {NULL, 0}, {NULL, 0}, {NULL, 0}};

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
            /* The field [field, p) ends here. A taken field that ends its line loses the
             * line's CR, as end_line strips it from the line (the only place a CR can be):
             * here for count_lines, in end_line for count_stats, whose four fields make the
             * test here cost more than the one there. */
            for (int k = 0; k < taken; k++) {
                if (index == want[k]) {
                    const char *end = p;
                    if (!stats && *p == '\n' && end > field && end[-1] == '\r')
                        end--;
                    f[k].ptr = field;
                    f[k].len = (size_t)(end - field);
                    break;
                }
            }
            if (*p == ',') {
                index++;
            }
            else {
                /* Every index is below field_count, so a line of exactly field_count fields
                 * has set every taken field on this very line. */
                int status =
                    end_line(s, line, p, index == last_field, f, want, last_field, stats);
                if (status != SCAN_OK)
                    return status;
                line = p + 1;
                index = 0;
            }
            field = p + 1;
        }
    }
    if (line < block + n) { /* the last line lacks its "\n" */
        const char *end = block + n;
        const char *stop = !stats && end[-1] == '\r' ? end - 1 : end;
        for (int k = 0; k < taken; k++) {
            if (index == want[k]) {
                f[k].ptr = field;
                f[k].len = stop > field ? (size_t)(stop - field) : 0;
                break;
            }
        }
        return end_line(s, line, end, index == last_field, f, want, last_field, stats);
    }
    return SCAN_OK;
}

static int
scan_counts(Scan *s, const char *block, size_t n, const Layout *layout)
{
    return scan_block(s, block, n, layout, 0);
}

static int
scan_stats(Scan *s, const char *block, size_t n, const Layout *layout)
{
    return scan_block(s, block, n, layout, 1);
}

/* ---- Python objects --------------------------------------------------------------------- */

/* A pair's value in the result: count_lines' count, or count_stats' tuple. */
typedef PyObject *(*BuildValue)(const Entry *e);

static PyObject *
count_value(const Entry *e)
{
    return PyLong_FromUnsignedLongLong(e->count);
}

static PyObject *
stats_value(const Entry *entry)
{
    const StatsEntry *e = (const StatsEntry *)(const void *)entry;
    PyObject *value = PyTuple_New(7);
    if (value == NULL)
        return NULL;
    const int64_t numbers[7] = {0, e->sum, e->min, e->max, 0, e->earliest, e->latest};
    for (Py_ssize_t i = 0; i < 7; i++) {
        PyObject *item;
        if (i == 0)
            item = PyLong_FromUnsignedLongLong(e->head.count);
        else if (i == 4)
            item = e->has_range ? PyLong_FromUnsignedLongLong(e->anomalies) : Py_NewRef(Py_None);
        else
            item = PyLong_FromLongLong(numbers[i]);
        if (item == NULL) {
            Py_DECREF(value);
            return NULL;
        }
        PyTuple_SET_ITEM(value, i, item);
    }
    return value;
}

static PyObject *
build_pairs(const Table *t, BuildValue build_value)
{
    PyObject *pairs = PyDict_New();
    if (pairs == NULL)
        return NULL;
    for (size_t i = 0; i < t->size; i++) {
        const Entry *e = table_entry(t, i);
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
        PyObject *value = build_value(e);
        if (value == NULL) {
            Py_DECREF(key);
            goto error;
        }
        int failed = PyDict_SetItem(pairs, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed)
            goto error;
    }
    return pairs;
error:
    Py_DECREF(pairs);
    return NULL;
}

static PyObject *
build_result(const Scan *s, BuildValue build_value)
{
    PyObject *result = PyTuple_New(5);
    if (result == NULL)
        return NULL;
    /* The tuple owns each item as soon as it is set, so one DECREF cleans up on error. */
    PyObject *item = build_pairs(&s->table, build_value);
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

/* ---- the functions ---------------------------------------------------------------------- */

/* The block's buffer, held until the call ends (a memoryview cannot be released while the scan
 * reads it); -1 with an exception set. */
static int
get_block(PyObject *block, Py_buffer *buffer)
{
    /* The scan runs without the GIL, so the bytes must be immutable: a bytes object, or a
     * memoryview of one (a slice of a network chunk, counted where it lies). A memoryview's
     * base is looked at only once the view is held: a released view may point to freed
     * memory there (its bytes gone with the release), and acquiring it fails instead. */
    if (!PyBytes_Check(block) && !PyMemoryView_Check(block))
        goto not_bytes;
    if (PyObject_GetBuffer(block, buffer, PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (PyMemoryView_Check(block) && !(PyMemoryView_GET_BASE(block) != NULL &&
                                       PyBytes_Check(PyMemoryView_GET_BASE(block)))) {
        PyBuffer_Release(buffer);
        goto not_bytes;
    }
    if (buffer->itemsize != 1) {
        PyBuffer_Release(buffer);
        PyErr_SetString(PyExc_TypeError, "block must be a memoryview of bytes, format 'B'");
        return -1;
    }
    return 0;
not_bytes:
    PyErr_Format(PyExc_TypeError, "block must be bytes or a memoryview of bytes, not %.100s",
                 Py_TYPE(block)->tp_name);
    return -1;
}

/* The layout from field_count and the taken fields' indexes (names: theirs, for errors), and
 * max_examples; -1 with an exception set. */
static int
get_layout(Layout *layout, Py_ssize_t field_count, const Py_ssize_t *index, int taken,
           const char *names, Py_ssize_t max_examples)
{
    if (field_count < 2) {
        PyErr_SetString(PyExc_ValueError, "field_count must be at least 2");
        return -1;
    }
    for (int k = 0; k < taken; k++) {
        if (index[k] < 0 || index[k] >= field_count) {
            PyErr_Format(PyExc_ValueError, "%s must be in range(field_count)", names);
            return -1;
        }
    }
    for (int k = 0; k < taken; k++) {
        for (int j = 0; j < k; j++) {
            if (index[j] == index[k]) {
                PyErr_Format(PyExc_ValueError, "%s must differ", names);
                return -1;
            }
        }
    }
    if (max_examples < 0) {
        PyErr_SetString(PyExc_ValueError, "max_examples must not be negative");
        return -1;
    }
    layout->field_count = (size_t)field_count;
    for (int k = 0; k < 4; k++)
        layout->index[k] = k < taken ? (size_t)index[k] : 0;
    return 0;
}

/* Scans the block without the GIL and builds the result: count_lines' (ranges NULL) or
 * count_stats'. */
static PyObject *
count(const Py_buffer *buffer, const Layout *layout, Py_ssize_t max_examples,
      const Ranges *ranges)
{
    const char *data = buffer->buf;
    size_t n = (size_t)buffer->len;
    Scan s;
    memset(&s, 0, sizeof s);
    s.max_examples = (size_t)max_examples;
    s.ranges = ranges;
    memcpy(s.minute_key, "1970-01-01T00:00", sizeof s.minute_key); /* a valid minute, the 0th */
    int status;

    Py_BEGIN_ALLOW_THREADS
    if (table_init(&s.table, ranges ? sizeof(StatsEntry) : sizeof(Entry)) < 0)
        status = SCAN_NO_MEMORY;
    else if (ranges)
        status = scan_stats(&s, data, n, layout);
    else
        status = scan_counts(&s, data, n, layout);
    Py_END_ALLOW_THREADS

    PyObject *result = NULL;
    if (status == SCAN_DECLINED)
        result = Py_NewRef(Py_None);
    else if (status == SCAN_NO_MEMORY)
        PyErr_NoMemory();
    else
        result = build_result(&s, ranges ? stats_value : count_value);
    table_free(&s.table);
    PyMem_RawFree(s.examples);
    return result;
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
    Py_ssize_t field_count, index[2], max_examples;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Onnnn:count_lines", keywords, &block,
                                     &field_count, &index[PATIENT], &index[EVENT_TYPE],
                                     &max_examples))
        return NULL;
    Layout layout;
    Py_buffer buffer;
    if (get_block(block, &buffer) < 0)
        return NULL;
    if (get_layout(&layout, field_count, index, 2, "patient_index and event_type_index",
                   max_examples) < 0) {
        PyBuffer_Release(&buffer);
        return NULL;
    }
    PyObject *result = count(&buffer, &layout, max_examples, NULL);
    PyBuffer_Release(&buffer);
    return result;
}

PyDoc_STRVAR(
    count_stats_doc,
    "count_stats($module, /, block, field_count, patient_index, event_type_index,\n"
    "            time_index, value_index, ranges, max_examples)\n"
    "--\n"
    "\n"
    "Count the (patient_id, event_type) pairs of a block of whole CSV lines, as\n"
    "count_lines does, with the statistics of each pair's values and times.\n"
    "\n"
    "Return (groups, rows, malformed, blank_lines, examples), or None to decline the\n"
    "block: where count_lines does, and for a decimal value, an integer value of\n"
    "over 18 digits, or a pair whose sum would leave 64 bits. groups maps\n"
    "(patient, event_type) bytes, in order of first appearance, to (count, sum, min,\n"
    "max, anomalies, earliest, latest): anomalies counts the values outside the event\n"
    "type's (lo, hi) in ranges (a dict of bytes to int pairs; a bound is normal),\n"
    "None where it has none; earliest and latest are microseconds since\n"
    "1970-01-01T00:00:00 UTC. A row is malformed as for count_lines, or where its\n"
    "value is not [+-]digits or its time not YYYY-MM-DDTHH:MM:SS[.f{1,6}][Z], a\n"
    "valid time from year 1 to 9999. The GIL is released while the block is scanned.");

static PyObject *
count_stats(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"block",      "field_count", "patient_index",
                               "event_type_index", "time_index",  "value_index",
                               "ranges",     "max_examples", NULL};
    PyObject *block, *range_dict;
    Py_ssize_t field_count, index[4], max_examples;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OnnnnnO!n:count_stats", keywords, &block,
                                     &field_count, &index[PATIENT], &index[EVENT_TYPE],
                                     &index[TIME], &index[VALUE], &PyDict_Type, &range_dict,
                                     &max_examples))
        return NULL;
    Layout layout;
    Py_buffer buffer;
    Ranges ranges;
    if (get_block(block, &buffer) < 0)
        return NULL;
    PyObject *result = NULL;
    if (get_layout(&layout, field_count, index, 4,
                   "patient_index, event_type_index, time_index and value_index",
                   max_examples) == 0) {
        if (ranges_init(&ranges, range_dict) == 0)
            result = count(&buffer, &layout, max_examples, &ranges);
        ranges_free(&ranges);
    }
    PyBuffer_Release(&buffer);
    return result;
}

static PyMethodDef kernel_methods[] = {
    {"count_lines", (PyCFunction)(void (*)(void))count_lines, METH_VARARGS | METH_KEYWORDS,
     count_lines_doc},
    {"count_stats", (PyCFunction)(void (*)(void))count_stats, METH_VARARGS | METH_KEYWORDS,
     count_stats_doc},
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
