"""HTTP serving of an index and its model: `SearchService` (the work), `create_app` (FastAPI), `run_server`."""

from medhash.serve.config import ServeConfig
from medhash.serve.service import SearchService


def create_app(service: SearchService):
    from medhash.serve.app import create_app as _create

    return _create(service)


def run_server(config: ServeConfig) -> None:
    """Open the index and model, then serve until interrupted (uvicorn, one process)."""
    import uvicorn

    from medhash.serve.app import create_app as _create

    service = SearchService.open(config)
    uvicorn.run(_create(service), host=config.host, port=config.port, log_level="info", access_log=False)


__all__ = ["ServeConfig", "SearchService", "create_app", "run_server"]
