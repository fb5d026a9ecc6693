// Runs connect-redis's own index_test.ts (from its npm package, unchanged) against Baton:
// its three imports are pointed at the stand-ins beside this file. run.sh copies them next
// to the test.
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const here = (file) => fileURLToPath(new URL(file, import.meta.url));

export default defineConfig({
  resolve: {
    alias: [
      // `import {RedisStore} from "./"`: connect-redis's store, here Baton's behind its API.
      { find: /^\.\/$/, replacement: here("./store.mjs") },
      // `import * as redisSrv from "./testdata/server"`: the runner has started baton already.
      { find: /^\.\/testdata\/server$/, replacement: here("./server.mjs") },
      // `import {createClient} from "redis"`: a client whose ttl() reads a session's deadline.
      { find: /^redis$/, replacement: here("./redis.mjs") },
    ],
  },
  test: { include: ["index_test.ts"], testTimeout: 120_000 },
});
