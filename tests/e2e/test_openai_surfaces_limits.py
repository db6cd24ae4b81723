"""Rate limits and token accounting on `/v1/embeddings`, `/v1/completions` and `/v1/responses`:
each call counts against the user's requests per minute, embedding tokens against the tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from parley_devstack.platform import Platform
from tests.conftest import eventually
from tests.e2e.extra_gateways import extra_gateways, gateway_url

pytestmark = pytest.mark.e2e

NewUser = Callable[..., httpx.Client]
RPM = 5
TPM = 400
MODEL = "parley-tiny"
EMBEDDING_MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def limited(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "RATE_LIMIT_REQUESTS_PER_MINUTE": str(RPM),
        "RATE_LIMIT_TOKENS_PER_MINUTE": str(TPM),
    }
    with extra_gateways(platform, tmp_path_factory.mktemp("v1-limits"), 1, env) as (gateway,):
        yield gateway_url(gateway)


def _sdk(url: str, user: httpx.Client) -> openai.OpenAI:
    key = user.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_every_new_endpoint_counts_requests(limited: str, new_user: NewUser) -> None:
    sdk = _sdk(limited, new_user("v1-counted"))
    sdk.embeddings.create(model=EMBEDDING_MODEL, input="one")
    sdk.completions.create(model=MODEL, prompt="two", max_tokens=1)
    sdk.responses.create(model=MODEL, input="three", max_output_tokens=1)
    sdk.embeddings.create(model=EMBEDDING_MODEL, input="four")
    sdk.completions.create(model=MODEL, prompt="five", max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        sdk.embeddings.create(model=EMBEDDING_MODEL, input="six")
    with pytest.raises(openai.RateLimitError):
        sdk.completions.create(model=MODEL, prompt="six", max_tokens=1)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.responses.create(model=MODEL, input="six", max_output_tokens=1)
    assert refused.value.response.headers.get("retry-after")


def test_embedding_tokens_count_toward_the_tokens_per_minute(
    limited: str, new_user: NewUser
) -> None:
    sdk = _sdk(limited, new_user("v1-spender"))
    texts = [f"text {i}: " + "many words in a text " * 40 for i in range(3)]
    spent = sdk.embeddings.create(model=EMBEDDING_MODEL, input=texts)
    assert spent.usage.prompt_tokens > TPM

    def refused() -> openai.RateLimitError | None:
        try:
            sdk.embeddings.create(model=EMBEDDING_MODEL, input="hi")
        except openai.RateLimitError as exc:
            return exc
        return None

    error = eventually(refused, timeout=10, what="a 429 for tokens")
    assert f"{TPM} tokens per minute" in error.message
    assert (error.body or {})["type"] == "tokens"  # type: ignore[index]
