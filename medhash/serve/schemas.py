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
    age: float | None = Field(None, description="Age in years (label table, else DICOM); null when unknown")
    sex: str | None = Field(None, description="Sex as stored (label table, else DICOM)")
    view: str | None = Field(None, description="View position (PA, AP, ...) as stored")
    is_query: bool = Field(False, description="This archived image is the query itself")


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
    image_png: str | None = Field(None, description="data: URL of the query without overlay (when overlay=true)")
    archived_image_id: str | None = Field(None, description="The query's own image id when it is in the archive "
                                                            "(named by query_image_id, or its file name is an id)")


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
    filter: dict | None = Field(None, description="The filter applied, in its normalized JSON form (patient ids only "
                                                  "as keyed hashes)")
    strategy: str | None = Field(None, description="How a filtered search was answered: scan_selected, scan_masked, "
                                                   "probe_widened, probe_widened+scan_selected or empty")
    selected: int | None = Field(None, description="Archived items the filter lets through")
    generation: int = Field(0, description="The index version that answered")


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
    generation: int = 0
    columns: list[str] = Field(default_factory=list, description="Stored columns a filter can name")


class ReloadResult(BaseModel):
    reloaded: bool = Field(description="A new index version was found and swapped in")
    generation: int
    count: int


class Health(BaseModel):
    status: str
    count: int
