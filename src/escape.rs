//! Decoding the fixed-width escapes that kernel tables and gRPC headers use
//! (`\040` in /proc/self/mountinfo, `%20` in grpc-message).

/// Replaces `marker` followed by `width` digits of `radix` with that byte;
/// anything else, including a malformed escape, is kept as it is.
pub fn decode(text: &[u8], marker: u8, width: usize, radix: u32) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == marker && i + width < text.len() {
            let digits = std::str::from_utf8(&text[i + 1..=i + width]).ok();
            if let Some(b) = digits.and_then(|d| u8::from_str_radix(d, radix).ok()) {
                out.push(b);
                i += width + 1;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_octal_and_percent() {
        assert_eq!(decode(br"a\040b", b'\\', 3, 8), "a b");
        assert_eq!(decode(br"end\04", b'\\', 3, 8), r"end\04");
        assert_eq!(decode(b"a%20b%3A", b'%', 2, 16), "a b:");
        assert_eq!(decode(b"100%", b'%', 2, 16), "100%");
        assert_eq!(decode(b"%zz", b'%', 2, 16), "%zz");
    }
}
