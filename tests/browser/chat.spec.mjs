// The web client in headless Chromium: run by tests/browser.rs as
//   node tests/browser/chat.spec.mjs http://HOST:PORT
// Debian's chromium (/usr/bin/chromium, or $CHROMIUM_PATH) driven by playwright-core from
// tools/node_modules (never a downloaded browser). Every wait is for a condition, with a
// timeout; the process exits non-zero with the failing step on any failure.

import { createRequire } from "node:module";

const require = createRequire(new URL("../../tools/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const BASE = process.argv[2];
if (!BASE) {
  console.error("usage: node tests/browser/chat.spec.mjs http://HOST:PORT");
  process.exit(2);
}
const WAIT = 15_000;
const suffix = Math.random().toString(16).slice(2, 8);
const ALICE = { username: `alice_${suffix}`, display: "Alice Kim", password: "correct horse battery" };
const BOB = { username: `bob_${suffix}`, display: "Bob Lee", password: "correct horse battery" };
const CAROL = { username: `carol_${suffix}`, display: "Carol Park", password: "correct horse battery" };
const EXTRA = 34; // with the page size of 30, a reload needs infinite scroll to see everything

let step = "start";
const started = Date.now();
function log(text) {
  step = text;
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${text}`);
}
/** Screenshots for a human to look at, when SCREENSHOT_DIR is set (not needed by the test). */
async function snap(page, name) {
  if (process.env.SCREENSHOT_DIR) await page.screenshot({ path: `${process.env.SCREENSHOT_DIR}/${name}.png` });
}
function assert(ok, what) {
  if (!ok) throw new Error(`assertion failed: ${what}`);
}

const pageLogs = [];
function watch(page, who) {
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") pageLogs.push(`${who} console.${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => pageLogs.push(`${who} page error: ${e.message}`));
  const grpcWeb = [];
  page.on("response", (r) => {
    const type = r.headers()["content-type"] ?? "";
    if (type.startsWith("application/grpc-web")) grpcWeb.push({ url: r.url(), type, status: r.status() });
  });
  return grpcWeb;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  headless: true,
  // playwright adds --headless and a fresh temporary --user-data-dir for each launch.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  timeout: 60_000,
});

async function openPage(who) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const grpcWeb = watch(page, who);
  await page.goto(BASE);
  return { context, page, grpcWeb };
}

async function signUp(page, user) {
  await page.getByTestId("auth-mode-signup").click();
  await page.getByTestId("auth-username").fill(user.username);
  await page.getByTestId("auth-display-name").fill(user.display);
  await page.getByTestId("auth-password").fill(user.password);
  await page.getByTestId("auth-submit").click();
  await page.getByTestId("me-name").filter({ hasText: user.display }).waitFor();
  await online(page);
}

async function online(page) {
  await page.locator('[data-testid="connection-status"][data-state="online"]').waitFor();
}

function friend(page, user) {
  return page.locator(`[data-testid="friend-item"][data-username="${user.username}"]`);
}

function conversation(page, title) {
  return page.locator(`[data-testid="conversation-item"][data-title="${title}"]`);
}

async function send(page, text) {
  const input = page.getByTestId("composer-input");
  await input.fill(text);
  await input.press("Enter");
}

async function seesMessage(page, text) {
  await page.getByTestId("message-list").getByTestId("message-text").filter({ hasText: text }).first().waitFor();
}

async function befriend(from, fromUser, to, toUser) {
  await from.getByTestId("tab-friends").click();
  await from.getByTestId("add-friend-input").fill(toUser.username);
  await from.getByTestId("add-friend-submit").click();
  await from.getByTestId("friend-notice").filter({ hasText: "Friend request sent" }).waitFor();
  await from.locator(`[data-testid="outgoing-request"][data-username="${toUser.username}"]`).waitFor();
  await to.getByTestId("tab-friends").click();
  const request = to.locator(`[data-testid="incoming-request"][data-username="${fromUser.username}"]`);
  await request.waitFor(); // friend requests are polled every few seconds
  await request.getByTestId("accept-request").click();
  await friend(to, fromUser).waitFor();
  await friend(from, toUser).waitFor();
}

let failed = false;
try {
  log(`opening ${BASE} for alice and bob`);
  const alice = await openPage("alice");
  const bob = await openPage("bob");
  const a = alice.page;
  const b = bob.page;
  const html = await (await a.request.get(BASE)).text();
  assert(html.includes("/assets/app.js"), "the gateway serves the page at /");

  await snap(a, "auth");
  log("sign up alice and bob");
  await signUp(a, ALICE);
  await signUp(b, BOB);

  log("alice asks bob to be friends; bob accepts");
  await befriend(a, ALICE, b, BOB);
  log("each sees the other online");
  await friend(a, BOB).locator('[data-testid="presence-dot"][data-status="online"]').waitFor();
  await friend(b, ALICE).locator('[data-testid="presence-dot"][data-status="online"]').waitFor();

  log("alice opens the 1:1 chat and says hello");
  await friend(a, BOB).click();
  await a.getByTestId("conversation-title").filter({ hasText: BOB.display }).waitFor();
  await send(a, "Hello Bob!");
  await seesMessage(a, "Hello Bob!");
  await a.locator('[data-testid="message"][data-mine="true"]').first().waitFor();

  log("bob sees the conversation with an unread count, opens it, and alice sees it read");
  await b.getByTestId("tab-chats").click();
  await conversation(b, ALICE.display).locator('[data-testid="unread-badge"]').filter({ hasText: "1" }).waitFor();
  await conversation(b, ALICE.display).click();
  await seesMessage(b, "Hello Bob!");
  await a.getByTestId("read-receipt").filter({ hasText: "Seen" }).waitFor();
  await conversation(b, ALICE.display).locator('[data-testid="unread-badge"]').waitFor({ state: "detached" });

  log("alice types; bob sees the typing indicator");
  await a.getByTestId("composer-input").pressSequentially("Are you there?", { delay: 20 });
  await b.getByTestId("typing-indicator").filter({ hasText: `${ALICE.display} is typing` }).waitFor();
  await a.getByTestId("composer-input").press("Enter");
  await seesMessage(b, "Are you there?");
  await b.getByTestId("typing-indicator").filter({ hasText: /^$/ }).waitFor();

  log("bob replies live");
  await send(b, "Yes, here!");
  await seesMessage(a, "Yes, here!");

  await snap(a, "alice-dm");
  log(`alice sends ${EXTRA} more messages; bob receives them all live`);
  for (let i = 1; i <= EXTRA; i++) await send(a, `Message ${i}`);
  await seesMessage(b, `Message ${EXTRA}`);
  await b.locator('[data-testid="message"]').nth(EXTRA + 2).waitFor();

  log("bob's live session drops; alice writes meanwhile; bob reconnects and catches up by sync");
  await b.evaluate(() => window.__daehwa.disconnect());
  await b.locator('[data-testid="connection-status"][data-state="offline"]').waitFor();
  await send(a, "Sent while you were away");
  await seesMessage(a, "Sent while you were away");
  await a.locator('[data-testid="pending-message"]').waitFor({ state: "detached" });
  await b.evaluate(() => window.__daehwa.reconnect());
  await online(b);
  await seesMessage(b, "Sent while you were away");
  const synced = await b.evaluate(() => window.__daehwa.calls.filter((c) => c.method.endsWith("/SyncMessages") && c.ok).length);
  assert(synced >= 1, `bob caught up with SyncMessages (saw ${synced} calls)`);

  log("carol joins: alice befriends her");
  const carol = await openPage("carol");
  const c = carol.page;
  await signUp(c, CAROL);
  await befriend(a, ALICE, c, CAROL);

  log("alice creates a group with bob");
  await a.getByTestId("tab-chats").click();
  await a.getByTestId("new-group").click();
  await a.getByTestId("group-name-input").fill("Weekend plans");
  await a.locator(`[data-testid="group-member-option"][data-username="${BOB.username}"]`).check();
  await a.getByTestId("group-submit").click();
  await a.getByTestId("conversation-title").filter({ hasText: "Weekend plans" }).waitFor();
  await send(a, "Group hello");
  await seesMessage(a, "Group hello");

  log("bob sees the group live and replies; alice sees it live");
  await conversation(b, "Weekend plans").click();
  await seesMessage(b, "Group hello");
  await send(b, "Group reply from Bob");
  await seesMessage(a, "Group reply from Bob");

  log("alice adds carol to the group; carol sees the next message live");
  await a.getByTestId("add-members").click();
  await a.locator(`[data-testid="group-member-option"][data-username="${CAROL.username}"]`).check();
  await a.getByTestId("group-submit").click();
  await a.getByTestId("conversation-subtitle").filter({ hasText: "3 members" }).waitFor();
  await send(a, "Welcome Carol");
  await c.getByTestId("tab-chats").click();
  await conversation(c, "Weekend plans").click();
  await seesMessage(c, "Welcome Carol");
  await send(c, "Thanks!");
  await seesMessage(a, "Thanks!");
  await seesMessage(b, "Thanks!");

  await snap(a, "alice-group");
  log("the page's generated gRPC-web client calls a unary RPC and a server stream (Subscribe)");
  const probe = await a.evaluate(() => window.__daehwa.probe());
  assert(probe.unary === ALICE.username, `GetMe over gRPC-web returned ${JSON.stringify(probe)}`);
  assert(probe.stream === "ready", `Subscribe over gRPC-web began with ${JSON.stringify(probe.stream)}`);
  const recorded = await a.evaluate(() => window.__daehwa.calls);
  assert(recorded.some((r) => r.kind === "unary" && r.ok), "a unary call succeeded");
  assert(recorded.some((r) => r.method === "chat.v1.ChatService/Subscribe" && r.kind === "server_streaming" && r.ok), "Subscribe streamed");
  assert(
    alice.grpcWeb.some((r) => r.type.startsWith("application/grpc-web+proto") && r.url.endsWith("/chat.v1.ChatService/Subscribe")),
    "Subscribe went over the network as binary gRPC-web",
  );
  assert(
    alice.grpcWeb.some((r) => r.url.endsWith("/chat.v1.ChatService/ListConversations") && r.status === 200),
    "ListConversations went over the network as gRPC-web",
  );

  log("alice closes her page; bob sees her go offline with a last-seen time");
  await b.getByTestId("tab-friends").click();
  await friend(b, ALICE).locator('[data-testid="presence-dot"][data-status="online"]').waitFor();
  await alice.context.close();
  await friend(b, ALICE).locator('[data-testid="presence-dot"][data-status="offline"]').waitFor({ timeout: 30_000 });
  await friend(b, ALICE).getByTestId("last-seen").filter({ hasText: "Last seen" }).waitFor();

  await snap(b, "bob-friends");
  // The server runs with 12 s access tokens: the page must have refreshed by now.
  const refreshed = await b.evaluate(() => window.__daehwa.calls.filter((c) => c.method === "chat.v1.AuthService/Refresh" && c.ok).length);
  assert(refreshed >= 1, `bob's page refreshed its access token (saw ${refreshed} refreshes)`);
  log("bob reloads and scrolls back through the full 1:1 history");
  await b.reload();
  await online(b);
  await b.getByTestId("tab-chats").click();
  await conversation(b, ALICE.display).click();
  await seesMessage(b, "Sent while you were away");
  for (let round = 0; ; round++) {
    const done = await b.evaluate(() => document.getElementById("history-status").dataset.reachedStart === "true");
    if (done) break;
    assert(round < 20, "history ends within 20 pages");
    const before = await b.locator('[data-testid="message"]').count();
    await b.getByTestId("message-scroller").evaluate((el) => {
      el.scrollTop = 0;
      el.dispatchEvent(new Event("scroll"));
    });
    await b.waitForFunction(
      (n) =>
        document.querySelectorAll('[data-testid="message"]').length > n ||
        document.getElementById("history-status").dataset.reachedStart === "true",
      before,
      { timeout: WAIT },
    );
  }
  const history = await b.locator('[data-testid="message"]').evaluateAll((els) =>
    els.map((el) => ({ seq: Number(el.dataset.seq), text: el.querySelector('[data-testid="message-text"]').textContent })),
  );
  const expected = ["Hello Bob!", "Are you there?", "Yes, here!"];
  for (let i = 1; i <= EXTRA; i++) expected.push(`Message ${i}`);
  expected.push("Sent while you were away");
  assert(
    JSON.stringify(history.map((m) => m.text)) === JSON.stringify(expected),
    `full history after reload: got ${JSON.stringify(history.map((m) => m.text))}`,
  );
  assert(history.every((m, i) => m.seq === i + 1), "seq runs 1..N without gaps");
  await b.getByTestId("history-status").filter({ hasText: "beginning of the conversation" }).waitFor();

  await snap(b, "bob-history");
  log("passed");
} catch (e) {
  failed = true;
  console.error(`FAILED at step "${step}": ${e?.stack ?? e}`);
  if (pageLogs.length) console.error(`page logs:\n${pageLogs.join("\n")}`);
} finally {
  await browser.close().catch(() => {});
}
process.exit(failed ? 1 : 0);
