//! Tar header layout and field codecs shared by the writer and the reader.

/// A tar block.
pub(super) const BLOCK: usize = 512;
/// Largest extended header (PAX `x`/`g`, GNU `L`/`K`) the reader accepts.
pub(super) const MAX_EXT: u64 = 1 << 20;
/// Largest sparse map (in bytes of its text) the reader accepts.
pub(super) const MAX_SPARSE_MAP: u64 = 1 << 20;

/// Field ranges of a ustar header.
pub(super) mod off {
    use std::ops::Range;
    pub const NAME: Range<usize> = 0..100;
    pub const MODE: Range<usize> = 100..108;
    pub const UID: Range<usize> = 108..116;
    pub const GID: Range<usize> = 116..124;
    pub const SIZE: Range<usize> = 124..136;
    pub const MTIME: Range<usize> = 136..148;
    pub const CHKSUM: Range<usize> = 148..156;
    pub const TYPEFLAG: usize = 156;
    pub const LINKNAME: Range<usize> = 157..257;
    pub const MAGIC: Range<usize> = 257..263;
    pub const VERSION: Range<usize> = 263..265;
    pub const DEVMAJOR: Range<usize> = 329..337;
    pub const DEVMINOR: Range<usize> = 337..345;
    pub const PREFIX: Range<usize> = 345..500;
}

/// The largest value an octal field of `width` bytes holds (width-1 digits).
pub(super) fn octal_max(width: usize) -> u64 {
    (1u64 << (3 * (width as u32 - 1))) - 1
}

/// Writes `v` as zero-padded octal with a NUL terminator; false if too big.
pub(super) fn put_octal(field: &mut [u8], v: u64) -> bool {
    let w = field.len();
    if v > octal_max(w) {
        return false;
    }
    let s = format!("{:0width$o}", v, width = w - 1);
    field[..w - 1].copy_from_slice(s.as_bytes());
    field[w - 1] = 0;
    true
}

/// Computes and stores the header checksum.
pub(super) fn set_checksum(h: &mut [u8; BLOCK]) {
    h[off::CHKSUM].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{:06o}", sum);
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
}

/// Whether the stored checksum matches (unsigned or, historically, signed).
pub(super) fn checksum_ok(h: &[u8; BLOCK]) -> bool {
    let Some(stored) = parse_numeric(&h[off::CHKSUM]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if off::CHKSUM.contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    stored == unsigned || i64::try_from(stored).ok() == Some(signed)
}

/// Parses a numeric header field: octal (leading spaces, NUL or space
/// terminated) or GNU base-256 (high bit set; negative values refused).
pub(super) fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return Some(0);
    }
    if field[0] & 0x80 != 0 {
        if field[0] == 0xff {
            return None;
        }
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let mut i = 0;
    while i < field.len() && field[i] == b' ' {
        i += 1;
    }
    let mut v: u64 = 0;
    while i < field.len() && (b'0'..=b'7').contains(&field[i]) {
        v = v.checked_mul(8)?.checked_add(u64::from(field[i] - b'0'))?;
        i += 1;
    }
    // What follows the digits may only be terminators.
    if field[i..].iter().all(|&b| b == 0 || b == b' ') {
        Some(v)
    } else {
        None
    }
}

/// A NUL-terminated string field.
pub(super) fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// Key/value records of a PAX header, in order.
pub(super) type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// One `"<len> <key>=<value>\n"` PAX record.
pub(super) fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let total = body + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(len.to_string().as_bytes());
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    debug_assert_eq!(r.len(), len);
    r
}

/// Parses PAX records; `Err` says what is malformed.
pub(super) fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or("invalid PAX record: no length")?;
        let digits = &data[..sp];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err("invalid PAX record length".into());
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("invalid PAX record length")?;
        if len < sp + 3 || len > data.len() {
            return Err(format!("invalid PAX record length {len}"));
        }
        let rec = &data[..len];
        if rec[len - 1] != b'\n' {
            return Err("invalid PAX record: no newline at its length".into());
        }
        let body = &rec[sp + 1..len - 1];
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or("invalid PAX record: no '='")?;
        if eq == 0 {
            return Err("invalid PAX record: empty key".into());
        }
        out.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// Formats a time as PAX decimal seconds with 9 fraction digits
/// (`sec`/`nsec` as in a normalised timespec).
pub(super) fn pax_time(sec: i64, nsec: u32) -> String {
    if sec < 0 && nsec > 0 {
        // sec + nsec/1e9 is negative with magnitude (-sec-1) + (1e9-nsec)/1e9.
        format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
    } else {
        format!("{}.{:09}", sec, nsec)
    }
}

/// Parses PAX decimal seconds into a normalised (sec, nsec).
pub(super) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: i64 = int.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        Some((int, ns))
    } else if ns == 0 {
        Some((-int, 0))
    } else {
        Some((-int - 1, 1_000_000_000 - ns))
    }
}

/// Parses a PAX decimal unsigned integer.
pub(super) fn parse_pax_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        for n in 0..300 {
            let v = vec![b'a'; n];
            let r = pax_record(b"path", &v);
            let parsed = parse_pax(&r).unwrap();
            assert_eq!(parsed, vec![(b"path".to_vec(), v)]);
        }
    }

    #[test]
    fn times() {
        for (s, n) in [
            (0, 0),
            (5, 1),
            (-2, 500_000_000),
            (-1, 0),
            (-1, 999_999_999),
        ] {
            assert_eq!(parse_pax_time(pax_time(s, n).as_bytes()), Some((s, n)));
        }
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"1.5x"), None);
    }

    #[test]
    fn numeric() {
        let mut f = [0u8; 8];
        assert!(put_octal(&mut f, 0o755));
        assert_eq!(parse_numeric(&f), Some(0o755));
        assert!(!put_octal(&mut f, 0o10000000));
        assert_eq!(parse_numeric(b"  17 \0"), Some(0o17));
        assert_eq!(parse_numeric(b"19"), None);
        assert_eq!(parse_numeric(&[0x80, 0, 1, 0]), Some(256));
        assert_eq!(parse_numeric(&[0xff, 0xff]), None);
    }
}
