//! The offline journal: a crash-safe, bounded, on-disk write-ahead log of the agent's outgoing
//! QoS 1 messages.
//!
//! The agent journals a message with [`Journal::append`] before publishing it, and calls
//! [`Journal::ack`] once the server acknowledged it (PUBACK); acknowledgements may come in any
//! order.
//! After a crash (kill -9 of the agent, and power loss too when [`JournalOptions::sync`] is on),
//! [`Journal::open`] returns every record appended and not yet acknowledged, in append order, to be
//! sent again.
//! Duplicates after a crash are possible (QoS 1 allows them); loss is not.
//!
//! # Bound
//!
//! The live (unacknowledged) records take at most [`JournalOptions::max_bytes`], counted as their
//! size on disk: the payload plus a 17-byte frame header.
//! When an append would exceed the bound, the oldest live records are discarded to make room and
//! their seqs returned: for telemetry, recent readings are worth more than old ones (the policy of
//! the in-memory offline buffer).
//! A discarded record counts as acknowledged: it does not come back on reopen.
//! A record that cannot fit even in an empty journal is refused with [`JournalError::TooLarge`].
//! If `max_bytes` shrank since the journal was written, `open` still returns every live record and
//! the next append discards down to the bound.
//!
//! # Files
//!
//! Everything lives in one directory, which the journal locks (advisory lock on `lock`) so that two
//! agents cannot interleave writes:
//!
//! - `journal-{id:020}.log`: segments of records, in the order written.
//!   The `id` is the next seq when the segment was created; segments are read in `id` order.
//!   Records are appended to the newest segment (the *active* one); the journal rolls to a new
//!   segment when the active one reached the segment size (`max_bytes / 4` clamped to 64 KiB–1 MiB).
//! - `acks.log`: which records are acknowledged.
//!   It starts with a *snapshot* entry (seq field = a watermark `W`, payload = the live seqs below
//!   `W` as `u64` LE) meaning "every seq below `W` that is not listed is acknowledged", followed by
//!   one *ack* entry (seq field = the acknowledged seq, empty payload) per acknowledgement since.
//!   When it grows past 64 KiB and twice the size of its snapshot, it is rewritten as one snapshot
//!   (`W` = next seq) in `acks.log.tmp` and renamed over `acks.log`; `open` always does this.
//!
//! Every entry of either file is one frame, integers little-endian:
//!
//! ```text
//! [u32 body length = 9 + payload length][u32 CRC-32 (IEEE) of the body]
//! body: [u64 seq][u8 channel][payload]
//! ```
//!
//! In `acks.log` the channel byte is the entry kind (0 snapshot, 1 ack).
//!
//! # Recovery
//!
//! `open` reads `acks.log`, then every segment, and keeps the records that are still live.
//! A frame that is incomplete or fails its checksum ends the reading of its file:
//! in the active segment it is the torn tail of an interrupted write, and the file is truncated
//! there (with a warning) so that appends continue after the last intact record;
//! in an older segment the rest of that segment is skipped (with a warning) and later segments are
//! still read.
//! A damaged or missing `acks.log` only makes acknowledged records come back (duplicates), never
//! lose live ones.
//! No file content makes `open` panic or fail: only I/O errors do.
//! Seqs stay strictly increasing across restarts: the next seq is derived from the highest seq in the
//! segments and in `acks.log`, the snapshot watermark, and the id of the newest segment (which is
//! never deleted, even when everything is acknowledged).
//!
//! # Reclaiming space
//!
//! Memory holds no payload: only `(seq, segment, offset, size)` of each live record, in seq order,
//! and per-segment counters.
//! A segment other than the active one is deleted as soon as it holds no live record.
//! So that a few records that stay unacknowledged cannot pin many segments, when the segments take
//! more than `2 × max_bytes +` one segment size on disk, older segments that are at least half dead
//! are compacted: their live records are copied (same seq, same bytes) to the active segment, then
//! the segment is deleted; `open` keeps one copy of each seq.
//! Disk use thus stays within about `4 × max_bytes` plus two segment sizes.
//!
//! # Durability and fsync policy
//!
//! Every change is written to the operating system before the method returns, so it survives the
//! agent being killed.
//! With `sync` on, it also survives power loss: a segment is `fdatasync`ed after each append (and
//! after each compaction copy), `acks.log` after each appended entry and before each rename, and the
//! directory is `fsync`ed after a file is created, renamed or deleted (directory sync is skipped on
//! non-Unix systems).
//!
//! # Blocking
//!
//! All methods do synchronous file I/O: small appends, plus an fsync each when `sync` is on, and now
//! and then a segment deletion, a compaction copy or an `acks.log` rewrite.
//! The agent calls them from its own task, where such short blocking is acceptable; `open` reads the
//! whole journal and is best called once at startup (or via `spawn_blocking`).

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// A journaled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Unique, strictly increasing in append order, also across restarts.
    pub(crate) seq: u64,
    /// What kind of message this is; opaque to the journal.
    pub(crate) channel: u8,
    /// The message; opaque to the journal.
    pub(crate) payload: Bytes,
}

/// How large a journal may grow and how hard it works for durability.
#[derive(Debug, Clone)]
pub(crate) struct JournalOptions {
    /// The most bytes of live records (payload plus 17 bytes of framing each) the journal keeps;
    /// beyond, the oldest are discarded.
    pub(crate) max_bytes: u64,
    /// Whether to fsync each change, so that it survives power loss and not just a crash of the
    /// agent (see the module documentation).
    pub(crate) sync: bool,
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JournalError {
    /// A file operation failed.
    /// After a failed `append` the record is not in the journal; after a failed `ack` the
    /// acknowledgement holds in memory and is persisted by a later write, or else the record comes
    /// back (as a duplicate) on reopen.
    #[error("journal i/o failed on {}", .path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The record can never fit: its framed size is over `max_bytes` (or over the 4 GiB the frame
    /// format allows).
    #[error("record of {size} bytes is larger than the journal limit of {limit} bytes")]
    TooLarge {
        /// The record's size with its framing.
        size: u64,
        /// The largest size accepted.
        limit: u64,
    },
    /// Another journal, in this process or another, has the directory open.
    #[error("journal directory {} is in use by another agent", .dir.display())]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// Every seq has been used: only reachable with a forged journal file.
    #[error("journal sequence numbers are exhausted")]
    SeqExhausted,
}

/// The on-disk write-ahead journal of outgoing messages (see the module documentation).
#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    options: JournalOptions,
    tuning: Tuning,
    /// Holds the directory's advisory lock until the journal is dropped.
    _lock: File,
    /// The seq the next append gets.
    next_seq: u64,
    /// Where each live record is, in seq order.
    live: VecDeque<Live>,
    /// The sum of the sizes in `live`.
    live_bytes: u64,
    /// Segments older than the active one, in id order; each holds at least one live record
    /// (segments whose last live record goes are deleted).
    sealed: VecDeque<Segment>,
    /// The segment appends go to: always the newest, never deleted while the journal is open.
    active: Segment,
    active_file: File,
    /// A failed write to the active segment could not be undone: roll before the next write.
    active_broken: bool,
    /// The size of all segment files.
    disk_bytes: u64,
    /// `acks.log`, positioned at its end.
    acks_file: File,
    acks_len: u64,
    /// The size of the snapshot that starts `acks.log`.
    snapshot_len: u64,
    /// An acknowledgement held in memory may be missing from `acks.log` (a write to it failed): the
    /// next persistence rewrites the file from memory.
    acks_dirty: bool,
}

impl Journal {
    /// Opens (creating the directory and files if needed) the journal in `dir`; returns it and the
    /// live records in order.
    ///
    /// Truncates a torn tail of the active segment, deletes segments without live records and
    /// rewrites `acks.log` as one snapshot.
    ///
    /// # Errors
    ///
    /// [`JournalError::Locked`] when another journal has `dir` open, [`JournalError::Io`] when a
    /// file operation fails. Damaged file contents are not an error (see the module documentation).
    pub(crate) fn open(
        dir: &Path,
        options: JournalOptions,
    ) -> Result<(Journal, Vec<Record>), JournalError> {
        let tuning = Tuning::for_options(&options);
        Self::open_tuned(dir, options, tuning)
    }

    /// Appends a record; returns its seq (strictly increasing across restarts) and the seqs
    /// discarded to make room (oldest first).
    ///
    /// The record is written to the operating system (and synced when `sync` is on) before this
    /// returns.
    ///
    /// # Errors
    ///
    /// [`JournalError::TooLarge`] when the record alone exceeds `max_bytes`; [`JournalError::Io`]
    /// when writing it fails. In both cases nothing changed: the record is not journaled and nothing
    /// was discarded.
    pub(crate) fn append(
        &mut self,
        channel: u8,
        payload: &[u8],
    ) -> Result<(u64, Vec<u64>), JournalError> {
        let size = frame_size(payload.len());
        let limit = self.options.max_bytes.min(MAX_FRAME);
        if size > limit {
            return Err(JournalError::TooLarge { size, limit });
        }
        let seq = self.next_seq;
        let next_seq = seq.checked_add(1).ok_or(JournalError::SeqExhausted)?;
        if self.active_broken || self.active.len >= self.tuning.segment_bytes {
            self.roll()?;
        }
        let frame = encode_frame(seq, channel, payload).map_err(io_at(&self.active_path()))?;
        let offset = self.write_active(&frame)?;
        self.next_seq = next_seq;
        self.live.push_back(Live { seq, segment: self.active.id, offset, size });
        self.live_bytes += size;
        self.active.live_count += 1;
        self.active.live_bytes += size;

        // The new record is at most `max_bytes` on its own, so it is never discarded here.
        let mut discarded = Vec::new();
        while self.live_bytes > self.options.max_bytes {
            let Some(oldest) = self.live.pop_front() else { break };
            self.forget(&oldest);
            discarded.push(oldest.seq);
        }
        // The record is journaled: housekeeping failures below must not turn that into an error.
        // A discard that fails to persist only brings the record back on reopen.
        if let Err(error) = self.persist_acks(&discarded) {
            tracing::warn!(error = &error as &dyn std::error::Error, "failed to persist discards");
        }
        self.reclaim();
        self.compact_acks_if_large();
        Ok((seq, discarded))
    }

    /// Marks `seq` acknowledged (unknown or already acknowledged seq: no-op). Space is reclaimed
    /// lazily: a segment goes when its last live record does.
    ///
    /// # Errors
    ///
    /// [`JournalError::Io`] when persisting the acknowledgement fails. It still holds in memory and
    /// is persisted by the next successful write to `acks.log`; if the agent crashes before, the
    /// record comes back on reopen (a duplicate, allowed by QoS 1).
    pub(crate) fn ack(&mut self, seq: u64) -> Result<(), JournalError> {
        let Ok(index) = self.live.binary_search_by_key(&seq, |live| live.seq) else {
            return Ok(());
        };
        let Some(entry) = self.live.remove(index) else { return Ok(()) };
        // Deleting the segment before the acknowledgement is durable is safe: if the agent
        // crashes in between, the record is gone, which is what the acknowledgement means anyway.
        self.forget(&entry);
        self.persist_acks(&[seq])?;
        self.compact_acks_if_large();
        Ok(())
    }

    /// How many records are live (appended, neither acknowledged nor discarded).
    #[cfg(test)]
    pub(crate) fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The size of the live records, framing included: what `max_bytes` bounds.
    #[cfg(test)]
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    fn open_tuned(
        dir: &Path,
        options: JournalOptions,
        tuning: Tuning,
    ) -> Result<(Journal, Vec<Record>), JournalError> {
        create_dir(dir, options.sync)?;
        let lock = lock_dir(dir)?;
        let tmp = dir.join(ACKS_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_at(&tmp)(error)),
        }
        let acks = AckState::read(&dir.join(ACKS_FILE))?;

        let ids = list_segments(dir)?;
        let mut segments = Vec::with_capacity(ids.len());
        let mut found = Vec::new();
        let mut max_seq = None;
        for (index, &id) in ids.iter().enumerate() {
            let is_active = index + 1 == ids.len();
            let path = segment_path(dir, id);
            let data = fs::read(&path).map_err(io_at(&path))?;
            let mut offset = 0;
            let mut len = data.len() as u64;
            while let Some(rest) = data.get(offset..) {
                match parse_frame(rest) {
                    Parsed::End => break,
                    Parsed::Bad(reason) => {
                        if is_active {
                            tracing::warn!(
                                path = %path.display(), offset, dropped_bytes = rest.len(), reason,
                                "truncating the torn tail of the journal"
                            );
                            truncate(&path, offset as u64, options.sync)?;
                            len = offset as u64;
                        } else {
                            tracing::warn!(
                                path = %path.display(), offset, skipped_bytes = rest.len(), reason,
                                "journal segment is damaged: skipping the rest of it"
                            );
                        }
                        break;
                    }
                    Parsed::Frame(frame) => {
                        max_seq = max_seq.max(Some(frame.seq));
                        if acks.is_live(frame.seq) {
                            found.push(Found {
                                record: Record {
                                    seq: frame.seq,
                                    channel: frame.channel,
                                    payload: Bytes::copy_from_slice(frame.payload),
                                },
                                segment: id,
                                offset: offset as u64,
                                size: frame.len as u64,
                            });
                        }
                        offset += frame.len;
                    }
                }
            }
            segments.push(Segment { id, len, live_count: 0, live_bytes: 0 });
        }

        // Compaction may have left two copies of a record: keep the newer one, so that the older
        // segment can go. The sort is stable and segments were read in order.
        found.sort_by_key(|found| found.record.seq);
        let mut unique: Vec<Found> = Vec::with_capacity(found.len());
        for record in found {
            if unique.last().is_some_and(|last| last.record.seq == record.record.seq) {
                unique.pop();
            }
            unique.push(record);
        }

        let next_seq = [
            acks.watermark,
            max_seq.map_or(0, |seq: u64| seq.saturating_add(1)),
            acks.max_acked.map_or(0, |seq: u64| seq.saturating_add(1)),
            ids.last().copied().unwrap_or(0),
        ]
        .into_iter()
        .fold(FIRST_SEQ, u64::max);

        let mut live = VecDeque::with_capacity(unique.len());
        let mut live_bytes = 0;
        let mut records = Vec::with_capacity(unique.len());
        for Found { record, segment, offset, size } in unique {
            if let Ok(index) = segments.binary_search_by_key(&segment, |segment| segment.id) {
                segments[index].live_count += 1;
                segments[index].live_bytes += size;
            }
            live.push_back(Live { seq: record.seq, segment, offset, size });
            live_bytes += size;
            records.push(record);
        }
        let disk_bytes = segments.iter().map(|segment| segment.len).sum();
        let active = segments.pop().unwrap_or(Segment {
            id: next_seq,
            len: 0,
            live_count: 0,
            live_bytes: 0,
        });
        let active_file = open_for_append(&segment_path(dir, active.id))?;
        // Also makes a newly created active segment durable: it syncs the directory.
        let (acks_file, acks_len) = write_snapshot(dir, options.sync, next_seq, &live)?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            options,
            tuning,
            _lock: lock,
            next_seq,
            live,
            live_bytes,
            sealed: segments.into(),
            active,
            active_file,
            active_broken: false,
            disk_bytes,
            acks_file,
            acks_len,
            snapshot_len: acks_len,
            acks_dirty: false,
        };
        let dead: Vec<u64> = journal
            .sealed
            .iter()
            .filter(|segment| segment.live_count == 0)
            .map(|segment| segment.id)
            .collect();
        for id in dead {
            journal.delete_sealed(id);
        }
        Ok((journal, records))
    }

    /// Starts a new active segment.
    fn roll(&mut self) -> Result<(), JournalError> {
        let id = self.next_seq.max(self.active.id.saturating_add(1));
        let path = segment_path(&self.dir, id);
        let file = open_for_append(&path)?;
        // A file of that name cannot hold anything of ours (its id is above every segment read at
        // open): clear whatever it holds.
        file.set_len(0).map_err(io_at(&path))?;
        if self.options.sync {
            sync_dir(&self.dir)?;
        }
        let new = Segment { id, len: 0, live_count: 0, live_bytes: 0 };
        let old = std::mem::replace(&mut self.active, new);
        self.active_file = file;
        self.active_broken = false;
        let old_id = old.id;
        let dead = old.live_count == 0;
        self.sealed.push_back(old);
        if dead {
            self.delete_sealed(old_id);
        }
        Ok(())
    }

    /// Appends `bytes` (whole frames) to the active segment; returns the offset they start at.
    /// On failure, undoes the partial write so that later frames stay readable.
    fn write_active(&mut self, bytes: &[u8]) -> Result<u64, JournalError> {
        let offset = self.active.len;
        let sync = self.options.sync;
        let written = self
            .active_file
            .write_all(bytes)
            .and_then(|()| if sync { self.active_file.sync_data() } else { Ok(()) });
        if let Err(error) = written {
            let path = self.active_path();
            if let Err(undo) = self.active_file.set_len(offset) {
                tracing::warn!(
                    path = %path.display(), error = &undo as &dyn std::error::Error,
                    "failed to undo a partial journal write: rolling to a new segment"
                );
                self.active_broken = true;
            }
            return Err(io_at(&path)(error));
        }
        let len = bytes.len() as u64;
        self.active.len += len;
        self.disk_bytes += len;
        Ok(offset)
    }

    /// Updates the counters for a record no longer live (already out of `live`), and deletes its
    /// segment if that was its last live record.
    fn forget(&mut self, entry: &Live) {
        self.live_bytes = self.live_bytes.saturating_sub(entry.size);
        let Some(segment) = self.segment_mut(entry.segment) else { return };
        segment.live_count = segment.live_count.saturating_sub(1);
        segment.live_bytes = segment.live_bytes.saturating_sub(entry.size);
        if segment.live_count == 0 && entry.segment != self.active.id {
            self.delete_sealed(entry.segment);
        }
    }

    /// Deletes a sealed segment. A failure leaves a file whose records are all acknowledged, which
    /// reopening deletes again: it is only logged.
    fn delete_sealed(&mut self, id: u64) {
        let Ok(index) = self.sealed.binary_search_by_key(&id, |segment| segment.id) else {
            return;
        };
        let Some(segment) = self.sealed.remove(index) else { return };
        self.disk_bytes = self.disk_bytes.saturating_sub(segment.len);
        let path = segment_path(&self.dir, id);
        let removed = match fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_at(&path)(error)),
            _ if self.options.sync => sync_dir(&self.dir),
            _ => Ok(()),
        };
        if let Err(error) = removed {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "failed to delete an acknowledged journal segment"
            );
        }
    }

    /// Records in `acks.log` that `seqs` are acknowledged (or discarded).
    fn persist_acks(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        if seqs.is_empty() {
            return Ok(());
        }
        if self.acks_dirty {
            return self.compact_acks();
        }
        let path = self.dir.join(ACKS_FILE);
        let mut entries = Vec::with_capacity(seqs.len() * FRAME_HEADER);
        for &seq in seqs {
            entries.extend(encode_frame(seq, ACK, &[]).map_err(io_at(&path))?);
        }
        let sync = self.options.sync;
        let written = self
            .acks_file
            .write_all(&entries)
            .and_then(|()| if sync { self.acks_file.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => {
                self.acks_len += entries.len() as u64;
                Ok(())
            }
            Err(error) => {
                // The file may now end with a partial entry: rewrite it before using it again.
                self.acks_dirty = true;
                Err(io_at(&path)(error))
            }
        }
    }

    fn compact_acks_if_large(&mut self) {
        let threshold = self.tuning.acks_compact_bytes.max(self.snapshot_len.saturating_mul(2));
        if (self.acks_dirty || self.acks_len > threshold)
            && let Err(error) = self.compact_acks()
        {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "failed to compact the journal's ack log"
            );
        }
    }

    /// Rewrites `acks.log` as one snapshot of the live set.
    fn compact_acks(&mut self) -> Result<(), JournalError> {
        let written = write_snapshot(&self.dir, self.options.sync, self.next_seq, &self.live);
        let (file, len) = written.inspect_err(|_| {
            // The handle may now be a replaced file: never append to it again.
            self.acks_dirty = true;
        })?;
        self.acks_file = file;
        self.acks_len = len;
        self.snapshot_len = len;
        self.acks_dirty = false;
        Ok(())
    }

    /// Keeps the segments' disk use bounded when a few live records are spread over many segments,
    /// by compacting old, mostly dead segments. Failures are logged: space is then reclaimed later.
    fn reclaim(&mut self) {
        let limit =
            self.options.max_bytes.saturating_mul(2).saturating_add(self.tuning.segment_bytes);
        while self.disk_bytes > limit {
            let candidate = self
                .sealed
                .iter()
                .find(|segment| segment.live_bytes.saturating_mul(2) <= segment.len)
                .map(|segment| segment.id);
            let Some(id) = candidate else { break };
            if let Err(error) = self.compact_segment(id) {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "failed to compact a journal segment"
                );
                break;
            }
        }
    }

    /// Copies the live records of sealed segment `id` to the active segment, then deletes it.
    fn compact_segment(&mut self, id: u64) -> Result<(), JournalError> {
        let moving: Vec<Live> =
            self.live.iter().filter(|live| live.segment == id).copied().collect();
        if !moving.is_empty() {
            if self.active_broken {
                self.roll()?;
            }
            let path = segment_path(&self.dir, id);
            let mut file = File::open(&path).map_err(io_at(&path))?;
            let mut copies = Vec::new();
            let mut moved = Vec::with_capacity(moving.len());
            for entry in moving {
                let start = copies.len();
                let size = usize::try_from(entry.size).unwrap_or(usize::MAX);
                let read = (|| {
                    copies.try_reserve(size).map_err(|_| io::ErrorKind::OutOfMemory)?;
                    copies.resize(start + size, 0);
                    file.seek(SeekFrom::Start(entry.offset))?;
                    file.read_exact(&mut copies[start..])
                })();
                let intact = read.is_ok()
                    && matches!(
                        parse_frame(&copies[start..]),
                        Parsed::Frame(frame) if frame.seq == entry.seq && frame.len == size
                    );
                if intact {
                    moved.push((entry, start as u64));
                } else {
                    // Damaged since it was written: it would not survive a reopen either.
                    tracing::warn!(
                        path = %path.display(), seq = entry.seq, offset = entry.offset,
                        "dropping a damaged journal record"
                    );
                    copies.truncate(start);
                    if let Ok(index) = self.live.binary_search_by_key(&entry.seq, |live| live.seq) {
                        self.live.remove(index);
                        self.forget(&entry);
                    }
                }
            }
            if !copies.is_empty() {
                let base = self.write_active(&copies)?;
                for (entry, relative) in moved {
                    let Ok(index) = self.live.binary_search_by_key(&entry.seq, |live| live.seq)
                    else {
                        continue;
                    };
                    self.live[index].segment = self.active.id;
                    self.live[index].offset = base + relative;
                    self.active.live_count += 1;
                    self.active.live_bytes += entry.size;
                    if let Some(segment) = self.segment_mut(id) {
                        segment.live_count = segment.live_count.saturating_sub(1);
                        segment.live_bytes = segment.live_bytes.saturating_sub(entry.size);
                    }
                }
            }
        }
        match self.segment_mut(id) {
            // Deleted already if the only live records were damaged ones.
            None => Ok(()),
            Some(segment) if segment.live_count == 0 => {
                self.delete_sealed(id);
                Ok(())
            }
            Some(_) => Err(io_at(&segment_path(&self.dir, id))(io::Error::new(
                io::ErrorKind::InvalidData,
                "live records left after compacting the segment",
            ))),
        }
    }

    fn segment_mut(&mut self, id: u64) -> Option<&mut Segment> {
        if id == self.active.id {
            return Some(&mut self.active);
        }
        let index = self.sealed.binary_search_by_key(&id, |segment| segment.id).ok()?;
        self.sealed.get_mut(index)
    }

    fn active_path(&self) -> PathBuf {
        segment_path(&self.dir, self.active.id)
    }
}

/// The seq of the first record of a new journal.
const FIRST_SEQ: u64 = 1;
/// Frame header before the payload: length, checksum, seq, channel.
const FRAME_HEADER: usize = 17;
/// The largest frame the `u32` body length allows.
const MAX_FRAME: u64 = 8 + u32::MAX as u64;
const ACKS_FILE: &str = "acks.log";
const ACKS_TMP: &str = "acks.log.tmp";
const LOCK_FILE: &str = "lock";
const SEGMENT_PREFIX: &str = "journal-";
const SEGMENT_SUFFIX: &str = ".log";
/// `acks.log` entry kinds, in the channel byte.
const SNAPSHOT: u8 = 0;
const ACK: u8 = 1;

/// Sizes that only tests change.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    /// The active segment rolls once it holds this many bytes.
    segment_bytes: u64,
    /// `acks.log` is compacted once larger than this (and than twice its snapshot).
    acks_compact_bytes: u64,
}

impl Tuning {
    fn for_options(options: &JournalOptions) -> Self {
        Self {
            segment_bytes: (options.max_bytes / 4).clamp(64 * 1024, 1024 * 1024),
            acks_compact_bytes: 64 * 1024,
        }
    }
}

/// Where a live record is.
#[derive(Debug, Clone, Copy)]
struct Live {
    seq: u64,
    /// The id of the segment holding it.
    segment: u64,
    offset: u64,
    /// Frame size.
    size: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    /// File size.
    len: u64,
    live_count: usize,
    live_bytes: u64,
}

/// A live record read by `open`.
struct Found {
    record: Record,
    segment: u64,
    offset: u64,
    size: u64,
}

/// What `acks.log` says, as read by `open`.
struct AckState {
    /// Seqs below it are acknowledged unless in `live_below`.
    watermark: u64,
    live_below: HashSet<u64>,
    acked: HashSet<u64>,
    max_acked: Option<u64>,
}

impl AckState {
    /// Reads `acks.log`; a missing or damaged file yields fewer acknowledgements, never an error.
    fn read(path: &Path) -> Result<Self, JournalError> {
        let mut state = Self {
            watermark: 0,
            live_below: HashSet::new(),
            acked: HashSet::new(),
            max_acked: None,
        };
        let data = match fs::read(path) {
            Ok(data) => data,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(state),
            Err(error) => return Err(io_at(path)(error)),
        };
        let mut offset = 0;
        while let Some(rest) = data.get(offset..) {
            let frame = match parse_frame(rest) {
                Parsed::End => break,
                Parsed::Bad(reason) => {
                    tracing::warn!(
                        path = %path.display(), offset, reason,
                        "journal ack log is damaged: acknowledged messages may be sent again"
                    );
                    break;
                }
                Parsed::Frame(frame) => frame,
            };
            match frame.channel {
                SNAPSHOT if offset == 0 => {
                    state.watermark = frame.seq;
                    state.live_below = frame
                        .payload
                        .chunks_exact(8)
                        .filter_map(|seq| seq.try_into().ok().map(u64::from_le_bytes))
                        .collect();
                }
                ACK => {
                    state.acked.insert(frame.seq);
                    state.max_acked = state.max_acked.max(Some(frame.seq));
                }
                kind => {
                    tracing::warn!(
                        path = %path.display(), offset, kind,
                        "unexpected entry in the journal ack log: ignoring the rest"
                    );
                    break;
                }
            }
            offset += frame.len;
        }
        Ok(state)
    }

    fn is_live(&self, seq: u64) -> bool {
        (seq >= self.watermark || self.live_below.contains(&seq)) && !self.acked.contains(&seq)
    }
}

fn frame_size(payload_len: usize) -> u64 {
    FRAME_HEADER as u64 + payload_len as u64
}

fn encode_frame(seq: u64, channel: u8, payload: &[u8]) -> io::Result<Vec<u8>> {
    let body_len =
        payload.len().checked_add(9).and_then(|len| u32::try_from(len).ok()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "journal frame too large")
        })?;
    let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
    frame.extend_from_slice(&body_len.to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.push(channel);
    frame.extend_from_slice(payload);
    let crc = crc32(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// One step of reading a file of frames.
enum Parsed<'a> {
    /// The input is empty.
    End,
    Frame(Frame<'a>),
    /// The input does not start with an intact frame.
    Bad(&'static str),
}

struct Frame<'a> {
    seq: u64,
    channel: u8,
    payload: &'a [u8],
    /// Size of the whole frame.
    len: usize,
}

/// Reads the frame at the start of `input`.
fn parse_frame(input: &[u8]) -> Parsed<'_> {
    if input.is_empty() {
        return Parsed::End;
    }
    let Some((&[l0, l1, l2, l3, c0, c1, c2, c3], rest)) = input.split_first_chunk::<8>() else {
        return Parsed::Bad("incomplete frame header");
    };
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let Some(body) = rest.get(..body_len) else {
        return Parsed::Bad("incomplete frame");
    };
    let Some((seq, rest)) = body.split_first_chunk::<8>() else {
        return Parsed::Bad("frame too short");
    };
    let Some((&channel, payload)) = rest.split_first() else {
        return Parsed::Bad("frame too short");
    };
    if crc32(body) != u32::from_le_bytes([c0, c1, c2, c3]) {
        return Parsed::Bad("checksum mismatch");
    }
    Parsed::Frame(Frame { seq: u64::from_le_bytes(*seq), channel, payload, len: 8 + body_len })
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as in zlib and Ethernet.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0; 256];
        let mut n = 0;
        while n < 256 {
            let mut crc = n as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
                bit += 1;
            }
            table[n] = crc;
            n += 1;
        }
        table
    };
    !bytes.iter().fold(!0, |crc, &byte| TABLE[usize::from((crc as u8) ^ byte)] ^ (crc >> 8))
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// Writes `acks.log` as one snapshot (watermark `next_seq`, the seqs of `live`): in `acks.log.tmp`,
/// renamed over. Returns the file, positioned at its end, and its size.
fn write_snapshot(
    dir: &Path,
    sync: bool,
    next_seq: u64,
    live: &VecDeque<Live>,
) -> Result<(File, u64), JournalError> {
    let tmp = dir.join(ACKS_TMP);
    let mut seqs = Vec::with_capacity(live.len() * 8);
    for entry in live {
        seqs.extend_from_slice(&entry.seq.to_le_bytes());
    }
    let snapshot = encode_frame(next_seq, SNAPSHOT, &seqs).map_err(io_at(&tmp))?;
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        file.write_all(&snapshot)?;
        if sync {
            file.sync_data()?;
        }
        Ok(file)
    })();
    let file = written.map_err(io_at(&tmp))?;
    let path = dir.join(ACKS_FILE);
    fs::rename(&tmp, &path).map_err(io_at(&path))?;
    if sync {
        sync_dir(dir)?;
    }
    // The handle now is `acks.log`: a rename keeps the file.
    Ok((file, snapshot.len() as u64))
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{id:020}{SEGMENT_SUFFIX}"))
}

/// The ids of the segment files in `dir`, in order; other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(digits) = name
            .to_str()
            .and_then(|name| name.strip_prefix(SEGMENT_PREFIX))
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        if digits.len() == 20
            && digits.bytes().all(|byte| byte.is_ascii_digit())
            && let Ok(id) = digits.parse()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn create_dir(dir: &Path, sync: bool) -> Result<(), JournalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    if sync {
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new().write(true).create(true).truncate(false).open(&path);
    let file = file.map_err(io_at(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(JournalError::Locked { dir: dir.to_path_buf() })
        }
        Err(std::fs::TryLockError::Error(error)) => Err(io_at(&path)(error)),
    }
}

fn open_for_append(path: &Path) -> Result<File, JournalError> {
    OpenOptions::new().append(true).create(true).open(path).map_err(io_at(path))
}

fn truncate(path: &Path, len: u64, sync: bool) -> Result<(), JournalError> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_at(path))?;
    file.set_len(len).map_err(io_at(path))?;
    if sync {
        file.sync_all().map_err(io_at(path))?;
    }
    Ok(())
}

/// Makes the creation, renaming and deletion of files in `dir` durable (Unix only: elsewhere a
/// directory cannot be opened to be synced).
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    if cfg!(unix) {
        File::open(dir).and_then(|dir| dir.sync_all()).map_err(io_at(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use crate::journal::*;

    /// The framed size of [`payload`]'s 10-byte messages.
    const TEN: u64 = 27;
    const BIG: u64 = 1 << 20;

    fn tuning(segment_bytes: u64) -> Tuning {
        Tuning { segment_bytes, acks_compact_bytes: 64 * 1024 }
    }

    #[track_caller]
    fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> (Journal, Vec<Record>) {
        let options = JournalOptions { max_bytes, sync: false };
        Journal::open_tuned(dir, options, tuning(segment_bytes)).unwrap()
    }

    /// A 10-byte message naming `n`.
    fn payload(n: u64) -> Vec<u8> {
        format!("message-{:02}", n % 100).into_bytes()
    }

    /// Appends `count` messages; returns their seqs.
    #[track_caller]
    fn append(journal: &mut Journal, count: u64) -> Vec<u64> {
        (0..count).map(|n| journal.append(7, &payload(n)).unwrap().0).collect()
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|record| record.seq).collect()
    }

    #[track_caller]
    fn check_reopen(dir: &Path, max_bytes: u64, segment_bytes: u64, expected: &[u64]) -> Journal {
        let (journal, records) = open(dir, max_bytes, segment_bytes);
        assert_eq!(seqs(&records), expected);
        assert_eq!(journal.live_count(), expected.len());
        journal
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with(SEGMENT_PREFIX))
            .collect();
        files.sort();
        files
    }

    fn last_segment(dir: &Path) -> PathBuf {
        segment_files(dir).pop().unwrap()
    }

    fn modify(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
        let mut data = fs::read(path).unwrap();
        change(&mut data);
        fs::write(path, data).unwrap();
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn reopen_returns_the_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, records) = open(dir.path(), BIG, BIG);
        assert!(records.is_empty());
        let one = journal.append(1, b"one").unwrap();
        let two = journal.append(2, b"").unwrap();
        let three = journal.append(3, b"three").unwrap();
        assert_eq!((one.0, two.0, three.0), (1, 2, 3));
        assert!(one.1.is_empty() && two.1.is_empty() && three.1.is_empty());
        drop(journal);

        let (journal, records) = open(dir.path(), BIG, BIG);
        let record = |seq, channel, payload: &'static [u8]| Record {
            seq,
            channel,
            payload: Bytes::from_static(payload),
        };
        assert_eq!(records, [record(1, 1, b"one"), record(2, 2, b""), record(3, 3, b"three")]);
        assert_eq!(journal.live_count(), 3);
        assert_eq!(journal.live_bytes(), 3 * 17 + 3 + 5);
    }

    #[test]
    fn reopen_skips_records_acknowledged_in_or_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), BIG, BIG);
        assert_eq!(append(&mut journal, 5), [1, 2, 3, 4, 5]);
        for seq in [1, 4, 4, 999, 0] {
            journal.ack(seq).unwrap();
        }
        assert_eq!(journal.live_count(), 3);
        assert_eq!(journal.live_bytes(), 3 * TEN);
        drop(journal);

        let mut journal = check_reopen(dir.path(), BIG, BIG, &[2, 3, 5]);
        journal.ack(3).unwrap();
        journal.ack(1).unwrap();
        drop(journal);
        let mut journal = check_reopen(dir.path(), BIG, BIG, &[2, 5]);
        journal.ack(5).unwrap();
        journal.ack(2).unwrap();
        drop(journal);
        check_reopen(dir.path(), BIG, BIG, &[]);
    }

    #[test]
    fn seqs_keep_increasing_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), BIG, 64);
        assert_eq!(append(&mut journal, 3), [1, 2, 3]);
        drop(journal);
        let (mut journal, _) = open(dir.path(), BIG, 64);
        assert_eq!(append(&mut journal, 10), (4..=13).collect::<Vec<_>>());
        for seq in 1..=13 {
            journal.ack(seq).unwrap();
        }
        // Everything is acknowledged: only the (empty) active segment is left.
        assert_eq!(segment_files(dir.path()).len(), 1);
        drop(journal);

        let mut journal = check_reopen(dir.path(), BIG, 64, &[]);
        assert_eq!(append(&mut journal, 1), [14]);
        journal.ack(14).unwrap();
        drop(journal);
        let mut journal = check_reopen(dir.path(), BIG, 64, &[]);
        assert_eq!(append(&mut journal, 1), [15]);
    }

    #[test]
    fn appends_past_the_bound_discard_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), 3 * TEN, BIG);
        assert_eq!(append(&mut journal, 3), [1, 2, 3]);
        assert_eq!(journal.append(0, &payload(4)).unwrap(), (4, vec![1]));
        // 47 bytes framed: two 27-byte records must go.
        assert_eq!(journal.append(0, &[b'x'; 30]).unwrap(), (5, vec![2, 3]));
        assert_eq!(journal.live_bytes(), TEN + 47);
        drop(journal);

        // A smaller bound: open still returns everything, the next append discards down to it.
        let mut journal = check_reopen(dir.path(), TEN, BIG, &[4, 5]);
        assert_eq!(journal.append(0, &payload(6)).unwrap(), (6, vec![4, 5]));
        drop(journal);
        check_reopen(dir.path(), TEN, BIG, &[6]);
    }

    #[test]
    fn a_record_larger_than_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), 3 * TEN, BIG);
        append(&mut journal, 2);
        let refused = journal.append(0, &[0; 65]);
        assert!(
            matches!(refused, Err(JournalError::TooLarge { size: 82, limit: 81 })),
            "{refused:?}"
        );
        assert_eq!(journal.live_count(), 2);
        // Exactly the bound fits, alone.
        assert_eq!(journal.append(0, &[0; 64]).unwrap(), (3, vec![1, 2]));
        drop(journal);
        check_reopen(dir.path(), 3 * TEN, BIG, &[3]);
    }

    /// Appends three records, damages the segment with `damage`, and checks that reopening returns
    /// `expected`, and that the journal then appends and reopens normally.
    #[track_caller]
    fn check_damaged_tail(damage: impl FnOnce(&mut Vec<u8>), expected: &[u64]) {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), BIG, BIG);
        append(&mut journal, 3);
        drop(journal);
        modify(&last_segment(dir.path()), damage);

        let mut journal = check_reopen(dir.path(), BIG, BIG, expected);
        let seq = journal.append(9, b"after").unwrap().0;
        assert!(seq > *expected.last().unwrap());
        drop(journal);
        let mut all = expected.to_vec();
        all.push(seq);
        let (_journal, records) = open(dir.path(), BIG, BIG);
        assert_eq!(seqs(&records), all);
        assert_eq!(records.last().unwrap().payload, &b"after"[..]);
    }

    #[test]
    fn a_torn_tail_is_truncated() {
        for cut in [1, 3, 8, 9, 26] {
            check_damaged_tail(|data| data.truncate(data.len() - cut), &[1, 2]);
        }
        // A torn header, shorter than a length field.
        check_damaged_tail(|data| data.truncate(data.len() - TEN as usize + 2), &[1, 2]);
        // A tail of zeros, as a file system may leave after a crash.
        check_damaged_tail(|data| data.extend([0; 40]), &[1, 2, 3]);
        check_damaged_tail(|data| data.extend([0xFF; 3]), &[1, 2, 3]);
    }

    #[test]
    fn a_last_record_failing_its_checksum_is_truncated() {
        let at_end = |offset: usize| {
            move |data: &mut Vec<u8>| {
                let index = data.len() - offset;
                data[index] ^= 1;
            }
        };
        check_damaged_tail(at_end(1), &[1, 2]); // payload
        check_damaged_tail(at_end(11), &[1, 2]); // channel
        check_damaged_tail(at_end(15), &[1, 2]); // seq
        check_damaged_tail(at_end(21), &[1, 2]); // checksum
        check_damaged_tail(at_end(27), &[1, 2]); // length: now longer than the file
        check_damaged_tail(|data| data[2 * TEN as usize] = 5, &[1, 2]); // length: too short
    }

    #[test]
    fn a_damaged_older_segment_is_skipped_from_the_damage_on() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), BIG, 2 * TEN);
        append(&mut journal, 7);
        drop(journal);
        let segments = segment_files(dir.path());
        assert_eq!(segments.len(), 4);
        // In the second segment, the first record of [3, 4].
        modify(&segments[1], |data| data[20] ^= 0x40);

        let mut journal = check_reopen(dir.path(), BIG, 2 * TEN, &[1, 2, 5, 6, 7]);
        // Nothing live is left in it: deleted.
        assert_eq!(segment_files(dir.path()).len(), 3);
        assert_eq!(append(&mut journal, 1), [8]);
    }

    #[test]
    fn acknowledged_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        // Three records per segment: the fourth append finds 81 >= 64 bytes and rolls.
        let (mut journal, _) = open(dir.path(), BIG, 64);
        append(&mut journal, 20);
        assert_eq!(segment_files(dir.path()).len(), 7);
        for seq in (1..=10).rev() {
            journal.ack(seq).unwrap();
        }
        // [1-3], [4-6] and [7-9] are gone, [10-12] has live records.
        assert_eq!(segment_files(dir.path()).len(), 4);
        for seq in [20, 19, 12, 11] {
            journal.ack(seq).unwrap();
        }
        // [10-12] is gone; the active segment [19-20] stays.
        assert_eq!(segment_files(dir.path()).len(), 3);
        assert_eq!(disk_usage(dir.path()), journal.disk_bytes);
        drop(journal);
        check_reopen(dir.path(), BIG, 64, &[13, 14, 15, 16, 17, 18]);
    }

    fn disk_usage(dir: &Path) -> u64 {
        segment_files(dir).iter().map(|path| fs::metadata(path).unwrap().len()).sum()
    }

    #[test]
    fn a_few_stuck_records_do_not_pin_many_segments() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = 10 * TEN;
        let (mut journal, _) = open(dir.path(), max_bytes, 64);
        let mut live = Vec::new();
        for n in 0..200 {
            let (seq, discarded) = journal.append(0, &payload(n)).unwrap();
            live.retain(|seq| !discarded.contains(seq));
            // One record in three stays unacknowledged, one per segment.
            if n % 3 == 0 {
                live.push(seq);
            } else {
                journal.ack(seq).unwrap();
            }
            assert!(journal.disk_bytes <= 2 * max_bytes + 64, "{} bytes", journal.disk_bytes);
            assert_eq!(disk_usage(dir.path()), journal.disk_bytes);
        }
        // Ten stuck records fill the bound (the eleventh discards the oldest).
        assert!(live.len() >= 9, "{live:?}");
        drop(journal);
        let (_journal, records) = open(dir.path(), max_bytes, 64);
        assert_eq!(seqs(&records), live);
        let expected: Vec<Bytes> = live.iter().map(|seq| payload(seq - 1).into()).collect();
        assert_eq!(records.into_iter().map(|record| record.payload).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn the_ack_log_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions { max_bytes: BIG, sync: false };
        let tuning = Tuning { segment_bytes: 256, acks_compact_bytes: 256 };
        let (mut journal, _) = Journal::open_tuned(dir.path(), options.clone(), tuning).unwrap();
        let mut kept = Vec::new();
        for n in 0..300 {
            let seq = journal.append(0, &payload(n)).unwrap().0;
            if n % 50 == 0 {
                kept.push(seq);
            } else {
                journal.ack(seq).unwrap();
            }
            let acks = fs::metadata(dir.path().join(ACKS_FILE)).unwrap().len();
            assert!(acks <= 256 + 17, "acks.log is {acks} bytes");
        }
        drop(journal);
        let (_journal, records) = Journal::open_tuned(dir.path(), options, tuning).unwrap();
        assert_eq!(seqs(&records), kept);
    }

    #[test]
    fn a_damaged_ack_log_brings_records_back_rather_than_losing_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = open(dir.path(), BIG, BIG);
        append(&mut journal, 4);
        journal.ack(2).unwrap();
        journal.ack(3).unwrap();
        drop(journal);
        modify(&dir.path().join(ACKS_FILE), |data| data[10] ^= 1);
        drop(check_reopen(dir.path(), BIG, BIG, &[1, 2, 3, 4]));

        let mut journal = check_reopen(dir.path(), BIG, BIG, &[1, 2, 3, 4]);
        journal.ack(1).unwrap();
        drop(journal);
        fs::remove_file(dir.path().join(ACKS_FILE)).unwrap();
        let mut journal = check_reopen(dir.path(), BIG, BIG, &[1, 2, 3, 4]);
        assert_eq!(append(&mut journal, 1), [5]);
    }

    #[test]
    fn unknown_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["notes.txt", "journal-12.log", "journal-0000000000000000000x.log", ACKS_TMP] {
            fs::write(dir.path().join(name), b"not ours").unwrap();
        }
        let (mut journal, records) = open(dir.path(), BIG, BIG);
        assert!(records.is_empty());
        append(&mut journal, 2);
        drop(journal);
        check_reopen(dir.path(), BIG, BIG, &[1, 2]);
        assert!(dir.path().join("notes.txt").exists());
        assert!(!dir.path().join(ACKS_TMP).exists());
    }

    #[test]
    fn a_directory_is_opened_by_one_journal_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), BIG, BIG);
        let second = Journal::open(dir.path(), JournalOptions { max_bytes: BIG, sync: false });
        assert!(matches!(second, Err(JournalError::Locked { .. })), "{second:?}");
        drop(journal);
        check_reopen(dir.path(), BIG, BIG, &[]);
    }

    #[test]
    fn open_creates_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var").join("herd");
        let options = JournalOptions { max_bytes: BIG, sync: true };
        let (mut journal, _) = Journal::open(&path, options.clone()).unwrap();
        journal.append(0, b"a").unwrap();
        drop(journal);
        let (_journal, records) = Journal::open(&path, options).unwrap();
        assert_eq!(seqs(&records), [1]);
    }

    /// What the journal should hold.
    struct Model {
        live: BTreeMap<u64, (u8, Vec<u8>)>,
        bytes: u64,
        max_bytes: u64,
    }

    impl Model {
        /// Adds a record; returns the seqs to discard, oldest first.
        fn append(&mut self, seq: u64, channel: u8, payload: Vec<u8>) -> Vec<u64> {
            self.bytes += frame_size(payload.len());
            self.live.insert(seq, (channel, payload));
            let mut discarded = Vec::new();
            while self.bytes > self.max_bytes {
                let (seq, (_, payload)) = self.live.pop_first().unwrap();
                self.bytes -= frame_size(payload.len());
                discarded.push(seq);
            }
            discarded
        }

        fn ack(&mut self, seq: u64) {
            if let Some((_, payload)) = self.live.remove(&seq) {
                self.bytes -= frame_size(payload.len());
            }
        }

        fn records(&self) -> Vec<Record> {
            let record = |(&seq, (channel, payload)): (&u64, &(u8, Vec<u8>))| Record {
                seq,
                channel: *channel,
                payload: Bytes::copy_from_slice(payload),
            };
            self.live.iter().map(record).collect()
        }
    }

    #[test]
    fn random_appends_acks_and_crashes_match_a_model() {
        for seed in 0..24 {
            let mut rng = StdRng::seed_from_u64(seed);
            let max_bytes = rng.random_range(60..1500);
            let options = JournalOptions { max_bytes, sync: seed % 6 == 0 };
            let tuning = Tuning {
                segment_bytes: rng.random_range(20..400),
                acks_compact_bytes: rng.random_range(40..600),
            };
            let disk_bound = 4 * max_bytes + 2 * tuning.segment_bytes;
            let dir = tempfile::tempdir().unwrap();
            let reopen = || Journal::open_tuned(dir.path(), options.clone(), tuning).unwrap();
            let (mut journal, _) = reopen();
            let mut model = Model { live: BTreeMap::new(), bytes: 0, max_bytes };
            let mut last_seq = 0;
            for step in 0..400 {
                let context = format!("seed {seed}, step {step}");
                match rng.random_range(0..100) {
                    0..50 => {
                        let len = if rng.random_bool(0.03) {
                            rng.random_range(0..max_bytes as usize)
                        } else {
                            rng.random_range(0..40)
                        };
                        let mut payload = vec![0; len];
                        rng.fill(&mut payload[..]);
                        let channel = rng.random();
                        match journal.append(channel, &payload) {
                            Ok((seq, discarded)) => {
                                assert!(seq > last_seq, "{context}");
                                last_seq = seq;
                                assert_eq!(
                                    discarded,
                                    model.append(seq, channel, payload),
                                    "{context}"
                                );
                            }
                            Err(JournalError::TooLarge { size, .. }) => {
                                assert!(size > max_bytes, "{context}");
                            }
                            Err(error) => panic!("{context}: {error}"),
                        }
                    }
                    50..80 if !model.live.is_empty() => {
                        let index = rng.random_range(0..model.live.len());
                        let seq = *model.live.keys().nth(index).unwrap();
                        journal.ack(seq).unwrap();
                        model.ack(seq);
                    }
                    50..88 => {
                        let seq = rng.random_range(0..last_seq + 3);
                        journal.ack(seq).unwrap();
                        model.ack(seq);
                    }
                    roll => {
                        drop(journal);
                        if roll >= 94 {
                            // A crash in the middle of writing a record.
                            let torn = encode_frame(last_seq + 1, 0, &[1; 30]).unwrap();
                            let mut garbage = torn[..rng.random_range(1..torn.len())].to_vec();
                            if roll >= 98 {
                                rng.fill(&mut garbage[..]);
                            }
                            modify(&last_segment(dir.path()), |data| data.extend(garbage));
                        }
                        let records;
                        (journal, records) = reopen();
                        assert_eq!(records, model.records(), "{context}");
                    }
                }
                assert_eq!(journal.live_count(), model.live.len(), "{context}");
                assert_eq!(journal.live_bytes(), model.bytes, "{context}");
                assert_eq!(journal.disk_bytes, disk_usage(dir.path()), "{context}");
                assert!(journal.disk_bytes <= disk_bound, "{context}: {}", journal.disk_bytes);
            }
            drop(journal);
            let (_journal, records) = reopen();
            assert_eq!(records, model.records(), "seed {seed}");
        }
    }
}
