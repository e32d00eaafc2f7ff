//! MAC addresses: the type every module passes around, and its text form.

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    let hex: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A link-layer address attribute as a MAC, when it is one (6 bytes).
pub(crate) fn mac_from_bytes(bytes: &[u8]) -> Option<Mac> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("C6:d2:32:6f:8f:44").unwrap();
        assert_eq!(format_mac(&mac), "c6:d2:32:6f:8f:44");
        assert!(parse_mac("c6:d2:32:6f:8f").is_none());
        assert!(parse_mac("c6:d2:32:6f:8f:44:00").is_none());
        assert!(parse_mac("c6:d2:32:6f:8f:4").is_none());
    }
}
