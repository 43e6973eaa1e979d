//! The virtio-vsock packet header (virtio 1.2 §5.10.6): 44 little-endian bytes in front of
//! every packet on the rx and tx queues.

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;

/// The host's context id (§5.10.4: CID 2 is the host).
pub const HOST_CID: u64 = 2;

/// `type` values (§5.10.6).
pub const TYPE_STREAM: u16 = 1;

/// Most payload bytes one packet may carry, either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;

/// `op` values (§5.10.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused or aborted).
    Rst = 3,
    /// Half or full close; `flags` says which directions.
    Shutdown = 4,
    /// Stream data.
    Rw = 5,
    /// Unsolicited credit information.
    CreditUpdate = 6,
    /// Asks the peer for a credit update.
    CreditRequest = 7,
}

impl Op {
    /// The op for a wire value, `None` for 0 (VIRTIO_VSOCK_OP_INVALID) and unknown values.
    pub fn from_wire(v: u16) -> Option<Self> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// OP_SHUTDOWN flag: the sender will receive no more data (§5.10.6.4).
pub const SHUTDOWN_RCV: u32 = 1;
/// OP_SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded packet header. Field names follow the spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length that follows the header.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (raw; see [`Op::from_wire`]).
    pub op: u16,
    /// Op-specific flags.
    pub flags: u32,
    /// Sender's receive buffer size for this connection (credit, §5.10.6.3).
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8; HDR_LEN], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes a header; every bit pattern is a header, validation is the caller's.
    pub fn decode(b: &[u8; HDR_LEN]) -> Self {
        Header {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the header in wire order.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The decoded op, if known.
    pub fn op(&self) -> Option<Op> {
        Op::from_wire(self.op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_little_endian_order() {
        let h = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x0102_0304,
            dst_port: 5000,
            len: 7,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 0x10000,
            fwd_cnt: 9,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &[4, 3, 2, 1]);
        assert_eq!(b[30], 5);
        assert_eq!(Header::decode(&b), h);
        assert_eq!(Op::from_wire(0), None);
        assert_eq!(Op::from_wire(8), None);
    }
}
