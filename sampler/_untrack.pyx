# cython: language_level=3
"""The compiled `untrack` (see sampler/untrack.py): one C call instead of a ctypes call."""

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void* op)


def untrack(object obj):
    PyObject_GC_UnTrack(<void*>obj)
