"""The JSON shapes of the HTTP API (pydantic models: FastAPI validates and documents them in OpenAPI)."""

from __future__ import annotations

from pydantic import BaseModel, Field

Box = tuple[int, int, int, int]


class Hit(BaseModel):
    rank: int = Field(description="1-based rank; items at equal distance keep ids.parquet order")
    image_id: str
    distance: int = Field(description="Hamming distance between the query's code and this item's")
    labels: list[str]
    box: Box | None = Field(None, description="The encoder's crop box (x0, y0, x1, y1), exclusive, in the image's pixels")
    thumbnail_url: str | None = Field(None, description="GET it for a PNG thumbnail; null without --archive-root")
    overlay_url: str | None = Field(None, description="The thumbnail with saliency map and crop box drawn")
    score: float | None = Field(None, description="Re-ranked searches: cosine similarity of the query's and this "
                                                  "item's hash values; null for hits after the re-ranked shortlist")


class Prediction(BaseModel):
    label: str
    probability: float


class Query(BaseModel):
    kind: str = Field(description="image or code")
    code_hex: str
    box: Box | None = None
    width: int | None = None
    height: int | None = None
    predicted: list[Prediction] = Field(default_factory=list, description="Classifier outputs of at least 0.5")
    overlay_png: str | None = Field(None, description="data: URL of the query with saliency and box (when overlay=true)")


class SearchResponse(BaseModel):
    model_id: str
    bits: int
    k: int
    with_ties: bool
    query: Query
    hits: list[Hit]
    truncated: bool = Field(False, description="More items tie at the k-th distance than the server's max_k: "
                                               "hits holds the first max_k of them")
    timings_ms: dict[str, float]
    rerank: int | None = Field(None, description="The shortlist size N when the Hamming top N was re-ranked "
                                                 "by cosine of the hash values")


class Info(BaseModel):
    model_id: str
    bits: int
    kind: str
    count: int
    index_created: str | None
    engine: str
    device: str
    max_k: int
    max_upload_bytes: int
    thumbnails: bool
    medhash_version: str
    faiss_version: str | None
    hash_values: bool = Field(False, description="The index stores hash values: image searches may ask for `rerank`")


class Health(BaseModel):
    status: str
    count: int
