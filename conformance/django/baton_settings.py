"""Django's own test settings (tests/test_sqlite.py of the sdist) with Baton's engine."""

import os

from test_sqlite import *

SESSION_ENGINE = "baton_client.django_sessions"
BATON_TARGET = os.environ["BATON_TARGET"]
