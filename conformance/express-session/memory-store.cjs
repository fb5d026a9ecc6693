// Loaded by mocha (--require) before express-session's own test/session.js: every
// MemoryStore — `new session.MemoryStore()` in the tests and the default store of
// `session()` without one — becomes a BatonSessionStore on the baton at $BATON_TARGET.
// The tests, and express-session itself, run unchanged.
//
// Resolved from the working directory (the express-session package under test), so that
// the Baton client extends that very copy's Store.

"use strict";

const { createRequire } = require("node:module");
const Module = require("node:module");
const path = require("node:path");

const fromPackage = createRequire(path.join(process.cwd(), "package.json"));
const { BatonClient } = fromPackage("@baton-dev/baton-client");
const { BatonSessionStore } = fromPackage("@baton-dev/baton-client/express-session");

const { BATON_TARGET, BATON_STORE_KEYS } = process.env;
if (!BATON_TARGET || !BATON_STORE_KEYS) {
  throw new Error("BATON_TARGET (host:port of a baton) and BATON_STORE_KEYS are not set");
}
const clients = [];

// Each MemoryStore starts empty and sees only its own sessions (the tests count them with
// store.length): each Baton store here gets an API key of its own tenant, as run.mjs
// configured baton, in the order the tests create them.
class MemoryStore extends BatonSessionStore {
  constructor() {
    if (clients.length === Number(BATON_STORE_KEYS)) {
      throw new Error(`more than BATON_STORE_KEYS=${BATON_STORE_KEYS} stores: raise it in run.mjs`);
    }
    const client = new BatonClient({ target: BATON_TARGET, apiKey: `conformance-store-${clients.length}` });
    clients.push(client);
    super({ client });
  }
}

const memoryPath = fromPackage.resolve("./session/memory.js");
const memoryModule = new Module(memoryPath);
memoryModule.filename = memoryPath;
memoryModule.loaded = true;
memoryModule.exports = MemoryStore;
require.cache[memoryPath] = memoryModule;
// Loading the client loaded express-session's index.js with the real MemoryStore: let the
// tests' require("../") evaluate it again, now with this one (its Store, Session and Cookie
// modules stay the ones the client extends).
delete require.cache[fromPackage.resolve("./index.js")];

exports.mochaHooks = {
  afterAll() {
    clients.forEach((client) => client.close());
  },
};
