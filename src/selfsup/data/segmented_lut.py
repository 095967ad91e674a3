"""Segmented Palette Color Lookup Table Data (PS3.3 C.7.9.2), expanded into the table it encodes.

Some PET, nuclear medicine and ultrasound palettes are stored as segments rather than entry by
entry: a discrete segment (opcode 0) lists its entries; a linear segment (1) draws a straight line
from the previous segment's last entry to its own end value; an indirect segment (2) copies a run
of the segments before it, found by their byte offset from the start of the data. Only 16-bit
entries are read: where they are 8-bit, how the segments are laid out in the OW words is not
settled (readers disagree), and such a palette is left unread rather than guessed.
"""
from __future__ import annotations

import numpy as np

DISCRETE, LINEAR, INDIRECT = 0, 1, 2


def expand_segments(words: np.ndarray, count: int) -> np.ndarray | None:
    """The `count` entries (N,) int64 that the segments in the 16-bit `words` encode; None where
    they do not encode `count` entries: damaged, an unknown opcode, a linear segment first, or an
    indirect segment that points elsewhere than at the start of segments that are not indirect."""
    segments = split_segments(words)
    if segments is None:
        return None
    starts = {at: k for k, (at, _, _) in enumerate(segments)}  # a segment's index by its offset in words
    table: list[int] = []
    for _, opcode, body in segments:
        copied = [(opcode, body)] if opcode != INDIRECT else referenced_segments(segments, starts, body)
        if copied is None:
            return None
        for kind, values in copied:
            if kind == LINEAR and not table:  # its line starts from the previous segment's end
                return None
            table.extend(values if kind == DISCRETE else linear_segment(table[-1], values[0], values[1]))
        if len(table) > count:  # damaged: stopped before indirect segments copy runs into GBs
            return None
    return np.array(table, np.int64) if len(table) == count else None


def split_segments(words: np.ndarray) -> list[tuple[int, int, list[int]]] | None:
    """(offset in words, opcode, the words after the opcode's) of each segment; a discrete
    segment's words are its entries, a linear segment's its length and end value, an indirect
    segment's the number of segments to copy and their byte offset (least significant word first)."""
    segments, at, values = [], 0, words.tolist()
    while at + 1 < len(values):  # a lone word left at the end: padding
        opcode, length = values[at], values[at + 1]
        size = {DISCRETE: 2 + length, LINEAR: 3, INDIRECT: 4}.get(opcode)
        if size is None or at + size > len(values):
            return None
        body = values[at + 2:at + size] if opcode == DISCRETE else values[at + 1:at + size]
        segments.append((at, opcode, body))
        at += size
    return segments


def referenced_segments(segments: list, starts: dict[int, int], body: list[int]) -> list | None:
    """The (opcode, words) of the segments an indirect segment copies; None where its byte offset
    is not that of a segment's start, or a copied segment is itself indirect (C.7.9.2.3 forbids it)."""
    number, byte_offset = body[0], body[1] | body[2] << 16
    first = starts.get(byte_offset // 2) if byte_offset % 2 == 0 else None
    copied = [(opcode, values) for _, opcode, values in segments[first:first + number]] if first is not None else []
    if len(copied) != number or any(opcode == INDIRECT for opcode, _ in copied):
        return None
    return copied


def linear_segment(start: int, length: int, end: int) -> list[int]:
    """The `length` entries of a line from `start` (the previous entry, not repeated) to `end`
    (the last), each rounded to the nearest integer, halves up: start + (end - start) k / length."""
    k = np.arange(1, length + 1, dtype=np.int64)
    # floor(start + (end - start) k / length + 1/2), in integers: exact at any length
    return ((2 * start * length + 2 * (end - start) * k + length) // (2 * length)).tolist()
