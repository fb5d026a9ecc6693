// Stands in for connect-redis's RedisStore: Baton's express-session store behind
// connect-redis's promise API (each method also takes a callback). Sessions without a
// cookie expiry live a day, as under connect-redis's default `ttl`. ids() and all() reject:
// Baton keeps only hashes of the ids and cannot list them.
import { BatonSessionStore } from "@baton-dev/baton-client/express-session";

import { batonId } from "./ids.mjs";

const DAY_MS = 86_400_000;

function settle(call, callback) {
  const work = new Promise((done, fail) => call((error, value) => (error ? fail(error) : done(value))));
  if (callback) {
    work.then((value) => callback(null, value), callback);
  }
  return work;
}

export class RedisStore extends BatonSessionStore {
  constructor({ client }) {
    super({ client: client.baton, idleTimeoutMs: DAY_MS });
  }

  get(sid, callback) {
    return settle((cb) => super.get(batonId(sid), cb), callback);
  }

  set(sid, session, callback) {
    return settle((cb) => super.set(batonId(sid), session, cb), callback);
  }

  touch(sid, session, callback) {
    return settle((cb) => super.touch(batonId(sid), session, cb), callback);
  }

  destroy(sid, callback) {
    return settle((cb) => super.destroy(batonId(sid), cb), callback);
  }

  length(callback) {
    return settle((cb) => super.length(cb), callback);
  }

  clear(callback) {
    return settle((cb) => super.clear(cb), callback);
  }

  async ids() {
    throw new Error("ids(): not supported, Baton keeps only hashes of session ids");
  }

  async all() {
    throw new Error("all(): not supported, Baton keeps only hashes of session ids");
  }
}
