//! The `LISTEN` connection: turns PostgreSQL's notifications of committed changes into the
//! store's change signal (see [`Store::change_signal`](crate::store::Store::change_signal)),
//! so that nodes read the feed when something changed instead of polling it.
//!
//! At start (and after each reconnection) the connection checks that a notification it sends
//! comes back: behind a transaction-pooling proxy `LISTEN` is accepted but nothing is
//! delivered. While notifications do not work the signal is not live, said once in the log,
//! and followers poll the feed at their `follow_interval` (100 ms by default).

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The channel the schema's trigger notifies.
const CHANNEL: &str = "oprun_changes";

/// How long the check at start waits for its own notification.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Keeps a `LISTEN` connection open until `stop`, reconnecting with backoff.
pub(super) async fn run(
    database: super::Database,
    signal: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut retry = Duration::from_millis(100);
    let mut said = false;
    loop {
        let failure = tokio::select! {
            ended = listen(&database, &signal) => ended,
            () = stop.cancelled() => return,
        };
        // Not live; whatever changed meanwhile is read by the followers' polls.
        signal.send_replace(false);
        if !said {
            said = true;
            warn!(
                reason = %failure,
                "PostgreSQL notifications are unavailable; nodes poll the change feed instead \
                 (every 100 ms by default) until they work"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = stop.cancelled() => return,
        }
        retry = (retry * 2).min(Duration::from_secs(10));
    }
}

/// One `LISTEN` connection, until it fails; answers why.
async fn listen(database: &super::Database, signal: &watch::Sender<bool>) -> String {
    let (client, mut connection) = match database.config.connect(database.tls.clone()).await {
        Ok(c) => c,
        Err(e) => return format!("cannot connect: {e}"),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // Aborted when this function ends or is dropped (at close): that closes the connection.
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }));
    async {
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            return format!("LISTEN was refused: {e}");
        }
        let probe = format!("probe {}", rand::random::<u64>());
        if let Err(e) = client
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &probe])
            .await
        {
            return format!("NOTIFY was refused: {e}");
        }
        let arrived = tokio::time::timeout(PROBE_WAIT, async {
            while let Some(payload) = rx.recv().await {
                if payload == probe {
                    return true;
                }
            }
            false
        })
        .await;
        if arrived != Ok(true) {
            return "a notification sent at start never arrived (a transaction-pooling proxy?)"
                .to_owned();
        }
        signal.send_replace(true);
        info!("following PostgreSQL notifications of changes");
        while rx.recv().await.is_some() {
            raise(signal);
        }
        "the notification connection closed".to_owned()
    }
    .await
}

/// Says the feed may have news: every receiver sees a change (a receiver remembers one).
fn raise(signal: &watch::Sender<bool>) {
    signal.send_modify(|_| {});
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
