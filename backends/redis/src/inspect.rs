//! `Coordinator::locks` for Redis: `SCAN` finds the names with a lock key
//! or a queue (`<ns>:lock:<enc>*`, `<ns>:queue:<enc>*`), then one
//! read-only script per batch of names (`lua/locks.lua`) reads each one's
//! lock key, readers hash, fence counter and queue atomically, skipping
//! entries of dead sessions as the granting scripts would void them.
//!
//! Session: from the owner token (`quorate:<sid>:<n>`); a foreign holder
//! (a redis-py `Lock`) is listed with no session and no fence. Fence: a
//! reader's from the readers hash; the exclusive holder's is the name's
//! counter, which no other grant can move while it holds. Waiters: the
//! queue in arrival order. No grant time is recorded: `since` is `None`.

use std::collections::BTreeSet;

use quorate_core::inspect::finish_listing;
use quorate_core::name::{decode, encode};
use quorate_core::{Error, FencingToken, LockHolder, LockMode, LockState, LockWaiter, Result};
use serde_json::Value;

use crate::{scripts, Ctx};

/// Names read by one script call.
const BATCH: usize = 256;

/// Every lock under the namespace whose name starts with `prefix`.
pub(crate) async fn locks(ctx: &Ctx, prefix: &str) -> Result<Vec<LockState>> {
    // `encode` works byte by byte, so the encoding of a prefix starts the
    // encoding of every name it starts, except for the names `.` and `..`.
    // Encodings contain no glob character (`*?[]\` are escaped).
    let enc_prefix = if prefix == "." || prefix == ".." {
        String::new()
    } else {
        encode(prefix)
    };
    let mut encs = BTreeSet::new();
    for kind in ["lock", "queue"] {
        let head = format!("{}:{kind}:", ctx.ns);
        let pattern = format!("{head}{enc_prefix}*");
        let found = ctx.scan("list locks", &pattern).await?;
        encs.extend(
            found
                .iter()
                .filter_map(|k| k.strip_prefix(&head))
                .filter(|enc| decode(enc).is_some_and(|n| n.starts_with(prefix)))
                .map(str::to_owned),
        );
    }
    let encs: Vec<String> = encs.into_iter().collect();
    let mut out = Vec::with_capacity(encs.len());
    for chunk in encs.chunks(BATCH) {
        let args: Vec<&[u8]> = chunk.iter().map(|e| e.as_bytes()).collect();
        let reply: String = ctx.eval("list locks", &scripts::LOCKS, &args).await?;
        let reply: Value = serde_json::from_str(&reply)
            .map_err(|e| Error::backend(format!("unexpected reply from the locks script: {e}")))?;
        for entry in list(&reply) {
            if let Some(lock) = parse(entry) {
                out.push(lock);
            }
        }
    }
    Ok(finish_listing(out, prefix))
}

/// A JSON array (Lua's cjson writes an empty table as `{}`).
fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// A fence as the script returns it (a decimal string).
fn fence(v: &Value) -> Option<FencingToken> {
    v.as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .and_then(|n| FencingToken::new(n).ok())
}

/// One lock of the script's reply.
fn parse(entry: &Value) -> Option<LockState> {
    let name = decode(entry["enc"].as_str()?)?;
    let mut lock = LockState::new(name);
    if let Some(holder) = entry["holder"].as_str() {
        let session = (!holder.is_empty()).then(|| holder.to_owned());
        let fence = session.as_ref().and_then(|_| fence(&entry["fence"]));
        lock.holders
            .push(LockHolder::new(session, LockMode::Exclusive).with_fence(fence));
    }
    for r in list(&entry["readers"]) {
        let session = r[0].as_str().map(str::to_owned);
        lock.holders
            .push(LockHolder::new(session, LockMode::Shared).with_fence(fence(&r[1])));
    }
    for w in list(&entry["waiters"]) {
        let mode = if w[0].as_str() == Some("r") {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        lock.waiters
            .push(LockWaiter::new(w[1].as_str().map(str::to_owned), mode));
    }
    Some(lock)
}
