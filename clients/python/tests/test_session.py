from __future__ import annotations

import pytest
from conftest import unique

import baton_client


def test_create_get_update_rotate_and_revoke(client: baton_client.Client) -> None:
    subject = unique("user")
    chosen = "django-style-key-0123456789abcdef"
    session_id, created = client.create_session(subject, {"cart": b"1 book"}, session_id=chosen)
    assert session_id == chosen and created.subject == subject
    with pytest.raises(baton_client.AlreadyExists) as exists:
        client.create_session(subject, session_id=chosen)
    assert exists.value.reason == "SESSION_EXISTS"
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
    assert gone.value.reason == "SESSION_NOT_FOUND"

    other_id, _ = client.create_session(subject)
    assert len(client.list_sessions(subject)) == 2
    assert client.revoke_sessions(subject, except_handle=rotated.handle) == 1
    with pytest.raises(baton_client.NotFound):
        client.get_session(other_id)
    assert client.delete_session(rotated_id) is True
    assert client.list_sessions(subject) == []
