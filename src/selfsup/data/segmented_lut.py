"""Segmented Palette Color Lookup Table Data (PS3.3 C.7.9.2), expanded into the table it encodes.

Some PET, nuclear medicine and ultrasound palettes are stored as segments rather than entry by
entry: a discrete segment (opcode 0) lists its entries; a linear segment (1) draws a straight line
from the previous segment's last entry to its own end value. Only these two are read, of 16-bit
entries. An indirect segment (2) copies earlier segments found by an offset that readers take in
bytes (GDCM) or in words (pydicom, vtk-dicom), and where entries are 8-bit, how the segments sit in
the OW words is not settled either: such a palette is left unread (skipped and counted) rather
than shown in colours that may be wrong.
"""
from __future__ import annotations

import numpy as np

DISCRETE, LINEAR = 0, 1


def expand_segments(words: np.ndarray, count: int) -> np.ndarray | None:
    """The `count` entries (N,) int64 that the discrete and linear segments in the 16-bit `words`
    encode; None where they do not make `count` entries, or hold a segment of another kind (an
    indirect one, an unknown opcode), or a linear segment comes first (it has no line to start from)."""
    table: list[int] = []
    at, values = 0, words.tolist()
    while at + 1 < len(values):  # a lone word left at the end: padding
        opcode, length = values[at], values[at + 1]
        if opcode == DISCRETE and at + 2 + length <= len(values):
            table.extend(values[at + 2:at + 2 + length])
            at += 2 + length
        elif opcode == LINEAR and table and at + 3 <= len(values):
            table.extend(linear_segment(table[-1], length, values[at + 2]))
            at += 3
        else:
            return None
        if len(table) > count:
            return None
    return np.array(table, np.int64) if len(table) == count else None


def linear_segment(start: int, length: int, end: int) -> list[int]:
    """The `length` entries of a line from `start` (the previous entry, not repeated) to `end`
    (the last), each rounded to the nearest integer, halves up: start + (end - start) k / length."""
    k = np.arange(1, length + 1, dtype=np.int64)
    # floor(start + (end - start) k / length + 1/2), in integers: exact at any length
    return ((2 * start * length + 2 * (end - start) * k + length) // (2 * length)).tolist()
