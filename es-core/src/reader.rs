//! Following the global log page by page, with the next page read ahead.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::store::{EventStore, LogSlice};
use crate::types::{EventFilter, Position};

/// Reads the global log in order, one page at a time, and reads the next page
/// while the caller works on the current one.
///
/// This is how the [`ProjectionRunner`](crate::ProjectionRunner) follows the
/// log; use it directly for any other reader of the whole log (an export, a
/// relay of your own). After a full page the reader starts reading the next
/// one on a tokio task, so that the store prepares page *n* + 1 while the
/// caller decodes and handles page *n*; after a page that was not full (the
/// reader reached the end of the log) it reads nothing until asked.
///
/// ```
/// use std::sync::Arc;
/// use es_core::{EventFilter, EventStore, ExpectedVersion, InMemoryStore, LogReader, Position, StreamId};
/// # use es_core::AppendOptions;
///
/// # es_core::testkit::block_on(async {
/// let store = Arc::new(InMemoryStore::new());
/// # for i in 0..5 {
/// #     let event = es_core::testkit::conformance::new_event("Added", serde_json::json!({ "i": i }));
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
    next: Position,
    ahead: Option<JoinHandle<Result<LogSlice>>>,
}

impl<S> LogReader<S>
where
    S: EventStore + ?Sized + 'static,
{
    /// A reader of the events after `after` that pass `filter`, at most
    /// `page_size` (at least 1) per page.
    pub fn new(store: Arc<S>, after: Position, filter: EventFilter, page_size: usize) -> Self {
        Self {
            store,
            filter: Arc::new(filter),
            page_size: page_size.max(1),
            next: after,
            ahead: None,
        }
    }

    /// Where the next page starts: the `next` of the last page returned.
    pub fn position(&self) -> Position {
        self.next
    }

    /// Moves the reader: the next page starts after `after`. A page read
    /// ahead from elsewhere is dropped.
    pub fn seek(&mut self, after: Position) {
        if after != self.next {
            self.cancel();
            self.next = after;
        }
    }

    /// The next page of the log, as [`EventStore::read_all`] gives it: no
    /// events when none are readable after [`position`](Self::position)
    /// yet. The reader then stands at the page's `next`.
    pub async fn next_page(&mut self) -> Result<LogSlice> {
        let slice = match self.ahead.take() {
            Some(ahead) => ahead.await.map_err(|error| {
                Error::store(
                    format!("the read of the log after position {} ended", self.next),
                    error,
                )
            })??,
            None => {
                self.store
                    .read_all(self.next, &self.filter, self.page_size)
                    .await?
            }
        };
        self.next = slice.next;
        if slice.events.len() >= self.page_size {
            let store = Arc::clone(&self.store);
            let filter = Arc::clone(&self.filter);
            let (after, limit) = (self.next, self.page_size);
            self.ahead = Some(tokio::spawn(async move {
                store.read_all(after, &filter, limit).await
            }));
        }
        Ok(slice)
    }
}

impl<S: ?Sized> LogReader<S> {
    /// Stops the read ahead, if one runs.
    fn cancel(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            ahead.abort();
        }
    }
}

impl<S: ?Sized> Drop for LogReader<S> {
    fn drop(&mut self) {
        self.cancel();
    }
}
