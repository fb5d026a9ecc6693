// The express-session Store, serving real HTTP requests from Express servers: login and "log
// out everywhere", the cookie deciding when a session ends (set and touch), set() as an
// upsert, callbacks on a fresh tick, length and clear, and the session id rule.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import type { Server } from "node:http";
import { AddressInfo } from "node:net";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import express, { Express } from "express";
import session, { SessionData } from "express-session";

import { BatonClient, InvalidArgumentError, NotFoundError } from "../src/index.js";
import { BatonSessionStore } from "../src/express-session.js";
import { Environment, eventually, unique } from "./harness.js";

declare module "express-session" {
  interface SessionData {
    userId: string;
    theme: string;
    cart: string[];
  }
}

let environment: Environment;
let client: BatonClient;
let batonAddr: string;
const servers: Server[] = [];
let site: string;

/** Serves `app` on a free loopback port until the tests end; resolves with its base URL. */
async function serve(app: Express): Promise<string> {
  const server = await new Promise<Server>((done) => {
    const listening = app.listen(0, "127.0.0.1", () => done(listening));
  });
  servers.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

before(async () => {
  environment = await Environment.start();
  batonAddr = (await environment.baton()).addr;
  client = new BatonClient({ target: batonAddr });
  environment.onClose(() => client.close());

  const app = express();
  app.use(express.urlencoded({ extended: false }));
  app.use(
    session({
      store: new BatonSessionStore({ client }),
      secret: "test-only",
      resave: false,
      saveUninitialized: false,
    }),
  );
  app.post("/login", (req, res, next) => {
    // A real site checks a password first.
    const login = () => {
      req.session.userId = req.body.user;
      req.session.theme ??= "dark";
      res.send("ok");
    };
    // express-session's advice against fixation; ?keep shows what happens without it.
    if (req.query.keep !== undefined) {
      login();
    } else {
      req.session.regenerate((error) => (error ? next(error) : login()));
    }
  });
  app.get("/me", (req, res) => {
    if (!req.session.userId) {
      res.status(401).send("not logged in");
      return;
    }
    res.send(`${req.session.userId} ${req.session.theme} [${(req.session.cart ?? []).join(",")}]`);
  });
  app.post("/cart", (req, res) => {
    req.session.cart = [...(req.session.cart ?? []), req.body.item];
    res.send("ok");
  });
  app.post("/theme", (req, res) => {
    req.session.theme = req.body.theme;
    res.send("ok");
  });
  app.post("/logout-everywhere", (req, res, next) => {
    client.revokeSessions(req.session.userId!).then(
      (revoked) => req.session.destroy(() => res.send(String(revoked))),
      next,
    );
  });
  site = await serve(app);
});

after(async () => {
  for (const server of servers) {
    server.closeAllConnections();
    await new Promise((done) => server.close(done));
  }
  await environment.close();
});

/** One device: an HTTP client that keeps express-session's cookie. */
class Browser {
  cookie: string | undefined;

  constructor(private readonly origin?: string) {}

  async request(method: string, path: string, form?: Record<string, string>): Promise<[number, string]> {
    const response = await fetch((this.origin ?? site) + path, {
      method,
      headers: {
        ...(this.cookie ? { cookie: this.cookie } : {}),
        ...(form ? { "content-type": "application/x-www-form-urlencoded" } : {}),
      },
      body: form ? new URLSearchParams(form).toString() : undefined,
    });
    for (const setCookie of response.headers.getSetCookie()) {
      this.cookie = setCookie.split(";")[0];
    }
    return [response.status, await response.text()];
  }

  /** The session id inside express-session's signed cookie ("s:<id>.<signature>"). */
  get sessionId(): string | undefined {
    return this.cookie && decodeURIComponent(this.cookie.split("=")[1]).slice(2).split(".")[0];
  }
}

test("express-session store: login, read, and log out everywhere", async () => {
  const ada = unique("ada");
  const bob = unique("bob");
  const [laptop, phone, bobsLaptop] = [new Browser(), new Browser(), new Browser()];

  assert.equal((await laptop.request("GET", "/me"))[0], 401);
  // An anonymous cart, then a login that keeps the session: it moves to ada's subject.
  assert.deepEqual(await laptop.request("POST", "/cart", { item: "book" }), [200, "ok"]);
  assert.deepEqual(await laptop.request("POST", "/login?keep", { user: ada }), [200, "ok"]);
  assert.deepEqual(await phone.request("POST", "/login", { user: ada }), [200, "ok"]);
  assert.deepEqual(await bobsLaptop.request("POST", "/login", { user: bob }), [200, "ok"]);
  assert.deepEqual(await phone.request("POST", "/theme", { theme: "light" }), [200, "ok"]);

  assert.deepEqual(await laptop.request("GET", "/me"), [200, `${ada} dark [book]`]);
  assert.deepEqual(await phone.request("GET", "/me"), [200, `${ada} light []`]);
  const sessions = await client.listSessions(ada);
  assert.deepEqual(sessions.map((s) => s.subject), [ada, ada]);
  // Stored as one data key per session property, the cookie included.
  assert.deepEqual(Object.keys((await client.getSession(phone.sessionId!)).data).sort(), ["cookie", "theme", "userId"]);

  assert.deepEqual(await laptop.request("POST", "/logout-everywhere"), [200, "2"]);
  assert.equal((await laptop.request("GET", "/me"))[0], 401);
  assert.equal((await phone.request("GET", "/me"))[0], 401);
  await assert.rejects(client.getSession(phone.sessionId!), NotFoundError);
  assert.deepEqual(await bobsLaptop.request("GET", "/me"), [200, `${bob} dark []`]);
});

/** Counts the store's writes, so a test can tell express-session's touch() from its set(). */
class RecordingStore extends BatonSessionStore {
  readonly calls: string[] = [];

  set(sid: string, data: SessionData, callback?: (error?: unknown) => void): void {
    this.calls.push("set");
    super.set(sid, data, callback);
  }

  touch(sid: string, data: SessionData, callback?: (error?: unknown) => void): void {
    this.calls.push("touch");
    super.touch(sid, data, callback);
  }
}

/**
 * A site whose routes choose the cookie's lifetime: `?maxAge=ms` on /login ("remember me",
 * `&theme=` to change the data too) and
 * on /visit, which changes only the cookie, so express-session touches instead of saving.
 * Both answer the cookie's expiry. Errors passed to next() land in `errors`.
 */
function lifetimeSite(
  store: BatonSessionStore,
  options: Partial<session.SessionOptions> = {},
  errors: unknown[] = [],
): Express {
  const app = express();
  app.use(session({ store, secret: "test-only", resave: false, saveUninitialized: false, ...options }));
  const maxAgeOf = (query: unknown): number | undefined =>
    typeof query === "string" ? Number(query) : undefined;
  app.post("/login", (req, res) => {
    req.session.userId = String(req.query.user);
    if (req.query.theme) {
      req.session.theme = String(req.query.theme);
    }
    req.session.cookie.maxAge = maxAgeOf(req.query.maxAge) ?? req.session.cookie.maxAge;
    res.json({ expires: req.session.cookie.expires ?? null });
  });
  app.get("/visit", (req, res) => {
    if (!req.session.userId) {
      res.status(401).json({});
      return;
    }
    req.session.cookie.maxAge = maxAgeOf(req.query.maxAge) ?? req.session.cookie.maxAge;
    res.json({ expires: req.session.cookie.expires ?? null });
  });
  // express-session hands a failed save to next() once the response is out; keep it to look at.
  app.use((error: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    errors.push(error);
    if (!res.headersSent) {
      res.status(500).json({});
    }
  });
  return app;
}

/** The cookie's expiry a lifetimeSite route answered, in ms since the epoch. */
function expiryIn(body: string): number {
  return Date.parse(JSON.parse(body).expires);
}

/** Asserts two instants agree to within `slackMs` (the requests' own round trips). */
function assertNear(actual: Date | undefined, expectedMs: number, what: string, slackMs = 1_000) {
  assert.ok(actual, `${what}: missing`);
  assert.ok(
    Math.abs(actual.getTime() - expectedMs) <= slackMs,
    `${what}: ${actual.toISOString()}, expected ${new Date(expectedMs).toISOString()} ± ${slackMs} ms`,
  );
}

async function isGone(sessionId: string): Promise<boolean> {
  try {
    await client.getSession(sessionId, { touch: false });
    return false;
  } catch (error) {
    if (error instanceof NotFoundError) {
      return true;
    }
    throw error;
  }
}

/** A store method's callback as a promise. */
function viaCallback<T = void>(call: (callback: (error?: unknown, value?: T) => void) => void): Promise<T | undefined> {
  return new Promise((done, fail) => call((error, value) => (error ? fail(error) : done(value))));
}

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

test("express-session store: the cookie's maxAge decides when the session ends, on set and on touch", async () => {
  const store = new RecordingStore({ client });
  const browser = new Browser(await serve(lifetimeSite(store)));

  const [status, login] = await browser.request("POST", `/login?user=${unique("ada")}&maxAge=60000`);
  assert.equal(status, 200);
  const sessionId = browser.sessionId!;
  let stored = await client.getSession(sessionId, { touch: false });
  assertNear(stored.idleExpiresAt, expiryIn(login), "idle deadline after set");
  assert.deepEqual(store.calls, ["set"]);

  // "Remember me" for three days: past the server's 24 h absolute default, which must not cut it.
  const [, remembered] = await browser.request("GET", `/visit?maxAge=${3 * DAY_MS}`);
  assert.deepEqual(store.calls, ["set", "touch"]);
  stored = await client.getSession(sessionId, { touch: false });
  assertNear(stored.idleExpiresAt, expiryIn(remembered), "idle deadline after a lengthening touch");
  assertNear(stored.absoluteExpiresAt, expiryIn(remembered), "absolute deadline after a lengthening touch");
  // As MemoryStore's touch does, the stored cookie carries the new expiry too.
  assertNear(new Date(JSON.parse(stored.data.cookie.toString()).expires), expiryIn(remembered), "stored cookie's expiry");

  // Shortened to 1.5 s: the session ends with the cookie, not before and not at the old deadline.
  const [, shortened] = await browser.request("GET", "/visit?maxAge=1500");
  assert.deepEqual(store.calls, ["set", "touch", "touch"]);
  stored = await client.getSession(sessionId, { touch: false });
  assertNear(stored.idleExpiresAt, expiryIn(shortened), "idle deadline after a shortening touch");
  await eventually("the session ends with its cookie", () => isGone(sessionId));
  assert.ok(Date.now() >= expiryIn(shortened) - 200, "the session ended before its cookie expired");
  assert.equal((await browser.request("GET", "/visit"))[0], 401);
});

test("express-session store: set() writes a new maxAge over a loaded session", async () => {
  const store = new RecordingStore({ client });
  const browser = new Browser(await serve(lifetimeSite(store)));
  const user = unique("ada");
  await browser.request("POST", `/login?user=${user}&maxAge=60000`);
  // A change of data: set(), not touch(), carries the new expiry.
  const [, login] = await browser.request("POST", `/login?user=${user}&theme=light&maxAge=${7 * DAY_MS}`);
  assert.deepEqual(store.calls, ["set", "set"]);
  const stored = await client.getSession(browser.sessionId!, { touch: false });
  assertNear(stored.idleExpiresAt, expiryIn(login), "idle deadline");
  assertNear(stored.absoluteExpiresAt, expiryIn(login), "absolute deadline");
});

test("express-session store: a cookie past the server's longest timeout makes a session that long, not an error", async () => {
  const errors: unknown[] = [];
  const browser = new Browser(await serve(lifetimeSite(new BatonSessionStore({ client }), {}, errors)));
  assert.equal((await browser.request("POST", `/login?user=${unique("ada")}&maxAge=${40 * DAY_MS}`))[0], 200);
  assert.equal((await browser.request("GET", `/visit?maxAge=${35 * DAY_MS}`))[0], 200);
  assert.deepEqual(errors, []);
  // limits.max_ttl, 30 days unless configured (maxTtlMs tells the store otherwise).
  const stored = await client.getSession(browser.sessionId!, { touch: false });
  assertNear(stored.absoluteExpiresAt, stored.createdAt!.getTime() + 30 * DAY_MS, "absolute deadline");
  assertNear(stored.idleExpiresAt, Date.now() + 30 * DAY_MS, "idle deadline");
});

test("express-session store: sessions without maxAge get the store's timeouts, else the server's", async () => {
  const configured = new Browser(
    await serve(lifetimeSite(new BatonSessionStore({ client, idleTimeoutMs: 45 * 60_000, absoluteTimeoutMs: 2 * HOUR_MS }))),
  );
  await configured.request("POST", `/login?user=${unique("ada")}`);
  let stored = await client.getSession(configured.sessionId!, { touch: false });
  assertNear(stored.idleExpiresAt, stored.lastSeenAt!.getTime() + 45 * 60_000, "configured idle deadline");
  assertNear(stored.absoluteExpiresAt, stored.createdAt!.getTime() + 2 * HOUR_MS, "configured absolute deadline");

  const defaults = new Browser(await serve(lifetimeSite(new BatonSessionStore({ client }))));
  await defaults.request("POST", `/login?user=${unique("ada")}`);
  stored = await client.getSession(defaults.sessionId!, { touch: false });
  assertNear(stored.idleExpiresAt, stored.lastSeenAt!.getTime() + 30 * 60_000, "server's idle deadline");
  assertNear(stored.absoluteExpiresAt, stored.createdAt!.getTime() + DAY_MS, "server's absolute deadline");
});

test("express-session store: absoluteTimeoutMs caps a session whatever its cookie says", async () => {
  const browser = new Browser(await serve(lifetimeSite(new BatonSessionStore({ client, absoluteTimeoutMs: 2 * HOUR_MS }))));
  await browser.request("POST", `/login?user=${unique("ada")}&maxAge=${7 * DAY_MS}`);
  await browser.request("GET", `/visit?maxAge=${3 * DAY_MS}`);
  const stored = await client.getSession(browser.sessionId!, { touch: false });
  assertNear(stored.absoluteExpiresAt, stored.createdAt!.getTime() + 2 * HOUR_MS, "capped absolute deadline");
  assertNear(stored.idleExpiresAt, stored.createdAt!.getTime() + 2 * HOUR_MS, "idle deadline, capped");
});

test("express-session store: a cookie already expired ends the session on set and on touch", async () => {
  const store = new BatonSessionStore({ client });
  const live = (): SessionData => ({ cookie: { originalMaxAge: 60_000, expires: new Date(Date.now() + 60_000) } }) as SessionData;
  const expired = (): SessionData => ({ cookie: { originalMaxAge: 60_000, expires: new Date(Date.now() - 1_000) } }) as SessionData;

  const viaSet = unique("expired-by-set").replace(":", "_").padEnd(32, "0");
  await viaCallback((callback) => store.set(viaSet, live(), callback));
  assert.equal(await isGone(viaSet), false);
  await viaCallback((callback) => store.set(viaSet, expired(), callback));
  assert.equal(await isGone(viaSet), true);

  const viaTouch = unique("expired-by-touch").replace(":", "_").padEnd(32, "0");
  await viaCallback((callback) => store.set(viaTouch, live(), callback));
  await viaCallback((callback) => store.touch(viaTouch, expired(), callback));
  assert.equal(await isGone(viaTouch), true);
});

test("express-session store: set() on an existing id replaces the session (an upsert)", async () => {
  const store = new BatonSessionStore({ client });
  const browser = new Browser(await serve(lifetimeSite(store)));
  const [ada, bob] = [unique("ada"), unique("bob")];
  await browser.request("POST", `/login?user=${ada}&maxAge=60000`);
  const sessionId = browser.sessionId!;

  // Not loaded by this store: as a script or another process would write it.
  const cookie = { originalMaxAge: 120_000, expires: new Date(Date.now() + 120_000) };
  await viaCallback((callback) =>
    store.set(sessionId, { cookie, userId: ada, cart: ["book"] } as unknown as SessionData, callback),
  );
  let stored = await client.getSession(sessionId, { touch: false });
  assert.deepEqual(Object.keys(stored.data).sort(), ["cart", "cookie", "userId"]);
  assert.deepEqual(JSON.parse(stored.data.cart.toString()), ["book"]);
  assertNear(stored.idleExpiresAt, cookie.expires.getTime(), "idle deadline after the upsert");
  assert.equal((await client.listSessions(ada)).length, 1, "one session, not a second");

  // Another user under the same id: the session moves to bob's subject.
  await viaCallback((callback) => store.set(sessionId, { cookie, userId: bob } as unknown as SessionData, callback));
  stored = await client.getSession(sessionId, { touch: false });
  assert.equal(stored.subject, bob);
  assert.deepEqual(Object.keys(stored.data).sort(), ["cookie", "userId"]);
  assert.deepEqual(await client.listSessions(ada), []);
  assert.equal((await browser.request("GET", "/visit"))[0], 200);
});

test("express-session store: a loaded session that ended meanwhile is not written back", async () => {
  const store = new BatonSessionStore({ client });
  const browser = new Browser(await serve(lifetimeSite(store)));
  await browser.request("POST", `/login?user=${unique("ada")}&maxAge=60000`);
  const sessionId = browser.sessionId!;
  const loaded = await viaCallback<SessionData | null>((callback) => store.get(sessionId, callback));
  assert.ok(loaded);
  await client.deleteSession(sessionId); // e.g. "log out everywhere" while the request ran
  await viaCallback((callback) => store.set(sessionId, loaded, callback));
  await viaCallback((callback) => store.touch(sessionId, loaded, callback));
  assert.equal(await isGone(sessionId), true);
});

test("express-session store: callbacks run on a fresh tick, never inside a promise chain", async () => {
  const sessionId = unique("callbacks").replace(":", "_").padEnd(32, "0");
  const { stdout } = await promisify(execFile)(
    process.execPath,
    [`${import.meta.dirname}/store-callbacks.js`, batonAddr, sessionId],
    { timeout: 30_000 },
  );
  const surfaced = "uncaught exception";
  assert.deepEqual(JSON.parse(stdout), {
    set: surfaced,
    get: surfaced,
    touch: surfaced,
    length: surfaced,
    destroy: surfaced,
    clear: surfaced,
  });
});

test("express-session store: length counts and clear ends the tenant's sessions; there is no all()", async () => {
  const store = new BatonSessionStore({ client });
  const origin = await serve(lifetimeSite(store));
  await viaCallback((callback) => store.clear(callback));
  assert.equal(await viaCallback<number>((callback) => store.length(callback)), 0);

  const browsers = [new Browser(origin), new Browser(origin), new Browser(origin)];
  for (const browser of browsers) {
    await browser.request("POST", `/login?user=${unique("ada")}&maxAge=60000`);
  }
  assert.equal(await viaCallback<number>((callback) => store.length(callback)), 3);
  await viaCallback((callback) => store.destroy(browsers[0].sessionId!, callback));
  assert.equal(await viaCallback<number>((callback) => store.length(callback)), 2);

  await viaCallback((callback) => store.clear(callback));
  assert.equal(await viaCallback<number>((callback) => store.length(callback)), 0);
  assert.equal((await browsers[1].request("GET", "/visit"))[0], 401);
  // Baton keeps only hashes of the ids: express-session's callers must see all() is absent.
  assert.equal((store as { all?: unknown }).all, undefined);
});

test("express-session store: ids are 22 to 256 characters of [A-Za-z0-9_-], the default genid's included", async () => {
  const store = new BatonSessionStore({ client });
  const defaultIds = new Browser(await serve(lifetimeSite(store)));
  await defaultIds.request("POST", `/login?user=${unique("ada")}`);
  // express-session's own genid: uid-safe's 24 random bytes, 32 characters of base64url.
  assert.match(defaultIds.sessionId!, /^[A-Za-z0-9_-]{32}$/);
  assert.equal(await isGone(defaultIds.sessionId!), false);

  const shortest = new Browser(await serve(lifetimeSite(store, { genid: () => unique("id").replace(":", "_").padEnd(22, "0").slice(0, 22) })));
  assert.equal((await shortest.request("POST", `/login?user=${unique("ada")}`))[0], 200);
  assert.equal(await isGone(shortest.sessionId!), false);

  // One character short: express-session has already answered when its save fails, so the
  // failure reaches the app's error handler and the session is never stored.
  const errors: unknown[] = [];
  const rejected = new Browser(await serve(lifetimeSite(store, { genid: () => "a".repeat(21) }, errors)));
  await rejected.request("POST", `/login?user=${unique("ada")}`);
  await eventually("the failed save reaches the error handler", () => errors.length > 0);
  const [error] = errors;
  assert.ok(error instanceof InvalidArgumentError && error.field === "session_id", String(error));
  assert.equal((await rejected.request("GET", "/visit"))[0], 401);
});
