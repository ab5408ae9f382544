//! The bounded queue of telemetry waiting to be published.
//!
//! Messages wait here while the device is disconnected, and while the connection already has as
//! many unacknowledged messages in flight as allowed. When the buffer is full, the **oldest** message
//! is dropped and counted: for telemetry, recent readings are worth more than old ones, and a device
//! must keep measuring whatever the network does.

use std::collections::VecDeque;
use std::num::NonZeroUsize;

use crate::agent::Outgoing;

/// A FIFO of messages holding at most `capacity`, dropping the oldest when full.
#[derive(Debug)]
pub(crate) struct OfflineBuffer<T = Outgoing> {
    messages: VecDeque<T>,
    capacity: NonZeroUsize,
}

impl<T> OfflineBuffer<T> {
    pub(crate) fn new(capacity: NonZeroUsize) -> Self {
        Self { messages: VecDeque::new(), capacity }
    }

    /// Appends `message`; returns the oldest message if it was dropped to make room.
    pub(crate) fn push(&mut self, message: T) -> Option<T> {
        let dropped = if self.messages.len() >= self.capacity.get() {
            self.messages.pop_front()
        } else {
            None
        };
        self.messages.push_back(message);
        dropped
    }

    /// Removes the messages for which `drop` is true; returns how many.
    pub(crate) fn remove_where(&mut self, mut drop: impl FnMut(&T) -> bool) -> usize {
        let before = self.messages.len();
        self.messages.retain(|m| !drop(m));
        before - self.messages.len()
    }

    /// Takes the oldest message.
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.messages.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Pushes `pushes` into a buffer of `capacity`; checks the drop count and what comes out, in order.
    #[track_caller]
    fn check(capacity: usize, pushes: &[&'static str], dropped: usize, out: &[&str]) {
        let mut buffer = OfflineBuffer::<Bytes>::new(NonZeroUsize::new(capacity).unwrap());
        let got_dropped = pushes
            .iter()
            .filter(|m| buffer.push(Bytes::from_static(m.as_bytes())).is_some())
            .count();
        assert_eq!(got_dropped, dropped);
        assert_eq!(buffer.len(), out.len());
        let got: Vec<Bytes> = std::iter::from_fn(|| buffer.pop()).collect();
        let want: Vec<Bytes> = out.iter().map(|m| Bytes::copy_from_slice(m.as_bytes())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn keeps_order_below_capacity() {
        check(3, &["a", "b"], 0, &["a", "b"]);
        check(3, &["a", "b", "c"], 0, &["a", "b", "c"]);
    }

    #[test]
    fn drops_the_oldest_when_full() {
        check(3, &["a", "b", "c", "d"], 1, &["b", "c", "d"]);
        check(2, &["a", "b", "c", "d", "e"], 3, &["d", "e"]);
        check(1, &["a", "b"], 1, &["b"]);
    }

    #[test]
    fn empty_buffer_pops_nothing() {
        check(4, &[], 0, &[]);
    }
}
