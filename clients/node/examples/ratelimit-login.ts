// Rate limiting a login route: at most 5 attempts per minute per client IP, shared by every
// replica of the web service, answered 429 with Retry-After beyond that.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//   cd clients/node && npm ci && npx tsc -p . && node dist/dev/examples/ratelimit-login.js
//   for i in 1 2 3 4 5 6; do curl -si -XPOST localhost:8080/login | head -1; done
//
// BATON_TARGET overrides the default localhost:50051.

import { createServer } from "node:http";

import { BatonClient } from "@baton-dev/baton-client";

const client = new BatonClient({ target: process.env.BATON_TARGET ?? "localhost:50051", timeoutMs: 1000 });

const server = createServer(async (req, res) => {
  if (req.method !== "POST" || req.url !== "/login") {
    res.writeHead(404).end();
    return;
  }
  try {
    // Fail open: a Baton or Redis outage should not lock every user out of logging in.
    const decision = await client.allow(`login:${req.socket.remoteAddress}`, {
      limit: 5,
      periodMs: 60_000,
      failOpen: true,
    });
    if (!decision.allowed) {
      res.writeHead(429, { "retry-after": String(Math.ceil(decision.retryAfterMs / 1000)) });
      res.end("too many login attempts\n");
      return;
    }
  } catch (error) {
    console.warn("rate limit unavailable, letting the attempt through:", error);
  }
  res.end("checking the password\n");
});
server.listen(8080, "localhost", () => console.log("listening on localhost:8080"));
