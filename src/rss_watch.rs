//! The server's resident memory, read cheaply and often, to notice it
//! growing fast (see `head_guard`: a client sending an endless request
//! head makes tiny_http buffer it, as fast as it arrives).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Reads `/proc/self/statm`, keeping it open: one `pread` per look.
#[derive(Debug)]
pub struct RssWatch {
    statm: Option<File>,
    page_bytes: u64,
    /// The lowest resident size seen since growth was last reported.
    low: Option<u64>,
}

impl RssWatch {
    /// A watch on this process; reports nothing where `/proc` is missing.
    pub fn new() -> RssWatch {
        let page_bytes = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| u64::try_from(size).ok())
            .unwrap_or(4096);
        RssWatch {
            statm: File::open("/proc/self/statm").ok(),
            page_bytes,
            low: None,
        }
    }

    /// The resident set size now, in bytes.
    pub fn resident(&self) -> Option<u64> {
        let mut text = [0u8; 128];
        let n = self.statm.as_ref()?.read_at(&mut text, 0).ok()?;
        // "size resident shared text lib data dt", in pages.
        let pages: u64 = std::str::from_utf8(&text[..n])
            .ok()?
            .split(' ')
            .nth(1)?
            .parse()
            .ok()?;
        Some(pages * self.page_bytes)
    }

    /// True when the resident size is at least `by` bytes above the lowest
    /// it was since the last time this was true (or since the first look).
    pub fn grew(&mut self, by: u64) -> bool {
        let Some(now) = self.resident() else {
            return false;
        };
        let low = self.low.map_or(now, |low| low.min(now));
        if now - low >= by {
            self.low = Some(now);
            true
        } else {
            self.low = Some(low);
            false
        }
    }
}

impl Default for RssWatch {
    fn default() -> RssWatch {
        RssWatch::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_memory_grow() {
        let mut watch = RssWatch::new();
        let Some(before) = watch.resident() else {
            eprintln!("no /proc/self/statm here: skipped");
            return;
        };
        assert!(before > 0);
        assert!(!watch.grew(64 << 20), "no growth yet");
        // 32 MiB written page by page: resident at once.
        // (Behind `black_box`: in a release build the optimiser drops a
        // block nothing reads, and nothing is written.)
        let block = std::hint::black_box(vec![1u8; 32 << 20]);
        assert!(watch.grew(16 << 20), "32 MiB more is more than 16");
        assert!(!watch.grew(16 << 20), "measured from the new level");
        drop(block);
        assert!(!watch.grew(16 << 20), "shrinking is not growth");
    }
}
