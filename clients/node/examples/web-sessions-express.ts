// Sessions in a web app: an Express site whose express-session store is Baton, so every
// replica sees the sessions and "log out everywhere" works.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//   cd clients/node && npm ci && npx tsc -p . && node dist/dev/examples/web-sessions-express.js
//   curl -c jar -b jar -d user=ada localhost:3000/login && curl -b jar localhost:3000/me
//   curl -b jar -XPOST localhost:3000/logout-everywhere && curl -b jar localhost:3000/me
//
// BATON_TARGET overrides the default localhost:50051.

import express from "express";
import session from "express-session";

import { BatonClient } from "@baton-dev/baton-client";
import { BatonSessionStore } from "@baton-dev/baton-client/express-session";

declare module "express-session" {
  interface SessionData {
    userId: string;
    theme: string;
  }
}

const client = new BatonClient({ target: process.env.BATON_TARGET ?? "localhost:50051" });
const app = express();
app.use(express.urlencoded({ extended: false }));
app.use(
  session({
    store: new BatonSessionStore({ client, idleTimeoutMs: 30 * 60_000 }),
    secret: process.env.SESSION_SECRET ?? "example-only",
    resave: false, // the store implements touch()
    saveUninitialized: false,
    cookie: { httpOnly: true, sameSite: "lax" },
  }),
);

app.post("/login", (req, res, next) => {
  // A real site checks the password (and rate-limits this route) first. A new session id at
  // login defeats session fixation.
  req.session.regenerate((error) => {
    if (error) {
      next(error);
      return;
    }
    req.session.userId = String(req.body.user);
    req.session.theme = "dark";
    res.send(`welcome, ${req.session.userId}\n`);
  });
});

app.get("/me", (req, res) => {
  if (!req.session.userId) {
    res.status(401).send("not logged in\n");
    return;
  }
  res.send(`${req.session.userId} (theme ${req.session.theme})\n`);
});

app.post("/logout", (req, res, next) => {
  req.session.destroy((error) => (error ? next(error) : res.send("bye\n")));
});

app.post("/logout-everywhere", (req, res, next) => {
  if (!req.session.userId) {
    res.status(401).send("not logged in\n");
    return;
  }
  client.revokeSessions(req.session.userId).then(
    (revoked) => req.session.destroy(() => res.send(`ended ${revoked} sessions\n`)),
    next,
  );
});

app.listen(3000, "localhost", () => console.log("listening on localhost:3000"));
