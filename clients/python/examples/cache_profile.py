"""Cache-aside of a user profile: read through the cache, load from the database on a miss —
once, however many requests miss at the same moment — and drop the entry when the profile
changes.

Run against `make run`'s baton (from the repository root, in another terminal)::

    cd clients/python && .venv/bin/python examples/cache_profile.py

BATON_TARGET overrides the default localhost:50051.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import baton_client


def load_profile(user_id: int) -> bytes:
    """Stands in for a slow database query."""
    logging.info("loading profile %d from the database", user_id)
    time.sleep(0.3)
    return json.dumps({"id": user_id, "name": "Ada Lovelace"}).encode()


def profile(client: baton_client.Client, user_id: int) -> dict:
    raw = client.get_or_load(
        f"user:{user_id}:profile", 300, lambda: load_profile(user_id), tags=[f"user:{user_id}"]
    )
    return json.loads(raw)


def main() -> None:
    with baton_client.Client(os.environ.get("BATON_TARGET", "localhost:50051")) as client:
        # Twenty requests miss at once: the database sees one query.
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda _: profile(client, 42), range(20)))
        logging.info("profile: %s", profile(client, 42))  # a hit

        # The user renames themselves: write the database, then drop what is cached about them.
        client.invalidate_tag("user:42")
        profile(client, 42)  # loads again


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
