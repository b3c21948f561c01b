//! Handing work to a session's background task through a bounded channel
//! without ever making the caller wait: the caller may be a `Drop` or the
//! return path of a grant, where awaiting room would not be cancel safe.

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{SendError, TrySendError};

/// Send `item` on `tx` without waiting: at once if the channel has room,
/// else from a small task on `runtime` that waits for room (so the channel
/// bounds a burst, and each task beyond it holds one item). If the
/// receiver is gone, now or by the time there is room, `on_closed` gets
/// the item back.
pub fn hand_over<T, F>(tx: &mpsc::Sender<T>, item: T, runtime: &Handle, on_closed: F)
where
    T: Send + 'static,
    F: FnOnce(T) + Send + 'static,
{
    match tx.try_send(item) {
        Ok(()) => {}
        Err(TrySendError::Full(item)) => {
            let tx = tx.clone();
            runtime.spawn(async move {
                if let Err(SendError(item)) = tx.send(item).await {
                    on_closed(item);
                }
            });
        }
        Err(TrySendError::Closed(item)) => on_closed(item),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_full_channel_gets_the_item_once_there_is_room() {
        let (tx, mut rx) = mpsc::channel(1);
        let back = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3 {
            let back = back.clone();
            hand_over(&tx, i, &Handle::current(), move |i| {
                back.lock().unwrap().push(i)
            });
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            let item = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("an item handed over to a full channel never arrived");
            got.push(item.unwrap());
        }
        got.sort();
        assert_eq!(got, [0, 1, 2]);
        assert!(back.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_closed_channel_gives_the_item_back_now_or_when_waiting() {
        let (tx, rx) = mpsc::channel(1);
        let back = Arc::new(Mutex::new(Vec::new()));
        let give_back = |back: &Arc<Mutex<Vec<i32>>>| {
            let back = back.clone();
            move |i| back.lock().unwrap().push(i)
        };
        // 0 fills the channel, 1 waits for room in a task.
        hand_over(&tx, 0, &Handle::current(), give_back(&back));
        hand_over(&tx, 1, &Handle::current(), give_back(&back));
        tokio::task::yield_now().await;
        drop(rx);
        // Closed now: given back at once.
        hand_over(&tx, 2, &Handle::current(), give_back(&back));
        for _ in 0..100 {
            if back.lock().unwrap().len() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let mut back = back.lock().unwrap().clone();
        back.sort();
        assert_eq!(back, [1, 2]);
    }
}
