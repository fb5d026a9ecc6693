// Promises over grpc-js's callback-style unary calls, cancellable by an AbortSignal.

import type { CallOptions, ClientUnaryCall, Metadata, ServiceError } from "@grpc/grpc-js";
import { Metadata as GrpcMetadata } from "@grpc/grpc-js";

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

export interface UnaryOptions extends Partial<CallOptions> {
  /**
   * While no replica is reachable, wait for one (until the deadline) instead of failing at
   * once with UNAVAILABLE. Only for calls that are safe to retry, which the helpers send
   * this way.
   */
  waitForReady?: boolean;
}

export function unary<Req, Res>(
  method: UnaryMethod<Req, Res>,
  request: Req,
  options: UnaryOptions = {},
  signal?: AbortSignal,
): Promise<Res> {
  const { waitForReady, ...callOptions } = options;
  return new Promise((resolve, reject) => {
    const call = method(request, new GrpcMetadata({ waitForReady }), callOptions, (error, response) => {
      signal?.removeEventListener("abort", cancel);
      if (error) {
        reject(error);
      } else {
        resolve(response);
      }
    });
    const cancel = () => call.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
  });
}
