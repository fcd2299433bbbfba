//! The read fence of a shared database (etcd's linearizable read loop).
//!
//! Other instances commit to the database this instance serves from
//! memory, so a linearizable read first learns the database's current
//! revision and waits until the key index has applied it. One round trip
//! serves every read that arrived before it was sent: reads queue, the
//! fence task takes the whole queue, reads the meta row once (with the
//! auth stamp, so that auth changes of other instances reach this one by
//! the next read), catches the index up from the log, and answers them
//! all. Reads arriving meanwhile wait for the next round.

use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::mvcc::feed::Feed;
use crate::sql::Db;
use crate::types::Revision;

type Waiter = oneshot::Sender<Result<Revision>>;

#[derive(Default)]
pub struct Fence {
    waiting: Mutex<Vec<Waiter>>,
    wake: Notify,
}

impl Fence {
    /// Waits until the index holds every revision the database had
    /// committed when this call began; answers that revision.
    pub async fn wait(&self) -> Result<Revision> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        self.wake.notify_one();
        rx.await.map_err(|_| Error::Stopped)?
    }

    fn take(&self) -> Vec<Waiter> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Serves the queue until `cancel` fires.
    pub async fn run(self: Arc<Self>, db: Db, feed: Arc<Feed>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            let waiters = self.take();
            if waiters.is_empty() {
                continue;
            }
            let answer = async {
                let (meta, stamp) = db.meta_and_auth_stamp().await?;
                feed.auth_stamp(stamp);
                feed.catch_up(meta.revision).await?;
                Ok::<_, Error>(meta.revision)
            }
            .await;
            for w in waiters {
                let _ = w.send(match &answer {
                    Ok(r) => Ok(*r),
                    Err(e) => Err(e.duplicate()),
                });
            }
        }
        for w in self.take() {
            let _ = w.send(Err(Error::Stopped));
        }
    }
}
