//! The raw baseline of `memory://`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::RawBaseline;

/// The in-process baseline of `memory://`: a table of `tokio::sync::Mutex`
/// (look up + lock + unlock) for acquire/release, and a tokio oneshot
/// between two tasks for the hand-off.
#[derive(Debug, Default)]
pub struct MemoryBaseline {
    table: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[async_trait]
impl RawBaseline for MemoryBaseline {
    fn describe(&self) -> String {
        "in-process table of tokio Mutexes (lookup+lock+unlock); oneshot task wake-up".into()
    }

    async fn acquire_release(&self, key: &str) -> quorate::Result<()> {
        let lock = self
            .table
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default()
            .clone();
        let guard = lock.lock().await;
        tokio::task::yield_now().await;
        drop(guard);
        Ok(())
    }

    async fn handoff(&self, _key: &str) -> quorate::Result<Duration> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
        let waiter = tokio::spawn(async move {
            let sent = rx.await.expect("sender");
            Instant::now().saturating_duration_since(sent)
        });
        tokio::time::sleep(super::SETTLE).await;
        tx.send(Instant::now()).expect("receiver");
        Ok(waiter.await.expect("waiter task"))
    }
}
