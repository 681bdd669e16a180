// The client's connection rules against a fake WebSocket, on mocked timers and clock.
import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { PresenceClient } from "../presence.js";

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    this.readyState = 0;
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedWith = [code, reason];
    this.readyState = 3;
  }
  // what the server does
  connect(extra = {}) {
    this.readyState = 1;
    this.server({
      type: "CONNECT",
      userId: this.url.searchParams.get("userId"),
      connectionId: `c${FakeSocket.all.indexOf(this)}`,
      heartbeatInterval: 15,
      heartbeatTimeout: 45,
      ...extra,
    });
  }
  server(message) {
    this.onmessage({ data: JSON.stringify(message) });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose({ code, reason });
  }
  types() {
    return this.sent.map((m) => m.type);
  }
}

const last = () => FakeSocket.all[FakeSocket.all.length - 1];
const tick = () => new Promise((resolve) => setImmediate(resolve));

function setup(t, options = {}) {
  FakeSocket.all = [];
  mock.timers.reset();
  mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"], now: 1_000_000 });
  t.after(() => mock.timers.reset());
  const states = [];
  const client = new PresenceClient("http://presence.test:3000/", {
    userId: "alice",
    WebSocket: FakeSocket,
    backoff: { random: () => 0.5 },
    ...options,
  });
  client.on("connection", (state, detail) => states.push([state, detail]));
  return { client, states };
}

test("connects with userId and token; sends nothing before CONNECT, everything after", async (t) => {
  const { client, states } = setup(t, { token: "tok" });
  client.setStatus("busy", { page: "inbox" });
  client.watch(["bob", "carol"]);
  client.join("doc:1", { cursor: 1 });
  await tick();
  const ws = last();
  assert.equal(ws.url.protocol, "ws:");
  assert.equal(ws.url.searchParams.get("userId"), "alice");
  assert.equal(ws.url.searchParams.get("token"), "tok");
  assert.deepEqual(ws.sent, []);
  ws.connect();
  assert.deepEqual(ws.sent, [
    { type: "PRESENCE_UPDATE", payload: { status: "busy", metadata: { page: "inbox" } } },
    { type: "SUBSCRIBE", payload: { userIds: ["bob", "carol"] } },
    { type: "JOIN", payload: { room: "doc:1", metadata: { cursor: 1 } } },
  ]);
  assert.deepEqual(
    states.map(([s]) => s),
    ["CONNECTING", "OPEN"],
  );
  assert.equal(client.connectionId, "c0");
});

test("heartbeats at the advised interval after each ACK; an unanswered one is given up on", async (t) => {
  const { client } = setup(t);
  await tick();
  const ws = last();
  ws.connect({ heartbeatInterval: 2, heartbeatTimeout: 5 });
  mock.timers.tick(1999);
  assert.deepEqual(ws.types(), []);
  mock.timers.tick(1);
  assert.deepEqual(ws.types(), ["HEARTBEAT"]);
  mock.timers.tick(3000); // not answered yet: no second one
  assert.deepEqual(ws.types(), ["HEARTBEAT"]);
  ws.server({ type: "HEARTBEAT_ACK" });
  mock.timers.tick(2000);
  assert.deepEqual(ws.types(), ["HEARTBEAT", "HEARTBEAT"]);
  ws.server({ type: "HEARTBEAT_ACK" });
  ws.server({ type: "HEARTBEAT_ACK" }); // a stray one does not start a second chain
  mock.timers.tick(2000);
  assert.deepEqual(ws.types(), ["HEARTBEAT", "HEARTBEAT", "HEARTBEAT"]);
  mock.timers.tick(4999);
  assert.equal(client.connectionState, "OPEN");
  mock.timers.tick(1); // 5 s without the ACK: the server's own timeout
  assert.deepEqual(ws.closedWith, [4000, "no heartbeat answer"]);
  assert.equal(client.connectionState, "CLOSED");
  assert.equal(client.closeInfo.final, false);
  mock.timers.tick(60000);
  assert.equal(ws.types().length, 3);
});

test("reconnects with backoff and re-sends status, watches and rooms", async (t) => {
  const { client, states } = setup(t);
  client.watch("bob");
  client.join("doc:1");
  await tick();
  last().connect();
  client.setStatus("away", { mood: "tea" });
  client.updateRoom("doc:1", { cursor: 9 });
  last().serverClose(1001, "server shutting down");
  assert.deepEqual(states.at(-1), [
    "CLOSED",
    { code: 1001, reason: "server shutting down", final: false, retryIn: 500 },
  ]);
  mock.timers.tick(499);
  assert.equal(FakeSocket.all.length, 1);
  mock.timers.tick(1);
  await tick();
  assert.equal(FakeSocket.all.length, 2);
  last().serverClose(1006); // the daemon is still down: the next wait doubles
  assert.equal(states.at(-1)[1].retryIn, 1000);
  mock.timers.tick(1000);
  await tick();
  last().connect();
  assert.deepEqual(last().sent, [
    { type: "PRESENCE_UPDATE", payload: { status: "away", metadata: { mood: "tea" } } },
    { type: "SUBSCRIBE", payload: { userIds: ["bob"] } },
    { type: "JOIN", payload: { room: "doc:1", metadata: { cursor: 9 } } },
  ]);
  // Open for long enough: the schedule starts over.
  mock.timers.tick(15000);
  last().serverClose(4408, "heartbeat timeout");
  assert.equal(states.at(-1)[1].retryIn, 500);
});

test("1002 is final, and so is close()", async (t) => {
  const { states } = setup(t, { userId: "bad id" });
  await tick();
  last().serverClose(1002, "invalid userId");
  assert.deepEqual(states.at(-1), ["CLOSED", { code: 1002, reason: "invalid userId", final: true }]);
  mock.timers.tick(60000);
  await tick();
  assert.equal(FakeSocket.all.length, 1);

  const second = setup(t);
  await tick();
  last().connect();
  second.client.close();
  assert.deepEqual(last().closedWith, [1000, "client closed"]);
  assert.equal(second.client.connectionState, "CLOSING");
  last().onclose({ code: 1000, reason: "client closed" });
  assert.deepEqual(second.states.at(-1)[1].final, true);
  mock.timers.tick(60000);
  await tick();
  assert.equal(FakeSocket.all.length, 1);
});

test("a refused token without getToken ends the retries", async (t) => {
  const { states } = setup(t, { token: "forged" });
  await tick();
  last().serverClose(1008, "token signature invalid");
  assert.deepEqual(states.at(-1), [
    "CLOSED",
    { code: 1008, reason: "token signature invalid", final: true },
  ]);
  mock.timers.tick(60000);
  await tick();
  assert.equal(FakeSocket.all.length, 1);
});

test("getToken: token expired reconnects with a new one; a second refusal is final", async (t) => {
  let n = 0;
  const { states } = setup(t, { getToken: async () => `tok${++n}` });
  await tick();
  assert.equal(last().url.searchParams.get("token"), "tok1");
  last().connect();
  last().serverClose(1008, "token expired");
  await tick();
  assert.equal(FakeSocket.all.length, 2);
  assert.equal(last().url.searchParams.get("token"), "tok2");
  last().serverClose(1008, "token signature invalid"); // the new one is refused too
  await tick();
  assert.deepEqual(states.at(-1)[1], { code: 1008, reason: "token signature invalid", final: true });
  assert.equal(FakeSocket.all.length, 2);
});

test("getToken giving the refused token again is final", async (t) => {
  const { states } = setup(t, { getToken: async () => "same" });
  await tick();
  last().connect();
  last().serverClose(1008, "token expired");
  await tick();
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(states.at(-1)[1].final, true);
});

const b64url = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwt = (exp) => `${b64url({ alg: "HS256" })}.${b64url({ sub: "alice", exp })}.sig`;

test("getToken: a fresh token is sent as REFRESH_TOKEN before exp", async (t) => {
  const issued = [];
  const { client } = setup(t, {
    getToken: async () => {
      const token = jwt(Math.floor(Date.now() / 1000) + 100);
      issued.push(token);
      return token;
    },
  });
  await tick();
  last().connect({ heartbeatInterval: 1000 });
  mock.timers.tick(79_999);
  await tick();
  assert.equal(issued.length, 1);
  mock.timers.tick(1);
  await tick();
  assert.equal(issued.length, 2);
  assert.deepEqual(last().sent, [{ type: "REFRESH_TOKEN", payload: { token: issued[1] } }]);
  mock.timers.tick(80_000);
  await tick();
  assert.equal(issued.length, 3);
  assert.equal(client.connectionState, "OPEN");
});

test("awayWhenHidden: hidden sends away, visible restores the status chosen", async (t) => {
  const doc = new EventTarget();
  doc.visibilityState = "visible";
  const { client } = setup(t, { document: doc });
  await tick();
  const ws = last();
  ws.connect();
  client.setStatus("busy");
  const flip = (state) => {
    doc.visibilityState = state;
    doc.dispatchEvent(new Event("visibilitychange"));
  };
  flip("hidden");
  flip("visible");
  assert.deepEqual(
    ws.sent.map((m) => m.payload.status),
    ["busy", "away", "busy"],
  );
  flip("hidden");
  ws.serverClose(1006);
  mock.timers.tick(500);
  await tick();
  last().connect(); // hidden while reconnecting: away straight away
  assert.deepEqual(last().sent[0], { type: "PRESENCE_UPDATE", payload: { status: "away" } });
  client.close();
});

test("awayWhenHidden: false ignores visibility", async (t) => {
  const doc = new EventTarget();
  doc.visibilityState = "hidden";
  setup(t, { document: doc, awayWhenHidden: false });
  await tick();
  last().connect();
  doc.dispatchEvent(new Event("visibilitychange"));
  assert.deepEqual(last().sent, []);
});

test("events: user, room and error reach listeners; a throwing listener harms nothing", async (t) => {
  const { client } = setup(t);
  const seen = [];
  const errors = [];
  const original = globalThis.reportError;
  globalThis.reportError = (e) => errors.push(e.message);
  t.after(() => {
    globalThis.reportError = original;
  });
  client.on("user", () => {
    throw new Error("listener bug");
  });
  client.on("user", (id, user, previous) => seen.push([id, user.status, previous]));
  const off = client.on("room", (room, diff) => seen.push([room, diff.count]));
  client.on("error", (e) => seen.push(["error", e.code]));
  client.watch("bob");
  client.join("r");
  await tick();
  const ws = last();
  ws.connect();
  ws.server({ type: "PRESENCE_STATE", users: { bob: { status: "online", metadata: {}, lastSeen: null, connections: 1 } } });
  ws.server({ type: "ROOM_STATE", room: "r", members: {}, count: 0, complete: true });
  off();
  ws.server({ type: "ROOM_DIFF", room: "r", joins: {}, leaves: {}, updates: {}, count: 0 });
  ws.server({ type: "ERROR", code: "INVALID_ROOM", message: "invalid room name" });
  assert.deepEqual(seen, [["bob", "online", null], ["r", 0], ["error", "INVALID_ROOM"]]);
  assert.deepEqual(errors, ["listener bug"]);
  assert.deepEqual(client.room("r"), { members: {}, count: 0, complete: true });
  assert.throws(() => client.setStatus("sleeping"), TypeError);
  assert.throws(() => client.updateRoom("nowhere", {}), Error);
  assert.throws(() => new PresenceClient("ws://x/", {}), TypeError);
});
