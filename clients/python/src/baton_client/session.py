"""Sessions: ``create_session``, ``get_session``, ``update_session``, ``rotate_session``,
``delete_session``, ``list_sessions``, ``revoke_sessions`` ("log out everywhere"), and the
tenant-wide ``count_sessions`` and ``clear_sessions``."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _retry
from ._connection import Seconds, duration
from .pb.baton.v1 import session_pb2

if TYPE_CHECKING:
    from .pb.baton.v1 import session_pb2_grpc


@dataclass(frozen=True)
class Session:
    """A session's public view; it never holds the secret session id."""

    handle: str
    """Public, non-secret id for listing and revoking; changes on rotation."""
    subject: str
    data: dict[str, bytes]
    attributes: dict[str, str]
    version: int
    """Changes on every update of ``data``; pass it as ``if_version`` for compare-and-set."""
    created_at: datetime.datetime
    last_seen_at: datetime.datetime
    idle_expires_at: datetime.datetime
    absolute_expires_at: datetime.datetime


def _session(session: session_pb2.Session) -> Session:
    return Session(
        handle=session.handle,
        subject=session.subject,
        data=dict(session.data),
        attributes=dict(session.attributes),
        version=session.version,
        created_at=session.created_at.ToDatetime(datetime.UTC),
        last_seen_at=session.last_seen_at.ToDatetime(datetime.UTC),
        idle_expires_at=session.idle_expires_at.ToDatetime(datetime.UTC),
        absolute_expires_at=session.absolute_expires_at.ToDatetime(datetime.UTC),
    )


def _create_request(
    subject: str,
    data: Mapping[str, bytes] | None,
    session_id: str | None,
    idle_timeout: Seconds | None,
    absolute_timeout: Seconds | None,
    attributes: Mapping[str, str] | None,
) -> session_pb2.CreateSessionRequest:
    request = session_pb2.CreateSessionRequest(
        subject=subject,
        data=dict(data or {}),
        attributes=dict(attributes or {}),
        session_id=session_id or "",
    )
    if idle_timeout:
        request.idle_timeout.CopyFrom(duration(idle_timeout))
    if absolute_timeout:
        request.absolute_timeout.CopyFrom(duration(absolute_timeout))
    return request


def _update_request(
    session_id: str,
    set: Mapping[str, bytes] | None,
    remove: Iterable[str],
    if_version: int,
    idle_timeout: Seconds | None,
    absolute_timeout: Seconds | None,
) -> session_pb2.UpdateSessionRequest:
    request = session_pb2.UpdateSessionRequest(
        session_id=session_id, set=dict(set or {}), remove=list(remove), if_version=if_version
    )
    # None leaves the field unset (keep the session's timeout); the server also reads a
    # zero duration as unset, and answers INVALID_ARGUMENT for a negative one.
    if idle_timeout is not None:
        request.idle_timeout.CopyFrom(duration(idle_timeout))
    if absolute_timeout is not None:
        request.absolute_timeout.CopyFrom(duration(absolute_timeout))
    return request


class Sessions:
    """The session helpers of the sync :class:`baton_client.Client`."""

    _sessions: session_pb2_grpc.SessionStoreServiceStub
    _default_timeout: float | None

    def create_session(
        self,
        subject: str,
        data: Mapping[str, bytes] | None = None,
        *,
        session_id: str | None = None,
        idle_timeout: Seconds | None = None,
        absolute_timeout: Seconds | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> tuple[str, Session]:
        """Starts a session of ``subject`` (a user id) and returns its secret id — give it to
        the user agent, never log it — with the session.

        ``session_id`` is for frameworks that pick their own ids: 22..=256 characters of
        ``[A-Za-z0-9_-]``; one in use raises :class:`AlreadyExists` (reason
        ``SESSION_EXISTS``). Never reuse the id of a session that ended: that would bring it
        back for whoever still holds the old cookie. Timeouts default to the server's (30 min
        idle, 24 h absolute unless configured). Not retried: a retry after a lost answer would
        start a second session."""
        request = _create_request(
            subject, data, session_id, idle_timeout, absolute_timeout, attributes
        )
        response = _retry.once(lambda: self._sessions.CreateSession(request))
        return response.session_id, _session(response.session)

    def get_session(self, session_id: str, *, touch: bool = True) -> Session:
        """Reads a session and (unless ``touch=False``) slides its idle timeout. Raises
        :class:`NotFound` (reason ``SESSION_NOT_FOUND``) once it has ended. Retried on
        UNAVAILABLE."""
        request = session_pb2.GetSessionRequest(session_id=session_id, no_touch=not touch)
        response = _retry.call(lambda: self._sessions.GetSession(request), self._default_timeout)
        return _session(response.session)

    def update_session(
        self,
        session_id: str,
        *,
        set: Mapping[str, bytes] | None = None,
        remove: Iterable[str] = (),
        if_version: int = 0,
        idle_timeout: Seconds | None = None,
        absolute_timeout: Seconds | None = None,
    ) -> Session:
        """Merges ``set`` into the session's data and removes ``remove``, atomically;
        ``if_version`` makes it conditional (else :class:`Aborted`). Raises
        :class:`NotFound` once the session has ended: an update never brings one back.

        ``idle_timeout`` replaces the session's idle timeout and moves its idle deadline to
        now + ``idle_timeout``, earlier or later (never past the absolute deadline).
        ``absolute_timeout`` replaces its absolute timeout, counted from its creation; when
        that deadline has already passed the session ends and this raises
        :class:`NotFound`. ``None`` (or 0) keeps the current timeout. Both are how a framework
        that decides a session's lifetime per request (Django's ``set_expiry``) applies it."""
        request = _update_request(
            session_id, set, remove, if_version, idle_timeout, absolute_timeout
        )
        return _session(_retry.once(lambda: self._sessions.UpdateSession(request)).session)

    def rotate_session(self, session_id: str) -> tuple[str, Session]:
        """Gives the session a new id (returned) and kills the old one, keeping its data: do
        it when privileges change, against session fixation. Not retried: a lost answer would
        lose the new id."""
        request = session_pb2.RotateSessionRequest(session_id=session_id)
        response = _retry.once(lambda: self._sessions.RotateSession(request))
        return response.session_id, _session(response.session)

    def delete_session(self, session_id: str) -> bool:
        """Ends a session (log-out); False when it had already ended. Retried on UNAVAILABLE."""
        request = session_pb2.DeleteSessionRequest(session_id=session_id)
        response = _retry.call(lambda: self._sessions.DeleteSession(request), self._default_timeout)
        return response.deleted

    def list_sessions(self, subject: str) -> list[Session]:
        """The live sessions of ``subject``, oldest first ("your devices")."""
        request = session_pb2.ListSessionsRequest(subject=subject)
        response = _retry.call(lambda: self._sessions.ListSessions(request), self._default_timeout)
        return [_session(session) for session in response.sessions]

    def revoke_sessions(
        self, subject: str, *, handles: Iterable[str] = (), except_handle: str = ""
    ) -> int:
        """Ends every session of ``subject`` ("log out everywhere") — or only ``handles`` —
        except ``except_handle``; returns how many it ended. Not retried: a retry would also
        end sessions started in between."""
        request = session_pb2.RevokeSessionsRequest(
            subject=subject, handles=list(handles), except_handle=except_handle
        )
        return _retry.once(lambda: self._sessions.RevokeSessions(request)).revoked

    def count_sessions(self) -> int:
        """How many sessions of the caller's tenant are live, of every subject and of none.
        Its cost grows with the number of sessions: for tests and admin tools, not per
        request. Retried on UNAVAILABLE."""
        request = session_pb2.CountSessionsRequest()
        response = _retry.call(lambda: self._sessions.CountSessions(request), self._default_timeout)
        return response.live

    def clear_sessions(self) -> int:
        """Ends every session of the caller's tenant, of every subject and of none; returns
        how many it ended. Sessions created while it runs may survive it. Retried on
        UNAVAILABLE: ending sessions twice is harmless."""
        request = session_pb2.ClearSessionsRequest()
        response = _retry.call(lambda: self._sessions.ClearSessions(request), self._default_timeout)
        return response.cleared


class AsyncSessions:
    """The session helpers of :class:`baton_client.AsyncClient`; see :class:`Sessions`."""

    _sessions: session_pb2_grpc.SessionStoreServiceStub
    _default_timeout: float | None

    async def create_session(
        self,
        subject: str,
        data: Mapping[str, bytes] | None = None,
        *,
        session_id: str | None = None,
        idle_timeout: Seconds | None = None,
        absolute_timeout: Seconds | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> tuple[str, Session]:
        """See :meth:`Sessions.create_session`."""
        request = _create_request(
            subject, data, session_id, idle_timeout, absolute_timeout, attributes
        )
        response = await _retry.aonce(lambda: self._sessions.CreateSession(request))  # type: ignore[arg-type,return-value]
        return response.session_id, _session(response.session)

    async def get_session(self, session_id: str, *, touch: bool = True) -> Session:
        """See :meth:`Sessions.get_session`."""
        request = session_pb2.GetSessionRequest(session_id=session_id, no_touch=not touch)
        response = await _retry.acall(
            lambda: self._sessions.GetSession(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return _session(response.session)

    async def update_session(
        self,
        session_id: str,
        *,
        set: Mapping[str, bytes] | None = None,
        remove: Iterable[str] = (),
        if_version: int = 0,
        idle_timeout: Seconds | None = None,
        absolute_timeout: Seconds | None = None,
    ) -> Session:
        """See :meth:`Sessions.update_session`."""
        request = _update_request(
            session_id, set, remove, if_version, idle_timeout, absolute_timeout
        )
        response = await _retry.aonce(lambda: self._sessions.UpdateSession(request))  # type: ignore[arg-type,return-value]
        return _session(response.session)

    async def rotate_session(self, session_id: str) -> tuple[str, Session]:
        """See :meth:`Sessions.rotate_session`."""
        request = session_pb2.RotateSessionRequest(session_id=session_id)
        response = await _retry.aonce(lambda: self._sessions.RotateSession(request))  # type: ignore[arg-type,return-value]
        return response.session_id, _session(response.session)

    async def delete_session(self, session_id: str) -> bool:
        """See :meth:`Sessions.delete_session`."""
        request = session_pb2.DeleteSessionRequest(session_id=session_id)
        response = await _retry.acall(
            lambda: self._sessions.DeleteSession(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return response.deleted

    async def list_sessions(self, subject: str) -> list[Session]:
        """See :meth:`Sessions.list_sessions`."""
        request = session_pb2.ListSessionsRequest(subject=subject)
        response = await _retry.acall(
            lambda: self._sessions.ListSessions(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return [_session(session) for session in response.sessions]

    async def revoke_sessions(
        self, subject: str, *, handles: Iterable[str] = (), except_handle: str = ""
    ) -> int:
        """See :meth:`Sessions.revoke_sessions`."""
        request = session_pb2.RevokeSessionsRequest(
            subject=subject, handles=list(handles), except_handle=except_handle
        )
        response = await _retry.aonce(lambda: self._sessions.RevokeSessions(request))  # type: ignore[arg-type,return-value]
        return response.revoked

    async def count_sessions(self) -> int:
        """See :meth:`Sessions.count_sessions`."""
        request = session_pb2.CountSessionsRequest()
        response = await _retry.acall(
            lambda: self._sessions.CountSessions(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return response.live

    async def clear_sessions(self) -> int:
        """See :meth:`Sessions.clear_sessions`."""
        request = session_pb2.ClearSessionsRequest()
        response = await _retry.acall(
            lambda: self._sessions.ClearSessions(request),  # type: ignore[arg-type,return-value]
            self._default_timeout,
        )
        return response.cleared
