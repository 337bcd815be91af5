// The one live stream: a WebSocket to /v1/ws carrying protobuf ClientEvent/ServerEvent frames
// (subprotocol daehwa.v1.proto). Reconnects with backoff; the app catches up by sync on `ready`.

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { ClientEventSchema, ServerEventSchema, type ServerEvent } from "./gen/chat/v1/chat_pb";
import type { Session } from "./api";

export type LiveState = "connecting" | "online" | "offline";

export interface LiveHandlers {
  event(event: ServerEvent): void;
  state(state: LiveState, detail: string): void;
}

const SUBPROTOCOL = "daehwa.v1.proto";
/** Close codes after which reconnecting cannot help without new credentials. */
const POLICY = 1008;

export class Live {
  private ws: WebSocket | null = null;
  private ready = false;
  private attempt = 0;
  private retryTimer: number | undefined;
  private heartbeatTimer: number | undefined;
  private stopped = true;
  heartbeatMs = 5000;
  /** Times a `ready` was received (the first connection included). */
  readyCount = 0;

  constructor(
    private session: Session,
    private handlers: LiveHandlers,
  ) {
    window.addEventListener("online", () => this.reconnectNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.reconnectNow();
    });
  }

  get isReady(): boolean {
    return this.ready && this.ws?.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.open();
  }

  stop() {
    this.stopped = true;
    window.clearTimeout(this.retryTimer);
    this.stopHeartbeat();
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    ws?.close(1000, "bye");
  }

  /** Sends an event if the session is live; false if it is not (the caller falls back). */
  send(event: MessageInitShape<typeof ClientEventSchema>): boolean {
    if (!this.isReady) return false;
    this.ws!.send(toBinary(ClientEventSchema, create(ClientEventSchema, event)));
    return true;
  }

  /** Skips the backoff wait (the network came back, the tab became visible). */
  private reconnectNow() {
    if (this.stopped || this.ws) return;
    window.clearTimeout(this.retryTimer);
    this.attempt = 0;
    this.open();
  }

  private open() {
    const tokens = this.session.tokens;
    if (this.stopped || !tokens) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/ws?access_token=${encodeURIComponent(tokens.accessToken)}`;
    this.handlers.state("connecting", this.attempt ? "Reconnecting…" : "Connecting…");
    const ws = new WebSocket(url, [SUBPROTOCOL]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.ready = false;
    ws.onmessage = (e) => {
      if (this.ws !== ws || !(e.data instanceof ArrayBuffer)) return;
      let event: ServerEvent;
      try {
        event = fromBinary(ServerEventSchema, new Uint8Array(e.data));
      } catch (err) {
        console.warn("undecodable server event", err);
        return;
      }
      if (event.event.case === "ready") {
        this.ready = true;
        this.attempt = 0;
        this.readyCount++;
        this.startHeartbeat();
        this.handlers.state("online", "Online");
      }
      this.handlers.event(event);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.ready = false;
      this.stopHeartbeat();
      if (this.stopped) return;
      this.handlers.state("offline", e.reason ? `Offline: ${e.reason}` : "Offline");
      if (e.code === POLICY) {
        // Probably an expired token: refresh, then reconnect (or the session is gone).
        this.session.refresh().then(
          (ok) => ok && this.retry(),
          () => this.retry(),
        );
      } else {
        this.retry();
      }
    };
  }

  private retry() {
    if (this.stopped) return;
    const base = Math.min(15_000, 400 * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt++;
    window.clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => this.open(), delay);
  }

  private startHeartbeat() {
    this.stopHeartbeat();
    this.heartbeatTimer = window.setInterval(() => {
      this.send({ event: { case: "heartbeat", value: {} } });
    }, this.heartbeatMs);
  }

  private stopHeartbeat() {
    window.clearInterval(this.heartbeatTimer);
  }
}
