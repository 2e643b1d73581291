# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled IdRing (see sampler/pipeline/idring.py): trace ids in preallocated C arrays.

A ring of `capacity` slots holds each id's 16 bytes and a 32-bit value in insertion order; an
open-addressing index (linear probing, at most half full, slots holding ring position + 1) finds
them. When the ring is full the oldest id is overwritten and its index slot deleted by backward
shift, so the table never needs tombstones or a rebuild, and no Python object exists per id.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

cdef enum:
    ID = 16


cdef inline uint64_t mix(const unsigned char* key) noexcept:
    """Both halves of the id mixed: some tracers zero or timestamp one half of their ids."""
    cdef uint64_t a, b
    memcpy(&a, key, 8)
    memcpy(&b, key + 8, 8)
    a ^= b * 0x9E3779B97F4A7C15ULL
    a ^= a >> 32
    a *= 0xD6E8FEB86659FD93ULL
    a ^= a >> 32
    return a


cdef class IdRing:
    cdef unsigned char* ids
    cdef uint32_t* values
    cdef uint32_t* index
    cdef Py_ssize_t cap
    cdef Py_ssize_t count
    cdef Py_ssize_t head  # the ring slot written next (the oldest one once the ring is full)
    cdef uint64_t mask

    def __cinit__(self, Py_ssize_t capacity):
        cdef uint64_t slots = 1
        self.cap = max(1, capacity)
        while slots < <uint64_t>(2 * self.cap):
            slots <<= 1
        self.mask = slots - 1
        self.ids = <unsigned char*>PyMem_Calloc(self.cap, ID)
        self.values = <uint32_t*>PyMem_Calloc(self.cap, sizeof(uint32_t))
        self.index = <uint32_t*>PyMem_Calloc(slots, sizeof(uint32_t))
        if self.ids == NULL or self.values == NULL or self.index == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.ids)
        PyMem_Free(self.values)
        PyMem_Free(self.index)

    @property
    def capacity(self):
        return self.cap

    @property
    def nbytes(self):
        """Bytes the ring holds, all of it allocated up front."""
        return self.cap * (ID + sizeof(uint32_t)) + (self.mask + 1) * sizeof(uint32_t)

    def __len__(self):
        return self.count

    cdef uint64_t find(self, const unsigned char* key) noexcept:
        """The index slot holding `key`, or the empty slot where it would go."""
        cdef uint64_t i = mix(key) & self.mask
        cdef uint32_t at
        while True:
            at = self.index[i]
            if at == 0 or memcmp(self.ids + (<Py_ssize_t>at - 1) * ID, key, ID) == 0:
                return i
            i = (i + 1) & self.mask

    cdef void delete(self, uint64_t i) noexcept:
        """Empty index slot i, shifting back later entries of its probe run that would otherwise
        become unreachable."""
        cdef uint64_t j = i, home
        cdef uint32_t at
        while True:
            j = (j + 1) & self.mask
            at = self.index[j]
            if at == 0:
                break
            home = mix(self.ids + (<Py_ssize_t>at - 1) * ID) & self.mask
            if (j > i and (home <= i or home > j)) or (j < i and home <= i and home > j):
                self.index[i] = at
                i = j
        self.index[i] = 0

    def add(self, bytes trace_id, uint32_t value):
        """Remember `trace_id` with `value` (a known id gets the new value), forgetting the oldest
        id when the ring is full."""
        if PyBytes_GET_SIZE(trace_id) != ID:
            raise ValueError("trace ids are 16 bytes")
        cdef const unsigned char* key = <const unsigned char*>PyBytes_AS_STRING(trace_id)
        cdef uint64_t i = self.find(key)
        cdef Py_ssize_t slot
        if self.index[i] != 0:
            self.values[self.index[i] - 1] = value
            return
        slot = self.head
        if self.count == self.cap:
            self.delete(self.find(self.ids + slot * ID))
            i = self.find(key)  # the shift may have moved the empty slot
        else:
            self.count += 1
        memcpy(self.ids + slot * ID, key, ID)
        self.values[slot] = value
        self.index[i] = <uint32_t>(slot + 1)
        self.head = (slot + 1) % self.cap

    def get(self, bytes trace_id):
        """The value remembered for `trace_id`, or -1."""
        if PyBytes_GET_SIZE(trace_id) != ID:
            return -1
        cdef uint32_t at = self.index[self.find(<const unsigned char*>PyBytes_AS_STRING(trace_id))]
        return -1 if at == 0 else self.values[at - 1]

    def clear(self):
        cdef Py_ssize_t i
        for i in range(self.mask + 1):
            self.index[i] = 0
        self.count = 0
        self.head = 0
