# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled `pack` of sampler/pipeline/frames.py: the same layout, sized first and written with one
allocation. It runs on the compression thread: the spans' addresses are gathered holding the GIL,
then copied without it (reading spans long out of the CPU caches is most of the cost), so the
event loop is not held up meanwhile. The caller keeps the lists, and so the spans, alive."""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.string cimport memcpy


cdef inline Py_ssize_t varint_size(Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t size = 1
    while n > 0x7F:
        n >>= 7
        size += 1
    return size


cdef inline Py_ssize_t put_varint(char* out, Py_ssize_t pos, Py_ssize_t n) noexcept nogil:
    while n > 0x7F:
        out[pos] = <char>((n & 0x7F) | 0x80)
        n >>= 7
        pos += 1
    out[pos] = <char>n
    return pos + 1


def pack_spans(list spans, list groups):
    """(packed bytes, the distinct groups in order of first use) of these spans; see frames.pack."""
    cdef Py_ssize_t n = PyList_GET_SIZE(spans)
    cdef Py_ssize_t i, j, k, size = 0, pos = 0, length, index, runs = 0
    cdef char* buf
    cdef PyObject* group
    cdef list order = []
    cdef dict distinct = {}
    if PyList_GET_SIZE(groups) != n:
        raise ValueError("one group per span")
    # each span's address and length, and per run its group index and its end: gathered with the GIL
    cdef const char** src = <const char**>PyMem_Malloc(max(1, n) * sizeof(char*))
    cdef Py_ssize_t* lens = <Py_ssize_t*>PyMem_Malloc(max(1, n) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* run_index = <Py_ssize_t*>PyMem_Malloc(max(1, n) * sizeof(Py_ssize_t))
    cdef Py_ssize_t* run_end = <Py_ssize_t*>PyMem_Malloc(max(1, n) * sizeof(Py_ssize_t))
    if src == NULL or lens == NULL or run_index == NULL or run_end == NULL:
        PyMem_Free(src)
        PyMem_Free(lens)
        PyMem_Free(run_index)
        PyMem_Free(run_end)
        raise MemoryError()
    try:
        i = 0
        while i < n:
            group = PyList_GET_ITEM(groups, i)
            j = i + 1
            while j < n and PyList_GET_ITEM(groups, j) == group:
                j += 1
            key = id(<object>group)
            found = distinct.get(key)
            if found is None:
                index = len(order)
                distinct[key] = index
                order.append(<object>group)
            else:
                index = found
            run_index[runs] = index
            run_end[runs] = j
            runs += 1
            size += varint_size(index) + varint_size(j - i)
            for k in range(i, j):
                data = <bytes?><object>PyList_GET_ITEM(spans, k)
                length = PyBytes_GET_SIZE(data)
                src[k] = PyBytes_AS_STRING(data)
                lens[k] = length
                size += varint_size(length) + length
            i = j
        out = PyBytes_FromStringAndSize(NULL, size)
        buf = PyBytes_AS_STRING(out)
        with nogil:
            i = 0
            for j in range(runs):
                pos = put_varint(buf, pos, run_index[j])
                pos = put_varint(buf, pos, run_end[j] - i)
                for k in range(i, run_end[j]):
                    pos = put_varint(buf, pos, lens[k])
                    memcpy(buf + pos, src[k], lens[k])
                    pos += lens[k]
                i = run_end[j]
    finally:
        PyMem_Free(src)
        PyMem_Free(lens)
        PyMem_Free(run_index)
        PyMem_Free(run_end)
    return out, tuple(order)
