// The gRPC-web clients (generated from proto/) and the device session: tokens in
// localStorage, refreshed before they expire.

import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { AuthService } from "./gen/chat/v1/auth_pb";
import { ChatService } from "./gen/chat/v1/chat_pb";
import { GroupService } from "./gen/chat/v1/group_pb";
import { PresenceService } from "./gen/chat/v1/presence_pb";
import { UserService } from "./gen/chat/v1/user_pb";
import { DiscoveryService } from "./gen/chat/v1/discovery_pb";

/** What is kept in localStorage for this device. 64-bit ids are decimal strings. */
export interface Tokens {
  accessToken: string;
  refreshToken: string;
  userId: string;
  deviceId: string;
  username: string;
  /** When the access token expires (ms since the epoch). */
  accessExpiresAt: number;
}

const STORAGE_KEY = "daehwa.session.v1";

/** One RPC as the page saw it (for the debug hook and tests). */
export interface CallRecord {
  method: string;
  kind: "unary" | "server_streaming";
  ok: boolean;
  code?: string;
}

export const calls: CallRecord[] = [];

/** The device's tokens and their refresh. */
export class Session {
  tokens: Tokens | null = null;
  private refreshing: Promise<boolean> | null = null;
  private timer: number | undefined;
  /** Called when the session is gone for good (revoked or logged out elsewhere). */
  onLost: () => void = () => {};

  constructor() {
    this.tokens = readStored();
    // Another tab of this browser refreshed or logged out.
    window.addEventListener("storage", (e) => {
      if (e.key !== STORAGE_KEY) return;
      const stored = readStored();
      if (!stored && this.tokens) {
        this.tokens = null;
        this.onLost();
      } else if (stored && this.tokens && stored.userId === this.tokens.userId) {
        this.tokens = stored;
        this.schedule();
      }
    });
  }

  get userId(): bigint {
    return BigInt(this.tokens?.userId ?? "0");
  }

  set(tokens: Tokens) {
    this.tokens = tokens;
    localStorage.setItem(STORAGE_KEY, JSON.stringify(tokens));
    this.schedule();
  }

  clear() {
    this.tokens = null;
    localStorage.removeItem(STORAGE_KEY);
    window.clearTimeout(this.timer);
  }

  /** Plans the next refresh: a minute before expiry, or at 80% of short lifetimes. */
  schedule() {
    window.clearTimeout(this.timer);
    if (!this.tokens) return;
    const left = this.tokens.accessExpiresAt - Date.now();
    const delay = Math.max(1000, left > 120_000 ? left - 60_000 : left * 0.8);
    this.timer = window.setTimeout(() => {
      this.refresh().catch(() => {});
    }, delay);
  }

  /**
   * Trades the refresh token for a new pair. One refresh at a time, across tabs too (refresh
   * tokens work once; presenting a used one revokes the device). False when the session is
   * gone (and `onLost` was called); throws on network errors (the caller retries later).
   */
  refresh(): Promise<boolean> {
    if (!this.refreshing) {
      this.refreshing = this.refreshLocked().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  private async refreshLocked(): Promise<boolean> {
    const locks = (navigator as Navigator & { locks?: LockManager }).locks;
    return locks ? locks.request("daehwa-refresh", () => this.doRefresh()) : this.doRefresh();
  }

  private async doRefresh(): Promise<boolean> {
    const mine = this.tokens;
    if (!mine) return false;
    // Another tab may have refreshed while we waited for the lock.
    const stored = readStored();
    if (stored && stored.refreshToken !== mine.refreshToken && stored.userId === mine.userId) {
      this.tokens = stored;
      this.schedule();
      return true;
    }
    try {
      const r = await api.auth.refresh({ refreshToken: mine.refreshToken });
      this.set({
        ...mine,
        accessToken: r.accessToken,
        refreshToken: r.refreshToken,
        accessExpiresAt: r.accessExpiresAt ? timestampMs(r.accessExpiresAt) : Date.now() + 10 * 60_000,
      });
      return true;
    } catch (e) {
      const code = ConnectError.from(e).code;
      if (code === Code.Unauthenticated || code === Code.PermissionDenied || code === Code.InvalidArgument) {
        this.clear();
        this.onLost();
        return false;
      }
      // Network trouble: try again soon.
      window.clearTimeout(this.timer);
      this.timer = window.setTimeout(() => this.refresh().catch(() => {}), 10_000);
      throw e;
    }
  }
}

function readStored(): Tokens | null {
  try {
    const raw = localStorage.getItem(STORAGE_KEY);
    if (!raw) return null;
    const t = JSON.parse(raw) as Tokens;
    return t.accessToken && t.refreshToken && t.userId ? t : null;
  } catch {
    return null;
  }
}

export const session = new Session();

/** Adds the bearer token; on UNAUTHENTICATED refreshes once and retries unary calls. */
const authInterceptor: Interceptor = (next) => async (req) => {
  const isAuth = req.service.typeName === "chat.v1.AuthService" && req.method.name !== "Logout";
  if (!isAuth && session.tokens) {
    req.header.set("authorization", `Bearer ${session.tokens.accessToken}`);
  }
  try {
    return await next(req);
  } catch (e) {
    const err = ConnectError.from(e);
    if (err.code === Code.Unauthenticated && !isAuth && !req.stream && session.tokens) {
      if (await session.refresh()) {
        req.header.set("authorization", `Bearer ${session.tokens!.accessToken}`);
        return await next(req);
      }
    }
    throw e;
  }
};

/** Records every call for `window.__daehwa.calls`. */
const recordInterceptor: Interceptor = (next) => async (req) => {
  const record: CallRecord = {
    method: `${req.service.typeName}/${req.method.name}`,
    kind: req.method.methodKind === "server_streaming" ? "server_streaming" : "unary",
    ok: false,
  };
  calls.push(record);
  if (calls.length > 500) calls.shift();
  try {
    const res = await next(req);
    record.ok = true;
    return res;
  } catch (e) {
    record.code = Code[ConnectError.from(e).code];
    throw e;
  }
};

/** gRPC-web, binary format (tonic refuses the JSON flavour), to the gateway that served us. */
export const transport = createGrpcWebTransport({
  baseUrl: location.origin,
  useBinaryFormat: true,
  interceptors: [recordInterceptor, authInterceptor],
});

export const api: {
  auth: Client<typeof AuthService>;
  chat: Client<typeof ChatService>;
  groups: Client<typeof GroupService>;
  presence: Client<typeof PresenceService>;
  users: Client<typeof UserService>;
  discovery: Client<typeof DiscoveryService>;
} = {
  auth: createClient(AuthService, transport),
  chat: createClient(ChatService, transport),
  groups: createClient(GroupService, transport),
  presence: createClient(PresenceService, transport),
  users: createClient(UserService, transport),
  discovery: createClient(DiscoveryService, transport),
};

/** Words a person understands for an RPC failure. */
export function describeError(e: unknown): string {
  const err = ConnectError.from(e);
  switch (err.code) {
    case Code.Unavailable:
    case Code.Unknown:
      return err.rawMessage || "Can't reach the server. Check your connection.";
    default:
      return err.rawMessage || Code[err.code];
  }
}

export { Code, ConnectError };
