//! Group commit: one task runs every call waiting as one statement (or a few), and the next
//! group gathers while that one commits. PostgreSQL flushes its log once per commit, so calls
//! made one by one would each wait for a flush of their own; grouped, a flush serves many.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::CommitStats;
use crate::store::StoreError;

struct Pending<T, R> {
    item: T,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

/// A grouping task's mailbox: items in, one answer per item out.
pub(super) struct Batcher<T, R> {
    tx: mpsc::UnboundedSender<Pending<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the grouping task: it passes up to `max` waiting items at a time to `run`, which
    /// answers each (in order) or fails them all. It ends when the `Batcher` is dropped.
    pub(super) fn start<F, Fut>(max: usize, stats: Option<CommitStats>, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(group(max.max(1), rx, run, stats));
        Self { tx }
    }

    /// Runs `item` with whatever else is waiting; its answer.
    pub(super) async fn call(&self, item: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { item, reply })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn group<T, R, F, Fut>(
    max: usize,
    mut rx: mpsc::UnboundedReceiver<Pending<T, R>>,
    run: F,
    stats: Option<CommitStats>,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, StoreError>>,
{
    let mut items = Vec::new();
    let mut replies = Vec::new();
    while let Some(first) = rx.recv().await {
        items.push(first.item);
        replies.push(first.reply);
        while items.len() < max {
            match rx.try_recv() {
                Ok(next) => {
                    items.push(next.item);
                    replies.push(next.reply);
                }
                Err(_) => break,
            }
        }
        let expected = items.len();
        let started = std::time::Instant::now();
        let ran = run(std::mem::take(&mut items)).await;
        if let Some(stats) = &stats {
            stats.commit(expected, started.elapsed());
        }
        match ran {
            Ok(answers) if answers.len() == expected => {
                for (reply, answer) in replies.drain(..).zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let e = StoreError::unavailable(format!(
                    "a group of {expected} calls came back with {} answers",
                    answers.len()
                ));
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_calls_go_as_one_group_and_each_gets_its_answer() {
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&sizes);
        let batcher = Batcher::start(3, None, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async move { Ok(items.into_iter().map(|n| n * 10).collect()) }
        });
        // Five calls made before the task runs: groups of 3 then 2.
        let calls: Vec<_> = (1..=5).map(|n| batcher.call(n)).collect();
        let answers = futures::future::join_all(calls).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, vec![10, 20, 30, 40, 50]);
        assert_eq!(*sizes.lock().unwrap(), vec![3, 2]);
    }

    #[tokio::test]
    async fn a_failed_group_fails_each_call_and_a_short_answer_is_an_error() {
        let batcher = Batcher::start(8, None, |items: Vec<u32>| async move {
            match items.first() {
                Some(0) => Err(StoreError::unavailable("down")),
                _ => Ok(vec![1]),
            }
        });
        assert!(matches!(
            batcher.call(0).await,
            Err(StoreError::Unavailable { .. })
        ));
        let both = futures::future::join(batcher.call(1), batcher.call(2)).await;
        assert!(
            matches!(both.0, Err(StoreError::Unavailable { .. })),
            "{:?}",
            both.0
        );
        assert!(matches!(both.1, Err(StoreError::Unavailable { .. })));
    }
}
