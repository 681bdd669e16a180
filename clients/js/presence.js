// presence.js: the browser client of the presence daemon (docs/protocol.md).
// One ES module, no dependencies, no build step. Nothing here touches `window` or
// `document` at import time: the pure parts (PresenceState, Backoff, tokenExpiry,
// refreshDelay) run under Node as they are.

export const CONNECTING = "CONNECTING";
export const OPEN = "OPEN";
export const CLOSING = "CLOSING";
export const CLOSED = "CLOSED";

const STATUSES = ["online", "away", "busy"];
const MAX_TIMER = 2 ** 31 - 1; // setTimeout's largest delay, in ms
const REFRESH_RETRY = 5000; // ms before asking getToken again after a failed refresh

// -- pure parts ----------------------------------------------------------------------------

/** The largest delay (ms) before retry number `attempt` (0 = the first retry). */
export function backoffCeiling(attempt, initial = 1000, max = 30000) {
  return Math.min(max, initial * 2 ** Math.min(attempt, 40));
}

/** Exponential backoff with full jitter: retry n waits a random time in
 * [0, min(max, initial * 2^n)). Reset once a connection has stayed open `resetAfter` ms. */
export class Backoff {
  constructor({ initial = 1000, max = 30000, resetAfter = 10000, random = Math.random } = {}) {
    if (!(initial > 0) || !(max >= initial)) throw new RangeError("backoff: 0 < initial <= max");
    Object.assign(this, { initial, max, resetAfter, random });
    this.attempt = 0;
  }

  /** The delay (ms) before the next retry; each call counts one more attempt. */
  next() {
    const ceiling = backoffCeiling(this.attempt, this.initial, this.max);
    this.attempt += 1;
    return Math.floor(this.random() * ceiling);
  }

  /** A connection ended after being open `openFor` ms (0: it never opened). */
  closed(openFor) {
    if (openFor >= this.resetAfter) this.attempt = 0;
  }
}

/** A JWT's `exp` in ms since the epoch, or null (not a JWT, or no numeric exp). */
export function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.exp === "number" && Number.isFinite(claims.exp) ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** How long (ms) to wait before refreshing a token that expires at `expiresAt` (ms):
 * a fifth of what is left before it, at most a minute early. */
export function refreshDelay(expiresAt, now) {
  const left = expiresAt - now;
  if (left <= 0) return 0;
  return Math.min(MAX_TIMER, Math.floor(left - Math.min(60000, left / 5)));
}

/** A close the client should not answer by reconnecting as it is. */
export function isTokenRefusal(code, reason) {
  return code === 1008 && /^(missing )?token\b/.test(reason || "");
}

function equal(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((k) => Object.prototype.hasOwnProperty.call(b, k) && equal(a[k], b[k]));
}

function ids(userIds) {
  const list = typeof userIds === "string" ? [userIds] : [...(userIds ?? [])];
  return [...new Set(list)];
}

/** The presence a connection was told, kept from the server's messages in order. It holds
 * only the users watched and the rooms joined: a late message for one left behind is
 * dropped. `apply` answers the changes as events: ["user", userId, view, previous] and
 * ["room", room, diff]. */
export class PresenceState {
  constructor() {
    this.users = new Map();
    this.rooms = new Map();
    this.watching = new Set();
    this.joined = new Set();
  }

  watch(userIds) {
    for (const id of ids(userIds)) this.watching.add(id);
  }

  unwatch(userIds) {
    for (const id of ids(userIds)) {
      this.watching.delete(id);
      this.users.delete(id);
    }
  }

  join(room) {
    this.joined.add(room);
  }

  leave(room) {
    this.joined.delete(room);
    this.rooms.delete(room);
  }

  user(userId) {
    return this.users.get(userId) ?? null;
  }

  room(room) {
    return this.rooms.get(room) ?? null;
  }

  apply(message) {
    const events = [];
    switch (message && message.type) {
      case "PRESENCE_STATE":
        for (const [id, view] of Object.entries(message.users ?? {})) this._user(id, view, events);
        break;
      case "PRESENCE_DIFF": {
        const { status, metadata, lastSeen, connections } = message;
        this._user(message.userId, { status, metadata, lastSeen, connections }, events);
        break;
      }
      case "ROOM_STATE":
        this._roomState(message, events);
        break;
      case "ROOM_DIFF":
        this._roomDiff(message, events);
        break;
      default:
    }
    return events;
  }

  _user(id, view, events) {
    if (!this.watching.has(id)) return;
    const previous = this.users.get(id) ?? null;
    this.users.set(id, view);
    if (!equal(previous, view)) events.push(["user", id, view, previous]);
  }

  _roomState(message, events) {
    const name = message.room;
    if (!this.joined.has(name)) return;
    const before = this.rooms.get(name);
    const members = { ...(message.members ?? {}) };
    const count = message.count ?? Object.keys(members).length;
    this.rooms.set(name, { members, count, complete: message.complete !== false });
    // What changed since the state held (all joins the first time): a state after a
    // reconnect reads like one diff.
    const diff = { joins: {}, leaves: {}, updates: {}, count, timestamp: message.timestamp };
    const old = before ? before.members : {};
    for (const [id, member] of Object.entries(members)) {
      if (!(id in old)) diff.joins[id] = member;
      else if (!equal(old[id], member)) diff.updates[id] = member;
    }
    for (const id of Object.keys(old)) if (!(id in members)) diff.leaves[id] = { lastSeen: null };
    const changed =
      !before ||
      before.count !== count ||
      [diff.joins, diff.leaves, diff.updates].some((o) => Object.keys(o).length > 0);
    if (changed) events.push(["room", name, diff]);
  }

  _roomDiff(message, events) {
    const name = message.room;
    const before = this.rooms.get(name);
    if (!before || !this.joined.has(name)) return;
    const diff = {
      joins: message.joins ?? {},
      leaves: message.leaves ?? {},
      updates: message.updates ?? {},
      count: message.count ?? before.count,
      timestamp: message.timestamp,
    };
    const members = { ...before.members };
    for (const id of Object.keys(diff.leaves)) delete members[id];
    Object.assign(members, diff.joins, diff.updates);
    this.rooms.set(name, { members, count: diff.count, complete: before.complete });
    events.push(["room", name, diff]);
  }
}

// -- the client ----------------------------------------------------------------------------

/** A connection to the daemon that keeps itself up: see README.md beside this file. */
export class PresenceClient {
  constructor(url, options = {}) {
    const { userId, token, getToken, awayWhenHidden = true, backoff } = options;
    if (typeof userId !== "string" || userId === "") {
      throw new TypeError("PresenceClient: options.userId is required");
    }
    if (getToken != null && typeof getToken !== "function") {
      throw new TypeError("PresenceClient: options.getToken must be a function");
    }
    this.url = String(url);
    this.userId = userId;
    this.connectionState = CLOSED;
    this.connectionId = null;
    this.closeInfo = null; // {code, reason, final, retryIn} of the last close
    this._token = token ?? null;
    this._getToken = getToken ?? null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError("PresenceClient: no WebSocket here; pass options.WebSocket");
    }
    this._backoff = new Backoff(backoff);
    this._state = new PresenceState();
    this._listeners = new Map();
    this._status = "online";
    this._metadata = null;
    this._statusSet = false;
    this._roomMeta = new Map();
    this._ws = null;
    this._openedAt = null;
    this._beat = null; // {interval, timeout} (ms) from CONNECT
    this._timers = { retry: null, heartbeat: null, deadline: null, refresh: null };
    this._stopped = false;
    this._refusals = 0; // token refusals since the last CONNECT
    this._doc = awayWhenHidden ? (options.document ?? globalThis.document ?? null) : null;
    this._hidden = false;
    if (this._doc && typeof this._doc.addEventListener === "function") {
      this._hidden = this._doc.visibilityState === "hidden";
      this._onVisibility = () => this._visibilityChanged();
      this._doc.addEventListener("visibilitychange", this._onVisibility);
    }
    // Started on the next microtask, so listeners added right after `new` see CONNECTING.
    queueMicrotask(() => this._open());
  }

  // -- the application's side --------------------------------------------------------------

  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  user(userId) {
    return this._state.user(userId);
  }

  room(room) {
    return this._state.room(room);
  }

  /** The status chosen (what is sent, unless the page is hidden: then `away`). */
  get status() {
    return this._status;
  }

  setStatus(status, metadata) {
    if (!STATUSES.includes(status)) {
      throw new TypeError(`PresenceClient: status must be one of ${STATUSES.join(", ")}`);
    }
    this._status = status;
    this._statusSet = true;
    if (metadata != null) this._metadata = metadata;
    this._send(this._presenceUpdate(metadata != null));
  }

  watch(userIds) {
    const list = ids(userIds);
    if (list.length === 0) return;
    this._state.watch(list);
    this._send({ type: "SUBSCRIBE", payload: { userIds: list } });
  }

  unwatch(userIds) {
    const list = ids(userIds);
    if (list.length === 0) return;
    this._state.unwatch(list);
    this._send({ type: "UNSUBSCRIBE", payload: { userIds: list } });
  }

  join(room, metadata) {
    if (metadata != null || !this._roomMeta.has(room)) this._roomMeta.set(room, metadata ?? null);
    this._state.join(room);
    this._send(this._joinMessage(room, metadata));
  }

  updateRoom(room, metadata) {
    if (!this._roomMeta.has(room)) throw new Error(`PresenceClient: not in room ${room}`);
    this._roomMeta.set(room, metadata);
    this._send({ type: "ROOM_UPDATE", payload: { room, metadata } });
  }

  leave(room) {
    this._roomMeta.delete(room);
    this._state.leave(room);
    this._send({ type: "LEAVE", payload: { room } });
  }

  /** Ends the connection for good (a close 1000: the server shows the user offline at once). */
  close() {
    if (this._stopped) return;
    this._stop();
    const ws = this._ws;
    if (ws && ws.readyState <= 1) {
      this._setState(CLOSING);
      ws.close(1000, "client closed");
    } else {
      this._ws = null;
      this._closed({ code: 1000, reason: "client closed", final: true });
    }
  }

  // -- the connection ----------------------------------------------------------------------

  async _open() {
    this._timers.retry = null;
    if (this._stopped) return;
    this._setState(CONNECTING);
    if (this._getToken && (this._token == null || this._expired(this._token))) {
      try {
        await this._fetchToken();
      } catch (e) {
        if (this._stopped) return;
        this._emit("error", clientError("GET_TOKEN_FAILED", e));
        this._retry({ code: null, reason: "getToken failed" });
        return;
      }
      if (this._stopped) return;
    }
    let ws;
    try {
      ws = new this._WebSocket(this._socketUrl());
    } catch (e) {
      this._emit("error", clientError("CONNECT_FAILED", e));
      this._final({ code: null, reason: String(e && e.message ? e.message : e) });
      return;
    }
    this._ws = ws;
    ws.onmessage = (event) => {
      if (this._ws === ws) this._received(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._socketClosed(event.code, event.reason);
    };
  }

  _socketUrl() {
    const base = globalThis.location ? globalThis.location.href : undefined;
    const url = new URL(this.url, base);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    url.searchParams.set("userId", this.userId);
    if (this._token) url.searchParams.set("token", this._token);
    return url.toString();
  }

  _received(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (message.type === "CONNECT") this._connected(message);
    else if (message.type === "ERROR") this._emit("error", message);
    else if (message.type === "HEARTBEAT_ACK") this._acked();
    else {
      for (const [event, ...args] of this._state.apply(message)) this._emit(event, ...args);
    }
  }

  /** CONNECT: the connection counts. Send everything the application asked for. */
  _connected(message) {
    this._openedAt = Date.now();
    this._refusals = 0;
    this.connectionId = message.connectionId ?? null;
    this._setState(OPEN, { connectionId: this.connectionId });
    if (this._statusSet || this._hidden) this._send(this._presenceUpdate(this._metadata != null));
    if (this._state.watching.size > 0) {
      this._send({ type: "SUBSCRIBE", payload: { userIds: [...this._state.watching] } });
    }
    for (const [room, metadata] of this._roomMeta) this._send(this._joinMessage(room, metadata));
    const interval = Number(message.heartbeatInterval) * 1000 || 15000;
    const timeout = Number(message.heartbeatTimeout) * 1000 || 3 * interval;
    this._beat = { interval, timeout };
    this._timers.heartbeat = setTimeout(() => this._heartbeat(), interval);
    this._scheduleRefresh(this._token);
  }

  // The next HEARTBEAT is timed from the ACK's message event, not from the timer before:
  // a chain of timers in a hidden tab is throttled to one wake-up a minute by Chrome
  // (past the server's timeout), a timer set from a network event is not.
  _heartbeat() {
    this._send({ type: "HEARTBEAT" });
    this._timers.heartbeat = null;
    clearTimeout(this._timers.deadline);
    this._timers.deadline = setTimeout(() => this._unanswered(), this._beat.timeout);
  }

  _acked() {
    if (!this._beat || this._timers.heartbeat !== null) return;
    clearTimeout(this._timers.deadline);
    this._timers.deadline = null;
    this._timers.heartbeat = setTimeout(() => this._heartbeat(), this._beat.interval);
  }

  /** No answer for the server's own timeout (a laptop that slept, a dead route): this
   * socket is gone whatever the browser thinks. */
  _unanswered() {
    const ws = this._ws;
    this._ws = null;
    try {
      ws.close(4000, "no heartbeat answer");
    } catch {
      // closing a dead socket may throw; it is dropped either way
    }
    this._socketClosed(4000, "no heartbeat answer");
  }

  _socketClosed(code, reason) {
    this._ws = null;
    this._clearTimers();
    const openFor = this._openedAt == null ? 0 : Date.now() - this._openedAt;
    this._openedAt = null;
    this.connectionId = null;
    this._backoff.closed(openFor);
    if (this._stopped) {
      this._closed({ code, reason, final: true });
    } else if (code === 1002) {
      this._final({ code, reason }); // missing or invalid userId: no retry will fix it
    } else if (isTokenRefusal(code, reason)) {
      this._tokenRefused(code, reason);
    } else {
      this._retry({ code, reason });
    }
  }

  /** 1008 for the token: reconnect with a new one, if getToken has one to give. */
  async _tokenRefused(code, reason) {
    const refused = this._token;
    this._refusals += 1;
    if (!this._getToken || this._refusals > 1) {
      this._final({ code, reason });
      return;
    }
    this._setState(CLOSED, { code, reason, final: false, retryIn: 0 });
    try {
      await this._fetchToken();
    } catch (e) {
      if (this._stopped) return;
      this._emit("error", clientError("GET_TOKEN_FAILED", e));
      this._final({ code, reason });
      return;
    }
    if (this._stopped) return;
    if (this._token === refused) this._final({ code, reason });
    else this._open();
  }

  _retry({ code, reason }) {
    const retryIn = this._backoff.next();
    this._closed({ code, reason, final: false, retryIn });
    this._timers.retry = setTimeout(() => this._open(), retryIn);
  }

  _final({ code, reason }) {
    this._stop();
    this._closed({ code, reason, final: true });
  }

  _closed(info) {
    this.closeInfo = info;
    this._setState(CLOSED, info);
  }

  _stop() {
    this._stopped = true;
    this._clearTimers();
    clearTimeout(this._timers.retry);
    this._timers.retry = null;
    if (this._onVisibility) this._doc.removeEventListener("visibilitychange", this._onVisibility);
    this._onVisibility = null;
  }

  _clearTimers() {
    clearTimeout(this._timers.heartbeat);
    clearTimeout(this._timers.deadline);
    clearTimeout(this._timers.refresh);
    this._timers.heartbeat = this._timers.deadline = this._timers.refresh = null;
    this._beat = null;
  }

  // -- tokens ------------------------------------------------------------------------------

  async _fetchToken() {
    const token = await this._getToken();
    if (typeof token !== "string" || token === "") throw new Error("getToken gave no token");
    this._token = token;
    return token;
  }

  _expired(token) {
    const exp = tokenExpiry(token);
    return exp != null && exp <= Date.now();
  }

  _scheduleRefresh(token, retry = false) {
    if (!this._getToken) return;
    const exp = tokenExpiry(token);
    if (exp == null) return;
    const delay = retry ? REFRESH_RETRY : refreshDelay(exp, Date.now());
    this._timers.refresh = setTimeout(() => this._refresh(exp), delay);
  }

  /** Before `exp`: a fresh token, sent as REFRESH_TOKEN on the open connection. */
  async _refresh(oldExp) {
    const ws = this._ws;
    this._timers.refresh = null;
    let token;
    try {
      token = await this._fetchToken();
    } catch (e) {
      if (this._ws !== ws || this._stopped) return;
      this._emit("error", clientError("GET_TOKEN_FAILED", e));
      this._scheduleRefresh(this._token, true);
      return;
    }
    if (this._ws !== ws || this._stopped || this.connectionState !== OPEN) return;
    this._send({ type: "REFRESH_TOKEN", payload: { token } });
    const exp = tokenExpiry(token);
    this._scheduleRefresh(token, exp == null || exp <= oldExp);
  }

  // -- visibility --------------------------------------------------------------------------

  _visibilityChanged() {
    const hidden = this._doc.visibilityState === "hidden";
    if (hidden === this._hidden) return;
    this._hidden = hidden;
    this._send(this._presenceUpdate(false)); // hidden: away; visible: the status chosen
  }

  _presenceUpdate(withMetadata) {
    const payload = { status: this._hidden ? "away" : this._status };
    if (withMetadata && this._metadata != null) payload.metadata = this._metadata;
    return { type: "PRESENCE_UPDATE", payload };
  }

  _joinMessage(room, metadata) {
    const payload = { room };
    if (metadata != null) payload.metadata = metadata;
    return { type: "JOIN", payload };
  }

  // -- plumbing ----------------------------------------------------------------------------

  _send(message) {
    // Before CONNECT nothing is sent: what the application asked for is kept and sent
    // in full once the connection counts (and again after every reconnect).
    if (this._ws && this.connectionState === OPEN) this._ws.send(JSON.stringify(message));
  }

  _setState(state, detail = {}) {
    this.connectionState = state;
    this._emit("connection", state, detail);
  }

  _emit(event, ...args) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (e) {
        // A listener's bug must not stop the client; report it as the platform would.
        if (typeof globalThis.reportError === "function") globalThis.reportError(e);
        else console.error(e);
      }
    }
  }
}

function clientError(code, error) {
  const message = error && error.message ? error.message : String(error);
  return { code, message, timestamp: new Date().toISOString() };
}
