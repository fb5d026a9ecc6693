"""The Django session engine, serving real HTTP requests from Django's threaded server."""

from __future__ import annotations

import http.cookiejar
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import django
import pytest
from conftest import unique
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only",
        ALLOWED_HOSTS=["127.0.0.1"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        SESSION_ENGINE="baton_client.django_sessions",
        BATON_SESSION_IDLE_TIMEOUT=600,
    )
    django.setup()

from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path

import baton_client
from baton_client import django_sessions


def login(request: HttpRequest) -> HttpResponse:
    # What django.contrib.auth.login() does to the session, without a user database (a real
    # site checks a password first).
    request.session.cycle_key()
    request.session["_auth_user_id"] = request.POST["user"]
    request.session.setdefault("theme", "dark")
    return HttpResponse("ok")


def me(request: HttpRequest) -> HttpResponse:
    user = request.session.get("_auth_user_id")
    if user is None:
        return HttpResponse("not logged in", status=401)
    cart = ",".join(request.session.get("cart", []))
    return HttpResponse(f"{user} {request.session['theme']} [{cart}]")


def add_to_cart(request: HttpRequest) -> HttpResponse:
    request.session["cart"] = [*request.session.get("cart", []), request.POST["item"]]
    return HttpResponse("ok")


def set_theme(request: HttpRequest) -> HttpResponse:
    request.session["theme"] = request.POST["theme"]
    return HttpResponse("ok")


def logout_everywhere(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(django_sessions.logout_everywhere(request)))


urlpatterns = [
    path("login", login),
    path("me", me),
    path("cart", add_to_cart),
    path("theme", set_theme),
    path("logout-everywhere", logout_everywhere),
]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site(client: baton_client.Client) -> Iterator[str]:
    django_sessions.use_client(client)
    server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler)
    server.set_app(get_wsgi_application())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    django_sessions.use_client(None)


class Browser:
    """One device: an HTTP client with its own cookie jar."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def request(self, path: str, **form: str) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form else None
        try:
            with self.opener.open(self.site + path, data=data, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    @property
    def session_key(self) -> str | None:
        return next((c.value for c in self.cookies if c.name == "sessionid"), None)


def test_login_read_and_log_out_everywhere(site: str, client: baton_client.Client) -> None:
    ada, bob = unique("ada"), unique("bob")
    laptop, phone, bobs_laptop = Browser(site), Browser(site), Browser(site)

    assert laptop.request("/me")[0] == 401
    assert laptop.request("/cart", item="book") == (200, "ok")
    anonymous_key = laptop.session_key
    assert anonymous_key is not None
    for device in (laptop, phone):
        assert device.request("/login", user=ada) == (200, "ok")
    assert bobs_laptop.request("/login", user=bob) == (200, "ok")
    assert phone.request("/theme", theme="light") == (200, "ok")

    # Logging in moved the anonymous cart to a new key, and the old key is dead.
    assert laptop.session_key != anonymous_key
    with pytest.raises(baton_client.NotFound):
        client.get_session(anonymous_key)
    assert laptop.request("/me") == (200, f"{ada} dark [book]")
    assert phone.request("/me") == (200, f"{ada} light []")
    assert [s.subject for s in client.list_sessions(ada)] == [ada, ada]

    assert laptop.request("/logout-everywhere", confirm="yes") == (200, "2")
    assert laptop.request("/me")[0] == 401
    assert phone.request("/me")[0] == 401
    assert bobs_laptop.request("/me") == (200, f"{bob} dark []")
