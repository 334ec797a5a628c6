"""The HTTP side of each route: read the request, call `service`, shape the response.

`answers_errors` is the one place where failures become responses: an `ApiError` becomes
its status and `{"error", "code"}`, anything else a logged 500 with the same shape, so
no traceback ever reaches a client. Errors are JSON even for browsers. A refusal (4xx) is
logged at WARNING with the client's address (and the host of a URL it asked us to fetch);
a failure (5xx) is logged with its details, and the client gets a generic message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from chalice import Response

from chalicelib import images, pages, service
from chalicelib.errors import ApiError

log = logging.getLogger(__name__)

JSON = {
    "Content-Type": "application/json",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
HTML = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": pages.CSP,
    "X-Content-Type-Options": "nosniff",
}


def answers_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except ApiError as e:
            request = args[0] if args else kwargs.get("request")
            if e.status < 500:
                log.warning(
                    "refused %s %s from %s%s: %s",
                    e.status,
                    e.code,
                    client_address(request),
                    _fetched_host(request),
                    e.message,
                )
            else:
                log.error("failed %s %s: %s", e.status, e.code, e.message)
            return json_response(e.public_body(), e.status)
        except Exception:
            log.exception("unexpected error")
            return json_response({"error": "internal error", "code": "internal_error"}, 500)

    return wrapper


def client_address(request: Any) -> str:
    """The caller's address as API Gateway saw it (the request context's sourceIp)."""
    context = getattr(request, "context", None) or {}
    identity = context.get("identity") or {}
    return str(identity.get("sourceIp") or "unknown")


def _fetched_host(request: Any) -> str:
    """`, host 'x'` for a request that named a URL to fetch, else empty."""
    url = (getattr(request, "query_params", None) or {}).get("image")
    if not url:
        return ""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        host = None
    return f", host {host or url[:100]!r}"


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(body=body, status_code=status, headers=dict(JSON))


def html_response(text: str, status: int = 200) -> Response:
    return Response(body=text, status_code=status, headers=dict(HTML))


def wants_html(request: Any) -> bool:
    """True when the client prefers HTML (a browser), False for `*/*` and JSON clients."""
    accept = (request.headers.get("accept") or "").lower()
    return "text/html" in accept


# Each view serves the stage the API is configured for (`stage=None`: ITSACAT_STAGE,
# production by default), or staging when reached through the /staging routes.


@answers_errors
def index(request: Any, stage: str | None = None) -> Response:
    body = service.ping(stage)
    if wants_html(request):
        shown = stage or service.settings().stage
        return html_response(pages.index_page(body["model"], shown, _links(request, stage)[0]))
    return json_response(body)


@answers_errors
def image_from_url(request: Any, stage: str | None = None) -> Response:
    url = (request.query_params or {}).get("image")
    return _answer(request, service.classify_url(url, stage), stage)


@answers_errors
def image_from_body(request: Any, stage: str | None = None) -> Response:
    prediction = service.classify_body(request.raw_body, request.headers.get("content-type"), stage)
    return _answer(request, prediction, stage)


@answers_errors
def model(request: Any, stage: str | None = None) -> Response:
    return json_response(service.model_info(stage))


def _links(request: Any, stage: str | None) -> tuple[str, str]:
    """(the form's action, the "ask again" link) for a page. At the root they are relative
    (`image`, `./`), whatever prefix the deployed stage adds. Under /staging they are made
    from the request's path, because a browser at `/staging` and one at `/staging/` (the
    same route: API Gateway drops the slash) resolve relative links differently."""
    if stage is None:
        return "image", "./"
    path = str((getattr(request, "context", None) or {}).get("path") or "").rstrip("/")
    if path.endswith("/image"):
        path = path[: -len("/image")]
    if not path.endswith("/staging"):
        return "staging/image", "staging"
    return f"{path}/image", path


def _answer(request: Any, prediction: service.Prediction, stage: str | None) -> Response:
    if wants_html(request):
        thumbnail = images.thumbnail_data_uri(prediction.image)
        shown = stage or service.settings().stage
        page = pages.verdict_page(
            prediction.verdict, thumbnail, prediction.source, shown, _links(request, stage)[1]
        )
        return html_response(page)
    return json_response(prediction.verdict)
