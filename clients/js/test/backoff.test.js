// The reconnect schedule and the token helpers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Backoff, backoffCeiling, isTokenRefusal, refreshDelay, tokenExpiry } from "../presence.js";

test("the ceiling doubles from 1 s to a 30 s cap", () => {
  const ceilings = Array.from({ length: 8 }, (_, n) => backoffCeiling(n));
  assert.deepEqual(ceilings, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffCeiling(10_000), 30000);
});

test("full jitter: each delay is random in [0, ceiling); the first retry is within 1 s", () => {
  const highest = new Backoff({ random: () => 0.999999 });
  const delays = Array.from({ length: 7 }, () => highest.next());
  assert.deepEqual(delays, [999, 1999, 3999, 7999, 15999, 29999, 29999]);
  const lowest = new Backoff({ random: () => 0 });
  assert.equal(lowest.next(), 0);
  const half = new Backoff({ random: () => 0.5 });
  assert.deepEqual([half.next(), half.next(), half.next()], [500, 1000, 2000]);
});

test("reset once a connection stayed open long enough, not after a short one", () => {
  const b = new Backoff({ random: () => 0.5, resetAfter: 10000 });
  b.next();
  b.next();
  b.closed(9999);
  assert.equal(b.next(), 2000);
  b.closed(10000);
  assert.equal(b.next(), 500);
});

test("custom initial and max are honoured and checked", () => {
  const b = new Backoff({ initial: 100, max: 250, random: () => 0.5 });
  assert.deepEqual([b.next(), b.next(), b.next()], [50, 100, 125]);
  assert.throws(() => new Backoff({ initial: 0 }), RangeError);
  assert.throws(() => new Backoff({ initial: 1000, max: 10 }), RangeError);
});

const b64url = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwt = (claims) => `${b64url({ alg: "HS256" })}.${b64url(claims)}.sig`;

test("tokenExpiry reads exp (in ms), or null", () => {
  assert.equal(tokenExpiry(jwt({ sub: "a", exp: 1700000000 })), 1700000000000);
  assert.equal(tokenExpiry(jwt({ sub: "a" })), null);
  assert.equal(tokenExpiry(jwt({ exp: "soon" })), null);
  assert.equal(tokenExpiry("not a token"), null);
  assert.equal(tokenExpiry(null), null);
});

test("refreshDelay: a fifth of the time left early, at most a minute early", () => {
  assert.equal(refreshDelay(10_000, 0), 8000);
  assert.equal(refreshDelay(3_600_000, 0), 3_540_000);
  assert.equal(refreshDelay(5, 10), 0);
  assert.equal(refreshDelay(1e15, 0), 2 ** 31 - 1);
});

test("token refusals are 1008 closes whose reason names the token", () => {
  assert.ok(isTokenRefusal(1008, "token expired"));
  assert.ok(isTokenRefusal(1008, "missing token"));
  assert.ok(isTokenRefusal(1008, "token signature invalid"));
  assert.ok(!isTokenRefusal(1008, "rate limit exceeded"));
  assert.ok(!isTokenRefusal(1008, "send buffer full: client is not reading"));
  assert.ok(!isTokenRefusal(1001, "token expired"));
});
