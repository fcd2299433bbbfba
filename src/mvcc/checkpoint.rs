//! A checkpoint of the key index, so that a restart need not read the
//! whole log. Where one instance owns the database (SQLite), a graceful
//! shutdown writes the index to a file beside the database
//! (`<file>.index`) with a random token, and records the token in the
//! database's meta row. At start the file is read, and removed, and used
//! only if its token is the one the database holds: a database imported
//! into, or replaced by a copy from another moment, does not hold it, and
//! neither does one whose last run ended in a crash (its file was removed
//! when it was read, and the token cleared). The log after the
//! checkpoint's revision is then applied as usual.

use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::sync::Arc;

use crate::mvcc::feed::Feed;
use crate::mvcc::index::Index;
use crate::mvcc::memory::Memory;
use crate::sql::Db;

/// The index saved at the last graceful shutdown, if the database still
/// matches it; the file is removed either way.
pub async fn take(db: &Db) -> Option<Index> {
    let path = db.dialect().checkpoint_path()?;
    if !path.exists() {
        return None;
    }
    // The token is cleared as it is read: a copy of this database made
    // while it runs must not match a copy of this file.
    let token = match db.checkpoint_token().await {
        Ok(t) => match db.set_checkpoint_token(0).await {
            Ok(()) => t,
            Err(e) => {
                tracing::warn!(error = %e, "clearing the checkpoint token failed");
                0
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "reading the checkpoint token failed");
            0
        }
    };
    let read = path.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let loaded = std::fs::File::open(&read)
            .and_then(|f| Index::load(&mut BufReader::with_capacity(1 << 20, f)));
        let _ = std::fs::remove_file(&read);
        loaded
    })
    .await;
    match loaded {
        Ok(Ok((saved, ix))) if token != 0 && saved == token as u64 => {
            tracing::info!(
                file = %path.display(),
                revision = ix.revision(),
                keys = ix.len(),
                "key index read from its checkpoint"
            );
            Some(ix)
        }
        Ok(Ok(_)) => {
            tracing::warn!(
                file = %path.display(),
                "the key index checkpoint does not match the database; building from the log"
            );
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(file = %path.display(), error = %e, "the key index checkpoint is unreadable; building from the log");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the key index checkpoint failed");
            None
        }
    }
}

/// Writes the index as the checkpoint the next start reads (after the
/// writer has stopped: it holds every committed revision and nothing
/// else). Failures are logged: the next start then reads the log.
pub async fn save(db: &Db, feed: Arc<Feed>) {
    let Some(path) = db.dialect().checkpoint_path() else {
        return;
    };
    // Positive as an i64, never 0 (which means none).
    let token = (rand::random::<u64>() >> 1) | 1;
    let started = std::time::Instant::now();
    // Seconds of file I/O at a million keys: off the runtime's workers.
    let file = path.clone();
    let written = tokio::task::spawn_blocking(move || write(&file, token, &feed.mem))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let recorded = match written {
        Ok(()) => db
            .set_checkpoint_token(token as i64)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match recorded {
        Ok(()) => tracing::info!(
            file = %path.display(),
            seconds = started.elapsed().as_secs_f64(),
            "key index checkpoint written"
        ),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            tracing::warn!(file = %path.display(), error = %e, "writing the key index checkpoint failed");
        }
    }
}

/// Writes the file whole under a temporary name, then renames it.
fn write(path: &Path, token: u64, mem: &Memory) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let file = std::fs::File::create(&tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    mem.read().save(token, &mut w)?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
