// Daehwa's web client: accounts, friends with presence, 1:1 and group conversations, live
// messages, typing, read receipts, infinite history, reconnection with catch-up.
//
// Everything request/response goes through gRPC-web (./api); live events come over one
// WebSocket (./live). State lives in plain maps; the DOM is updated by small render functions.

import { timestampMs } from "@bufbuild/protobuf/wkt";
import { api, calls, describeError, session, transport, Code, ConnectError } from "./api";
import { Live, type LiveState } from "./live";
import type { ServerEvent } from "./gen/chat/v1/chat_pb";
import type { Message, User } from "./gen/chat/v1/common_pb";
import { PresenceStatus } from "./gen/chat/v1/common_pb";
import type { Group } from "./gen/chat/v1/group_pb";
import { ago, avatar, byId, clock, dayLabel, fillAvatar, h, newClientMsgId, sameDay, shortWhen } from "./ui";

const PAGE = 30;
const TYPING_SHOWN_MS = 4000;
const TYPING_SEND_EVERY_MS = 2500;
const FRIENDS_POLL_MS = 3000;

// --- state ------------------------------------------------------------------------------

interface Pending {
  clientMsgId: string;
  text: string;
  state: "sending" | "failed";
  error?: string;
  at: number;
}

interface Conv {
  id: string;
  kind: "dm" | "group";
  peerId?: bigint;
  groupId?: bigint;
  lastSeq: bigint;
  readSeq: bigint;
  unread: number;
  lastMessage?: Message;
  /** Creation time for conversations without messages (sorting). */
  since: number;
  /** Loaded messages by seq: a window [oldestSeq, tailSeq] plus anything live after it. */
  messages: Map<bigint, Message>;
  /** The history window is loaded: messages from oldestSeq up to tailSeq, without gaps. */
  loaded: boolean;
  oldestSeq: bigint;
  tailSeq: bigint;
  reachedStart: boolean;
  loadingOlder: boolean;
  pending: Pending[];
  /** Others' read positions (user id -> seq). */
  receipts: Map<string, bigint>;
  /** Who is typing (user id -> until, ms). */
  typing: Map<string, number>;
}

interface PresenceInfo {
  online: boolean;
  lastActive?: number;
}

const state = {
  me: null as User | null,
  users: new Map<string, User>(),
  friends: [] as User[],
  incoming: [] as User[],
  outgoing: [] as User[],
  groups: new Map<string, Group>(),
  convs: new Map<string, Conv>(),
  presence: new Map<string, PresenceInfo>(),
  active: null as Conv | null,
  tab: "chats" as "chats" | "friends",
  lastTypingSent: 0,
  syncing: null as Promise<void> | null,
};

let live: Live | null = null;
let pollTimer: number | undefined;
let minuteTimer: number | undefined;
let typingTimer: number | undefined;

// --- helpers ----------------------------------------------------------------------------

const me = (): bigint => session.userId;
const key = (id: bigint) => id.toString();

function displayName(id: bigint): string {
  if (id === me()) return state.me?.displayName || state.me?.username || "You";
  const u = state.users.get(key(id));
  return u ? u.displayName || u.username : `User ${id}`;
}

function textOf(m: Message): string {
  const kind = m.content?.kind;
  switch (kind?.case) {
    case "text":
      return kind.value;
    case "media":
      return `📎 ${kind.value.name || kind.value.mimeType || "attachment"}`;
    case "encrypted":
      return "🔒 Encrypted message";
    default:
      return "";
  }
}

function msgTime(m: Message): number {
  return m.createdAt ? timestampMs(m.createdAt) : Date.now();
}

function dmId(a: bigint, b: bigint): string {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

function convTitle(c: Conv): string {
  if (c.kind === "dm") return c.peerId !== undefined ? displayName(c.peerId) : "Direct message";
  const g = state.groups.get(key(c.groupId!));
  return g?.name || "Group";
}

function conv(id: string): Conv {
  let c = state.convs.get(id);
  if (c) return c;
  c = {
    id,
    kind: id.startsWith("g:") ? "group" : "dm",
    lastSeq: 0n,
    readSeq: 0n,
    unread: 0,
    since: Date.now(),
    messages: new Map(),
    loaded: false,
    oldestSeq: 0n,
    tailSeq: 0n,
    reachedStart: false,
    loadingOlder: false,
    pending: [],
    receipts: loadReceipts(id),
    typing: new Map(),
  };
  if (c.kind === "dm") {
    const [, lo, hi] = id.split(":");
    const a = BigInt(lo);
    const b = BigInt(hi);
    c.peerId = a === me() ? b : a;
    void ensureUsers([c.peerId]);
  } else {
    c.groupId = BigInt(id.slice(2));
    if (!state.groups.has(key(c.groupId))) void fetchGroup(c.groupId);
  }
  state.convs.set(id, c);
  return c;
}

const receiptKey = (id: string) => `daehwa.receipts.${session.tokens?.userId}.${id}`;

function loadReceipts(id: string): Map<string, bigint> {
  try {
    const raw = JSON.parse(localStorage.getItem(receiptKey(id)) ?? "{}") as Record<string, string>;
    return new Map(Object.entries(raw).map(([k, v]) => [k, BigInt(v)]));
  } catch {
    return new Map();
  }
}

function saveReceipts(c: Conv) {
  const obj: Record<string, string> = {};
  for (const [k, v] of c.receipts) obj[k] = v.toString();
  localStorage.setItem(receiptKey(c.id), JSON.stringify(obj));
}

async function ensureUsers(ids: bigint[]) {
  const missing = [...new Set(ids.filter((id) => id !== me() && !state.users.has(key(id))).map(key))];
  await Promise.all(
    missing.map(async (id) => {
      try {
        const r = await api.users.getUser({ key: { case: "userId", value: BigInt(id) } });
        if (r.user) state.users.set(id, r.user);
      } catch {
        /* shown as "User N" */
      }
    }),
  );
  if (missing.length) renderAll();
}

async function fetchGroup(groupId: bigint) {
  try {
    const r = await api.groups.getGroup({ groupId });
    if (r.group) {
      state.groups.set(key(groupId), r.group);
      await ensureUsers(r.group.memberIds);
    }
  } catch {
    /* not a member (any more) */
  }
  renderAll();
}

// --- sign in ----------------------------------------------------------------------------

let authMode: "login" | "signup" = "login";

function setAuthMode(mode: "login" | "signup") {
  authMode = mode;
  byId("mode-login").setAttribute("aria-selected", String(mode === "login"));
  byId("mode-signup").setAttribute("aria-selected", String(mode === "signup"));
  byId("display-name-field").hidden = mode === "login";
  byId("auth-submit").textContent = mode === "login" ? "Log in" : "Create account";
  byId<HTMLInputElement>("auth-password").autocomplete = mode === "login" ? "current-password" : "new-password";
  byId("auth-error").hidden = true;
}

function showAuth(message?: string) {
  byId("boot").hidden = true;
  byId("app").hidden = true;
  byId("auth").hidden = false;
  const err = byId("auth-error");
  err.hidden = !message;
  err.textContent = message ?? "";
  byId<HTMLInputElement>("auth-username").focus();
}

async function submitAuth(e: Event) {
  e.preventDefault();
  const username = byId<HTMLInputElement>("auth-username").value.trim().toLowerCase();
  const password = byId<HTMLInputElement>("auth-password").value;
  const displayNameInput = byId<HTMLInputElement>("auth-display-name").value.trim();
  const err = byId("auth-error");
  const submit = byId<HTMLButtonElement>("auth-submit");
  err.hidden = true;
  if (!/^[a-z0-9_.-]{3,32}$/.test(username)) {
    err.textContent = "Usernames are 3–32 letters, digits, '_', '.' or '-'.";
    err.hidden = false;
    return;
  }
  if (password.length < 8) {
    err.textContent = "Passwords have at least 8 characters.";
    err.hidden = false;
    return;
  }
  submit.disabled = true;
  try {
    if (authMode === "signup") {
      await api.auth.signUp({ username, password, displayName: displayNameInput || username });
    }
    const r = await api.auth.login({ username, password, deviceName: deviceName() });
    session.set({
      accessToken: r.accessToken,
      refreshToken: r.refreshToken,
      userId: r.userId.toString(),
      deviceId: r.deviceId.toString(),
      username,
      accessExpiresAt: r.accessExpiresAt ? timestampMs(r.accessExpiresAt) : Date.now() + 10 * 60_000,
    });
    byId<HTMLInputElement>("auth-password").value = "";
    await startApp();
  } catch (e) {
    const code = ConnectError.from(e).code;
    err.textContent =
      code === Code.AlreadyExists
        ? "That username is taken."
        : code === Code.Unauthenticated
          ? "Wrong username or password."
          : describeError(e);
    err.hidden = false;
  } finally {
    submit.disabled = false;
  }
}

function deviceName(): string {
  const ua = navigator.userAgent;
  const browser = /Edg\//.test(ua) ? "Edge" : /Chrom/.test(ua) ? "Chrome" : /Firefox/.test(ua) ? "Firefox" : /Safari/.test(ua) ? "Safari" : "Browser";
  return `${browser} (web)`;
}

async function logout() {
  try {
    await api.auth.logout({});
  } catch {
    /* the tokens are dropped anyway */
  }
  endSession();
  showAuth();
}

function endSession() {
  live?.stop();
  live = null;
  window.clearInterval(pollTimer);
  window.clearInterval(minuteTimer);
  session.clear();
  state.me = null;
  state.users.clear();
  state.friends = [];
  state.incoming = [];
  state.outgoing = [];
  state.groups.clear();
  state.convs.clear();
  state.presence.clear();
  state.active = null;
}

// --- start-up and catch-up --------------------------------------------------------------

async function startApp() {
  byId("boot").hidden = true;
  byId("auth").hidden = true;
  byId("app").hidden = false;
  showConversation(null);
  try {
    const r = await api.users.getMe({});
    state.me = r.user ?? null;
  } catch (e) {
    if (!session.tokens) return; // lost while starting
    setConnection("offline", describeError(e));
  }
  renderMe();
  // How often to heartbeat: the server says when the next one is due.
  let heartbeatMs = 5000;
  try {
    const hb = await api.presence.heartbeat({});
    if (hb.nextHeartbeatAt) heartbeatMs = Math.min(60_000, Math.max(1000, timestampMs(hb.nextHeartbeatAt) - Date.now()));
  } catch {
    /* keep the default */
  }
  await Promise.all([refreshFriends(), refreshGroups(), refreshConversations()]);
  live = new Live(session, { event: onServerEvent, state: setConnection });
  live.heartbeatMs = heartbeatMs;
  live.start();
  window.clearInterval(pollTimer);
  // Friend requests and new groups have no live event: poll them while visible.
  pollTimer = window.setInterval(() => {
    if (document.visibilityState === "visible" && session.tokens) {
      void refreshFriends();
      void refreshGroups();
    }
  }, FRIENDS_POLL_MS);
  window.clearInterval(minuteTimer);
  minuteTimer = window.setInterval(() => {
    renderFriends();
    renderHeader();
  }, 30_000);
}

/** After every (re)connect: conversations, unread counts, missed messages, presence. */
function catchUp(): Promise<void> {
  if (!state.syncing) {
    state.syncing = (async () => {
      try {
        await refreshConversations();
        await syncLoaded();
        await Promise.all([refreshFriends(), refreshGroups()]);
        resendPending();
        if (state.active) markRead(state.active);
      } catch (e) {
        console.warn("catch-up failed", e);
      } finally {
        state.syncing = null;
      }
    })();
  }
  return state.syncing;
}

async function refreshConversations() {
  const r = await api.chat.listConversations({});
  for (const c of r.conversations) {
    const v = conv(c.conversationId);
    if (c.lastSeq > v.lastSeq) v.lastSeq = c.lastSeq;
    if (c.readSeq > v.readSeq) v.readSeq = c.readSeq;
    v.unread = Number(c.unreadCount);
    if (c.lastMessage && (!v.lastMessage || c.lastMessage.seq >= v.lastMessage.seq)) v.lastMessage = c.lastMessage;
  }
  renderConversations();
}

/** SyncMessages from each loaded conversation's cursor until nothing is missing. */
async function syncLoaded() {
  for (let round = 0; round < 50; round++) {
    const behind = [...state.convs.values()].filter((c) => c.loaded && c.lastSeq > c.tailSeq);
    if (!behind.length) return;
    const before = behind.map((c) => c.tailSeq);
    const r = await api.chat.syncMessages({
      cursors: behind.map((c) => ({ conversationId: c.id, afterSeq: c.tailSeq })),
      limit: 500,
    });
    for (const m of r.messages) ingest(m, false);
    if (!r.hasMore && behind.every((c, i) => c.tailSeq === before[i])) return;
    if (!r.hasMore && behind.every((c) => c.tailSeq >= c.lastSeq)) return;
  }
}

async function refreshFriends() {
  try {
    const r = await api.users.listFriends({});
    const newFriends = r.friends.filter((f) => !state.friends.some((g) => g.userId === f.userId));
    state.friends = r.friends;
    state.incoming = r.incomingRequests;
    state.outgoing = r.outgoingRequests;
    for (const u of [...r.friends, ...r.incomingRequests, ...r.outgoingRequests]) state.users.set(key(u.userId), u);
    if (newFriends.length) await refreshPresence(newFriends.map((f) => f.userId));
    renderFriends();
    renderConversations();
  } catch (e) {
    console.warn("friends", e);
  }
}

async function refreshPresence(ids: bigint[]) {
  if (!ids.length) return;
  try {
    const r = await api.presence.getPresence({ userIds: ids });
    for (const p of r.presences) {
      state.presence.set(key(p.userId), {
        online: p.status === PresenceStatus.ONLINE,
        lastActive: p.lastActiveAt ? timestampMs(p.lastActiveAt) : undefined,
      });
    }
  } catch (e) {
    console.warn("presence", e);
  }
  renderFriends();
  renderConversations();
  renderHeader();
}

async function refreshGroups() {
  try {
    const r = await api.groups.listGroups({});
    for (const g of r.groups) {
      state.groups.set(key(g.groupId), g);
      const c = conv(g.conversationId || `g:${g.groupId}`);
      if (g.createdAt) c.since = timestampMs(g.createdAt);
    }
    await ensureUsers(r.groups.flatMap((g) => g.memberIds));
    renderConversations();
    renderHeader();
  } catch (e) {
    console.warn("groups", e);
  }
}

// --- live events ------------------------------------------------------------------------

function setConnection(s: LiveState, detail: string) {
  const el = byId("connection");
  el.dataset.state = s;
  el.textContent = detail;
}

function onServerEvent(ev: ServerEvent) {
  const e = ev.event;
  switch (e.case) {
    case "ready":
      void catchUp();
      break;
    case "message":
      ingest(e.value, true);
      break;
    case "sendResult": {
      const outcome = e.value.outcome;
      if (outcome.case === "message") {
        ingest(outcome.value, false);
      } else if (outcome.case === "error") {
        for (const c of state.convs.values()) {
          const p = c.pending.find((p) => p.clientMsgId === e.value.clientMsgId);
          if (p) {
            p.state = "failed";
            p.error = outcome.value.message;
            if (c === state.active) renderMessages();
          }
        }
      }
      break;
    }
    case "readReceipt": {
      const r = e.value;
      const c = conv(r.conversationId);
      if (r.userId === me()) {
        // Read on another of my devices.
        if (r.seq > c.readSeq) c.readSeq = r.seq;
        c.unread = countUnread(c);
        renderConversations();
      } else {
        const prev = c.receipts.get(key(r.userId)) ?? 0n;
        if (r.seq > prev) {
          c.receipts.set(key(r.userId), r.seq);
          saveReceipts(c);
          if (c === state.active) renderMessages();
        }
      }
      break;
    }
    case "typing": {
      const t = e.value;
      if (t.userId === me()) break;
      const c = conv(t.conversationId);
      c.typing.set(key(t.userId), Date.now() + TYPING_SHOWN_MS);
      if (c === state.active) renderTyping();
      break;
    }
    case "presence": {
      const p = e.value;
      state.presence.set(key(p.userId), {
        online: p.status === PresenceStatus.ONLINE,
        lastActive: p.lastActiveAt ? timestampMs(p.lastActiveAt) : state.presence.get(key(p.userId))?.lastActive,
      });
      renderFriends();
      renderConversations();
      renderHeader();
      break;
    }
    default:
      break;
  }
}

/** Unread messages from others after my read position, among the loaded ones (a lower bound). */
function countUnread(c: Conv): number {
  if (!c.loaded) return c.readSeq >= c.lastSeq ? 0 : c.unread;
  let n = 0;
  for (const m of c.messages.values()) if (m.seq > c.readSeq && m.senderId !== me()) n++;
  return n;
}

/** Takes in a stored message (live, a send result, or a sync page). */
function ingest(m: Message, live: boolean) {
  const c = conv(m.conversationId);
  const isNew = m.seq > c.lastSeq;
  if (isNew) c.lastSeq = m.seq;
  if (!c.lastMessage || m.seq >= c.lastMessage.seq) c.lastMessage = m;
  c.pending = c.pending.filter((p) => p.clientMsgId !== m.clientMsgId || m.senderId !== me());
  if (c.loaded && !c.messages.has(m.seq) && m.seq > c.oldestSeq - 1n) {
    c.messages.set(m.seq, m);
    while (c.messages.has(c.tailSeq + 1n)) c.tailSeq++;
    if (m.seq > c.tailSeq + 1n) void syncLoaded(); // a gap: fetch what is missing
  }
  if (m.senderId !== me()) {
    c.typing.delete(key(m.senderId));
    if (c === state.active && pageActive()) {
      markRead(c);
    } else if (live && isNew && m.seq > c.readSeq) {
      c.unread++;
    }
  }
  if (c === state.active) {
    renderMessages();
    renderTyping();
  }
  renderConversations();
}

function pageActive(): boolean {
  return document.visibilityState === "visible";
}

function markRead(c: Conv) {
  c.unread = 0;
  renderConversations();
  const seq = c.lastSeq;
  if (seq === 0n || seq <= c.readSeq) return;
  c.readSeq = seq;
  if (!live?.send({ event: { case: "read", value: { conversationId: c.id, seq } } })) {
    api.chat.markRead({ conversationId: c.id, seq }).catch(() => {});
  }
}

// --- conversations ----------------------------------------------------------------------

async function openConversation(c: Conv) {
  state.active = c;
  state.tab = "chats";
  renderTabs();
  showConversation(c);
  if (!c.loaded) {
    byId("history-status").textContent = "Loading…";
    try {
      const r = await api.chat.getHistory({ conversationId: c.id, beforeSeq: 0n, limit: PAGE });
      if (state.active !== c) return;
      c.loaded = true;
      c.messages.clear();
      for (const m of r.messages) c.messages.set(m.seq, m);
      c.oldestSeq = r.messages.length ? r.messages[0].seq : c.lastSeq + 1n;
      c.tailSeq = r.messages.length ? r.messages[r.messages.length - 1].seq : c.lastSeq;
      c.reachedStart = r.messages.length < PAGE || c.oldestSeq <= 1n;
      if (c.tailSeq > c.lastSeq) c.lastSeq = c.tailSeq;
      if (r.messages.length) {
        const last = r.messages[r.messages.length - 1];
        if (!c.lastMessage || last.seq >= c.lastMessage.seq) c.lastMessage = last;
      }
    } catch (e) {
      byId("history-status").textContent = `Couldn't load messages: ${describeError(e)}`;
      return;
    }
    if (c.lastSeq > c.tailSeq) await syncLoaded();
  }
  renderMessages(true);
  renderTyping();
  if (pageActive()) markRead(c);
  byId<HTMLTextAreaElement>("composer-input").focus();
  void fillViewport(c);
}

/** Loads older pages while the list does not fill the view (so scrolling can start). */
async function fillViewport(c: Conv) {
  const scroller = byId("message-scroller");
  for (let i = 0; i < 20 && state.active === c && !c.reachedStart; i++) {
    if (scroller.scrollHeight > scroller.clientHeight + 40) return;
    await loadOlder(c);
  }
}

async function loadOlder(c: Conv) {
  if (c.loadingOlder || c.reachedStart || !c.loaded) return;
  c.loadingOlder = true;
  const status = byId("history-status");
  status.textContent = "Loading earlier messages…";
  try {
    const r = await api.chat.getHistory({ conversationId: c.id, beforeSeq: c.oldestSeq, limit: PAGE });
    for (const m of r.messages) c.messages.set(m.seq, m);
    if (r.messages.length) c.oldestSeq = r.messages[0].seq;
    if (r.messages.length < PAGE || c.oldestSeq <= 1n) c.reachedStart = true;
    if (state.active === c) {
      const scroller = byId("message-scroller");
      const fromBottom = scroller.scrollHeight - scroller.scrollTop;
      renderMessages();
      scroller.scrollTop = scroller.scrollHeight - fromBottom;
    }
  } catch (e) {
    status.textContent = `Couldn't load earlier messages: ${describeError(e)}`;
    return;
  } finally {
    c.loadingOlder = false;
  }
  renderHistoryStatus(c);
}

function renderHistoryStatus(c: Conv) {
  const status = byId("history-status");
  status.dataset.reachedStart = String(c.reachedStart);
  status.textContent = c.reachedStart
    ? c.messages.size
      ? "This is the beginning of the conversation."
      : "No messages yet. Say hello!"
    : "";
}

function openDm(friend: User) {
  const c = conv(dmId(me(), friend.userId));
  void openConversation(c);
}

function sendMessage(text: string) {
  const c = state.active;
  if (!c) return;
  const p: Pending = { clientMsgId: newClientMsgId(), text, state: "sending", at: Date.now() };
  state.lastTypingSent = 0; // the next keystroke starts a new "typing"
  c.pending.push(p);
  renderMessages(true);
  deliver(c, p);
}

function deliver(c: Conv, p: Pending) {
  p.state = "sending";
  p.error = undefined;
  const content = { kind: { case: "text" as const, value: p.text } };
  const sent = live?.send({
    event: { case: "send", value: { clientMsgId: p.clientMsgId, conversationId: c.id, content } },
  });
  if (sent) return; // the outcome comes back as a send_result
  api.chat
    .sendMessage({ clientMsgId: p.clientMsgId, conversationId: c.id, content })
    .then((r) => r.message && ingest(r.message, false))
    .catch((e) => {
      const code = ConnectError.from(e).code;
      if (code === Code.Unavailable || code === Code.Unknown || code === Code.DeadlineExceeded) {
        return; // stays "sending": retried after reconnecting (same client_msg_id, no duplicate)
      }
      p.state = "failed";
      p.error = describeError(e);
      if (c === state.active) renderMessages();
    });
}

/** After reconnecting: sends again whatever has no outcome yet (idempotent by client_msg_id). */
function resendPending() {
  for (const c of state.convs.values()) for (const p of c.pending) if (p.state === "sending") deliver(c, p);
}

// --- rendering --------------------------------------------------------------------------

function renderAll() {
  renderMe();
  renderConversations();
  renderFriends();
  renderHeader();
  if (state.active) renderMessages();
}

function renderMe() {
  const name = state.me?.displayName || state.me?.username || session.tokens?.username || "";
  byId("me-name").textContent = name;
  fillAvatar(byId("me-avatar"), name, session.tokens?.userId ?? "");
}

function renderTabs() {
  byId("tab-chats").setAttribute("aria-selected", String(state.tab === "chats"));
  byId("tab-friends").setAttribute("aria-selected", String(state.tab === "friends"));
  byId("panel-chats").hidden = state.tab !== "chats";
  byId("panel-friends").hidden = state.tab !== "friends";
}

function presenceDot(userId: bigint): HTMLSpanElement {
  const p = state.presence.get(key(userId));
  const online = !!p?.online;
  return h("span", {
    class: "dot",
    "data-testid": "presence-dot",
    "data-status": online ? "online" : "offline",
    role: "img",
    "aria-label": online ? "online" : "offline",
  });
}

function presenceText(userId: bigint): string {
  const p = state.presence.get(key(userId));
  if (p?.online) return "Online";
  return p?.lastActive ? `Last seen ${ago(p.lastActive)}` : "Offline";
}

function sortedConvs(): Conv[] {
  const when = (c: Conv) => (c.lastMessage ? msgTime(c.lastMessage) : c.since);
  return [...state.convs.values()]
    .filter((c) => c.lastMessage || c.kind === "group" || c === state.active || c.pending.length)
    .sort((a, b) => when(b) - when(a));
}

function renderConversations() {
  const list = byId("conversation-list");
  const convs = sortedConvs();
  list.replaceChildren(
    ...convs.map((c) => {
      const title = convTitle(c);
      const last = c.lastMessage;
      const preview = last
        ? `${last.senderId === me() ? "You: " : c.kind === "group" ? `${displayName(last.senderId)}: ` : ""}${textOf(last)}`
        : "No messages yet";
      const typing = [...c.typing.entries()].some(([, until]) => until > Date.now());
      const av = avatar(title, c.id, c.kind === "group" ? "group" : "");
      if (c.kind === "dm" && c.peerId !== undefined) av.append(presenceDot(c.peerId));
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: `row${c === state.active ? " active" : ""}${c.unread ? " unread" : ""}`,
            "data-testid": "conversation-item",
            "data-conversation-id": c.id,
            "data-title": title,
            "data-unread": c.unread,
            "aria-current": c === state.active ? "true" : null,
            "aria-label": `${title}${c.unread ? `, ${c.unread} unread` : ""}`,
            onclick: () => void openConversation(c),
          },
          av,
          h(
            "span",
            { class: "row-text" },
            h(
              "span",
              { class: "row-top" },
              h("span", { class: "row-title" }, title),
              last ? h("span", { class: "row-time" }, shortWhen(msgTime(last))) : null,
            ),
            h("span", { class: "row-sub" }, typing ? "typing…" : preview),
          ),
          c.unread ? h("span", { class: "badge", "data-testid": "unread-badge" }, String(c.unread)) : null,
        ),
      );
    }),
  );
  byId("no-conversations").hidden = convs.length > 0;
  const total = convs.reduce((n, c) => n + c.unread, 0);
  const badge = byId("unread-total");
  badge.hidden = total === 0;
  badge.textContent = String(total);
  document.title = total ? `(${total}) Daehwa` : "Daehwa";
}

function renderFriends() {
  const friends = [...state.friends].sort((a, b) => {
    const oa = state.presence.get(key(a.userId))?.online ? 0 : 1;
    const ob = state.presence.get(key(b.userId))?.online ? 0 : 1;
    return oa - ob || (a.displayName || a.username).localeCompare(b.displayName || b.username);
  });
  byId("friend-list").replaceChildren(
    ...friends.map((f) => {
      const name = f.displayName || f.username;
      const av = avatar(name, key(f.userId));
      av.append(presenceDot(f.userId));
      return h(
        "li",
        {},
        h(
          "button",
          {
            type: "button",
            class: "row",
            "data-testid": "friend-item",
            "data-username": f.username,
            "aria-label": `${name}, ${presenceText(f.userId)}. Open chat`,
            onclick: () => openDm(f),
          },
          av,
          h(
            "span",
            { class: "row-text" },
            h("span", { class: "row-title" }, name),
            h("span", { class: "row-sub", "data-testid": "last-seen" }, `@${f.username} · ${presenceText(f.userId)}`),
          ),
        ),
      );
    }),
  );
  byId("no-friends").hidden = friends.length > 0;

  byId("incoming-heading").hidden = state.incoming.length === 0;
  byId("incoming-list").replaceChildren(
    ...state.incoming.map((u) => {
      const name = u.displayName || u.username;
      return h(
        "li",
        { class: "row", "data-testid": "incoming-request", "data-username": u.username },
        avatar(name, key(u.userId)),
        h("span", { class: "row-text" }, h("span", { class: "row-title" }, name), h("span", { class: "row-sub" }, `@${u.username} wants to be friends`)),
        h(
          "span",
          { class: "row-actions" },
          h("button", { type: "button", class: "primary", "data-testid": "accept-request", "aria-label": `Accept ${name}`, onclick: () => void answerRequest(u, true) }, "Accept"),
          h("button", { type: "button", class: "ghost", "data-testid": "decline-request", "aria-label": `Decline ${name}`, onclick: () => void answerRequest(u, false) }, "Decline"),
        ),
      );
    }),
  );
  byId("outgoing-heading").hidden = state.outgoing.length === 0;
  byId("outgoing-list").replaceChildren(
    ...state.outgoing.map((u) => {
      const name = u.displayName || u.username;
      return h(
        "li",
        { class: "row", "data-testid": "outgoing-request", "data-username": u.username },
        avatar(name, key(u.userId)),
        h("span", { class: "row-text" }, h("span", { class: "row-title" }, name), h("span", { class: "row-sub" }, "Request sent")),
        h("button", { type: "button", class: "ghost", "aria-label": `Cancel request to ${name}`, onclick: () => void answerRequest(u, false) }, "Cancel"),
      );
    }),
  );
  const badge = byId("requests-badge");
  badge.hidden = state.incoming.length === 0;
  badge.textContent = String(state.incoming.length);
}

async function answerRequest(u: User, accept: boolean) {
  try {
    if (accept) await api.users.addFriend({ userId: u.userId });
    else await api.users.removeFriend({ userId: u.userId });
  } catch (e) {
    notice(describeError(e), true);
  }
  await refreshFriends();
}

function notice(text: string, error = false) {
  const el = byId("friend-notice");
  el.textContent = text;
  el.classList.toggle("error", error);
  el.hidden = !text;
}

async function addFriend(e: Event) {
  e.preventDefault();
  const input = byId<HTMLInputElement>("add-friend-input");
  const username = input.value.trim().replace(/^@/, "").toLowerCase();
  if (!username) return;
  if (username === session.tokens?.username) {
    notice("That's you!", true);
    return;
  }
  try {
    const r = await api.users.getUser({ key: { case: "username", value: username } });
    if (!r.user) throw new Error("no user");
    const f = await api.users.addFriend({ userId: r.user.userId });
    input.value = "";
    const name = r.user.displayName || r.user.username;
    notice(f.friendship?.state === 3 ? `You and ${name} are now friends.` : `Friend request sent to ${name}.`);
  } catch (err) {
    notice(ConnectError.from(err).code === Code.NotFound ? `Nobody is called @${username}.` : describeError(err), true);
  }
  await refreshFriends();
}

function showConversation(c: Conv | null) {
  byId("chat-empty").hidden = !!c;
  byId("chat-pane").hidden = !c;
  byId("app").classList.toggle("in-chat", !!c);
  byId("message-list").replaceChildren();
  byId("typing").textContent = "";
  if (c) {
    byId("history-status").textContent = "";
    renderHeader();
  }
  renderConversations();
}

function renderHeader() {
  const c = state.active;
  if (!c) return;
  const title = convTitle(c);
  byId("chat-title").textContent = title;
  const av = byId("chat-avatar");
  av.className = `avatar${c.kind === "group" ? " group" : ""}`;
  fillAvatar(av, title, c.id);
  const sub = byId("chat-subtitle");
  const addMembers = byId("add-members");
  if (c.kind === "dm" && c.peerId !== undefined) {
    av.append(presenceDot(c.peerId));
    sub.textContent = presenceText(c.peerId);
    sub.className = state.presence.get(key(c.peerId))?.online ? "online" : "";
    sub.dataset.status = state.presence.get(key(c.peerId))?.online ? "online" : "offline";
    addMembers.hidden = true;
  } else {
    const g = state.groups.get(key(c.groupId!));
    const names = g ? g.memberIds.map((id) => (id === me() ? "you" : displayName(id))) : [];
    sub.textContent = g ? `${g.memberIds.length} members: ${names.join(", ")}` : "";
    sub.className = "";
    delete sub.dataset.status;
    addMembers.hidden = !g;
  }
}

function renderTyping() {
  const c = state.active;
  const el = byId("typing");
  if (!c) return;
  const now = Date.now();
  const who = [...c.typing.entries()].filter(([, until]) => until > now).map(([id]) => displayName(BigInt(id)));
  el.textContent = who.length === 0 ? "" : who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
  window.clearTimeout(typingTimer);
  if (who.length) typingTimer = window.setTimeout(() => {
    renderTyping();
    renderConversations();
  }, 1000);
}

function renderMessages(forceBottom = false) {
  const c = state.active;
  if (!c) return;
  const scroller = byId("message-scroller");
  const atBottom = forceBottom || scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  const msgs = [...c.messages.values()].sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  const items: HTMLElement[] = [];
  // Who has read up to where (my messages only).
  const readers = [...c.receipts.entries()];
  let lastReadMine: bigint | null = null;
  for (const m of msgs) {
    if (m.senderId === me() && readers.some(([, seq]) => seq >= m.seq)) lastReadMine = m.seq;
  }
  /** Whether `b` continues `a`'s run (same sender, same day, within five minutes). */
  const continues = (a: Message, b: Message) =>
    a.senderId === b.senderId && sameDay(msgTime(a), msgTime(b)) && msgTime(b) - msgTime(a) <= 5 * 60_000;
  let prev: Message | null = null;
  for (const [i, m] of msgs.entries()) {
    const t = msgTime(m);
    const next = msgs[i + 1];
    if (!prev || !sameDay(msgTime(prev), t)) items.push(h("li", { class: "day", role: "separator" }, dayLabel(t)));
    const mine = m.senderId === me();
    const first = !prev || !continues(prev, m);
    const lastOfRun = !next || !continues(m, next);
    const receipt =
      m.seq === lastReadMine
        ? c.kind === "dm"
          ? "Seen"
          : `Seen by ${readers.filter(([, seq]) => seq >= m.seq).map(([id]) => displayName(BigInt(id))).join(", ")}`
        : null;
    items.push(
      h(
        "li",
        {
          class: `msg${mine ? " mine" : ""}${first ? " first" : ""}`,
          "data-testid": "message",
          "data-seq": m.seq.toString(),
          "data-sender": mine ? (session.tokens?.username ?? "") : (state.users.get(key(m.senderId))?.username ?? ""),
          "data-mine": String(mine),
        },
        first && !mine && c.kind === "group" ? h("span", { class: "sender" }, displayName(m.senderId)) : null,
        h("div", { class: "bubble", "data-testid": "message-text" }, textOf(m)),
        lastOfRun || receipt
          ? h(
              "span",
              { class: "meta" },
              h("time", { datetime: new Date(t).toISOString(), title: new Date(t).toLocaleString() }, clock(t)),
              receipt ? h("span", { class: "receipt", "data-testid": "read-receipt" }, receipt) : null,
            )
          : null,
      ),
    );
    prev = m;
  }
  for (const p of c.pending) {
    items.push(
      h(
        "li",
        { class: `msg mine first ${p.state === "failed" ? "failed" : "pending"}`, "data-testid": "pending-message", "data-state": p.state },
        h("div", { class: "bubble", "data-testid": "message-text" }, p.text),
        h(
          "span",
          { class: "meta" },
          p.state === "failed" ? `Not sent: ${p.error ?? "error"}` : "Sending…",
          p.state === "failed" ? h("button", { type: "button", onclick: () => deliver(c, p) }, "Retry") : null,
        ),
      ),
    );
  }
  byId("message-list").replaceChildren(...items);
  renderHistoryStatus(c);
  if (atBottom) scroller.scrollTop = scroller.scrollHeight;
}

// --- groups dialog ----------------------------------------------------------------------

let dialogMode: { kind: "create" } | { kind: "add"; group: Group } = { kind: "create" };

function openGroupDialog(mode: typeof dialogMode) {
  dialogMode = mode;
  const dialog = byId<HTMLDialogElement>("group-dialog");
  const creating = mode.kind === "create";
  byId("group-dialog-title").textContent = creating ? "New group" : `Add people to ${mode.group.name}`;
  byId("group-name-field").hidden = !creating;
  byId<HTMLInputElement>("group-name").required = creating;
  byId<HTMLInputElement>("group-name").value = "";
  byId("group-submit").textContent = creating ? "Create" : "Add";
  byId("group-error").hidden = true;
  const members = new Set(mode.kind === "add" ? mode.group.memberIds.map(key) : []);
  const candidates = state.friends.filter((f) => !members.has(key(f.userId)));
  byId("group-member-options").replaceChildren(
    ...candidates.map((f) =>
      h(
        "li",
        {},
        h(
          "label",
          {},
          h("input", { type: "checkbox", value: f.userId.toString(), "data-testid": "group-member-option", "data-username": f.username }),
          avatar(f.displayName || f.username, key(f.userId)),
          f.displayName || f.username,
        ),
      ),
    ),
  );
  byId("group-no-friends").hidden = candidates.length > 0;
  dialog.showModal();
  (creating ? byId<HTMLInputElement>("group-name") : dialog.querySelector<HTMLInputElement>("input[type=checkbox]"))?.focus();
}

async function submitGroupDialog(e: Event) {
  e.preventDefault();
  const dialog = byId<HTMLDialogElement>("group-dialog");
  const err = byId("group-error");
  const ids = [...dialog.querySelectorAll<HTMLInputElement>("#group-member-options input:checked")].map((i) => BigInt(i.value));
  try {
    let group: Group | undefined;
    if (dialogMode.kind === "create") {
      const name = byId<HTMLInputElement>("group-name").value.trim();
      if (!name) throw new Error("Give the group a name.");
      group = (await api.groups.createGroup({ name, memberIds: ids })).group;
    } else {
      if (!ids.length) throw new Error("Pick at least one friend.");
      group = (await api.groups.addMembers({ groupId: dialogMode.group.groupId, userIds: ids })).group;
    }
    dialog.close();
    if (group) {
      state.groups.set(key(group.groupId), group);
      const c = conv(group.conversationId || `g:${group.groupId}`);
      if (group.createdAt && dialogMode.kind === "create") c.since = timestampMs(group.createdAt);
      await ensureUsers(group.memberIds);
      void openConversation(c);
    }
  } catch (x) {
    err.textContent = x instanceof ConnectError ? describeError(x) : x instanceof Error ? x.message : String(x);
    err.hidden = false;
  }
}

// --- wiring -----------------------------------------------------------------------------

function wire() {
  byId("mode-login").addEventListener("click", () => setAuthMode("login"));
  byId("mode-signup").addEventListener("click", () => setAuthMode("signup"));
  byId("auth-form").addEventListener("submit", (e) => void submitAuth(e));
  byId("logout").addEventListener("click", () => void logout());
  byId("tab-chats").addEventListener("click", () => {
    state.tab = "chats";
    renderTabs();
  });
  byId("tab-friends").addEventListener("click", () => {
    state.tab = "friends";
    renderTabs();
    void refreshFriends();
  });
  byId("add-friend").addEventListener("submit", (e) => void addFriend(e));
  byId("new-group").addEventListener("click", () => openGroupDialog({ kind: "create" }));
  byId("add-members").addEventListener("click", () => {
    const g = state.active?.groupId !== undefined ? state.groups.get(key(state.active.groupId)) : undefined;
    if (g) openGroupDialog({ kind: "add", group: g });
  });
  byId("group-form").addEventListener("submit", (e) => void submitGroupDialog(e));
  byId("group-cancel").addEventListener("click", () => byId<HTMLDialogElement>("group-dialog").close());
  byId("back").addEventListener("click", () => {
    state.active = null;
    showConversation(null);
  });

  const input = byId<HTMLTextAreaElement>("composer-input");
  const grow = () => {
    input.style.height = "auto";
    input.style.height = `${Math.min(160, input.scrollHeight)}px`;
  };
  byId("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    grow();
    sendMessage(text);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      byId<HTMLFormElement>("composer").requestSubmit();
    }
  });
  input.addEventListener("input", () => {
    grow();
    const c = state.active;
    if (!c || !input.value.trim()) return;
    const now = Date.now();
    if (now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
    state.lastTypingSent = now;
    if (!live?.send({ event: { case: "typing", value: { conversationId: c.id } } })) {
      api.chat.notifyTyping({ conversationId: c.id }).catch(() => {});
    }
  });

  const scroller = byId("message-scroller");
  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < 150 && state.active) void loadOlder(state.active);
  });

  const readIfVisible = () => {
    if (state.active && pageActive()) markRead(state.active);
  };
  document.addEventListener("visibilitychange", readIfVisible);
  window.addEventListener("focus", readIfVisible);

  session.onLost = () => {
    endSession();
    showAuth("Your session ended. Please log in again.");
  };
}

/** A debug and test hook: the page's generated gRPC-web client, and what it has called. */
function debugHook() {
  (window as unknown as { __daehwa: unknown }).__daehwa = {
    api,
    calls,
    transport,
    state,
    get liveReady() {
      return live?.isReady ?? false;
    },
    get reconnects() {
      return live?.readyCount ?? 0;
    },
    /** Drops the live session (as a network failure would) and keeps it down. */
    disconnect() {
      live?.stop();
      setConnection("offline", "Offline");
    },
    /** Brings the live session back; `ready` triggers the catch-up. */
    reconnect() {
      live?.start();
    },
    /** Calls a unary RPC and reads the first event of a server stream (Subscribe). */
    async probe(): Promise<{ unary: string; stream: string }> {
      const meResp = await api.users.getMe({});
      const abort = new AbortController();
      let first = "";
      try {
        for await (const ev of api.chat.subscribe({}, { signal: abort.signal })) {
          first = ev.event.case ?? "";
          break;
        }
      } finally {
        abort.abort();
      }
      return { unary: meResp.user?.username ?? "", stream: first };
    },
  };
}

function main() {
  wire();
  debugHook();
  setAuthMode("login");
  if (session.tokens) {
    session.schedule();
    void startApp();
  } else {
    showAuth();
  }
}

main();
