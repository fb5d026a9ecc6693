// Baton errors as Error subclasses, built from the google.rpc details Baton attaches to every
// failure (ErrorInfo, RetryInfo, BadRequest). Branch on the class and on `reasonOf(error)`,
// the ErrorInfo reason as the generated ErrorReason enum, never on the message text.

import { Metadata, status as Status } from "@grpc/grpc-js";

import { ErrorReason, errorReasonFromJSON } from "./gen/baton/v1/errors.js";
import { BadRequest, ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details.js";
import { Status as RpcStatus } from "./gen/google/rpc/status.js";
import { durationToMs } from "./connection.js";
import type { JobSnapshot } from "./queue.js";

export { ErrorReason } from "./gen/baton/v1/errors.js";

const STATUS_DETAILS_KEY = "grpc-status-details-bin";
const TYPE_URL_PREFIX = "type.googleapis.com/";

/** A failed Baton call. */
export class BatonError extends Error {
  /** The gRPC status code. */
  readonly code: Status;
  /**
   * `ErrorInfo.reason` as sent: the name of an ErrorReason value, e.g. "LEASE_NOT_HELD"; ""
   * when the server sent none. Compare `reasonOf(error)` with the ErrorReason constants.
   */
  readonly reason: string;
  /** The request field an INVALID_ARGUMENT names (`BadRequest`). */
  readonly field: string | undefined;
  /** Milliseconds to wait before retrying (`RetryInfo`), when the server advised it. */
  readonly retryAfterMs: number | undefined;

  constructor(
    message: string,
    details: { code: Status; reason?: string; field?: string; retryAfterMs?: number },
  ) {
    super(`${Status[details.code]}${details.reason ? ` (${details.reason})` : ""}: ${message}`);
    this.name = new.target.name;
    this.code = details.code;
    this.reason = details.reason ?? "";
    this.field = details.field;
    this.retryAfterMs = details.retryAfterMs;
  }
}

/** Bad input; `field` names it. Nothing was written. */
export class InvalidArgumentError extends BatonError {}
/** A lease or token that is not the current one (LEASE_NOT_HELD, …). */
export class FailedPreconditionError extends BatonError {}
/** Baton or its Redis is unreachable; retry after `retryAfterMs` where that is safe. */
export class UnavailableError extends BatonError {}
/** The call's deadline passed. */
export class DeadlineExceededError extends BatonError {}
/** A compare-and-set version mismatch. */
export class AbortedError extends BatonError {}
/** Something that must be new exists already. */
export class AlreadyExistsError extends BatonError {}
/** The session or job does not exist. */
export class NotFoundError extends BatonError {}
/** Redis is out of memory, or a message is over a size limit. */
export class ResourceExhaustedError extends BatonError {}
/** Missing or invalid API key. */
export class UnauthenticatedError extends BatonError {}
/** The API key is valid but not for this namespace. */
export class PermissionDeniedError extends BatonError {}
/** The server does not offer this RPC (yet). */
export class UnimplementedError extends BatonError {}
/** A server bug; the cause is in the server's logs. */
export class InternalError extends BatonError {}

const CLASS_BY_CODE: Partial<Record<Status, typeof BatonError>> = {
  [Status.INVALID_ARGUMENT]: InvalidArgumentError,
  [Status.FAILED_PRECONDITION]: FailedPreconditionError,
  [Status.UNAVAILABLE]: UnavailableError,
  [Status.DEADLINE_EXCEEDED]: DeadlineExceededError,
  [Status.ABORTED]: AbortedError,
  [Status.ALREADY_EXISTS]: AlreadyExistsError,
  [Status.NOT_FOUND]: NotFoundError,
  [Status.RESOURCE_EXHAUSTED]: ResourceExhaustedError,
  [Status.UNAUTHENTICATED]: UnauthenticatedError,
  [Status.PERMISSION_DENIED]: PermissionDeniedError,
  [Status.UNIMPLEMENTED]: UnimplementedError,
  [Status.INTERNAL]: InternalError,
};

interface GrpcErrorLike {
  code: Status;
  details?: string;
  metadata?: Metadata;
}

function isGrpcError(error: unknown): error is GrpcErrorLike {
  return typeof error === "object" && error !== null && typeof (error as GrpcErrorLike).code === "number";
}

/** The gRPC status code of an error from a generated stub, or undefined. */
export function codeOf(error: unknown): Status | undefined {
  return isGrpcError(error) ? error.code : undefined;
}

/**
 * Turns an error from a generated stub into a BatonError; anything else (already mapped, or
 * not a gRPC error) is returned as is.
 */
export function fromGrpcError(error: unknown): unknown {
  if (error instanceof BatonError || !isGrpcError(error)) {
    return error;
  }
  let reason: string | undefined;
  let field: string | undefined;
  let retryAfterMs: number | undefined;
  for (const value of error.metadata?.get(STATUS_DETAILS_KEY) ?? []) {
    if (typeof value === "string") {
      continue;
    }
    for (const detail of RpcStatus.decode(value).details) {
      const type = detail.typeUrl.startsWith(TYPE_URL_PREFIX)
        ? detail.typeUrl.slice(TYPE_URL_PREFIX.length)
        : detail.typeUrl;
      if (type === "google.rpc.ErrorInfo") {
        reason = ErrorInfo.decode(detail.value).reason;
      } else if (type === "google.rpc.RetryInfo") {
        const delay = RetryInfo.decode(detail.value).retryDelay;
        retryAfterMs = delay === undefined ? undefined : durationToMs(delay);
      } else if (type === "google.rpc.BadRequest") {
        field = BadRequest.decode(detail.value).fieldViolations[0]?.field;
      }
    }
  }
  const ErrorClass = CLASS_BY_CODE[error.code] ?? BatonError;
  return new ErrorClass(error.details ?? "", { code: error.code, reason, field, retryAfterMs });
}

/**
 * The ErrorInfo reason of `error` as the generated enum, to compare with
 * `ErrorReason.LEASE_NOT_HELD` and the like. `error` may be a BatonError or come straight
 * from a generated stub. ERROR_REASON_UNSPECIFIED when it carries no reason, is no gRPC
 * error, or carries a reason these stubs do not know (a newer server's: `reason` still has
 * the string).
 */
export function reasonOf(error: unknown): ErrorReason {
  const mapped = fromGrpcError(error);
  if (!(mapped instanceof BatonError)) {
    return ErrorReason.ERROR_REASON_UNSPECIFIED;
  }
  // The generated parser answers UNRECOGNIZED for a name it lacks, "" included.
  const reason = errorReasonFromJSON(mapped.reason);
  return reason === ErrorReason.UNRECOGNIZED ? ErrorReason.ERROR_REASON_UNSPECIFIED : reason;
}

/** The lock stayed held by others for the whole wait. */
export class LockNotAcquiredError extends Error {
  constructor(
    readonly lockName: string,
    readonly holderOwner: string,
  ) {
    super(`lock ${JSON.stringify(lockName)} is held by ${JSON.stringify(holderOwner)}`);
    this.name = "LockNotAcquiredError";
  }
}

/**
 * The lease — a lock's or a leadership's — is gone while it was meant to be held: Baton
 * answered LEASE_NOT_HELD, an error no retry can fix occurred, or no renewal was confirmed
 * for a whole ttl. Another holder may have the lock, or another candidate the leadership, now;
 * the fencing token (the term) is what protects the resource. `cause` is the BatonError that
 * revealed the loss, if any.
 */
export class LeaseLostError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "LeaseLostError";
  }
}

/**
 * CancelJob was called for a job while its handler ran: the handler's signal aborts with this
 * reason, and the job is not acked (Baton would refuse the Ack).
 */
export class JobCancelledError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "JobCancelledError";
  }
}

/**
 * Baton refused to extend a running job's lease (JOB_NOT_LEASED): it expired or the job went
 * to another worker, whose result is the one that counts. The handler's signal aborts with
 * this reason and the job is not acked. `cause` is the FailedPreconditionError.
 */
export class JobLeaseLostError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "JobLeaseLostError";
  }
}

/**
 * The job waitForJob waited for finished without succeeding: `job.state` is "dead" (out of
 * attempts or dead-lettered; `job.lastError` says why) or "cancelled". `job` is its final
 * snapshot (without its payload).
 */
export class JobNotSucceededError extends Error {
  constructor(readonly job: JobSnapshot) {
    super(job.state === "dead" ? `job ${job.id} is dead: ${job.lastError}` : `job ${job.id} was ${job.state}`);
    this.name = "JobNotSucceededError";
  }
}
