//! What the JS thread (and the engine's close) asks of the driver: direct sends, miss queries,
//! probes and the leave.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{oneshot, OwnedMutexGuard};

use super::{now, Answer, Driver, DIRECT_BYTES};
use crate::core::{Node, Transmit};

impl Driver {
    /// Sends the writes queued so far. A few, when no batch is being sent, leave from this (JS)
    /// thread at once: the network thread, asleep most likely, is not woken on the way. The
    /// rest, and whatever would block, is handed to the network thread.
    pub fn flush(self: &Arc<Self>) {
        if !self.send_directly() {
            self.parts.outbox.flush();
        }
    }

    /// Sends the queued writes from this thread if they are at most DIRECT_BYTES and nothing else
    /// is being sent; returns false (nothing done) otherwise. Never waits: the locks are only
    /// tried, the sends never block. When a send would block, the network thread sends the rest,
    /// holding `sending` until it is done.
    fn send_directly(self: &Arc<Self>) -> bool {
        // A batch in flight (the send task's, or the leave's) goes first.
        let Ok(sending) = self.sending.clone().try_lock_owned() else { return false };
        let Some(mut node) = self.node.try_lock() else { return false };
        if node.is_gone() {
            return false;
        }
        let Some((ops, last_write)) = self.parts.outbox.take_at_most(DIRECT_BYTES) else { return false };
        if ops.is_empty() {
            return true;
        }
        let now = now();
        node.write_batch(ops, last_write);
        let mut datagrams: VecDeque<Transmit> = std::iter::from_fn(|| node.poll_data(now)).collect();
        while let Some(datagram) = datagrams.front_mut() {
            let sent = self.try_send(&mut node, datagram);
            if sent < datagram.to.len() {
                datagram.to.drain(..sent);
                break;
            }
            datagrams.pop_front();
        }
        if datagrams.is_empty() {
            node.count_direct_batch();
        }
        // With waitForAck the writes now wait: the network thread keeps their deadline.
        let wake = node.has_output() || node.poll_timeout().is_some_and(|at| self.is_earlier(at));
        drop(node);
        if wake {
            self.wake.notify_one();
        }
        if !datagrams.is_empty() {
            self.hand_over(datagrams, sending);
        }
        true
    }

    /// Sends without waiting; returns to how many destinations (fewer: the socket would block).
    fn try_send(&self, node: &mut Node, datagram: &Transmit) -> usize {
        for (sent, to) in datagram.to.iter().enumerate() {
            match self.unicast.try_send_to(&datagram.bytes, *to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return sent,
                Err(_) => node.send_failed(datagram.bytes.len()),
            }
        }
        datagram.to.len()
    }

    /// The network thread sends what a direct send could not, still holding `sending`.
    fn hand_over(self: &Arc<Self>, datagrams: VecDeque<Transmit>, sending: OwnedMutexGuard<()>) {
        let driver = self.clone();
        self.runtime.spawn(async move {
            for datagram in &datagrams {
                driver.send(datagram).await;
            }
            drop(sending);
        });
    }

    /// Asks the alive members about a sid the table holds nothing for; `answer` gets what the
    /// table holds once they answered (or the query timed out), on the network thread. False
    /// when nothing is asked (the rate limit): `answer` is dropped uncalled.
    pub fn ask(&self, sid: &str, answer: Answer) -> bool {
        let mut node = self.node.lock();
        let Some(token) = node.ask(sid, now()) else { return false };
        // Registered before the node is unlocked: the query cannot end unseen.
        self.waiters.lock().entry(token).or_insert_with(|| (sid.into(), Vec::new())).1.push(answer);
        drop(node);
        self.wake.notify_one();
        true
    }

    /// Sends connectivity probes of these datagram sizes (the doctor).
    pub fn probe(&self, sizes: &[u32]) {
        self.node.lock().probe(sizes, now());
        self.wake.notify_one();
    }

    /// Graceful leave (`Node::leave`): the batch in flight and the writes still queued go out
    /// first. Returns the warning to log when the members' acks did not all come.
    pub async fn leave(self: &Arc<Self>) -> Option<String> {
        let (left, done) = oneshot::channel();
        *self.left.lock() = Some(left);
        // Nothing is sent after the leave's datagrams: this stays held.
        let _sending = self.sending.clone().lock_owned().await;
        let (ops, last_write) = self.parts.outbox.take();
        self.node.lock().write_batch(ops, last_write);
        self.send_data().await;
        self.node.lock().leave(now());
        self.pump().await;
        done.await.unwrap_or(None)
    }
}
