// Starts redis-server and baton (the Node client's test harness) and runs, against them,
// express-session's test/session.js under mocha with every MemoryStore made Baton's
// (memory-store.cjs), then connect-redis's index_test.ts under vitest. Prints each suite's
// counts and failures, and exits non-zero when a suite's failures differ from the ones
// docs/sessions.md#express-session lists (EXPECTED_FAILURES below).
//
//   node run.mjs <repository root> <express-session package directory>

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [repo, expressSession] = process.argv.slice(2);
const here = import.meta.dirname;
const work = process.cwd();
const results = mkdtempSync(join(tmpdir(), "baton-conformance-"));

// What Baton's store cannot do, by design (docs/sessions.md#express-session).
const EXPECTED_FAILURES = {
  "express-session": [
    // store.all(): Baton keeps only hashes of the ids, so the store has no all().
    "session() should create multiple sessions",
    "session() when session expired in store should not exist in store",
    // ids outside Baton's rule (22..=256 characters of [A-Za-z0-9_-]): "apple", "%", "/foo".
    "session() genid option should allow custom function",
    "session() genid option should encode unsafe chars",
    "session() genid option should provide req argument",
  ],
  "connect-redis": [
    // connect-redis's own RedisStore option defaults (prefix, scanCount, serializer, …).
    "defaults",
    // its lifecycle, which fails at store.ids() (hashes again) once every earlier step passed.
    "redis",
  ],
};
// The id-rule tests' store error reaches the test server's 'error' event after the test has
// passed, and mocha then aborts the whole run: they run apart, one mocha each.
const RUN_APART = EXPECTED_FAILURES["express-session"].filter((title) => title.includes("genid option"));

// One tenant per store (memory-store.cjs): express-session's tests create about 270 stores.
const STORE_KEYS = 400;
const CONNECT_REDIS_KEY = "conformance-connect-redis";
const sha256 = (text) => createHash("sha256").update(text).digest("hex");
const keys = [
  ...Array.from({ length: STORE_KEYS }, (_, store) => [`conformance-store-${store}`, `store-${store}`]),
  [CONNECT_REDIS_KEY, "connect-redis"],
];
const config = join(results, "api-keys.toml");
writeFileSync(config, keys.map(([key, tenant]) => `[[api_keys]]\nsha256 = "${sha256(key)}"\ntenant = "${tenant}"\n`).join(""));
process.env.BATON_CONFIG = config; // the harness starts baton with this environment

const { Environment } = await import(pathToFileURL(join(repo, "clients", "node", "dist", "dev", "test", "harness.js")).href);
const environment = await Environment.start();
const baton = await environment.baton();
const env = {
  ...process.env,
  BATON_TARGET: baton.addr,
  BATON_STORE_KEYS: String(STORE_KEYS),
  BATON_API_KEY: CONNECT_REDIS_KEY,
};

/** Runs one mocha over express-session's test/session.js; resolves with its JSON report. */
function mocha(name, ...args) {
  const output = join(results, `${name}.json`);
  spawnSync(
    join(work, "node_modules", ".bin", "mocha"),
    ["--require", "test/support/env", "--require", join(here, "memory-store.cjs"), "--check-leaks", "--no-exit",
      "--reporter", "json", "--reporter-option", `output=${output}`, ...args, "test/session.js"],
    { cwd: expressSession, env, stdio: ["ignore", "inherit", "inherit"] },
  );
  const report = JSON.parse(readFileSync(output, "utf8"));
  return {
    // A test that passed and then failed (the id-rule tests) counts as failed.
    passed: report.passes.map((test) => test.fullTitle).filter((title) => !report.failures.some((f) => f.fullTitle === title)),
    failed: report.failures.map((test) => [test.fullTitle, test.err.message]),
  };
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const verdicts = [];

function judge(suite, total, passed, failed) {
  console.log(`\n== ${suite}: ${passed} of ${total} passed`);
  for (const [title, message] of failed) {
    console.log(`   failed: ${title}\n           ${String(message).split("\n")[0]}`);
  }
  const unexpected = failed.map(([title]) => title).filter((title) => !EXPECTED_FAILURES[suite].includes(title));
  const fixed = EXPECTED_FAILURES[suite].filter((title) => !failed.some(([failure]) => failure === title));
  for (const title of unexpected) verdicts.push(`${suite}: unexpected failure: ${title}`);
  for (const title of fixed) verdicts.push(`${suite}: passes now, update docs/sessions.md and run.mjs: ${title}`);
}

if (existsSync(join(expressSession, "test", "session.js"))) {
  const main = mocha("express-session", "--grep", RUN_APART.map((title) => `^${escape(title)}$`).join("|"), "--invert");
  const apart = RUN_APART.map((title, index) => mocha(`express-session-apart-${index}`, "--grep", `^${escape(title)}$`));
  const passed = main.passed.length + apart.reduce((sum, run) => sum + run.passed.length, 0);
  const failed = [...main.failed, ...apart.flatMap((run) => run.failed)];
  judge("express-session", passed + failed.length, passed, failed);
} else {
  console.log(
    "\n== express-session: skipped. Its npm package carries no tests; set EXPRESS_SESSION_REPO to a " +
      "checkout of github.com/expressjs/session to run test/session.js.",
  );
}

const vitestReport = join(results, "connect-redis.json");
spawnSync(
  join(work, "node_modules", ".bin", "vitest"),
  ["run", "--config", "vitest.config.mjs", "--reporter=dot", "--reporter=json", `--outputFile.json=${vitestReport}`],
  { cwd: join(work, "connect-redis"), env, stdio: ["ignore", "inherit", "inherit"] },
);
const tests = JSON.parse(readFileSync(vitestReport, "utf8")).testResults.flatMap((file) => file.assertionResults);
judge(
  "connect-redis",
  tests.length,
  tests.filter((test) => test.status === "passed").length,
  tests.filter((test) => test.status !== "passed").map((test) => [test.title, test.failureMessages[0] ?? test.status]),
);
const lifecycle = tests.find((test) => test.title === "redis");
if (lifecycle?.status === "failed" && !lifecycle.failureMessages[0]?.includes("ids(): not supported")) {
  verdicts.push("connect-redis: the lifecycle failed before it reached store.ids()");
}

await environment.close();
rmSync(results, { recursive: true, force: true });
console.log(verdicts.length === 0 ? "\nconformance-express-session: as documented" : `\n${verdicts.join("\n")}`);
process.exit(verdicts.length === 0 ? 0 : 1);
