//! The pub/sub hub: one subscriber connection per coordinator, shared by
//! every waiter and watcher.
//!
//! A waiter registers on its session's channel *before* it runs the
//! acquire script, so a wake-up published after the script cannot be
//! missed while the connection stands. Only the first registration of a
//! channel sends `SUBSCRIBE` (and the last one's drop `UNSUBSCRIBE`): the
//! session's own subscription to its channel makes its waiters' free. When the connection drops (or stops answering a
//! periodic `PING`), the hub reconnects, subscribes every registered channel
//! again and sends [`Wake::Reconnected`] to every subscriber, which then
//! re-checks (waiters run their script again, watchers re-list and diff):
//! messages published while disconnected are never relied upon.
//!
//! Each subscriber's queue is bounded ([`QUEUE`] wake-ups). A subscriber
//! that falls that far behind is not waited for: its queue is marked
//! lagged, and its next [`Subscription::next`] drops what is queued and
//! returns [`Wake::Reconnected`] — re-check everything — so memory never
//! grows with a slow subscriber.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use quorate_core::backoff::Backoff;
use quorate_core::{Error, Result};
use redis::aio::PubSubSink;
use tokio::sync::mpsc;

/// What a subscriber is told.
#[derive(Debug, Clone)]
pub(crate) enum Wake {
    /// A message published on the channel (its payload).
    Message(String),
    /// The subscriber connection was re-established: anything may have
    /// been missed, re-check.
    Reconnected,
}

/// How many wake-ups a subscriber's queue holds before it lags.
const QUEUE: usize = 64;

/// The hub's end of one subscriber's bounded queue.
struct Slot {
    tx: mpsc::Sender<Wake>,
    lagged: Arc<AtomicBool>,
}

impl Slot {
    fn send(&self, wake: &Wake) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(wake.clone()) {
            self.lagged.store(true, Ordering::SeqCst);
        }
    }
}

type Subscribers = HashMap<String, HashMap<u64, Slot>>;

struct HubInner {
    /// The server to connect to (replaced when a sentinel primary moves).
    client: StdMutex<redis::Client>,
    /// Tells the connection task to drop its connection and reconnect.
    switched: Arc<tokio::sync::Notify>,
    timeout: Duration,
    subscribers: StdMutex<Subscribers>,
    next_id: AtomicU64,
    /// The current connection's sink; `None` while disconnected. Every
    /// SUBSCRIBE/UNSUBSCRIBE happens under this lock, after the registry
    /// change it reflects, so the server's set never lags a registration.
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
}

/// The shared pub/sub connection of one coordinator.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

/// A registration for one channel; unsubscribes (in the background) when
/// dropped.
pub(crate) struct Subscription {
    hub: Weak<HubInner>,
    channel: String,
    id: u64,
    rx: mpsc::Receiver<Wake>,
    lagged: Arc<AtomicBool>,
}

impl Hub {
    /// Start the hub's connection task. The connection is made in the
    /// background; subscriptions made before it stands are sent when it does.
    pub(crate) fn start(client: redis::Client, timeout: Duration) -> Hub {
        let switched = Arc::new(tokio::sync::Notify::new());
        let inner = Arc::new(HubInner {
            client: StdMutex::new(client),
            switched: switched.clone(),
            timeout,
            subscribers: StdMutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            sink: tokio::sync::Mutex::new(None),
        });
        tokio::spawn(run(Arc::downgrade(&inner), switched));
        Hub { inner }
    }

    /// Connect to another server from now on (a new sentinel primary): the
    /// current connection is dropped and every subscriber re-checks.
    pub(crate) fn switch(&self, client: redis::Client) {
        *self.inner.client.lock().unwrap() = client;
        self.inner.switched.notify_one();
    }

    /// Subscribe to `channel`. Once this returns, every message published
    /// on it reaches the subscription, or a [`Wake::Reconnected`] does.
    ///
    /// # Errors
    ///
    /// `Unavailable` when the server does not confirm in time.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<Subscription> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sink = self.inner.sink.lock().await;
        let new = {
            let mut subs = self.inner.subscribers.lock().unwrap();
            let slots = subs.entry(channel.to_owned()).or_default();
            let new = slots.is_empty();
            slots.insert(
                id,
                Slot {
                    tx,
                    lagged: lagged.clone(),
                },
            );
            new
        };
        let sub = Subscription {
            hub: Arc::downgrade(&self.inner),
            channel: channel.to_owned(),
            id,
            rx,
            lagged,
        };
        // A channel some subscriber registered before is subscribed on the
        // server already (that registration waited for the confirmation,
        // under the sink lock held here), or the connection is down and the
        // connection task will subscribe it and send `Reconnected` to every
        // registration, this one included.
        if let Some(s) = sink.as_mut().filter(|_| new) {
            match tokio::time::timeout(self.inner.timeout, s.subscribe(channel)).await {
                Ok(Ok(())) => {}
                // The connection is broken: the connection task will
                // reconnect, subscribe again and send `Reconnected`.
                Ok(Err(e)) => tracing::debug!(error = %e, channel, "subscribe failed"),
                Err(_) => {
                    return Err(Error::unavailable(format!(
                        "redis did not confirm SUBSCRIBE within {:?}",
                        self.inner.timeout
                    )))
                }
            }
        }
        Ok(sub)
    }
}

impl Subscription {
    /// The next wake-up. Never ends while the hub lives. After the queue
    /// overflowed, what it holds is dropped and the wake-up is
    /// [`Wake::Reconnected`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) async fn next(&mut self) -> Wake {
        if self.lagged.swap(false, Ordering::SeqCst) {
            while self.rx.try_recv().is_ok() {}
            tracing::debug!(channel = %self.channel, "subscriber lagged; re-checking");
            return Wake::Reconnected;
        }
        match self.rx.recv().await {
            Some(w) => w,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let last = {
            let mut subs = hub.subscribers.lock().unwrap();
            match subs.get_mut(&self.channel) {
                Some(m) => {
                    m.remove(&self.id);
                    if m.is_empty() {
                        subs.remove(&self.channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            let channel = std::mem::take(&mut self.channel);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut sink = hub.sink.lock().await;
                    // Someone may have subscribed again meanwhile.
                    if hub.subscribers.lock().unwrap().contains_key(&channel) {
                        return;
                    }
                    if let Some(s) = sink.as_mut() {
                        let _ = tokio::time::timeout(hub.timeout, s.unsubscribe(&channel)).await;
                    }
                });
            }
        }
    }
}

fn broadcast(inner: &HubInner, channel: Option<&str>, wake: &Wake) {
    let subs = inner.subscribers.lock().unwrap();
    let targets: Box<dyn Iterator<Item = &HashMap<u64, Slot>>> = match channel {
        Some(c) => Box::new(subs.get(c).into_iter()),
        None => Box::new(subs.values()),
    };
    for m in targets {
        for slot in m.values() {
            slot.send(wake);
        }
    }
}

/// The connection task: connect, (re)subscribe, dispatch, health-check,
/// reconnect; ends when the hub is dropped.
async fn run(weak: Weak<HubInner>, switched: Arc<tokio::sync::Notify>) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (client, timeout) = (inner.client.lock().unwrap().clone(), inner.timeout);
        drop(inner);
        let connected = tokio::time::timeout(timeout, client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "pub/sub connection failed; retrying");
                backoff.wait().await;
                continue;
            }
            Err(_) => {
                tracing::debug!("pub/sub connection timed out; retrying");
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        {
            let Some(inner) = weak.upgrade() else { return };
            let mut slot = inner.sink.lock().await;
            let channels: Vec<String> = inner.subscribers.lock().unwrap().keys().cloned().collect();
            let mut ok = true;
            for c in &channels {
                if !matches!(
                    tokio::time::timeout(timeout, sink.subscribe(c)).await,
                    Ok(Ok(()))
                ) {
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            *slot = Some(sink.clone());
            drop(slot);
            tracing::debug!(channels = channels.len(), "pub/sub connected");
            broadcast(&inner, None, &Wake::Reconnected);
        }
        backoff.reset();
        let mut ping = tokio::time::interval(timeout.max(Duration::from_millis(200)));
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(inner) = weak.upgrade() else { return };
                    let payload: String = msg.get_payload().unwrap_or_default();
                    broadcast(&inner, Some(msg.get_channel_name()), &Wake::Message(payload));
                }
                _ = switched.notified() => {
                    tracing::debug!("pub/sub moving to a new server");
                    break;
                }
                _ = ping.tick() => {
                    if weak.strong_count() == 0 {
                        return;
                    }
                    let pong = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::debug!("pub/sub connection does not answer PING; reconnecting");
                        break;
                    }
                }
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        *inner.sink.lock().await = None;
        tracing::debug!("pub/sub connection lost; reconnecting");
    }
}
