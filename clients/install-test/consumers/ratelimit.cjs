// The CommonJS program of `make clients-install-test`: run in a new project outside the
// repository, it makes one real rate-limit check against $BATON_TARGET, and loads the
// express-session entry point.
const { randomBytes } = require("node:crypto");

const { BatonClient } = require("@baton-dev/baton-client");
const { BatonSessionStore } = require("@baton-dev/baton-client/express-session");

async function main() {
  const client = new BatonClient({ target: process.env.BATON_TARGET });
  try {
    const key = `install-test:cjs:${randomBytes(6).toString("hex")}`;
    const first = await client.allow(key, { limit: 1, periodMs: 60_000 });
    const second = await client.allow(key, { limit: 1, periodMs: 60_000 });
    if (!first.allowed || second.allowed) {
      throw new Error(`a limit of 1 answered ${first.allowed}, then ${second.allowed}`);
    }
    new BatonSessionStore({ client });
    console.log("allowed, then limited");
    console.log("loaded from", require.resolve("@baton-dev/baton-client"));
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
