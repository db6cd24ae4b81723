"""The checks behind CSRF protection and sign-in redirects (no I/O)."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection

from parley_gateway.csrf import check_same_origin, same_origin
from parley_gateway.errors import ApiError
from parley_gateway.oidc import group_roles
from parley_gateway.routes.accounts import safe_next


def _connection(**headers: str) -> HTTPConnection:
    raw = [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return HTTPConnection({"type": "http", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"host": "chat.example.com", "origin": "https://chat.example.com"}, True),
        ({"host": "chat.example.com", "origin": "http://chat.example.com"}, True),  # TLS proxy
        ({"host": "chat.example.com", "referer": "https://chat.example.com/c/1"}, True),
        ({"host": "chat.example.com", "origin": "https://evil.example"}, False),
        ({"host": "chat.example.com", "origin": "https://chat.example.com.evil.example"}, False),
        ({"host": "chat.example.com:8080", "origin": "https://chat.example.com"}, False),
        ({"host": "chat.example.com", "origin": "null"}, False),
        ({"host": "chat.example.com"}, False),
        ({"origin": "https://chat.example.com"}, False),
    ],
)
def test_same_origin(headers: dict[str, str], expected: bool) -> None:
    assert same_origin(_connection(**headers)) is expected


def test_safe_methods_need_no_origin() -> None:
    check_same_origin(_connection(host="a.example"), "GET")
    with pytest.raises(ApiError) as refused:
        check_same_origin(_connection(host="a.example"), "DELETE")
    assert refused.value.status == 403
    assert refused.value.type == "csrf_refused"


@pytest.mark.parametrize("target", ["/", "/chats?limit=5", "/c/abc#x", "/a//b"])
def test_next_on_this_site(target: str) -> None:
    assert safe_next(target) == target


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example",
        "//evil.example",
        "/\\evil.example",
        "\\\\evil",
        "evil.example",
        "javascript:alert(1)",
        "/ok\r\nSet-Cookie: x=1",
        "/\tx",
        "",
    ],
)
def test_next_elsewhere_is_refused(target: str) -> None:
    with pytest.raises(ApiError) as refused:
        safe_next(target)
    assert refused.value.status == 400


def test_group_roles() -> None:
    assert group_roles("a=admin, b = viewer") == {"a": "admin", "b": "viewer"}
    assert group_roles("") == {}
    with pytest.raises(ValueError, match="group=role"):
        group_roles("a=owner")
