#!/usr/bin/env python3
"""A chat scenario driven by a Python client generated from proto/chat/v1 with grpc_tools.

Usage: PYTHONPATH=<generated stubs> scenario.py HOST:PORT

Run by tests/external_clients.rs, which generates the stubs. Exits 0 when every step matched,
non-zero with a message naming the first mismatch otherwise. Every call carries a timeout;
waits for stream events poll a queue with a deadline.
"""

import queue
import secrets
import sys
import threading
import time

import grpc

from chat.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    chat_pb2,
    chat_pb2_grpc,
    common_pb2,
    presence_pb2,
    presence_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

# Per-call deadline (seconds) and the longest wait for a stream event or a polled condition.
CALL_TIMEOUT = 10
WAIT = 10
PASSWORD = "correct horse battery"


class Mismatch(Exception):
    """A step did not give what the scenario expects."""


def check(condition, what):
    if not condition:
        raise Mismatch(what)


def step(text):
    print(f"- {text}", flush=True)


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def dm_id(a, b):
    lo, hi = sorted((a, b))
    return f"dm:{lo}:{hi}"


class Person:
    """A signed-up, logged-in user with stubs and call metadata."""

    def __init__(self, channel, prefix, suffix):
        self.username = f"{prefix}_{suffix}"
        self.auth = auth_pb2_grpc.AuthServiceStub(channel)
        self.users = user_pb2_grpc.UserServiceStub(channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(channel)
        self.presence = presence_pb2_grpc.PresenceServiceStub(channel)
        signed = self.auth.SignUp(
            auth_pb2.SignUpRequest(
                username=self.username, password=PASSWORD, display_name=prefix.title()
            ),
            timeout=CALL_TIMEOUT,
        )
        check(
            signed.user.username == self.username,
            f"SignUp returned username {signed.user.username!r}, expected {self.username!r}",
        )
        login = self.auth.Login(
            auth_pb2.LoginRequest(
                username=self.username, password=PASSWORD, device_name="python"
            ),
            timeout=CALL_TIMEOUT,
        )
        check(login.access_token != "", "Login returned no access token")
        check(
            login.user_id == signed.user.user_id,
            f"Login user_id {login.user_id} != SignUp user_id {signed.user.user_id}",
        )
        self.user_id = login.user_id
        self.device_id = login.device_id
        self.md = bearer(login.access_token)

    def send(self, conversation, client_msg_id, text):
        return self.chat.SendMessage(
            chat_pb2.SendMessageRequest(
                client_msg_id=client_msg_id,
                conversation_id=conversation,
                content=common_pb2.Content(text=text),
            ),
            metadata=self.md,
            timeout=CALL_TIMEOUT,
        ).message

    def conversation(self, conversation):
        listed = self.chat.ListConversations(
            chat_pb2.ListConversationsRequest(), metadata=self.md, timeout=CALL_TIMEOUT
        )
        found = [c for c in listed.conversations if c.conversation_id == conversation]
        check(
            len(found) == 1,
            f"ListConversations of {self.username} has {len(found)} entries for {conversation}: "
            f"{[c.conversation_id for c in listed.conversations]}",
        )
        return found[0]


class LiveSession:
    """A Connect stream fed by a generator over a queue; a thread reads the server events."""

    _CLOSE = object()

    def __init__(self, person):
        self._outgoing = queue.Queue()
        self.events = queue.Queue()
        self.call = person.chat.Connect(
            self._requests(), metadata=person.md, timeout=120
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        while True:
            item = self._outgoing.get()
            if item is self._CLOSE:
                return
            yield item

    def _read(self):
        try:
            for event in self.call:
                self.events.put(("event", event))
            self.events.put(("end", None))
        except grpc.RpcError as error:  # includes our own cancel at close
            self.events.put(("error", error))

    def next_event(self, what):
        """The next server event, or a Mismatch after WAIT seconds."""
        try:
            kind, value = self.events.get(timeout=WAIT)
        except queue.Empty:
            raise Mismatch(f"no server event within {WAIT}s while waiting for {what}")
        if kind == "end":
            raise Mismatch(f"the Connect stream ended while waiting for {what}")
        if kind == "error":
            raise Mismatch(
                f"the Connect stream failed while waiting for {what}: "
                f"{value.code()} {value.details()}"
            )
        return value

    def next_matching(self, what, pick):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = pick(self.next_event(what))
            if found is not None:
                return found
        raise Mismatch(f"{what} did not arrive within {WAIT}s")

    def close(self):
        self._outgoing.put(self._CLOSE)
        self.call.cancel()
        self._reader.join(timeout=WAIT)


def expect_error(code, what, call):
    try:
        call()
    except grpc.RpcError as error:
        check(
            error.code() == code,
            f"{what}: expected {code.name}, got {error.code().name} ({error.details()})",
        )
        return error
    raise Mismatch(f"{what}: expected {code.name}, but the call succeeded")


def scenario(addr):
    channel = grpc.insecure_channel(addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
    except grpc.FutureTimeoutError:
        raise Mismatch(f"cannot connect to {addr} within {CALL_TIMEOUT}s")
    suffix = secrets.token_hex(4)

    step("sign up and log in alice, bob and carol")
    alice = Person(channel, "alice", suffix)
    bob = Person(channel, "bob", suffix)
    carol = Person(channel, "carol", suffix)

    step("alice and bob become friends")
    asked = alice.users.AddFriend(
        user_pb2.AddFriendRequest(user_id=bob.user_id), metadata=alice.md, timeout=CALL_TIMEOUT
    )
    check(
        asked.friendship.state == user_pb2.FRIENDSHIP_STATE_OUTGOING,
        f"alice's request: state {asked.friendship.state}, expected OUTGOING",
    )
    accepted = bob.users.AddFriend(
        user_pb2.AddFriendRequest(user_id=alice.user_id), metadata=bob.md, timeout=CALL_TIMEOUT
    )
    check(
        accepted.friendship.state == user_pb2.FRIENDSHIP_STATE_FRIENDS,
        f"bob's accept: state {accepted.friendship.state}, expected FRIENDS",
    )
    conv = dm_id(alice.user_id, bob.user_id)

    step(f"alice sends 3 messages to {conv}")
    sent = []
    for i in range(1, 4):
        message = alice.send(conv, f"py-{suffix}-{i}", f"hello {i}")
        check(message.seq == i, f"message {i} got seq {message.seq}")
        check(message.conversation_id == conv, f"message {i} in {message.conversation_id}")
        check(message.sender_id == alice.user_id, f"message {i} sender {message.sender_id}")
        check(message.message_id != 0, f"message {i} has no message_id")
        sent.append(message)

    step("a retry with the same client_msg_id returns the first message")
    retried = alice.send(conv, f"py-{suffix}-2", "hello 2")
    check(
        retried.message_id == sent[1].message_id and retried.seq == 2,
        f"retry gave message_id {retried.message_id} seq {retried.seq}, "
        f"expected {sent[1].message_id} seq 2",
    )

    step("bob opens Connect; the first event is ready")
    live = LiveSession(bob)
    try:
        first = live.next_event("ready")
        check(
            first.WhichOneof("event") == "ready",
            f"first Connect event is {first.WhichOneof('event')!r}, expected 'ready'",
        )
        check(
            first.ready.user_id == bob.user_id and first.ready.device_id == bob.device_id,
            f"ready names user {first.ready.user_id} device {first.ready.device_id}, "
            f"expected {bob.user_id} {bob.device_id}",
        )

        step("alice sends a 4th message; bob receives it live")
        fourth = alice.send(conv, f"py-{suffix}-4", "hello 4")
        check(fourth.seq == 4, f"4th message got seq {fourth.seq}")
        live_message = live.next_matching(
            "the 4th message on bob's stream",
            lambda e: e.message if e.WhichOneof("event") == "message" else None,
        )
        check(
            live_message.message_id == fourth.message_id and live_message.seq == 4,
            f"bob received message_id {live_message.message_id} seq {live_message.seq}, "
            f"expected {fourth.message_id} seq 4",
        )
        check(
            live_message.content.text == "hello 4",
            f"bob received text {live_message.content.text!r}",
        )
    finally:
        live.close()

    step("bob syncs from seq 0 and sees 1..4 in order")
    synced = bob.chat.SyncMessages(
        chat_pb2.SyncMessagesRequest(cursors=[chat_pb2.Cursor(conversation_id=conv, after_seq=0)]),
        metadata=bob.md,
        timeout=CALL_TIMEOUT,
    )
    seqs = [m.seq for m in synced.messages]
    check(seqs == [1, 2, 3, 4], f"SyncMessages seqs {seqs}, expected [1, 2, 3, 4]")
    texts = [m.content.text for m in synced.messages]
    check(
        texts == [f"hello {i}" for i in range(1, 5)],
        f"SyncMessages texts {texts}",
    )
    check(not synced.has_more, "SyncMessages says has_more after all 4 messages")

    step("bob's conversation shows 4 unread; MarkRead 4 clears it")
    before = bob.conversation(conv)
    check(before.last_seq == 4, f"last_seq {before.last_seq}, expected 4")
    check(before.unread_count == 4, f"unread_count {before.unread_count}, expected 4")
    bob.chat.MarkRead(
        chat_pb2.MarkReadRequest(conversation_id=conv, seq=4), metadata=bob.md, timeout=CALL_TIMEOUT
    )
    after = bob.conversation(conv)
    check(after.unread_count == 0, f"unread_count after MarkRead {after.unread_count}, expected 0")
    check(after.read_seq == 4, f"read_seq after MarkRead {after.read_seq}, expected 4")

    step("alice heartbeats; bob sees her ONLINE")
    alice.presence.Heartbeat(
        presence_pb2.HeartbeatRequest(), metadata=alice.md, timeout=CALL_TIMEOUT
    )
    got = bob.presence.GetPresence(
        presence_pb2.GetPresenceRequest(user_ids=[alice.user_id]),
        metadata=bob.md,
        timeout=CALL_TIMEOUT,
    )
    statuses = {p.user_id: p.status for p in got.presences}
    check(
        statuses.get(alice.user_id) == common_pb2.PRESENCE_STATUS_ONLINE,
        f"alice's presence {statuses.get(alice.user_id)}, expected ONLINE "
        f"({common_pb2.PRESENCE_STATUS_ONLINE})",
    )

    step("errors: a conversation bob is not in, and a malformed conversation id")
    other = dm_id(alice.user_id, carol.user_id)
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        f"bob sends to {other}",
        lambda: bob.send(other, f"py-{suffix}-x", "not mine"),
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "bob sends to 'not-a-conversation'",
        lambda: bob.send("not-a-conversation", f"py-{suffix}-y", "nowhere"),
    )
    channel.close()


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} HOST:PORT", file=sys.stderr)
        return 2
    try:
        scenario(sys.argv[1])
    except Mismatch as mismatch:
        print(f"SCENARIO FAILED: {mismatch}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(
            f"SCENARIO FAILED: unexpected RPC error {error.code().name}: {error.details()}",
            file=sys.stderr,
        )
        return 1
    print("scenario passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
