// Small DOM and formatting helpers. User text only ever goes through textContent.

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

/** Creates an element: `on*` keys become listeners, `false`/`null` attributes are skipped. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = String(value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child);
  }
  return el;
}

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
}

const AVATAR_COLOURS = ["#4f46e5", "#0891b2", "#db2777", "#059669", "#d97706", "#7c3aed", "#dc2626", "#2563eb"];

/** A coloured circle with initials; the colour is stable per key. */
export function avatar(name: string, key: string, extraClass = ""): HTMLSpanElement {
  const el = h("span", { class: `avatar ${extraClass}`.trim(), "aria-hidden": "true" });
  fillAvatar(el, name, key);
  return el;
}

export function fillAvatar(el: HTMLElement, name: string, key: string) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  const initials = words.length > 1 ? words[0][0] + words[1][0] : (words[0] ?? "?").slice(0, 2);
  el.textContent = initials;
  let hash = 0;
  for (const c of key) hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  el.style.background = AVATAR_COLOURS[hash % AVATAR_COLOURS.length];
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const shortDayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

export function clock(ms: number): string {
  return timeFmt.format(ms);
}

export function sameDay(a: number, b: number): boolean {
  const x = new Date(a);
  const y = new Date(b);
  return x.getFullYear() === y.getFullYear() && x.getMonth() === y.getMonth() && x.getDate() === y.getDate();
}

export function dayLabel(ms: number): string {
  const now = Date.now();
  if (sameDay(ms, now)) return "Today";
  if (sameDay(ms, now - 86_400_000)) return "Yesterday";
  return dayFmt.format(ms);
}

/** For conversation rows: the time today, else the date. */
export function shortWhen(ms: number): string {
  return sameDay(ms, Date.now()) ? clock(ms) : shortDayFmt.format(ms);
}

/** "just now", "5 min ago", "3 h ago", "on Mar 3". */
export function ago(ms: number): string {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86_400) return `${Math.round(s / 3600)} h ago`;
  return `on ${shortDayFmt.format(ms)}`;
}

/**
 * A client_msg_id: a UUID version 7 (48 bits of Unix milliseconds, then random bits), so ids
 * sort by time and the server's retry index stores them next to each other
 * (crypto.randomUUID would be random, and needs a secure context).
 */
export function newClientMsgId(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = 0x70 | (bytes[6] & 0x0f);
  bytes[8] = 0x80 | (bytes[8] & 0x3f);
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
