"""Bulk writes to local disk that bypass the page cache (``O_DIRECT``).

A job writes gigabytes of shards it will not read back. Through the page cache
every byte is first copied into freshly allocated kernel pages (about 1 ms of
CPU per 440 KB on a cloud VM, whose fresh memory is slow to touch: 7 % of a
features snippet), then written back by kernel threads. With ``O_DIRECT`` the
device reads the bytes from a reused, page-aligned staging buffer instead:
about 0.02 ms per 440 KB (bench/features.py; docs/benchmarks.md).

``O_DIRECT`` wants the buffer address, file offset and length aligned to the
device's block size: whole 4 KiB blocks go direct, and the file's last partial
block is written through the page cache. Only local block-device filesystems
take this path (``DIRECT_FILESYSTEMS``, looked up in the mount table): on network
and FUSE mounts a direct write waits on the server, on tmpfs the page cache is
the storage, and overlayfs and others have refused or mishandled it in some
kernels. There, on platforms without ``O_DIRECT``, and on any filesystem that
refuses it, the file is written the ordinary way: the bytes are the same.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import re
import threading

BLOCK = 4096  # the largest logical block size in use; a multiple of all others
STAGING_BYTES = 4 * 1024 * 1024  # per open file; freed buffers are reused by the next file
DIRECT_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
MOUNTS = "/proc/self/mounts"
_free_buffers: list[mmap.mmap] = []
_lock = threading.Lock()


def supported() -> bool:
    return hasattr(os, "O_DIRECT")


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ...), from the mount table;
    ``""`` where there is none to read (not Linux)."""
    target = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open(MOUNTS) as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040 = space
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return ""
    return kind


def goes_direct(path: str) -> bool:
    """Whether a new file at ``path`` would be written past the page cache (see the module docstring)."""
    return supported() and filesystem_type(os.path.dirname(os.path.abspath(path))) in DIRECT_FILESYSTEMS


def _take_buffer() -> mmap.mmap:
    with _lock:
        if _free_buffers:
            return _free_buffers.pop()
    return mmap.mmap(-1, STAGING_BYTES)  # anonymous maps are page-aligned


def _give_back(buffer: mmap.mmap) -> None:
    with _lock:
        _free_buffers.append(buffer)


class DirectFile(io.RawIOBase):
    """A write-only file that sends whole blocks with ``O_DIRECT`` (see the module docstring).

    Writes are sequential only (no ``seek``), which is all the Parquet writer needs.
    ``direct_bytes`` counts the bytes that went past the page cache.
    """

    def __init__(self, path: str):
        super().__init__()
        self._fd = -1
        self._staging: mmap.mmap | None = None
        self._buf: memoryview | None = None
        self._fill = 0
        self._written = 0
        self.direct_bytes = 0
        self._direct = goes_direct(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(path, flags | (os.O_DIRECT if self._direct else 0), 0o644)
        except OSError as e:
            if not self._direct or e.errno != errno.EINVAL:
                raise
            self._direct = False  # the filesystem refuses O_DIRECT: write through the cache
            self._fd = os.open(path, flags, 0o644)
        if self._direct:
            self._staging = _take_buffer()
            self._buf = memoryview(self._staging)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written + self._fill

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self._buf is None:  # not direct: the writer's own pieces (large: Parquet pages) as they come
            self._write_all(view)
            return len(view)
        pos = 0
        while pos < len(view):
            take = min(len(view) - pos, STAGING_BYTES - self._fill)
            self._buf[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == STAGING_BYTES:
                self._flush_blocks()
        return len(view)

    def _flush_blocks(self) -> None:
        """Write the staged whole blocks; keep the partial one at the front of the buffer."""
        whole = self._fill - self._fill % BLOCK
        if whole:
            self._write_all(self._buf[:whole])
            rest = self._fill - whole
            self._buf[:rest] = self._buf[whole : self._fill]
            self._fill = rest

    def _write_all(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            try:
                sent = os.write(self._fd, view[done:])
                done += sent
                if self._direct:
                    self.direct_bytes += sent
            except OSError as e:
                if e.errno != errno.EINVAL or not self._direct:
                    raise
                self._drop_direct()  # the flag accepted at open, the write refused
        self._written += len(view)

    def _drop_direct(self) -> None:
        import fcntl  # POSIX only; reached only where O_DIRECT exists (Linux)

        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        self._direct = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._fd >= 0 and self._buf is not None:
                self._flush_blocks()
                if self._fill:  # the last partial block goes through the page cache
                    if self._direct:
                        self._drop_direct()
                    self._write_all(self._buf[: self._fill])
                    self._fill = 0
        finally:
            if self._buf is not None:
                self._buf.release()
                self._buf = None
                _give_back(self._staging)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            super().close()
