"""A pytest plugin (``-p baton_starlette_shim``) that makes ``starlette.middleware.sessions``
hand out Baton's middleware and session class before Starlette's tests import them.

Starlette's tests pass ``secret_key``, which Baton's middleware does not take (the cookie
holds a Baton session id, not signed data): it is dropped, and the Baton target comes from
$BATON_TARGET.
"""

from __future__ import annotations

import os
from typing import Any

import starlette.middleware.sessions as upstream
from baton_client import starlette_sessions


class SessionMiddleware(starlette_sessions.SessionMiddleware):
    def __init__(self, app: Any, secret_key: Any, **options: Any) -> None:
        super().__init__(app, os.environ["BATON_TARGET"], **options)


upstream.SessionMiddleware = SessionMiddleware  # type: ignore[misc]
upstream.Session = starlette_sessions.Session  # type: ignore[misc]
