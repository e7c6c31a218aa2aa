"""The service's own page: static files shipped in the package (ppsvd/serve/static/), and the one
stream it listens to.

    GET /                     the page (index.html): submit, jobs, the pipeline's lanes, the player
    GET /static/{file}        its script and style sheet (no build step, nothing fetched from elsewhere)
    GET /v1/service/events    server-sent events: `service` (GET /v1/service's view, and the
                              server's clock as server_time) whenever a lane or the queue moves,
                              `video` (a video object) whenever one of the latest jobs changes,
                              `deleted` ({id}) when one is deleted

The page and its files are open (they hold no data); everything it shows comes from /v1 routes,
which check the API key as for any client: the page sends it as `Authorization: Bearer` from
fetch(), the event stream included (read with fetch, as EventSource cannot send headers), so
the key never appears in a URL or a server log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ppsvd.serve.service import Service

STATIC = Path(str(files("ppsvd.serve") / "static"))
WINDOW = 50
"""The stream follows the latest this many jobs (the page's table)."""
EVERY_S = 0.1
"""The stream's pace: the monitor reads the lanes ten times a second, no news comes faster."""
PAGE_HEADERS = {
    # Nothing but this server's own files: no inline script, no other origin (an offline cluster
    # has none anyway); videos and thumbnails arrive as blob: URLs made from authorised fetches.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def page_routes() -> list:
    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    return [
        Route("/", index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


async def service_events(service: Service) -> AsyncIterator[dict[str, str]]:
    """What the page shows, as it changes: checked ten times a second, sent only when it moved
    (a lane, a job, the queue). Ends once the service stopped."""
    seen: tuple[int, int] | None = None
    overview: dict[str, Any] | None = None
    sent: dict[str, dict[str, Any]] = {}
    while True:
        now = (service.state.version, service.jobs.changes)
        if now != seen:
            seen = now
            latest, videos, deleted = await run_in_threadpool(_look, service, set(sent))
            if latest != overview:
                overview = latest
                yield {"event": "service", "data": json.dumps({**latest, "server_time": time.time()})}
            for video in videos:
                if sent.get(video["id"]) != video:
                    sent[video["id"]] = video
                    yield {"event": "video", "data": json.dumps(video)}
            for job_id in set(sent) - {video["id"] for video in videos}:
                sent.pop(job_id)  # deleted, or older than the window now: the stream stops following it
                if job_id in deleted:
                    yield {"event": "deleted", "data": json.dumps({"id": job_id, "deleted": True})}
            if latest["phase"] in ("stopped", "failed"):
                return
        await asyncio.sleep(EVERY_S)


def _look(service: Service, known: set[str]) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """The overview, the latest jobs (oldest first) and which of `known` were deleted (blocking: SQLite)."""
    overview = service.overview()
    videos = list(reversed(service.page(None, WINDOW, "desc")["data"]))
    present = {video["id"] for video in videos}
    deleted = [job_id for job_id in known - present if service.jobs.get(job_id) is None]
    return overview, videos, deleted
