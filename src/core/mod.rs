//! The protocol core of one node: a state machine without I/O (docs/design.md §3).
//!
//! `Node` owns membership, the delivery streams, fragments, replay windows, the state transfer
//! and anti-entropy decisions, acknowledged writes, miss queries, clock offsets and the counters.
//! It never reads a clock, opens a socket or takes a lock: every input carries its `Now` (a
//! datagram arrived, a timer fired, local writes to send, a sync or fetch ended), and the node
//! answers with outputs the caller polls: datagrams to send and to whom (`poll_transmit`,
//! `poll_data`), syncs and fetches to run over TCP and events for JS (`poll_output`), and when
//! to call it again (`poll_timeout`). The driver (driver/) moves bytes and time between the
//! sockets and the node; the simulator (sim/) runs nodes on an in-memory network in simulated
//! time. The parts below are plain data structures, each tested against a model.

pub mod ack_wait;
mod api;
mod counters;
pub mod fragment;
pub mod membership;
pub mod miss;
mod node;
mod notices;
pub mod probes;
mod queries;
mod receive;
pub mod reliable;
pub mod replay;
mod send;
pub mod skew;
pub mod sync;
#[cfg(test)]
mod tests;
mod timers;

pub use api::{Buffers, Now, Output, Role, Settings, Transmit};
pub use counters::Counters;
pub use node::{Node, LEAVE_TIMEOUT};
