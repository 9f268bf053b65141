//! Decoders for the text arguments of protocol-0 opcodes.

/// Python's `escape_decode` of a quoted STRING argument (`'abc\n'` or
/// `"it's"`), as Python 2 `repr` wrote it.
pub fn decode_quoted_string(line: &[u8]) -> Result<Vec<u8>, String> {
    let inner = match line {
        [q, inner @ .., last] if (*q == b'\'' || *q == b'"') && q == last => inner,
        _ => return Err("the STRING opcode argument is not quoted".into()),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while let Some(&c) = inner.get(i) {
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = inner.get(i) else {
            return Err("the STRING opcode argument ends with a lone backslash".into());
        };
        i += 1;
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'x' => {
                let hex = inner.get(i..i + 2).ok_or("a \\x escape is cut short")?;
                let v = std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(v.ok_or("a \\x escape is not two hex digits")?);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v: u32 = u32::from(e - b'0');
                for _ in 0..2 {
                    match inner.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                // Python keeps the low byte of octal escapes above \377.
                out.push((v & 0xff) as u8);
            }
            other => {
                out.push(b'\\');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Python's `raw-unicode-escape` decoding (UNICODE opcode): bytes are
/// Latin-1 code points except `\uXXXX` and `\UXXXXXXXX` escapes.
pub fn decode_raw_unicode_escape(bytes: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        i += 1;
        let digits = match (c, bytes.get(i)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => {
                out.push(char::from(c));
                continue;
            }
        };
        let hex = bytes.get(i + 1..i + 1 + digits).ok_or("a \\u escape is cut short")?;
        let code = std::str::from_utf8(hex).ok().and_then(|h| u32::from_str_radix(h, 16).ok());
        let ch = code.and_then(char::from_u32).ok_or("a \\u escape is not a valid code point")?;
        out.push(ch);
        i += 1 + digits;
    }
    Ok(out)
}

/// Python caps decimal integer literals at 4300 digits; so does detris
/// (the conversion is quadratic in the digit count).
const MAX_DECIMAL_DIGITS: usize = 4300;

/// A decimal integer of any size (protocol-0 LONG) as the minimal
/// little-endian two's-complement bytes LONG1 would hold.
pub fn decimal_to_long(text: &[u8]) -> Result<Vec<u8>, String> {
    let text = text.trim_ascii();
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err("LONG is not a decimal integer".into());
    }
    if digits.len() > MAX_DECIMAL_DIGITS {
        return Err(format!("LONG has more than {MAX_DECIMAL_DIGITS} digits"));
    }
    // Magnitude, little-endian base 256.
    let mut bytes: Vec<u8> = Vec::new();
    for &d in digits {
        let mut carry = u32::from(d - b'0');
        for b in bytes.iter_mut() {
            let v = u32::from(*b) * 10 + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            bytes.push(carry as u8);
        }
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    // Room for the sign bit.
    if bytes.last().is_none_or(|&b| b & 0x80 != 0) {
        bytes.push(0);
    }
    if negative {
        let mut carry = true;
        for b in bytes.iter_mut() {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
        // Drop 0xff bytes that only repeat the sign.
        while bytes.len() > 1
            && bytes.last() == Some(&0xff)
            && bytes.get(bytes.len() - 2).is_some_and(|&b| b & 0x80 != 0)
        {
            bytes.pop();
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings_decode_python_escapes() {
        assert_eq!(decode_quoted_string(br"'a\nb\x41\101\'\\'").unwrap(), b"a\nbAA'\\");
        assert_eq!(decode_quoted_string(br#""it's""#).unwrap(), b"it's");
        assert!(decode_quoted_string(b"abc").is_err());
        assert!(decode_quoted_string(br"'\x4'").is_err());
    }

    #[test]
    fn decimal_longs_match_python_long1_bytes() {
        // Reference bytes: Python's pickle.dumps(n, 2) LONG1 payloads.
        assert_eq!(decimal_to_long(b"1180591620717411303424").unwrap(), [0, 0, 0, 0, 0, 0, 0, 0, 0x40]);
        assert_eq!(decimal_to_long(b"-1180591620717411303424").unwrap(), [0, 0, 0, 0, 0, 0, 0, 0, 0xc0]);
        assert_eq!(decimal_to_long(b"-9223372036854775808").unwrap(), [0, 0, 0, 0, 0, 0, 0, 0x80]);
        assert_eq!(decimal_to_long(b"9223372036854775807").unwrap(), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(decimal_to_long(b"0").unwrap(), [0]);
        assert!(decimal_to_long(b"12a").is_err());
        assert!(decimal_to_long(&[b'9'; 5000]).is_err());
    }

    #[test]
    fn raw_unicode_escape_decodes_escapes_and_latin1() {
        assert_eq!(decode_raw_unicode_escape(b"caf\xe9 \\u00e9\\U0001F600").unwrap(), "café é😀");
        assert!(decode_raw_unicode_escape(b"\\u12").is_err());
        assert!(decode_raw_unicode_escape(b"\\UFFFFFFFF").is_err());
    }
}
