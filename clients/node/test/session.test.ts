import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { AbortedError, AlreadyExistsError, BatonClient, ErrorReason, InvalidArgumentError, NotFoundError, reasonOf } from "../src/index.js";
import { Environment, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

test("sessions: create, get, update, rotate, list, revoke and delete", async () => {
  const subject = unique("user");
  const chosen = "express-style-id-0123456789abcdef";
  const created = await client.createSession(subject, { cart: Buffer.from("1 book") }, { sessionId: chosen });
  assert.equal(created.sessionId, chosen);
  await assert.rejects(client.createSession(subject, {}, { sessionId: chosen }), (error) => {
    assert.ok(error instanceof AlreadyExistsError);
    assert.equal(reasonOf(error), ErrorReason.SESSION_EXISTS);
    return true;
  });
  await assert.rejects(client.createSession(subject, {}, { sessionId: "short" }), (error) => {
    assert.ok(error instanceof InvalidArgumentError);
    assert.equal(error.field, "session_id");
    return true;
  });

  const updated = await client.updateSession(chosen, { set: { theme: Buffer.from("dark") }, remove: ["cart"] });
  await assert.rejects(
    client.updateSession(chosen, { remove: ["theme"], ifVersion: created.session.version }),
    AbortedError,
  );
  const read = await client.getSession(chosen);
  assert.equal(read.version, updated.version);
  assert.deepEqual(Object.keys(read.data), ["theme"]);

  const rotated = await client.rotateSession(chosen);
  assert.notEqual(rotated.sessionId, chosen);
  assert.equal(rotated.session.data.theme.toString(), "dark");
  await assert.rejects(client.getSession(chosen), (error) => {
    assert.ok(error instanceof NotFoundError);
    assert.equal(reasonOf(error), ErrorReason.SESSION_NOT_FOUND);
    return true;
  });

  const other = await client.createSession(subject);
  assert.equal((await client.listSessions(subject)).length, 2);
  assert.equal(await client.revokeSessions(subject, { exceptHandle: rotated.session.handle }), 1);
  await assert.rejects(client.getSession(other.sessionId), NotFoundError);
  assert.equal(await client.deleteSession(rotated.sessionId), true);
  assert.deepEqual(await client.listSessions(subject), []);
});
