"""`transferlab serve RUN`: a trained run as a web app (Gradio) and a JSON API (FastAPI), one
process, one model.

    with Server(run, port=0) as server:       # a server in a background thread (tests, notebooks)
        server.url                             # http://127.0.0.1:PORT/
    serve(run, host=..., port=...)             # the command: serves until Ctrl-C

Binds to 127.0.0.1 unless told otherwise; uploads are limited in size before they are parsed,
and files are read only from what was uploaded (plus the example images copied at start).
Needs the `serve` extra: pip install 'transferlab[serve]'.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from transferlab.errors import TransferlabError

PUBLIC_HOSTS = ("0.0.0.0", "::", "")


class ServeError(TransferlabError):
    """The server cannot start: a missing extra, a port in use, a bad option."""


def requirements() -> None:
    """Gradio, FastAPI and uvicorn importable, without their telemetry; else one line."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    missing = []
    for package, module in (("gradio", "gradio"), ("fastapi", "fastapi"), ("uvicorn", "uvicorn"),
                            ("python-multipart", "python_multipart")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise ServeError(f"transferlab serve needs {', '.join(missing)}: pip install 'transferlab[serve]'")


def check_port(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ServeError(f"--port {port} must be between 0 and 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            taken = exc.errno in (98, 48, 10048)  # EADDRINUSE on Linux, macOS, Windows
            raise ServeError(f"cannot listen on {host}:{port}: "
                             + ("the port is in use; choose another with --port" if taken
                                else f"{exc.strerror or exc}; check --host")) from None


def build_app(predictor, *, max_upload_mb: float, examples: list[Path], example_dir: Path | None):
    """The ASGI application: the JSON routes first, the Gradio app mounted at /."""
    import gradio as gr

    from transferlab.serve.api import build_api
    from transferlab.serve.ui import build_ui

    api = build_api(predictor, int(max_upload_mb * 2**20))
    return gr.mount_gradio_app(api, build_ui(predictor, examples), path="/", max_file_size=int(max_upload_mb * 2**20),
                               allowed_paths=[str(example_dir)] if example_dir else [], show_error=True,
                               ssr_mode=False)


class Server:
    """The app and API of a run on host:port (port 0: any free port), in a background thread."""

    def __init__(self, run: str | Path, *, host: str = "127.0.0.1", port: int = 7860, engine: str = "auto",
                 max_upload_mb: float = 20.0, device: str | None = None):
        if not max_upload_mb > 0:
            raise ServeError(f"--max-upload-mb {max_upload_mb} must be positive")
        requirements()
        if port:
            check_port(host, port)
        import uvicorn

        from transferlab.serve.predictor import Predictor

        self.predictor = Predictor(run, engine=engine, device=device)
        self.example_dir = Path(tempfile.mkdtemp(prefix="transferlab-serve-"))
        examples = self.predictor.examples(self.example_dir)
        app = build_app(self.predictor, max_upload_mb=max_upload_mb, examples=examples, example_dir=self.example_dir)
        self.host = host
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=5))
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in PUBLIC_HOSTS else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def start(self, timeout: float = 60.0) -> Server:
        self.thread = threading.Thread(target=self.server.run, name="transferlab-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServeError(f"the server did not start on {self.host} (is the port free?)")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        shutil.rmtree(self.example_dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(run: str | Path, *, host: str = "127.0.0.1", port: int = 7860, engine: str = "auto",
          max_upload_mb: float = 20.0) -> None:
    """Serve until interrupted, saying where and how."""
    from transferlab.console import info, warn

    if host in PUBLIC_HOSTS:
        warn(f"--host {host or '0.0.0.0'}: the app is reachable from other machines on your network, with no "
             "login; serve on 127.0.0.1 (the default) unless that is what you want")
    server = Server(run, host=host, port=port, engine=engine, max_upload_mb=max_upload_mb)
    try:
        server.start()
        info(f"serving {server.predictor.run} on {server.predictor.engine_name}: open {server.url} "
             f"(JSON API: curl -F image=@photo.jpg {server.url}api/predict); Ctrl-C stops")
        while server.thread.is_alive():
            server.thread.join(0.5)
    except KeyboardInterrupt:
        info("stopped")
    finally:
        server.stop()
