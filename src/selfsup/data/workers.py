"""Many image files decoded in order: decode_stream, in a pool of worker processes (DecodeWorkers)
when there are many, in this process otherwise.

The workers decode chunks of (name, bytes) with decode.py's decode_named and send back the pixels
and the notes; the main thread alone feeds and reads them, and a stop signal (Ctrl-C, a scheduler's
SIGTERM) that lands while they start is delivered once they exist, so that stopping is killing them.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import threading

from .decode import decode_named
from .tiff import Bands, require_tiff_reader


def _decode_chunk(args: tuple[list[tuple[str, bytes]], int, Bands]) -> list[tuple[str, tuple | None, list[str]]]:
    chunk, size, bands = args
    return [(name, *decode_named(name, data, size, bands)) for name, data in chunk]


def _chunks(items, size: int, bands: Bands, per_chunk: int = 64):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == per_chunk:
            yield chunk, size, bands
            chunk = []
    if chunk:
        yield chunk, size, bands


def decode_stream(items, size: int, workers: int = 0, parallel: bool = True, notes: dict | None = None,
                  bands: Bands = None):
    """(name, decode_image(bytes, size, bands)) for each (name, bytes) of `items`, in order;
    decoded by a pool of `workers` processes (0: one per core) when `parallel`. `notes`, when
    given, gets the names of the files decode_noting had a note on, by note."""
    require_tiff_reader(bands)
    for name, decoded, noted in _decoded_chunks(items, size, workers, parallel, bands):
        for note in noted if notes is not None else ():
            notes.setdefault(note, []).append(name)
        yield name, decoded


def _decoded_chunks(items, size: int, workers: int, parallel: bool, bands: Bands):
    workers = workers or os.cpu_count() or 1
    if not parallel or workers <= 1:
        for chunk in map(_decode_chunk, _chunks(items, size, bands)):
            yield from chunk
        return
    # A Ctrl-C (or a stop signal a handler turns into an exception) that lands while the workers
    # are forked is raised inside a fork handler, where Python drops it: note it then, and deliver
    # it again once the workers exist (which then stop with it).
    arrived, previous, parent = [], {}, os.getpid()

    def note(number, _frame):
        if os.getpid() != parent:  # a worker forked with this handler, before its own
            signal.signal(number, _in_a_worker(number))
            if _in_a_worker(number) == signal.SIG_DFL:
                os.kill(os.getpid(), number)  # ended, as it would have been by default
            return
        arrived.append(number)

    if threading.current_thread() is threading.main_thread():
        for number in STOP_SIGNALS:
            if callable(signal.getsignal(number)):
                previous[number] = signal.signal(number, note)
    try:
        pool = DecodeWorkers(workers, multiprocessing.get_context("fork" if os.name == "posix" else "spawn"))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    try:
        for number in arrived[:1]:
            signal.raise_signal(number)  # to the handler put back: KeyboardInterrupt, RunStopped, ...
        for chunk in pool.imap(_chunks(items, size, bands)):
            yield from chunk
    finally:
        pool.close()


# Each asks a run to stop after the step in progress, with a checkpoint: Ctrl-C, a scheduler's
# SIGTERM (SLURM, Kubernetes), SIGUSR1 (SLURM's --signal, sent ahead of a time limit). They reach
# the whole process group, decoding workers included, which leave them to the parent.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


def _in_a_worker(number: int):
    """A decoding worker's handling of a stop signal: none of Ctrl-C's or a run's stop request (the
    parent's to act on, which then kills the workers); SIGTERM ends it, as by default."""
    return signal.SIG_DFL if number == getattr(signal, "SIGTERM", None) else signal.SIG_IGN


def _decode_worker(tasks, results, parent_ends) -> None:
    """A decoding process: chunks of (name, bytes) in, decoded chunks out, until its task pipe
    closes (the parent is done, or gone). `parent_ends`: the parent's ends of its own pipes and of
    those of the workers forked before it, which a fork copies: closed, so that each pipe closes
    when the parent's end does."""
    for pipe in parent_ends:
        pipe.close()
    for number in STOP_SIGNALS:
        signal.signal(number, _in_a_worker(number))
    while True:
        try:
            chunk = tasks.recv()
            results.send(_decode_chunk(chunk))
        except (EOFError, OSError):  # the parent closed its ends, or ended
            return


class DecodeWorkers:
    """Processes that decode chunks of images for the main thread, which alone feeds and reads
    them, one chunk in flight each: no helper threads and no locks shared with them, so stopping
    is killing them. (multiprocessing.Pool's terminate could wait for ever: its task thread blocked
    writing a chunk of image bytes that no stopped worker would read, or a queue's lock was left
    taken by a worker a signal ended.)"""

    def __init__(self, count: int, context):
        self.links = []  # (process, its task pipe's writing end, its result pipe's reading end)
        try:
            for _ in range(count):
                task_reader, task_writer = context.Pipe(duplex=False)
                result_reader, result_writer = context.Pipe(duplex=False)
                parent_ends = [task_writer, result_reader, *(pipe for _, *pipes in self.links for pipe in pipes)]
                process = context.Process(target=_decode_worker, args=(task_reader, result_writer, parent_ends),
                                          daemon=True)
                process.start()
                task_reader.close()
                result_writer.close()
                self.links.append((process, task_writer, result_reader))
        except BaseException:
            self.close()
            raise

    def imap(self, chunks):
        """The decoded chunks, in the order of `chunks`. A worker gets its next chunk as soon as its
        last one is read back, before that one is handed on."""
        chunks = iter(chunks)
        in_flight = collections.deque(worker for worker in range(len(self.links)) if self._send(worker, chunks))
        while in_flight:
            worker = in_flight.popleft()
            process, _, results = self.links[worker]
            try:
                decoded = results.recv()
            except EOFError:
                raise RuntimeError(f"a decoding worker ended unexpectedly (exit code {process.exitcode})") from None
            if self._send(worker, chunks):
                in_flight.append(worker)
            yield decoded

    def _send(self, worker: int, chunks) -> bool:
        chunk = next(chunks, None)
        if chunk is not None:
            self.links[worker][1].send(chunk)
        return chunk is not None

    def close(self) -> None:
        for process, _, _ in self.links:
            if process.is_alive():
                process.kill()
        for process, tasks, results in self.links:
            process.join()
            tasks.close()
            results.close()
