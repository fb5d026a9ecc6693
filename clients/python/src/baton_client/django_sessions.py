"""A Django session engine that keeps sessions in Baton.

Settings::

    SESSION_ENGINE = "baton_client.django_sessions"
    BATON_TARGET = "dns:///baton.prod.svc.cluster.local:50051"
    BATON_API_KEY = "..."                       # optional
    BATON_TLS = True                            # optional
    BATON_SESSION_ABSOLUTE_TIMEOUT = 86400      # optional, seconds or a timedelta; default 30 days
    BATON_SESSION_SUBJECT_KEY = "_auth_user_id" # optional: the session key naming its user

``request.session`` then works as with any engine, on every replica of the site, and
``logout_everywhere(request)`` ends every session of the request's user (all devices).

Lifetime. Django decides how long a session lives, and Baton enforces it: every save gives
the Baton session an idle timeout of ``get_expiry_age()`` — ``set_expiry(seconds)``,
``set_expiry(datetime or timedelta)`` (the seconds left until then), or
``SESSION_COOKIE_AGE`` for ``set_expiry(0)``, ``set_expiry(None)`` and
``SESSION_EXPIRE_AT_BROWSER_CLOSE`` — so the session ends server-side exactly when the
cookie Django sends with that save expires. Reading a session does not extend it (as with
Django's database and cache engines: only a save does, and ``SESSION_SAVE_EVERY_REQUEST``
saves on every request). Saving a session whose expiry has passed (``set_expiry(-10)``)
ends it: it is never loaded again. On top of Django's expiry, Baton ends every session
``BATON_SESSION_ABSOLUTE_TIMEOUT`` after its creation (default 30 days, the longest Baton
accepts unless its ``limits.max_ttl`` is raised; lower this setting if it was lowered), and
a ``set_expiry`` beyond that deadline is cut to it.

Keys. Django picks its own session keys (32 characters of ``[a-z0-9]``); they are Baton's
client-chosen session ids, of which Baton stores only a hash. ``cycle_key()`` (which
``login()`` calls against session fixation) ends the old key at once and draws the new one,
which the next save writes: one ``login()`` creates one Baton session, under the key that
the rest of the request (``user_logged_in`` receivers included) sees.

Data. Each value is stored under its own key in the session's data, serialized with
``SESSION_SERIALIZER`` (JSON by default), so a save sends only the values that changed and
removes the deleted ones. A Baton session belongs to one subject, fixed at creation: the
user id Django's ``login()`` stores under ``_auth_user_id``, or a random anonymous subject
before login. When the user of a session that already exists in Baton changes without a
``cycle_key()``, the data moves to a new session key and the old one ends. A session that
ended (revoked, expired, deleted) is never written back: saving it raises ``UpdateError``,
which Django's ``SessionMiddleware`` answers with ``SessionInterrupted``. Baton expires
sessions by itself, so ``clear_expired`` (``manage.py clearsessions``) has nothing to do.
"""

from __future__ import annotations

import contextlib
import datetime
import secrets
import threading
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.base import (
    VALID_KEY_CHARS,
    CreateError,
    SessionBase,
    UpdateError,
)
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import get_random_string

from ._connection import seconds
from .client import Client
from .errors import AlreadyExists, InvalidArgument, NotFound

ANONYMOUS_PREFIX = "anonymous:"

LONGEST_TIMEOUT = datetime.timedelta(days=30)
"""The longest timeout Baton accepts with its default ``limits.max_ttl``."""

_client: Client | None = None
_client_guard = threading.Lock()


def use_client(client: Client | None) -> None:
    """Makes the engine use ``client`` instead of one built from the ``BATON_*`` settings
    (``None`` goes back to the settings)."""
    global _client
    with _client_guard:
        _client = client


def client() -> Client:
    """The client the engine uses: the one given to :func:`use_client`, else one built on
    first use from the settings and shared by every request."""
    global _client
    with _client_guard:
        if _client is None:
            _client = Client(
                settings.BATON_TARGET,
                api_key=getattr(settings, "BATON_API_KEY", None),
                tls=getattr(settings, "BATON_TLS", False),
            )
        return _client


def _subject_key() -> str:
    return getattr(settings, "BATON_SESSION_SUBJECT_KEY", "_auth_user_id")


def _absolute_timeout() -> float:
    if hasattr(settings, "BATON_SESSION_IDLE_TIMEOUT"):
        # Silently ignoring it would keep sessions alive longer or shorter than its owner
        # thinks.
        raise ImproperlyConfigured(
            "BATON_SESSION_IDLE_TIMEOUT is gone: Django's SESSION_COOKIE_AGE and "
            "request.session.set_expiry() decide how long a Baton session lives"
        )
    return seconds(getattr(settings, "BATON_SESSION_ABSOLUTE_TIMEOUT", LONGEST_TIMEOUT))


def logout_everywhere(request: Any) -> int:
    """Ends every session of the request's user, on every device, and flushes the request's
    own; returns how many sessions ended (0 when nobody is logged in)."""
    subject = request.session.get(_subject_key())
    revoked = client().revoke_sessions(str(subject)) if subject is not None else 0
    request.session.flush()
    return revoked


class SessionStore(SessionBase):
    """``SESSION_ENGINE = "baton_client.django_sessions"`` uses this class."""

    _session_key: str | None  # SessionBase's property (which drops malformed keys), for mypy

    def __init__(self, session_key: str | None = None) -> None:
        super().__init__(session_key)
        # The Baton session behind session_key as last read or written: its subject (None
        # when there is none yet) and its encoded data, to send only what a save changes.
        self._baton_subject: str | None = None
        self._baton_data: dict[str, bytes] = {}
        # True when cycle_key() drew session_key and no save has written it yet.
        self._unwritten = False

    def _encode(self, data: dict[str, Any]) -> dict[str, bytes]:
        serializer = self.serializer()
        return {key: serializer.dumps(value) for key, value in data.items()}

    def _subject_of(self, data: dict[str, Any]) -> str:
        user = data.get(_subject_key())
        if user is not None:
            return str(user)
        if self._baton_subject is not None and self._baton_subject.startswith(ANONYMOUS_PREFIX):
            return self._baton_subject
        # Random, not derived from the secret key: subjects show in listings and logs.
        return ANONYMOUS_PREFIX + secrets.token_urlsafe(16)

    def _forget_baton_session(self) -> None:
        self._baton_subject, self._baton_data, self._unwritten = None, {}, False

    def _get_new_session_key(self) -> str:
        # Django's default asks exists() first, a round trip per new key; a collision (at
        # 165 bits, never) is caught by CreateSession's ALREADY_EXISTS instead.
        return get_random_string(32, VALID_KEY_CHARS)

    def load(self) -> dict[str, Any]:
        try:
            # No touch: as with Django's own engines, only a save moves the expiry, so the
            # session ends when the cookie sent with the last save does.
            session = client().get_session(self.session_key, touch=False)
        except (NotFound, InvalidArgument):
            # Ended, or never a Baton session id: start afresh under a new key.
            self._session_key = None
            self._forget_baton_session()
            return {}
        self._baton_subject, self._baton_data = session.subject, dict(session.data)
        self._unwritten = False
        serializer = self.serializer()
        return {key: serializer.loads(value) for key, value in session.data.items()}

    def exists(self, session_key: str | None) -> bool:
        if session_key is None:
            return False
        try:
            client().get_session(session_key, touch=False)
        except (NotFound, InvalidArgument):
            return False
        return True

    def create(self) -> None:
        while True:
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue  # a key collision: draw another
            self.modified = True
            return

    def cycle_key(self) -> None:
        # Django's own cycle_key() creates the new key's session at once with the old
        # subject; login() then changes the subject, which would move the data to a third
        # key at the save, so the key user_logged_in receivers saw would die. Drawing the
        # key now and writing it at the save gives one session under one key.
        data = self._session
        old_key = self.session_key
        self._session_key = self._get_new_session_key()
        self._session_cache = data
        if old_key:
            self.delete(old_key)
        self._forget_baton_session()
        self._unwritten = True
        self.modified = True

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    def _idle_timeout(self, absolute_timeout: float) -> float | None:
        """Django's expiry as a Baton idle timeout, capped at the absolute timeout (which
        caps the session anyway); None when the expiry has passed."""
        age = self.get_expiry_age()
        if age <= 0:
            return None
        return min(float(age), absolute_timeout)

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)
        absolute_timeout = _absolute_timeout()
        idle_timeout = self._idle_timeout(absolute_timeout)
        if idle_timeout is None:
            # Expired by Django's reckoning: end it (Django's own engines never load it
            # again), and write nothing; a later save in this request raises UpdateError.
            if not (must_create or self._unwritten) and self._baton_subject is not None:
                client().delete_session(self.session_key)
            return None
        subject = self._subject_of(data)
        encoded = self._encode(data)
        if must_create or self._unwritten:
            try:
                client().create_session(
                    subject,
                    encoded,
                    session_id=self.session_key,
                    idle_timeout=idle_timeout,
                    absolute_timeout=absolute_timeout,
                )
            except AlreadyExists:
                if must_create:
                    raise CreateError from None
                self._unwritten = False
                return self.create()  # cycle_key drew a key in use: draw another
            self._baton_subject, self._baton_data, self._unwritten = subject, encoded, False
            return None
        if subject != self._baton_subject:
            # A session's subject is fixed at creation: move the data to a new key, so the
            # old key (and whoever may have planted it) ends with the old subject.
            old_key = self.session_key
            self.create()
            client().delete_session(old_key)
            return None
        changed = {k: v for k, v in encoded.items() if self._baton_data.get(k) != v}
        try:
            client().update_session(
                self.session_key,
                set=changed,
                remove=sorted(self._baton_data.keys() - encoded.keys()),
                idle_timeout=idle_timeout,
            )
        except NotFound:
            # Revoked or expired while this request ran: never bring it back.
            raise UpdateError from None
        self._baton_data = encoded
        return None

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        # A key that was never a Baton session id has nothing to delete.
        with contextlib.suppress(InvalidArgument):
            client().delete_session(session_key)

    @classmethod
    def clear_expired(cls) -> None:
        """Baton expires sessions by itself."""
