//! CI smoke run of `chat-bench`: every scenario at a tiny size against the debug `chatd`
//! (and the bare relay), through the real binary, over gRPC and (for the session
//! scenarios) over WebSocket. Asserts only that it works: exit status 0, and no message
//! lost, duplicated or refused; never any timing.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use serde_json::Value;

/// One scenario at a time: each starts its own chatd and relay on a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `target/<profile>/chatd`, built by `cargo build --workspace --bins` (scripts/test.sh).
fn chatd() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> dir");
    let path = dir.join("chatd");
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs `chat-bench ARGS --chatd <debug chatd> --json` and returns its JSON summary.
fn bench(args: &[&str]) -> Value {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(args)
        .arg("--chatd")
        .arg(chatd())
        .arg("--json")
        .output()
        .expect("run chat-bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "chat-bench {args:?} failed with {}:\n{stderr}",
        output.status
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "chat-bench {args:?} printed no JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    for key in ["lost", "duplicated", "errors"] {
        assert_eq!(
            summary[key], 0,
            "chat-bench {args:?}: {key} is not 0:\n{summary:#}"
        );
    }
    summary
}

#[test]
fn pairs() {
    // Random client ids here; every other run sends the default time-ordered ones.
    let s = bench(&[
        "pairs",
        "--pairs",
        "2",
        "--seconds",
        "1",
        "--client-ids",
        "random",
    ]);
    assert_eq!(s["transport"], "grpc", "{s:#}");
    assert_eq!(s["params"]["client_ids"], "random", "{s:#}");
    assert!(s["daehwa"]["check"]["acked"].as_u64().unwrap() > 0, "{s:#}");
    assert!(
        s["ceiling"]["check"]["acked"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    assert!(s["ratios"]["delivered_per_s"].is_number(), "{s:#}");
}

#[test]
fn latency_in_rounds() {
    let s = bench(&[
        "latency",
        "--rate",
        "100",
        "--pairs",
        "2",
        "--seconds",
        "1",
        "--rounds",
        "3",
    ]);
    let rounds = s["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 3, "{s:#}");
    assert_eq!(
        rounds.iter().filter(|r| r["reported"] == true).count(),
        1,
        "{s:#}"
    );
    assert!(rounds.iter().all(|r| r["ratio"].is_number()), "{s:#}");
    assert_eq!(s["daehwa"]["check"]["acked"], 100, "{s:#}");
}

#[test]
fn latency() {
    let s = bench(&["latency", "--rate", "100", "--pairs", "2", "--seconds", "1"]);
    assert_eq!(s["daehwa"]["check"]["acked"], 100, "{s:#}");
    assert_eq!(s["ceiling"]["check"]["acked"], 100, "{s:#}");
    // chatd's own view of the window, scraped from its metrics endpoint; the relay has none.
    let store_mean = s["daehwa"]["figures"]["chatd_store_wait_mean_ms"].as_f64();
    assert!(store_mean.is_some_and(|ms| ms > 0.0), "{s:#}");
    let sync_mean = s["daehwa"]["figures"]["chatd_log_sync_mean_ms"].as_f64();
    assert!(sync_mean.is_some_and(|ms| ms > 0.0), "{s:#}");
    assert!(
        s["daehwa"]["figures"]["chatd_log_syncs_over_100ms"].is_number(),
        "{s:#}"
    );
    assert!(
        s["daehwa"]["figures"]["chatd_to_recipient_mean_ms"].is_number(),
        "{s:#}"
    );
    assert!(
        s["ceiling"]["figures"]["chatd_store_wait_mean_ms"].is_null(),
        "{s:#}"
    );
}

#[test]
fn catchup() {
    let s = bench(&["catchup", "--behind", "50", "--page", "20"]);
    assert_eq!(s["daehwa"]["check"]["acked"], 50, "{s:#}");
    assert_eq!(s["daehwa"]["figures"]["pages"], 3.0, "{s:#}");
    assert!(s["ceiling"].is_null(), "{s:#}");
}

#[test]
fn fanout() {
    let s = bench(&["fanout", "--members", "5", "--messages", "2"]);
    assert_eq!(s["daehwa"]["check"]["delivered"], 10, "{s:#}");
    assert_eq!(s["ceiling"]["check"]["delivered"], 10, "{s:#}");
    // CPU per delivery of both processes, over the messages only.
    for who in ["daehwa", "ceiling"] {
        for figure in ["server_cpu_us_per_msg", "bench_cpu_us_per_msg"] {
            assert!(
                s[who]["figures"][figure].is_number(),
                "{who} {figure}: {s:#}"
            );
        }
    }
}

#[test]
fn storm() {
    let s = bench(&["storm", "--sessions", "20"]);
    assert_eq!(s["daehwa"]["figures"]["ready"], 20.0, "{s:#}");
    assert_eq!(s["ceiling"]["figures"]["ready"], 20.0, "{s:#}");
}

#[test]
fn idle() {
    let s = bench(&["idle", "--sessions", "20", "--settle", "0.2"]);
    assert_eq!(s["daehwa"]["figures"]["ready"], 20.0, "{s:#}");
    assert!(
        s["daehwa"]["figures"]["kib_per_session"].is_number(),
        "{s:#}"
    );
}

#[test]
fn idle_over_two_worker_processes() {
    let s = bench(&[
        "idle",
        "--sessions",
        "20",
        "--processes",
        "2",
        "--settle",
        "0.2",
    ]);
    assert_eq!(s["daehwa"]["figures"]["ready"], 20.0, "{s:#}");
    assert_eq!(s["ceiling"]["figures"]["ready"], 20.0, "{s:#}");
}

#[test]
fn pairs_over_websocket() {
    let s = bench(&[
        "pairs",
        "--transport",
        "ws",
        "--pairs",
        "2",
        "--seconds",
        "1",
    ]);
    assert_eq!(s["transport"], "ws", "{s:#}");
    assert!(s["daehwa"]["check"]["acked"].as_u64().unwrap() > 0, "{s:#}");
    assert!(
        s["ceiling"]["check"]["acked"].as_u64().unwrap() > 0,
        "{s:#}"
    );
    assert!(s["ratios"]["delivered_per_s"].is_number(), "{s:#}");
}

#[test]
fn latency_over_websocket() {
    let s = bench(&[
        "latency",
        "--transport",
        "ws",
        "--rate",
        "100",
        "--pairs",
        "2",
        "--seconds",
        "1",
    ]);
    assert_eq!(s["transport"], "ws", "{s:#}");
    assert_eq!(s["daehwa"]["check"]["acked"], 100, "{s:#}");
    assert_eq!(s["ceiling"]["check"]["acked"], 100, "{s:#}");
}

#[test]
fn idle_over_websocket() {
    let s = bench(&[
        "idle",
        "--transport",
        "ws",
        "--sessions",
        "20",
        "--settle",
        "0.2",
    ]);
    assert_eq!(s["transport"], "ws", "{s:#}");
    assert_eq!(s["daehwa"]["figures"]["ready"], 20.0, "{s:#}");
    assert_eq!(s["ceiling"]["figures"]["ready"], 20.0, "{s:#}");
    assert!(
        s["daehwa"]["figures"]["kib_per_session"].is_number(),
        "{s:#}"
    );
}

#[test]
fn fanout_over_websocket() {
    let s = bench(&[
        "fanout",
        "--transport",
        "ws",
        "--members",
        "5",
        "--messages",
        "2",
    ]);
    assert_eq!(s["daehwa"]["check"]["delivered"], 10, "{s:#}");
    assert_eq!(s["ceiling"]["check"]["delivered"], 10, "{s:#}");
}

#[test]
fn storm_over_websocket() {
    let s = bench(&["storm", "--transport", "ws", "--sessions", "20"]);
    assert_eq!(s["daehwa"]["figures"]["ready"], 20.0, "{s:#}");
    assert_eq!(s["ceiling"]["figures"]["ready"], 20.0, "{s:#}");
}
