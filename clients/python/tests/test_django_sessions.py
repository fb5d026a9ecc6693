"""The Django session engine, serving real HTTP requests from Django's threaded server."""

from __future__ import annotations

import datetime
import http.cookiejar
import re
import threading
import time
import types
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
    )
    django.setup()

from django.contrib import auth
from django.contrib.auth.signals import user_logged_in
from django.core.exceptions import ImproperlyConfigured
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.test.utils import override_settings
from django.urls import path
from django.utils import timezone
from harness import eventually

import baton_client
from baton_client import django_sessions


def login(request: HttpRequest) -> HttpResponse:
    # What django.contrib.auth.login() does to the session, without a user database (a real
    # site checks a password first).
    request.session.cycle_key()
    request.session["_auth_user_id"] = request.POST["user"]
    request.session.setdefault("theme", "dark")
    return HttpResponse("ok")


class _User:
    """What django.contrib.auth.login() reads from a user model instance, without a user
    database."""

    _meta = types.SimpleNamespace(pk=types.SimpleNamespace(value_to_string=lambda u: u.pk))

    def __init__(self, pk: str) -> None:
        self.pk = pk


def real_login(request: HttpRequest) -> HttpResponse:
    request.session.setdefault("theme", "dark")
    auth.login(request, _User(request.POST["user"]), backend="tests.NoPasswordBackend")
    return HttpResponse(request.session.session_key)


def expire(request: HttpRequest) -> HttpResponse:
    """Stores a value with the expiry named by ?how=: seconds:N, timedelta:N, at:N (a
    datetime N seconds from now), browser (0), default (None)."""
    how, _, amount = request.GET["how"].partition(":")
    request.session["note"] = request.GET.get("note", "kept")
    if how == "seconds":
        request.session.set_expiry(int(amount))
    elif how == "timedelta":
        request.session.set_expiry(datetime.timedelta(seconds=int(amount)))
    elif how == "at":
        request.session.set_expiry(timezone.now() + datetime.timedelta(seconds=int(amount)))
    elif how == "browser":
        request.session.set_expiry(0)
    else:
        request.session.set_expiry(None)
    return HttpResponse("ok")


def note(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.session.get("note", "none"))


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
    path("real-login", real_login),
    path("expire", expire),
    path("note", note),
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
        self.set_cookie: str | None = None

    def request(self, path: str, **form: str) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode() if form else None
        try:
            with self.opener.open(self.site + path, data=data, timeout=10) as response:
                self.set_cookie = response.headers.get("Set-Cookie")
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            self.set_cookie = error.headers.get("Set-Cookie")
            return error.code, error.read().decode()

    @property
    def cookie_max_age(self) -> int | None:
        """The Max-Age of the last response's session cookie (None: a browser-session one)."""
        assert self.set_cookie is not None, "the last response set no cookie"
        found = re.search(r"Max-Age=(-?\d+)", self.set_cookie)
        return int(found.group(1)) if found else None

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


def _lifetime(session: baton_client.Session) -> float:
    return (session.idle_expires_at - session.last_seen_at).total_seconds()


@pytest.mark.parametrize(
    ("how", "seconds"),
    [("seconds:600", 600), ("timedelta:900", 900), ("at:1200", 1200), ("default", 1234)],
)
def test_set_expiry_and_session_cookie_age_decide_when_the_session_ends(
    site: str, client: baton_client.Client, how: str, seconds: int
) -> None:
    browser = Browser(site)
    with override_settings(SESSION_COOKIE_AGE=1234):
        assert browser.request(f"/expire?how={how}") == (200, "ok")
    key = browser.session_key
    assert key is not None
    # The session ends in Baton when the cookie sent with the save expires. A datetime
    # expiry counts whole seconds from the save, so it may be one second short.
    assert browser.cookie_max_age is not None
    assert seconds - 1 <= browser.cookie_max_age <= seconds
    assert _lifetime(client.get_session(key, touch=False)) == browser.cookie_max_age


def test_a_new_expiry_applies_to_a_session_that_exists(
    site: str, client: baton_client.Client
) -> None:
    browser = Browser(site)
    browser.request("/expire?how=seconds:600")
    key = browser.session_key
    assert key is not None
    for seconds in (60, 86400):  # shorter, then "remember me"
        browser.request(f"/expire?how=seconds:{seconds}")
        assert browser.session_key == key and browser.cookie_max_age == seconds
        assert _lifetime(client.get_session(key, touch=False)) == seconds


@pytest.mark.parametrize("how", ["set_expiry(0)", "SESSION_EXPIRE_AT_BROWSER_CLOSE"])
def test_browser_session_cookies_live_session_cookie_age_in_baton(
    site: str, client: baton_client.Client, how: str
) -> None:
    browser = Browser(site)
    at_close = how == "SESSION_EXPIRE_AT_BROWSER_CLOSE"
    with override_settings(SESSION_COOKIE_AGE=1234, SESSION_EXPIRE_AT_BROWSER_CLOSE=at_close):
        browser.request("/expire?how=" + ("default" if at_close else "browser"))
    key = browser.session_key
    assert key is not None and browser.cookie_max_age is None
    assert _lifetime(client.get_session(key, touch=False)) == 1234


def test_a_short_expiry_ends_the_session_in_baton(site: str, client: baton_client.Client) -> None:
    browser = Browser(site)
    browser.request("/expire?how=seconds:1&note=brief")
    key = browser.session_key
    assert key is not None and browser.request("/note") == (200, "brief")

    def ended() -> bool:
        try:
            client.get_session(key, touch=False)
        except baton_client.NotFound:
            return True
        return False

    eventually(ended, "the session ends a second after its save")
    assert browser.request("/note") == (200, "none")


def test_an_expiry_in_the_past_ends_the_session_at_once(
    site: str, client: baton_client.Client
) -> None:
    browser = Browser(site)
    browser.request("/expire?how=seconds:600&note=first")
    key = browser.session_key
    assert key is not None and client.count_sessions() == 1
    browser.request("/expire?how=seconds:-10&note=second")
    assert client.count_sessions() == 0
    assert browser.request("/note") == (200, "none")
    # Not even through the engine directly, which is what Django's own tests check.
    store = django_sessions.SessionStore(key)
    assert "note" not in store and store.session_key is None


def test_a_never_saved_expired_session_is_not_created(client: baton_client.Client) -> None:
    django_sessions.use_client(client)
    try:
        store = django_sessions.SessionStore()
        store["note"] = "never"
        store.set_expiry(-10)
        store.save()
        assert client.count_sessions() == 0
        assert "note" not in django_sessions.SessionStore(store.session_key)
    finally:
        django_sessions.use_client(None)


def test_reading_does_not_extend_the_session(site: str, client: baton_client.Client) -> None:
    browser = Browser(site)
    browser.request("/expire?how=seconds:10")
    key = browser.session_key
    assert key is not None
    saved = client.get_session(key, touch=False)
    # Baton coalesces touches that would move the deadline by under 1 % (0.1 s here): wait
    # past that, so that a touching read would show.
    time.sleep(0.3)
    assert browser.request("/note") == (200, "kept")
    assert browser.set_cookie is None
    assert client.get_session(key, touch=False).idle_expires_at == saved.idle_expires_at

    # A save (here with the same expiry) moves it, with the cookie.
    browser.request("/expire?how=seconds:10")
    assert client.get_session(key, touch=False).idle_expires_at > saved.idle_expires_at


def test_baton_absolute_timeout_caps_the_expiry(site: str, client: baton_client.Client) -> None:
    browser = Browser(site)
    with override_settings(BATON_SESSION_ABSOLUTE_TIMEOUT=datetime.timedelta(hours=1)):
        browser.request("/expire?how=seconds:7200")
    assert browser.session_key is not None
    session = client.get_session(browser.session_key, touch=False)
    assert session.absolute_expires_at - session.created_at == datetime.timedelta(hours=1)
    assert session.idle_expires_at == session.absolute_expires_at


def test_the_removed_idle_timeout_setting_is_refused(site: str) -> None:
    with override_settings(BATON_SESSION_IDLE_TIMEOUT=600), pytest.raises(ImproperlyConfigured):
        django_sessions.SessionStore().save()


def test_one_login_makes_one_session_under_the_key_the_request_saw(
    site: str, client: baton_client.Client
) -> None:
    seen: list[str] = []

    def record(request: HttpRequest, **_: Any) -> None:
        seen.append(request.session.session_key)

    user_logged_in.connect(record)
    try:
        ada = unique("ada")
        browser = Browser(site)
        assert browser.request("/cart", item="book") == (200, "ok")
        anonymous_key = browser.session_key
        status, key_in_view = browser.request("/real-login", user=ada)
    finally:
        user_logged_in.disconnect(record)
    assert status == 200
    assert seen == [key_in_view] == [browser.session_key]
    assert key_in_view != anonymous_key
    assert client.count_sessions() == 1, "login() left another Baton session behind"
    session = client.get_session(key_in_view, touch=False)
    assert session.subject == ada
    assert browser.request("/me") == (200, f"{ada} dark [book]")
    with pytest.raises(baton_client.NotFound):
        client.get_session(anonymous_key)


def test_login_without_a_session_yet_makes_one_session(
    site: str, client: baton_client.Client
) -> None:
    ada = unique("ada")
    browser = Browser(site)
    status, key_in_view = browser.request("/real-login", user=ada)
    assert status == 200 and key_in_view == browser.session_key
    assert client.count_sessions() == 1
    assert client.get_session(key_in_view, touch=False).subject == ada


async def test_async_cycle_key_writes_one_session_at_the_save(
    async_client: baton_client.AsyncClient, baton: Any
) -> None:
    with baton_client.Client(baton.addr) as sync_client:
        django_sessions.use_client(sync_client)
        try:
            store = django_sessions.SessionStore()
            await store.aset("cart", ["book"])
            await store.asave()
            first = store.session_key
            await store.acycle_key()
            cycled = store.session_key
            assert await store.aget("cart") == ["book"] and cycled != first
            assert not await store.aexists(first)
            await store.aset("_auth_user_id", "ada")
            await store.asave()
            assert store.session_key == cycled
            assert await async_client.count_sessions() == 1
            session = await async_client.get_session(cycled, touch=False)
            assert session.subject == "ada"
        finally:
            django_sessions.use_client(None)
