//! (e) Catch-up: a device `--behind` messages behind syncs to current. One user sends the
//! backlog to another with pipelined unary SendMessage calls (every one durable before its
//! answer); then the recipient's device, from cursor 0, calls SyncMessages page after page
//! (`--page` messages, following `has_more`) until it is current. Timed from the first
//! SyncMessages call to the last page. Daehwa only: the relay stores nothing to sync from.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use daehwa::v1::{self, Cursor};
use futures::{StreamExt, stream};
use serde_json::json;

use super::Ctx;
use crate::{
    load::{self, SeqLedger, stamped_text},
    progress,
    report::{Check, Figure, Run},
    target::Target,
};

/// Flags of `chat-bench catchup`.
#[derive(Debug, Clone, Args)]
pub struct Params {
    /// Messages the device is behind.
    #[arg(long, default_value_t = 10_000)]
    pub behind: u64,
    /// SyncMessages page size (chatd caps it at its --max-page-size, 1000 by default).
    #[arg(long, default_value_t = 1000)]
    pub page: u32,
    /// SendMessage calls in flight while sending the backlog.
    #[arg(long, default_value_t = 64)]
    pub pipeline: usize,
    /// Message text bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

impl Params {
    /// The parameters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({"behind": self.behind, "page": self.page, "pipeline": self.pipeline, "size": self.size})
    }
}

/// Runs the catch-up scenario on `target` (chatd).
pub async fn run(target: &Target, ctx: &Ctx, p: &Params) -> anyhow::Result<Run> {
    progress!("catchup", target, "setting up a writer and a reader");
    let ids = load::provision(target.kind, &target.url, ctx.run, 2).await?;
    let (writer, reader) = (&ids[0], &ids[1]);
    load::befriend(target.kind, &target.url, &[(writer, reader)]).await?;
    let conversation = daehwa::dm_conversation_id(writer.user_id, reader.user_id);
    let mut check = Check::default();

    progress!("catchup", target, "sending {} messages", p.behind);
    let chat = load::chat_client(load::channel(&target.url).await?, writer)?;
    let started = Instant::now();
    let results: Vec<Result<u64, String>> = stream::iter(0..p.behind)
        .map(|i| {
            let mut chat = chat.clone();
            let request = v1::SendMessageRequest {
                client_msg_id: format!("c-{i}"),
                conversation_id: conversation.clone(),
                content: Some(stamped_text(i, p.size)),
            };
            async move {
                let response = chat
                    .send_message(request)
                    .await
                    .map_err(|s| format!("SendMessage failed: {s}"))?;
                response
                    .into_inner()
                    .message
                    .map(|m| m.seq)
                    .ok_or_else(|| "SendMessage answered without a message".to_owned())
            }
        })
        .buffer_unordered(p.pipeline.max(1))
        .collect()
        .await;
    let prefill_s = started.elapsed().as_secs_f64();
    let mut acked = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(seq) => acked.push(seq),
            Err(e) => check.error(e),
        }
    }
    acked.sort_unstable();

    progress!("catchup", target, "syncing from cursor 0");
    let mut sync = load::chat_client(load::channel(&target.url).await?, reader)?;
    let mut ledger = SeqLedger::default();
    let mut cursor = 0u64;
    let mut pages = 0u64;
    let started = Instant::now();
    loop {
        let page = sync
            .sync_messages(v1::SyncMessagesRequest {
                cursors: vec![Cursor {
                    conversation_id: conversation.clone(),
                    after_seq: cursor,
                }],
                limit: p.page,
            })
            .await
            .context("SyncMessages failed")?
            .into_inner();
        pages += 1;
        for m in &page.messages {
            check.delivered += 1;
            if m.conversation_id != conversation || !ledger.record(m.seq) {
                check.error(format!(
                    "unexpected message {} {}",
                    m.conversation_id, m.seq
                ));
            }
            cursor = cursor.max(m.seq);
        }
        if !page.has_more {
            break;
        }
        if page.messages.is_empty() {
            check.error("has_more with an empty page");
            break;
        }
    }
    let catchup_s = started.elapsed().as_secs_f64();
    let (lost, duplicated) = ledger.compare(&acked);
    check.acked = acked.len() as u64;
    check.lost = lost;
    check.duplicated = duplicated;
    Ok(Run {
        figures: vec![
            Figure::new("catchup_ms", "catch-up ms", catchup_s * 1e3),
            Figure::new("pages", "pages", pages as f64),
            Figure::new(
                "synced_per_s",
                "synced msg/s",
                check.delivered as f64 / catchup_s.max(1e-9),
            ),
            Figure::new(
                "prefill_per_s",
                "backlog SendMessage msg/s",
                acked.len() as f64 / prefill_s.max(1e-9),
            ),
        ],
        check,
        notes: Vec::new(),
    })
}
