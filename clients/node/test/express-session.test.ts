// The express-session Store, serving real HTTP requests from an Express server.

import assert from "node:assert/strict";
import type { Server } from "node:http";
import { AddressInfo } from "node:net";
import { after, before, test } from "node:test";

import express from "express";
import session from "express-session";

import { BatonClient, NotFoundError } from "../src/index.js";
import { BatonSessionStore } from "../src/express-session.js";
import { Environment, unique } from "./harness.js";

declare module "express-session" {
  interface SessionData {
    userId: string;
    theme: string;
    cart: string[];
  }
}

let environment: Environment;
let client: BatonClient;
let server: Server;
let site: string;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
  environment.onClose(() => client.close());

  const app = express();
  app.use(express.urlencoded({ extended: false }));
  app.use(
    session({
      store: new BatonSessionStore({ client }),
      secret: "test-only",
      resave: false,
      saveUninitialized: false,
    }),
  );
  app.post("/login", (req, res, next) => {
    // A real site checks a password first.
    const login = () => {
      req.session.userId = req.body.user;
      req.session.theme ??= "dark";
      res.send("ok");
    };
    // express-session's advice against fixation; ?keep shows what happens without it.
    if (req.query.keep !== undefined) {
      login();
    } else {
      req.session.regenerate((error) => (error ? next(error) : login()));
    }
  });
  app.get("/me", (req, res) => {
    if (!req.session.userId) {
      res.status(401).send("not logged in");
      return;
    }
    res.send(`${req.session.userId} ${req.session.theme} [${(req.session.cart ?? []).join(",")}]`);
  });
  app.post("/cart", (req, res) => {
    req.session.cart = [...(req.session.cart ?? []), req.body.item];
    res.send("ok");
  });
  app.post("/theme", (req, res) => {
    req.session.theme = req.body.theme;
    res.send("ok");
  });
  app.post("/logout-everywhere", (req, res, next) => {
    client.revokeSessions(req.session.userId!).then(
      (revoked) => req.session.destroy(() => res.send(String(revoked))),
      next,
    );
  });
  server = await new Promise<Server>((done) => {
    const listening = app.listen(0, "127.0.0.1", () => done(listening));
  });
  site = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise((done) => server.close(done));
  await environment.close();
});

/** One device: an HTTP client that keeps express-session's cookie. */
class Browser {
  cookie: string | undefined;

  async request(method: string, path: string, form?: Record<string, string>): Promise<[number, string]> {
    const response = await fetch(site + path, {
      method,
      headers: {
        ...(this.cookie ? { cookie: this.cookie } : {}),
        ...(form ? { "content-type": "application/x-www-form-urlencoded" } : {}),
      },
      body: form ? new URLSearchParams(form).toString() : undefined,
    });
    for (const setCookie of response.headers.getSetCookie()) {
      this.cookie = setCookie.split(";")[0];
    }
    return [response.status, await response.text()];
  }

  /** The session id inside express-session's signed cookie ("s:<id>.<signature>"). */
  get sessionId(): string | undefined {
    return this.cookie && decodeURIComponent(this.cookie.split("=")[1]).slice(2).split(".")[0];
  }
}

test("express-session store: login, read, and log out everywhere", async () => {
  const ada = unique("ada");
  const bob = unique("bob");
  const [laptop, phone, bobsLaptop] = [new Browser(), new Browser(), new Browser()];

  assert.equal((await laptop.request("GET", "/me"))[0], 401);
  // An anonymous cart, then a login that keeps the session: it moves to ada's subject.
  assert.deepEqual(await laptop.request("POST", "/cart", { item: "book" }), [200, "ok"]);
  assert.deepEqual(await laptop.request("POST", "/login?keep", { user: ada }), [200, "ok"]);
  assert.deepEqual(await phone.request("POST", "/login", { user: ada }), [200, "ok"]);
  assert.deepEqual(await bobsLaptop.request("POST", "/login", { user: bob }), [200, "ok"]);
  assert.deepEqual(await phone.request("POST", "/theme", { theme: "light" }), [200, "ok"]);

  assert.deepEqual(await laptop.request("GET", "/me"), [200, `${ada} dark [book]`]);
  assert.deepEqual(await phone.request("GET", "/me"), [200, `${ada} light []`]);
  const sessions = await client.listSessions(ada);
  assert.deepEqual(sessions.map((s) => s.subject), [ada, ada]);
  // Stored as one data key per session property, the cookie included.
  assert.deepEqual(Object.keys((await client.getSession(phone.sessionId!)).data).sort(), ["cookie", "theme", "userId"]);

  assert.deepEqual(await laptop.request("POST", "/logout-everywhere"), [200, "2"]);
  assert.equal((await laptop.request("GET", "/me"))[0], 401);
  assert.equal((await phone.request("GET", "/me"))[0], 401);
  await assert.rejects(client.getSession(phone.sessionId!), NotFoundError);
  assert.deepEqual(await bobsLaptop.request("GET", "/me"), [200, `${bob} dark []`]);
});
