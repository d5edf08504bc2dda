"""serve_in_background(service): the app under uvicorn in a thread, for demos, benchmarks and tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_background(service, host: str = "127.0.0.1", port: int | None = None,
                        start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `service` (a SearchService) until the block ends; yields the base URL. The service is closed after."""
    import uvicorn

    from medhash.serve.app import create_app

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="medhash-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            service.close()
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.close()
