//! Following the global log page by page, read in chunks of several pages
//! that the store sends on as it reads them, with the next chunk read ahead.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::store::{EventStore, LogSlice, ReadEnd};
use crate::types::{EventFilter, Position, RecordedEvent};

/// The most events a [`LogReader`] asks the store for at once, unless
/// [`LogReader::read_size`] says otherwise: the most whole pages that fit,
/// and at least one page. Each read of a store has a cost of its own (a
/// round trip, the statement's start, the pause between one read's last
/// event and the next read's first), which large reads spread thin; the
/// bytes a read may take ([`DEFAULT_READ_BYTES`]) bound its memory.
pub const DEFAULT_READ_SIZE: usize = 32_768;

/// About how many bytes of events a [`LogReader`] asks the store for at
/// once, unless [`LogReader::read_bytes`] says otherwise (16 MiB).
pub const DEFAULT_READ_BYTES: usize = 16 << 20;

/// The most whole pages of `page_size` events in `events`, at least one
/// page: the pages of a full read are then all full.
fn whole_pages(page_size: usize, events: usize) -> usize {
    page_size * (events / page_size).max(1)
}

/// About how much memory a read event holds: the event and the text it
/// owns (its stream id counted too, though events of one stream may share
/// it).
fn footprint(event: &RecordedEvent) -> usize {
    let metadata = &event.metadata;
    std::mem::size_of::<RecordedEvent>()
        + event.stream_id.as_str().len()
        + event.event_type.len()
        + event.payload.as_str().len()
        + metadata.correlation_id.as_ref().map_or(0, String::len)
        + metadata.causation_id.as_ref().map_or(0, String::len)
        + metadata
            .extra
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum::<usize>()
}

/// How many events of a slice [`average_footprint`] looks at, at most: the
/// reader sizes its reads by every slice it receives, so a sample keeps
/// that off the cost of each event.
const FOOTPRINT_SAMPLES: usize = 64;

/// About how much memory each of `events` holds, from a sample
/// spread evenly over them (a read's events are mostly alike, and the
/// bound on a read's bytes is an estimate either way). Zero for no events.
fn average_footprint(events: &[RecordedEvent]) -> usize {
    let step = events.len().div_ceil(FOOTPRINT_SAMPLES).max(1);
    let (count, bytes) = events
        .iter()
        .step_by(step)
        .fold((0, 0), |(count, bytes), event| {
            (count + 1, bytes + footprint(event))
        });
    bytes.checked_div(count).unwrap_or(0)
}

/// Reads the global log in order, one page at a time, and reads ahead while
/// the caller works on the current page.
///
/// This is how the [`ProjectionRunner`](crate::ProjectionRunner) follows the
/// log; use it directly for any other reader of the whole log (an export, a
/// relay of your own). The reader asks the store for up to
/// [`DEFAULT_READ_SIZE`] events at a time (whole pages, at least one; see
/// [`read_size`](Self::read_size)) and hands them out a page at a time:
/// a store's read costs much the same for a few events as for thousands, so
/// a catch-up with small pages still reads in large chunks. So that large
/// events do not fill the memory, a read also asks for no more events than
/// fit in about [`DEFAULT_READ_BYTES`] ([`read_bytes`](Self::read_bytes)),
/// judged by the size of the events received last (the first read is one
/// page).
///
/// Each read runs on a tokio task through
/// [`EventStore::read_all_into`], which sends the events on in slices as
/// the store reads them: the caller works on the first pages of a chunk
/// while the store still reads the rest. Once a chunk's read has ended
/// full, the reader starts reading the next one (when the caller next asks
/// for a page), so that the store prepares it while the caller decodes and
/// handles this one; after a chunk that was not full (the reader reached
/// the end of the log) it reads nothing until asked. At most two chunks are
/// held in memory. Pages are full until the end of the log, whatever the
/// size of the slices.
///
/// ```
/// use std::sync::Arc;
/// use es_core::{EventFilter, EventStore, ExpectedVersion, InMemoryStore, LogReader, Position, StreamId};
/// # use es_core::{AppendOptions, EventId, Metadata, NewEvent};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = Arc::new(InMemoryStore::new());
/// # for i in 0..5 {
/// #     let event = NewEvent {
/// #         event_id: EventId::new(),
/// #         event_type: "Added".to_owned(),
/// #         schema_version: 1,
/// #         payload: serde_json::json!({ "i": i }).into(),
/// #         metadata: Metadata::default(),
/// #     };
/// #     store.append(&StreamId::new(format!("s-{i}")), ExpectedVersion::NoStream, vec![event], &AppendOptions::default()).await?;
/// # }
/// let mut reader = LogReader::new(store, Position::START, EventFilter::all(), 2);
/// let mut seen = 0;
/// loop {
///     let page = reader.next_page().await?;
///     if page.events.is_empty() {
///         break;
///     }
///     seen += page.events.len();
/// }
/// assert_eq!(seen, 5);
/// assert_eq!(reader.position(), Position(5));
/// # Ok::<(), es_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct LogReader<S: ?Sized> {
    store: Arc<S>,
    filter: Arc<EventFilter>,
    page_size: usize,
    /// The most events of a read, and about the most bytes.
    read_size: usize,
    read_bytes: usize,
    /// The size of the next read: one page at first, then what the events
    /// last received say fits in `read_bytes`, up to `read_size`.
    next_read: usize,
    /// Where the last page returned ends.
    next: Position,
    /// Slices received and not yet handed out (the events left of each,
    /// and where it ends).
    buffered: VecDeque<(std::vec::IntoIter<RecordedEvent>, Position)>,
    /// Where the last slice received ends: where a new read starts.
    received: Position,
    /// The read whose slices come next, and the one after it, started once
    /// that one ended full.
    current: Option<Read>,
    ahead: Option<Read>,
}

/// A read of the store on its own task, sending its slices as it goes;
/// stopped when dropped.
#[derive(Debug)]
struct Read {
    slices: UnboundedReceiver<LogSlice>,
    task: JoinHandle<Result<ReadEnd>>,
    /// Where it starts, and how many events it asked for.
    after: Position,
    asked: usize,
    /// How it ended, once taken from the task and not yet from here.
    outcome: Option<Result<ReadEnd>>,
}

impl Read {
    /// How the read ended (it has, or is about to).
    async fn end(&mut self) -> Result<ReadEnd> {
        if let Some(outcome) = self.outcome.take() {
            return outcome;
        }
        (&mut self.task).await.map_err(|error| {
            Error::store(
                format!("the read of the log after position {} ended", self.after),
                error,
            )
        })?
    }
}

impl Drop for Read {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S> LogReader<S>
where
    S: EventStore + ?Sized + 'static,
{
    /// A reader of the events after `after` that pass `filter`, at most
    /// `page_size` (at least 1) per page.
    pub fn new(store: Arc<S>, after: Position, filter: EventFilter, page_size: usize) -> Self {
        let page_size = page_size.max(1);
        Self {
            store,
            filter: Arc::new(filter),
            page_size,
            read_size: whole_pages(page_size, DEFAULT_READ_SIZE),
            read_bytes: DEFAULT_READ_BYTES,
            next_read: page_size,
            next: after,
            buffered: VecDeque::new(),
            received: after,
            current: None,
            ahead: None,
        }
    }

    /// The most events to ask the store for at once: the most whole pages
    /// that fit in `events`, at least one page. Larger reads make a
    /// catch-up faster and hold more events in memory (two reads' worth at
    /// most); [`DEFAULT_READ_SIZE`] unless set.
    #[must_use]
    pub fn read_size(mut self, events: usize) -> Self {
        self.read_size = whole_pages(self.page_size, events);
        self.next_read = self.next_read.min(self.read_size);
        self
    }

    /// About the most bytes of events to ask the store for at once: a read
    /// asks for as many whole pages as fit, by the size of the events
    /// received last, and at least one page; [`DEFAULT_READ_BYTES`] unless
    /// set. It bounds the memory a catch-up over large events takes (two
    /// reads' worth at most), where [`read_size`](Self::read_size) alone
    /// would not.
    #[must_use]
    pub fn read_bytes(mut self, bytes: usize) -> Self {
        self.read_bytes = bytes;
        self
    }

    /// Where the next page starts: the `next` of the last page returned.
    pub fn position(&self) -> Position {
        self.next
    }

    /// Moves the reader: the next page starts after `after`. Events read
    /// ahead from elsewhere are dropped.
    pub fn seek(&mut self, after: Position) {
        if after != self.next {
            self.cancel();
            self.buffered.clear();
            self.next = after;
            self.received = after;
        }
    }

    /// The next page of the log, as [`EventStore::read_all`] gives it: no
    /// events when none are readable after [`position`](Self::position)
    /// yet. The reader then stands at the page's `next`.
    ///
    /// A page is full unless the log ends before it does. When a read
    /// fails, the error comes after the pages of the events read before
    /// it, and the next call reads again from there.
    pub async fn next_page(&mut self) -> Result<LogSlice> {
        // Wait until a page is in, or the read has ended; the events stay
        // with the reader meanwhile, so a call dropped midway loses none.
        loop {
            self.read_ahead().await;
            if self.buffered_events() >= self.page_size {
                break;
            }
            let read = self.current.get_or_insert_with(|| {
                start(&self.store, &self.filter, self.next_read, self.received)
            });
            if let Some(slice) = read.slices.recv().await {
                self.receive(slice);
                continue;
            }
            // Every slice of the current read is in: how did it end?
            let asked = read.asked;
            match read.end().await {
                Err(error) => {
                    // The events read before the failure come first next
                    // time, then a new read from where they end.
                    self.cancel();
                    return Err(error);
                }
                Ok(end) if end.events >= asked => {
                    let next = match self.ahead.take() {
                        Some(ahead) => ahead,
                        None => start(&self.store, &self.filter, self.next_read, end.next),
                    };
                    self.current = Some(next);
                }
                // The read reached the end of the log. A new read may find
                // events appended since, if this one found any and they
                // were handed out.
                Ok(end) => {
                    self.current = None;
                    if self.buffered_events() > 0 || end.events == 0 {
                        break;
                    }
                }
            }
        }
        Ok(self.take_page())
    }

    /// How many events were received and not yet handed out.
    fn buffered_events(&self) -> usize {
        self.buffered.iter().map(|(slice, _)| slice.len()).sum()
    }

    /// Hands out the next page of what was received: the reader then
    /// stands at its end.
    fn take_page(&mut self) -> LogSlice {
        let mut events = Vec::new();
        let mut next = self.next;
        while events.len() < self.page_size {
            let Some((slice, end)) = self.buffered.front_mut() else {
                break;
            };
            if events.capacity() == 0 && slice.len() > 0 {
                events.reserve_exact(self.page_size);
            }
            events.extend(slice.by_ref().take(self.page_size - events.len()));
            // A page that ends inside a slice ends at its last event; one
            // that ends with a slice, where the slice does (past events a
            // filter dropped, at the end of a read).
            if slice.len() == 0 {
                next = *end;
                self.buffered.pop_front();
            } else if let Some(last) = events.last() {
                next = last.position;
            }
        }
        self.next = next;
        LogSlice { events, next }
    }

    /// Takes a slice the current read sent, and sizes the next read by its
    /// events.
    fn receive(&mut self, slice: LogSlice) {
        if !slice.events.is_empty() {
            let per_event = average_footprint(&slice.events).max(1);
            self.next_read = whole_pages(
                self.page_size,
                (self.read_bytes / per_event).min(self.read_size),
            );
        }
        self.received = slice.next;
        self.buffered
            .push_back((slice.events.into_iter(), slice.next));
    }

    /// Once the current read has ended full, starts the next one, so that
    /// the store reads it while the caller works on this one's events
    /// (taken in first, so that they size it).
    async fn read_ahead(&mut self) {
        let Some(read) = &mut self.current else {
            return;
        };
        if self.ahead.is_some() || read.outcome.is_some() || !read.task.is_finished() {
            return;
        }
        // Finished: its outcome is there at once.
        let end = read.end().await;
        let ahead = match &end {
            Ok(end) if end.events >= read.asked => Some(end.next),
            // The read reached the end of the log, or failed: the caller
            // learns which once it has the events.
            _ => None,
        };
        read.outcome = Some(end);
        let mut slices = Vec::new();
        while let Ok(slice) = read.slices.try_recv() {
            slices.push(slice);
        }
        for slice in slices {
            self.receive(slice);
        }
        if let Some(after) = ahead {
            self.ahead = Some(start(&self.store, &self.filter, self.next_read, after));
        }
    }
}

/// Starts reading `asked` events of `store` after `after` on a tokio task.
fn start<S>(store: &Arc<S>, filter: &Arc<EventFilter>, asked: usize, after: Position) -> Read
where
    S: EventStore + ?Sized + 'static,
{
    let (sender, slices) = unbounded_channel();
    let store = Arc::clone(store);
    let filter = Arc::clone(filter);
    let task =
        tokio::spawn(async move { store.read_all_into(after, &filter, asked, &sender).await });
    Read {
        slices,
        task,
        after,
        asked,
        outcome: None,
    }
}

impl<S: ?Sized> LogReader<S> {
    /// Stops the reads under way, if any.
    fn cancel(&mut self) {
        self.current = None;
        self.ahead = None;
    }
}
#[cfg(test)]
mod tests {
    use super::{average_footprint, footprint, whole_pages, FOOTPRINT_SAMPLES};
    use crate::payload::Payload;
    use crate::types::{EventId, Metadata, Position, RecordedEvent, StreamId, Version};

    fn event(payload_len: usize) -> RecordedEvent {
        RecordedEvent {
            position: Position(1),
            stream_id: StreamId::new("s"),
            version: Version(1),
            event_id: EventId::new(),
            event_type: "E".into(),
            schema_version: 1,
            payload: Payload::from_trusted_json("1".repeat(payload_len)),
            metadata: Metadata::default(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn average_footprint_counts_every_event_of_a_small_read() {
        assert_eq!(average_footprint(&[]), 0);
        let events: Vec<_> = (0..10).map(|i| event(100 * i)).collect();
        let exact = events.iter().map(footprint).sum::<usize>() / events.len();
        assert_eq!(average_footprint(&events), exact);
        assert_eq!(footprint(&events[3]) - footprint(&events[0]), 300);
    }

    #[test]
    fn average_footprint_samples_a_large_read_evenly() {
        // Small and large events alternate in runs of 100: a sample spread
        // over the whole read sees both about equally.
        let events: Vec<_> = (0..20 * FOOTPRINT_SAMPLES)
            .map(|i| event(if i / 100 % 2 == 0 { 0 } else { 10_000 }))
            .collect();
        let exact = events.iter().map(footprint).sum::<usize>() / events.len();
        let sampled = average_footprint(&events);
        assert!(
            sampled.abs_diff(exact) * 20 < exact,
            "sampled {sampled}, exact {exact}"
        );
    }

    #[test]
    fn reads_are_whole_pages_and_at_least_one() {
        assert_eq!(whole_pages(1000, 4096), 4000);
        assert_eq!(whole_pages(500, 4096), 4000);
        assert_eq!(whole_pages(3, 4096), 4095);
        assert_eq!(whole_pages(5000, 4096), 5000);
        assert_eq!(whole_pages(2, 1), 2);
        assert_eq!(whole_pages(1, 4096), 4096);
    }
}
