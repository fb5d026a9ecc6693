// An express-session Store that keeps sessions in Baton:
//
//   import session from "express-session";
//   import { BatonSessionStore } from "@baton-dev/baton-client/express-session";
//   app.use(session({ store: new BatonSessionStore({ client }), secret, resave: false, saveUninitialized: false }));
//
// express-session picks its own session ids (24 random bytes, base64url); they are Baton's
// client-chosen session ids, of which Baton stores only a hash. Each top-level property of
// the session (the cookie included) is stored as JSON under its own key of the session's
// data, so an update writes what the request left and removes what it deleted.
//
// The cookie decides how long a session lives, as with express-session's MemoryStore: every
// set() and touch() of a session whose cookie expires (cookie.maxAge / cookie.expires) gives
// it an idle timeout of the time left until cookie.expires, so it ends when its cookie does,
// and (unless `absoluteTimeoutMs` caps it) moves its absolute deadline to cookie.expires, so a
// long "remember me" is not cut short by the server's 24 h default. A cookie already expired
// destroys the session. Sessions without maxAge get `idleTimeoutMs` / `absoluteTimeoutMs`, or
// the server's defaults.
//
// A Baton session belongs to one subject, fixed at creation: `options.subject(session)`
// (by default `session.userId`), or a random anonymous subject before login. Regenerate the
// session at login (`req.session.regenerate`), as express-session advises against fixation;
// if an existing session gains or changes its user instead, the store re-creates it under the
// new subject. set() on an id this store did not load is an upsert; but a session this store
// loaded that then ended (revoked, expired, destroyed) is never written back: its set() and
// touch() do nothing, and the next request starts afresh.
//
// Every callback runs on a fresh tick, never inside a promise chain, so an exception thrown
// by the caller's callback is an ordinary uncaught exception, not a lost rejection.
//
// `length` and `clear` count and end every session of the client's tenant (give each
// application its own API key and tenant). There is no `all` (nor `ids`): Baton keeps only
// hashes of the ids, so it cannot list them.

import { randomBytes } from "node:crypto";

import type { Request } from "express";
import session, { SessionData, Store } from "express-session";

import { BatonClient } from "./client.js";
import { AlreadyExistsError, InvalidArgumentError, NotFoundError } from "./errors.js";
import type { Session } from "./session.js";

type Callback = (error?: unknown) => void;

const ANONYMOUS_PREFIX = "anonymous:";
// Baton's shortest timeout: a cookie with less left than this lives this long.
const MIN_TIMEOUT_MS = 100;
// Baton's default limits.max_ttl, its longest timeout.
const DEFAULT_MAX_TTL_MS = 30 * 24 * 3_600_000;

export interface BatonSessionStoreOptions {
  client: BatonClient;
  /** The user a session belongs to, for "log out everywhere"; default `session.userId`. */
  subject?: (session: SessionData) => string | undefined;
  /**
   * The idle timeout of sessions whose cookie has no expiry (no `cookie.maxAge`); default the
   * server's (30 min unless configured). A cookie's expiry overrides it.
   */
  idleTimeoutMs?: number;
  /**
   * A cap on every session's lifetime from its creation, whatever its cookie says; default
   * none: a session with an expiring cookie lives until the cookie expires, one without until
   * the server's absolute timeout (24 h unless configured).
   */
  absoluteTimeoutMs?: number;
  /**
   * The server's `limits.max_ttl` (default 30 days), Baton's longest timeout: a cookie that
   * expires later makes a session that lives this long (its absolute deadline at most this
   * long after its creation) instead of a rejected write. Set it when the server's differs.
   */
  maxTtlMs?: number;
}

/** What Baton holds for a session this store loaded or wrote. */
interface Known {
  subject: string;
  keys: Set<string>;
  createdAt: Date | undefined;
}

/** The timeouts that make a session end with its cookie; `ended` when the cookie has expired. */
interface Lifetime {
  ended: boolean;
  idleTimeoutMs?: number;
  /** The absolute deadline's time after now; turned into a timeout from `createdAt` on update. */
  absoluteInMs?: number;
}

function defaultSubject(session: SessionData): string | undefined {
  const userId: unknown = (session as unknown as Record<string, unknown>).userId;
  return userId === undefined || userId === null ? undefined : String(userId);
}

function encode(session: SessionData): Record<string, Buffer> {
  const data: Record<string, Buffer> = {};
  for (const [key, value] of Object.entries(session)) {
    if (value !== undefined && typeof value !== "function") {
      data[key] = Buffer.from(JSON.stringify(value));
    }
  }
  return data;
}

function decode(data: Record<string, Buffer>): SessionData {
  const session: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(data)) {
    session[key] = JSON.parse(value.toString("utf8"));
  }
  return session as unknown as SessionData;
}

/** When the session's cookie expires (ms since the epoch), or undefined for a browser-session cookie. */
function cookieExpiry(session: SessionData): number | undefined {
  const expires: unknown = (session as { cookie?: { expires?: unknown } }).cookie?.expires;
  if (expires === undefined || expires === null || expires === false) {
    return undefined;
  }
  const at = new Date(expires as string | number | Date).getTime();
  return Number.isNaN(at) ? undefined : at;
}

/** Baton's answer for an id that is not (or no longer) a live session. */
function isGone(error: unknown): boolean {
  return (
    error instanceof NotFoundError || (error instanceof InvalidArgumentError && error.field === "session_id")
  );
}

/**
 * Settles `work` into a Node-style callback on a fresh tick: an exception thrown by the
 * callback must reach the process as itself, not become a rejection of this chain that
 * nobody observes (express-session's callers, and their tests, would then hang).
 */
function callBack<T>(work: Promise<T>, callback: ((error: unknown, value?: T) => void) | undefined): void {
  work.then(
    (value) => {
      if (callback) {
        setImmediate(callback, null, value);
      }
    },
    (error: unknown) => {
      if (callback) {
        setImmediate(callback, error);
      }
    },
  );
}

export class BatonSessionStore extends Store {
  private readonly client: BatonClient;
  private readonly subjectOf: (session: SessionData) => string | undefined;
  // Keyed by the session objects express-session holds: a session loaded from Baton may only
  // be updated, never created again, or a write racing a revocation would bring it back.
  private readonly known = new WeakMap<object, Known>();

  constructor(private readonly options: BatonSessionStoreOptions) {
    super();
    this.client = options.client;
    this.subjectOf = options.subject ?? defaultSubject;
  }

  get(sid: string, callback: (error: unknown, session?: SessionData | null) => void): void {
    callBack(this.read(sid), callback);
  }

  private async read(sid: string): Promise<SessionData | null> {
    let found: Session;
    try {
      found = await this.client.getSession(sid);
    } catch (error) {
      if (isGone(error)) {
        return null;
      }
      throw error;
    }
    const data = decode(found.data);
    const expiry = cookieExpiry(data);
    // Baton ends the session at the cookie's expiry already; this covers a cookie that the
    // app's clock sees expired a moment before Redis's does.
    if (expiry !== undefined && expiry <= Date.now()) {
      await this.client.deleteSession(sid);
      return null;
    }
    this.known.set(data, this.knownOf(found));
    return data;
  }

  createSession(req: Request, data: SessionData): session.Session & SessionData {
    const created = super.createSession(req, data);
    const known = this.known.get(data);
    if (known) {
      this.known.set(created, known);
    }
    return created;
  }

  set(sid: string, session: SessionData, callback?: Callback): void {
    callBack(this.save(sid, session), callback);
  }

  /** The timeouts that end the session with its cookie, as of now. */
  private lifetimeOf(session: SessionData): Lifetime {
    const expiry = cookieExpiry(session);
    if (expiry === undefined) {
      return { ended: false, idleTimeoutMs: this.options.idleTimeoutMs, absoluteInMs: undefined };
    }
    const left = expiry - Date.now();
    if (left <= 0) {
      return { ended: true };
    }
    const timeoutMs = this.clamp(left);
    // With a configured cap the absolute deadline stays where creation put it.
    return { ended: false, idleTimeoutMs: timeoutMs, absoluteInMs: this.options.absoluteTimeoutMs ? undefined : timeoutMs };
  }

  /** A timeout within the range Baton accepts. */
  private clamp(timeoutMs: number): number {
    return Math.min(Math.max(Math.ceil(timeoutMs), MIN_TIMEOUT_MS), this.options.maxTtlMs ?? DEFAULT_MAX_TTL_MS);
  }

  /** The absolute timeout (from creation) that puts the deadline `absoluteInMs` from now. */
  private absoluteTimeoutOf(lifetime: Lifetime, createdAt: Date | undefined): number | undefined {
    if (lifetime.absoluteInMs === undefined || createdAt === undefined) {
      return undefined;
    }
    return this.clamp(Date.now() - createdAt.getTime() + lifetime.absoluteInMs);
  }

  private knownOf(found: Session): Known {
    return { subject: found.subject, keys: new Set(Object.keys(found.data)), createdAt: found.createdAt };
  }

  private async save(sid: string, session: SessionData): Promise<void> {
    const lifetime = this.lifetimeOf(session);
    if (lifetime.ended) {
      // As MemoryStore and connect-redis do: a session saved with an expired cookie is over.
      await this.client.deleteSession(sid);
      return;
    }
    const known = this.known.get(session);
    const data = encode(session);
    const subject =
      this.subjectOf(session) ??
      (known?.subject.startsWith(ANONYMOUS_PREFIX)
        ? known.subject
        : // Random, not derived from the secret id: subjects show in listings and logs.
          ANONYMOUS_PREFIX + randomBytes(16).toString("base64url"));
    if (known) {
      if (known.subject === subject) {
        const updated = await this.update(sid, data, known, lifetime);
        if (updated) {
          this.known.set(session, this.knownOf(updated));
        }
        return;
      }
      if (!(await this.client.deleteSession(sid))) {
        return; // the subject changed, but the session had already ended
      }
      this.known.set(session, await this.create(sid, subject, data, lifetime));
      return;
    }
    // An id this store did not load (a new session, or a set() from outside a request):
    // create it, or replace what the id holds, as express-session's stores do. Each round
    // lost means another writer changed the id meanwhile; three in a row answer its error.
    for (let round = 1; ; round++) {
      try {
        this.known.set(session, await this.create(sid, subject, data, lifetime));
        return;
      } catch (error) {
        if (!(error instanceof AlreadyExistsError) || round === 3) {
          throw error;
        }
      }
      let existing: Session;
      try {
        existing = await this.client.getSession(sid, { touch: false });
      } catch (error) {
        if (error instanceof NotFoundError) {
          continue; // ended since: create it anew
        }
        throw error;
      }
      const held = this.knownOf(existing);
      if (held.subject === subject) {
        const updated = await this.update(sid, data, held, lifetime);
        if (updated) {
          this.known.set(session, this.knownOf(updated));
          return;
        }
      } else {
        await this.client.deleteSession(sid);
      }
    }
  }

  /** Replaces the session's data and timeouts; undefined when it has ended. */
  private async update(sid: string, data: Record<string, Buffer>, known: Known, lifetime: Lifetime): Promise<Session | undefined> {
    const remove = [...known.keys].filter((key) => !(key in data));
    try {
      return await this.client.updateSession(sid, {
        set: data,
        remove,
        idleTimeoutMs: lifetime.idleTimeoutMs,
        absoluteTimeoutMs: this.absoluteTimeoutOf(lifetime, known.createdAt),
      });
    } catch (error) {
      if (isGone(error)) {
        return undefined; // ended while this request ran: never bring it back
      }
      throw error;
    }
  }

  private async create(sid: string, subject: string, data: Record<string, Buffer>, lifetime: Lifetime): Promise<Known> {
    const created = await this.client.createSession(subject, data, {
      sessionId: sid,
      idleTimeoutMs: lifetime.idleTimeoutMs,
      absoluteTimeoutMs: this.options.absoluteTimeoutMs ?? lifetime.absoluteInMs,
    });
    return this.knownOf(created.session);
  }

  destroy(sid: string, callback?: Callback): void {
    const work = this.client.deleteSession(sid).then(
      () => undefined,
      (error: unknown) => {
        if (!isGone(error)) {
          throw error;
        }
      },
    );
    callBack(work, callback);
  }

  touch(sid: string, session: SessionData, callback?: Callback): void {
    callBack(this.refresh(sid, session), callback);
  }

  /**
   * Stores the session's cookie and moves the session's expiry to the cookie's, as
   * MemoryStore's touch does; a session that ended stays ended.
   */
  private async refresh(sid: string, session: SessionData): Promise<void> {
    const lifetime = this.lifetimeOf(session);
    if (lifetime.ended) {
      await this.client.deleteSession(sid);
      return;
    }
    const cookie: unknown = (session as { cookie?: unknown }).cookie;
    try {
      let createdAt = this.known.get(session)?.createdAt;
      if (createdAt === undefined && lifetime.absoluteInMs !== undefined) {
        createdAt = (await this.client.getSession(sid, { touch: false })).createdAt;
      }
      await this.client.updateSession(sid, {
        set: cookie === undefined ? {} : { cookie: Buffer.from(JSON.stringify(cookie)) },
        idleTimeoutMs: lifetime.idleTimeoutMs,
        absoluteTimeoutMs: this.absoluteTimeoutOf(lifetime, createdAt),
      });
    } catch (error) {
      if (!isGone(error)) {
        throw error;
      }
    }
  }

  /** How many sessions of the client's tenant are live (all of them, not only this store's). */
  length(callback: (error: unknown, length?: number) => void): void {
    callBack(this.client.countSessions(), callback);
  }

  /** Ends every session of the client's tenant (all of them, not only this store's). */
  clear(callback?: Callback): void {
    callBack(
      this.client.clearSessions().then(() => undefined),
      callback,
    );
  }
}
