//! The byte layout of stored header lists, shared by the backends that keep
//! bytes (Redis, SQLite).

/// The format's version, first byte of every encoded header list, so that a
/// later format can be told apart from this one.
const HEADERS_V1: u8 = 1;

pub(crate) fn encode_headers(headers: &[(String, String)]) -> Vec<u8> {
    let len: usize = headers.iter().map(|(n, v)| 8 + n.len() + v.len()).sum();
    let mut out = Vec::with_capacity(1 + len);
    out.push(HEADERS_V1);
    for (name, value) in headers {
        for part in [name, value] {
            // Header names and values are far below 4 GiB; saturating keeps
            // a pathological one from wrapping into a valid-looking length.
            let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    out
}

pub(crate) fn decode_headers(mut buf: &[u8]) -> Option<Vec<(String, String)>> {
    let Some((&HEADERS_V1, rest)) = buf.split_first() else {
        return None;
    };
    buf = rest;
    let take = |buf: &mut &[u8]| -> Option<String> {
        let (len, rest) = buf.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (text, rest) = rest.split_at(len);
        *buf = rest;
        String::from_utf8(text.to_vec()).ok()
    };
    let mut headers = Vec::new();
    while !buf.is_empty() {
        let name = take(&mut buf)?;
        let value = take(&mut buf)?;
        headers.push((name, value));
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_decoding_is_strict() {
        let headers = vec![
            ("content-type".to_owned(), "text/plain".to_owned()),
            ("x-empty".to_owned(), String::new()),
            ("x-ü".to_owned(), "✓".to_owned()),
        ];
        let encoded = encode_headers(&headers);
        assert_eq!(decode_headers(&encoded).unwrap(), headers);
        assert_eq!(decode_headers(&encode_headers(&[])).unwrap(), vec![]);
        assert!(decode_headers(&[]).is_none());
        assert!(decode_headers(&[2]).is_none());
        assert!(decode_headers(&encoded[..encoded.len() - 1]).is_none());
        // A name without its value.
        assert!(decode_headers(&[1, 0, 0, 0, 1, b'a']).is_none());
        // A length past the end.
        assert!(decode_headers(&[1, 0, 0, 1, 0, b'a']).is_none());
        // Invalid UTF-8.
        assert!(decode_headers(&[1, 0, 0, 0, 1, 0xff, 0, 0, 0, 0]).is_none());
    }
}
