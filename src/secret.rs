//! Unguessable values (lease ids, tokens, session ids) from the OS CSPRNG, and their hex form.

/// `count` bytes from the OS CSPRNG.
pub fn random_bytes(count: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; count];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

/// `count` random bytes, as lowercase hex.
pub fn random_hex(count: usize) -> String {
    hex(&random_bytes(count))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// Whether `text` is exactly `count` bytes in lowercase hex, as [`random_hex`] makes them.
pub fn is_hex(text: &str, count: usize) -> bool {
    text.len() == count * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_is_fresh_and_recognised() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_ne!(a, b);
        assert!(is_hex(&a, 16));
        assert!(!is_hex(&a.to_uppercase(), 16));
        assert!(!is_hex(&a, 8));
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
