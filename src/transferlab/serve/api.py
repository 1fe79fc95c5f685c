"""The plain JSON API of `transferlab serve` (FastAPI), beside the Gradio app:

    POST /api/predict   multipart field `image` (curl -F image=@x.png), optional field `top_k`
                        -> {"file", "top": [{"class", "probability"}...], "engine"}
    GET  /api/info      classes, model, engine and the model card
    GET  /api/health    {"status": "ok"}
    GET  /report        the run's report.html
    (Gradio's /gradio_api/process_recording answers 404: the app records nothing)

Errors are JSON {"error": "..."}: 400 malformed request, 413 too large (body or pixels),
415 not an image, 422 an image that cannot be used. The body limit is enforced while the body
streams in, before anything is parsed.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import FastAPI, Request  # serve/ is imported only once the serve extra is known to be there
from fastapi.responses import FileResponse, JSONResponse

STATUS = {"too-large": 413, "not-an-image": 415, "busy": 503}  # BadImage.kind -> HTTP status; any other: 422
DRAIN_LIMIT = 64 * 2**20  # an oversized body is read and dropped up to this, then the connection is cut


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodySizeLimit:
    """ASGI middleware: a request under /api/ whose body exceeds `max_bytes` (declared by
    Content-Length or counted as it streams in) gets 413; nothing beyond the limit is ever held
    in memory. Starlette's own form limits do not cover file parts."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        too_big = error(413, f"upload larger than the server's limit of {self.max_bytes / 2**20:g} MB "
                             "(transferlab serve --max-upload-mb)")
        length = dict(scope["headers"]).get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body = message.get("body", b"")
            total += len(body)
            more = message.get("more_body", False)
            if total > self.max_bytes or (declared or 0) > self.max_bytes:
                chunks = []  # the rest is read and dropped (up to DRAIN_LIMIT) so the client hears the 413
                if total > max(DRAIN_LIMIT, self.max_bytes) or not more:
                    return await too_big(scope, receive, send)
                continue
            chunks.append(body)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


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
            top = await asyncio.to_thread(predictor.predict, data, int(top_k))
        except BadImage as exc:
            return error(STATUS.get(exc.kind, 422), f"{name or 'image'}: {exc}")
        return {"file": name, "top": top, "engine": predictor.engine_name}

    return api
