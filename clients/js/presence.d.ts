// Type declarations for presence.js (the browser client of the presence daemon).

export type ConnectionState = "CONNECTING" | "OPEN" | "CLOSING" | "CLOSED";
export declare const CONNECTING: "CONNECTING";
export declare const OPEN: "OPEN";
export declare const CLOSING: "CLOSING";
export declare const CLOSED: "CLOSED";

export type Status = "online" | "away" | "busy";
export type Metadata = Record<string, unknown>;

/** What a watcher is told of a user (PRESENCE_STATE / PRESENCE_DIFF). */
export interface UserView {
  status: Status | "offline";
  metadata: Metadata;
  lastSeen: string | null;
  connections: number;
}

/** One member of a room (ROOM_STATE / ROOM_DIFF). */
export interface Member {
  status: Status;
  metadata: Metadata;
  connections: number;
}

export interface RoomView {
  members: Record<string, Member>;
  count: number;
  /** false for a room over the server's --room-list-limit: members is partial. */
  complete: boolean;
}

/** A ROOM_DIFF as received, or, for a ROOM_STATE, what changed since the state held
 * (all joins the first time; leaves found that way have lastSeen null). */
export interface RoomDiff {
  joins: Record<string, Member>;
  leaves: Record<string, { lastSeen: string | null }>;
  updates: Record<string, Member>;
  count: number;
  timestamp?: string;
}

/** A server ERROR, or one of the client's own: GET_TOKEN_FAILED, CONNECT_FAILED. */
export interface PresenceError {
  code: string;
  message: string;
  timestamp: string;
}

export interface CloseInfo {
  code: number | null;
  reason: string;
  /** true: the client will not reconnect (close(), 1002, a token refused for good). */
  final: boolean;
  /** ms until the next attempt, when not final. */
  retryIn?: number;
}

export type ConnectionDetail = CloseInfo | { connectionId: string | null } | Record<string, never>;

export interface BackoffOptions {
  /** ms; the first retry waits a random time below it. Default 1000. */
  initial?: number;
  /** ms cap on the wait. Default 30000. */
  max?: number;
  /** ms a connection must stay open for the schedule to start over. Default 10000. */
  resetAfter?: number;
  random?: () => number;
}

export interface PresenceClientOptions {
  userId: string;
  /** A JWT for a daemon running --auth jwt. */
  token?: string;
  /** Called for the first token (if none is given), before each token's exp, and after a
   * 1008 refusal of the token. */
  getToken?: () => string | Promise<string>;
  /** Default true: `away` while the page is hidden. */
  awayWhenHidden?: boolean;
  backoff?: BackoffOptions;
  /** For other environments (Node, tests): the WebSocket class and the document to watch. */
  WebSocket?: unknown;
  document?: EventTarget & { visibilityState: string };
}

export interface PresenceEvents {
  user: (userId: string, user: UserView, previous: UserView | null) => void;
  room: (room: string, diff: RoomDiff) => void;
  connection: (state: ConnectionState, detail: ConnectionDetail) => void;
  error: (error: PresenceError) => void;
}

export declare class PresenceClient {
  constructor(url: string | URL, options: PresenceClientOptions);
  readonly url: string;
  readonly userId: string;
  readonly connectionState: ConnectionState;
  readonly connectionId: string | null;
  readonly closeInfo: CloseInfo | null;
  /** The status chosen with setStatus (default "online"). */
  readonly status: Status;
  setStatus(status: Status, metadata?: Metadata): void;
  watch(userIds: string | Iterable<string>): void;
  unwatch(userIds: string | Iterable<string>): void;
  join(room: string, metadata?: Metadata): void;
  updateRoom(room: string, metadata: Metadata): void;
  leave(room: string): void;
  close(): void;
  user(userId: string): UserView | null;
  room(room: string): RoomView | null;
  on<E extends keyof PresenceEvents>(event: E, listener: PresenceEvents[E]): () => void;
  off<E extends keyof PresenceEvents>(event: E, listener: PresenceEvents[E]): void;
}

export declare class PresenceState {
  users: Map<string, UserView>;
  rooms: Map<string, RoomView>;
  watching: Set<string>;
  joined: Set<string>;
  watch(userIds: string | Iterable<string>): void;
  unwatch(userIds: string | Iterable<string>): void;
  join(room: string): void;
  leave(room: string): void;
  user(userId: string): UserView | null;
  room(room: string): RoomView | null;
  apply(
    message: { type: string; [key: string]: unknown },
  ): Array<["user", string, UserView, UserView | null] | ["room", string, RoomDiff]>;
}

export declare class Backoff {
  constructor(options?: BackoffOptions);
  attempt: number;
  next(): number;
  closed(openFor: number): void;
}

export declare function backoffCeiling(attempt: number, initial?: number, max?: number): number;
export declare function tokenExpiry(token: string): number | null;
export declare function refreshDelay(expiresAt: number, now: number): number;
export declare function isTokenRefusal(code: number, reason: string): boolean;
