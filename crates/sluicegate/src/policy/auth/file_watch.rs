//! Noticing that a key file changed: the file is read and hashed once a second, and a change of
//! its content calls back. Polling rather than inotify: reading a small file a second costs
//! nothing, works the same on every file system and container mount, and sees every way editors
//! and deploy tools write a file (in place, truncate-and-write, write-then-rename), even an edit
//! that keeps the size and lands within a coarse file system's timestamp resolution.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;

/// How often a watched file's metadata is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A running watch; dropping it stops it.
pub struct FileWatch {
    task: Option<JoinHandle<()>>,
}

/// A file's content, as a hash (`None`: unreadable, as mid-rename).
fn stamp(path: &PathBuf) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|bytes| xxhash_rust::xxh3::xxh3_64(&bytes))
}

impl FileWatch {
    /// Calls `changed` whenever `path` looks different from the last look. The first look is
    /// now: start the watch, then read the file, so that no change falls between the two.
    /// Outside a tokio runtime (unit tests) nothing is watched.
    pub fn start(path: PathBuf, changed: impl Fn() + Send + 'static) -> FileWatch {
        Self::start_every(path, POLL_INTERVAL, changed)
    }

    /// [`start`](Self::start), looking every `interval`.
    pub fn start_every(
        path: PathBuf,
        interval: Duration,
        changed: impl Fn() + Send + 'static,
    ) -> FileWatch {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return FileWatch { task: None };
        };
        let mut last = stamp(&path);
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = stamp(&path);
                // A file that is gone (mid-rename) is looked at again next time.
                if now.is_some() && now != last {
                    last = now;
                    changed();
                }
            }
        });
        FileWatch { task: Some(task) }
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
