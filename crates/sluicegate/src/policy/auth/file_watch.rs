//! Noticing that a key file changed: its metadata (modification time, size, inode) is looked at
//! once a second, and a change calls back. Polling rather than inotify: a stat a second costs
//! nothing, works the same on every file system and container mount, and sees every way editors
//! and deploy tools write a file (in place, truncate-and-write, write-then-rename).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

/// How often a watched file's metadata is read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A running watch; dropping it stops it.
pub struct FileWatch {
    task: Option<JoinHandle<()>>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

impl FileWatch {
    /// Calls `changed` whenever `path` looks different from the last look. The first look is
    /// now: start the watch, then read the file, so that no change falls between the two.
    /// Outside a tokio runtime (unit tests) nothing is watched.
    pub fn start(path: PathBuf, changed: impl Fn() + Send + 'static) -> FileWatch {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return FileWatch { task: None };
        };
        let mut last = stamp(&path);
        let task = runtime.spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
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
