"""Two clients with one async interface: the server in this process (SearchService) or over HTTP.

Both return the SearchResponse JSON as a dict (medhash/serve/schemas.py), so everything the bench
measures downstream is the same code for both targets. A failed request raises: SearchRequestError
for a non-200 answer, whatever the transport or the service raised otherwise. A client opened with
`rerank=N` asks for every image search to re-rank the Hamming top N; a search by code is never
re-ranked (a code carries no hash values).
"""

from __future__ import annotations

from typing import Protocol

from medhash.errors import MedhashError


class SearchRequestError(MedhashError):
    """The server answered a search with a non-200 status (the message holds status and detail)."""

    def __init__(self, status: int, detail: str):
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}")


class ServerUnreachableError(MedhashError):
    """No answer at all from the server's URL (refused, timed out, not HTTP)."""


class SearchClient(Protocol):
    target: str  # "in_process" or the server's URL
    rerank: int | None  # image searches re-rank the Hamming top N

    async def info(self) -> dict: ...

    async def search_image(self, data: bytes, name: str, k: int | None = None, with_ties: bool = False,
                           filter: str | None = None) -> dict: ...

    async def search_code(self, code_hex: str, k: int | None = None, filter: str | None = None) -> dict: ...

    async def aclose(self) -> None: ...


class InProcessClient:
    """Calls a SearchService directly: the server's work without HTTP (decode, batched encode, search)."""

    target = "in_process"

    def __init__(self, service, rerank: int | None = None):
        self.service = service
        self.rerank = rerank

    @classmethod
    def open(cls, index: str, model: str, *, engine: str = "auto", device: str = "cpu", torch_threads: int | None = None,
             max_k: int = 10_000, max_batch: int = 16, rerank: int | None = None) -> "InProcessClient":
        from medhash.serve import SearchService, ServeConfig

        return cls(SearchService.open(ServeConfig(index=index, model=model, engine=engine, device=device,
                                                  torch_threads=torch_threads, max_k=max_k, max_batch=max_batch)),
                   rerank)

    async def info(self) -> dict:
        return self.service.info().model_dump()

    async def search_image(self, data: bytes, name: str, k: int | None = None, with_ties: bool = False,
                           filter: str | None = None) -> dict:
        return (await self.service.search_image(data, name, k, with_ties, filter=filter,
                                                rerank=self.rerank)).model_dump()

    async def search_code(self, code_hex: str, k: int | None = None, filter: str | None = None) -> dict:
        return (await self.service.search_code(code_hex, k, filter=filter)).model_dump()

    async def aclose(self) -> None:
        self.service.close()


class HttpClient:
    """POST /v1/search over one pooled httpx.AsyncClient (keep-alive, `connections` at once)."""

    def __init__(self, url: str, token: str | None = None, *, connections: int = 16, timeout_s: float = 120.0,
                 rerank: int | None = None):
        import httpx

        self.target = url.rstrip("/")
        self.rerank = rerank
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.target, headers=headers, timeout=timeout_s,
                                       limits=httpx.Limits(max_connections=connections,
                                                           max_keepalive_connections=connections))

    async def info(self) -> dict:
        import httpx

        try:
            response = await self._http.get("/v1/info")
        except httpx.TransportError as exc:
            raise ServerUnreachableError(f"{self.target}: no answer: {type(exc).__name__}: {exc}") from exc
        return _json_or_raise(response)

    async def search_image(self, data: bytes, name: str, k: int | None = None, with_ties: bool = False,
                           filter: str | None = None) -> dict:
        form = _form(k, with_ties, filter)
        if self.rerank is not None:
            form["rerank"] = str(self.rerank)
        files = {"image": (name, data, "application/octet-stream")}
        return _json_or_raise(await self._http.post("/v1/search", files=files, data=form))

    async def search_code(self, code_hex: str, k: int | None = None, filter: str | None = None) -> dict:
        return _json_or_raise(await self._http.post("/v1/search", data={"code": code_hex, **_form(k, False, filter)}))

    async def aclose(self) -> None:
        await self._http.aclose()


def _form(k: int | None, with_ties: bool, filter: str | None = None) -> dict[str, str]:
    form = {"with_ties": "true" if with_ties else "false"}
    if filter:
        form["filter"] = filter
    if k is not None:
        form["k"] = str(k)
    return form


def _json_or_raise(response) -> dict:
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise SearchRequestError(response.status_code, str(detail)[:300])
    return response.json()
