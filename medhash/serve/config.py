"""ServeConfig: everything `medhash serve` can be told, in one dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from medhash.errors import InvalidParameterError

MIN_TOKEN_CHARS = 16  # a shorter bearer token is guessable; an empty one would turn authentication off


@dataclass(frozen=True)
class ServeConfig:
    index: str  # index folder (medhash index build)
    model: str  # checkpoint whose model_id matches the index's
    host: str = "127.0.0.1"  # loopback by default: exposing the archive is the operator's explicit choice
    port: int = 8000
    token: str | None = None  # bearer token for /v1/* and /metrics; None = no authentication
    archive_root: str | None = None  # images are served only from under this folder; None = no thumbnails
    device: str = "cpu"
    engine: str = "auto"  # medhash.model.encoder.ENGINES; auto = the fastest the device offers
    torch_threads: int | None = None  # None: every core (the server is assumed to own the machine)
    mmap: bool = False
    max_upload_bytes: int = 32 * 1024 * 1024  # one DICOM of a 3000x3000 film at 16 bits is ~18 MB
    max_pixels: int | None = None  # None: medhash.data.decode.DEFAULT_MAX_PIXELS
    # Decode memory, estimated from the header before any pixel is decoded (ImageHeader.decode_bytes):
    # one request may take at most max_decode_bytes (413 beyond: a 7000x7000 grey PNG needs ~1.2 GB), and
    # all requests together decode_budget_bytes (beyond: wait up to decode_wait_s, then 503).
    max_decode_bytes: int = 768 * 1024 * 1024
    decode_budget_bytes: int = 3 * 1024 * 1024 * 1024
    decode_wait_s: float = 10.0
    default_k: int = 10
    max_k: int = 10_000  # bench asks for whole rankings on small indexes; bounded to keep responses finite
    max_batch: int = 16  # concurrent uploads encoded together, at most this many per forward pass
    thumbnail_size: int = 256  # longest side of /v1/images thumbnails, unless the request asks for another
    cache_items: int = 512  # rendered thumbnails kept in memory
    reload_poll_ms: int = 1000  # stat manifest.json this often to pick up index add/remove; 0 = only POST /v1/reload
    patient_key_secret_file: str | None = None  # site secret: lets filters name a raw patient id (not_patient_id)
    access_log: bool = False  # one log line per request (medhash.serve.access): method, path, status, ms

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < MIN_TOKEN_CHARS:
            what = "empty" if not self.token else f"{len(self.token)} characters"
            raise InvalidParameterError(f"the bearer token is {what}; a token needs at least {MIN_TOKEN_CHARS} "
                                        f"characters (or none at all, to serve without authentication)")
        if self.max_decode_bytes > self.decode_budget_bytes:
            raise InvalidParameterError(f"the per-request decode limit ({self.max_decode_bytes >> 20} MB) is larger "
                                        f"than the decode budget of all requests ({self.decode_budget_bytes >> 20} MB)")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["token"] = "***" if self.token else None  # never echoed
        return out
