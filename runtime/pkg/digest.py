"""Content digests: ``sha256:`` and 64 lowercase hex digits, nothing else."""

from __future__ import annotations

import re

from runtime.core.errors import InvalidArgument

__all__ = ["DIGEST_ALGORITHM", "validate_digest"]

#: The only digest algorithm the store accepts.
DIGEST_ALGORITHM = "sha256"

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def validate_digest(digest: str) -> str:
    """Check that ``digest`` is ``sha256:<64 lowercase hex>`` and return its hex part.

    Args:
        digest: The digest string as received from a client.

    Returns:
        The 64-character hex part, safe to use as a file name.

    Raises:
        InvalidArgument: Any other shape, including other algorithms,
            uppercase hex, whitespace or path separators.
    """
    # fullmatch, not match + "$": "$" would accept a trailing newline.
    if not isinstance(digest, str) or _DIGEST.fullmatch(digest) is None:
        raise InvalidArgument(f"invalid digest {digest!r}: want sha256:<64 lowercase hex>")
    return digest[len(DIGEST_ALGORITHM) + 1 :]
