//! RFC 4571 framing: on an ICE-TCP stream every datagram is preceded by its length, two
//! bytes in network order.

use std::io::{self, Write};

/// Bytes of the length before every frame.
pub(crate) const HEADER: usize = 2;
/// Largest datagram a client's frame may carry: what the UDP path reads. A stream that
/// announces a longer one is closed.
pub(crate) const MAX_FRAME: usize = 1500;
/// Bytes a stream's queue of outgoing frames may hold: some 200 full-sized packets, a
/// fraction of a second of video. A frame that does not fit is dropped whole, as a full UDP
/// socket drops a datagram.
pub(crate) const MAX_QUEUED: usize = 256 * 1024;

/// Bytes of an empty queue's buffer kept for the next frames.
const KEPT_CAPACITY: usize = 16 * 1024;

/// A frame's announced length past [`MAX_FRAME`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a frame of {0} bytes, more than {MAX_FRAME}")]
pub(crate) struct Oversized(pub usize);

/// The length `bytes` starts with, once both of its bytes are there.
pub(crate) fn frame_len(bytes: &[u8]) -> Result<Option<usize>, Oversized> {
    let Some(&[high, low]) = bytes.get(..HEADER) else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([high, low]));
    if len > MAX_FRAME {
        return Err(Oversized(len));
    }
    Ok(Some(len))
}

/// Cuts a stream's bytes into frames; between reads it holds at most one partial frame.
#[derive(Default)]
pub(crate) struct FrameReader {
    partial: Vec<u8>,
}

impl FrameReader {
    /// Takes `bytes` read from the stream and hands every frame they complete to `frame`,
    /// in order.
    pub fn push(&mut self, mut bytes: &[u8], frame: &mut impl FnMut(&[u8])) -> Result<(), Oversized> {
        while !bytes.is_empty() {
            if self.partial.is_empty() {
                // Whole frames are taken straight from the read.
                if let Some(len) = frame_len(bytes)?.filter(|len| bytes.len() >= HEADER + len) {
                    frame(&bytes[HEADER..HEADER + len]);
                    bytes = &bytes[HEADER + len..];
                    continue;
                }
                // Shorter than the frame it starts, which frame_len bounded.
                self.partial.extend_from_slice(bytes);
                return Ok(());
            }
            let whole = frame_len(&self.partial)?.map_or(HEADER, |len| HEADER + len);
            let take = (whole - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if frame_len(&self.partial)?.is_some_and(|len| self.partial.len() == HEADER + len) {
                frame(&self.partial[HEADER..]);
                self.partial.clear();
            }
        }
        Ok(())
    }
}

/// A stream's outgoing frames, at most [`MAX_QUEUED`] bytes of them.
#[derive(Default)]
pub(crate) struct FrameWriter {
    queued: Vec<u8>,
    /// Bytes of `queued` already written.
    written: usize,
}

impl FrameWriter {
    /// Queues `datagram` as a frame; `false` when it does not fit, and is dropped.
    pub fn queue(&mut self, datagram: &[u8]) -> bool {
        let Ok(len) = u16::try_from(datagram.len()) else { return false };
        if self.queued.len() - self.written + HEADER + datagram.len() > MAX_QUEUED {
            return false;
        }
        if self.written > 0 && self.written == self.queued.len() {
            self.queued.clear();
            self.written = 0;
        }
        self.queued.extend_from_slice(&len.to_be_bytes());
        self.queued.extend_from_slice(datagram);
        true
    }

    /// Whether every queued byte was written.
    pub fn is_empty(&self) -> bool {
        self.written == self.queued.len()
    }

    /// Writes what is queued to `out` until it is all written or `out` would block.
    pub fn write_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        while !self.is_empty() {
            match out.write(&self.queued[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if self.is_empty() {
            self.queued.clear();
            self.written = 0;
            // A backlog's buffer is not kept past it.
            self.queued.shrink_to(KEPT_CAPACITY);
        } else if self.written > MAX_QUEUED {
            // Keep the buffer from growing past twice the bound: drop the written part.
            self.queued.drain(..self.written);
            self.written = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(datagrams: &[&[u8]]) -> Vec<u8> {
        let mut writer = FrameWriter::default();
        for datagram in datagrams {
            assert!(writer.queue(datagram));
        }
        let mut bytes = Vec::new();
        writer.write_to(&mut bytes).expect("write");
        assert!(writer.is_empty());
        bytes
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_cuts_them() {
        let datagrams: Vec<Vec<u8>> = vec![vec![1; 100], vec![], vec![3; MAX_FRAME], vec![4; 1]];
        let bytes = framed(&datagrams.iter().map(Vec::as_slice).collect::<Vec<_>>());
        for cut in [1, 2, 3, 7, 101, 1000, bytes.len()] {
            let mut reader = FrameReader::default();
            let mut frames = Vec::new();
            for piece in bytes.chunks(cut) {
                reader.push(piece, &mut |frame| frames.push(frame.to_vec())).expect("frames");
            }
            assert_eq!(frames, datagrams, "pieces of {cut} bytes");
            assert!(reader.partial.is_empty());
        }
    }

    #[test]
    fn a_frame_longer_than_a_datagram_is_refused_before_its_bytes_are_kept() {
        let mut reader = FrameReader::default();
        let header = u16::try_from(MAX_FRAME + 1).expect("fits").to_be_bytes();
        assert_eq!(reader.push(&header[..1], &mut |_| {}), Ok(()));
        assert_eq!(reader.push(&header[1..], &mut |_| {}), Err(Oversized(MAX_FRAME + 1)));
        let mut reader = FrameReader::default();
        assert_eq!(reader.push(&[0xff, 0xff, 0, 0], &mut |_| {}), Err(Oversized(0xffff)));
        assert!(reader.partial.is_empty());
    }

    /// Takes at most `room` bytes, then would block.
    struct Narrow {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Narrow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.taken.len());
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_whole_frames_and_a_blocked_stream_resumes_where_it_stopped() {
        let mut writer = FrameWriter::default();
        let datagram = [7u8; 1000];
        let mut queued = 0;
        while writer.queue(&datagram) {
            queued += 1;
        }
        assert_eq!(queued, MAX_QUEUED / (HEADER + 1000));
        let mut out = Narrow { taken: Vec::new(), room: 1500 };
        writer.write_to(&mut out).expect("write");
        assert!(!writer.is_empty(), "the stream blocked part-way through a frame");
        assert!(writer.queue(&datagram), "what was written made room");
        out.room = usize::MAX;
        writer.write_to(&mut out).expect("write");
        assert!(writer.is_empty());
        let mut frames = 0;
        FrameReader::default()
            .push(&out.taken, &mut |frame| {
                assert_eq!(frame, datagram);
                frames += 1;
            })
            .expect("frames");
        assert_eq!(frames, queued + 1, "every queued frame arrived whole, in order");
    }
}
