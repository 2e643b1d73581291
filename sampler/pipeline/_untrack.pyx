# cython: language_level=3
"""The compiled `untrack` (see sampler/pipeline/untrack.py): one C call instead of a ctypes call."""

cdef extern from "Python.h":
    int PyObject_IS_GC(object obj)
    void PyObject_GC_UnTrack(void* op)


def untrack(object obj):
    if PyObject_IS_GC(obj):  # only objects with a GC header have anything to untrack
        PyObject_GC_UnTrack(<void*>obj)
