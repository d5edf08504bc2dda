"""medhash: precision chest X-ray retrieval by interpretable deep hashing."""

__version__ = "0.1.0"
