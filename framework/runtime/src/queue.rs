//! The bounded queues between stages, and the bells that wake the threads
//! running their consumers (or their waiting producers).

use crate::metrics::RuntimeMetrics;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use palisade_core::{PeerMessage, ReplicaId};
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::thread::Thread;

/// Wakes the thread that runs a stage when it is parked. Every stage run by
/// one thread shares that thread's bell; ringing a running thread costs an
/// atomic swap, a parked one a futex wake.
/// A runner on the network thread is an async task and waits on a
/// `Notify` instead.
#[derive(Clone, Default)]
pub struct Bell(Arc<BellInner>);

#[derive(Default)]
struct BellInner {
    thread: OnceLock<Thread>,
    task: tokio::sync::Notify,
}

impl Bell {
    /// Wakes the runner, or makes its next wait return at once.
    pub fn ring(&self) {
        match self.0.thread.get() {
            Some(t) => t.unpark(),
            None => self.0.task.notify_one(),
        }
    }

    /// Waits until rung (for a runner on the network thread).
    pub(crate) async fn rung(&self) {
        self.0.task.notified().await
    }

    pub(crate) fn bind(&self) {
        let _ = self.0.thread.set(std::thread::current());
    }
}

/// The sending end of a bounded queue between stages (or from the network
/// to a stage): never blocks, and rings the consumer's bell.
pub struct Tx<T> {
    inner: Sender<T>,
    bell: Bell,
}

impl<T> Clone for Tx<T> {
    fn clone(&self) -> Self {
        Tx { inner: self.inner.clone(), bell: self.bell.clone() }
    }
}

impl<T> Tx<T> {
    /// Queues `item` if there is room.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let r = self.inner.try_send(item);
        if r.is_ok() {
            self.bell.ring();
        }
        r
    }

    /// Free slots right now.
    pub fn room(&self) -> usize {
        self.inner.capacity().unwrap_or(usize::MAX).saturating_sub(self.inner.len())
    }
}

/// The receiving end: takes without blocking, and rings the producer's bell
/// when it frees room in a queue at least half full (the producer may be
/// waiting for that room).
pub struct Rx<T> {
    inner: Receiver<T>,
    producer: Option<Bell>,
}

impl<T> Rx<T> {
    /// Takes one item if one is queued.
    pub fn take(&self) -> Option<T> {
        let waiting =
            self.producer.as_ref().filter(|_| self.inner.len() * 2 >= self.inner.capacity().unwrap_or(usize::MAX));
        let item = self.inner.try_recv().ok();
        if let (Some(producer), Some(_)) = (waiting, &item) {
            producer.ring();
        }
        item
    }

    /// Takes up to `max` items.
    pub fn take_up_to(&self, max: usize) -> Vec<T> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.take() {
                Some(x) => out.push(x),
                None => break,
            }
        }
        out
    }

    /// The queue's bound.
    pub fn capacity(&self) -> usize {
        self.inner.capacity().unwrap_or(usize::MAX)
    }

    /// Reads the queue's depth from anywhere (for gauges).
    pub fn depth_probe(&self) -> impl Fn() -> usize + Send + 'static
    where
        T: Send + 'static,
    {
        let probe = self.inner.clone();
        move || probe.len()
    }
}

/// A bounded queue of `capacity` items consumed by the stage behind
/// `consumer`; `producer` is rung when room frees up (for producers that
/// wait for room rather than drop).
pub fn queue<T>(capacity: usize, consumer: &Bell, producer: Option<&Bell>) -> (Tx<T>, Rx<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    (Tx { inner: tx, bell: consumer.clone() }, Rx { inner: rx, producer: producer.cloned() })
}

/// Output that must never be dropped (decisions, their replies, checkpoint
/// digests): what the queue cannot take waits here, and the stage takes no
/// new input until it has gone. The backlog is bounded by one input's
/// worth of output, and what one input can produce is bounded by the
/// protocol's window.
pub struct Outflow<T> {
    tx: Tx<T>,
    backlog: VecDeque<T>,
}

impl<T> Outflow<T> {
    /// Output into `tx`.
    pub fn new(tx: Tx<T>) -> Self {
        Outflow { tx, backlog: VecDeque::new() }
    }

    /// Sends `item`, or keeps it behind what already waits.
    pub fn push(&mut self, item: T) -> Result<(), Ended> {
        self.backlog.push_back(item);
        self.flush().map(|_| ())
    }

    /// Sends what waits, in order; true once nothing does.
    pub fn flush(&mut self) -> Result<bool, Ended> {
        while let Some(item) = self.backlog.pop_front() {
            match self.tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    self.backlog.push_front(item);
                    return Ok(false);
                }
                Err(TrySendError::Disconnected(_)) => return Err(Ended),
            }
        }
        Ok(true)
    }

    /// Items waiting for room.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }
}

/// A stage ends when a queue it feeds or drains has lost its other side
/// (the replica is stopping).
#[derive(Debug)]
pub struct Ended;

/// A peer's message: its sender, the epoch of the core that sent it, and
/// the message.
pub type PeerItem = (ReplicaId, u64, PeerMessage);

/// Hands a peer message to the next stage. A full queue drops it and counts
/// the drop (the protocol retransmits); false when the stage is gone.
pub fn offer_peer(tx: &Tx<PeerItem>, item: PeerItem, metrics: &RuntimeMetrics) -> bool {
    match tx.try_send(item) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            RuntimeMetrics::add(&metrics.counters.peer_messages_dropped, 1);
            true
        }
        Err(TrySendError::Disconnected(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Waker};

    /// Whether `bell` was rung since last asked (a bell no thread has bound
    /// keeps one wake-up, like a runner on the network thread).
    fn was_rung(bell: &Bell) -> bool {
        let mut wait = std::pin::pin!(bell.0.task.notified());
        wait.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_ready()
    }

    #[test]
    fn queues_ring_the_consumer_on_send_and_a_waiting_producer_when_room_frees() {
        let (consumer, producer) = (Bell::default(), Bell::default());
        let (tx, rx) = queue::<u32>(4, &consumer, Some(&producer));
        assert!(!was_rung(&consumer));
        tx.try_send(1).unwrap();
        assert!(was_rung(&consumer), "a send wakes the consumer");
        assert_eq!(rx.take(), Some(1));
        assert!(!was_rung(&producer), "taking from a nearly empty queue does not wake the producer");
        for i in 0..4 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.room(), 0);
        assert!(matches!(tx.try_send(9), Err(TrySendError::Full(9))));
        assert_eq!(rx.take_up_to(3), vec![0, 1, 2]);
        assert!(was_rung(&producer), "freeing room in a crowded queue wakes the producer");
        assert_eq!(tx.room(), 3);
    }

    #[test]
    fn an_outflow_never_drops_and_keeps_order() {
        let bell = Bell::default();
        let (tx, rx) = queue::<u32>(2, &bell, None);
        let mut out = Outflow::new(tx);
        for i in 0..5 {
            out.push(i).unwrap();
        }
        assert_eq!(out.backlog(), 3, "what does not fit waits");
        assert!(!out.flush().unwrap(), "still full");
        let mut got = rx.take_up_to(10);
        while !out.flush().unwrap() {
            got.extend(rx.take_up_to(1));
        }
        got.extend(rx.take_up_to(10));
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        out.push(5).unwrap();
        assert_eq!(rx.take(), Some(5), "with nothing waiting, output goes straight out");
        drop(rx);
        assert!(out.push(6).is_err(), "a consumer that is gone ends the stage");
    }
}
