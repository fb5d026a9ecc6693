// Stands in for node-redis's createClient in connect-redis's test: a BatonClient, plus the
// one Redis command the test sends itself, `ttl("sess:<id>")`, answered from the session's
// deadlines as Redis would answer it for connect-redis's key.
import { BatonClient, NotFoundError } from "@baton-dev/baton-client";

import { batonId, PREFIX } from "./ids.mjs";

export function createClient() {
  const baton = new BatonClient({ target: process.env.BATON_TARGET, apiKey: process.env.BATON_API_KEY });
  return {
    baton,
    async connect() {},
    destroy() {
      baton.close();
    },
    async ttl(key) {
      if (!key.startsWith(PREFIX)) {
        return -2;
      }
      try {
        const session = await baton.getSession(batonId(key.slice(PREFIX.length)), { touch: false });
        const deadline = Math.min(session.idleExpiresAt.getTime(), session.absoluteExpiresAt.getTime());
        // Redis rounds a key's remaining time to the nearest second.
        return Math.round((deadline - Date.now()) / 1000);
      } catch (error) {
        if (error instanceof NotFoundError) {
          return -2; // Redis's answer for a key that does not exist
        }
        throw error;
      }
    },
  };
}
