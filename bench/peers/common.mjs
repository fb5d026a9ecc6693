// Shared by the peer scripts: flags, the installed version of a package, and percentiles.
import { readFileSync } from "node:fs";

// `--name value` pairs; every flag has a default, so a bare run works against a local Redis.
export function flags(defaults) {
  const out = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    if (!(name in defaults) || i + 1 >= argv.length) {
      console.error(`unknown flag or missing value: ${argv[i]} (known: ${Object.keys(defaults).join(", ")})`);
      process.exit(2);
    }
    out[name] = argv[i + 1];
  }
  return out;
}

export function version(pkg) {
  const url = new URL(`./node_modules/${pkg}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, "utf8")).version.replace(/^v/, "");
}

export function percentile(sorted, q) {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
