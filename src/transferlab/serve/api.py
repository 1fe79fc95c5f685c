"""The plain JSON API of `transferlab serve` (FastAPI), beside the Gradio app:

    POST /api/predict   multipart field `image` (curl -F image=@x.png), optional field `top_k`
                        -> {"file", "top": [{"class", "probability"}...], "engine"} (a multi-label model:
                           also "labels", those predicted, and each label's "predicted" and "threshold")
    GET  /api/info      classes, model, engine and the model card
    GET  /api/health    {"status": "ok"}
    GET  /report        the run's report.html
    (Gradio's /gradio_api/process_recording answers 404: the app records nothing)

Errors are JSON {"error": "..."}: 400 malformed request, 404 no such route, 405 a wrong method
(with Allow), 408 a body that did not arrive within 30 s, 413 too large (body or pixels), 415 not
an image, 422 an image that cannot be used, 503 busy. A body declared over the limit is refused
before a byte of it is read; one that streams past it, as soon as it does.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI, Request  # serve/ is imported only once the serve extra is known to be there
from fastapi.responses import FileResponse, JSONResponse

STATUS = {"too-large": 413, "not-an-image": 415, "busy": 503}  # BadImage.kind -> HTTP status; any other: 422
BODY_TIMEOUT_S = 30.0  # an /api/ request's body must have arrived in full within this, else 408
DRAIN_LIMIT, DRAIN_IDLE_S, DRAIN_S = 64 * 2**20, 1.0, 5.0  # an oversized body is read off: at most so many bytes,
# until it pauses so long, for at most so long


def error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"connection": "close"} if close else None)


class BodySizeLimit:
    """ASGI middleware for /api/: a body declared larger than `max_bytes` gets 413 at once, before a
    byte of it is read, and one that streams past it (chunked) as soon as it does; a body still
    arriving BODY_TIMEOUT_S after its headers gets 408. Either closes the connection, so nothing beyond
    the limit is ever held or awaited. Starlette's own form limits do not cover file parts. (The
    timeout is read per request: BODY_TIMEOUT_S.)"""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        too_big = error(413, f"upload larger than the server's limit of {self.max_bytes / 2**20:g} MB "
                             "(transferlab serve --max-upload-mb)", close=True)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            # a client that waits for "100 Continue" (curl) is told at once and sends nothing; one that sends its
            # body regardless is read off first (until it pauses, at most DRAIN_LIMIT), so closing the connection
            # does not reset it before it hears the answer
            if headers.get(b"expect", b"").lower() != b"100-continue":
                if await drained(receive) is None:
                    return None
            return await too_big(scope, receive, send)
        loop, timeout = asyncio.get_running_loop(), BODY_TIMEOUT_S
        deadline, chunks, total, more = loop.time() + timeout, [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                late = error(408, f"the request body did not arrive within {timeout:g} s", close=True)
                return await late(scope, receive, send)
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            total += len(body)
            more = message.get("more_body", False)
            if total > self.max_bytes:
                if more and await drained(receive) is None:
                    return None
                return await too_big(scope, receive, send)
            chunks.append(body)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


async def drained(receive) -> bool | None:
    """Read a body off and drop it, until it ends, pauses for DRAIN_IDLE_S, passes DRAIN_LIMIT or takes
    DRAIN_S (a trickle is not waited for): whether it ended (None: the client went away)."""
    loop = asyncio.get_running_loop()
    total, deadline = 0, loop.time() + DRAIN_S
    while total <= DRAIN_LIMIT:
        try:
            message = await asyncio.wait_for(receive(), min(DRAIN_IDLE_S, max(0.0, deadline - loop.time())))
        except asyncio.TimeoutError:
            return False
        if message["type"] == "http.disconnect":
            return None
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


def build_api(predictor, max_bytes: int):
    """The FastAPI application with the JSON routes (the Gradio app is mounted on it after)."""
    from transferlab.data.decode import BadImage

    api = FastAPI(title=f"transferlab: {predictor.run.name}", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(BodySizeLimit, max_bytes=max_bytes)

    @api.get("/api/health")
    def health():
        return {"status": "ok"}

    @api.post("/gradio_api/process_recording")  # Gradio's screen recording (ffmpeg on uploads): not used here
    def no_recording():
        return error(404, "this app records nothing")

    @api.get("/api/info")
    def info():
        return {"classes": predictor.classes, "engine": predictor.engine_name, "card": predictor.card}

    @api.get("/report")
    def report():
        path = predictor.run / "report.html"
        if not path.is_file():
            return error(404, "this run has no report.html (trained with train.report=false)")
        return FileResponse(path, media_type="text/html")

    @api.post("/api/predict")
    async def predict(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(415, "send the image as multipart/form-data in a field named 'image' "
                              "(curl -F image=@photo.jpg URL/api/predict)")
        try:
            form = await request.form(max_files=1, max_fields=4)
        except Exception as exc:  # malformed multipart, too many parts
            return error(400, f"malformed multipart body: {str(exc)[:200]}")
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                return error(400, "no file in the field 'image' (curl -F image=@photo.jpg URL/api/predict)")
            top_k = form.get("top_k", "5")
            if not (isinstance(top_k, str) and re.fullmatch("[0-9]{1,6}", top_k) and int(top_k) >= 1):
                return error(400, f"top_k must be a whole number from 1 to 999999, not {top_k[:20]!r}")
            data = await upload.read()
            name = upload.filename
        finally:
            await form.close()
        try:  # the model's work off the event loop, so health checks and the app stay responsive
            answer = await asyncio.to_thread(predictor.predict, data, int(top_k))
        except BadImage as exc:
            return error(STATUS.get(exc.kind, 422), f"{name or 'image'}: {exc}")
        return {"file": name, **answer, "engine": predictor.engine_name}

    @api.api_route("/api/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
                   include_in_schema=False)
    def elsewhere(request: Request):
        """Under /api/, a wrong method gets 405 with Allow and an unknown route 404, both as JSON (else the
        Gradio app mounted at / answers them with its own 404)."""
        path = request.url.path
        allowed = sorted({m for r in api.routes if getattr(r, "path", None) == path for m in r.methods or ()})
        if allowed:
            return JSONResponse({"error": f"{path} answers {' or '.join(allowed)}, not {request.method}"},
                                status_code=405, headers={"Allow": ", ".join(allowed)})
        return error(404, f"no route {path} (the JSON API: POST /api/predict, GET /api/info, GET /api/health)")

    return api
