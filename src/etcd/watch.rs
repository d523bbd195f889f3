//! Waiting for a change: watches that start at a revision already read, so that a change
//! between the read and the watch is not missed, and that give up when their connection is
//! replaced (a watch on a dead connection would otherwise wait for tonic's HTTP/2 ping to
//! notice). Most end at the first change, after which the caller reads again; a [`Follow`] is
//! kept open to carry every change, for a caller that learns what it needs from the changes
//! themselves. What a change means is the caller's.

use etcd_client::{Event as WatchEvent, EventType, GetOptions, WatchOptions, WatchStream};

use super::{Error, Etcd, Result};

/// One watch of a stream: a key, or the range `[key, end)`.
type Watched<'a> = (&'a [u8], Option<&'a [u8]>);

impl Etcd {
    /// Waits for any change of `key` (deleted, or put again: a holder record re-bound to a
    /// fence), watching from `from`. An error means the stream broke, or its connection was
    /// replaced: the caller reads again.
    pub async fn wait_changed(&self, key: &[u8], from: i64) -> Result<()> {
        self.next_events(&[key], from).await.map(drop)
    }

    /// Waits for any change of any of `keys`, as [`Etcd::wait_changed`] does for one, and
    /// returns the changes seen (none when a key changed before the watch was created: read
    /// it). The keys are watched on one stream: etcd's memory grows with the streams open, not
    /// with the watches on one (a waiter of a thousand on one lock would otherwise hold three).
    pub async fn next_events(&self, keys: &[&[u8]], from: i64) -> Result<Vec<WatchEvent>> {
        let watches: Vec<Watched> = keys.iter().map(|k| (*k, None)).collect();
        self.wait_event(&watches, from, &|_| true).await
    }

    /// Waits for a change of a key in any of the ranges `[key, end)` for which `relevant`
    /// holds, on one stream, as [`Etcd::wait_changed`] does for one key. Changes of other keys in
    /// the ranges (the job's own data under a lock's prefix) are passed over on the same
    /// stream, also those made before the watch was created: etcd replays them (within its sync
    /// loop's 100 ms), so a busy store costs no read.
    pub async fn wait_range_changed(
        &self,
        ranges: &[(&[u8], &[u8])],
        from: i64,
        relevant: &dyn Fn(&WatchEvent) -> bool,
    ) -> Result<()> {
        let watches: Vec<Watched> = ranges.iter().map(|(k, e)| (*k, Some(*e))).collect();
        self.wait_event(&watches, from, relevant).await.map(drop)
    }

    /// The kind of the first change of `key` at revision `from` or later, as etcd's history has
    /// it (`None`: none within the request bound, or compacted away).
    pub async fn first_change(&self, key: &[u8], from: i64) -> Result<Option<EventType>> {
        let opts = WatchOptions::new().with_start_revision(from);
        let first = async {
            let mut stream = self.client().await?.watch(key, Some(opts)).await?;
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    return Ok(None);
                }
                if let Some(e) = resp.events().first() {
                    return Ok(Some(e.event_type()));
                }
            }
            Ok(None)
        };
        // No change within the bound is an answer here, not a failure of the connection.
        match tokio::time::timeout(self.limit(), first).await {
            Ok(r) => r.inspect_err(|e| self.after_failure(e)),
            Err(_) => Ok(None),
        }
    }

    /// Opens a watch of `[key, end)` from `from`, kept open across changes ([`Follow::next`]).
    /// A watch created once, rather than after every change, stays among the ones etcd keeps
    /// up to date as it writes: one re-created from a revision already passed is caught up by
    /// etcd's sync loop, which reads the history for it.
    pub async fn follow(&self, key: &[u8], end: &[u8], from: i64) -> Result<Follow> {
        let made = self.replacements.get();
        let opts = WatchOptions::new()
            .with_start_revision(from)
            .with_range(end);
        let open = async { Ok(self.client().await?.watch(key, Some(opts)).await?) };
        let stream = self.within(self.limit(), open).await?;
        Ok(Follow {
            etcd: self.clone(),
            stream,
            made,
        })
    }

    async fn wait_event(
        &self,
        watches: &[Watched<'_>],
        from: i64,
        relevant: &dyn Fn(&WatchEvent) -> bool,
    ) -> Result<Vec<WatchEvent>> {
        let new_connection = self.replaced.notified();
        let watch = async {
            let opts = |end: Option<&[u8]>| {
                let opts = WatchOptions::new().with_start_revision(from);
                Some(match end {
                    Some(end) => opts.with_range(end),
                    None => opts,
                })
            };
            let Some(((key, end), more)) = watches.split_first() else {
                return Err(Error::Interrupted("nothing to watch".into()));
            };
            let mut stream = self.client().await?.watch(*key, opts(*end)).await?;
            for (key, end) in more {
                stream.watch(*key, opts(*end)).await?;
            }
            // etcd answers the creations in the order they were sent.
            let mut created = watches.iter();
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    let why = format!("watch canceled: {}", resp.cancel_reason());
                    return Err(Error::Interrupted(why));
                }
                let events = resp.events();
                if events.iter().any(relevant) {
                    return Ok(events.to_vec());
                }
                if !resp.created() {
                    continue;
                }
                // A watch that starts in the past is caught up by etcd's sync loop, every 100
                // ms: when the store moved on before the watch was created, look at one key at
                // once. (Not at a range: the job's writes under a lock's prefix would make every
                // watch of the leader a read.)
                let moved = resp.header().is_some_and(|h| h.revision() >= from);
                if let Some((key, None)) = created.next() {
                    if moved && self.changed_since(key, from).await? {
                        return Ok(Vec::new());
                    }
                }
            }
            Err(Error::Interrupted("watch stream ended".into()))
        };
        let r = tokio::select! {
            r = watch => r,
            _ = new_connection => Err(Error::Replaced),
        };
        r.inspect_err(|e| self.after_failure(e))
    }

    /// Whether `key` was put or deleted at revision `from` or later.
    async fn changed_since(&self, key: &[u8], from: i64) -> Result<bool> {
        let keys_only = || Some(GetOptions::new().with_keys_only());
        if let Some(kv) = self.get(key, keys_only()).await?.kvs().first() {
            return Ok(kv.mod_revision() >= from);
        }
        // Gone now: was it there before `from`? (Compacted: assume it changed, and read again.)
        let before = GetOptions::new().with_keys_only().with_revision(from - 1);
        Ok(match self.get(key, Some(before)).await {
            Ok(r) => !r.kvs().is_empty(),
            Err(_) => true,
        })
    }
}

/// A watch kept open across changes ([`Etcd::follow`]).
pub struct Follow {
    etcd: Etcd,
    stream: WatchStream,
    /// [`Etcd::replacements`] when it was made.
    made: u64,
}

impl Follow {
    /// The next changes, in the order etcd made them (those of one transaction together). An
    /// error means the stream broke, or its connection was replaced, maybe between two calls:
    /// the caller reads again.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>> {
        let etcd = &self.etcd;
        // Made before the check: a replacement after it wakes it (one thread, no await between).
        let new_connection = etcd.replaced.notified();
        if etcd.replacements.get() != self.made {
            return Err(Error::Replaced);
        }
        let stream = &mut self.stream;
        let watch = async {
            while let Some(resp) = stream.message().await? {
                if resp.canceled() {
                    let why = format!("watch canceled: {}", resp.cancel_reason());
                    return Err(Error::Interrupted(why));
                }
                if !resp.events().is_empty() {
                    return Ok(resp.events().to_vec());
                }
            }
            Err(Error::Interrupted("watch stream ended".into()))
        };
        let r = tokio::select! {
            r = watch => r,
            _ = new_connection => Err(Error::Replaced),
        };
        r.inspect_err(|e| etcd.after_failure(e))
    }
}
