//! Several `chatd` processes as one system, on real engines: etcd (registry, leased worker
//! ids), Redis (presence, routes, the bus), PostgreSQL (directory and message store). Every
//! engine is a private process started by the test on free ports; every server is the real
//! binary. One `api,presence` server answers Auth/User/Group/Discovery/Presence; two `chat`
//! servers hold the streams.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{
    LiveStream, TestUser, WAIT, befriend,
    cluster::{Cluster, assert_complete, discover, on_server, sync_all},
    eventually, text_of,
};
use daehwa::v1::{self, GetPresenceRequest, PresenceStatus, client_event, server_event::Event};
use daehwa_server::backend::redis::test_server::RedisServer;
use tonic::Code;

/// Users on different chat servers chat 1:1 and in a group and see each other's presence;
/// then one chat server is killed with SIGKILL: its user asks Discovery again, lands on the
/// live server, syncs, and has every acknowledged message exactly once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_servers_chat_and_survive_a_chat_server_kill() {
    let mut cluster = Cluster::start(&[("chat-a", 0), ("chat-b", 0)]).await;
    let alice = cluster.user_on("alice", "chat-a").await;
    let bob = cluster.user_on("bob", "chat-b").await;
    let carol = cluster.user_on("carol", "chat-b").await;
    let alice_api = cluster.at_api(&alice).await;
    befriend(&alice_api, &cluster.at_api(&bob).await).await;
    befriend(&alice_api, &cluster.at_api(&carol).await).await;

    // Presence crosses servers: Bob (on b) hears Alice (on a) come online.
    let mut bob_stream = bob.connect().await;
    let mut carol_stream = carol.connect().await;
    let mut alice_stream = alice.connect().await;
    bob_stream
        .next_matching(|e| match e {
            Event::Presence(p)
                if p.user_id == alice.user_id && p.status == PresenceStatus::Online as i32 =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    let bob_api = cluster.at_api(&bob).await;
    let seen = eventually("Alice online in GetPresence at the api server", || {
        let bob = bob_api.clone();
        let alice_id = alice.user_id;
        async move {
            let p = bob
                .presence()
                .get_presence(GetPresenceRequest {
                    user_ids: vec![alice_id],
                })
                .await
                .ok()?
                .into_inner();
            (p.presences[0].status == PresenceStatus::Online as i32).then_some(p)
        }
    })
    .await;
    assert!(seen.presences[0].last_active_at.is_some());

    // Alice hides her presence at the api server (her stream is on chat-a): Bob, on chat-b,
    // sees her go offline with no last-active time; showing it again brings her back.
    for visible in [false, true] {
        alice_api
            .users()
            .update_settings(v1::UpdateSettingsRequest {
                settings: Some(v1::Settings {
                    notifications_enabled: true,
                    presence_visible: visible,
                }),
            })
            .await
            .expect("UpdateSettings");
        let want = if visible {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        } as i32;
        let event = bob_stream
            .next_matching(|e| match e {
                Event::Presence(p) if p.user_id == alice.user_id && p.status == want => Some(p),
                _ => None,
            })
            .await;
        assert_eq!(event.last_active_at.is_some(), visible, "{event:?}");
    }

    // 1:1 across servers, both ways, on the streams.
    let dm = alice.dm_with(&bob);
    let sent = alice.send_text(&dm, "hello from a").await;
    let got = bob_stream.next_message().await;
    assert_eq!(
        (got.message_id, text_of(&got)),
        (sent.message_id, "hello from a")
    );
    bob_stream
        .send(client_event::Event::Send(v1::SendMessageRequest {
            client_msg_id: "bob-reply-1".into(),
            conversation_id: dm.clone(),
            content: Some(common::text_content("hi from b")),
        }))
        .await;
    let reply = alice_stream.next_message().await;
    assert_eq!(text_of(&reply), "hi from b");
    assert_eq!(reply.seq, 2);

    // A group spanning both servers.
    let group = alice_api
        .groups()
        .create_group(v1::CreateGroupRequest {
            name: "across".into(),
            member_ids: vec![bob.user_id, carol.user_id],
        })
        .await
        .expect("create group")
        .into_inner()
        .group
        .expect("group");
    let group_conv = group.conversation_id.clone();
    let sent = alice.send_text(&group_conv, "to everyone").await;
    for stream in [&mut bob_stream, &mut carol_stream] {
        let got = stream.next_message().await;
        assert_eq!(got.message_id, sent.message_id);
    }

    // Alice keeps sending to Bob while Bob's server dies.
    let mut acked: HashSet<u64> = [sent.message_id].into_iter().collect();
    let mut dm_acked: HashSet<u64> = HashSet::new();
    for i in 0..20 {
        dm_acked.insert(
            alice
                .send_text(&dm, &format!("before kill {i}"))
                .await
                .message_id,
        );
    }
    let mut live_seen = Vec::new();
    while live_seen.len() < 20 {
        let m = bob_stream.next_message().await;
        if m.conversation_id == dm {
            live_seen.push(m);
        }
    }
    let bob_cursor = live_seen.last().expect("some").seq;
    cluster.chat.remove("chat-b").expect("chat-b").kill9().await;
    let sender = {
        let alice = alice.clone();
        let dm = dm.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                ids.push(
                    alice
                        .send_text(&dm, &format!("after kill {i}"))
                        .await
                        .message_id,
                );
            }
            ids
        })
    };
    // Bob's stream breaks with its server.
    loop {
        match bob_stream.next().await {
            Ok(_) => continue, // events already in flight
            Err(status) => {
                assert_ne!(status.code(), Code::Ok);
                break;
            }
        }
    }

    // Bob asks Discovery again until it sends him to the live server.
    let answer = eventually("Discovery moves Bob to chat-a", || {
        let bob = bob_api.clone();
        async move {
            let answer = discover(&bob).await;
            (answer.server_id == "chat-a").then_some(answer)
        }
    })
    .await;
    let bob = on_server(&bob, &answer.grpc_endpoint).await;
    let mut bob_stream = bob.connect().await;
    dm_acked.extend(sender.await.expect("sender task"));

    // Sync from Bob's cursor: everything acknowledged, in seq order, once.
    let before = sync_all(&bob, &dm, 0).await;
    let after_cursor = sync_all(&bob, &dm, bob_cursor).await;
    assert_eq!(
        before.len(),
        bob_cursor as usize + after_cursor.len(),
        "sync from the cursor joins the earlier history exactly"
    );
    assert_complete(&before, &dm_acked);
    acked.extend(dm_acked);
    // Live delivery works again on the new server.
    let last = alice.send_text(&dm, "welcome back").await;
    let got = bob_stream
        .next_matching(|e| match e {
            Event::Message(m) if m.message_id == last.message_id => Some(m),
            _ => None,
        })
        .await;
    assert_eq!(text_of(&got), "welcome back");
    // Carol stayed away: a dead server cannot say its users left, so a live one reaps it
    // from Redis when its registry lease ends, and Alice (on chat-a) hears Carol go offline.
    let gone = alice_stream
        .next_matching(|e| match e {
            Event::Presence(p)
                if p.user_id == carol.user_id && p.status == PresenceStatus::Offline as i32 =>
            {
                Some(p)
            }
            _ => None,
        })
        .await;
    assert!(gone.last_active_at.is_some());
    assert_complete(
        &sync_all(&bob, &group_conv, 0).await,
        &[sent.message_id].into(),
    );
}

/// Redis is killed and restarted while messages flow between servers: sends keep being
/// acknowledged (the store is PostgreSQL), the recipient's stream is told to resync, and
/// after reconnecting and syncing it has every acknowledged message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_while_messages_flow_loses_nothing_acknowledged() {
    let cluster = Cluster::start(&[("chat-a", 0), ("chat-b", 0)]).await;
    let alice = cluster.user_on("alice", "chat-a").await;
    let bob = cluster.user_on("bob", "chat-b").await;
    let bob_api = cluster.at_api(&bob).await;
    befriend(&cluster.at_api(&alice).await, &bob_api).await;
    let dm = alice.dm_with(&bob);
    let mut bob_stream = bob.connect().await;
    let warm_up = alice.send_text(&dm, "warm-up").await;
    let mut received = vec![bob_stream.next_message().await];

    let sender = {
        let alice = alice.clone();
        let dm = dm.clone();
        tokio::spawn(async move {
            let mut acked = HashSet::new();
            for i in 0..200 {
                let message = alice.send_text(&dm, &format!("m{i}")).await;
                acked.insert(message.message_id);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        })
    };
    // Let some messages flow, then kill Redis and bring it back.
    while received.len() < 20 {
        received.push(bob_stream.next_message().await);
    }
    cluster.redis.stop();
    // With Redis down, what needs it answers UNAVAILABLE (retryable) and says why.
    let status = bob_api
        .presence()
        .get_presence(GetPresenceRequest {
            user_ids: vec![alice.user_id],
        })
        .await
        .expect_err("GetPresence without Redis");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("Redis"), "{status:?}");
    cluster.redis.restart();
    let mut acked = sender.await.expect("sender: every send acknowledged");
    acked.insert(warm_up.message_id);

    // Bob's server lost its bus subscription with Redis: it ends his stream UNAVAILABLE
    // ("reconnect and sync") once it re-subscribes, since envelopes may have been lost.
    let status = loop {
        match tokio::time::timeout(WAIT, bob_stream.rx.message()).await {
            Ok(Ok(Some(v1::ServerEvent {
                event: Some(Event::Message(m)),
            }))) => received.push(m),
            Ok(Ok(Some(_))) => {}
            Ok(Err(status)) => break status,
            Ok(Ok(None)) => panic!("Bob's stream ended without a status"),
            Err(_) => panic!("Bob's stream was not told to resync within {WAIT:?}"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("sync"), "{status:?}");
    let cursor = received.iter().map(|m| m.seq).max().unwrap_or(0);
    let mut bob_stream = LiveStream::open(&bob)
        .await
        .expect("reconnect after the resync");
    received.extend(sync_all(&bob, &dm, cursor).await);
    received.sort_by_key(|m| m.seq);
    received.dedup_by_key(|m| m.seq);
    assert_complete(&received, &acked);
    // Live delivery across servers works again (the reconnect re-registered Bob's route).
    let deadline = tokio::time::Instant::now() + WAIT;
    'live: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live delivery across servers after the Redis restart"
        );
        let probe = alice.send_text(&dm, "after the restart").await;
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(Some(event))) =
            tokio::time::timeout_at(until, bob_stream.rx.message()).await
        {
            if let Some(Event::Message(m)) = event.event
                && m.message_id == probe.message_id
            {
                break 'live;
            }
        }
    }
}

/// Two chat servers whose id clocks disagree by 8 seconds both write into one group: the
/// seq is gapless, and a member syncing from 0 gets every acknowledged message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_still_give_a_gapless_seq() {
    let cluster = Cluster::start(&[("chat-a", 4_000), ("chat-b", -4_000)]).await;
    let alice = cluster.user_on("alice", "chat-a").await;
    let bob = cluster.user_on("bob", "chat-b").await;
    let carol = TestUser::sign_up(&cluster.api.url(), &common::unique_name("carol")).await;
    let alice_api = cluster.at_api(&alice).await;
    befriend(&alice_api, &cluster.at_api(&bob).await).await;
    befriend(&alice_api, &carol).await;
    let group = alice_api
        .groups()
        .create_group(v1::CreateGroupRequest {
            name: "skew".into(),
            member_ids: vec![bob.user_id, carol.user_id],
        })
        .await
        .expect("create group")
        .into_inner()
        .group
        .expect("group");
    let conv = group.conversation_id;
    let senders: Vec<_> = [alice.clone(), bob.clone()]
        .into_iter()
        .map(|user| {
            let conv = conv.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..60 {
                    ids.push(
                        user.send_text(&conv, &format!("{} {i}", user.username))
                            .await,
                    );
                }
                ids
            })
        })
        .collect();
    let mut acked = HashSet::new();
    let mut by_server = [0u64; 2];
    for (i, sender) in senders.into_iter().enumerate() {
        for message in sender.await.expect("sender") {
            acked.insert(message.message_id);
            by_server[i] += 1;
        }
    }
    let carol_on = on_server(&carol, &discover(&carol).await.grpc_endpoint).await;
    assert_eq!(by_server, [60, 60]);
    let all = sync_all(&carol_on, &conv, 0).await;
    assert_eq!(all.len(), 120);
    assert_complete(&all, &acked);
    // The skew is real: ids from the server 4 s ahead carry later timestamps than the seq
    // order would suggest, yet seq order is what clients follow.
    let ids_in_seq_order_sorted = all.windows(2).all(|w| w[0].message_id < w[1].message_id);
    assert!(
        !ids_in_seq_order_sorted,
        "with clocks 8 s apart, message ids cannot follow seq order"
    );
}

/// Presence writes to Redis only on state changes and a refresh every third of the TTL,
/// never per heartbeat: 40 users beating 4 times a second cost a bounded number of Redis
/// commands, reported per online user per minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_touches_redis_per_refresh_not_per_heartbeat() {
    let cluster = Cluster::start(&[("chat-a", 0)]).await;
    // Signing up (argon2) is the slow part: all users exist before the first stream opens.
    let mut users = Vec::new();
    for i in 0..40 {
        users.push(cluster.user_on(&format!("beat{i}"), "chat-a").await);
    }
    // Each stream beats from its own task from the moment it opens, 4 times a second, so no
    // user is ever silent for --offline-after (3 s) and goes offline and back while the
    // window runs (two state changes, two Redis writes, that would not be heartbeat cost).
    let mut beating = Vec::new();
    let heartbeats = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for user in &users {
        let stream = user.connect().await;
        let (tx, heartbeats) = (stream.tx.clone(), heartbeats.clone());
        beating.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let beat = v1::ClientEvent {
                    event: Some(client_event::Event::Heartbeat(v1::HeartbeatEvent {})),
                };
                if tx.send(beat).await.is_err() {
                    return;
                }
                heartbeats.fetch_add(1, Ordering::Relaxed);
            }
        }));
        streams.push(stream);
    }
    // Every connect's state change has reached Redis before the steady state is measured.
    let live_keys = "EVAL \"local n = 0 for _, k in ipairs(redis.call('KEYS', 'daehwa:presence:*')) do \
        for _, f in ipairs(redis.call('HKEYS', k)) do if string.sub(f, 1, 5) == 'live:' then n = n + 1 end end \
        end return n\" 0";
    eventually("40 users live in Redis", || async {
        let reply = cluster.redis.command(live_keys);
        let n: u64 = reply.trim().trim_start_matches(':').parse().ok()?;
        (n >= 40).then_some(())
    })
    .await;
    let before = redis_calls(&cluster.redis);
    let beats_before = heartbeats.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let elapsed = started.elapsed();
    let after = redis_calls(&cluster.redis);
    let beats = heartbeats.load(Ordering::Relaxed) - beats_before;
    beating.iter().for_each(|task| task.abort());
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    // What the servers sent (one round trip each) and what Redis did for them inside scripts.
    let sent_names = ["evalsha", "eval", "publish", "hdel", "subscribe", "ping"];
    let sent: u64 = sent_names.iter().map(|c| delta(c)).sum();
    let key_writes: u64 = ["hset", "hdel", "pexpire", "sadd", "srem", "set"]
        .iter()
        .map(|c| delta(c))
        .sum();
    let by_command: Vec<String> = after
        .keys()
        .filter(|name| delta(name) > 0)
        .map(|name| format!("{name}={}", delta(name)))
        .collect();
    let minutes = elapsed.as_secs_f64() / 60.0;
    eprintln!(
        "presence Redis load over {elapsed:?}, 40 online users sending {beats} heartbeats, \
         --offline-after 3s (refresh every 1 s): {sent} commands sent ({:.3} per user per minute), \
         {key_writes} key writes inside scripts ({:.1} per user per minute); \
         with the default --offline-after 30s both scale by 1/10; by command: {}",
        sent as f64 / 40.0 / minutes,
        key_writes as f64 / 40.0 / minutes,
        by_command.join(" "),
    );
    assert!(
        beats >= 40 * 12,
        "only {beats} heartbeats went out in {elapsed:?}: the window measured too little"
    );
    // Nothing per heartbeat: one refresh script per second for all 40 users, on each of the
    // two servers (the api server marks itself alive too), plus a little room for the tail of
    // the connects' own work (a state change's publish) landing inside the window. Writing
    // per heartbeat would be ~960.
    assert!(
        sent <= 2 * (elapsed.as_secs() + 1) + 4,
        "{sent} Redis commands for {beats} heartbeats in {elapsed:?}: presence writes per \
         heartbeat (by command: {})",
        by_command.join(" ")
    );
    // Each refresh writes each user's fields in one HSET and renews the key (2 writes per
    // user), plus the server's member set and alive mark (the api server's mark too).
    let refreshes = elapsed.as_secs() + 1;
    assert!(
        key_writes <= (2 * 40 + 4) * refreshes,
        "{key_writes} key writes in {refreshes} refreshes of 40 users"
    );
    drop(streams);
}

/// Commands Redis has executed by name, from INFO commandstats; commands run by scripts
/// count under their own names.
fn redis_calls(redis: &RedisServer) -> BTreeMap<String, u64> {
    redis
        .command("INFO commandstats")
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split("calls=").nth(1)?.split(',').next()?;
            Some((name.to_owned(), calls.parse::<u64>().ok()?))
        })
        .collect()
}
