//! ICE-TCP transport (RFC 6544), passive side only: browsers connect to our
//! listener and every packet travels with a 2-byte length prefix (RFC 4571).
//!
//! The framing is pure and tested here; the sockets live in the worker (one
//! registered `mio` stream per connection) and in `handle.rs` (the accept
//! loop that reads the first frame to learn which worker owns the ufrag).

/// Largest frame we accept. RFC 4571 allows 65535; media datagrams are
/// ≤ 1500, so anything above a generous bound is a broken or hostile peer.
pub(crate) const MAX_FRAME: usize = 4096;
/// Bytes buffered for a slow reader before we start dropping media (the
/// same thing a full UDP socket buffer would do).
pub(crate) const MAX_PENDING_WRITE: usize = 512 * 1024;

/// Reassembles length-prefixed frames from a byte stream.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
}

/// What the next frame in the buffer is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A complete frame: `range` indexes into [`FrameReader::bytes`].
    Ready(std::ops::Range<usize>),
    /// Need more bytes.
    Partial,
    /// The length prefix is over [`MAX_FRAME`]: close the connection.
    TooLarge,
}

impl FrameReader {
    /// Append bytes read from the socket.
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        // Compact instead of growing forever: consumed frames are dropped
        // before new bytes arrive, so the buffer stays near one frame.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, consumed on return.
    pub(crate) fn next_frame(&mut self) -> Frame {
        let pending = &self.buf[self.start..];
        if pending.len() < 2 {
            return Frame::Partial;
        }
        let len = u16::from_be_bytes([pending[0], pending[1]]) as usize;
        if len > MAX_FRAME {
            return Frame::TooLarge;
        }
        if pending.len() < 2 + len {
            return Frame::Partial;
        }
        let range = self.start + 2..self.start + 2 + len;
        self.start += 2 + len;
        Frame::Ready(range)
    }

    /// The buffer `Frame::Ready` ranges index into.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Everything buffered, including frames already returned: the accept
    /// loop reads one frame to route a connection, then hands all bytes on.
    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// Bytes received but not yet returned as frames.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Append one framed packet to `out`. `false` if the packet cannot be framed
/// (over 65535 bytes) or `out` would exceed [`MAX_PENDING_WRITE`].
pub(crate) fn push_frame(out: &mut Vec<u8>, packet: &[u8]) -> bool {
    let Ok(len) = u16::try_from(packet.len()) else {
        return false;
    };
    if out.len() + 2 + packet.len() > MAX_PENDING_WRITE {
        return false;
    }
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(reader: &mut FrameReader) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Frame::Ready(r) = reader.next_frame() {
            out.push(reader.bytes()[r].to_vec());
        }
        out
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut wire = Vec::new();
        assert!(push_frame(&mut wire, b"hello"));
        assert!(push_frame(&mut wire, b""));
        assert!(push_frame(&mut wire, b"world!"));
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            reader.extend(chunk);
            got.extend(frames(&mut reader));
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![], b"world!".to_vec()]);
        assert!(reader.pending().is_empty());
    }

    #[test]
    fn oversized_length_prefix_is_refused() {
        let mut reader = FrameReader::default();
        reader.extend(&[0xff, 0xff, 1, 2, 3]);
        assert_eq!(reader.next_frame(), Frame::TooLarge);
    }

    #[test]
    fn write_buffer_is_bounded() {
        let mut out = Vec::new();
        let packet = [0u8; 1200];
        let mut n = 0;
        while push_frame(&mut out, &packet) {
            n += 1;
        }
        assert_eq!(n, MAX_PENDING_WRITE / 1202);
        assert!(out.len() <= MAX_PENDING_WRITE);
    }
}
