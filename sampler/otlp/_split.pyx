# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled receive path: split an ExportTraceServiceRequest into per-trace chunks in one pass.

`sampler.otlp.split` loads this module when the package build compiled it (setup.py, Cython) and
otherwise runs the interpreted equivalent (`wire.walk_request`, then grouping in Python). Both
give the same chunks for the same request and refuse the same requests; the tests hold them to it
and to protobuf (upb).

Why C: per span the core needs only a byte range, the trace id and a few folded values, and upb
itself spends its time building messages nobody reads. Walking the tags with pointer arithmetic,
validating what protobuf validates (framing, wire types, UTF-8, recursion depth) and folding each
span straight into its trace's chunk costs a fraction of a full parse, and the only Python objects
made per span are its bytes and a list slot.

`split_logs` does the same for an ExportLogsServiceRequest (loaded by `sampler.otlp.logs`, whose
`_split_logs` is its interpreted equivalent): records grouped by trace id into LogChunks.
"""

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.list cimport PyList_Append
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from sampler.otlp import wire
from sampler.otlp.splice import MARK_KEYS
from sampler.otlp.split import PEER_KEYS, dim_str
from sampler.otlp.wire import Group, SpanFields, WireError

cdef enum:
    K_OTHER = 0
    K_STRING = 1
    K_MESSAGE = 2
    MAX_DEPTH = 100  # upb's default recursion limit
    NMSG = 64
    NFIELD = 32
    RAW_KEYS = 64  # wanted keys compared from C arrays (and given a last-value cache)
    RAW_SIZE = 64  # longest attribute value the last-value cache holds

# The validation schema from the installed descriptors (wire.KINDS / wire.SUBS) as C tables.
cdef unsigned char KIND[NMSG][NFIELD]
cdef int SUB[NMSG][NFIELD]
cdef int M_RESOURCE = wire.M_RESOURCE
cdef int M_ANYVALUE = wire.M_ANYVALUE
cdef int M_EVENT = wire.M_EVENT
cdef int M_LINK = wire.M_LINK
cdef int M_SCOPESPANS = wire.M_SCOPESPANS
cdef int M_LOGRECORD = wire.M_LOGRECORD
cdef int M_SCOPELOGS = wire.M_SCOPELOGS


def _load_schema():
    if len(wire.KINDS) > NMSG:
        raise ImportError("the OTLP schema has more message types than the compiled walker's tables")
    for m in range(NMSG):
        for f in range(NFIELD):
            KIND[m][f] = K_OTHER
            SUB[m][f] = -1
    for m, kinds in enumerate(wire.KINDS):
        for f, kind in kinds.items():
            if f >= NFIELD:
                raise ImportError("the OTLP schema has field numbers beyond the compiled walker's tables")
            KIND[m][f] = kind
            SUB[m][f] = wire.SUBS[m].get(f, -1)


_load_schema()


cdef inline int kind_of(int msg, uint64_t field) noexcept:
    return KIND[msg][field] if field < NFIELD else K_OTHER


cdef int fail(str message) except -1:
    raise WireError(message)


cdef Py_ssize_t varint(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, uint64_t* out) except -1:
    cdef uint64_t r = 0
    cdef int shift = 0
    cdef unsigned char c
    while True:
        if pos >= end:
            fail(f"truncated varint at byte {pos}")
        c = b[pos]
        pos += 1
        r |= (<uint64_t>(c & 0x7F)) << shift
        if c < 0x80:
            out[0] = r
            return pos
        shift += 7
        if shift >= 70:
            fail(f"varint longer than 10 bytes at byte {pos}")


cdef Py_ssize_t tag_slow(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, uint64_t* tag) except -1:
    pos = varint(b, pos, end, tag)
    if tag[0] >> 3 == 0 or tag[0] > 0xFFFFFFFF:
        fail(f"invalid field number at byte {pos}")
    return pos


cdef inline Py_ssize_t tag_of(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, uint64_t* tag) except -1:
    """The common one-byte tag inline; anything else out of line (which also raises the errors)."""
    cdef uint64_t t
    if pos < end and 8 <= b[pos] < 0x80:
        tag[0] = b[pos]
        return pos + 1
    if pos + 1 < end and b[pos] >= 0x80 and 0 < b[pos + 1] < 0x80:  # fields 16 to 2047
        tag[0] = (b[pos] & 0x7F) | (<uint64_t>b[pos + 1] << 7)
        return pos + 2
    return tag_slow(b, pos, end, tag)


cdef Py_ssize_t length_slow(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t* n) except -1:
    cdef uint64_t v
    pos = varint(b, pos, end, &v)
    if v > <uint64_t>(end - pos):
        fail(f"length {v} at byte {pos} runs past the end of its message")
    n[0] = <Py_ssize_t>v
    return pos


cdef inline Py_ssize_t length_of(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t* n) except -1:
    """The common one-byte length inline; anything else out of line."""
    cdef Py_ssize_t c
    if pos < end:
        c = b[pos]
        if c < 0x80 and c < end - pos:
            n[0] = c
            return pos + 1
    return length_slow(b, pos, end, n)


cdef str decode(const unsigned char* b, Py_ssize_t start, Py_ssize_t stop):
    try:
        return PyUnicode_DecodeUTF8(<const char*>b + start, stop - start, NULL)
    except UnicodeDecodeError as exc:
        raise WireError(f"invalid UTF-8 in a string field at byte {start + exc.start}") from None


cdef inline bint is_ascii(const unsigned char* b, Py_ssize_t start, Py_ssize_t stop) noexcept:
    """Eight bytes at a time; a tail is checked as the (overlapping) last eight bytes."""
    cdef uint64_t word
    if stop - start < 8:
        while start < stop:
            if b[start] >= 0x80:
                return False
            start += 1
        return True
    while start + 8 < stop:
        memcpy(&word, b + start, 8)
        if word & 0x8080808080808080ULL:
            return False
        start += 8
    memcpy(&word, b + stop - 8, 8)
    return not (word & 0x8080808080808080ULL)


cdef inline int check_utf8(const unsigned char* b, Py_ssize_t start, Py_ssize_t stop) except -1:
    """Validate a string nobody reads: ASCII is checked eight bytes at a time in place; anything
    else is decoded, so the verdict is Python's (and protobuf's) strict UTF-8."""
    if not is_ascii(b, start, stop):
        decode(b, start, stop)
    return 0


cdef Py_ssize_t string_field(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end) except -1:
    """Skip a string field's value (its tag just read), validating it."""
    cdef Py_ssize_t n
    pos = length_of(b, pos, end, &n)
    check_utf8(b, pos, pos + n)
    return pos + n


cdef Py_ssize_t skip(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, uint64_t tag, int depth) except -1:
    """Skip one field's value whose tag was just read (unknown fields need valid framing only)."""
    cdef int wt = tag & 7
    cdef uint64_t v
    cdef Py_ssize_t n
    if wt == 0:
        return varint(b, pos, end, &v)
    if wt == 1:
        if end - pos < 8:
            fail(f"truncated fixed64 at byte {pos}")
        return pos + 8
    if wt == 5:
        if end - pos < 4:
            fail(f"truncated fixed32 at byte {pos}")
        return pos + 4
    if wt == 2:
        pos = length_of(b, pos, end, &n)
        return pos + n
    if wt == 3:
        return skip_group(b, pos, end, tag >> 3, depth + 1)
    fail(f"invalid wire type {wt} at byte {pos}")


cdef Py_ssize_t skip_group(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, uint64_t field, int depth) except -1:
    cdef uint64_t tag
    if depth > MAX_DEPTH:
        fail("message nesting exceeds the recursion limit")
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag & 7 == 4:
            if tag >> 3 != field:
                fail(f"mismatched end-group at byte {pos}")
            return pos
        pos = skip(b, pos, end, tag, depth)
    fail("unterminated group")


cdef int check_message(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, int msg, int depth) except -1:
    """Validate a message of schema type `msg` occupying b[pos:end]."""
    cdef uint64_t tag
    cdef Py_ssize_t n
    cdef int kind
    if depth > MAX_DEPTH:
        fail("message nesting exceeds the recursion limit")
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag & 7 == 2:
            pos = length_of(b, pos, end, &n)
            kind = kind_of(msg, tag >> 3)
            if kind == K_STRING:
                check_utf8(b, pos, pos + n)
            elif kind == K_MESSAGE:
                check_message(b, pos, pos + n, SUB[msg][tag >> 3], depth + 1)
            pos += n
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, depth)
    return 0


cdef inline uint64_t fixed64(const unsigned char* b, Py_ssize_t pos) noexcept:
    cdef uint64_t v
    memcpy(&v, b + pos, 8)  # little-endian hosts only (x86-64, aarch64); setup.py builds for those
    return v


cdef object any_value(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, int depth, bint want):
    """Validate an AnyValue; when wanted, return its primitive value (None for arrays, maps, bytes)."""
    cdef object value = None
    cdef uint64_t tag, v
    cdef Py_ssize_t n
    cdef int kind
    cdef double d
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag == 0x0A:  # string_value
            pos = length_of(b, pos, end, &n)
            if want:
                value = decode(b, pos, pos + n)
            else:
                check_utf8(b, pos, pos + n)
            pos += n
        elif tag == 0x10:  # bool_value
            pos = varint(b, pos, end, &v)
            value = v != 0
        elif tag == 0x18:  # int_value
            pos = varint(b, pos, end, &v)
            value = <int64_t>v
        elif tag == 0x21:  # double_value
            if end - pos < 8:
                fail(f"truncated fixed64 at byte {pos}")
            if want:
                memcpy(&d, b + pos, 8)
                value = d
            pos += 8
        elif tag & 7 == 2:
            pos = length_of(b, pos, end, &n)
            kind = kind_of(M_ANYVALUE, tag >> 3)
            if kind == K_MESSAGE:
                check_message(b, pos, pos + n, SUB[M_ANYVALUE][tag >> 3], depth + 1)
                value = None
            elif kind == K_STRING:
                check_utf8(b, pos, pos + n)
            elif tag >> 3 == 7:
                value = None
            pos += n
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, depth)
    return value if want else None


cdef inline uint64_t head8(const unsigned char* b, Py_ssize_t n) noexcept:
    cdef uint64_t h = 0
    memcpy(&h, b, n if n < 8 else 8)
    return h


cdef object scope_header(bytes data, const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, int msg):
    """Validate a ScopeSpans or ScopeLogs (`msg`) but its items (field 2): its own fields, joined as
    its header bytes; None when it has no items."""
    cdef uint64_t tag
    cdef Py_ssize_t n, fstart
    cdef int kind
    cdef bint has_items = False
    cdef list header = []
    while pos < end:
        fstart = pos
        pos = tag_of(b, pos, end, &tag)
        if tag == 0x12:
            pos = length_of(b, pos, end, &n)
            pos += n
            has_items = True
            continue
        if tag & 7 == 2:
            pos = length_of(b, pos, end, &n)
            kind = kind_of(msg, tag >> 3)
            if kind == K_MESSAGE:
                check_message(b, pos, pos + n, SUB[msg][tag >> 3], 3)
            elif kind == K_STRING:
                check_utf8(b, pos, pos + n)
            pos += n
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, 2)
        header.append(data[fstart:pos])
    return b"".join(header) if has_items else None


cdef bytes resource_header(bytes data, const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, list scopes):
    """Validate a ResourceSpans or ResourceLogs but its scopes: its own fields, joined as its header
    bytes; the [start, stop) ranges of its scopes (field 2) are appended to `scopes`."""
    cdef uint64_t tag
    cdef Py_ssize_t n, fstart
    cdef list header = []
    while pos < end:
        fstart = pos
        pos = tag_of(b, pos, end, &tag)
        if tag == 0x12:
            pos = length_of(b, pos, end, &n)
            scopes.append(pos)
            scopes.append(pos + n)
            pos += n
            continue
        if tag == 0x0A:
            pos = length_of(b, pos, end, &n)
            check_message(b, pos, pos + n, M_RESOURCE, 2)
            pos += n
        elif tag == 0x1A:
            pos = string_field(b, pos, end)
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, 1)
        header.append(data[fstart:pos])
    return b"".join(header)


cdef class Keys:
    """The wanted attribute keys as UTF-8 bytes in C arrays, compared in place against the request."""

    cdef list names  # index -> key (str)
    cdef list encoded  # index -> key (UTF-8 bytes), kept alive for `ptrs`
    cdef const char* ptrs[RAW_KEYS]
    cdef Py_ssize_t lens[RAW_KEYS]
    cdef uint64_t heads[RAW_KEYS]  # each key's first (up to) eight bytes, zero-padded
    cdef int n  # keys compared in place; any beyond RAW_KEYS are looked up through `rest`
    cdef dict rest
    cdef uint64_t len_mask  # bit n: some wanted key is n bytes long (bit 63: 63 or more)
    cdef int mark_a, mark_b, mark_c  # the indices of the wanted keys of MARK_KEYS (-1: not wanted)
    # per key: whose value every span must give up, not just its bits (0: nobody's): bits 0-1 the
    # PEER_KEYS slot + 1 (Splitter.records), the rest the dimension's index + 1 (the tally's dims)
    cdef list roles
    cdef dict role_of  # key -> role, for the keys with one
    cdef bint has_roles

    def __init__(self, keys, bint records=False, tuple dims=()):
        self.names = sorted(keys)
        self.roles = [0] * len(self.names)
        self.role_of = {}
        for i, k in enumerate(self.names):
            role = 0
            if records and k in PEER_KEYS:
                role = PEER_KEYS.index(k) + 1
            if k in dims:
                role |= (dims.index(k) + 1) << 2
            self.roles[i] = role
            if role:
                self.role_of[k] = role
        self.has_roles = bool(self.role_of)
        marks = [i for i, k in enumerate(self.names) if k in MARK_KEYS] + [-1, -1, -1]
        self.mark_a, self.mark_b, self.mark_c = marks[0], marks[1], marks[2]
        self.encoded = [k.encode("utf-8") for k in self.names]
        self.n = min(len(self.encoded), RAW_KEYS)
        self.rest = {k: i for i, k in enumerate(self.encoded) if i >= RAW_KEYS}
        self.len_mask = 0
        for i, k in enumerate(self.encoded):
            if i < RAW_KEYS:
                self.ptrs[i] = PyBytes_AS_STRING(k)
                self.lens[i] = len(k)
                self.heads[i] = head8(<const unsigned char*>self.ptrs[i], len(k))
            self.len_mask |= (<uint64_t>1) << min(len(k), 63)


cdef inline int wanted(Keys kx, const unsigned char* b, Py_ssize_t start, Py_ssize_t stop):
    """The index of the wanted key equal to b[start:stop], or -1 (most keys are ruled out by length,
    most others by their first eight bytes)."""
    cdef Py_ssize_t n = stop - start
    cdef int i
    cdef uint64_t head
    if not (kx.len_mask >> min(n, 63)) & 1:
        return -1
    head = head8(b + start, n)
    for i in range(kx.n):
        if kx.lens[i] == n and kx.heads[i] == head and (n <= 8 or memcmp(kx.ptrs[i] + 8, b + start + 8, n - 8) == 0):
            return i
    if kx.rest:
        return kx.rest.get(PyBytes_FromStringAndSize(<const char*>b + start, n), -1)
    return -1


cdef dict _KEYS = {}


cdef Keys _keys(keys, bint records, tuple dims):
    cache_key = (keys, records, dims)
    kx = _KEYS.get(cache_key)
    if kx is None:
        if len(_KEYS) >= 64:
            _KEYS.clear()
        kx = _KEYS[cache_key] = Keys(keys, records, dims)
    return kx


cdef inline bint plain_varint(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end) noexcept:
    """Whether b[pos:end] is exactly one varint of at most nine bytes."""
    if end - pos < 1 or end - pos > 9:
        return False
    while pos < end - 1:
        if b[pos] < 0x80:
            return False
        pos += 1
    return b[pos] < 0x80


cdef int attribute(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, Keys kx, Py_ssize_t* value,
                   int depth) except -2:
    """Validate one KeyValue, all but the value of a wanted key: return that key's index, with
    value[0:2] the range of its value, for the caller to decode (or recognise); otherwise -1."""
    cdef uint64_t tag
    cdef Py_ssize_t n, stop, p, klen
    cdef Py_ssize_t kstart = -1, kstop = -1, vstart = -1, vend = -1
    cdef int ki
    cdef unsigned char vt
    # The layout every SDK writes: key, then a value holding one string, int or bool, framed with
    # one-byte lengths. Such a KeyValue needs only its strings' ASCII (or its varint) checked.
    if end - pos >= 6 and b[pos] == 0x0A:
        klen = b[pos + 1]
        p = pos + 2 + klen
        if klen < 0x80 and p + 4 <= end and b[p] == 0x12 and b[p + 1] < 0x80 and p + 2 + b[p + 1] == end:
            vt = b[p + 2]
            if (vt == 0x0A and b[p + 3] == end - p - 4) or ((vt == 0x18 or vt == 0x10) and plain_varint(b, p + 3, end)):
                if is_ascii(b, pos + 2, p) and (vt != 0x0A or is_ascii(b, p + 4, end)):
                    ki = wanted(kx, b, pos + 2, p)
                    value[0] = p + 2
                    value[1] = end
                    return ki
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag == 0x0A or tag == 0x12:
            pos = length_of(b, pos, end, &n)
            stop = pos + n
            if tag == 0x0A:
                check_utf8(b, pos, stop)
                kstart = pos
                kstop = stop
            else:
                if vstart >= 0:  # a repeated value field (protobuf merges them): the earlier one must be valid too
                    check_message(b, vstart, vend, M_ANYVALUE, depth + 1)
                vstart = pos
                vend = stop
            pos = stop
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, depth)
    if vstart < 0:
        return -1
    ki = wanted(kx, b, kstart, kstop) if kstart >= 0 else -1
    if ki < 0:
        any_value(b, vstart, vend, depth + 1, False)
    value[0] = vstart
    value[1] = vend
    return ki


cdef uint32_t status_code(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, int depth) except? 0xFFFFFFFF:
    cdef uint64_t tag, v
    cdef Py_ssize_t n
    cdef uint32_t code = 0
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag == 0x18:
            pos = varint(b, pos, end, &v)
            code = <uint32_t>(v & 0xFFFFFFFF)
        elif tag == 0x12:
            pos = string_field(b, pos, end)
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, depth)
    return code


cdef struct SpanInfo:
    Py_ssize_t trace_id  # offset of the 16 trace-id bytes
    Py_ssize_t span_id  # offset of the 8 span-id bytes
    Py_ssize_t parent  # offset of the 8 parent-span-id bytes, -1 for none
    Py_ssize_t name_start
    Py_ssize_t name_stop
    Py_ssize_t state_start
    Py_ssize_t state_stop
    bint is_root
    bint redo  # a wanted key repeated, or was seen while the span looked non-root: recompute exactly
    bint marked  # a key of MARK_KEYS with a primitive value
    uint64_t seen  # bit i: wanted key i (bit 63: 63 or more) was seen
    uint32_t kind
    uint32_t status
    uint32_t flags
    uint64_t start
    uint64_t end


RECORD_SIZE = 40  # split.RECORD.size
cdef uint32_t NO_SERIES = 0xFFFFFFFF

cdef enum:
    MEMO_NAME = 48  # longest span name the tally's memo holds
    MEMO_SLOTS = 4096  # the memo's hash slots (power of two); cleared when half of them are taken
    MEMO_ENTRIES = MEMO_SLOTS // 2
    REC_SIZE = 40  # split.RECORD.size, as a C constant


cdef struct SeriesMemo:
    uint64_t h
    PyObject* service  # held by Tally.memo_refs
    uint32_t kind
    uint32_t status
    Py_ssize_t series
    Py_ssize_t nlen
    unsigned char name[MEMO_NAME]


cdef inline uint64_t mix(uint64_t x) noexcept:
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    return x ^ (x >> 31)


cdef inline bint same_bytes(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept:
    """a[:n] == b[:n], eight bytes at a time (short names: no call to memcmp)."""
    cdef uint64_t x, y
    while n >= 8:
        memcpy(&x, a, 8)
        memcpy(&y, b, 8)
        if x != y:
            return False
        a += 8
        b += 8
        n -= 8
    while n > 0:
        if a[0] != b[0]:
            return False
        a += 1
        b += 1
        n -= 1
    return True


cdef inline uint64_t name_hash(const unsigned char* b, Py_ssize_t n, uint64_t h) noexcept:
    cdef uint64_t word
    while n >= 8:
        memcpy(&word, b, 8)
        h = mix(h ^ word)
        b += 8
        n -= 8
    word = 0
    memcpy(&word, b, n)
    return mix(h ^ word ^ (<uint64_t>n << 56))


@cython.final
cdef class Tally:
    """split.SpanTally, counting into one C array: per series its calls, its latency sum (ns) and
    its buckets. The same interface and the same counts."""

    cdef public tuple bounds_ns
    cdef public tuple dims
    cdef public Py_ssize_t max_series
    cdef public dict index
    cdef public list keys
    cdef uint64_t bounds[64]
    cdef int nbounds
    cdef Py_ssize_t stride
    cdef uint64_t* counts
    cdef Py_ssize_t capacity  # series the array has room for
    # (service, span name bytes, kind, status) -> series, for a tally without dimensions: a span
    # whose label set was seen costs a hash and a comparison of its name's bytes, no str, tuple or
    # dict lookup. The service is compared by identity (groups are interned, so their strings are
    # shared); another str of the same value only misses, and is then looked up by its key.
    # Slots hold (hash's high 32 bits << 32 | entry + 1), 0 when empty: a small array to probe,
    # and the entries dense in the order they were made, so the few hot ones share cache lines.
    cdef uint64_t* memo_slots
    cdef SeriesMemo* memo
    cdef Py_ssize_t memo_used
    cdef list memo_refs

    def __cinit__(self, bounds_ns, dims=(), max_series=10_000):
        self.counts = NULL
        self.capacity = 0
        self.memo = NULL
        self.memo_slots = NULL

    def __init__(self, bounds_ns, dims=(), max_series=10_000):
        self.bounds_ns = tuple(bounds_ns)
        if len(self.bounds_ns) > 64:
            raise ValueError("at most 64 latency buckets")
        self.dims = tuple(dims)
        self.max_series = max_series
        self.index = {}
        self.keys = [None]
        self.nbounds = len(self.bounds_ns)
        for i, bound in enumerate(self.bounds_ns):
            self.bounds[i] = bound
        self.stride = self.nbounds + 3
        self.grow(16)
        if not self.dims:
            self.memo = <SeriesMemo*>PyMem_Malloc(MEMO_ENTRIES * sizeof(SeriesMemo))
            self.memo_slots = <uint64_t*>PyMem_Malloc(MEMO_SLOTS * sizeof(uint64_t))
            if self.memo is NULL or self.memo_slots is NULL:
                raise MemoryError()
            self.memo_clear()

    def __dealloc__(self):
        PyMem_Free(self.counts)
        PyMem_Free(self.memo)
        PyMem_Free(self.memo_slots)

    cdef int memo_clear(self) except -1:
        memset(self.memo_slots, 0, MEMO_SLOTS * sizeof(uint64_t))
        self.memo_used = 0
        self.memo_refs = []
        return 0

    cdef Py_ssize_t span_series(self, object service, const unsigned char* b, Py_ssize_t start, Py_ssize_t stop,
                                uint32_t kind, uint32_t status) except -1:
        """series((service, the name b[start:stop] as str, kind, status, ())) of a tally without
        dimensions, through the memo (the name was validated as UTF-8 already)."""
        cdef Py_ssize_t n = stop - start
        cdef uint64_t h
        cdef size_t slot
        cdef SeriesMemo* m
        cdef Py_ssize_t series
        if n > MEMO_NAME:
            return self.series((service, decode(b, start, stop), kind, status, ()))
        h = name_hash(b + start, n, mix(<uint64_t><size_t><PyObject*>service ^ (<uint64_t>kind << 40)
                                        ^ (<uint64_t>status << 48)))
        slot = h & (MEMO_SLOTS - 1)
        while self.memo_slots[slot]:
            if self.memo_slots[slot] >> 32 == h >> 32:
                m = self.memo + <Py_ssize_t>(self.memo_slots[slot] & 0xFFFFFFFFULL) - 1
                if (m.h == h and m.service == <PyObject*>service and m.kind == kind and m.status == status
                        and m.nlen == n and same_bytes(m.name, b + start, n)):
                    return m.series
            slot = (slot + 1) & (MEMO_SLOTS - 1)
        series = self.series((service, decode(b, start, stop), kind, status, ()))
        if self.memo_used >= MEMO_ENTRIES:
            self.memo_clear()
            slot = h & (MEMO_SLOTS - 1)
        self.memo_slots[slot] = (h >> 32 << 32) | <uint64_t>(self.memo_used + 1)
        m = self.memo + self.memo_used
        self.memo_refs.append(service)
        m.h = h
        m.service = <PyObject*>service
        m.kind = kind
        m.status = status
        m.series = series
        m.nlen = n
        memcpy(m.name, b + start, n)
        self.memo_used += 1
        return series

    cdef int grow(self, Py_ssize_t capacity) except -1:
        cdef uint64_t* counts = <uint64_t*>PyMem_Realloc(self.counts, capacity * self.stride * sizeof(uint64_t))
        if counts is NULL:
            raise MemoryError()
        memset(counts + self.capacity * self.stride, 0, (capacity - self.capacity) * self.stride * sizeof(uint64_t))
        self.counts = counts
        self.capacity = capacity
        return 0

    cpdef Py_ssize_t series(self, key) except -1:
        cdef PyObject* found = PyDict_GetItem(self.index, key)
        cdef Py_ssize_t i
        if found is not NULL:
            return <Py_ssize_t><object>found
        i = len(self.keys)
        if i > self.max_series:
            return 0
        if i >= self.capacity:
            self.grow(2 * self.capacity)
        self.index[key] = i
        self.keys.append(key)
        return i

    cpdef add(self, Py_ssize_t series, uint64_t duration_ns):
        cdef uint64_t* row = self.counts + series * self.stride
        cdef int j = 0
        while j < self.nbounds and duration_ns > self.bounds[j]:
            j += 1
        row[0] += 1
        row[1] += duration_ns
        row[2 + j] += 1

    def snapshot(self):
        out = []
        cdef Py_ssize_t i, j
        cdef uint64_t* row
        for i in range(len(self.keys)):
            row = self.counts + i * self.stride
            if row[0]:
                out.append((self.keys[i], row[0], row[1], [row[j] for j in range(2, self.stride)]))
        return out

    @property
    def nbytes(self):
        return self.capacity * self.stride * 8 + sum(200 + len(k[1]) for k in self.keys if k is not None)


cdef class Chunk:
    """The spans of one trace in one request, and what they fold into the trace's summary."""

    cdef public bytes trace_id
    cdef public list spans
    cdef public list groups
    cdef public Py_ssize_t nbytes
    cdef public uint64_t min_start
    cdef public uint64_t max_end
    cdef public int status_mask
    cdef public object root_name
    cdef public object root_attrs
    cdef public object root_group
    cdef public bint marked
    cdef public object graph  # bytearray of split.RECORD per span, or None
    cdef public object peers  # list of PEER_KEYS' str values of the spans flagged in graph, or None
    cdef uint64_t narrow_bits
    cdef Py_ssize_t nrec  # RECORDs written in graph (its size while the request is split: room)
    cdef object wide_bits

    @property
    def bits(self):
        """The predicate bits the spans satisfied (a C integer unless an engine has 64+ predicates)."""
        return self.narrow_bits if self.wide_bits is None else self.wide_bits | self.narrow_bits


@cython.final
cdef class _Split:
    """One request's walk: the splitter's tables and caches, and the chunks made so far."""

    cdef object splitter
    cdef Keys kx
    cdef dict groups
    cdef object bits_of  # Splitter.bits_of: cached per (key, value)
    cdef object bits_keys  # Splitter.bits_keys: the keys bits_of is asked about
    cdef object whole_span_bits
    cdef list out
    cdef dict by_trace
    cdef Chunk last
    cdef Tally tally  # None: spans are not counted
    cdef bint records
    cdef tuple dims
    # the span being read: its PEER_KEYS' values (Splitter.records) and its dimensions' values
    cdef object peer0, peer1, peer2
    cdef tuple last_peer  # the last peer values appended (shared by the spans that repeat them)
    cdef list dimv
    # the span being read: its wanted attributes (kept while it may be a root) and predicate bits
    cdef object attrs
    cdef uint64_t narrow
    cdef object wide
    # per wanted key (the first RAW_KEYS): the last value's bytes and bits, so a value that recurs
    # (status 200) costs a comparison, not a decode and a cache lookup; sound because those same
    # bytes were fully validated when they were first decoded
    cdef unsigned char raw[RAW_KEYS][RAW_SIZE]
    cdef Py_ssize_t raw_len[RAW_KEYS]
    cdef uint64_t raw_bits[RAW_KEYS]
    cdef list raw_values  # and the value itself, for the keys whose values are kept (Keys.roles)

    cdef inline int add_bits(self, object bits) except -1:
        if bits:
            if self.wide is None and bits.bit_length() < 64:
                self.narrow |= <uint64_t>bits
            else:
                self.wide = (0 if self.wide is None else self.wide) | bits
        return 0

    cdef int found(self, int ki, const unsigned char* b, Py_ssize_t vstart, Py_ssize_t vend, SpanInfo* s,
                   int depth) except -1:
        """A wanted attribute of the span being read: fold its bits in, and keep its value while the
        span may be a root (or for policies that read whole spans)."""
        cdef uint64_t bit = (<uint64_t>1) << min(ki, 63)
        cdef Py_ssize_t n = vend - vstart
        cdef bint keep = s.is_root or self.whole_span_bits is not None
        cdef bint cacheable = ki < RAW_KEYS and n <= RAW_SIZE
        cdef int role = self.kx.roles[ki] if self.kx.has_roles else 0
        if s.seen & bit:
            s.redo = True
        s.seen |= bit
        if not keep and cacheable and self.raw_len[ki] == n and memcmp(self.raw[ki], b + vstart, n) == 0:
            self.narrow |= self.raw_bits[ki]  # cached values are primitive ones
            if ki == self.kx.mark_a or ki == self.kx.mark_b or ki == self.kx.mark_c:
                s.marked = True
            if role:
                self.role_value(role, self.raw_values[ki])
            return 0
        value = any_value(b, vstart, vend, depth, True)
        if value is None:  # an array, map or bytes: no predicate reads it
            return 0
        if ki == self.kx.mark_a or ki == self.kx.mark_b or ki == self.kx.mark_c:
            s.marked = True
        if role:
            self.role_value(role, value)
        key = self.kx.names[ki]
        bits = self.bits_of(key, value) if key in self.bits_keys else 0
        self.add_bits(bits)
        if cacheable and bits.bit_length() < 64:
            memcpy(self.raw[ki], b + vstart, n)
            self.raw_len[ki] = n
            self.raw_bits[ki] = <uint64_t>bits
            self.raw_values[ki] = value
        if keep:
            if self.attrs is None:
                self.attrs = {}
            self.attrs[key] = value
        return 0

    cdef int role_value(self, int role, object value) except -1:
        """Keep a span's value of a key whose values are wanted (a peer key's strings, a dimension)."""
        cdef int slot = role & 3
        if slot:
            if type(value) is not str:
                value = None
            if slot == 1:
                self.peer0 = value
            elif slot == 2:
                self.peer1 = value
            else:
                self.peer2 = value
        if role >> 2:
            if self.dimv is not None:
                self.dimv[(role >> 2) - 1] = dim_str(value)
        return 0

    cdef int read_span(self, const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, SpanInfo* s) except -1:
        """Validate one Span and fill `s`; its wanted attributes go to `found`."""
        cdef int depth = 3
        cdef int ki
        cdef Py_ssize_t value[2]
        cdef bint has_trace_id = False, has_span_id = False
        cdef uint64_t tag, v
        cdef Py_ssize_t n, stop
        s.is_root = True
        s.redo = False
        s.marked = False
        s.seen = 0
        s.name_start = s.name_stop = s.state_start = s.state_stop = 0
        s.kind = s.status = s.flags = 0
        s.start = s.end = 0
        s.span_id = 0
        s.parent = -1
        while pos < end:
            pos = tag_of(b, pos, end, &tag)
            if tag & 7 == 2:
                pos = length_of(b, pos, end, &n)
                stop = pos + n
                tag >>= 3
                if tag == 9:
                    ki = attribute(b, pos, stop, self.kx, value, depth + 1)
                    if ki >= 0:
                        self.found(ki, b, value[0], value[1], s, depth + 2)
                elif tag == 1:
                    if n != 16:
                        fail(f"span trace_id has {n} bytes, want 16")
                    s.trace_id = pos
                    has_trace_id = True
                elif tag == 2:
                    if n != 8:
                        fail(f"span span_id has {n} bytes, want 8")
                    s.span_id = pos
                    has_span_id = True
                elif tag == 4:
                    if n != 0 and n != 8:
                        fail(f"span parent_span_id has {n} bytes, want 8 or none")
                    if n == 0 and not s.is_root and s.seen:
                        s.redo = True  # attributes seen meanwhile were not kept
                    s.is_root = n == 0
                    s.parent = pos if n else -1
                elif tag == 5:
                    check_utf8(b, pos, stop)
                    s.name_start = pos
                    s.name_stop = stop
                elif tag == 3:
                    check_utf8(b, pos, stop)
                    s.state_start = pos
                    s.state_stop = stop
                elif tag == 15:
                    s.status = status_code(b, pos, stop, depth + 1)
                elif tag == 11:
                    check_message(b, pos, stop, M_EVENT, depth + 1)
                elif tag == 13:
                    check_message(b, pos, stop, M_LINK, depth + 1)
                pos = stop
            elif tag == 0x39 or tag == 0x41:  # start / end_time_unix_nano, fixed64
                if end - pos < 8:
                    fail(f"truncated fixed64 at byte {pos}")
                if tag == 0x39:
                    s.start = fixed64(b, pos)
                else:
                    s.end = fixed64(b, pos)
                pos += 8
            elif tag == 0x30:  # kind
                if pos < end and b[pos] < 0x80:
                    s.kind = b[pos]
                    pos += 1
                else:
                    pos = varint(b, pos, end, &v)
                    s.kind = <uint32_t>(v & 0xFFFFFFFF)
            elif tag == 0x85:  # flags (field 16), fixed32
                if end - pos < 4:
                    fail(f"truncated fixed32 at byte {pos}")
                memcpy(&s.flags, b + pos, 4)
                pos += 4
            elif tag & 7 == 4:
                fail(f"unexpected end-group at byte {pos}")
            else:
                pos = skip(b, pos, end, tag, depth)
        if not has_trace_id:
            fail("span has no trace_id")
        if not has_span_id:
            fail("span has no span_id")
        return 0

    cdef object group(self, bytes resource, bytes scope):
        """The shared Group of this resource and scope; only a new one has its resource attributes
        read (interpreted: once per distinct resource and scope, not per request)."""
        cdef PyObject* found = PyDict_GetItem(self.groups, (resource, scope))
        if found is not NULL:
            return <object>found
        return self.splitter.group(Group(resource, scope, wire.resource_attrs(resource, self.splitter.keys)))

    cdef int add_span(self, const unsigned char* b, Py_ssize_t start, Py_ssize_t stop, object group,
                      object group_bits, str service) except -1:
        cdef SpanInfo s
        cdef Chunk chunk
        cdef PyObject* found
        cdef uint32_t series = NO_SERIES
        cdef Py_ssize_t old
        cdef char* rec
        cdef char has_peer
        cdef tuple last
        self.attrs = None
        self.narrow = 0
        self.wide = None
        if self.records:
            self.peer0 = self.peer1 = self.peer2 = None
        if self.dims:
            self.dimv = [""] * len(self.dims)
        self.read_span(b, start, stop, &s)
        data = PyBytes_FromStringAndSize(<const char*>b + start, stop - start)
        if s.redo:  # rare: read the wanted attributes again as the interpreted walker does (last value wins)
            self.narrow = 0
            self.wide = None
            self.attrs = wire.span_fields(data, group, self.splitter.keys).attrs
            if self.attrs is not None:
                for key, value in (<dict>self.attrs).items():
                    if key in self.bits_keys:
                        self.add_bits(self.bits_of(key, value))
            if self.kx.has_roles:
                if self.records:
                    self.peer0 = self.peer1 = self.peer2 = None
                if self.dims:
                    self.dimv = [""] * len(self.dims)
                if self.attrs is not None:
                    for key, value in (<dict>self.attrs).items():
                        role = self.kx.role_of.get(key, 0)
                        if role:
                            self.role_value(role, value)
        self.add_bits(group_bits)
        if self.whole_span_bits is not None:
            self.add_bits(self.whole_span_bits(self.fields(data, b, group, &s)))
        chunk = self.last
        if chunk is None or memcmp(PyBytes_AS_STRING(chunk.trace_id), b + s.trace_id, 16) != 0:
            trace_id = PyBytes_FromStringAndSize(<const char*>b + s.trace_id, 16)
            found = PyDict_GetItem(self.by_trace, trace_id)
            if found is NULL:
                chunk = Chunk.__new__(Chunk)
                chunk.trace_id = trace_id
                chunk.spans = []
                chunk.groups = []
                chunk.nbytes = 0
                chunk.min_start = s.start
                chunk.max_end = s.end
                chunk.status_mask = 0
                chunk.marked = False
                chunk.narrow_bits = 0
                chunk.graph = bytearray() if self.records else None
                chunk.nrec = 0
                chunk.peers = None
                PyDict_SetItem(self.by_trace, trace_id, chunk)
                PyList_Append(self.out, chunk)
            else:
                chunk = <Chunk>found
            self.last = chunk
        if self.tally is not None:
            if self.dims:
                key = (service, decode(b, s.name_start, s.name_stop), s.kind, s.status, tuple(self.dimv))
                series = <uint32_t>self.tally.series(key)
            else:
                series = <uint32_t>self.tally.span_series(service, b, s.name_start, s.name_stop, s.kind, s.status)
            self.tally.add(series, s.end - s.start if s.end > s.start else 0)
        if self.records:
            has_peer = 0
            if (s.kind == 3 or s.kind == 4) and (self.peer0 is not None or self.peer1 is not None
                                                 or self.peer2 is not None):  # a client span's peer
                if chunk.peers is None:
                    chunk.peers = []
                last = self.last_peer  # the same values as the last one's (same objects): the same tuple
                if last is None or not (last[0] is self.peer0 and last[1] is self.peer1 and last[2] is self.peer2):
                    last = self.last_peer = (self.peer0, self.peer1, self.peer2)
                PyList_Append(chunk.peers, last)
                has_peer = 1
            old = chunk.nrec * REC_SIZE  # the bytearray grows by doubling; split_request trims it
            if old + REC_SIZE > PyByteArray_GET_SIZE(chunk.graph):
                PyByteArray_Resize(chunk.graph, 2 * old if old >= 8 * REC_SIZE else 8 * REC_SIZE)
            chunk.nrec += 1
            rec = PyByteArray_AS_STRING(chunk.graph) + old
            memcpy(rec, b + s.span_id, 8)
            if s.parent >= 0:
                memcpy(rec + 8, b + s.parent, 8)
            else:
                memset(rec + 8, 0, 8)
            memcpy(rec + 16, &s.start, 8)
            memcpy(rec + 24, &s.end, 8)
            rec[32] = <char>(s.kind if s.kind < 255 else 255)
            rec[33] = <char>(s.status if s.status < 255 else 255)
            rec[34] = has_peer
            rec[35] = 0
            memcpy(rec + 36, &series, 4)
        PyList_Append(chunk.spans, data)
        PyList_Append(chunk.groups, group)
        chunk.nbytes += stop - start
        if s.start < chunk.min_start:
            chunk.min_start = s.start
        if s.end > chunk.max_end:
            chunk.max_end = s.end
        chunk.status_mask |= 1 << (s.status if s.status <= 2 else 0)
        if s.marked:
            chunk.marked = True
        chunk.narrow_bits |= self.narrow
        if self.wide is not None:
            chunk.wide_bits = self.wide if chunk.wide_bits is None else chunk.wide_bits | self.wide
        if s.is_root:
            chunk.root_name = decode(b, s.name_start, s.name_stop)
            chunk.root_attrs = self.attrs if self.attrs is not None else {}
            chunk.root_group = group
        return 0

    cdef object fields(self, bytes data, const unsigned char* b, object group, SpanInfo* s):
        """A SpanFields for the policies that read whole spans (trace_state, trace_flags, ottl)."""
        span = SpanFields(data, group)
        span.trace_id = PyBytes_FromStringAndSize(<const char*>b + s.trace_id, 16)
        span.is_root = s.is_root
        span.name = decode(b, s.name_start, s.name_stop)
        span.kind = s.kind
        span.start = s.start
        span.end = s.end
        span.status = s.status
        span.flags = s.flags
        span.trace_state = decode(b, s.state_start, s.state_stop)
        span.attrs = self.attrs
        return span

    cdef int scope_spans(self, bytes data, const unsigned char* b, Py_ssize_t pos, Py_ssize_t end,
                         bytes resource) except -1:
        """Two passes: the scope's own fields (validated, kept as its header: scope_header), then
        the spans, which are added to their traces under the scope's group."""
        cdef uint64_t tag
        cdef Py_ssize_t n
        scope = scope_header(data, b, pos, end, M_SCOPESPANS)
        if scope is None:
            return 0
        group = self.group(resource, scope)
        group_bits = group.match_bits
        service = group.service
        while pos < end:
            pos = tag_of(b, pos, end, &tag)
            if tag == 0x12:
                pos = length_of(b, pos, end, &n)
                self.add_span(b, pos, pos + n, group, group_bits, service)
                pos += n
            else:
                pos = skip(b, pos, end, tag, 2)
        return 0

    cdef int resource_spans(self, bytes data, const unsigned char* b, Py_ssize_t pos, Py_ssize_t end) except -1:
        cdef Py_ssize_t i
        cdef list scopes = []
        resource = resource_header(data, b, pos, end, scopes)
        for i in range(0, len(scopes), 2):
            self.scope_spans(data, b, scopes[i], scopes[i + 1], resource)
        return 0


def split_request(bytes data, splitter, bint count=True):
    """Split an ExportTraceServiceRequest into per-trace Chunks (in order of first appearance);
    raise WireError if protobuf would refuse it. With `count`, every span is counted in the
    splitter's tally (if any)."""
    cdef _Split w = _Split.__new__(_Split)
    w.splitter = splitter
    w.tally = splitter.tally if count else None
    w.records = splitter.records
    w.dims = w.tally.dims if w.tally is not None else ()
    w.dimv = None
    w.kx = _keys(splitter.keys, w.records, w.dims)
    w.groups = splitter.groups
    w.bits_of = splitter.bits_of
    w.bits_keys = splitter.bits_keys
    w.whole_span_bits = splitter.span_bits
    w.out = []
    w.by_trace = {}
    w.last = None
    memset(w.raw_len, 0xFF, sizeof(w.raw_len))  # -1: nothing cached yet
    w.raw_values = [None] * RAW_KEYS
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, n
    cdef uint64_t tag
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag == 0x0A:
            pos = length_of(b, pos, end, &n)
            w.resource_spans(data, b, pos, pos + n)
            pos += n
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, 0)
    cdef Chunk chunk
    if w.records:
        for chunk in w.out:
            PyByteArray_Resize(chunk.graph, chunk.nrec * REC_SIZE)
    return w.out


# Logs: an ExportLogsServiceRequest split into per-trace LogChunks (sampler.otlp.logs), the same as
# logs._split_logs gives and refusing the same requests. LogChunk stays the interpreted class, and
# logs.py imports this module, so the names it needs from there are fetched on the first call.

cdef object _LogChunk = None
cdef object _GROUP_KEYS = None
cdef unsigned char ZERO_ID[16]
memset(ZERO_ID, 0, 16)


cdef int _load_logs() except -1:
    global _LogChunk, _GROUP_KEYS
    from sampler.otlp.logs import GROUP_KEYS, LogChunk
    _GROUP_KEYS = GROUP_KEYS
    _LogChunk = LogChunk
    return 0


cdef struct RecordInfo:
    Py_ssize_t trace_id  # offset of the 16 trace-id bytes; -1: none (absent, empty or all zero)
    int32_t severity
    bint marked


cdef int read_record(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, Keys kx, RecordInfo* r) except -1:
    """Validate one LogRecord and fill `r` (kx: the keys of MARK_KEYS, all of them wanted)."""
    cdef int depth = 3
    cdef int kind, ki
    cdef uint64_t tag, v
    cdef Py_ssize_t n, stop
    cdef Py_ssize_t value[2]
    r.trace_id = -1
    r.severity = 0
    r.marked = False
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag & 7 == 2:
            pos = length_of(b, pos, end, &n)
            stop = pos + n
            tag >>= 3
            if tag == 6:
                ki = attribute(b, pos, stop, kx, value, depth + 1)
                if ki >= 0 and any_value(b, value[0], value[1], depth + 2, True) is not None:
                    r.marked = True
            elif tag == 9:
                if n != 16 and n != 0:
                    fail(f"log record trace_id has {n} bytes, want 16 or none")
                r.trace_id = pos if n == 16 and memcmp(b + pos, ZERO_ID, 16) != 0 else -1
            elif tag == 10:
                if n != 8 and n != 0:
                    fail(f"log record span_id has {n} bytes, want 8 or none")
            else:
                kind = kind_of(M_LOGRECORD, tag)
                if kind == K_STRING:
                    check_utf8(b, pos, stop)
                elif kind == K_MESSAGE:
                    check_message(b, pos, stop, SUB[M_LOGRECORD][tag], depth + 1)
            pos = stop
        elif tag == 0x10:  # severity_number, an int32 enum
            if pos < end and b[pos] < 0x80:
                v = b[pos]
                pos += 1
            else:
                pos = varint(b, pos, end, &v)
            r.severity = <int32_t><uint32_t>(v & 0xFFFFFFFF)
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, depth)
    return 0


@cython.final
cdef class _LogAcc:
    """A trace's records as they are read; made into a LogChunk at the end."""

    cdef bytes trace_id
    cdef list records
    cdef list groups
    cdef Py_ssize_t nbytes
    cdef int32_t severity_max
    cdef bint marked


@cython.final
cdef class _LogSplit:
    cdef object splitter
    cdef Keys kx
    cdef list out  # the _LogAccs in order of first appearance
    cdef dict by_trace
    cdef _LogAcc last

    cdef object group(self, bytes resource, bytes scope):
        group = self.splitter.log_group(resource, scope)
        if group is None:
            group = self.splitter.add_log_group(
                Group(resource, scope, wire.resource_attrs(resource, _GROUP_KEYS), logs=True))
        return group

    cdef int add_record(self, const unsigned char* b, Py_ssize_t start, Py_ssize_t stop, object group) except -1:
        cdef RecordInfo r
        cdef _LogAcc acc
        cdef PyObject* found
        cdef Py_ssize_t idlen
        read_record(b, start, stop, self.kx, &r)
        idlen = 0 if r.trace_id < 0 else 16
        acc = self.last
        if acc is None or PyBytes_GET_SIZE(acc.trace_id) != idlen or (
                idlen and memcmp(PyBytes_AS_STRING(acc.trace_id), b + r.trace_id, 16) != 0):
            trace_id = PyBytes_FromStringAndSize(<const char*>b + r.trace_id, 16) if idlen else b""
            found = PyDict_GetItem(self.by_trace, trace_id)
            if found is NULL:
                acc = _LogAcc.__new__(_LogAcc)
                acc.trace_id = trace_id
                acc.records = []
                acc.groups = []
                acc.nbytes = 0
                acc.severity_max = 0
                acc.marked = False
                PyDict_SetItem(self.by_trace, trace_id, acc)
                PyList_Append(self.out, acc)
            else:
                acc = <_LogAcc>found
            self.last = acc
        PyList_Append(acc.records, PyBytes_FromStringAndSize(<const char*>b + start, stop - start))
        PyList_Append(acc.groups, group)
        acc.nbytes += stop - start
        if r.severity > acc.severity_max:
            acc.severity_max = r.severity
        if r.marked:
            acc.marked = True
        return 0

    cdef int scope_logs(self, bytes data, const unsigned char* b, Py_ssize_t pos, Py_ssize_t end,
                        bytes resource) except -1:
        """As scope_spans: the scope's own fields first (its header), then its records."""
        cdef uint64_t tag
        cdef Py_ssize_t n
        scope = scope_header(data, b, pos, end, M_SCOPELOGS)
        if scope is None:
            return 0
        group = self.group(resource, scope)
        while pos < end:
            pos = tag_of(b, pos, end, &tag)
            if tag == 0x12:
                pos = length_of(b, pos, end, &n)
                self.add_record(b, pos, pos + n, group)
                pos += n
            else:
                pos = skip(b, pos, end, tag, 2)
        return 0

    cdef int resource_logs(self, bytes data, const unsigned char* b, Py_ssize_t pos, Py_ssize_t end) except -1:
        cdef Py_ssize_t i
        cdef list scopes = []
        resource = resource_header(data, b, pos, end, scopes)
        for i in range(0, len(scopes), 2):
            self.scope_logs(data, b, scopes[i], scopes[i + 1], resource)
        return 0


def split_logs(bytes data, splitter):
    """Split an ExportLogsServiceRequest into per-trace LogChunks (in order of first appearance; the
    records without a trace id in the chunk whose trace_id is b""); raise WireError if protobuf
    would refuse it, or if a record's trace_id or span_id has a length OTLP forbids."""
    if _LogChunk is None:
        _load_logs()
    cdef _LogSplit w = _LogSplit.__new__(_LogSplit)
    w.splitter = splitter
    w.kx = _keys(MARK_KEYS, False, ())
    w.out = []
    w.by_trace = {}
    w.last = None
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, n
    cdef uint64_t tag
    cdef _LogAcc acc
    while pos < end:
        pos = tag_of(b, pos, end, &tag)
        if tag == 0x0A:
            pos = length_of(b, pos, end, &n)
            w.resource_logs(data, b, pos, pos + n)
            pos += n
        elif tag & 7 == 4:
            fail(f"unexpected end-group at byte {pos}")
        else:
            pos = skip(b, pos, end, tag, 0)
    chunks = []
    for acc in w.out:
        chunk = _LogChunk(acc.trace_id)
        chunk.records = acc.records
        chunk.groups = acc.groups
        chunk.nbytes = acc.nbytes
        chunk.severity_max = acc.severity_max
        chunk.marked = acc.marked
        PyList_Append(chunks, chunk)
    return chunks


# The service graph at decision time (sampler/insight/servicegraph.py owns the semantics, and its
# trace_graph is the reference this is held to): one whole trace's packed RECORDs paired in one
# typed pass, and the edge requests counted straight into C arrays (`Edges`).

cdef enum:
    C_DIRECT = 0
    C_MESSAGING = 1
    C_DATABASE = 2
    C_VIRTUAL = 3
    MEMO = 256  # edge-index memo slots (by the identity of the key's strings)


cdef struct Req:
    const unsigned char* span_id  # the client span's id; the root server span's for a request from `user`
    # borrowed, valid while the pairing's arguments are: the groups hold their services and their
    # resource attributes, the peers list the span attributes
    PyObject* client  # the client service (str), or `user`
    PyObject* server  # the server service or the peer (str)
    int conn
    bint failed
    double client_s
    double server_s
    double seconds


cdef inline uint64_t mix64(uint64_t x) noexcept:
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    return x ^ (x >> 31)


cdef inline double seconds_of(const unsigned char* rec) noexcept:
    cdef uint64_t start, end
    memcpy(&start, rec + 16, 8)
    memcpy(&end, rec + 24, 8)
    return <double>(end - start) / 1e9 if end > start else 0.0


cdef inline bint same_str(PyObject* a, PyObject* b) except -1:
    return a == b or <object>a == <object>b


cdef inline bint truthy_str(object v) noexcept:
    return v is not None and len(<str>v) > 0


@cython.final
cdef class _Pairing:
    """One trace's pairing: its requests (a C array), orphans and root; and the scratch arrays it
    was made with, kept for the next trace (an Edges pairs trace after trace with one)."""

    cdef Req* reqs
    cdef Py_ssize_t nreq
    cdef bint has_root
    cdef dict orphans  # service -> spans, None: none
    cdef list services  # each service once per run of spans with the same group (repeats possible)
    cdef Py_ssize_t cap  # span-id table slots (a power of two)
    cdef Py_ssize_t room  # spans the per-span arrays hold
    cdef uint64_t* tkeys
    cdef int32_t* thead
    cdef unsigned char* tflags  # bit 0: used, bit 1: some span has this id
    cdef int32_t* nxt
    cdef PyObject** service
    cdef PyObject** peer_of

    def __cinit__(self):
        self.reqs = NULL
        self.tkeys = NULL
        self.thead = NULL
        self.tflags = NULL
        self.nxt = NULL
        self.service = NULL
        self.peer_of = NULL
        self.cap = 0
        self.room = 0

    def __dealloc__(self):
        self.release()

    cdef void release(self) noexcept:
        PyMem_Free(self.reqs)
        PyMem_Free(self.tkeys)
        PyMem_Free(self.thead)
        PyMem_Free(self.tflags)
        PyMem_Free(self.nxt)
        PyMem_Free(self.service)
        PyMem_Free(self.peer_of)
        self.reqs = NULL
        self.tkeys = NULL
        self.thead = NULL
        self.tflags = NULL
        self.nxt = NULL
        self.service = NULL
        self.peer_of = NULL
        self.cap = 0
        self.room = 0

    cdef int reserve(self, Py_ssize_t n) except -1:
        """Room for a trace of n spans (n > 0)."""
        cdef Py_ssize_t cap = 16
        while cap < 2 * n:
            cap *= 2
        if n > self.room or cap > self.cap:
            self.release()
            self.tkeys = <uint64_t*>PyMem_Malloc(cap * sizeof(uint64_t))
            self.thead = <int32_t*>PyMem_Malloc(cap * sizeof(int32_t))
            self.tflags = <unsigned char*>PyMem_Malloc(cap)
            self.nxt = <int32_t*>PyMem_Malloc(n * sizeof(int32_t))
            self.service = <PyObject**>PyMem_Malloc(n * sizeof(PyObject*))
            self.peer_of = <PyObject**>PyMem_Malloc(n * sizeof(PyObject*))
            self.reqs = <Req*>PyMem_Malloc(n * sizeof(Req))
            if (self.tkeys is NULL or self.thead is NULL or self.tflags is NULL or self.nxt is NULL
                    or self.service is NULL or self.peer_of is NULL or self.reqs is NULL):
                self.release()
                raise MemoryError()
            self.cap = cap
            self.room = n
        return 0


cdef inline object _peer_value(tuple found, int slot, tuple resource):
    """A peer attribute of a client span: the span's, else its resource's (str only)."""
    value = found[slot] if found is not None else None
    return resource[slot] if value is None else value


cdef tuple _resource_peers(object group):
    attrs = <dict>group.attrs
    out = []
    for key in PEER_KEYS:
        attr = attrs.get(key)
        out.append(attr if type(attr) is str else None)
    return tuple(out)


cdef _Pairing pair(_Pairing p, object records, list groups, object peers, tuple labels):
    """trace_graph(span_records(...)) over the packed RECORDs, in C: see servicegraph.py. Into `p`
    (its arrays reused)."""
    cdef const unsigned char* recs = <const unsigned char*>PyByteArray_AS_STRING(records) \
        if type(records) is bytearray else <const unsigned char*>PyBytes_AS_STRING(records)
    cdef Py_ssize_t n = len(records) // REC_SIZE
    cdef Py_ssize_t i, j, cap, slot, best
    cdef uint64_t sid, pid, seed = 0x9E3779B97F4A7C15ULL
    cdef Py_ssize_t k = 0
    cdef const unsigned char* rec
    cdef const unsigned char* crec
    cdef const unsigned char* brec
    cdef unsigned char kind
    cdef Req* r
    cdef PyObject* last_group = NULL
    cdef PyObject* svc = NULL
    cdef PyObject* g
    cdef PyObject* peer_group = NULL
    cdef tuple resource = None
    cdef tuple found
    cdef uint64_t bstart, cstart
    cdef int c
    p.nreq = 0
    p.has_root = False
    p.orphans = None
    p.services = []
    if len(groups) < n:
        raise ValueError("fewer groups than records")
    if n == 0:
        return p
    p.reserve(n)
    cap = 16  # this trace's part of the table: a previous trace may have left it larger
    while cap < 2 * n:
        cap *= 2
    cdef uint64_t* tkeys = p.tkeys
    cdef int32_t* thead = p.thead
    cdef unsigned char* tflags = p.tflags
    cdef int32_t* nxt = p.nxt
    cdef PyObject** service = p.service
    cdef PyObject** peer_of = p.peer_of
    memset(tflags, 0, cap)
    memset(peer_of, 0, n * sizeof(PyObject*))
    if peers:  # the n-th RECORD flagged as having one has the n-th entry
        for i in range(n):
            if recs[i * REC_SIZE + 34] and k < len(<list>peers):
                peer_of[i] = <PyObject*>(<list>peers)[k]
                k += 1
    # pass 1: each span's service, and its id in the table
    for i in range(n):
        g = <PyObject*>groups[i]
        if g != last_group:
            last_group = g
            svc_obj = (<object>g).service
            p.services.append(svc_obj)
            svc = <PyObject*>svc_obj
        service[i] = svc
        nxt[i] = -1
        rec = recs + i * REC_SIZE
        memcpy(&sid, rec, 8)
        if sid != 0:
            slot = mix64(sid ^ seed) & (cap - 1)
            while tflags[slot] & 1 and tkeys[slot] != sid:
                slot = (slot + 1) & (cap - 1)
            if not tflags[slot] & 1:
                tkeys[slot] = sid
                thead[slot] = -1
            tflags[slot] |= 3
    # pass 2: roots, orphans, and each callee under its parent's id
    for i in range(n):
        rec = recs + i * REC_SIZE
        memcpy(&pid, rec + 8, 8)
        kind = rec[32]
        if pid == 0:
            p.has_root = True
            continue
        slot = mix64(pid ^ seed) & (cap - 1)
        while tflags[slot] & 1 and tkeys[slot] != pid:
            slot = (slot + 1) & (cap - 1)
        if not tflags[slot] & 2:
            if p.orphans is None:
                p.orphans = {}
            p.orphans[<object>service[i]] = p.orphans.get(<object>service[i], 0) + 1
        if kind == 2 or kind == 5:
            if not tflags[slot] & 1:
                tkeys[slot] = pid
                thead[slot] = -1
                tflags[slot] = 1
            nxt[i] = thead[slot]
            thead[slot] = <int32_t>i
    # pass 3: the requests
    for i in range(n):
        rec = recs + i * REC_SIZE
        kind = rec[32]
        if kind == 3 or kind == 4:
            memcpy(&sid, rec, 8)
            best = -1
            if sid != 0:
                slot = mix64(sid ^ seed) & (cap - 1)
                while tflags[slot] & 1 and tkeys[slot] != sid:
                    slot = (slot + 1) & (cap - 1)
                j = thead[slot] if tflags[slot] & 1 else -1
                while j >= 0:  # latest first: on a tie the earliest span wins, as min() picks
                    if not same_str(service[j], service[i]):
                        if best < 0:
                            best = j
                        else:
                            crec = recs + j * REC_SIZE
                            brec = recs + best * REC_SIZE
                            memcpy(&cstart, crec + 16, 8)
                            memcpy(&bstart, brec + 16, 8)
                            if cstart < bstart or (cstart == bstart and memcmp(crec, brec, 8) <= 0):
                                best = j
                    j = nxt[j]
            r = p.reqs + p.nreq
            r.span_id = rec
            r.client = service[i]
            r.client_s = seconds_of(rec)
            r.seconds = r.client_s
            found = <tuple>peer_of[i] if peer_of[i] is not NULL else None
            g = <PyObject*>groups[i]
            if g != peer_group:
                peer_group = g
                resource = _resource_peers(<object>g)
            db = _peer_value(found, 1, resource)
            if best >= 0:
                brec = recs + best * REC_SIZE
                r.server = service[best]
                if kind == 4 or brec[32] == 5:
                    r.conn = C_MESSAGING
                elif truthy_str(db):
                    r.conn = C_DATABASE
                else:
                    r.conn = C_DIRECT
                r.failed = rec[33] == 2 or brec[33] == 2
                r.server_s = seconds_of(brec)
                p.nreq += 1
                continue
            peer = _peer_value(found, 0, resource)
            if not truthy_str(peer):
                peer = db
                if not truthy_str(peer):
                    peer = _peer_value(found, 2, resource)
                    if not truthy_str(peer):
                        continue
            r.server = <PyObject*>peer
            r.failed = rec[33] == 2
            if truthy_str(db):
                r.conn = C_DATABASE
                r.server_s = r.client_s
            else:
                r.conn = C_VIRTUAL
                r.server_s = 0.0
            p.nreq += 1
        elif kind == 2 or kind == 5:
            memcpy(&pid, rec + 8, 8)
            if pid == 0:
                r = p.reqs + p.nreq
                r.span_id = rec
                r.client = <PyObject*>labels[0]
                r.server = service[i]
                r.conn = C_VIRTUAL
                r.failed = rec[33] == 2
                r.client_s = 0.0
                r.server_s = seconds_of(rec)
                r.seconds = r.server_s
                p.nreq += 1
    return p


cdef tuple req_key(Req* r, tuple labels):
    return (<object>r.client, <object>r.server, labels[1 + r.conn])


def trace_requests(records, list groups, peers, tuple labels):
    """The pairing `Edges.add_trace` counts, for tests: (requests, orphans, has_root, services), the
    requests as (key, span id, failed, client s, server s, seconds) sorted as trace_graph sorts them.
    `labels`: USER, then the connection types DIRECT, MESSAGING_SYSTEM, DATABASE, VIRTUAL_NODE."""
    cdef _Pairing p = pair(_Pairing.__new__(_Pairing), records, groups, peers, labels)
    cdef Req* r
    cdef Py_ssize_t i
    out = []
    for i in range(p.nreq):
        r = p.reqs + i
        out.append((req_key(r, labels), PyBytes_FromStringAndSize(<const char*>r.span_id, 8), r.failed,
                    r.client_s, r.server_s, r.seconds))
    out.sort(key=lambda t: (t[0], t[1]))
    return out, p.orphans or {}, p.has_root, p.services


@cython.final
cdef class Edges:
    """The edges of a ServiceGraph in C arrays: per edge (row 0: the overflow edge) its requests,
    failed requests and three histograms (client, server: `bounds`; latency: `display`), each its
    bucket counts (le, +Inf last), count, sum and max; and its exemplar. servicegraph.EdgeStats is
    the reading of one row (`row`)."""

    cdef public dict index  # (client, server, connection type) -> row
    cdef public list keys  # row -> key (None: the overflow edge)
    cdef public list exemplars  # row -> (trace id, client s, server s) or None
    cdef public Py_ssize_t max_edges
    cdef tuple labels
    cdef double b1[64]
    cdef double b2[64]
    cdef int n1, n2
    cdef Py_ssize_t stride  # uint64 per row: requests, failed, then per histogram its count and buckets
    cdef uint64_t* counts
    cdef double* sums  # 6 per row: per histogram its sum and max
    cdef uint64_t* ex_gen  # per row: the trace that last set its exemplar, and with which span id
    cdef uint64_t* ex_span
    cdef uint64_t gen
    cdef Py_ssize_t capacity
    cdef PyObject* memo_a[MEMO]
    cdef PyObject* memo_b[MEMO]
    cdef int memo_c[MEMO]
    cdef Py_ssize_t memo_row[MEMO]
    cdef list memo_refs  # keeps the memo's strings alive
    cdef _Pairing scratch  # each trace's pairing, its arrays reused

    def __cinit__(self, *args, **kwargs):
        self.counts = NULL
        self.sums = NULL
        self.ex_gen = NULL
        self.ex_span = NULL
        self.capacity = 0

    def __init__(self, bounds, display, Py_ssize_t max_edges, tuple labels):
        if len(bounds) > 63 or len(display) > 63:
            raise ValueError("at most 63 latency buckets")
        self.n1 = len(bounds)
        self.n2 = len(display)
        for i, b in enumerate(bounds):
            self.b1[i] = b
        for i, b in enumerate(display):
            self.b2[i] = b
        self.labels = labels
        self.max_edges = max_edges
        self.index = {}
        self.keys = [None]
        self.exemplars = [None]
        self.stride = 2 + 3 + 2 * (self.n1 + 1) + (self.n2 + 1)
        self.gen = 0
        memset(self.memo_a, 0, sizeof(self.memo_a))
        self.memo_refs = [None] * MEMO
        self.scratch = _Pairing.__new__(_Pairing)
        self.grow(16)

    def __dealloc__(self):
        PyMem_Free(self.counts)
        PyMem_Free(self.sums)
        PyMem_Free(self.ex_gen)
        PyMem_Free(self.ex_span)

    cdef int grow(self, Py_ssize_t capacity) except -1:
        cdef uint64_t* counts = <uint64_t*>PyMem_Realloc(self.counts, capacity * self.stride * sizeof(uint64_t))
        if counts is NULL:
            raise MemoryError()
        self.counts = counts
        cdef double* sums = <double*>PyMem_Realloc(self.sums, capacity * 6 * sizeof(double))
        if sums is NULL:
            raise MemoryError()
        self.sums = sums
        cdef uint64_t* gen = <uint64_t*>PyMem_Realloc(self.ex_gen, capacity * sizeof(uint64_t))
        if gen is NULL:
            raise MemoryError()
        self.ex_gen = gen
        cdef uint64_t* span = <uint64_t*>PyMem_Realloc(self.ex_span, capacity * sizeof(uint64_t))
        if span is NULL:
            raise MemoryError()
        self.ex_span = span
        memset(counts + self.capacity * self.stride, 0, (capacity - self.capacity) * self.stride * sizeof(uint64_t))
        memset(sums + self.capacity * 6, 0, (capacity - self.capacity) * 6 * sizeof(double))
        memset(gen + self.capacity, 0, (capacity - self.capacity) * sizeof(uint64_t))
        memset(span + self.capacity, 0, (capacity - self.capacity) * sizeof(uint64_t))
        self.capacity = capacity
        return 0

    cdef Py_ssize_t row_of(self, object key) except -1:
        cdef PyObject* found = PyDict_GetItem(self.index, key)
        cdef Py_ssize_t i
        if found is not NULL:
            return <Py_ssize_t><object>found
        i = len(self.keys)
        if i > self.max_edges:
            return 0
        if i >= self.capacity:
            self.grow(2 * self.capacity)
        self.index[key] = i
        self.keys.append(key)
        self.exemplars.append(None)
        return i

    cdef Py_ssize_t row_memo(self, Req* r) except -1:
        cdef size_t h = ((<size_t>r.client >> 4) * 31 + (<size_t>r.server >> 4) * 7 + <size_t>r.conn) & (MEMO - 1)
        cdef Py_ssize_t row
        if self.memo_a[h] == r.client and self.memo_b[h] == r.server and self.memo_c[h] == r.conn:
            return self.memo_row[h]
        row = self.row_of(req_key(r, self.labels))
        if row == 0:
            return 0  # the overflow edge: a later edge may still not fit, so never memoised
        self.memo_refs[h] = (<object>r.client, <object>r.server)
        self.memo_a[h] = r.client
        self.memo_b[h] = r.server
        self.memo_c[h] = r.conn
        self.memo_row[h] = row
        return row

    cdef inline void observe(self, uint64_t* c, double* s, const double* bounds, int n, double v) noexcept:
        cdef int j = 0, hi = n, mid
        while j < hi:  # the first bound >= v (bisect_left)
            mid = (j + hi) >> 1
            if bounds[mid] < v:
                j = mid + 1
            else:
                hi = mid
        c[0] += 1
        c[1 + j] += 1
        s[0] += v
        if v > s[1]:
            s[1] = v

    cdef int count(self, Py_ssize_t row, bint failed, double client_s, double server_s, double seconds) except -1:
        cdef uint64_t* c = self.counts + row * self.stride
        cdef double* s = self.sums + row * 6
        c[0] += 1
        c[1] += failed
        self.observe(c + 2, s, self.b1, self.n1, client_s)
        self.observe(c + 3 + self.n1 + 1, s + 2, self.b1, self.n1, server_s)
        self.observe(c + 4 + 2 * (self.n1 + 1), s + 4, self.b2, self.n2, seconds)
        return 0

    def add_request(self, key, bint failed, double client_s, double server_s, double seconds, exemplar):
        """One request on an edge (the interpreted graph's EdgeStats.add); the exemplar, if any, is
        its trace id and becomes the edge's."""
        cdef Py_ssize_t row = self.row_of(key)
        self.count(row, failed, client_s, server_s, seconds)
        if exemplar is not None:
            self.exemplars[row] = (exemplar, client_s, server_s)

    def add_trace(self, records, list groups, peers, trace_id, bint kept, set services,
                  Py_ssize_t max_services):
        """Pair one whole trace's RECORDs (with its spans' groups and its client spans' peers, as
        the summary holds them) and count its requests; a kept trace becomes the exemplar of its
        edges. Its services join `services` while it has fewer than `max_services`. Returns
        (has_root, orphans per service or None)."""
        cdef _Pairing p = pair(self.scratch, records, groups, peers, self.labels)
        for service in p.services:
            if service not in services and len(services) < max_services:
                services.add(service)
        cdef Req* r
        cdef Py_ssize_t i, row
        cdef uint64_t span
        cdef int k
        if self.scratch.room > 8192:  # no memory held back for the next trace after a huge one
            self.scratch = _Pairing.__new__(_Pairing)
        if len(self.keys) - 1 + p.nreq > self.max_edges:  # edges may overflow: in trace_graph's order
            order = [(req_key(p.reqs + i, self.labels), PyBytes_FromStringAndSize(<const char*>p.reqs[i].span_id, 8), i)
                     for i in range(p.nreq)]
            order.sort()
            for _, _, i in order:
                r = p.reqs + i
                row = self.row_of(req_key(r, self.labels))
                self.count(row, r.failed, r.client_s, r.server_s, r.seconds)
                if kept:
                    self.exemplars[row] = (trace_id, r.client_s, r.server_s)
            return p.has_root, p.orphans
        self.gen += 1
        for i in range(p.nreq):
            r = p.reqs + i
            row = self.row_memo(r)
            self.count(row, r.failed, r.client_s, r.server_s, r.seconds)
            if kept:  # the request trace_graph sorts last on its edge: the greatest span id
                span = 0
                for k in range(8):
                    span = (span << 8) | r.span_id[k]
                if self.ex_gen[row] != self.gen or span >= self.ex_span[row]:
                    self.ex_gen[row] = self.gen
                    self.ex_span[row] = span
                    self.exemplars[row] = (trace_id, r.client_s, r.server_s)
        return p.has_root, p.orphans

    def row(self, Py_ssize_t row):
        """(requests, failed, per histogram (client, server, latency) its (bucket counts, count, sum,
        max)) of one row."""
        cdef uint64_t* c = self.counts + row * self.stride
        cdef double* s = self.sums + row * 6
        cdef Py_ssize_t at = 2
        hists = []
        for h, n in ((0, self.n1), (1, self.n1), (2, self.n2)):
            hists.append(([c[at + 1 + j] for j in range(n + 1)], c[at], s[2 * h], s[2 * h + 1]))
            at += n + 2
        return c[0], c[1], hists

    @property
    def nedges(self):
        return len(self.keys) - 1


def exemplars(records, trace_id, dict exemplars):
    """SpanMetrics.kept over the packed RECORDs: each series a span was counted in (not NO_SERIES)
    takes (trace_id, the span's latency in ns) as its exemplar."""
    cdef const unsigned char* recs = <const unsigned char*>PyByteArray_AS_STRING(records) \
        if type(records) is bytearray else <const unsigned char*>PyBytes_AS_STRING(records)
    cdef Py_ssize_t i, n = len(records) // REC_SIZE
    cdef uint32_t series
    cdef uint64_t start, end
    for i in range(n):
        memcpy(&series, recs + i * REC_SIZE + 36, 4)
        if series != NO_SERIES:
            memcpy(&start, recs + i * REC_SIZE + 16, 8)
            memcpy(&end, recs + i * REC_SIZE + 24, 8)
            exemplars[series] = (trace_id, end - start if end > start else 0)


def cut_field(bytes data, unsigned int tag):
    """`data` (a serialized message) without its top-level fields of `tag` (a length-delimited
    field's tag byte), and the value of the last of them (None without one), as a protobuf parser
    reads a repeated scalar field: the last wins. The other fields stay byte for byte, in order."""
    cdef const unsigned char* b = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, start, n, kept_from = 0
    cdef uint64_t t
    current = None
    parts = None
    while pos < end:
        start = pos
        pos = tag_of(b, pos, end, &t)
        if t == tag:
            pos = length_of(b, pos, end, &n)
            current = data[pos:pos + n]
            if parts is None:
                parts = []
            parts.append(data[kept_from:start])
            pos += n
            kept_from = pos
        else:
            pos = skip(b, pos, end, t, 0)
    if parts is None:
        return data, None
    parts.append(data[kept_from:])
    return b"".join(parts), current
