"""A bounded schemathesis run against the OpenAPI document the running service publishes
(``/docs.json``): every ``/v1`` route, called with an API key, with valid and invalid
data from schemathesis's coverage phase (boundaries, missing and unknown fields, wrong
types, other methods and media types) and fuzzing phase, under a fixed seed. Nothing may
answer with a 5xx."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

#: Fixed, so every run sends the same requests.
SEED = 20261126
#: Fuzzed requests per route; the coverage phase adds its own deterministic cases.
FUZZED_PER_ROUTE = 50
#: The malformed media type schemathesis's coverage phase probes every body with.
MULTIPART_WITHOUT_BOUNDARY = "multipart/form-data"


@pytest.fixture(scope="module")
def api_schema(service: tuple[str, str]) -> schemathesis.BaseSchema:
    url, key = service
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"X-API-Key": key},
            "request-timeout": 10,
            "generation": {
                "mode": "all",  # valid and invalid requests
                "max-examples": FUZZED_PER_ROUTE,
                "database": "none",  # no examples replayed from earlier runs
            },
            "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
        }
    )
    return schemathesis.openapi.from_url(f"{url}/docs.json", config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 reads and rewrites ``Node._nodeid`` to name each operation's
    subtest; pytest 9.2 keeps the id elsewhere. Give it the attribute it expects."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema").include(path_regex=r"^/v1/")


@schema.parametrize()
def test_no_v1_route_answers_with_a_server_error(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])


def test_a_malformed_content_type_is_not_a_server_error(
    api_schema: schemathesis.BaseSchema, service: tuple[str, str]
) -> None:
    url, key = service
    routes = sorted(path for path in api_schema.raw_schema["paths"] if path.startswith("/v1/"))
    assert {"/v1/recommend", "/v1/events", "/v1/profiles"} <= set(routes)
    headers = {"X-API-Key": key, "Content-Type": MULTIPART_WITHOUT_BOUNDARY}
    statuses = {
        route: httpx.post(f"{url}{route}", content=b"{}", headers=headers, timeout=30).status_code
        for route in routes
    }
    assert set(statuses.values()) == {415}, statuses  # refused before BentoML parses it
