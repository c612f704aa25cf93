"""Reading a tar stream fast and forward-only: a header parser, a file object over chunks.

:class:`TarInfo` parses a ustar/GNU header with one ``struct`` call instead of
``tarfile``'s field-by-field reads; :class:`Feed` hands ``tarfile`` and the applier the
decoder's chunks as one file that only moves forward.
"""

from __future__ import annotations

import errno
import os
import struct
import tarfile
from typing import Self

from runtime.core.errors import (
    InvalidArgument,
)
from runtime.pkg.archive.decode import Decoder, EndOfStream

__all__ = [
    "Feed",
    "TarInfo",
]


# The POSIX ustar header, field by field (GNU tar's has the same layout for what is read here).
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_BASE256 = (0o200, 0o377)  # first bytes of GNU's binary numbers


def _octal(field: bytes) -> int:
    """A numeric header field, exactly as ``tarfile.nti`` reads an octal one."""
    if field[0] in _BASE256:
        raise ValueError("base-256 number")
    end = field.find(b"\0")
    text = (field if end < 0 else field[:end]).decode("ascii")
    return int(text.strip() or "0", 8)


def _text(field: bytes, encoding: str, errors: str) -> str:
    """A string header field (up to its first NUL), as ``tarfile.nts`` reads it."""
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode(encoding, errors)


class TarInfo(tarfile.TarInfo):
    """``TarInfo`` whose header parser is three times faster for ordinary headers.

    ``tarfile`` spends about 45 µs per header (two checksums through ``struct`` with a
    Python int per byte, a dozen slices and decodes): a third of a second for a layer of
    10,000 entries, in the thread that also creates the files. This parser gives the same
    ``TarInfo`` for a header with the ``ustar`` magic (POSIX and GNU), octal numbers and an
    unsigned checksum, and hands every other header (V7, base-256 numbers, old GNU sparse,
    signed or bad checksums, the zero blocks at the end) to ``tarfile``'s own.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        """Parse one 512-byte header block."""
        if len(buf) != tarfile.BLOCKSIZE or buf[257:262] != b"ustar":
            return super().frombuf(buf, encoding, errors)
        (name, mode, uid, gid, size, mtime, chksum, kind, linkname, _, uname, gname,
         devmajor, devminor, prefix) = _HEADER.unpack(buf)  # fmt: skip
        if kind == tarfile.GNUTYPE_SPARSE:
            return super().frombuf(buf, encoding, errors)
        try:
            checksum = _octal(chksum)
            # The checksum field counts as eight spaces.
            if checksum != sum(buf) - sum(chksum) + 256:
                return super().frombuf(buf, encoding, errors)
            obj = cls()
            obj.mode = _octal(mode)
            obj.uid = _octal(uid)
            obj.gid = _octal(gid)
            obj.size = _octal(size)
            obj.mtime = _octal(mtime)
            obj.devmajor = _octal(devmajor)
            obj.devminor = _octal(devminor)
        except (ValueError, UnicodeDecodeError):
            return super().frombuf(buf, encoding, errors)
        obj.chksum = checksum
        obj.type = kind
        obj.name = _text(name, encoding, errors)
        obj.linkname = _text(linkname, encoding, errors)
        obj.uname = _text(uname, encoding, errors)
        obj.gname = _text(gname, encoding, errors)
        # What tarfile does after reading the fields: V7 directories, trailing slashes,
        # ustar's name prefix.
        if kind == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE
        if obj.isdir():
            obj.name = obj.name.rstrip("/")
        prefix_text = _text(prefix, encoding, errors)
        if prefix_text and obj.type not in tarfile.GNU_TYPES:
            obj.name = prefix_text + "/" + obj.name
        return obj



class Feed:
    """Forward-only file object over the decoder's chunks, for tarfile and for file data.

    ``seek`` moves forward by skipping (or back within the current chunk), which is all tarfile
    needs when each member is consumed in order.
    """

    def __init__(self, decoder: Decoder) -> None:
        self._decoder = decoder
        self._buf = b""
        self._view = memoryview(self._buf)
        self._off = 0  # read position within _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self.last_read = b""  # the bytes the latest read() returned (an end-of-archive check)

    def _fill(self) -> bool:
        """Replace the exhausted buffer with the next chunk; False at end of stream."""
        if self._eof:
            return False
        item = self._decoder.get()
        if isinstance(item, EndOfStream):
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._base += len(self._buf)
        self._buf, self._view, self._off = item, memoryview(item), 0
        return True

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left when negative)."""
        off, buf = self._off, self._buf
        if 0 <= size <= len(buf) - off:  # the common case: a header inside the current chunk
            self._off = off + size
            self.last_read = buf[off : off + size]
            return self.last_read
        parts = []
        want = size if size >= 0 else 1 << 62
        while want > 0:
            avail = len(self._buf) - self._off
            if not avail:
                if not self._fill():
                    break
                continue
            take = min(want, avail)
            parts.append(self._buf[self._off : self._off + take])
            self._off += take
            want -= take
        self.last_read = b"".join(parts)
        return self.last_read

    def tell(self) -> int:
        """How many bytes were read so far."""
        return self._base + self._off

    def seek(self, pos: int, whence: int = os.SEEK_SET, /) -> int:
        """Move forward by skipping, or back within the current chunk."""
        if whence != os.SEEK_SET:
            raise OSError(errno.ESPIPE, "layer stream only seeks to absolute offsets")
        if pos >= self.tell():
            self._skip(pos - self.tell())
        elif pos >= self._base:
            self._off = pos - self._base
        else:
            raise OSError(errno.ESPIPE, "layer stream cannot seek backwards")
        return self.tell()

    def _skip(self, n: int) -> None:
        while n > 0:
            avail = len(self._buf) - self._off
            if not avail:
                if not self._fill():
                    return
                continue
            take = min(n, avail)
            self._off += take
            n -= take

    def copy_to(self, fd: int, n: int, entry: str) -> None:
        """Write the next ``n`` bytes to ``fd`` straight from the decoded chunks (no copies)."""
        while n > 0:
            avail = len(self._buf) - self._off
            if not avail:
                if not self._fill():
                    raise InvalidArgument(f"layer entry {entry!r}: tar data ends early")
                continue
            take = min(n, avail)
            view = self._view[self._off : self._off + take]
            while view:
                view = view[os.write(fd, view) :]
            self._off += take
            n -= take

    def drain(self) -> None:
        """Consume the rest of the stream so that it is all hashed and counted."""
        while self._fill():
            pass

    def write(self, data: bytes, /) -> int:
        """Refuse: the feed is read-only."""
        raise OSError(errno.EBADF, "layer stream is read-only")

    def close(self) -> None:
        """Nothing to release: the decoder owns the stream."""
        pass
