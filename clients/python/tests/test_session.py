from __future__ import annotations

import datetime

import pytest
from conftest import unique
from harness import REPO, eventually

import baton_client


def test_create_get_update_rotate_and_revoke(client: baton_client.Client) -> None:
    subject = unique("user")
    chosen = "django-style-key-0123456789abcdef"
    session_id, created = client.create_session(subject, {"cart": b"1 book"}, session_id=chosen)
    assert session_id == chosen and created.subject == subject
    with pytest.raises(baton_client.AlreadyExists) as exists:
        client.create_session(subject, session_id=chosen)
    assert exists.value.error_reason == baton_client.ErrorReason.SESSION_EXISTS
    with pytest.raises(baton_client.InvalidArgument) as malformed:
        client.create_session(subject, session_id="short")
    assert malformed.value.field == "session_id"

    updated = client.update_session(session_id, set={"theme": b"dark"}, remove=["cart"])
    with pytest.raises(baton_client.Aborted):
        client.update_session(session_id, remove=["theme"], if_version=created.version)
    read = client.get_session(session_id)
    assert read.version == updated.version and read.data == {"theme": b"dark"}

    rotated_id, rotated = client.rotate_session(session_id)
    assert rotated_id != session_id and rotated.data == {"theme": b"dark"}
    with pytest.raises(baton_client.NotFound) as gone:
        client.get_session(session_id)
    assert gone.value.error_reason == baton_client.ErrorReason.SESSION_NOT_FOUND

    other_id, _ = client.create_session(subject)
    assert len(client.list_sessions(subject)) == 2
    assert client.revoke_sessions(subject, except_handle=rotated.handle) == 1
    with pytest.raises(baton_client.NotFound):
        client.get_session(other_id)
    assert client.delete_session(rotated_id) is True
    assert client.list_sessions(subject) == []


def _idle_timeout(session: baton_client.Session) -> float:
    return (session.idle_expires_at - session.last_seen_at).total_seconds()


def test_update_replaces_the_idle_timeout_both_ways(client: baton_client.Client) -> None:
    session_id, created = client.create_session(
        unique("user"), idle_timeout=600, absolute_timeout=7200
    )
    assert _idle_timeout(created) == 600

    longer = client.update_session(session_id, set={"remember": b"yes"}, idle_timeout=3600)
    assert _idle_timeout(longer) == 3600
    # None keeps the timeout the last update set, for this update and for later touches.
    kept = client.update_session(session_id, set={"theme": b"dark"})
    assert _idle_timeout(kept) == 3600
    assert _idle_timeout(client.get_session(session_id)) == 3600

    # Never past the absolute deadline.
    capped = client.update_session(session_id, idle_timeout=datetime.timedelta(days=1))
    assert capped.idle_expires_at == capped.absolute_expires_at

    client.update_session(session_id, idle_timeout=0.5)
    eventually(lambda: _ended(client, session_id), "the shortened session ends")


def test_update_replaces_the_absolute_timeout(client: baton_client.Client) -> None:
    session_id, created = client.create_session(
        unique("user"), idle_timeout=600, absolute_timeout=3600
    )
    longer = client.update_session(session_id, absolute_timeout=datetime.timedelta(days=7))
    # Counted from creation, not from the update.
    assert longer.absolute_expires_at == created.created_at + datetime.timedelta(days=7)
    assert _idle_timeout(longer) == 600

    shorter = client.update_session(session_id, absolute_timeout=1800)
    assert shorter.absolute_expires_at == created.created_at + datetime.timedelta(seconds=1800)


def test_an_absolute_deadline_in_the_past_ends_the_session_for_good(
    client: baton_client.Client,
) -> None:
    session_id, _ = client.create_session(unique("user"), {"cart": b"1 book"})
    eventually(
        lambda: _ended_by(client, session_id, absolute_timeout=0.1),
        "an update whose absolute deadline has passed answers NOT_FOUND",
    )
    with pytest.raises(baton_client.NotFound):
        client.get_session(session_id)
    # A later, longer timeout does not bring it back.
    with pytest.raises(baton_client.NotFound):
        client.update_session(session_id, absolute_timeout=3600, idle_timeout=3600)


def test_update_rejects_out_of_range_timeouts(client: baton_client.Client) -> None:
    session_id, _ = client.create_session(unique("user"), {"cart": b"1 book"})
    for timeouts in ({"idle_timeout": -1}, {"absolute_timeout": 365 * 86400}):
        with pytest.raises(baton_client.InvalidArgument) as raised:
            client.update_session(session_id, set={"cart": b"2 books"}, **timeouts)
        assert raised.value.field == next(iter(timeouts))
    assert client.get_session(session_id).data == {"cart": b"1 book"}


def test_count_and_clear_cover_every_subject_and_anonymous_sessions(
    client: baton_client.Client,
) -> None:
    assert client.count_sessions() == 0
    ada, bob = unique("ada"), unique("bob")
    ids = [client.create_session(subject)[0] for subject in (ada, ada, bob, "")]
    assert client.count_sessions() == 4
    client.delete_session(ids[0])
    assert client.count_sessions() == 3

    assert client.clear_sessions() == 3
    assert client.count_sessions() == 0
    for session_id in ids:
        with pytest.raises(baton_client.NotFound):
            client.get_session(session_id)
    assert client.list_sessions(ada) == [] and client.list_sessions(bob) == []
    # Ending nothing is not an error (a retry of a clear that was applied).
    assert client.clear_sessions() == 0


def test_count_and_clear_stay_within_the_tenant(start_baton) -> None:
    replica = start_baton("127.0.0.1:0", "--config", str(REPO / "docs/examples/api-keys.toml"))
    with (
        baton_client.Client(replica.addr, api_key="shop-admin-key") as shop,
        baton_client.Client(replica.addr, api_key="blog-admin-key") as blog,
    ):
        shop.create_session(unique("ada"))
        blog_id, _ = blog.create_session(unique("bob"))
        assert (shop.count_sessions(), blog.count_sessions()) == (1, 1)
        assert shop.clear_sessions() == 1
        blog.get_session(blog_id)
        assert (shop.count_sessions(), blog.count_sessions()) == (0, 1)


def _ended(client: baton_client.Client, session_id: str) -> bool:
    try:
        client.get_session(session_id, touch=False)
    except baton_client.NotFound:
        return True
    return False


def _ended_by(client: baton_client.Client, session_id: str, **timeouts: float) -> bool:
    try:
        client.update_session(session_id, **timeouts)
    except baton_client.NotFound:
        return True
    return False
