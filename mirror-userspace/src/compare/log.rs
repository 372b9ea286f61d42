//! The differences log: one JSON record a line, appended; at most `logPerSecond` records a second
//! (a token bucket of that many, refilled continuously), the others counted; when a record would
//! take the file past `logMaxBytes`, the file is rotated (`F` → `F.1` → `F.2` … up to
//! `logFiles` files in all, the oldest removed). So the log never takes more than
//! `logFiles × logMaxBytes` on disk, whatever the traffic. Time is given by the caller.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use serde_json::Value;

use super::record::MAX_RECORD_BYTES;
use crate::config::LogSettings;

/// What became of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Written.
    Written,
    /// Over the rate: not written.
    RateLimited,
    /// Larger than the file may be, or than [`MAX_RECORD_BYTES`]: not written.
    TooLarge,
}

/// What the log did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    /// Records written.
    pub written: u64,
    /// Records not written for the rate limit.
    pub rate_limited: u64,
    /// Records not written for their size.
    pub too_large: u64,
    /// Rotations.
    pub rotations: u64,
}

/// A token bucket: `rate` tokens a second, at most `rate` held.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimit {
    /// Full: `per_second` may go at once.
    pub fn new(per_second: u32) -> Self {
        Self { rate: f64::from(per_second), tokens: f64::from(per_second), last: None }
    }

    /// Takes a token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The log file of one compared destination.
#[derive(Debug)]
pub struct DiffLog {
    settings: LogSettings,
    file: File,
    size: u64,
    limit: RateLimit,
    stats: LogStats,
}

impl DiffLog {
    /// Opens (or creates) the file for appending; its current size counts towards rotation.
    pub fn open(settings: &LogSettings) -> io::Result<Self> {
        let file = append(&settings.path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            settings: settings.clone(),
            file,
            size,
            limit: RateLimit::new(settings.per_second),
            stats: LogStats::default(),
        })
    }

    /// Writes `record` as one line, if the rate allows it at `now`.
    pub fn write(&mut self, record: &Value, now: Instant) -> io::Result<Logged> {
        if !self.limit.take(now) {
            self.stats.rate_limited += 1;
            return Ok(Logged::RateLimited);
        }
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if len > self.settings.max_bytes || line.len() > MAX_RECORD_BYTES {
            self.stats.too_large += 1;
            return Ok(Logged::TooLarge);
        }
        if self.size + len > self.settings.max_bytes {
            self.rotate()?;
        }
        // One write of the whole line: a reader never sees half a record from us.
        self.file.write_all(&line)?;
        self.size += len;
        self.stats.written += 1;
        Ok(Logged::Written)
    }

    /// What the log did so far.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// `F.n` → `F.n+1` (the last kept one dropped), `F` → `F.1`, then a new `F`.
    fn rotate(&mut self) -> io::Result<()> {
        let files = self.settings.files;
        let path = &self.settings.path;
        if files > 1 {
            let _ = std::fs::remove_file(rotated(path, files - 1));
            for i in (1..files - 1).rev() {
                let from = rotated(path, i);
                if from.exists() {
                    std::fs::rename(&from, rotated(path, i + 1))?;
                }
            }
            std::fs::rename(path, rotated(path, 1))?;
            self.file = append(path)?;
        } else {
            self.file.set_len(0)?;
        }
        self.size = 0;
        self.stats.rotations += 1;
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The `n`th rotated file of `path`: `path.n`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}
