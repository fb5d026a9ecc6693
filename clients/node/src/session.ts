// Sessions: create, get, update, rotate, delete, list and revoke ("log out everywhere"); count
// and clear for a whole tenant.

import { msToDuration } from "./connection.js";
import {
  ClearSessionsRequest,
  CountSessionsRequest,
  CreateSessionRequest,
  DeleteSessionRequest,
  GetSessionRequest,
  ListSessionsRequest,
  RevokeSessionsRequest,
  RotateSessionRequest,
  Session as SessionMessage,
  SessionStoreServiceClient,
  UpdateSessionRequest,
} from "./gen/baton/v1/session.js";
import { once, retryUnavailable } from "./retry.js";
import { unary } from "./unary.js";

/** A session's public view; it never holds the secret session id. */
export interface Session {
  /** Public, non-secret id for listing and revoking; changes on rotation. */
  handle: string;
  subject: string;
  data: Record<string, Buffer>;
  attributes: Record<string, string>;
  /** Changes on every update of `data`; pass it as `ifVersion` for compare-and-set. */
  version: bigint;
  createdAt: Date | undefined;
  lastSeenAt: Date | undefined;
  idleExpiresAt: Date | undefined;
  absoluteExpiresAt: Date | undefined;
}

export interface CreateSessionOptions {
  /**
   * For frameworks that pick their own ids (express-session's genid): 22..=256 characters of
   * [A-Za-z0-9_-]. One in use rejects with AlreadyExistsError (reason SESSION_EXISTS). Never
   * reuse the id of a session that ended: that would bring it back for whoever still holds
   * the old cookie.
   */
  sessionId?: string;
  /** Default: the server's (30 min unless configured). */
  idleTimeoutMs?: number;
  /** Default: the server's (24 h unless configured). */
  absoluteTimeoutMs?: number;
  /** Describes the session in listings ("ip", "user_agent", …). */
  attributes?: Record<string, string>;
  signal?: AbortSignal;
}

export interface SessionUpdate {
  set?: Record<string, Uint8Array>;
  remove?: string[];
  /** Apply only at exactly this version, else AbortedError (reason VERSION_MISMATCH). */
  ifVersion?: bigint;
  /**
   * The session's new idle timeout: its idle deadline moves to now + this (earlier or later),
   * capped at its absolute deadline, and later touches slide it by this much. Unset keeps the
   * current one. Same range as at creation (100 ms up to the server's `limits.max_ttl`).
   */
  idleTimeoutMs?: number;
  /**
   * The session's new absolute timeout, counted from its `createdAt`: it may lengthen or
   * shorten the session; a deadline already past ends it (NotFoundError). Unset keeps the
   * current one.
   */
  absoluteTimeoutMs?: number;
  signal?: AbortSignal;
}

export function sessionOf(session: SessionMessage | undefined): Session {
  return {
    handle: session?.handle ?? "",
    subject: session?.subject ?? "",
    data: session?.data ?? {},
    attributes: session?.attributes ?? {},
    version: session?.version ?? 0n,
    createdAt: session?.createdAt,
    lastSeenAt: session?.lastSeenAt,
    idleExpiresAt: session?.idleExpiresAt,
    absoluteExpiresAt: session?.absoluteExpiresAt,
  };
}

/** The session helpers of BatonClient. */
export class SessionHelpers {
  constructor(
    private readonly stub: SessionStoreServiceClient,
    private readonly defaultTimeoutMs: number,
  ) {}

  async create(
    subject: string,
    data: Record<string, Uint8Array> = {},
    options: CreateSessionOptions = {},
  ): Promise<{ sessionId: string; session: Session }> {
    const request = CreateSessionRequest.fromPartial({
      subject,
      data: Object.fromEntries(Object.entries(data).map(([key, value]) => [key, Buffer.from(value)])),
      sessionId: options.sessionId ?? "",
      idleTimeout: options.idleTimeoutMs ? msToDuration(options.idleTimeoutMs) : undefined,
      absoluteTimeout: options.absoluteTimeoutMs ? msToDuration(options.absoluteTimeoutMs) : undefined,
      attributes: options.attributes ?? {},
    });
    const response = await once(() => unary(this.stub.createSession.bind(this.stub), request, {}, options.signal));
    return { sessionId: response.sessionId, session: sessionOf(response.session) };
  }

  async get(sessionId: string, options: { touch?: boolean; signal?: AbortSignal } = {}): Promise<Session> {
    const request = GetSessionRequest.fromPartial({ sessionId, noTouch: options.touch === false });
    const response = await retryUnavailable(
      () => unary(this.stub.getSession.bind(this.stub), request, { waitForReady: true }, options.signal),
      this.defaultTimeoutMs,
      options.signal,
    );
    return sessionOf(response.session);
  }

  async update(sessionId: string, update: SessionUpdate): Promise<Session> {
    const request = UpdateSessionRequest.fromPartial({
      sessionId,
      set: Object.fromEntries(Object.entries(update.set ?? {}).map(([key, value]) => [key, Buffer.from(value)])),
      remove: update.remove ?? [],
      ifVersion: update.ifVersion ?? 0n,
      idleTimeout: update.idleTimeoutMs === undefined ? undefined : msToDuration(update.idleTimeoutMs),
      absoluteTimeout: update.absoluteTimeoutMs === undefined ? undefined : msToDuration(update.absoluteTimeoutMs),
    });
    const response = await once(() => unary(this.stub.updateSession.bind(this.stub), request, {}, update.signal));
    return sessionOf(response.session);
  }

  async rotate(sessionId: string, signal?: AbortSignal): Promise<{ sessionId: string; session: Session }> {
    const request = RotateSessionRequest.fromPartial({ sessionId });
    const response = await once(() => unary(this.stub.rotateSession.bind(this.stub), request, {}, signal));
    return { sessionId: response.sessionId, session: sessionOf(response.session) };
  }

  async delete(sessionId: string, signal?: AbortSignal): Promise<boolean> {
    const request = DeleteSessionRequest.fromPartial({ sessionId });
    const response = await retryUnavailable(
      () => unary(this.stub.deleteSession.bind(this.stub), request, { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return response.deleted;
  }

  async list(subject: string, signal?: AbortSignal): Promise<Session[]> {
    const request = ListSessionsRequest.fromPartial({ subject });
    const response = await retryUnavailable(
      () => unary(this.stub.listSessions.bind(this.stub), request, { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return response.sessions.map(sessionOf);
  }

  async revoke(
    subject: string,
    options: { handles?: string[]; exceptHandle?: string; signal?: AbortSignal } = {},
  ): Promise<number> {
    const request = RevokeSessionsRequest.fromPartial({
      subject,
      handles: options.handles ?? [],
      exceptHandle: options.exceptHandle ?? "",
    });
    const response = await once(() => unary(this.stub.revokeSessions.bind(this.stub), request, {}, options.signal));
    return Number(response.revoked);
  }

  async count(signal?: AbortSignal): Promise<number> {
    const response = await retryUnavailable(
      () => unary(this.stub.countSessions.bind(this.stub), CountSessionsRequest.fromPartial({}), { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return Number(response.live);
  }

  async clear(signal?: AbortSignal): Promise<number> {
    const response = await retryUnavailable(
      () => unary(this.stub.clearSessions.bind(this.stub), ClearSessionsRequest.fromPartial({}), { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return Number(response.cleared);
  }
}
