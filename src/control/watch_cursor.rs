//! Where the peer watch starts again: from the revision after the last one seen, or from a fresh listing when etcd
//! has compacted that history away (no I/O).

/// How the watch (re)starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// List every lease for a snapshot and its revision.
    List,
    /// Watch from this revision on (inclusive).
    From(i64),
}

/// The last revision of the lease prefix the route table reflects (0: none, a listing is needed).
#[derive(Debug, Clone, Default)]
pub struct WatchCursor {
    rev: i64,
}

impl WatchCursor {
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do next: list if there is no snapshot, else resume after the last revision seen.
    pub fn start(&self) -> WatchStart {
        if self.rev == 0 {
            WatchStart::List
        } else {
            WatchStart::From(self.rev + 1)
        }
    }

    /// A listing at revision `rev` replaced the route table; returns the revision to watch from.
    pub fn listed(&mut self, rev: i64) -> i64 {
        self.rev = rev;
        rev + 1
    }

    /// An event or a response header at revision `rev` was applied.
    pub fn saw(&mut self, rev: i64) {
        self.rev = self.rev.max(rev);
    }

    /// A watch response that says the history we asked for is compacted away, or that the watch was cancelled,
    /// means events were missed: forgets the revision so the next start is a listing, and returns the revision
    /// forgotten. Any other response: None.
    pub fn relist_if_behind(&mut self, compact_revision: i64, canceled: bool) -> Option<i64> {
        if compact_revision > 0 || canceled {
            Some(std::mem::take(&mut self.rev))
        } else {
            None
        }
    }

    /// The last revision seen (0 before the first listing).
    pub fn revision(&self) -> i64 {
        self.rev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_a_listing_then_watches_after_its_revision() {
        let mut c = WatchCursor::new();
        assert_eq!(c.start(), WatchStart::List);
        assert_eq!(c.listed(41), 42);
        assert_eq!(c.start(), WatchStart::From(42));
    }

    #[test]
    fn resumes_after_the_highest_revision_seen() {
        let mut c = WatchCursor::new();
        c.listed(41);
        c.saw(45);
        c.saw(43);
        assert_eq!(c.revision(), 45);
        // A disconnect: the next start resumes, no listing.
        assert_eq!(c.start(), WatchStart::From(46));
    }

    #[test]
    fn compaction_or_cancel_forces_a_listing() {
        let mut c = WatchCursor::new();
        c.listed(41);
        c.saw(50);
        assert_eq!(c.relist_if_behind(0, false), None);
        assert_eq!(c.start(), WatchStart::From(51));
        assert_eq!(c.relist_if_behind(60, false), Some(50));
        assert_eq!(c.start(), WatchStart::List);
        c.listed(70);
        assert_eq!(c.relist_if_behind(0, true), Some(70));
        assert_eq!(c.start(), WatchStart::List);
    }
}
