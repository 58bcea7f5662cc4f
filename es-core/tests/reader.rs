//! The log reader: pages in order, reads of several pages handed out a page
//! at a time, the read ahead, events appended after the reader reached the
//! end, filters and seeks, and reads that shrink to fit large events in
//! their byte budget. (A failing read ahead is tested with the repository's
//! fault-injecting store, in `repository.rs`.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use es_core::testkit::conformance::new_event;
use es_core::{
    AppendOptions, AppendOutcome, Committed, Error, EventFilter, EventStore, ExpectedVersion,
    InMemoryStore, LogReader, LogSlice, NewEvent, Position, ReadEnd, RecordedEvent, Result,
    StreamId, Version, DEFAULT_READ_SIZE,
};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;

async fn append(store: &InMemoryStore, stream: &str, kinds: &[&str]) {
    let events = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| new_event(kind, json!({ "i": i })))
        .collect();
    append_events(store, stream, events).await;
}

async fn append_events(store: &impl EventStore, stream: &str, events: Vec<NewEvent>) {
    store
        .append(
            &StreamId::new(stream),
            ExpectedVersion::Any,
            events,
            &AppendOptions::default(),
        )
        .await
        .unwrap();
}

fn numbers(positions: &[Position]) -> Vec<u64> {
    positions.iter().map(|p| p.0).collect()
}

/// The positions of the events of the reader's next `pages` pages.
async fn read_pages(reader: &mut LogReader<InMemoryStore>, pages: usize) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..pages {
        let page = reader.next_page().await.unwrap();
        seen.extend(page.events.iter().map(|e| e.position.0));
    }
    seen
}

/// Reads pages until one is empty: the size of each page and the positions
/// of their events. Each page leaves the reader at its end.
async fn read_to_end<S: EventStore + 'static>(reader: &mut LogReader<S>) -> (Vec<usize>, Vec<u64>) {
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = reader.next_page().await.unwrap();
        if page.events.is_empty() {
            return (sizes, seen);
        }
        sizes.push(page.events.len());
        seen.extend(page.events.iter().map(|e| e.position.0));
        assert_eq!(reader.position(), page.next);
    }
}

#[tokio::test]
async fn a_reader_reads_the_whole_log_in_order_page_by_page() {
    let store = Arc::new(InMemoryStore::new());
    for s in 0..5 {
        append(&store, &format!("s-{s}"), &["A", "B"]).await;
    }
    let mut reader = LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 3);
    let (sizes, seen) = read_to_end(&mut reader).await;
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    assert_eq!(reader.position(), Position(10));
}

#[tokio::test]
async fn a_reader_sees_events_appended_after_it_reached_the_end() {
    let store = Arc::new(InMemoryStore::new());
    append(&store, "s-1", &["A", "A", "A", "A"]).await;
    // One page per read: every full page starts the read of the next.
    let mut reader =
        LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 2).read_size(2);
    let mut seen = read_pages(&mut reader, 2).await;
    // The second page was full: the third is being read ahead, maybe
    // before these two events exist.
    append(&store, "s-2", &["A", "A"]).await;
    seen.extend(read_pages(&mut reader, 3).await);
    assert_eq!(seen, (1..=6).collect::<Vec<_>>());
    assert!(reader.next_page().await.unwrap().events.is_empty());
}

#[tokio::test]
async fn a_filtered_reader_moves_past_events_it_does_not_want() {
    let store = Arc::new(InMemoryStore::new());
    append(&store, "s-1", &["A", "B", "A", "B", "B", "B", "A"]).await;
    let mut reader = LogReader::new(
        Arc::clone(&store),
        Position::START,
        EventFilter::types(["A"]),
        2,
    );
    assert_eq!(read_pages(&mut reader, 4).await, [1, 3, 7]);
    assert_eq!(reader.position(), Position(7));
}

#[tokio::test]
async fn seek_starts_the_next_page_elsewhere() {
    let store = Arc::new(InMemoryStore::new());
    append(&store, "s-1", &["A"; 10]).await;
    let mut reader =
        LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 3).read_size(3);
    let first = reader.next_page().await.unwrap();
    assert_eq!(numbers(&[first.events[0].position, first.next]), [1, 3]);
    // A page after 3 is being read ahead; the reader drops it.
    reader.seek(Position(7));
    assert_eq!(read_pages(&mut reader, 1).await, [8, 9, 10]);
    // Seeking back reads those events again.
    reader.seek(Position(1));
    let page = reader.next_page().await.unwrap();
    assert_eq!(page.events[0].position, Position(2));
}

#[tokio::test]
async fn a_read_of_several_pages_is_handed_out_a_page_at_a_time() {
    let store = Arc::new(InMemoryStore::new());
    append(&store, "s-1", &["A"; 4]).await;
    // Reads of up to 3 pages of 2: the first read takes all 4 events.
    let mut reader =
        LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 2).read_size(7);
    let first = reader.next_page().await.unwrap();
    assert_eq!(numbers(&[first.events[0].position, first.next]), [1, 2]);
    assert_eq!(reader.position(), Position(2));
    // Appended after that read: handed out after the pages already read.
    append(&store, "s-2", &["A", "A"]).await;
    let second = reader.next_page().await.unwrap();
    assert_eq!(numbers(&[second.events[0].position, second.next]), [3, 4]);
    assert_eq!(read_pages(&mut reader, 2).await, [5, 6]);
    assert!(reader.next_page().await.unwrap().events.is_empty());
    // Seeking into read events drops them and reads again from there.
    reader.seek(Position(1));
    assert_eq!(read_pages(&mut reader, 3).await, [2, 3, 4, 5, 6]);
    assert_eq!(reader.position(), Position(6));
}

#[tokio::test]
async fn every_page_of_a_large_read_is_full_until_the_end_of_the_log() {
    let store = Arc::new(InMemoryStore::new());
    for s in 0..7 {
        append(&store, &format!("s-{s}"), &["A", "B", "A"]).await;
    }
    // 5 events asked for: reads of 4 (two whole pages), and a filter.
    let mut reader = LogReader::new(
        Arc::clone(&store),
        Position::START,
        EventFilter::types(["A"]),
        2,
    )
    .read_size(5);
    let (sizes, seen) = read_to_end(&mut reader).await;
    assert_eq!(sizes, [2, 2, 2, 2, 2, 2, 2]);
    let wanted: Vec<u64> = (1..=21).filter(|p| p % 3 != 2).collect();
    assert_eq!(seen, wanted);
    assert_eq!(reader.position(), Position(21));
}

/// An in-memory store that records how many events each read of the log
/// asked for; it may send its reads on in slices, and fail one of them.
#[derive(Default)]
struct Counted {
    inner: InMemoryStore,
    asked: Mutex<Vec<usize>>,
    /// Reads sent on in slices of this many events (none: in one slice).
    slices_of: Option<usize>,
    /// The read (counted from 1) that fails once it has sent one slice.
    failing: Option<usize>,
    /// How long a read waits before each slice after its first.
    pause: Duration,
}

#[async_trait]
impl EventStore for Counted {
    async fn append(
        &self,
        stream_id: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        options: &AppendOptions,
    ) -> Result<AppendOutcome> {
        self.inner
            .append(stream_id, expected, events, options)
            .await
    }

    async fn read_stream(
        &self,
        stream_id: &StreamId,
        from: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream_id, from, limit).await
    }

    async fn stream_version(&self, stream_id: &StreamId) -> Result<Version> {
        self.inner.stream_version(stream_id).await
    }

    async fn read_all(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<LogSlice> {
        self.asked.lock().expect("lock").push(limit);
        self.inner.read_all(after, filter, limit).await
    }

    async fn read_all_into(
        &self,
        after: Position,
        filter: &EventFilter,
        limit: usize,
        slices: &UnboundedSender<LogSlice>,
    ) -> Result<ReadEnd> {
        let read = self.read_all(after, filter, limit).await?;
        let count = self.asked.lock().expect("lock").len();
        let size = self.slices_of.unwrap_or(usize::MAX);
        for (i, part) in read.events.chunks(size).enumerate() {
            if i > 0 {
                tokio::time::sleep(self.pause).await;
            }
            if i == 1 && self.failing == Some(count) {
                return Err(Error::store(
                    "the connection broke",
                    "in the middle of a read",
                ));
            }
            let next = part.last().map_or(after, |e| e.position);
            slices
                .send(LogSlice {
                    events: part.to_vec(),
                    next,
                })
                .ok();
        }
        slices
            .send(LogSlice {
                events: Vec::new(),
                next: read.next,
            })
            .ok();
        Ok(ReadEnd {
            events: read.events.len(),
            next: read.next,
        })
    }

    async fn head(&self) -> Result<Position> {
        self.inner.head().await
    }

    async fn wait_for_events(&self, after: Position, timeout: Duration) -> Result<bool> {
        self.inner.wait_for_events(after, timeout).await
    }

    async fn find_idempotency_key(&self, key: &str) -> Result<Option<Committed>> {
        self.inner.find_idempotency_key(key).await
    }
}

/// Appends `count` events of about `bytes` bytes of payload each.
async fn append_sized(store: &Counted, stream: &str, count: usize, bytes: usize) {
    let filler = "x".repeat(bytes);
    let events = (0..count)
        .map(|i| new_event("Sized", json!({ "i": i, "filler": filler })))
        .collect();
    append_events(store, stream, events).await;
}

#[tokio::test]
async fn reads_ask_for_as_many_whole_pages_as_fit_in_the_byte_budget() {
    let store = Arc::new(Counted::default());
    append_sized(&store, "small", 60, 10).await;
    append_sized(&store, "large", 40, 10_000).await;
    // Pages of 4, at most 40 events and about 50,000 bytes a read.
    let mut reader = LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 4)
        .read_size(40)
        .read_bytes(50_000);
    let (sizes, seen) = read_to_end(&mut reader).await;
    assert_eq!(seen, (1..=100).collect::<Vec<_>>(), "every event, in order");
    assert!(sizes.iter().all(|&size| size == 4), "full pages: {sizes:?}");
    let asked = store.asked.lock().expect("lock").clone();
    // One page first; then, while the events are small, the most the read
    // size allows; once reads meet the large events (10 kB each), fewer:
    // reads of large events alone ask for one page of 4 (40 kB), as two
    // pages would not fit in 50 kB.
    assert_eq!(asked[..3], [4, 40, 40], "{asked:?}");
    assert!(
        asked[3..].iter().all(|&n| n < 40 && n % 4 == 0),
        "whole pages, fewer once the events are large: {asked:?}"
    );
    assert_eq!(asked[asked.len() - 3..], [4, 4, 4], "{asked:?}");
}

#[tokio::test]
async fn by_default_reads_ask_for_whole_pages_up_to_the_default_read_size() {
    let store = Arc::new(Counted::default());
    append_sized(&store, "small", 1_001, 10).await;
    let mut reader = LogReader::new(
        Arc::clone(&store),
        Position::START,
        EventFilter::all(),
        1_000,
    );
    let (sizes, seen) = read_to_end(&mut reader).await;
    assert_eq!(sizes, [1_000, 1]);
    assert_eq!(seen.len(), 1_001);
    // One page first, then as many whole pages as the default allows (the
    // small events are far from the byte budget).
    let asked = store.asked.lock().expect("lock").clone();
    let whole_pages = DEFAULT_READ_SIZE / 1_000 * 1_000;
    assert_eq!(asked[..2], [1_000, whole_pages], "{asked:?}");
}

#[tokio::test]
async fn a_read_sent_on_in_slices_is_handed_out_in_full_pages() {
    let store = Arc::new(Counted {
        slices_of: Some(2),
        ..Counted::default()
    });
    append_sized(&store, "s-1", 20, 10).await;
    let mut reader =
        LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 3).read_size(9);
    let (sizes, seen) = read_to_end(&mut reader).await;
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    assert_eq!(sizes, [3, 3, 3, 3, 3, 3, 2], "pages span slices and reads");
}

#[tokio::test]
async fn a_read_that_fails_midway_hands_out_what_it_sent_then_the_error_then_the_rest() {
    // The second read (of 9) sends two events, then fails.
    let store = Arc::new(Counted {
        slices_of: Some(2),
        failing: Some(2),
        ..Counted::default()
    });
    append_sized(&store, "s-1", 20, 10).await;
    let mut reader =
        LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 3).read_size(9);
    let mut seen = Vec::new();
    let mut errors = 0;
    for _ in 0..20 {
        match reader.next_page().await {
            Ok(page) if page.events.is_empty() => break,
            Ok(page) => {
                assert_eq!(reader.position(), page.next);
                seen.extend(page.events.iter().map(|e| e.position.0));
            }
            Err(error) => {
                errors += 1;
                assert!(
                    error.to_string().contains("the connection broke"),
                    "{error}"
                );
                // Nothing handed out yet from the failed read: the reader
                // stands where the last page ended.
                assert_eq!(reader.position(), Position(3));
            }
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<_>>(),
        "every event once, in order"
    );
    let asked = store.asked.lock().expect("lock").clone();
    assert_eq!(
        asked[..3],
        [3, 9, 9],
        "the failed read, then one from where it failed: {asked:?}"
    );
}

#[tokio::test]
async fn a_page_call_dropped_while_a_read_is_under_way_loses_no_event() {
    let store = Arc::new(Counted {
        slices_of: Some(2),
        pause: Duration::from_millis(200),
        ..Counted::default()
    });
    append_sized(&store, "s-1", 10, 10).await;
    let mut reader =
        LogReader::new(Arc::clone(&store), Position::START, EventFilter::all(), 3).read_size(9);
    let first = reader.next_page().await.unwrap();
    assert_eq!(first.events.len(), 3);
    // The next read sends two events, then pauses: a page of three is not
    // in when the call is dropped.
    let dropped = tokio::time::timeout(Duration::from_millis(50), reader.next_page()).await;
    assert!(dropped.is_err(), "the page should still be waiting");
    assert_eq!(reader.position(), first.next);
    let (_, seen) = read_to_end(&mut reader).await;
    assert_eq!(
        seen,
        (4..=10).collect::<Vec<_>>(),
        "every event once, in order"
    );
}
