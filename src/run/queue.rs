//! The relay's side of a run's event queue: bounded by the bytes waiting in
//! it as well as by their count.
//!
//! The channel holds at most [`super::EVENT_BUFFER`] events, which bounds
//! nothing when events are large (an agent message can be megabytes) and
//! holds more than needed when a stalled client leaves every slot full of
//! output. The relay therefore sends through a [`Queue`], which also waits
//! while the events it sent and the reader has not taken hold more than
//! [`QUEUE_BYTES`]. One event larger than that still goes, alone.
//!
//! The reader is an ordinary `mpsc::Receiver`: the queue learns what it took
//! from the channel's free capacity, and waits for it to take more by
//! reserving one slot more than are free now.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use crate::events::RunEvent;

/// How many bytes of events may wait for a slow client before the relay
/// pauses. Enough for a burst of a few dozen ordinary lines.
pub(crate) const QUEUE_BYTES: usize = 16 * 1024;

/// Sends a run's events, waiting while too many bytes of them wait.
pub(crate) struct Queue<'a> {
    tx: &'a mpsc::Sender<RunEvent>,
    /// The sizes of the events sent through this queue that may still be in
    /// the channel, oldest first.
    waiting: VecDeque<usize>,
    /// Their sum.
    bytes: usize,
    budget: usize,
}

impl<'a> Queue<'a> {
    /// A queue over `tx` holding at most [`QUEUE_BYTES`] (and the channel's
    /// capacity in events).
    pub(crate) fn new(tx: &'a mpsc::Sender<RunEvent>) -> Self {
        Self::with_budget(tx, QUEUE_BYTES)
    }

    fn with_budget(tx: &'a mpsc::Sender<RunEvent>, budget: usize) -> Self {
        Queue {
            tx,
            waiting: VecDeque::new(),
            bytes: 0,
            budget,
        }
    }

    /// Sends `event` once it fits; `Err` when the reader is gone.
    pub(crate) async fn send(
        &mut self,
        event: RunEvent,
    ) -> Result<(), mpsc::error::SendError<RunEvent>> {
        let size = event_size(&event);
        loop {
            self.forget_taken();
            if self.waiting.is_empty() || self.bytes + size <= self.budget {
                break;
            }
            // Until the reader takes one more event: one slot more free
            // than now. The slots are given back at once. The reader may
            // have emptied the channel since `forget_taken` looked: then
            // every slot is free, and asking for more than the channel has
            // would fail as if the reader were gone.
            let want = (self.tx.capacity() + 1).min(self.tx.max_capacity());
            if self.tx.reserve_many(want).await.is_err() {
                return Err(mpsc::error::SendError(event));
            }
        }
        self.tx.send(event).await?;
        self.waiting.push_back(size);
        self.bytes += size;
        Ok(())
    }

    /// Drops the sizes of the events the reader has taken: the channel
    /// delivers in order, so they are the oldest.
    fn forget_taken(&mut self) {
        let in_channel = self.tx.max_capacity() - self.tx.capacity();
        while self.waiting.len() > in_channel {
            if let Some(size) = self.waiting.pop_front() {
                self.bytes -= size;
            }
        }
    }
}

/// What an event costs while it waits: its own size and what it points to.
fn event_size(event: &RunEvent) -> usize {
    let held = match event {
        RunEvent::Agent(line) => line.len(),
        RunEvent::Stderr(text) => text.len(),
        _ => 0,
    };
    std::mem::size_of::<RunEvent>() + held
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn line(len: usize) -> RunEvent {
        RunEvent::Agent(Bytes::from(vec![b'x'; len]))
    }

    #[tokio::test]
    async fn waits_while_the_bytes_waiting_exceed_the_budget() {
        let (tx, mut rx) = mpsc::channel(64);
        let budget = 3 * (1000 + std::mem::size_of::<RunEvent>());
        let mut queue = Queue::with_budget(&tx, budget);
        for _ in 0..3 {
            queue.send(line(1000)).await.expect("open");
        }
        // A fourth line does not fit while the reader takes nothing...
        let fourth =
            tokio::time::timeout(std::time::Duration::from_millis(50), queue.send(line(1000)));
        assert!(fourth.await.is_err(), "sent past the budget");
        assert_eq!(rx.len(), 3);
        // ...and goes once it takes one.
        assert!(rx.recv().await.is_some());
        queue.send(line(1000)).await.expect("open");
        assert_eq!(rx.len(), 3);
    }

    #[tokio::test]
    async fn an_event_larger_than_the_budget_goes_alone() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut queue = Queue::with_budget(&tx, 100);
        queue.send(line(10_000)).await.expect("open");
        let second =
            tokio::time::timeout(std::time::Duration::from_millis(50), queue.send(line(1)));
        assert!(second.await.is_err(), "sent beside the large one");
        assert!(rx.recv().await.is_some());
        queue.send(line(1)).await.expect("open");
    }

    #[tokio::test]
    async fn small_events_are_bounded_by_the_channel() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut queue = Queue::with_budget(&tx, 1 << 20);
        for _ in 0..4 {
            queue.send(line(1)).await.expect("open");
        }
        let fifth = tokio::time::timeout(std::time::Duration::from_millis(50), queue.send(line(1)));
        assert!(fifth.await.is_err());
        let mut taken = 0;
        while rx.try_recv().is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 4);
    }

    #[tokio::test]
    async fn a_reader_gone_while_the_relay_waits_ends_the_wait() {
        let (tx, rx) = mpsc::channel(64);
        let mut queue = Queue::with_budget(&tx, 10);
        queue.send(line(100)).await.expect("open");
        let (sent, ()) = tokio::join!(queue.send(line(100)), async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            drop(rx);
        });
        assert!(sent.is_err());
    }
}
