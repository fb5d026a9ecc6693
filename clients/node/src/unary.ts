// Promises over grpc-js's callback-style unary calls, cancellable by an AbortSignal.

import type { CallOptions, ClientUnaryCall, Metadata, ServiceError } from "@grpc/grpc-js";
import { Metadata as GrpcMetadata } from "@grpc/grpc-js";

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

export function unary<Req, Res>(
  method: UnaryMethod<Req, Res>,
  request: Req,
  options: Partial<CallOptions> = {},
  signal?: AbortSignal,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const call = method(request, new GrpcMetadata(), options, (error, response) => {
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
