"""A Django session engine that keeps sessions in Baton.

Settings::

    SESSION_ENGINE = "baton_client.django_sessions"
    BATON_TARGET = "dns:///baton.prod.svc.cluster.local:50051"
    BATON_API_KEY = "..."                       # optional
    BATON_TLS = True                            # optional
    BATON_SESSION_IDLE_TIMEOUT = 1800           # optional, seconds; default: the server's
    BATON_SESSION_ABSOLUTE_TIMEOUT = 86400      # optional, seconds; default: the server's
    BATON_SESSION_SUBJECT_KEY = "_auth_user_id" # optional: the session key naming its user

``request.session`` then works as with any engine, on every replica of the site, and
``logout_everywhere(request)`` ends every session of the request's user (all devices).

Django picks its own session keys (32 characters of ``[a-z0-9]``); they are Baton's
client-chosen session ids, of which Baton stores only a hash. Each value is stored under its
own key in the session's data, serialized with ``SESSION_SERIALIZER`` (JSON by default), so
an update writes only what changed. A Baton session belongs to one subject, fixed at
creation: the user id Django's ``login()`` stores under ``_auth_user_id``, or a random
anonymous subject before login. When the user changes, the data moves to a new session key
and the old one ends — as ``login()``'s own ``cycle_key()`` does against session fixation.
A session that ended (revoked, expired, deleted) is never written back: saving it raises
``UpdateError``, which Django's ``SessionMiddleware`` answers with ``SessionInterrupted``.
Expiry is Baton's (idle and absolute timeouts), so ``clear_expired`` has nothing to do, and
``set_expiry()`` only changes the cookie.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from typing import Any

from django.conf import settings
from django.contrib.sessions.backends.base import CreateError, SessionBase, UpdateError

from .client import Client
from .errors import AlreadyExists, InvalidArgument, NotFound

ANONYMOUS_PREFIX = "anonymous:"

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


def logout_everywhere(request: Any) -> int:
    """Ends every session of the request's user, on every device, and flushes the request's
    own; returns how many sessions ended (0 when nobody is logged in)."""
    subject = request.session.get(_subject_key())
    revoked = client().revoke_sessions(str(subject)) if subject is not None else 0
    request.session.flush()
    return revoked


class SessionStore(SessionBase):
    """``SESSION_ENGINE = "baton_client.django_sessions"`` uses this class."""

    def __init__(self, session_key: str | None = None) -> None:
        super().__init__(session_key)
        # What Baton holds for this key, as last read or written: the subject, and the data
        # keys (to know which ones a save must remove).
        self._baton_subject: str | None = None
        self._baton_keys: set[str] = set()

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

    def load(self) -> dict[str, Any]:
        try:
            session = client().get_session(self.session_key)
        except (NotFound, InvalidArgument):
            # Ended, or never a Baton session id: start afresh under a new key.
            self._session_key = None
            return {}
        self._baton_subject = session.subject
        self._baton_keys = set(session.data)
        serializer = self.serializer()
        return {key: serializer.loads(value) for key, value in session.data.items()}

    def exists(self, session_key: str) -> bool:
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

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)
        subject = self._subject_of(data)
        encoded = self._encode(data)
        if must_create:
            try:
                client().create_session(
                    subject,
                    encoded,
                    session_id=self.session_key,
                    idle_timeout=getattr(settings, "BATON_SESSION_IDLE_TIMEOUT", None),
                    absolute_timeout=getattr(settings, "BATON_SESSION_ABSOLUTE_TIMEOUT", None),
                )
            except AlreadyExists:
                raise CreateError from None
            self._baton_subject, self._baton_keys = subject, set(encoded)
            return None
        if subject != self._baton_subject:
            # A session's subject is fixed at creation: move the data to a new key, so the
            # old key (and whoever may have planted it) ends with the old subject.
            old_key = self.session_key
            self.create()
            client().delete_session(old_key)
            return None
        try:
            client().update_session(
                self.session_key, set=encoded, remove=sorted(self._baton_keys - set(encoded))
            )
        except NotFound:
            # Revoked or expired while this request ran: never bring it back.
            raise UpdateError from None
        self._baton_keys = set(encoded)
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
