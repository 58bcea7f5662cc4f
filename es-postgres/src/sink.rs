//! Where a read of the global log puts its events: kept for the caller
//! ([`EventStore::read_all`](es_core::EventStore::read_all)), or sent on in
//! slices as they are read
//! ([`EventStore::read_all_into`](es_core::EventStore::read_all_into)).

use es_core::{LogSlice, Position, ReadEnd, RecordedEvent};
use tokio::sync::mpsc::UnboundedSender;

/// How many events a read sends on at once: enough that a slice costs
/// little per event, few enough that the reader starts on the first events
/// soon.
const SLICE: usize = 1024;

/// The events of one read of the log.
pub(crate) struct Sink<'a> {
    /// Events read and not yet sent (all of them, when kept).
    pub(crate) events: Vec<RecordedEvent>,
    slices: Option<&'a UnboundedSender<LogSlice>>,
    /// How many events were sent, and the positions of the first and the
    /// last.
    sent: usize,
    first_sent: Option<Position>,
    last_sent: Option<Position>,
}

impl<'a> Sink<'a> {
    /// Keeps every event in [`events`](Self::events), with room for
    /// `expected` of them.
    pub(crate) fn keep(expected: usize) -> Self {
        Self {
            events: Vec::with_capacity(expected),
            slices: None,
            sent: 0,
            first_sent: None,
            last_sent: None,
        }
    }

    /// Sends the events to `slices` as they are read.
    pub(crate) fn send_to(slices: &'a UnboundedSender<LogSlice>) -> Self {
        Self {
            slices: Some(slices),
            ..Self::keep(SLICE)
        }
    }

    /// How many events were read.
    pub(crate) fn len(&self) -> usize {
        self.sent + self.events.len()
    }

    /// The position of the first event read.
    pub(crate) fn first_position(&self) -> Option<Position> {
        self.first_sent.or(self.events.first().map(|e| e.position))
    }

    /// The position of the last event read.
    pub(crate) fn last_position(&self) -> Option<Position> {
        self.events.last().map(|e| e.position).or(self.last_sent)
    }

    /// Sends the events held once they make a slice, and makes room for
    /// the next.
    pub(crate) fn pass_on(&mut self) {
        if self.events.len() >= SLICE && self.slices.is_some() {
            self.send_held();
            self.events.reserve(SLICE);
        }
    }

    /// Takes `events` read after those read so far: as they are, when
    /// sending (they make a slice of their own).
    pub(crate) fn append(&mut self, mut events: Vec<RecordedEvent>) {
        if self.slices.is_some() {
            self.send_held();
            self.events = events;
            self.send_held();
        } else {
            self.events.append(&mut events);
        }
    }

    /// Sends the events held, if there are any.
    fn send_held(&mut self) {
        if let Some(last) = self.events.last() {
            let next = last.position;
            self.send(next);
        }
    }

    /// Sends the events held, if they are to be sent, as a slice that ends
    /// at `next`.
    fn send(&mut self, next: Position) {
        let Some(slices) = self.slices else {
            return;
        };
        let events = std::mem::take(&mut self.events);
        self.sent += events.len();
        self.first_sent = self.first_sent.or(events.first().map(|e| e.position));
        self.last_sent = events.last().map(|e| e.position).or(self.last_sent);
        // A reader that went away wants nothing more.
        slices.send(LogSlice { events, next }).ok();
    }

    /// Ends a read sent on: sends what is left as the last slice, which
    /// ends at `next`.
    pub(crate) fn finish(mut self, next: Position) -> ReadEnd {
        self.send(next);
        ReadEnd {
            events: self.len(),
            next,
        }
    }
}
