//! One stream connection between a guest port and a host Unix stream: its state, the credit
//! bookkeeping of both directions (virtio 1.2 §5.10.6.3) and the epoll interest that follows.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

/// Guest data we accept per connection but have not written to the host stream yet: our
/// `buf_alloc`. A guest that respects credit never sends more than this unforwarded.
pub(super) const CONN_BUF: u32 = 256 * 1024;

/// Identifies a connection: the host-side port and the guest-side port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: OP_REQUEST sent or queued, waiting for the guest's OP_RESPONSE.
    HostConnecting,
    /// Data flows.
    Established,
    /// Both sides are done (host closed, or the guest shut down both directions while we
    /// still flush); waiting for the guest's RST or our buffer to drain, or the deadline.
    Closing,
}

/// Control packets a connection owes the guest, sent before any data (bit set).
pub(super) mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const SHUTDOWN: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
    pub const CREDIT_REQUEST: u8 = 16;
}

pub(super) struct Conn {
    pub stream: UnixStream,
    pub token: u64,
    pub state: State,
    pub deadline: Option<Instant>,
    /// Control packets owed to the guest ([`pending`] bits).
    pub pending: u8,
    /// OP_SHUTDOWN flags to send with the pending SHUTDOWN.
    pub shutdown_flags: u32,
    /// The guest's receive buffer size and how much of it it has consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest (wrapping).
    pub rx_cnt: u32,
    /// Bytes of guest data written to the host stream (wrapping), and the value last told.
    pub fwd_cnt: u32,
    pub last_fwd_cnt_sent: u32,
    /// Guest data the host stream did not take yet (at most [`CONN_BUF`]).
    pub tx_buf: VecDeque<u8>,
    /// The host stream may have bytes to read (EPOLLIN seen, not yet drained).
    pub data_ready: bool,
    /// A read from the host stream returned end-of-file.
    pub host_eof: bool,
    /// The host stream hung up entirely (EPOLLHUP): it is no longer polled.
    pub hup: bool,
    /// The guest will send / receive no more (its OP_SHUTDOWN flags so far).
    pub guest_shut_send: bool,
    pub guest_shut_rcv: bool,
    /// The host stream's write side was shut down after the guest's SHUTDOWN(SEND).
    pub host_write_shut: bool,
    /// A CREDIT_REQUEST went out since the guest last gave credit.
    pub credit_requested: bool,
    /// The connection is in the muxer's rx round-robin.
    pub in_rx_queue: bool,
    /// What the stream is registered for in epoll (`None`: not registered).
    pub registered: Option<EventSet>,
}

impl Conn {
    pub fn new(stream: UnixStream, token: u64, state: State) -> Self {
        Conn {
            stream,
            token,
            state,
            deadline: None,
            pending: 0,
            shutdown_flags: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_buf: VecDeque::new(),
            data_ready: false,
            host_eof: false,
            hup: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            credit_requested: false,
            in_rx_queue: false,
            registered: None,
        }
    }

    /// Bytes the guest can still take (§5.10.6.3: buf_alloc - (rx_cnt - fwd_cnt)); a guest
    /// that shrinks buf_alloc below what is in flight gets 0, not a wrapped huge value.
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Room left in our receive buffer for guest data.
    pub fn our_free(&self) -> usize {
        (CONN_BUF as usize).saturating_sub(self.tx_buf.len())
    }

    /// Records the credit fields every guest packet carries.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_free() > 0 {
            self.credit_requested = false;
        }
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx_work(&self) -> bool {
        if self.pending != 0 {
            return true;
        }
        if !self.data_ready || self.state != State::Established || self.guest_shut_rcv {
            return false;
        }
        self.peer_free() > 0 || !self.credit_requested
    }

    /// Notes that `n` more guest bytes reached the host; asks for a credit update once the
    /// guest's view of our free space lags by half the buffer, so it never stalls on a stale
    /// fwd_cnt.
    pub fn forwarded(&mut self, n: usize) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CONN_BUF / 2 {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// The epoll events wanted for the host stream; `None` to leave it unregistered (after a
    /// hang-up, which epoll would otherwise report forever).
    pub fn interest(&self) -> Option<EventSet> {
        if self.hup {
            return None;
        }
        let mut ev = EventSet::empty();
        let reading = self.state == State::Established
            && !self.host_eof
            && !self.guest_shut_rcv
            && !self.data_ready;
        if reading {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() && !self.host_write_shut {
            ev |= EventSet::OUT;
        }
        Some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let (a, _b) = UnixStream::pair().unwrap();
        Conn::new(a, 16, State::Established)
    }

    #[test]
    fn peer_credit_wraps_and_saturates() {
        let mut c = conn();
        c.update_peer_credit(4096, u32::MAX - 10);
        c.rx_cnt = u32::MAX - 10;
        assert_eq!(c.peer_free(), 4096);
        c.rx_cnt = c.rx_cnt.wrapping_add(100); // wrapped past zero
        assert_eq!(c.peer_free(), 3996);
        c.update_peer_credit(10, c.peer_fwd_cnt); // the guest shrank its buffer
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn reading_stops_while_data_waits_and_after_hangup() {
        let mut c = conn();
        assert_eq!(c.interest(), Some(EventSet::IN));
        c.data_ready = true;
        assert_eq!(c.interest(), Some(EventSet::empty()));
        c.tx_buf.push_back(1);
        assert_eq!(c.interest(), Some(EventSet::OUT));
        c.hup = true;
        assert_eq!(c.interest(), None);
    }

    #[test]
    fn credit_update_is_owed_after_half_a_buffer() {
        let mut c = conn();
        c.forwarded(CONN_BUF as usize / 2 - 1);
        assert_eq!(c.pending, 0);
        c.forwarded(1);
        assert_eq!(c.pending, pending::CREDIT_UPDATE);
    }
}
