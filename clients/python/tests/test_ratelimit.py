from conftest import unique

import baton_client


def test_allow_admits_up_to_the_limit_then_denies(client: baton_client.Client) -> None:
    key = unique("login")
    remaining = [client.allow(key, limit=3, period=60).remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    denied = client.allow(key, limit=3, period=60)
    assert not denied.allowed
    assert 0 < denied.retry_after <= 60


def test_token_bucket_cost_is_all_or_nothing(client: baton_client.Client) -> None:
    key = unique("upload")
    bucket = {"algorithm": baton_client.Algorithm.TOKEN_BUCKET, "burst": 10}
    first = client.allow(key, 1, 3600, cost=8, **bucket)
    assert first.allowed and first.remaining == 2
    assert not client.allow(key, 1, 3600, cost=3, **bucket)
    assert client.allow(key, 1, 3600, cost=2, **bucket)
