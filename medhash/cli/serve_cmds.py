"""`medhash serve`: parse options, call medhash.serve.run_server."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from medhash.cli.options import MedhashCommand, engine_option

log = logging.getLogger("medhash.cli")


@click.command("serve", cls=MedhashCommand, renamed={"--threads": "--torch-threads"})
@click.option("--index", "index_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Index folder from `medhash index build`.")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checkpoint whose model_id matches the index.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind. The default serves this machine only; 0.0.0.0 exposes the archive to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port to bind.")
@click.option("--token", envvar="MEDHASH_TOKEN", default=None,
              help="Bearer token required on /v1/* and /metrics (or set MEDHASH_TOKEN, which keeps it out of `ps`).")
@click.option("--archive-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of the archived images; thumbnails are served only from under it (none without it).")
@click.option("--device", default="cpu", show_default=True, help="Torch device of the model.")
@engine_option()
@click.option("--torch-threads", type=click.IntRange(min=1), default=None, help="Torch threads (default: all cores).")
@click.option("--mmap", is_flag=True, help="Memory-map the index where its kind allows.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=32.0, show_default=True,
              help="Largest request body; larger ones get 413 before they are parsed.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Concurrent uploads encoded together in one forward pass, at most.")
@click.option("--max-k", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Most hits in one response, ties included (a response cut there says truncated).")
@click.option("--max-decode-mb", type=click.IntRange(min=1), default=768, show_default=True,
              help="Most memory one upload may take to decode, judged from its header (413 beyond).")
@click.option("--decode-budget-mb", type=click.IntRange(min=1), default=3072, show_default=True,
              help="Most memory all decodes together may take; more wait briefly, then get 503.")
@click.option("--access-log", is_flag=True, help="Log one line per request: method, path, status, milliseconds.")
@click.option("--reload-poll-ms", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Check the index folder this often for a new version (index add/remove); 0: only POST /v1/reload.")
@click.option("--patient-key-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Site secret, so filters may name a raw patient id (not_patient_id), hashed before use.")
def serve_cmd(index_dir, model_path, host, port, token, archive_root, device, engine, torch_threads, mmap, max_upload_mb,
              max_batch, max_k, max_decode_mb, decode_budget_mb, access_log, reload_poll_ms, patient_key_secret_file) -> None:
    """Serve similar-case search over HTTP: API at /v1, page at /, OpenAPI schema at /openapi.json."""
    log.info("serve: opening index %s and model %s for http://%s:%d", index_dir, model_path, host, port)
    from medhash.serve import ServeConfig, run_server
    from medhash.serve.config import MIN_TOKEN_CHARS

    if token is None and os.environ.get("MEDHASH_TOKEN") == "":
        # click reads an empty variable as unset, which would silently serve without authentication.
        raise click.BadParameter(f"MEDHASH_TOKEN is set but empty; give a token of at least {MIN_TOKEN_CHARS} "
                                 "characters, or unset it to serve without authentication", param_hint="--token")
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        click.echo(f"warning: binding {host} without --token: anyone who reaches this port can search the archive",
                   err=True)
    run_server(ServeConfig(index=str(index_dir), model=str(model_path), host=host, port=port, token=token,
                           archive_root=str(archive_root) if archive_root else None, device=device, engine=engine,
                           torch_threads=torch_threads, mmap=mmap, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                           max_batch=max_batch, max_k=max_k, max_decode_bytes=max_decode_mb << 20,
                           decode_budget_bytes=decode_budget_mb << 20, access_log=access_log, reload_poll_ms=reload_poll_ms,
                           patient_key_secret_file=str(patient_key_secret_file) if patient_key_secret_file else None))


commands = [serve_cmd]
