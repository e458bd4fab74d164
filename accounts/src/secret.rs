//! The few primitives secrets need here: random bytes, SHA-256, hex. (aws-lc-rs, the
//! crypto provider the workspace already builds.)

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// `N` bytes from the system's CSPRNG.
pub fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(b)
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref().to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_abc_in_hex() {
        let h = super::hex(&super::sha256(b"abc"));
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(super::random::<16>(), super::random::<16>());
    }
}
