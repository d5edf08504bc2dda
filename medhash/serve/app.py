"""create_app(service): the FastAPI application over a SearchService (routes, auth, limits, metrics).

Every error answer is JSON with a one-line `detail`; values the client sent are quoted shortened
(medhash.errors.shorten), so an answer never grows with the request: a 100 KB image id comes back as 80
characters. The token is compared in constant time (secrets.compare_digest is hmac.compare_digest).
"""

# No `from __future__ import annotations`: FastAPI must see the closures' Depends(bearer) objects.
import asyncio
import contextlib
import logging
import secrets
import time
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Path, Query, Request, UploadFile, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from medhash import __version__
from medhash.errors import ArchiveAccessError, ImageDecodeError, shorten
from medhash.index import SearchParams
from medhash.index.params import MAX_EF
from medhash.serve.budget import ServerBusyError
from medhash.serve.limits import BodySizeLimit
from medhash.serve.schemas import Health, Info, ReloadResult, SearchResponse
from medhash.serve.service import BadQueryError, SearchService

access_log = logging.getLogger("medhash.serve.access")

PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
FILTER_DESCRIPTION = (
    "Only hits this filter lets through. Compact: `labels_any=Effusion,Mass;sex=F;age=60..;view=PA;"
    "not_patient=IMAGE_ID`, or the same as a JSON object: `{\"labels_any\": [\"Effusion\"], \"age\": {\"min\": 60}}`. "
    "Clauses: labels_any, labels_all, labels_none, view, sex, age (LO..HI), not_patient (an archived image id: "
    "that patient's images are left out), not_patient_key, not_patient_id (hashed with the server's secret; "
    "never stored or logged), and COLUMN=V1,V2 or COLUMN=LO..HI on any stored column (GET /v1/info lists them).")
ERRORS = {401: {"description": "Missing or wrong bearer token"}}
# The largest re-ranked shortlist one request may ask for: its cosines cost ~N x bits flops plus N
# rows read from hash_values.npy, which stays well under a millisecond per thousand.
MAX_RERANK = 100_000


def _page() -> str:
    return resources.files("medhash.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(service: SearchService) -> FastAPI:
    config = service.config
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        service.close()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, which an offline hospital
    # machine cannot reach (and should not be made to try). /openapi.json is served for any client.
    app = FastAPI(title="medhash", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Content-based retrieval of chest radiographs by deep hashing: upload a study, "
                              "get the most similar archived cases by Hamming distance, with saliency boxes.")
    app.state.service = service
    app.add_middleware(BodySizeLimit, max_bytes=config.max_upload_bytes)
    bearer = HTTPBearer(auto_error=False, description="Required when the server was started with --token")

    def require_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if config.token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), config.token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    authorized = [Depends(require_token)]

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        seconds = time.perf_counter() - t0
        service.metrics.requests.labels(name, request.method, str(response.status_code)).inc()
        service.metrics.latency.labels(name).observe(seconds)
        if config.access_log:  # the path only, never the query string (it may carry ids)
            client = request.client.host if request.client else "-"
            access_log.info("%s %s %s %d %.1f ms", client, request.method, request.url.path, response.status_code,
                            seconds * 1000, extra={"status": response.status_code, "ms": round(seconds * 1000, 2),
                                                   "method": request.method, "path": request.url.path})
        return response

    @app.exception_handler(ImageDecodeError)
    async def bad_image(_: Request, exc: ImageDecodeError):
        # too_large: the declared size is over a limit (413); anything else: the bytes are not a usable image.
        code = 413 if exc.kind == "too_large" else 400
        return JSONResponse({"detail": str(exc), "kind": exc.kind}, status_code=code)

    @app.exception_handler(ServerBusyError)
    async def busy(_: Request, exc: ServerBusyError):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors())
        for error in errors:  # FastAPI echoes the offending input in full: quote it shortened
            if "input" in error:
                error["input"] = shorten(error["input"]) if isinstance(error["input"], str) else None
            error.pop("ctx", None)
            error["msg"] = shorten(error.get("msg", ""), 200)
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(BadQueryError)
    async def bad_query(_: Request, exc: BadQueryError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _page()

    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        return Health(status="ok", count=len(service.index))

    @app.get("/metrics", dependencies=authorized, tags=["operations"], responses=ERRORS,
             response_class=Response, summary="Prometheus metrics (text exposition format)")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.get("/v1/info", response_model=Info, dependencies=authorized, tags=["search"], responses=ERRORS)
    async def info() -> Info:
        return service.info()

    @app.post("/v1/search", response_model=SearchResponse, dependencies=authorized, tags=["search"],
              responses={**ERRORS, 400: {"description": "The image could not be decoded"},
                         413: {"description": "Upload, or its declared decoded size, larger than the server's limit"},
                         422: {"description": "Neither image nor code, both, a bad code, a bad k, a bad filter "
                                               "(the message names the bad clause), or rerank with a code or on an "
                                               "index without hash values"},
                         503: {"description": "The decode budget stayed full; retry after Retry-After seconds"}})
    async def search(
        image: Annotated[UploadFile | None, File(description="A radiograph: PNG, JPEG or DICOM")] = None,
        code: Annotated[str | None, Form(description="A code instead of an image: hex or base64")] = None,
        k: Annotated[int | None, Form(ge=1, le=config.max_k, description="Hits to return (default: the server's)")] = None,
        with_ties: Annotated[bool, Form(description="Also return every item at the k-th distance")] = False,
        overlay: Annotated[bool, Form(description="Return the query's saliency overlay as a data: URL")] = False,
        nprobe: Annotated[int | None, Form(ge=1, le=65_536, description="IVF index: inverted lists to visit")] = None,
        ef_search: Annotated[int | None, Form(ge=1, le=MAX_EF, description="HNSW index: candidate list size")] = None,
        rerank: Annotated[int | None, Form(ge=1, le=MAX_RERANK, description=(
            "Re-rank the Hamming top N (ties included; the filtered top N with a filter) by cosine of the hash "
            "values; image queries on an index that stores them (encode --store-hash-values)"))] = None,
        filter: Annotated[str | None, Form(description=FILTER_DESCRIPTION)] = None,
        query_image_id: Annotated[str | None, Form(description="The archived image the query is (marks it in the "
                                                               "hits); by default an upload whose file name is an "
                                                               "archived id")] = None,
        exclude_query_patient: Annotated[bool, Form(description="Leave out every image of the query's patient "
                                                                "(the query must be an archived image)")] = False,
    ) -> SearchResponse:
        """Search by an uploaded image (encoded by the server's model) or by a code, optionally filtered."""
        if (image is None) == (code is None):
            raise BadQueryError("send exactly one of `image` (a file) or `code` (hex or base64)")
        params = SearchParams(nprobe=nprobe, ef_search=ef_search)
        flt = service.parse_filter(filter)  # a bad filter fails before any decoding
        if code is not None:
            return await service.search_code(code, k, with_ties, params, flt, query_image_id, exclude_query_patient,
                                             rerank=rerank)
        data = await image.read()
        if not data:
            raise BadQueryError(f"uploaded file {shorten(image.filename or 'image')} is empty")
        return await service.search_image(data, image.filename or "upload", k, with_ties, overlay, params, flt,
                                          query_image_id, exclude_query_patient, rerank=rerank)

    @app.post("/v1/reload", response_model=ReloadResult, dependencies=authorized, tags=["operations"],
              responses=ERRORS)
    async def reload() -> ReloadResult:
        """Swap in the index folder's current version now (after `medhash index add/remove`), if it changed.
        The server also notices a new version by itself within its --reload-poll-ms."""
        return await asyncio.get_running_loop().run_in_executor(None, service.reload)

    @app.get("/v1/images/{image_id}", dependencies=authorized, tags=["search"], response_class=Response,
             responses={**PNG, **ERRORS, 404: {"description": "Unknown id, or its file is not in the archive"}})
    async def archived_image(
        image_id: Annotated[str, Path(description="An image id of the index")],
        overlay: Annotated[bool, Query(description="Draw the saliency map and crop box")] = False,
        size: Annotated[int | None, Query(ge=16, le=1024, description="Longest side in pixels")] = None,
    ) -> Response:
        """A thumbnail of an archived image, read only from under the server's --archive-root."""
        try:
            png = await service.thumbnail(image_id, overlay, size)
        except KeyError:
            raise HTTPException(404, f"no image {shorten(image_id)!r} in the index") from None
        except ArchiveAccessError as exc:
            raise HTTPException(404, f"image {shorten(image_id)!r} is not served: {shorten(exc, 200)}") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    return app
