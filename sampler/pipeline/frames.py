"""Buffered spans at rest: a trace's spans packed into frames of bytes, then compressed with zstd.

Spans arrive as one bytes object each, and a trace stays "hot" that way while spans keep arriving.
Once it has been quiet a short while (`buffer.compress_after`; most traces are whole within a
second of their first span) its spans are packed into one frame and the frame is compressed off
the event loop. What the frame holds: per run of spans sharing a resource and scope, the run's
group (an index into the frame's groups) and span count, then each span as a varint length and
its bytes. Packing alone saves each span's object header and list slots; compression, with a
dictionary trained on the live stream, shrinks the rest several times. Only kept traces (and a
policy reload) ever unpack a frame: dropped traces, most of them, are freed compressed.

A dictionary is replaced now and then by one trained on recent frames; every frame keeps the codec
it was compressed with, so older frames stay readable, and a codec is freed with its last frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import zstandard

from sampler.otlp.wire import Group

ZSTD_LEVEL: Final = 1
DICT_SIZE: Final = 64 * 1024
# Frames sampled to train a dictionary: about this many bytes of them, from this many frames at most.
TRAIN_BYTES: Final = 2 * 2**20
TRAIN_FRAMES: Final = 4000
# Memory a frame holds besides its data bytes: the Frame object, the data's object header, the tuple
# of its groups (tests/test_frames.py holds this to tracemalloc).
FRAME_OVERHEAD: Final = 160
GROUP_SLOT: Final = 8


class Codec:
    """A zstd compressor and decompressor sharing one dictionary (or none). Compressing happens
    on one worker thread (zstd releases the GIL), decompressing on the event loop."""

    __slots__ = ("compressor", "decompressor", "dict_id")

    def __init__(self, dictionary: zstandard.ZstdCompressionDict | None = None) -> None:
        self.dict_id = dictionary.dict_id() if dictionary is not None else 0
        if dictionary is None:
            self.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False,
                                                       write_content_size=True)
            self.decompressor = zstandard.ZstdDecompressor()
        else:
            self.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, dict_data=dictionary, write_checksum=False,
                                                       write_content_size=True, write_dict_id=False)
            self.decompressor = zstandard.ZstdDecompressor(dict_data=dictionary)


class Frame:
    """Spans of one trace packed together: `data` is the packed bytes (codec None) or their
    compression with `codec`; `groups` the resources and scopes its runs refer to."""

    __slots__ = ("codec", "data", "groups", "size", "spans")

    def __init__(self, data: bytes, groups: tuple[Group, ...], spans: int) -> None:
        self.data = data
        self.groups = groups
        self.spans = spans
        self.size = len(data)  # packed size, compressed or not
        self.codec: Codec | None = None

    @property
    def cost(self) -> int:
        """Memory held by the frame."""
        return len(self.data) + FRAME_OVERHEAD + GROUP_SLOT * len(self.groups)


def _varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _pack_spans(spans: list[bytes], groups: list[Group]) -> tuple[bytes, tuple[Group, ...]]:
    """Interpreted: the packed bytes of these spans, and the distinct groups their runs refer to."""
    if len(groups) != len(spans):
        raise ValueError("one group per span")
    out = bytearray()
    distinct: dict[int, int] = {}
    order: list[Group] = []
    i = 0
    n = len(spans)
    while i < n:
        group = groups[i]
        j = i + 1
        while j < n and groups[j] is group:
            j += 1
        index = distinct.get(id(group))
        if index is None:
            index = distinct[id(group)] = len(order)
            order.append(group)
        _varint(out, index)
        _varint(out, j - i)
        for k in range(i, j):
            data = spans[k]
            _varint(out, len(data))
            out += data
        i = j
    return bytes(out), tuple(order)


pack_spans: Callable[[list[bytes], list[Group]], tuple[bytes, tuple[Group, ...]]]
try:
    from sampler.pipeline._pack import pack_spans
except ImportError:  # no compiled module (TAILSAMPLER_NO_COMPILE, no compiler)
    pack_spans = _pack_spans


def pack(spans: list[bytes], groups: list[Group]) -> Frame:
    """A frame of these spans (groups[i] is the resource and scope of spans[i]), in their order."""
    data, order = pack_spans(spans, groups)
    return Frame(data, order, len(spans))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def unpack(frame: Frame) -> tuple[list[bytes], list[Group]]:
    """The spans of a frame and their groups, as they were packed."""
    data = frame.data
    if frame.codec is not None:
        data = frame.codec.decompressor.decompress(data)
    spans: list[bytes] = []
    groups: list[Group] = []
    pos = 0
    end = len(data)
    while pos < end:
        index, pos = _read_varint(data, pos)
        count, pos = _read_varint(data, pos)
        group = frame.groups[index]
        for _ in range(count):
            n, pos = _read_varint(data, pos)
            spans.append(data[pos : pos + n])
            groups.append(group)
            pos += n
    return spans, groups


def compress(codec: Codec, data: bytes) -> bytes:
    """`data` compressed (one codec is used by one thread at a time: the compression thread). The
    result is copied: zstandard returns a bytes object still holding the room it allocated for the
    worst case (about the input's size), which would be kept as long as the frame."""
    out: bytes = codec.compressor.compress(data)
    return bytes(memoryview(out))


def train(samples: list[bytes]) -> zstandard.ZstdCompressionDict | None:
    """A dictionary trained on packed frames (zstd releases the GIL while training); None when the
    samples are too few or too alike for zstd to make one."""
    data: list[bytes | bytearray | memoryview] = list(samples)
    try:
        return zstandard.train_dictionary(DICT_SIZE, data, threads=1)
    except zstandard.ZstdError:
        return None


SAMPLE_EVERY: Final = 4  # one packed frame in this many is kept as a training sample
RETRAIN_AFTER: Final = 600.0  # seconds a dictionary is used before one trained on newer frames replaces it
SAMPLE_BEFORE: Final = 60.0  # ...sampling for it in this many seconds before


class Compression:
    """The codec new frames are compressed with, and the samples its successor is trained on:
    frames packed without a dictionary until enough samples arrived, then with one trained on
    them, replaced by a newer one every RETRAIN_AFTER seconds. Sampling is every SAMPLE_EVERY-th
    frame, so the same traffic trains the same dictionary."""

    def __init__(self, enabled: bool = True, dictionary: bool = True) -> None:
        self.enabled = enabled
        self.dictionary = dictionary
        self.codec: Codec | None = Codec() if enabled else None
        self.samples: list[bytes] = []
        self.sampled = 0  # bytes held as samples (bounded by TRAIN_BYTES)
        self.seen = 0
        self.trained_at: float | None = None
        self.training = False

    @property
    def nbytes(self) -> int:
        return self.sampled

    def sample(self, data: bytes, now: float) -> None:
        """Keep some packed frames to train on: until the first dictionary, and in the minute
        before it is replaced (samples held meanwhile would be memory held for nothing)."""
        if not (self.enabled and self.dictionary) or self.sampled >= TRAIN_BYTES or len(self.samples) >= TRAIN_FRAMES:
            return
        if self.trained_at is not None and now - self.trained_at < RETRAIN_AFTER - SAMPLE_BEFORE:
            return
        self.seen += 1
        if self.seen % SAMPLE_EVERY == 0:
            self.samples.append(data)
            self.sampled += len(data)

    def due(self, now: float) -> list[bytes] | None:
        """The samples to train a dictionary on now (the caller trains, off the loop, then calls
        `trained`), or None when it is not time."""
        if self.training or (self.sampled < TRAIN_BYTES and len(self.samples) < TRAIN_FRAMES):
            return None
        if self.trained_at is not None and now - self.trained_at < RETRAIN_AFTER:
            return None
        samples = self.samples
        self.samples = []
        self.sampled = 0
        self.training = True
        return samples

    def trained(self, dictionary: zstandard.ZstdCompressionDict | None, now: float) -> None:
        self.training = False
        self.trained_at = now
        if dictionary is not None:
            self.codec = Codec(dictionary)
