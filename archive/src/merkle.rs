//! RFC 6962 (Certificate Transparency) Merkle tree hashing over a period's file hashes, in the
//! digest's file order: leaf `SHA-256(0x00 ‖ h)`, node `SHA-256(0x01 ‖ left ‖ right)`, the
//! tree split at the largest power of two below the leaf count, and `SHA-256("")` for no leaves.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

fn leaf(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The Merkle tree head of `leaves` (each leaf's data is one file's SHA-256).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaf(&leaves[0]),
        n => {
            // The largest power of two strictly below n.
            let split = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node(&root(&leaves[..split]), &root(&leaves[split..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(byte: u8) -> Hash {
        [byte; 32]
    }

    #[test]
    fn follows_rfc_6962_shape() {
        assert_eq!(root(&[]), <Hash>::from(Sha256::digest(b"")));
        assert_eq!(root(&[h(1)]), leaf(&h(1)));
        let (a, b, c) = (leaf(&h(1)), leaf(&h(2)), leaf(&h(3)));
        assert_eq!(root(&[h(1), h(2)]), node(&a, &b));
        // Three leaves split 2 + 1, not 1 + 2.
        assert_eq!(root(&[h(1), h(2), h(3)]), node(&node(&a, &b), &c));
        let d = leaf(&h(4));
        let e = leaf(&h(5));
        assert_eq!(
            root(&[h(1), h(2), h(3), h(4), h(5)]),
            node(&node(&node(&a, &b), &node(&c, &d)), &e)
        );
        // Order matters: swapping two files changes the root.
        assert_ne!(root(&[h(2), h(1)]), root(&[h(1), h(2)]));
    }
}
