"""The Python program of `make clients-install-test`: run in a new project outside the
repository, it makes one real rate-limit check against $BATON_TARGET."""

import os
import secrets

import baton_client

with baton_client.Client(os.environ["BATON_TARGET"]) as client:
    key = f"install-test:python:{secrets.token_hex(6)}"
    first = client.allow(key, limit=1, period=60)
    second = client.allow(key, limit=1, period=60)
    if not first.allowed or second.allowed:
        raise SystemExit(f"a limit of 1 answered {first.allowed}, then {second.allowed}")
print("allowed, then limited")
print("loaded from", baton_client.__file__)
