"""The reference of ``bench/serving.py``: the service's own route code behind a bare
Starlette app on uvicorn, with none of BentoML's serving layer.

Each worker builds the service class exactly as BentoML builds it
(``Personalization.inner()``: the same @champion models, online store, rules and answer
cache, from the same ``BESPOKE_*`` environment), wraps the same API-key middleware, and
answers ``POST /v1/<api>`` for the model routes (``recommend``, and ``personalize`` where
the service has it) the way BentoML calls them: the body parsed into the route's
``input_spec`` with ``model_validate_json``, the method called with its fields as keyword
arguments, the pydantic answer written with ``model_dump_json``. The call runs inline on
the event loop (as a bare app would, and as the service's coroutine routes do); a
validation error is a 422.

    python bench/bare_app.py --port 8000 [--workers 2] [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

#: The service routes the reference serves: those that call the models.
MODEL_ROUTES = ("recommend", "personalize")


def create_app() -> Any:
    """One worker's app (uvicorn calls this in each worker process)."""
    from pydantic import BaseModel, ValidationError
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from bespoke.serving.middleware import Gateway
    from bespoke.serving.service import Personalization

    service = Personalization.inner()
    routes = []
    for name in MODEL_ROUTES:
        api = Personalization.apis.get(name)
        if api is None:
            continue
        spec = api.input_spec
        method = getattr(service, name)

        async def endpoint(request: Request, spec: Any = spec, method: Any = method) -> Response:
            try:
                data = spec.model_validate_json(await request.body() or b"{}")
            except ValidationError as error:
                detail = error.errors(include_context=False, include_input=False)
                return JSONResponse({"error": str(error), "detail": detail}, status_code=422)
            output = method(**{field: getattr(data, field) for field in type(data).model_fields})
            if inspect.isawaitable(output):  # the service's coroutine routes
                output = await output
            if isinstance(output, Response):  # the route's own answer, as BentoML passes it
                return output
            if isinstance(output, BaseModel):
                return Response(output.model_dump_json(), media_type="application/json")
            return Response(json.dumps(output), media_type="application/json")

        routes.append(Route(api.route, endpoint, methods=["POST"]))

    async def healthz(request: Request) -> Response:
        return Response(b"", status_code=200)

    routes.append(Route("/healthz", healthz))
    return Gateway(Starlette(routes=routes))


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent)
    # Worker processes import this module by name: make its folder importable there too.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, here)
    uvicorn.run(
        "bare_app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=False,
        log_level="warning",
        server_header=False,
    )


if __name__ == "__main__":
    main()
