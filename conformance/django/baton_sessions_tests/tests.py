"""Django's SessionTestsMixin with Baton's engine as the backend.

run.py copies this package into the tests/ directory of Django's sdist, beside
sessions_tests, so Django's runtests.py runs it unchanged; nothing of Django's is copied
into this repository.
"""

from baton_client.django_sessions import SessionStore
from django.test import SimpleTestCase
from sessions_tests import tests as upstream


class BatonSessionTests(upstream.SessionTestsMixin, SimpleTestCase):
    backend = SessionStore
