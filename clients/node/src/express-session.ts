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
// A Baton session belongs to one subject, fixed at creation: `options.subject(session)`
// (by default `session.userId`), or a random anonymous subject before login. Regenerate the
// session at login (`req.session.regenerate`), as express-session advises against fixation;
// if an existing session gains or changes its user instead, the store re-creates it under the
// new subject. A session that ended (revoked, expired, destroyed) is never written back: its
// set() and touch() do nothing, and the next request starts afresh.

import { randomBytes } from "node:crypto";

import type { Request } from "express";
import session, { SessionData, Store } from "express-session";

import { BatonClient } from "./client.js";
import { InvalidArgumentError, NotFoundError } from "./errors.js";

type Callback = (error?: unknown) => void;

const ANONYMOUS_PREFIX = "anonymous:";

export interface BatonSessionStoreOptions {
  client: BatonClient;
  /** The user a session belongs to, for "log out everywhere"; default `session.userId`. */
  subject?: (session: SessionData) => string | undefined;
  /** Default: the server's (30 min unless configured). */
  idleTimeoutMs?: number;
  /** Default: the server's (24 h unless configured). */
  absoluteTimeoutMs?: number;
}

/** What Baton holds for a session this store loaded or wrote. */
interface Known {
  subject: string;
  keys: Set<string>;
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

/** Baton's answer for an id that is not (or no longer) a live session. */
function isGone(error: unknown): boolean {
  return error instanceof NotFoundError || error instanceof InvalidArgumentError;
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
    this.client.getSession(sid).then(
      (found) => {
        const data = decode(found.data);
        this.known.set(data, { subject: found.subject, keys: new Set(Object.keys(found.data)) });
        callback(null, data);
      },
      (error: unknown) => (isGone(error) ? callback(null, null) : callback(error)),
    );
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
    this.save(sid, session).then(() => callback?.(), (error: unknown) => callback?.(error));
  }

  private async save(sid: string, session: SessionData): Promise<void> {
    const known = this.known.get(session);
    const data = encode(session);
    const subject =
      this.subjectOf(session) ??
      (known?.subject.startsWith(ANONYMOUS_PREFIX)
        ? known.subject
        : // Random, not derived from the secret id: subjects show in listings and logs.
          ANONYMOUS_PREFIX + randomBytes(16).toString("base64url"));
    if (known && known.subject === subject) {
      const remove = [...known.keys].filter((key) => !(key in data));
      try {
        await this.client.updateSession(sid, { set: data, remove });
      } catch (error) {
        if (isGone(error)) {
          return; // ended while this request ran: never bring it back
        }
        throw error;
      }
      this.known.set(session, { subject, keys: new Set(Object.keys(data)) });
      return;
    }
    if (known && !(await this.client.deleteSession(sid))) {
      return; // the subject changed, but the session had already ended
    }
    await this.client.createSession(subject, data, {
      sessionId: sid,
      idleTimeoutMs: this.options.idleTimeoutMs,
      absoluteTimeoutMs: this.options.absoluteTimeoutMs,
    });
    this.known.set(session, { subject, keys: new Set(Object.keys(data)) });
  }

  destroy(sid: string, callback?: Callback): void {
    this.client.deleteSession(sid).then(
      () => callback?.(),
      (error: unknown) => (isGone(error) ? callback?.() : callback?.(error)),
    );
  }

  touch(sid: string, _session: SessionData, callback?: () => void): void {
    // A read slides the idle timeout; a session that ended stays ended.
    this.client.getSession(sid).then(
      () => callback?.(),
      () => callback?.(),
    );
  }
}
