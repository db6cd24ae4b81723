"""Schemathesis against the running gateway, from its own OpenAPI schema: every operation, valid
and invalid inputs (over a thousand cases), and no answer may be a 5xx, undocumented, or unlike
the schema that documents it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS
from schemathesis.core.failures import FailureGroup

from parley_devstack.platform import Platform
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

EXAMPLES_PER_MODE = 40
MIN_CASES = 1000
# What the answers must satisfy, besides being answered at all.
CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
# The tiny model answers fast only when asked for a few tokens: turns without a budget get a
# small one, and this gateway refuses more than a few (a 422 is as good a case as any).
MAX_TOKENS = 4
TURNS = {"/chat", "/chat/{chat_id}/completion", "/v1/chat/completions"}


@pytest.fixture(scope="module")
def gateway(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"MAX_TOKENS_LIMIT": str(MAX_TOKENS), "COMPLETION_TIMEOUT_S": "30"}
    with extra_gateways(platform, tmp_path_factory.mktemp("fuzz"), 1, env) as (process,):
        yield gateway_url(process)


def _small_budget(path: str, body: Any) -> None:
    budgets = {"max_tokens", "max_completion_tokens"}
    if path in TURNS and isinstance(body, dict) and not budgets & set(body):
        body["max_tokens"] = MAX_TOKENS


@dataclass
class Tally:
    calls: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _fuzz(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    *,
    base_url: str,
    key: str,
    checks: list[Any],
    tally: Tally,
) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        _small_budget(operation.path, case.body)
        headers = {**(case.headers or {}), "Authorization": key}
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        tally.calls[label] = tally.calls.get(label, 0) + 1
        tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, FailureGroup) as exc:
            tally.failures.append(f"{label} [{mode.value}]: {exc}\n{case.as_curl_command()}")

    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid (no parameters, no body): only valid requests exist.
        assert mode is GenerationMode.NEGATIVE, f"{label}: no valid request could be generated"


def test_fuzz_every_operation(gateway: str, platform: Platform, new_user: Any) -> None:
    user_key = new_user("fuzzer").headers["Authorization"]
    # DELETE /account may well delete its caller: a user of its own, not the fuzzer.
    deleted_key = new_user("fuzzed-deletion").headers["Authorization"]
    admin_key = f"Bearer {platform.admin_api_key}"
    raw = httpx.get(f"{gateway}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(raw)
    checks = CHECKS.get_by_names(list(CHECK_NAMES))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14

    tally = Tally()
    started = time.monotonic()
    for operation in operations:
        security = raw["paths"][operation.path][operation.method.lower()].get("security", [])
        only_admin = all(set(entry) == {"AdminKey"} for entry in security)
        # The user administration takes a tenant's admin or the admin key: the admin key.
        key = admin_key if only_admin or operation.path.startswith("/admin/") else user_key
        if operation.path == "/account":
            key = deleted_key
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, base_url=gateway, key=key, checks=checks, tally=tally)
    took = time.monotonic() - started
    total = sum(tally.calls.values())
    print(f"\n{total} cases in {took:.0f} s; statuses {dict(sorted(tally.statuses.items()))}")
    assert not tally.failures, "\n\n".join(tally.failures[:10])
    assert total >= MIN_CASES
    assert set(tally.calls) == {f"{o.method.upper()} {o.path}" for o in operations}
    assert not any(status >= 500 for status in tally.statuses)
    # Valid inputs got through, too: not everything was refused.
    assert sum(n for status, n in tally.statuses.items() if status < 300) >= 100
