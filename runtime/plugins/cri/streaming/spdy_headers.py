"""SPDY/3 header blocks: the name/value pair encoding and the zlib dictionary that primes them.

A header block is a count and length-prefixed name/value pairs (a value list
NUL-joined), deflated with one zlib context per direction and session, primed
with :data:`HEADER_DICTIONARY`; compression lives with the codec
(:mod:`runtime.plugins.cri.streaming.spdy`), the pairs here.
"""

from __future__ import annotations

import struct

__all__ = ["HEADER_DICTIONARY", "Headers", "decode_headers", "encode_headers"]


def _build_dictionary() -> bytes:
    # The SPDY/3 draft's dictionary: length-prefixed header names and common
    # values, then a run of status codes, dates and media types.
    names = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status"
    )
    words = [*names.split(" "), "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
             "keep-alive", "origin"]
    prefixed = b"".join(struct.pack(">I", len(w)) + w.encode() for w in words)
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found"
        "500 Internal Server Error501 Not Implemented503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,"
        "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return prefixed + tail.encode()


#: The zlib dictionary of SPDY/3 header blocks (1423 bytes).
HEADER_DICTIONARY = _build_dictionary()

#: Header names (lower case) to their values; a value list is sent NUL-joined.
Headers = dict[str, list[str]]


def encode_headers(headers: Headers) -> bytes:
    """The uncompressed block of ``headers`` (names lower-cased)."""
    parts = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        key = name.lower().encode()
        value = "\0".join(values).encode()
        parts += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
    return b"".join(parts)


def decode_headers(block: bytes) -> Headers:
    """The name/value pairs of an inflated block; ValueError if it is malformed."""
    view = memoryview(block)
    if len(view) < 4:
        raise ValueError("header block shorter than its pair count")
    (count,) = struct.unpack_from(">I", view)
    # Each pair takes at least 8 bytes: a count beyond that is a lie.
    if count > (len(view) - 4) // 8:
        raise ValueError(f"header block claims {count} pairs in {len(view)} bytes")
    offset = 4
    headers: Headers = {}

    def take() -> bytes:
        nonlocal offset
        if offset + 4 > len(view):
            raise ValueError("header block truncated")
        (length,) = struct.unpack_from(">I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise ValueError("header block truncated")
        value = bytes(view[offset:offset + length])
        offset += length
        return value

    for _ in range(count):
        raw_name, raw_value = take(), take()
        if not raw_name:
            raise ValueError("empty header name")
        try:
            name, value = raw_name.decode().lower(), raw_value.decode()
        except UnicodeDecodeError:
            raise ValueError("header not UTF-8") from None
        if name in headers:
            raise ValueError(f"duplicate header {name!r}")
        headers[name] = value.split("\0")
    if offset != len(view):
        raise ValueError(f"{len(view) - offset} bytes after the last header pair")
    return headers
