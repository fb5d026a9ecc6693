"""Starlette and FastAPI sessions kept in Baton: ``request.session`` as with Starlette's
own ``SessionMiddleware``, but the cookie holds only the session's secret id.

::

    from baton_client.starlette_sessions import SessionMiddleware

    app.add_middleware(SessionMiddleware, target="dns:///baton.prod.svc.cluster.local:50051")

The options are Starlette's — ``session_cookie``, ``max_age``, ``path``, ``same_site``,
``https_only``, ``domain``, ``partitioned`` — without ``secret_key``: a Baton session id is
itself a 256-bit secret that Baton checks, so there is nothing to sign. What differs from a
signed cookie:

- The server ends sessions. A session lives ``max_age`` seconds after the response that
  last changed it — the same moment its cookie expires, as both are set then — and never
  longer than ``absolute_timeout`` after its creation (default 30 days, the longest Baton
  accepts unless its ``limits.max_ttl`` is raised). With ``max_age=None`` (a browser-session
  cookie) Baton keeps it until ``absolute_timeout``. ``max_age`` of 0 or less stores
  nothing.
- Clearing the session (``request.session.clear()``) ends it in Baton, so a copy of the old
  cookie is worthless; so does a revocation from anywhere (``revoke_sessions``: "log out
  everywhere"). A session that ended while a request ran is not written back: the
  request's changes are dropped and its cookie is expired.
- With ``subject_key``, the session value under that key (e.g. ``"user_id"``) becomes the
  Baton session's subject, so ``list_sessions``/``revoke_sessions`` find it; when that value
  changes (log-in, log-out, another user), the data moves to a new session id and the old
  one ends, against session fixation.
- Each value is stored under its own key in the session's data (as JSON, like Starlette's
  cookie), with the keys' order under ``ORDER_KEY``, and a response sends only the values
  that changed, so concurrent requests that change different values keep both.

The session is read once per request that carries the cookie (``GetSession``, one round
trip) and written only when the request changed it. It needs an asyncio server (uvicorn,
hypercorn): the Baton client is :class:`baton_client.AsyncClient`, made in the running event
loop on first use from ``target``/``api_key``/``tls`` (one per event loop), or given as
``client``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import weakref
from collections.abc import Sequence
from typing import Any, Literal

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._connection import Seconds, seconds
from .aio import AsyncClient
from .errors import InvalidArgument, NotFound

LONGEST_TIMEOUT = datetime.timedelta(days=30)
"""The longest timeout Baton accepts with its default ``limits.max_ttl``."""

_EXPIRED = "expires=Thu, 01 Jan 1970 00:00:00 GMT; "


class Session(dict[str, Any]):
    """``request.session``: a dict that knows whether it was read (Starlette's
    ``request.session`` calls :meth:`mark_accessed`) or changed, so that a request that
    leaves it alone costs no write."""

    accessed: bool = False
    modified: bool = False

    def mark_accessed(self) -> None:
        self.accessed = True

    def mark_modified(self) -> None:
        self.accessed = self.modified = True

    def __setitem__(self, key: str, value: Any) -> None:
        self.mark_modified()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.mark_modified()
        super().__delitem__(key)

    def clear(self) -> None:
        self.mark_modified()
        super().clear()

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            self.mark_modified()
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        item = super().popitem()
        self.mark_modified()
        return item

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self.mark_modified()
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.mark_modified()
        super().update(*args, **kwargs)

    def __ior__(self, other: Any) -> Session:  # type: ignore[override,misc]
        self.mark_modified()
        return super().__ior__(other)


class _Stored:
    """What Baton holds for the request's cookie: nothing, or a live session."""

    def __init__(self, session_id: str | None, subject: str, data: dict[str, bytes]) -> None:
        self.session_id = session_id
        self.subject = subject
        self.data = data


ORDER_KEY = "\x00order"
"""The data key holding the session's keys in insertion order (Baton's data is a map):
``popitem()`` and iteration behave as with Starlette's cookie. Rewritten only when the keys
change; keys it misses (added by a concurrent request) come last."""


def _encode(session: dict[str, Any]) -> dict[str, bytes]:
    encoded = {key: json.dumps(value).encode() for key, value in session.items()}
    encoded[ORDER_KEY] = json.dumps(list(session)).encode()
    return encoded


def _decode(data: dict[str, bytes]) -> Session:
    order = json.loads(data.get(ORDER_KEY, b"[]"))
    position = {key: index for index, key in enumerate(order)}
    keys = sorted(data.keys() - {ORDER_KEY}, key=lambda key: (position.get(key, len(order)), key))
    return Session({key: json.loads(data[key]) for key in keys})


class SessionMiddleware:
    """ASGI middleware that puts a Baton session in ``scope["session"]``
    (``request.session``)."""

    def __init__(
        self,
        app: ASGIApp,
        target: str | Sequence[str] | None = None,
        *,
        client: AsyncClient | None = None,
        api_key: str | None = None,
        tls: bool = False,
        session_cookie: str = "session",
        max_age: int | None = 14 * 24 * 60 * 60,
        path: str = "/",
        same_site: Literal["lax", "strict", "none"] = "lax",
        https_only: bool = False,
        domain: str | None = None,
        partitioned: bool = False,
        subject_key: str | None = None,
        absolute_timeout: Seconds = LONGEST_TIMEOUT,
    ) -> None:
        if (target is None) == (client is None):
            raise TypeError("SessionMiddleware needs either target or client")
        self.app = app
        self._target = target
        self._api_key = api_key
        self._tls = tls
        self._client = client
        # grpc.aio channels belong to the event loop that made them; a test client may run
        # each request in a new loop.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self.session_cookie = session_cookie
        self.max_age = max_age
        self.path = path
        self.subject_key = subject_key
        self.absolute_timeout = seconds(absolute_timeout)
        flags = f"httponly; samesite={same_site}"
        if https_only:
            flags += "; secure"
        if domain is not None:
            flags += f"; domain={domain}"
        if partitioned:
            flags += "; partitioned"
        self._flags = flags

    def _baton(self) -> AsyncClient:
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        made = self._clients.get(loop)
        if made is None:
            assert self._target is not None
            made = AsyncClient(self._target, api_key=self._api_key, tls=self._tls)
            self._clients[loop] = made
        return made

    def _subject(self, session: dict[str, Any]) -> str:
        if self.subject_key is None or session.get(self.subject_key) is None:
            return ""
        return str(session[self.subject_key])

    def _cookie(self, value: str, lifetime: str) -> str:
        return f"{self.session_cookie}={value}; path={self.path}; {lifetime}{self._flags}"

    async def _load(self, session_id: str) -> tuple[_Stored, Session]:
        try:
            # No touch: the lifetime moves only when a response changes the session, with
            # its cookie's Max-Age.
            found = await self._baton().get_session(session_id, touch=False)
        except (NotFound, InvalidArgument):
            # Ended, or never a Baton id: a new session, as for a cookie that fails its
            # signature with Starlette's middleware.
            return _Stored(None, "", {}), Session()
        return _Stored(session_id, found.subject, dict(found.data)), _decode(found.data)

    async def _save(self, stored: _Stored, session: dict[str, Any]) -> str | None:
        """Writes the changed session and returns its Set-Cookie value (None: no cookie)."""
        baton = self._baton()
        if not session:
            if stored.session_id is None:
                return None
            await baton.delete_session(stored.session_id)
            return self._cookie("null", _EXPIRED)
        lifetime = "" if self.max_age is None else f"Max-Age={self.max_age}; "
        if self.max_age is not None and self.max_age <= 0:
            # Expired on arrival, like the cookie: nothing to keep.
            if stored.session_id is not None:
                await baton.delete_session(stored.session_id)
            return self._cookie("null", lifetime)
        idle_timeout = self.absolute_timeout
        if self.max_age is not None:
            idle_timeout = min(float(self.max_age), idle_timeout)
        encoded, subject = _encode(session), self._subject(session)
        if stored.session_id is not None and subject == stored.subject:
            changed = {k: v for k, v in encoded.items() if stored.data.get(k) != v}
            try:
                await baton.update_session(
                    stored.session_id,
                    set=changed,
                    remove=sorted(stored.data.keys() - encoded.keys()),
                    idle_timeout=idle_timeout,
                )
            except NotFound:
                # Revoked or expired while the request ran: never bring it back.
                return self._cookie("null", _EXPIRED)
            return self._cookie(stored.session_id, lifetime)
        session_id, _ = await baton.create_session(
            subject, encoded, idle_timeout=idle_timeout, absolute_timeout=self.absolute_timeout
        )
        if stored.session_id is not None:
            # The subject changed: the old id ends with it.
            await baton.delete_session(stored.session_id)
        return self._cookie(session_id, lifetime)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        cookie = HTTPConnection(scope).cookies.get(self.session_cookie)
        if cookie:
            stored, session = await self._load(cookie)
        else:
            stored, session = _Stored(None, "", {}), Session()
        scope["session"] = session

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                session = scope["session"]
                headers = MutableHeaders(scope=message)
                # An application may have put a plain dict there: assume it was changed.
                if getattr(session, "accessed", True):
                    headers.add_vary_header("Cookie")
                if getattr(session, "modified", True):
                    set_cookie = await self._save(stored, session)
                    if set_cookie is not None:
                        headers.append("Set-Cookie", set_cookie)
            await send(message)

        await self.app(scope, receive, send_with_session)
