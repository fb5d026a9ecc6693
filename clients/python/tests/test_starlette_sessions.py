"""The Starlette session middleware, serving a real Starlette app (its TestClient, and httpx
over ASGI for concurrent requests) against a real baton."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from conftest import unique
from harness import Baton, eventually
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import baton_client
from baton_client.starlette_sessions import ORDER_KEY, SessionMiddleware


async def view(request: Request) -> JSONResponse:
    return JSONResponse(dict(request.session))


async def update(request: Request) -> JSONResponse:
    request.session.update(await request.json())
    return JSONResponse(dict(request.session))


async def remove(request: Request) -> JSONResponse:
    request.session.pop(request.query_params["key"], None)
    return JSONResponse(dict(request.session))


async def popitem(request: Request) -> JSONResponse:
    request.session.popitem()
    return JSONResponse(dict(request.session))


async def clear(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse({})


async def untouched(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


ROUTES = [
    Route("/view", view),
    Route("/update", update, methods=["POST"]),
    Route("/remove", remove, methods=["POST"]),
    Route("/popitem", popitem, methods=["POST"]),
    Route("/clear", clear, methods=["POST"]),
    Route("/untouched", untouched),
]


def app_of(baton: Baton, routes: list[Route] = ROUTES, **options: Any) -> Starlette:
    middleware = Middleware(SessionMiddleware, target=baton.addr, **options)
    return Starlette(routes=routes, middleware=[middleware])


@pytest.fixture
def http(baton: Baton) -> Iterator[TestClient]:
    with TestClient(app_of(baton)) as client:
        yield client


def _max_age(response: httpx2.Response) -> int | None:
    found = re.search(r"Max-Age=(-?\d+)", response.headers["set-cookie"])
    return int(found.group(1)) if found else None


def _values(session: baton_client.Session) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in session.data.items() if k != ORDER_KEY}


def _lifetime(session: baton_client.Session) -> float:
    return (session.idle_expires_at - session.last_seen_at).total_seconds()


def test_the_cookie_holds_only_the_id_of_a_baton_session(
    http: TestClient, client: baton_client.Client
) -> None:
    assert http.get("/view").json() == {}
    response = http.post("/update", json={"cart": ["book"], "theme": "dark"})
    assert response.json() == {"cart": ["book"], "theme": "dark"}
    session_id = http.cookies["session"]
    stored = client.get_session(session_id, touch=False)
    assert _values(stored) == response.json()
    assert "book" not in session_id and "dark" not in session_id

    assert http.get("/view").json() == {"cart": ["book"], "theme": "dark"}
    assert http.post("/remove?key=cart").json() == {"theme": "dark"}
    assert _values(client.get_session(session_id, touch=False)) == {"theme": "dark"}
    assert client.count_sessions() == 1


def test_the_session_keeps_its_keys_in_insertion_order(http: TestClient) -> None:
    http.post("/update", json={"b": 1, "a": 2, "c": 3})
    assert list(http.get("/view").json()) == ["b", "a", "c"]
    assert list(http.post("/popitem").json()) == ["b", "a"]
    http.post("/remove?key=b")
    http.post("/update", json={"b": 4, "a": 5})
    assert http.get("/view").json() == {"a": 5, "b": 4}
    assert list(http.get("/view").json()) == ["a", "b"]


def test_a_session_lives_max_age_after_the_last_change_like_its_cookie(
    baton: Baton, client: baton_client.Client
) -> None:
    with TestClient(app_of(baton, max_age=10)) as http:
        response = http.post("/update", json={"theme": "dark"})
        assert _max_age(response) == 10
        session_id = http.cookies["session"]
        saved = client.get_session(session_id, touch=False)
        assert _lifetime(saved) == 10

        # Reading sends no cookie and does not move Baton's deadline either. Baton coalesces
        # touches that would move it by under 1 % (0.1 s here): wait past that, so that a
        # touching read would show.
        time.sleep(0.3)
        response = http.get("/view")
        assert "set-cookie" not in response.headers
        assert "cookie" in response.headers["vary"].lower()
        assert client.get_session(session_id, touch=False).idle_expires_at == saved.idle_expires_at
        assert "vary" not in http.get("/untouched").headers

    # A deployment with another max_age applies it at a session's next change.
    with TestClient(app_of(baton, max_age=3600), cookies={"session": session_id}) as http:
        response = http.post("/update", json={"theme": "light"})
        assert _max_age(response) == 3600 and session_id in response.headers["set-cookie"]
        assert _lifetime(client.get_session(session_id, touch=False)) == 3600


def test_a_session_past_its_max_age_ends_in_baton(
    baton: Baton, client: baton_client.Client
) -> None:
    app = app_of(baton, max_age=1)
    with TestClient(app) as http:
        http.post("/update", json={"theme": "dark"})
        session_id = http.cookies["session"]

        def ended() -> bool:
            try:
                client.get_session(session_id, touch=False)
            except baton_client.NotFound:
                return True
            return False

        eventually(ended, "the session ends a second after its last change")
    # Even a client that keeps the cookie past its Max-Age gets nothing.
    with TestClient(app, cookies={"session": session_id}) as replay:
        assert replay.get("/view").json() == {}


@pytest.mark.parametrize("max_age", [0, -1])
def test_a_max_age_already_over_stores_nothing(
    baton: Baton, client: baton_client.Client, max_age: int
) -> None:
    with TestClient(app_of(baton, max_age=max_age)) as http:
        response = http.post("/update", json={"theme": "dark"})
        assert _max_age(response) == max_age
        assert client.count_sessions() == 0


def test_a_browser_session_cookie_lives_until_the_absolute_timeout(
    baton: Baton, client: baton_client.Client
) -> None:
    with TestClient(app_of(baton, max_age=None, absolute_timeout=3600)) as http:
        response = http.post("/update", json={"theme": "dark"})
        assert _max_age(response) is None
        session = client.get_session(http.cookies["session"], touch=False)
        assert _lifetime(session) == 3600
        assert (session.absolute_expires_at - session.created_at).total_seconds() == 3600


def test_clearing_ends_the_session_so_an_old_cookie_is_worthless(
    baton: Baton, http: TestClient, client: baton_client.Client
) -> None:
    http.post("/update", json={"theme": "dark"})
    old_cookie = http.cookies["session"]
    response = http.post("/clear")
    assert "expires=Thu, 01 Jan 1970" in response.headers["set-cookie"]
    assert client.count_sessions() == 0
    with TestClient(app_of(baton), cookies={"session": old_cookie}) as replay:
        assert replay.get("/view").json() == {}


def test_a_bogus_cookie_is_a_new_session(baton: Baton, client: baton_client.Client) -> None:
    for bogus in ("invalid", "x" * 43):
        with TestClient(app_of(baton), cookies={"session": bogus}) as http:
            assert http.get("/view").json() == {}
            response = http.post("/update", json={"theme": "dark"})
        found = re.search(r"session=([^;]*);", response.headers["set-cookie"])
        assert found is not None and found[1] != bogus
        assert _values(client.get_session(found[1], touch=False)) == {"theme": "dark"}


def test_cookie_options_are_starlettes(baton: Baton) -> None:
    options = {
        "session_cookie": "sid",
        "path": "/shop",
        "same_site": "strict",
        "https_only": True,
        "domain": "example.com",
        "partitioned": True,
    }
    app = app_of(baton, routes=[Route("/shop/update", update, methods=["POST"])], **options)
    with TestClient(app, base_url="https://example.com") as http:
        cookie = http.post("/shop/update", json={"a": 1}).headers["set-cookie"]
    attributes = cookie.split("; ")
    assert attributes[0].startswith("sid=")
    for attribute in ("path=/shop", "httponly", "samesite=strict", "secure"):
        assert attribute in attributes
    assert "domain=example.com" in attributes and "partitioned" in attributes


async def log_in(request: Request) -> JSONResponse:
    request.session["user_id"] = request.query_params["user"]
    return JSONResponse(dict(request.session))


async def log_out(request: Request) -> JSONResponse:
    request.session.pop("user_id")
    return JSONResponse(dict(request.session))


def test_a_subject_change_moves_the_session_to_a_new_id(
    baton: Baton, client: baton_client.Client
) -> None:
    routes = [*ROUTES, Route("/login", log_in, methods=["POST"])]
    routes.append(Route("/logout", log_out, methods=["POST"]))
    ada = unique("ada")
    with (
        TestClient(app_of(baton, routes=routes, subject_key="user_id")) as laptop,
        TestClient(app_of(baton, routes=routes, subject_key="user_id")) as phone,
    ):
        laptop.post("/update", json={"cart": ["book"]})
        anonymous_id = laptop.cookies["session"]
        assert laptop.post(f"/login?user={ada}").json() == {"cart": ["book"], "user_id": ada}
        assert laptop.cookies["session"] != anonymous_id
        with pytest.raises(baton_client.NotFound):
            client.get_session(anonymous_id)
        phone.post(f"/login?user={ada}")
        assert [s.subject for s in client.list_sessions(ada)] == [ada, ada]

        # "Log out everywhere" reaches every device's session.
        assert client.revoke_sessions(ada) == 2
        assert laptop.get("/view").json() == {}
        assert phone.get("/view").json() == {}

        laptop.post(f"/login?user={ada}")
        logged_in_id = laptop.cookies["session"]
        assert laptop.post("/logout").json() == {}
        assert client.count_sessions() == 0, "logging out must end the session"
    with TestClient(app_of(baton, routes=routes), cookies={"session": logged_in_id}) as replay:
        assert replay.get("/view").json() == {}


async def revoked_meanwhile(request: Request) -> JSONResponse:
    """Another request (here, the test) logs the session out while this one runs."""
    session_id = request.cookies["session"]
    async with baton_client.AsyncClient(request.app.state.target) as other:
        await other.delete_session(session_id)
    request.session["theme"] = "light"
    return JSONResponse(dict(request.session))


def test_a_session_ended_during_the_request_is_not_written_back(
    baton: Baton, client: baton_client.Client
) -> None:
    app = app_of(baton, routes=[*ROUTES, Route("/revoked", revoked_meanwhile, methods=["POST"])])
    app.state.target = baton.addr
    with TestClient(app) as http:
        http.post("/update", json={"theme": "dark"})
        response = http.post("/revoked")
        assert "expires=Thu, 01 Jan 1970" in response.headers["set-cookie"]
        assert client.count_sessions() == 0
        assert http.get("/view").json() == {}


async def test_concurrent_requests_change_different_values_without_losing_either(
    baton: Baton, async_client: baton_client.AsyncClient
) -> None:
    loaded, release = asyncio.Event(), asyncio.Event()

    async def slow_update(request: Request) -> JSONResponse:
        loaded.set()  # the middleware read the session before calling the endpoint
        await release.wait()
        request.session["theme"] = "light"
        return JSONResponse(dict(request.session))

    app = Starlette(
        routes=[*ROUTES, Route("/slow", slow_update, methods=["POST"])],
        middleware=[Middleware(SessionMiddleware, client=async_client)],
    )
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
        await http.post("/update", json={"cart": []})
        slow = asyncio.create_task(http.post("/slow"))
        await loaded.wait()
        assert (await http.post("/update", json={"cart": ["book"]})).status_code == 200
        release.set()
        assert (await slow).status_code == 200
        assert (await http.get("/view")).json() == {"cart": ["book"], "theme": "light"}


def test_target_or_client_is_required() -> None:
    with pytest.raises(TypeError):
        SessionMiddleware(untouched)
