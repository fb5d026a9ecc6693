"""Sessions in a web app: a one-file Django site whose ``request.session`` lives in Baton
(``SESSION_ENGINE = "baton_client.django_sessions"``), so every replica sees it and "log out
everywhere" works.

Run against `make run`'s baton (from the repository root, in another terminal)::

    cd clients/python && .venv/bin/python examples/web_sessions_django.py
    curl -c jar -b jar -d user=ada localhost:8000/login && curl -b jar localhost:8000/me
    curl -b jar -XPOST localhost:8000/logout-everywhere && curl -b jar localhost:8000/me

BATON_TARGET overrides the default localhost:50051.
"""

from __future__ import annotations

import os
from wsgiref.simple_server import make_server

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.http import require_POST

from baton_client.django_sessions import logout_everywhere

settings.configure(
    DEBUG=True,
    SECRET_KEY="example-only",
    ALLOWED_HOSTS=["localhost", "127.0.0.1"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
    SESSION_ENGINE="baton_client.django_sessions",
    BATON_TARGET=os.environ.get("BATON_TARGET", "localhost:50051"),
    SESSION_COOKIE_AGE=30 * 60,  # Django decides how long a session lives, in Baton too
)


@require_POST
def login(request: HttpRequest) -> HttpResponse:
    # What django.contrib.auth.login() does to the session; a real site uses it, after
    # checking the password.
    request.session.cycle_key()
    request.session["_auth_user_id"] = request.POST["user"]
    request.session["theme"] = "dark"
    return HttpResponse(f"welcome, {request.POST['user']}\n")


def me(request: HttpRequest) -> HttpResponse:
    user = request.session.get("_auth_user_id")
    if user is None:
        return HttpResponse("not logged in\n", status=401)
    return HttpResponse(f"{user} (theme {request.session['theme']})\n")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return HttpResponse("bye\n")


@require_POST
def everywhere(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"ended {logout_everywhere(request)} sessions\n")


urlpatterns = [
    path("login", login),
    path("me", me),
    path("logout", logout),
    path("logout-everywhere", everywhere),
]

if __name__ == "__main__":
    print("listening on localhost:8000")
    make_server("localhost", 8000, get_wsgi_application()).serve_forever()
