// The state sync reducer: PRESENCE_STATE/PRESENCE_DIFF and ROOM_STATE/ROOM_DIFF in order.
import { test } from "node:test";
import assert from "node:assert/strict";
import { PresenceState } from "../presence.js";

const view = (status, extra = {}) => ({
  status,
  metadata: {},
  lastSeen: null,
  connections: status === "offline" ? 0 : 1,
  ...extra,
});
const member = (status, metadata = {}, connections = 1) => ({ status, metadata, connections });

test("PRESENCE_STATE then diffs: one event per visible change, with the previous view", () => {
  const s = new PresenceState();
  s.watch(["alice", "bob"]);
  let events = s.apply({
    type: "PRESENCE_STATE",
    users: { alice: view("online"), bob: view("offline") },
  });
  assert.deepEqual(events, [
    ["user", "alice", view("online"), null],
    ["user", "bob", view("offline"), null],
  ]);
  events = s.apply({ type: "PRESENCE_DIFF", userId: "bob", ...view("busy"), timestamp: "t" });
  assert.deepEqual(events, [["user", "bob", view("busy"), view("offline")]]);
  assert.deepEqual(s.user("bob"), view("busy"));
  // The same state again (a second SUBSCRIBE, a reconnect) changes nothing: no event.
  events = s.apply({ type: "PRESENCE_STATE", users: { bob: view("busy") } });
  assert.deepEqual(events, []);
});

test("users not watched (or unwatched meanwhile) are dropped", () => {
  const s = new PresenceState();
  s.watch("alice");
  s.apply({ type: "PRESENCE_STATE", users: { alice: view("online") } });
  s.unwatch("alice");
  assert.equal(s.user("alice"), null);
  const late = s.apply({ type: "PRESENCE_DIFF", userId: "alice", ...view("away") });
  assert.deepEqual(late, []);
  assert.equal(s.user("alice"), null);
  assert.deepEqual(s.apply({ type: "PRESENCE_DIFF", userId: "eve", ...view("away") }), []);
});

test("ROOM_STATE then ROOM_DIFFs keep members and count", () => {
  const s = new PresenceState();
  s.join("doc:1");
  let events = s.apply({
    type: "ROOM_STATE",
    room: "doc:1",
    members: { alice: member("online") },
    count: 1,
    complete: true,
  });
  assert.equal(events.length, 1);
  assert.deepEqual(events[0][2].joins, { alice: member("online") });
  events = s.apply({
    type: "ROOM_DIFF",
    room: "doc:1",
    joins: { bob: member("busy", { cursor: 3 }) },
    leaves: {},
    updates: { alice: member("away") },
    count: 2,
  });
  assert.equal(events[0][0], "room");
  assert.deepEqual(s.room("doc:1"), {
    members: { alice: member("away"), bob: member("busy", { cursor: 3 }) },
    count: 2,
    complete: true,
  });
  s.apply({ type: "ROOM_DIFF", room: "doc:1", leaves: { alice: { lastSeen: "t" } }, count: 1 });
  assert.deepEqual(Object.keys(s.room("doc:1").members), ["bob"]);
  assert.equal(s.room("doc:1").count, 1);
});

test("a ROOM_STATE after a reconnect reads as the diff from what was held", () => {
  const s = new PresenceState();
  s.join("r");
  s.apply({
    type: "ROOM_STATE",
    room: "r",
    members: { a: member("online"), b: member("online"), c: member("online") },
    count: 3,
  });
  const [[, room, diff]] = s.apply({
    type: "ROOM_STATE",
    room: "r",
    members: { a: member("online"), b: member("busy"), d: member("away") },
    count: 3,
  });
  assert.equal(room, "r");
  assert.deepEqual(diff.joins, { d: member("away") });
  assert.deepEqual(diff.updates, { b: member("busy") });
  assert.deepEqual(diff.leaves, { c: { lastSeen: null } });
  assert.deepEqual(
    s.apply({ type: "ROOM_STATE", room: "r", members: s.room("r").members, count: 3 }),
    [],
  );
});

test("rooms left (or never joined) ignore late messages; large rooms keep count only", () => {
  const s = new PresenceState();
  assert.deepEqual(s.apply({ type: "ROOM_STATE", room: "x", members: {}, count: 0 }), []);
  s.join("big");
  s.apply({ type: "ROOM_STATE", room: "big", members: { a: member("online") }, count: 5000, complete: false });
  s.apply({ type: "ROOM_DIFF", room: "big", joins: {}, leaves: {}, updates: {}, count: 5001 });
  assert.deepEqual(s.room("big"), { members: { a: member("online") }, count: 5001, complete: false });
  s.leave("big");
  assert.equal(s.room("big"), null);
  assert.deepEqual(s.apply({ type: "ROOM_DIFF", room: "big", count: 1 }), []);
  assert.deepEqual(s.apply({ type: "HEARTBEAT_ACK" }), []);
});
