"""Keyed hashing of identifiers (PatientID, SOPInstanceUID...) before they leave the reading step.

A plain SHA-256 of a patient id is reversible by hashing every plausible id (they are short and
structured); HMAC-SHA256 with a secret the archive's owner keeps is not, yet stays stable, so images
of one patient still group together (patient-level splits) and re-imports are recognised.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from medhash.errors import InvalidParameterError

__all__ = ["keyed_hash", "read_secret_file"]


def keyed_hash(value: str, secret: bytes) -> str:
    """HMAC-SHA256 of `value` (UTF-8) under `secret`, as 64 lowercase hex digits.

    An empty secret is refused: it would make the hash an unkeyed one, reversible by enumeration.
    """
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ValueError("keyed_hash needs a non-empty bytes secret")
    return hmac.new(bytes(secret), value.encode("utf-8"), hashlib.sha256).hexdigest()


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The site secret held in a file: its bytes, one trailing newline dropped (editors add one).

    An empty file is refused (InvalidParameterError naming it): it would make every hash unkeyed.
    """
    with open(path, "rb") as fh:
        secret = fh.read()
    secret = secret[:-1] if secret.endswith(b"\n") else secret
    if not secret:
        raise InvalidParameterError(f"patient key secret file {path} is empty")
    return secret
