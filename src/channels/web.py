"""The browser SDK and the demo storefront, as ASGI apps the service mounts.

``/sdk/v1/bespoke.js`` is ``sdk/bespoke.js`` minified once (rjsmin) and sent gzipped to
browsers that accept it; ``/demo`` is a storefront of the served dataset's catalog that
uses it (a publishable key is given as ``/demo?key=bpk_…``). Both need no API key: they
are static code; what they call needs a publishable key.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

#: The SDK's major version, in its path: a breaking change gets a new path.
SDK_PATH = "/v1/bespoke.js"
#: How many catalog items the demo storefront shows.
DEMO_ITEMS = 24


def sdk_source() -> str:
    """The SDK as written (readable, commented)."""
    return resources.files("bespoke.channels").joinpath("sdk", "bespoke.js").read_text()


@lru_cache(maxsize=1)
def sdk_bytes() -> tuple[bytes, bytes]:
    """(minified, minified and gzipped) SDK, built once per process. The leading
    ``/*! … */`` licence comment is kept."""
    from rjsmin import jsmin

    minified = jsmin(sdk_source(), keep_bang_comments=True).encode()
    return minified, gzip.compress(minified, compresslevel=9, mtime=0)


async def _sdk(request: Request) -> Response:
    minified, packed = sdk_bytes()
    headers = {"cache-control": "public, max-age=300", "vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["content-encoding"] = "gzip"
        return Response(packed, media_type="application/javascript", headers=headers)
    return Response(minified, media_type="application/javascript", headers=headers)


def sdk_app() -> Starlette:
    return Starlette(routes=[Route(SDK_PATH, _sdk, methods=["GET"])])


@lru_cache(maxsize=1)
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("bespoke.channels", "sdk"), autoescape=select_autoescape(["html"])
    )


def demo_app(catalog: Callable[[], Mapping[str, Mapping[str, Any]]]) -> Starlette:
    """The storefront, showing the first :data:`DEMO_ITEMS` items of ``catalog()`` (item
    id → title, categories…), read at each request."""

    async def page(request: Request) -> Response:
        items = [{"item_id": item_id, **fields}
                 for item_id, fields in list(catalog().items())[:DEMO_ITEMS]]  # fmt: skip
        html = _templates().get_template("demo.html").render(items=items, sdk="/sdk" + SDK_PATH)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    return Starlette(routes=[Route("/", page, methods=["GET"])])
