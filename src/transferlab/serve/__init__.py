"""`transferlab serve RUN`: a trained run as a web app (Gradio) and a JSON API (FastAPI), one
process, one model.

    with Server(run, port=0) as server:       # a server in a background thread (tests, notebooks)
        server.url                             # http://127.0.0.1:PORT/
    serve(run, host=..., port=...)             # the command: serves until Ctrl-C or SIGTERM

Binds to 127.0.0.1 unless told otherwise; uploads are limited in size before they are parsed,
and in pixels before they are decoded. Everything the app writes (Gradio's uploads and answers,
the example images) lives in one private folder per server, swept while it serves and removed
when it stops, and files are read only from there. Needs the `serve` extra: pip install
'transferlab[serve]'.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.serve.ui import KEEP_S

PUBLIC_HOSTS = ("0.0.0.0", "::", "")
MAX_PIXELS = 40_000_000  # the default pixel limit of an upload (--max-pixels): a photo, not a scan
FOLDER_MB = 512  # what the app wrote is deleted after ui.KEEP_S, and the oldest first once it holds more than this
SWEEP_S = 5  # checked this often
GRADIO_ENV = ("GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE")  # where Gradio writes, and serves from


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


def malformed_body(request, exc):
    """A Gradio route's body that is not what it takes: one line, not FastAPI's dump of pydantic's errors
    (which echoes the input)."""
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": 'malformed request: send a JSON object with "data", the list of the '
                                   "function's inputs"}, status_code=422)


def build_app(predictor, *, max_upload_mb: float, examples: list[Path], folder: Path):
    """The ASGI application (the JSON routes first, the Gradio app mounted at /) and the Gradio app."""
    import gradio as gr

    from transferlab.serve.api import build_api
    from transferlab.serve.ui import build_ui

    from fastapi.exceptions import RequestValidationError

    max_bytes = int(max_upload_mb * 2**20)
    api = build_api(predictor, max_bytes)
    blocks = build_ui(predictor, examples, folder)
    # show_error off: an exception nobody meant for a user is not quoted to them (a gr.Error's message is
    # shown whatever show_error says; ui.plain_input_errors turns Gradio's own input checks into gr.Errors)
    app = gr.mount_gradio_app(api, blocks, path="/", max_file_size=max_bytes, show_error=False, ssr_mode=False,
                              run_history=False, app_kwargs={"exception_handlers": {
                                  RequestValidationError: malformed_body}})
    # Gradio checks that an input file was uploaded (rather than any path the server can read) only
    # once `has_launched` is set: launch() sets it, mount_gradio_app does not
    blocks.has_launched = True
    return app, blocks


class Server:
    """The app and API of a run on host:port (port 0: any free port), in a background thread.

    Gradio takes its folder from the environment (GRADIO_ENV), so a server points it at its own
    while it runs: of several servers in one process, the last one started takes Gradio uploads
    (the others refuse them, never read elsewhere)."""

    def __init__(self, run: str | Path, *, host: str = "127.0.0.1", port: int = 7860, engine: str = "auto",
                 max_upload_mb: float = 20.0, max_pixels: int = MAX_PIXELS):
        if not max_upload_mb > 0:
            raise ServeError(f"--max-upload-mb {max_upload_mb} must be positive")
        if not (isinstance(max_pixels, int) and max_pixels >= 1):
            raise ServeError(f"--max-pixels {max_pixels} must be a whole number of at least 1")
        if port:
            check_port(host, port)
        self.folder = Path(tempfile.mkdtemp(prefix="transferlab-serve-")).resolve()
        self.environ = {name: os.environ.get(name) for name in GRADIO_ENV}
        os.environ.update(dict.fromkeys(GRADIO_ENV, str(self.folder / "gradio")))  # before Gradio is imported
        self.stopping, self.thread, self.sweeper = threading.Event(), None, None
        self.keep_s, self.max_bytes, self.every_s = KEEP_S, FOLDER_MB * 2**20, SWEEP_S
        try:
            from transferlab.serve.predictor import Predictor, example_images

            # the model first (a wrong run folder is one line from load_model), then Gradio's seconds of imports
            self.predictor = Predictor(run, engine=engine, max_pixels=max_pixels)
            requirements()
            import uvicorn

            examples = example_images(self.predictor.run, self.predictor.model.meta.get("source"),
                                      self.folder / "examples")
            app, self.blocks = build_app(self.predictor, max_upload_mb=max_upload_mb, examples=examples,
                                         folder=self.folder)
        except BaseException:
            self.release()
            raise
        self.kept = {str(path) for path in self.folder.rglob("*")}  # the examples and Gradio's copies of them
        self.host = host
        from transferlab.serve.protocol import KEEP_ALIVE_S, GuardedH11Protocol

        # log_config=None: uvicorn's dictConfig would close every logging handler of the process (an
        # embedding app's, absl's on pytest's capture), and its levels are set without it
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", log_config=None,
                                                    lifespan="on", timeout_graceful_shutdown=5,
                                                    http=GuardedH11Protocol, timeout_keep_alive=KEEP_ALIVE_S))

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in PUBLIC_HOSTS else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def start(self, timeout: float = 60.0) -> Server:
        try:
            self.thread = threading.Thread(target=self.server.run, name="transferlab-serve", daemon=True)
            self.thread.start()
            deadline = time.monotonic() + timeout
            while not self.server.started:
                if not self.thread.is_alive() or time.monotonic() > deadline:
                    raise ServeError(f"the server did not start on {self.host} (is the port free?)")
                time.sleep(0.05)
        except BaseException:  # Ctrl-C included: nothing is left behind
            self.stop()
            raise
        self.sweeper = threading.Thread(target=self.sweep_until_stopped, name="transferlab-sweep", daemon=True)
        self.sweeper.start()
        return self

    def sweep_until_stopped(self) -> None:
        while not self.stopping.wait(self.every_s):
            self.sweep()

    def sweep(self) -> None:
        """Delete what the app wrote more than keep_s ago, then the oldest of the rest beyond
        max_bytes, then emptied folders; the examples stay."""
        now, files, folders, gone = time.time(), [], [], set()
        for root, dirs, names in os.walk(self.folder, topdown=False):
            for found, entries in ((files, names), (folders, dirs)):
                for path in (os.path.join(root, name) for name in entries):
                    with contextlib.suppress(OSError):  # gone meanwhile
                        if path not in self.kept:
                            found.append(((info := os.lstat(path)).st_ctime, info.st_size, path))
        total = 0
        for created, size, path in sorted(files, reverse=True):  # newest first
            total += size
            if now - created > self.keep_s or total > self.max_bytes:
                with contextlib.suppress(OSError):
                    os.remove(path)
                    gone.add(path)
        for changed, _, path in folders:  # one just made for an upload is left alone
            if now - changed > self.every_s:
                with contextlib.suppress(OSError):
                    os.rmdir(path)  # only an empty one goes
        for written in getattr(self.blocks, "temp_file_sets", []):  # Gradio's own list of its files
            written -= gone

    def release(self) -> None:
        """Remove the folder; Gradio's environment as it was, unless a later server took it."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if os.environ.get(GRADIO_ENV[0]) == str(self.folder / "gradio"):
            for name, value in self.environ.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def stop(self) -> None:
        self.stopping.set()
        self.server.should_exit = True
        for thread in (self.thread, self.sweeper):
            if thread is not None:
                thread.join(10)
        self.predictor.workers.shutdown(wait=False, cancel_futures=True)
        self.release()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(run: str | Path, *, host: str = "127.0.0.1", **options) -> None:
    """Serve until Ctrl-C or SIGTERM (a service manager's stop), saying where and how; either
    stops the server and removes its folder. `options`: those of Server."""
    from transferlab.console import info, warn

    if host in PUBLIC_HOSTS:
        warn(f"--host {host or '0.0.0.0'}: the app is reachable from other machines on your network, with no "
             "login; serve on 127.0.0.1 (the default) unless that is what you want")
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM is a Ctrl-C from here on
    try:
        with Server(run, host=host, **options) as server:
            info(f"serving {server.predictor.run} on {server.predictor.engine_name}: open {server.url} "
                 f"(JSON API: curl -F image=@photo.jpg {server.url}api/predict); Ctrl-C stops")
            while server.thread.is_alive():
                server.thread.join(0.5)
    except KeyboardInterrupt:
        info("stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
