//! Connections on the unix socket: an `:authority` any client can send.
//!
//! gRPC's C core (Python's grpcio, Ruby, PHP, C++ clients) gives a `unix:`
//! target a default `:authority` made of the socket path without its leading
//! `/`, percent-encoded: `unix:///csi/csi.sock` sends "csi%2Fcsi.sock". That is
//! not an authority `http::uri::Authority` accepts (`%` is refused outside an
//! IPv6 zone id), and h2 parses `:authority` while it decodes the HEADERS
//! frame (h2's `server::Peer::convert_poll_message`), answering a failed parse
//! with RST_STREAM PROTOCOL_ERROR before hyper has built a request: no tower
//! layer, tonic option or hyper setting of ours runs first. Go clients
//! (kubelet, the sidecars) send "localhost" and never meet this.
//!
//! So the unix listener's connections go through [`FixAuthority`], which
//! reads the client's HTTP/2 frames on their way in and, in header blocks only,
//! replaces an `:authority` that would be refused with "localhost" (what a Go
//! client sends; no one routes on it here). Everything else passes byte for
//! byte, and the server's side of the stream is not touched.
//!
//! The header blocks are HPACK-compressed against a table both ends keep, so
//! the adaptor keeps the names of the client's table entries (to know which
//! field is `:authority`) and never makes a value longer than the client's:
//! an entry the server stores is then never larger than the one the client
//! counted, so the server evicts no entry the client may still refer to (the
//! server may keep a few the client dropped; they are never referred to).
//! Anything it cannot follow (not HTTP/2, a malformed frame or block) it stops
//! rewriting and passes on unchanged for the rest of the connection, leaving
//! the server to judge it as before.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An accepted connection whose incoming header blocks carry an
/// `:authority` the HTTP/2 server accepts (see the module notes).
pub struct FixAuthority<T> {
    io: T,
    fix: AuthorityFix,
    out: Vec<u8>,
    out_pos: usize,
}

impl<T> FixAuthority<T> {
    pub fn new(io: T) -> FixAuthority<T> {
        FixAuthority {
            io,
            fix: AuthorityFix::new(),
            out: Vec::new(),
            out_pos: 0,
        }
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixAuthority<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FixAuthority<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.fix.passing_through() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: hand on whatever was held back, then EOF.
                this.fix.finish(&mut this.out);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            } else {
                this.fix.feed(read.filled(), &mut this.out);
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FixAuthority<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer must accept (RFC 9113 section 4.2).
const MIN_MAX_FRAME: usize = 16 * 1024;
/// A header block larger than this is passed on unread (h2 refuses far
/// smaller ones by default).
const MAX_BLOCK: usize = 1 << 20;
/// Largest HPACK table size followed; h2 advertises 4096.
const MAX_TABLE: usize = 1 << 20;
/// What replaces a refused `:authority`, cut to the original's length.
const LOCALHOST: &[u8] = b"localhost";

/// The client-to-server byte stream rewriter of [`FixAuthority`].
#[derive(Default)]
struct AuthorityFix {
    state: FixState,
    /// Input not handed on yet: a partial frame, or the frames of a header
    /// block being gathered.
    held: Vec<u8>,
    /// Bytes of a frame's payload still to pass on unread.
    payload_left: usize,
    block: Option<HeaderBlock>,
    table: HpackNames,
}

#[derive(PartialEq, Eq)]
enum FixState {
    /// This many bytes of the connection preface seen (and passed on).
    Preface(usize),
    Frames,
    /// Not rewriting any more: everything passes unchanged.
    PassThrough,
}

impl Default for FixState {
    fn default() -> FixState {
        FixState::Preface(0)
    }
}

struct HeaderBlock {
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, handed on if the block needs no change.
    raw: Vec<u8>,
}

/// A header block (or the connection) that cannot be followed.
#[derive(Debug)]
struct Malformed;

impl AuthorityFix {
    fn new() -> AuthorityFix {
        AuthorityFix::default()
    }

    fn passing_through(&self) -> bool {
        self.state == FixState::PassThrough && self.held.is_empty() && self.block.is_none()
    }

    /// Takes bytes the client sent; appends what the server is to read.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if let FixState::Preface(seen) = self.state {
            let n = input.len().min(PREFACE.len() - seen);
            if input[..n] != PREFACE[seen..seen + n] {
                self.state = FixState::PassThrough;
            } else {
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
                self.state = if seen + n == PREFACE.len() {
                    FixState::Frames
                } else {
                    FixState::Preface(seen + n)
                };
            }
        }
        if self.state != FixState::Frames {
            out.extend_from_slice(input);
            return;
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(input);
        let mut i = 0;
        loop {
            if self.payload_left > 0 {
                let n = self.payload_left.min(buf.len() - i);
                out.extend_from_slice(&buf[i..i + n]);
                i += n;
                self.payload_left -= n;
                if self.payload_left > 0 {
                    break;
                }
            }
            if buf.len() - i < FRAME_HEADER {
                break;
            }
            let header = &buf[i..i + FRAME_HEADER];
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let kind = header[3];
            if self.block.is_none() && kind != HEADERS {
                out.extend_from_slice(header);
                i += FRAME_HEADER;
                self.payload_left = len;
                continue;
            }
            let gathered = self.block.as_ref().map_or(0, |b| b.raw.len());
            if gathered + FRAME_HEADER + len > MAX_BLOCK {
                self.give_up(&buf[i..], out);
                return;
            }
            if buf.len() - i < FRAME_HEADER + len {
                break;
            }
            let frame = &buf[i..i + FRAME_HEADER + len];
            i += frame.len();
            if self.header_frame(frame, out).is_err() {
                self.give_up(&buf[i..], out);
                return;
            }
        }
        buf.drain(..i);
        self.held = buf;
    }

    /// The client closed its side: whatever was held back goes on as it was.
    fn finish(&mut self, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        self.give_up(&held, out);
    }

    fn give_up(&mut self, rest: &[u8], out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.extend_from_slice(rest);
        self.payload_left = 0;
        self.state = FixState::PassThrough;
    }

    /// A HEADERS or CONTINUATION frame, whole.
    fn header_frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream: [u8; 4] = frame[5..9].try_into().unwrap();
        let payload = &frame[FRAME_HEADER..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut start = 0;
                let mut end = payload.len();
                if flags & PADDED != 0 {
                    let pad = usize::from(*payload.first().ok_or(Malformed)?);
                    start = 1;
                    end = end.checked_sub(pad).ok_or(Malformed)?;
                }
                let priority = if flags & PRIORITY != 0 {
                    let p: [u8; 5] = payload
                        .get(start..start + 5)
                        .ok_or(Malformed)?
                        .try_into()
                        .unwrap();
                    start += 5;
                    Some(p)
                } else {
                    None
                };
                if start > end {
                    return Err(Malformed);
                }
                self.block = Some(HeaderBlock {
                    stream,
                    flags,
                    priority,
                    fragment: payload[start..end].to_vec(),
                    raw: frame.to_vec(),
                });
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(frame);
            }
            _ => return Err(Malformed),
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.block.take().unwrap();
        match self.table.rewrite(&block.fragment) {
            Ok(None) => out.extend_from_slice(&block.raw),
            Ok(Some(fragment)) => block.write(&fragment, out),
            Err(e) => {
                self.block = Some(block);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl HeaderBlock {
    /// Writes the block with a new fragment: HEADERS (its padding dropped)
    /// and as many CONTINUATION frames as the smallest frame size needs.
    fn write(&self, fragment: &[u8], out: &mut Vec<u8>) {
        let priority: &[u8] = self.priority.as_ref().map_or(&[], |p| &p[..]);
        let first = fragment.len().min(MIN_MAX_FRAME - priority.len());
        let mut chunks = std::iter::once(&fragment[..first])
            .chain(fragment[first..].chunks(MIN_MAX_FRAME))
            .peekable();
        let mut kind = HEADERS;
        let mut flags = self.flags & (END_STREAM | PRIORITY);
        while let Some(chunk) = chunks.next() {
            let pre = if kind == HEADERS { priority } else { &[] };
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            let len = pre.len() + chunk.len();
            out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
            out.extend_from_slice(&self.stream);
            out.extend_from_slice(pre);
            out.extend_from_slice(chunk);
            kind = CONTINUATION;
            flags = 0;
        }
    }
}

/// The names in the client's HPACK table (RFC 7541), with entry sizes.
struct HpackNames {
    entries: VecDeque<(Vec<u8>, usize)>,
    size: usize,
    max: usize,
}

impl Default for HpackNames {
    fn default() -> HpackNames {
        HpackNames {
            entries: VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }
}

impl HpackNames {
    fn name(&self, index: usize) -> Result<&[u8], Malformed> {
        match index {
            0 => Err(Malformed),
            1..=61 => Ok(STATIC_NAMES[index - 1].as_bytes()),
            _ => self
                .entries
                .get(index - 62)
                .map(|(n, _)| &n[..])
                .ok_or(Malformed),
        }
    }

    fn insert(&mut self, name: Vec<u8>, value_len: usize) {
        let size = name.len() + value_len + 32;
        while self.size + size > self.max {
            match self.entries.pop_back() {
                Some((_, s)) => self.size -= s,
                None => break,
            }
        }
        if size <= self.max {
            self.size += size;
            self.entries.push_front((name, size));
        }
    }

    fn resize(&mut self, max: usize) -> Result<(), Malformed> {
        if max > MAX_TABLE {
            return Err(Malformed);
        }
        self.max = max;
        while self.size > max {
            let (_, s) = self.entries.pop_back().ok_or(Malformed)?;
            self.size -= s;
        }
        Ok(())
    }

    /// Follows one header block through the table; returns it rewritten if
    /// it has an `:authority` the server would refuse.
    fn rewrite(&mut self, block: &[u8]) -> Result<Option<Vec<u8>>, Malformed> {
        let mut out = Vec::new();
        let mut copied = 0;
        let mut p = 0;
        while p < block.len() {
            let first = block[p];
            if first & 0x80 != 0 {
                // Indexed field: the server already holds its value.
                let index = read_int(block, &mut p, 7)?;
                self.name(index)?;
            } else if first & 0xE0 == 0x20 {
                let max = read_int(block, &mut p, 5)?;
                self.resize(max)?;
            } else {
                // A literal, added to the table (01) or not (0000, 0001).
                let start = p;
                let prefix = if first & 0x40 != 0 { 6 } else { 4 };
                let index = read_int(block, &mut p, prefix)?;
                let name = match index {
                    0 => read_string(block, &mut p)?,
                    _ => self.name(index)?.to_vec(),
                };
                let value = read_string(block, &mut p)?;
                let refused =
                    name == b":authority" && http::uri::Authority::try_from(&value[..]).is_err();
                let fixed = &LOCALHOST[..value.len().min(LOCALHOST.len())];
                if refused && !fixed.is_empty() {
                    out.extend_from_slice(&block[copied..start]);
                    write_int(&mut out, first & !(0xFF >> (8 - prefix)), prefix, index);
                    if index == 0 {
                        write_string(&mut out, &name);
                    }
                    write_string(&mut out, fixed);
                    copied = p;
                }
                if prefix == 6 {
                    self.insert(name, value.len());
                }
            }
        }
        if copied == 0 {
            return Ok(None);
        }
        out.extend_from_slice(&block[copied..]);
        Ok(Some(out))
    }
}

/// An HPACK integer with an N-bit prefix (RFC 7541 section 5.1).
fn read_int(buf: &[u8], p: &mut usize, prefix: u8) -> Result<usize, Malformed> {
    let mask = 0xFF >> (8 - prefix);
    let mut value = usize::from(buf.get(*p).ok_or(Malformed)? & mask);
    *p += 1;
    if value < usize::from(mask) {
        return Ok(value);
    }
    for shift in (0..=21).step_by(7) {
        let b = *buf.get(*p).ok_or(Malformed)?;
        *p += 1;
        value += usize::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Malformed)
}

fn write_int(out: &mut Vec<u8>, high: u8, prefix: u8, mut value: usize) {
    let mask = 0xFF >> (8 - prefix);
    if value < usize::from(mask) {
        out.push(high | value as u8);
        return;
    }
    out.push(high | mask);
    value -= usize::from(mask);
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An HPACK string literal (section 5.2), Huffman-coded or not.
fn read_string(buf: &[u8], p: &mut usize) -> Result<Vec<u8>, Malformed> {
    let huffman = buf.get(*p).ok_or(Malformed)? & 0x80 != 0;
    let len = read_int(buf, p, 7)?;
    let bytes = buf
        .get(*p..p.checked_add(len).ok_or(Malformed)?)
        .ok_or(Malformed)?;
    *p += len;
    if huffman {
        huffman_decode(bytes).ok_or(Malformed)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Writes a string literal uncompressed.
fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    write_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Decodes HPACK's Huffman code (RFC 7541 Appendix B). The code is
/// canonical (codes of a length are consecutive, in symbol order), so the
/// code lengths define it.
fn huffman_decode(src: &[u8]) -> Option<Vec<u8>> {
    static CODE: std::sync::OnceLock<([u32; 31], Vec<u16>)> = std::sync::OnceLock::new();
    let (count, symbols) = CODE.get_or_init(|| {
        let len = |s: u16| HUFFMAN_LENGTHS.get(usize::from(s)).copied().unwrap_or(30);
        let mut count = [0u32; 31];
        let mut symbols: Vec<u16> = (0..=256).collect();
        symbols.sort_by_key(|&s| (len(s), s));
        for &s in &symbols {
            count[usize::from(len(s))] += 1;
        }
        (count, symbols)
    });
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut code, mut len, mut first, mut index, mut ones) = (0u32, 0usize, 0u32, 0usize, true);
    for byte in src {
        for shift in (0..8).rev() {
            let bit = u32::from(byte >> shift & 1);
            code |= bit;
            ones &= bit == 1;
            len += 1;
            if len > 30 {
                return None;
            }
            let n = count[len];
            if code < first + n {
                match symbols[index + (code - first) as usize] {
                    256 => return None, // EOS inside a string
                    s => out.push(s as u8),
                }
                (code, len, first, index, ones) = (0, 0, 0, 0, true);
            } else {
                index += n as usize;
                first = (first + n) << 1;
                code <<= 1;
            }
        }
    }
    // What is left must be padding: at most 7 bits, all ones.
    (len <= 7 && ones).then_some(out)
}

/// Code lengths of bytes 0-255 (EOS, 256, is 30 bits).
#[rustfmt::skip]
const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// HPACK's static table names, indexes 1-61 (RFC 7541 Appendix A).
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Encodes with the canonical code built from the lengths.
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let len = |b: usize| HUFFMAN_LENGTHS.get(b).copied().unwrap_or(30) as u32;
        let mut order: Vec<usize> = (0..=256).collect();
        order.sort_by_key(|&b| (len(b), b));
        let mut codes = [0u64; 257];
        let (mut code, mut prev) = (0u64, len(order[0]));
        for (i, &b) in order.iter().enumerate() {
            if i > 0 {
                code = (code + 1) << (len(b) - prev);
            }
            prev = len(b);
            codes[b] = code;
        }
        let (mut acc, mut bits, mut out) = (0u128, 0u32, Vec::new());
        for &b in s {
            acc = acc << len(b.into()) | u128::from(codes[usize::from(b)]);
            bits += len(b.into());
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xFF >> bits));
        }
        out
    }

    #[test]
    fn huffman_matches_the_rfc_examples() {
        // RFC 7541 C.4.1-C.4.3.
        for (text, code) in [
            ("www.example.com", "f1e3c2e5f23a6ba0ab90f4ff"),
            ("no-cache", "a8eb10649cbf"),
            ("custom-key", "25a849e95ba97d7f"),
            ("custom-value", "25a849e95bb8e8b4bf"),
        ] {
            assert_eq!(huffman_decode(&hex(code)).unwrap(), text.as_bytes());
            assert_eq!(huffman_encode(text.as_bytes()), hex(code));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
        // Padding longer than 7 bits, or not all ones, is an error.
        assert!(huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f4ffff")).is_none());
        assert!(huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f4fe")).is_none());
    }

    /// What grpcio 1.85.3 (C core 58) sent for `unix:///tmp/g11/cap.sock`,
    /// captured from the socket.
    const C_CORE_HEADERS: &str = "40053a706174681e2f6373692e76312e4964656e746974792f476574506c7567696e496e666f400a3a617574686f7269747914746d702532466731312532466361702e736f636b8386400c636f6e74656e742d74797065106170706c69636174696f6e2f677270634002746508747261696c657273";

    fn rewritten(fix: &mut AuthorityFix, input: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            fix.feed(chunk, &mut out);
        }
        out
    }

    #[test]
    fn c_core_authority_becomes_localhost() {
        let block = hex(C_CORE_HEADERS);
        let settings = frame(0x4, 0, 0, &[]);
        let data = frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let input = [
            PREFACE,
            &settings,
            &frame(HEADERS, END_HEADERS, 1, &block),
            &data,
        ]
        .concat();
        let authority = hex("14746d702532466731312532466361702e736f636b");
        let fixed_block = {
            let at = block
                .windows(authority.len())
                .position(|w| w == authority)
                .unwrap();
            [
                &block[..at],
                b"\x09localhost",
                &block[at + authority.len()..],
            ]
            .concat()
        };
        let want = [
            PREFACE,
            &settings,
            &frame(HEADERS, END_HEADERS, 1, &fixed_block),
            &data,
        ]
        .concat();
        for piece in [1, 7, 64, input.len()] {
            let mut fix = AuthorityFix::new();
            assert_eq!(rewritten(&mut fix, &input, piece), want, "piece {piece}");
            // The next call refers to the table entry (62) the server holds
            // as "localhost": it passes as it is.
            let next = frame(HEADERS, END_HEADERS | END_STREAM, 3, &hex("83be86"));
            assert_eq!(rewritten(&mut fix, &next, piece), next);
        }
    }

    #[test]
    fn padding_priority_continuation_and_huffman() {
        // :authority by static name index, Huffman value, split over a
        // HEADERS frame with padding and priority and a CONTINUATION.
        let value = b"run%2Fplugin%2Fcsi.sock";
        let coded = huffman_encode(value);
        let mut block = vec![0x41, 0x80 | coded.len() as u8];
        block.extend_from_slice(&coded);
        block.extend_from_slice(&hex("8386"));
        let (a, b) = block.split_at(3);
        let mut headers = vec![2]; // pad length
        headers.extend_from_slice(&[0, 0, 0, 0, 16]); // priority
        headers.extend_from_slice(a);
        headers.extend_from_slice(&[0, 0]);
        let input = [
            PREFACE,
            &frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &headers),
            &frame(CONTINUATION, END_HEADERS, 5, b),
        ]
        .concat();
        let mut payload = vec![0, 0, 0, 0, 16];
        payload.extend_from_slice(b"\x41\x09localhost\x83\x86");
        let want = [
            PREFACE,
            &frame(HEADERS, PRIORITY | END_STREAM | END_HEADERS, 5, &payload),
        ]
        .concat();
        assert_eq!(rewritten(&mut AuthorityFix::new(), &input, 3), want);
    }

    #[test]
    fn follows_the_table_through_evictions() {
        let mut t = HpackNames::default();
        // A valid authority, added as entry 62, then referred to by name with
        // a refused value: the value changes, never growing.
        let mut block = vec![0x40, 10];
        block.extend_from_slice(b":authority");
        block.extend_from_slice(b"\x09localhost");
        assert!(t.rewrite(&block).unwrap().is_none());
        let fixed = t.rewrite(b"\x7e\x05a%2Fb").unwrap().unwrap();
        assert_eq!(fixed, b"\x7e\x05local");
        // Size update to 0 empties the table: index 62 is gone.
        assert!(t.rewrite(b"\x20").unwrap().is_none());
        assert!(t.rewrite(b"\xbe").is_err());
        // A small table keeps only the newest entries.
        let mut t = HpackNames::default();
        t.resize(100).unwrap();
        for name in [&b"x-a"[..], b"x-b", b":authority"] {
            let mut block = vec![0x40, name.len() as u8];
            block.extend_from_slice(name);
            block.extend_from_slice(b"\x0a0123456789");
            t.rewrite(&block).unwrap();
        }
        assert_eq!(t.name(62).unwrap(), b":authority");
        assert_eq!(t.name(63).unwrap(), b"x-b");
        assert!(t.name(64).is_err());
    }

    #[test]
    fn anything_else_passes_unchanged() {
        // Not HTTP/2.
        let http1 = b"GET / HTTP/1.1\r\nHost: a%2Fb\r\n\r\n";
        let mut fix = AuthorityFix::new();
        assert_eq!(rewritten(&mut fix, http1, 5), http1);
        assert!(fix.passing_through());
        // A malformed block: passed on as it was, and so is the rest.
        let input = [
            PREFACE,
            &frame(HEADERS, END_HEADERS, 1, b"\x40\x0a:authority\x7f"),
            &frame(HEADERS, END_HEADERS, 3, b"\x41\x05a%2Fb"),
        ]
        .concat();
        let mut fix = AuthorityFix::new();
        assert_eq!(rewritten(&mut fix, &input, 4), input);
        // A block cut short by the end of the stream.
        let input = [PREFACE, &frame(HEADERS, 0, 1, b"\x41\x05a%2Fb")].concat();
        let mut fix = AuthorityFix::new();
        let mut out = rewritten(&mut fix, &input, 4);
        fix.finish(&mut out);
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn reads_through_the_adaptor() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = FixAuthority::new(server);
        let input = [PREFACE, &frame(HEADERS, END_HEADERS, 1, b"\x41\x05a%2Fb")].concat();
        let writer = tokio::spawn(async move {
            client.write_all(&input).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        let want = [PREFACE, &frame(HEADERS, END_HEADERS, 1, b"\x41\x05local")].concat();
        assert_eq!(got, want);
    }
}
