"""Keyed hashing of identifiers (PatientID, SOPInstanceUID...) before they leave the reading step.

A plain SHA-256 of a patient id is reversible by hashing every plausible id (they are short and
structured); HMAC-SHA256 with a secret the archive's owner keeps is not, yet stays stable, so images
of one patient still group together (patient-level splits) and re-imports are recognised.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["keyed_hash"]


def keyed_hash(value: str, secret: bytes) -> str:
    """HMAC-SHA256 of `value` (UTF-8) under `secret`, as 64 lowercase hex digits.

    An empty secret is refused: it would make the hash an unkeyed one, reversible by enumeration.
    """
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ValueError("keyed_hash needs a non-empty bytes secret")
    return hmac.new(bytes(secret), value.encode("utf-8"), hashlib.sha256).hexdigest()
