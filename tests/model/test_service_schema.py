"""A bounded schemathesis run against the OpenAPI document the running service publishes
(``/docs.json``): every route, called with an API key, with valid and invalid data from
schemathesis's coverage phase (boundaries, missing and unknown fields, wrong types, other
methods and media types) and fuzzing phase, under a fixed seed. Every check schemathesis
has is on: no 5xx, every status and body as documented (response conformance), valid
data accepted and invalid data refused, auth enforced where the document says so."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES

from bespoke.serving.local import LOG_FILE, start_local_service, stop_local_service

load_all_checks()  # the OpenAPI checks register themselves on import

#: Fixed, so every run sends the same requests.
SEED = 20261126
#: Fuzzed requests per route; the coverage phase adds its own deterministic cases.
FUZZED_PER_ROUTE = 50
#: The malformed media type schemathesis's coverage phase probes every body with.
MULTIPART_WITHOUT_BOUNDARY = "multipart/form-data"


@pytest.fixture(scope="module")
def fuzzed_service(
    prepared_service_home: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """A server of this module's own: the fuzzer records consent decisions and asks for
    deletions of whoever its ids happen to name, which no other test may see."""
    prepared, key = prepared_service_home
    home = tmp_path_factory.mktemp("fuzzed-home")
    shutil.copytree(prepared, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOG_FILE))
    url, process = start_local_service(home)
    try:
        yield url, key
    finally:
        stop_local_service(process)


@pytest.fixture(scope="module")
def api_schema(fuzzed_service: tuple[str, str]) -> schemathesis.BaseSchema:
    url, key = fuzzed_service
    config = SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            # Both ways of presenting the key, so that schemathesis's auth checks remove
            # or spoil each and see it refused (it would invent a Bearer value otherwise).
            "headers": {"X-API-Key": key, "Authorization": f"Bearer {key}"},
            "request-timeout": 10,
            "generation": {
                "mode": "all",  # valid and invalid requests
                "max-examples": FUZZED_PER_ROUTE,
                "database": "none",  # no examples replayed from earlier runs
            },
            "phases": {"examples": {"enabled": False}, "stateful": {"enabled": False}},
            # 413 is how the service refuses a body over its size limit, or more than
            # 1,000 events: a rejection like 422, which schemathesis's list lacks.
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
                }
            },
        }
    )
    return schemathesis.openapi.from_url(f"{url}/docs.json", config=config)


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 reads and rewrites ``Node._nodeid`` to name each operation's
    subtest; pytest 9.2 keeps the id elsewhere. Give it the attribute it expects."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_route_answers_as_its_document_says(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=CHECKS.get_all())


def test_the_document_lists_every_route_and_status(api_schema: schemathesis.BaseSchema) -> None:
    paths = api_schema.raw_schema["paths"]
    assert api_schema.raw_schema["openapi"].startswith("3.1")
    assert {"/v1/recommend", "/v1/personalize", "/v1/events", "/v1/profiles",
            "/v1/profiles/{id}", "/v1/consent", "/v1/privacy/deletions",
            "/v1/privacy/deletions/{id}", "/healthz", "/readyz", "/metrics"} <= set(paths)  # fmt: skip
    for path, methods in paths.items():
        for operation in methods.values():
            if path.startswith("/v1/"):
                assert {"200", "401", "403", "422"} <= set(operation["responses"]), path
            if "requestBody" in operation:
                assert {"413", "415"} <= set(operation["responses"]), path
    schemas = api_schema.raw_schema["components"]["schemas"]
    nullable = schemas["PersonalizeResponse"]["properties"]["variant"]["anyOf"]
    assert {"type": "null"} in nullable


def test_a_malformed_content_type_is_not_a_server_error(
    api_schema: schemathesis.BaseSchema, fuzzed_service: tuple[str, str]
) -> None:
    url, key = fuzzed_service
    routes = sorted(
        path for path, methods in api_schema.raw_schema["paths"].items() if "post" in methods
    )
    assert {"/v1/recommend", "/v1/events", "/v1/profiles"} <= set(routes)
    headers = {"X-API-Key": key, "Content-Type": MULTIPART_WITHOUT_BOUNDARY}
    statuses = {
        route: httpx.post(f"{url}{route}", content=b"{}", headers=headers, timeout=30).status_code
        for route in routes
    }
    assert set(statuses.values()) == {415}, statuses  # refused before BentoML parses it
