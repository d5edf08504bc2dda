"""HTTP serving of an index and its model: `SearchService` (the work), `create_app` (FastAPI), `run_server`.

uvicorn is run without its own logging set-up (`log_config=None`): its records go through medhash.logs
like every other, in the chosen format, and its start/stop lines only at -vv; the server says what it
serves in one startup line of its own (`startup_line`).
"""

import logging

from medhash.serve.config import ServeConfig
from medhash.serve.service import SearchService

log = logging.getLogger(__name__)


def create_app(service: SearchService):
    from medhash.serve.app import create_app as _create

    return _create(service)


def run_server(config: ServeConfig) -> None:
    """Open the index and model, then serve until interrupted (uvicorn, one process)."""
    import uvicorn

    from medhash.serve.app import create_app as _create

    service = SearchService.open(config)
    app = _create(service)
    log.info("%s", startup_line(service), extra={"event": "startup"})
    uvicorn.run(app, host=config.host, port=config.port, log_config=None, access_log=False)


def startup_line(service: SearchService) -> str:
    """What this server serves, in one line: index, kind, count, model, bits, auth, archive root, address."""
    config, info = service.config, service.info()
    return (f"serving index {config.index} ({info.kind}, {info.count} codes) with model {info.model_id} "
            f"({info.bits} bits, engine {info.engine}, {info.device}); auth {'on' if config.token else 'off'}; "
            f"archive root {config.archive_root or 'none (no thumbnails)'}; "
            f"access log {'on' if config.access_log else 'off'}; http://{config.host}:{config.port}")


__all__ = ["ServeConfig", "SearchService", "create_app", "run_server", "startup_line"]
