"""The HTTP API (Starlette), OpenAI's videos API so the official `openai` client works unchanged.

    POST   /v1/videos                multipart (input_reference file + fields) or JSON (image as a data: URL)
    GET    /v1/videos                list: after, limit, order
    GET    /v1/videos/{id}           the video object (status, progress, stage, step, queue_position)
    GET    /v1/videos/{id}/content   the MP4; variant=thumbnail the first frame (PNG); variant=latents (safetensors)
    GET    /v1/videos/{id}/events    server-sent events: queue position, stage and step, done
    DELETE /v1/videos/{id}           out of the queue / the pipeline; its files removed
    GET    /v1/models, /v1/service   the served model; the phase and every worker's lane
    GET    /v1/service/events        server-sent events of the service's view and the latest jobs (the page's)
    GET    /metrics                  Prometheus metrics (metrics.py)
    GET    /, /static/...            the service's page (page.py)
    GET    /healthz, /readyz         alive; ready (every stage loaded, not draining)

Every /v1 route, and /metrics, checks the API key when one is set (Authorization: Bearer,
compared in constant time; a Prometheus scrape config gives it as its bearer token). Errors
are OpenAI's error JSON with the right status. A request body is read up to
--max-upload-mb and no further (413), before any parsing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ppsvd.serve.page import page_routes, service_events
from ppsvd.serve.schemas import ApiError, check_job_id, content_variant, list_params
from ppsvd.serve.service import Service

FORM_SLACK_BYTES = 64 * 1024
"""Room for the form fields and multipart framing on top of the image's --max-upload-mb."""
POLL_AFTER_MS = "250"
"""openai-poll-after-ms: how often the openai client's create_and_poll asks (it honours this header)."""
EVENTS_EVERY_S = 0.1
Handler = Callable[[Request], Awaitable[Response]]


def build_app(service: Service) -> Starlette:
    key = service.config.api_key.encode() if service.config.api_key else None

    def api(handler: Handler) -> Handler:
        """A /v1 route (or /metrics): the key first, then the handler; an ApiError becomes OpenAI's error JSON."""

        async def endpoint(request: Request) -> Response:
            try:
                if key is not None:
                    _authorize(request, key)
                return await handler(request)
            except ApiError as exc:
                return _error(exc)

        return endpoint

    async def create(request: Request) -> Response:
        await run_in_threadpool(service.check_accepting)  # 503 before reading a large body
        fields, upload = await _read_job_request(request, service.config.max_upload_bytes)
        video = await run_in_threadpool(service.create, fields, upload)
        return JSONResponse(video)

    async def retrieve(request: Request) -> Response:
        video = await run_in_threadpool(service.video, request.path_params["video_id"])
        headers = {"openai-poll-after-ms": POLL_AFTER_MS} if video["status"] in ("queued", "in_progress") else {}
        return JSONResponse(video, headers=headers)

    async def listing(request: Request) -> Response:
        after, limit, order = list_params(dict(request.query_params))
        return JSONResponse(await run_in_threadpool(service.page, after, limit, order))

    async def delete(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.delete, request.path_params["video_id"]))

    async def content(request: Request) -> Response:
        variant = content_variant(dict(request.query_params))
        path, media_type, name = await run_in_threadpool(service.content, request.path_params["video_id"], variant)
        return FileResponse(path, media_type=media_type, filename=name)

    async def events(request: Request) -> Response:
        video_id = check_job_id(request.path_params["video_id"])
        first = await run_in_threadpool(service.video, video_id)  # 404 now, not inside the stream

        async def stream():
            last = None
            video: dict[str, Any] | None = first
            while True:
                if video is None:
                    yield {"event": "deleted", "data": json.dumps({"id": video_id, "deleted": True})}
                    return
                if video != last:
                    yield {"event": video["status"], "data": json.dumps(video)}
                    last = video
                if video["status"] in ("completed", "failed"):
                    return
                await asyncio.sleep(EVENTS_EVERY_S)
                try:
                    video = await run_in_threadpool(service.video, video_id)
                except ApiError:
                    video = None

        return EventSourceResponse(stream(), ping=15)

    async def models(request: Request) -> Response:
        return JSONResponse(service.models())

    async def overview(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.overview))

    async def overview_events(request: Request) -> Response:
        return EventSourceResponse(service_events(service), ping=15)

    async def metrics(request: Request) -> Response:
        body, content_type = await run_in_threadpool(service.metrics.render, request.headers.get("accept"))
        return Response(body, headers={"Content-Type": content_type})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        state = service.state
        ready = state.ready and not service.pipeline.draining.is_set()
        body = {"status": "ready" if ready else state.phase, "detail": state.detail}
        return JSONResponse(body, status_code=200 if ready else 503)

    routes = [
        Route("/v1/videos", api(create), methods=["POST"]),
        Route("/v1/videos", api(listing), methods=["GET"]),
        Route("/v1/videos/{video_id}", api(retrieve), methods=["GET"]),
        Route("/v1/videos/{video_id}", api(delete), methods=["DELETE"]),
        Route("/v1/videos/{video_id}/content", api(content), methods=["GET"]),
        Route("/v1/videos/{video_id}/events", api(events), methods=["GET"]),
        Route("/v1/models", api(models), methods=["GET"]),
        Route("/v1/service", api(overview), methods=["GET"]),
        Route("/v1/service/events", api(overview_events), methods=["GET"]),
        Route("/metrics", api(metrics), methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        *page_routes(),
    ]
    app = Starlette(routes=routes)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error(ApiError(status, f"no route {request.method} {request.url.path}", code="not_found"))

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)

    async def internal(request: Request, exc: Exception) -> Response:
        return _error(ApiError(500, f"internal error: {type(exc).__name__}: {exc}"))

    app.add_exception_handler(Exception, internal)
    return app


def _authorize(request: Request, key: bytes) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key):
        raise ApiError(
            401,
            "missing or wrong API key: send Authorization: Bearer <key> (the openai client's api_key)",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _error(exc: ApiError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_job_request(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """The fields and the uploaded image of a POST /v1/videos, the body read up to its limit."""
    limit = max_bytes + FORM_SLACK_BYTES
    too_large = ApiError(
        413,
        f"the request is larger than this server's {max_bytes / 2**20:g} MiB (--max-upload-mb); send a smaller image",
        code="request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            fields = json.loads(body)
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON ({exc})") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "the body must be a JSON object of the job's fields")
        return fields, None
    if kind not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(
            400,
            f"content type {kind or 'none'!r}: send multipart/form-data (the image as input_reference) "
            "or application/json",
        )
    whole = bytes(body)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": whole, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=64, max_part_size=64 * 1024)
    except Exception as exc:  # python-multipart's and Starlette's parse errors alike
        detail = getattr(exc, "detail", None) or str(exc)
        raise ApiError(400, f"the multipart body could not be read ({detail})") from None
    fields: dict[str, Any] = {}
    upload = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "input_reference":
                raise ApiError(400, f"file field {name!r}: the image goes in the field input_reference", param=name)
            upload = await value.read()
        elif name in fields:
            raise ApiError(400, f"field {name!r} given twice", param=name)
        else:
            fields[name] = value
    await form.close()
    return fields, upload
