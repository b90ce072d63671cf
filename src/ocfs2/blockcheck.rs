//! OCFS2 metadata checksums (the `metaecc` feature): every metadata block
//! carries a `struct ocfs2_block_check` (le32 CRC32, le16 Hamming code, le16
//! reserved) that the kernel and the tools verify on read. A block we
//! rewrite by hand must get a fresh one, or the filesystem refuses it.
//! Computed as libocfs2's `ocfs2_block_check_compute` (blockcheck.c).

/// Where `i_check` sits in `struct ocfs2_dinode` (the superblock is one).
pub const DINODE_CHECK: usize = 0x80;
/// Where `bg_check` sits in `struct ocfs2_group_desc`.
pub const GROUP_DESC_CHECK: usize = 0x30;
/// `sizeof(struct ocfs2_block_check)`.
pub const CHECK_LEN: usize = 8;

/// The CRC32 and the Hamming code of `block`, whose check field the caller
/// has zeroed (both are computed over the whole block, check included).
pub fn compute(block: &[u8]) -> (u32, u16) {
    // ocfs2 uses crc32_le(~0, ...) without the final inversion of the
    // usual CRC-32, which crc32fast applies.
    let crc = !crc32fast::hash(block);
    // Parity over at most 4 KiB of data needs 16 bits; libocfs2 keeps the
    // low 16 bits as well.
    (crc, hamming(block) as u16)
}

/// Zeroes the 8-byte check at `check_at`, computes the check of the whole
/// block and writes it there (little-endian), as the tools do on write.
/// Panics when the check does not lie inside `block` (a caller's bug).
pub fn stamp(block: &mut [u8], check_at: usize) {
    block[check_at..check_at + CHECK_LEN].fill(0);
    let (crc, ecc) = compute(block);
    block[check_at..check_at + 4].copy_from_slice(&crc.to_le_bytes());
    block[check_at + 4..check_at + 6].copy_from_slice(&ecc.to_le_bytes());
}

/// The check stored at `check_at`: (crc, ecc).
pub fn stored(block: &[u8], check_at: usize) -> Option<(u32, u16)> {
    let c = block.get(check_at..check_at + CHECK_LEN)?;
    Some((
        u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        u16::from_le_bytes([c[4], c[5]]),
    ))
}

/// Whether the check stored at `check_at` matches the block's contents.
/// Strict: a single-bit error the Hamming code could repair is still a
/// mismatch (we only ever verify blocks we are about to trust or rewrite).
pub fn verify(block: &[u8], check_at: usize) -> bool {
    let Some(want) = stored(block, check_at) else {
        return false;
    };
    let mut copy = block.to_vec();
    copy[check_at..check_at + CHECK_LEN].fill(0);
    compute(&copy) == want
}

/// `ocfs2_hamming_encode_block`: the XOR of the Hamming code bit number of
/// every set data bit. Data bit i (byte i/8, bit i%8: little-endian) is code
/// bit i+1 pushed past every power of two (the parity positions) up to it.
fn hamming(block: &[u8]) -> u32 {
    let mut parity = 0u32;
    // Parity positions below the current code bit; only grows, since set
    // bits are visited in increasing order (libocfs2's p_cache).
    let mut p = 0u32;
    for (at, &byte) in block.iter().enumerate() {
        let mut bits = byte;
        while bits != 0 {
            let i = at as u32 * 8 + bits.trailing_zeros();
            bits &= bits - 1;
            let mut b = i + 1 + p;
            while (1u32 << p) < b + 1 {
                p += 1;
                b += 1;
            }
            parity ^= b;
        }
    }
    parity
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocfs2::restamp::testimg;

    /// calc_code_bit of blockcheck.c, without its cache.
    fn code_bit(i: u32) -> u32 {
        let mut b = i + 1;
        let mut p = 0;
        while (1u32 << p) < b + 1 {
            p += 1;
            b += 1;
        }
        b
    }

    #[test]
    fn hamming_matches_the_reference_bit_by_bit() {
        // Data bit 0 is code bit 3 (1 and 2 are parity), bit 1 is 5, ...
        assert_eq!([0, 1, 2, 3, 4].map(code_bit), [3, 5, 6, 7, 9]);
        let mut block = vec![0u8; 4096];
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8;
        }
        let want = (0..4096 * 8u32)
            .filter(|i| block[*i as usize / 8] & (1 << (i % 8)) != 0)
            .fold(0, |acc, i| acc ^ code_bit(i));
        assert_eq!(hamming(&block), want);
        assert!(want <= 0xFFFF);
        assert_eq!(hamming(&[0u8; 512]), 0);
        assert_eq!(hamming(&[1u8]), 3);
    }

    #[test]
    fn crc_is_crc32_le_without_final_inversion() {
        // crc32_le(~0, "123456789") in the kernel's convention is the
        // complement of the well-known CRC-32 check value 0xCBF43926.
        assert_eq!(compute(b"123456789").0, !0xCBF4_3926);
    }

    #[test]
    fn stamp_writes_what_verify_accepts() {
        let mut block = vec![0x5Au8; 512];
        stamp(&mut block, DINODE_CHECK);
        assert!(verify(&block, DINODE_CHECK));
        assert_eq!(&block[DINODE_CHECK + 6..DINODE_CHECK + 8], &[0, 0]);
        block[300] ^= 0x10;
        assert!(!verify(&block, DINODE_CHECK));
        assert!(!verify(&block, 510));
    }

    #[test]
    fn matches_what_mkfs_wrote() {
        let img = testimg::mkfs(64 << 20, 4096, &["--fs-features=metaecc"]);
        let bytes = std::fs::read(&img.path).unwrap();
        let block = |n: usize| &bytes[n * 4096..(n + 1) * 4096];
        // Block 2: the superblock; block 3: the first cluster group
        // (s_first_cluster_group of a 4 KiB-block, 4 KiB-cluster volume).
        let sb = block(2);
        assert!(sb.starts_with(b"OCFSV2"));
        let gd = block(3);
        assert!(gd.starts_with(b"GROUP01"));
        for (blk, at) in [(sb, DINODE_CHECK), (gd, GROUP_DESC_CHECK)] {
            let want = stored(blk, at).unwrap();
            assert_ne!(want, (0, 0));
            let mut copy = blk.to_vec();
            copy[at..at + CHECK_LEN].fill(0);
            assert_eq!(compute(&copy), want);
            stamp(&mut copy, at);
            assert_eq!(copy, blk);
            assert!(verify(blk, at));
        }
    }
}
