//! The crypto constructions of `domfs::crypto` against published test vectors, an
//! independent XTS implementation, and the properties the sealed block format promises.
//!
//! Sources of the vectors (every hex string below is copied from them, not computed):
//! - XTS-AES-256: IEEE Std 1619-2007, Annex B, vectors 10–14 (512-byte data units, key =
//!   key1 ‖ key2, tweak = data unit sequence number as a 16-byte little-endian integer), as
//!   carried by BoringSSL's `crypto/fipsmodule/cipher/xts_test.cc`.
//! - HMAC-SHA-256: RFC 4231, section 4, test cases 1–7 (case 5 compares 128 bits).
//! - HKDF-SHA-256: RFC 5869, appendix A, test cases 1–3.

use aes::Aes256;
use cipher::KeyInit;
use domfs::Error;
use domfs::crypto::block::BadTag;
use domfs::crypto::{BlockCodec, DomainKey, MacKey, VolumeKeys, Xts256};
use domfs::types::{BLOCK_SIZE, Block, Generation, PhysBlock, Tag, VolumeId};
use hkdf::Hkdf;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::Sha256;
use xts_mode::{Array, Xts128};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex in a test vector ({e}): {s}"))
}

/// `n` copies of the hex byte `byte` (the RFCs write such keys as "0x0b (20 bytes)").
fn hex_repeat(byte: &str, n: usize) -> String {
    byte.repeat(n)
}

/// A seeded generator whose seed is printed, so that a failure can be replayed with
/// `DOMFS_TEST_SEED=<seed>`.
fn test_rng(test: &str) -> (StdRng, u64) {
    let seed = match std::env::var("DOMFS_TEST_SEED") {
        Ok(s) => s.parse().expect("DOMFS_TEST_SEED must be a u64"),
        Err(_) => rand::rng().random(),
    };
    eprintln!("{test}: seed {seed} (set DOMFS_TEST_SEED to replay)");
    (StdRng::seed_from_u64(seed), seed)
}

// ---------------------------------------------------------------------------------------
// XTS-AES-256: IEEE 1619-2007 vectors 10–14
// ---------------------------------------------------------------------------------------

/// Key1 ‖ Key2 of vectors 10–14 (the digits of e, then of π).
const IEEE1619_KEY_256: &str = concat!(
    "2718281828459045235360287471352662497757247093699959574966967627",
    "3141592653589793238462643383279502884197169399375105820974944592",
);

/// The plaintext of vectors 10–14: bytes 00..ff, twice.
const IEEE1619_PTX_512: &str = concat!(
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122",
    "232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f404142434445",
    "464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768",
    "696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f808182838485868788898a8b",
    "8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3a4a5a6a7a8a9aaabacadae",
    "afb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1",
    "d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4",
    "f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b0c0d0e0f1011121314151617",
    "18191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a",
    "3b3c3d3e3f404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d",
    "5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80",
    "8182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9fa0a1a2a3",
    "a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6",
    "c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9",
    "eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
);

struct XtsVector {
    name: &'static str,
    /// The data unit sequence number.
    sequence: u64,
    ciphertext: &'static str,
}

const IEEE1619_256: [XtsVector; 5] = [
    XtsVector {
        name: "IEEE 1619 vector 10",
        sequence: 0xff,
        ciphertext: concat!(
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e2",
            "76f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd5776926c49a3",
            "095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89ae",
            "ba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b",
            "9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de18",
            "34f280d7667b327f6c8cd7557e12ac3a0f93ec05c52e0493ef31a12d3d9260f79a289d",
            "6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6dc3966380a",
            "d8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f6160",
            "15e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47",
            "bd71c5edae9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f9",
            "0c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac6e",
            "333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e",
            "9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed43851ad77f16f541df",
            "d269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa7",
            "55c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
        ),
    },
    XtsVector {
        name: "IEEE 1619 vector 11",
        sequence: 0xffff,
        ciphertext: concat!(
            "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11e1d022",
            "5438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2469ee4a4fa79",
            "4e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d3d6e1dc6ca181d4b54",
            "6179d55544aa7760c40d06741539c7e3cd9d2f6650b2013fd0eeb8c2b8e3d8d240ccae",
            "2d4c98320a7442e1c8d75a42d6e6cfa4c2eca1798d158c7aecdf82490f24bb9b38e108",
            "bcda12c3faf9a21141c3613b58367f922aaa26cd22f23d708dae699ad7cb40a8ad0b6e",
            "2784973dcb605684c08b8d6998c69aac049921871ebb65301a4619ca80ecb485a31d74",
            "4223ce8ddc2394828d6a80470c092f5ba413c3378fa6054255c6f9df4495862bbb3287",
            "681f931b687c888abf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5",
            "c0c24c8ab018bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474a",
            "fb75bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c6309",
            "4f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a7e20dbdf",
            "308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca686e0d7345c69ed5",
            "0cdc2a8b332b1f8824108ac937eb050585608ee734097fc09054fbff89eeaeea791f4a",
            "7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
        ),
    },
    XtsVector {
        name: "IEEE 1619 vector 12",
        sequence: 0xff_ffff,
        ciphertext: concat!(
            "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200a8b490",
            "e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba0499298ebc699c0",
            "c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a87815391f6108fc4afa",
            "6a05d9303c6ba68a128a55705d415985832fdeaae6c8e19110e84d1b1f199a2692119e",
            "dc96132658f09da7c623efcec712537a3d94c0bf5d7e352ec94ae5797fdb377dc15511",
            "50721adf15bd26a8efc2fcaad56881fa9e62462c28f30ae1ceaca93c345cf243b73f54",
            "2e2074a705bd2643bb9f7cc79bb6e7091ea6e232df0f9ad0d6cf502327876d82207abf",
            "2115cdacf6d5a48f6c1879a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b",
            "5845eb491adfefe097b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cd",
            "efb39e3964c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71",
            "799da3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7af0",
            "8ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2480241b4",
            "4d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace231cc949e5b96f",
            "e76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36ed242c8900dd1fa965bc",
            "950dfce09b132263a1eef52dd6888c309f5a7d712826",
        ),
    },
    XtsVector {
        name: "IEEE 1619 vector 13",
        sequence: 0xffff_ffff,
        ciphertext: concat!(
            "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5520f7c",
            "4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1c86b643497da",
            "1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac7ca7f3fa5279bef56f",
            "82cd7a2f38672e824814e10700300a055e1630b8f1cb0e919f5e942010a416e2bf48cb",
            "46993d3cb6a51c19bacf864785a00bc2ecff15d350875b246ed53e68be6f55bd7e05cf",
            "c2b2ed6432198a6444b6d8c247fab941f569768b5c429366f1d3f00f0345b96123d562",
            "04c01c63b22ce78baf116e525ed90fdea39fa469494d3866c31e05f295ff21fea8d4e6",
            "e13d67e47ce722e9698a1c1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b",
            "9b749409514f1053027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef",
            "5b9e4457e75d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00",
            "f1df73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc0077",
            "ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460d183f044",
            "04a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a41556cec3732575953",
            "3ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88cf6516139420fcff3b736",
            "1d86322c4bd84c82f335abb152c4a93411373aaa8220",
        ),
    },
    XtsVector {
        name: "IEEE 1619 vector 14",
        sequence: 0xff_ffff_ffff,
        ciphertext: concat!(
            "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed2350eae7",
            "e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b808da548081ac8",
            "47b158e1264be25bb0910bbc92647108089415d45fab1b3d2604e8a8eff1ae4020cfa3",
            "9936b66827b23f371b92200be90251e6d73c5f86de5fd4a950781933d79a28272b782a",
            "2ec313efdfcc0628f43d744c2dc2ff3dcb66999b50c7ca895b0c64791eeaa5f29499fb",
            "1c026f84ce5b5c72ba1083cddb5ce45434631665c333b60b11593fb253c5179a2c8db8",
            "13782a004856a1653011e93fb6d876c18366dd8683f53412c0c180f9c848592d593f86",
            "09ca736317d356e13e2bff3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb48",
            "2b99453fbe25a41bf6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e56",
            "13a3b5c2f685b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e4",
            "65aa6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abce1",
            "9dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a0acdec67",
            "6fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd927212054681d70ea737134c",
            "dfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de6975be5e0b4efce51cd3",
            "e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9",
        ),
    },
];

fn xts_key(hex_key: &str) -> [u8; 64] {
    unhex(hex_key)
        .try_into()
        .expect("an XTS-AES-256 key is 64 bytes")
}

/// The IEEE 1619 tweak: the data unit sequence number as a 128-bit little-endian integer.
fn sequence_tweak(sequence: u64) -> [u8; 16] {
    u128::from(sequence).to_le_bytes()
}

#[test]
fn xts_vector_inputs_are_as_published() {
    // The plaintext is the byte sequence 00..ff twice; a typo in it would break every vector.
    let expected: Vec<u8> = (0..512usize).map(|i| i as u8).collect();
    assert_eq!(unhex(IEEE1619_PTX_512), expected);
    for v in &IEEE1619_256 {
        assert_eq!(
            unhex(v.ciphertext).len(),
            512,
            "{}: ciphertext length",
            v.name
        );
    }
}

#[test]
fn xts_ieee1619_vectors_10_to_14_encrypt() {
    let xts = Xts256::new(&xts_key(IEEE1619_KEY_256));
    for v in &IEEE1619_256 {
        let mut sector = unhex(IEEE1619_PTX_512);
        xts.encrypt_sector(&mut sector, sequence_tweak(v.sequence))
            .expect("a 512-byte sector is valid");
        assert_eq!(hex::encode(&sector), v.ciphertext, "{}: encrypt", v.name);
    }
}

#[test]
fn xts_ieee1619_vectors_10_to_14_decrypt() {
    let xts = Xts256::new(&xts_key(IEEE1619_KEY_256));
    for v in &IEEE1619_256 {
        let mut sector = unhex(v.ciphertext);
        xts.decrypt_sector(&mut sector, sequence_tweak(v.sequence))
            .expect("a 512-byte sector is valid");
        assert_eq!(
            hex::encode(&sector),
            IEEE1619_PTX_512,
            "{}: decrypt",
            v.name
        );
    }
}

/// The oracle agrees with the published vectors too, so the differential test below
/// compares against something known to be right.
#[test]
fn xts_oracle_matches_ieee1619_vectors() {
    let key = xts_key(IEEE1619_KEY_256);
    let oracle = oracle(&key);
    for v in &IEEE1619_256 {
        let mut sector = unhex(IEEE1619_PTX_512);
        oracle.encrypt_sector(&mut sector, Array(sequence_tweak(v.sequence)));
        assert_eq!(hex::encode(&sector), v.ciphertext, "{}: xts-mode", v.name);
    }
}

fn oracle(key: &[u8; 64]) -> Xts128<Aes256> {
    Xts128::new(
        Aes256::new_from_slice(&key[..32]).expect("a 32-byte AES key"),
        Aes256::new_from_slice(&key[32..]).expect("a 32-byte AES key"),
    )
}

/// Random keys, tweaks and sectors: byte-identical to `xts-mode` in both directions. Besides
/// domfs's 4096-byte sectors this covers lengths that are not a whole batch of tweaks (the
/// implementation computes 256 tweaks at a time) and tweaks with high bits set (the
/// generation half of a domfs tweak).
#[test]
fn xts_matches_xts_mode_on_random_sectors() {
    let (mut rng, seed) = test_rng("xts_matches_xts_mode_on_random_sectors");
    let lengths =
        [BLOCK_SIZE; 48]
            .into_iter()
            .chain([16, 32, 48, 512, 4080, 4112, 8192, 12288 + 48]);
    for (i, len) in lengths.enumerate() {
        let mut key = [0u8; 64];
        rng.fill_bytes(&mut key);
        let mut tweak = [0u8; 16];
        rng.fill_bytes(&mut tweak);
        if i % 4 == 1 {
            tweak = [0xff; 16];
        }
        let mut plaintext = vec![0u8; len];
        rng.fill_bytes(&mut plaintext);

        let ours = Xts256::new(&key);
        let theirs = oracle(&key);

        let mut ct_ours = plaintext.clone();
        ours.encrypt_sector(&mut ct_ours, tweak)
            .expect("a whole number of blocks");
        let mut ct_theirs = plaintext.clone();
        theirs.encrypt_sector(&mut ct_theirs, Array(tweak));
        assert!(
            ct_ours == ct_theirs,
            "seed {seed}, case {i}, {len} bytes: encryption differs from xts-mode"
        );

        let mut pt_ours = ct_theirs.clone();
        ours.decrypt_sector(&mut pt_ours, tweak)
            .expect("a whole number of blocks");
        assert!(
            pt_ours == plaintext,
            "seed {seed}, case {i}, {len} bytes: decrypting xts-mode's ciphertext fails"
        );
        let mut pt_theirs = ct_ours;
        theirs.decrypt_sector(&mut pt_theirs, Array(tweak));
        assert!(
            pt_theirs == plaintext,
            "seed {seed}, case {i}, {len} bytes: xts-mode cannot decrypt our ciphertext"
        );
    }
}

#[test]
fn xts_rejects_sectors_of_wrong_length() {
    let xts = Xts256::new(&[7u8; 64]);
    for len in [0, 1, 15, 17, 31, 511, 4095, 4097] {
        let original: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut sector = original.clone();
        assert!(
            matches!(
                xts.encrypt_sector(&mut sector, [0; 16]),
                Err(Error::Invalid(_))
            ),
            "encrypting a {len}-byte sector must fail"
        );
        assert_eq!(sector, original, "a rejected sector is left untouched");
        assert!(
            matches!(
                xts.decrypt_sector(&mut sector, [0; 16]),
                Err(Error::Invalid(_))
            ),
            "decrypting a {len}-byte sector must fail"
        );
        assert_eq!(sector, original, "a rejected sector is left untouched");
    }
}

// ---------------------------------------------------------------------------------------
// HMAC-SHA-256: RFC 4231 test cases 1–7
// ---------------------------------------------------------------------------------------

struct HmacVector {
    case: u32,
    key: String,
    data: String,
    /// Case 5 publishes only the first 128 bits.
    mac: &'static str,
}

fn rfc4231_vectors() -> Vec<HmacVector> {
    vec![
        HmacVector {
            case: 1,
            key: hex_repeat("0b", 20),
            // "Hi There"
            data: "4869205468657265".into(),
            mac: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        },
        HmacVector {
            case: 2,
            // "Jefe"
            key: "4a656665".into(),
            // "what do ya want for nothing?"
            data: "7768617420646f2079612077616e7420666f72206e6f7468696e673f".into(),
            mac: "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        },
        HmacVector {
            case: 3,
            key: hex_repeat("aa", 20),
            data: hex_repeat("dd", 50),
            mac: "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        },
        HmacVector {
            case: 4,
            key: "0102030405060708090a0b0c0d0e0f10111213141516171819".into(),
            data: hex_repeat("cd", 50),
            mac: "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        },
        HmacVector {
            case: 5,
            key: hex_repeat("0c", 20),
            // "Test With Truncation"
            data: "546573742057697468205472756e636174696f6e".into(),
            mac: "a3b6167473100ee06e0c796c2955552b",
        },
        HmacVector {
            case: 6,
            key: hex_repeat("aa", 131),
            // "Test Using Larger Than Block-Size Key - Hash Key First"
            data: concat!(
                "54657374205573696e67204c6172676572205468616e20426c6f636b2d53697a",
                "65204b6579202d2048617368204b6579204669727374",
            )
            .into(),
            mac: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        },
        HmacVector {
            case: 7,
            key: hex_repeat("aa", 131),
            // "This is a test using a larger than block-size key and a larger than block-size
            // data. The key needs to be hashed before being used by the HMAC algorithm."
            data: concat!(
                "5468697320697320612074657374207573696e672061206c6172676572207468",
                "616e20626c6f636b2d73697a65206b657920616e642061206c61726765722074",
                "68616e20626c6f636b2d73697a6520646174612e20546865206b6579206e6565",
                "647320746f20626520686173686564206265666f7265206265696e6720757365",
                "642062792074686520484d414320616c676f726974686d2e",
            )
            .into(),
            mac: "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        },
    ]
}

/// The first `expected.len()` bytes of `tag` (all 32 except for the truncated case 5).
fn tag_prefix_hex(tag: &Tag, expected: &str) -> String {
    hex::encode(&tag.0[..expected.len() / 2])
}

#[test]
fn hmac_rfc4231_cases_1_to_7() {
    let vectors = rfc4231_vectors();
    assert_eq!(vectors.len(), 7);
    for v in &vectors {
        let mac = MacKey::new(&unhex(&v.key));
        let data = unhex(&v.data);
        let tag = mac.tag(&[&data]);
        assert_eq!(
            tag_prefix_hex(&tag, v.mac),
            v.mac,
            "RFC 4231 case {}",
            v.case
        );
        // Keying once and tagging repeatedly must not carry state over.
        let again = mac.tag(&[&data]);
        assert!(
            tag.ct_eq(&again),
            "RFC 4231 case {}: second tag differs",
            v.case
        );
    }
}

/// The tag is over the concatenation of the parts, wherever the message is split.
#[test]
fn hmac_rfc4231_split_parts() {
    for v in &rfc4231_vectors() {
        let mac = MacKey::new(&unhex(&v.key));
        let data = unhex(&v.data);
        for cut in 0..=data.len() {
            let (a, b) = data.split_at(cut);
            let tag = mac.tag(&[a, b]);
            assert_eq!(
                tag_prefix_hex(&tag, v.mac),
                v.mac,
                "RFC 4231 case {}, split at {cut}",
                v.case
            );
        }
        let third = data.len() / 3;
        let (a, rest) = data.split_at(third);
        let (b, c) = rest.split_at(third);
        let tag = mac.tag(&[&[], a, &[], b, c, &[]]);
        assert_eq!(
            tag_prefix_hex(&tag, v.mac),
            v.mac,
            "RFC 4231 case {}, three parts with empty ones between",
            v.case
        );
        let bytewise: Vec<&[u8]> = data.chunks(1).collect();
        let tag = mac.tag(&bytewise);
        assert_eq!(
            tag_prefix_hex(&tag, v.mac),
            v.mac,
            "RFC 4231 case {}, one byte per part",
            v.case
        );
    }
}

// ---------------------------------------------------------------------------------------
// HKDF-SHA-256: RFC 5869 test cases 1–3, through the `hkdf` calls keys.rs makes
// ---------------------------------------------------------------------------------------

struct HkdfVector {
    case: u32,
    ikm: String,
    salt: &'static str,
    info: &'static str,
    prk: &'static str,
    okm: &'static str,
}

fn rfc5869_vectors() -> Vec<HkdfVector> {
    vec![
        HkdfVector {
            case: 1,
            ikm: hex_repeat("0b", 22),
            salt: "000102030405060708090a0b0c",
            info: "f0f1f2f3f4f5f6f7f8f9",
            prk: "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
            okm: concat!(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf",
                "34007208d5b887185865",
            ),
        },
        HkdfVector {
            case: 2,
            ikm: concat!(
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
                "404142434445464748494a4b4c4d4e4f",
            )
            .into(),
            salt: concat!(
                "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f",
                "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
                "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            ),
            info: concat!(
                "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf",
                "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef",
                "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            ),
            prk: "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
            okm: concat!(
                "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c",
                "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71",
                "cc30c58179ec3e87c14c01d5c1f3434f1d87",
            ),
        },
        HkdfVector {
            case: 3,
            ikm: hex_repeat("0b", 22),
            // Zero-length salt and info.
            salt: "",
            info: "",
            prk: "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
            okm: concat!(
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d",
                "9d201395faa4b61a96c8",
            ),
        },
    ]
}

#[test]
fn hkdf_rfc5869_cases_1_to_3() {
    for v in &rfc5869_vectors() {
        let (ikm, salt, info) = (unhex(&v.ikm), unhex(v.salt), unhex(v.info));
        let (prk, _) = Hkdf::<Sha256>::extract(Some(&salt), &ikm);
        assert_eq!(hex::encode(prk), v.prk, "RFC 5869 case {}: PRK", v.case);

        // Exactly as VolumeKeys::derive calls it.
        let hk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
        let mut okm = vec![0u8; v.okm.len() / 2];
        hk.expand(&info, &mut okm).expect("OKM length is valid");
        assert_eq!(hex::encode(&okm), v.okm, "RFC 5869 case {}: OKM", v.case);
    }
}

/// RFC 5869 2.2: a missing salt is HashLen zero bytes, which HMAC treats like an empty key.
#[test]
fn hkdf_rfc5869_case_3_without_salt() {
    let v = &rfc5869_vectors()[2];
    let hk = Hkdf::<Sha256>::new(None, &unhex(&v.ikm));
    let mut okm = vec![0u8; v.okm.len() / 2];
    hk.expand(&[], &mut okm).expect("OKM length is valid");
    assert_eq!(hex::encode(&okm), v.okm);
}

// ---------------------------------------------------------------------------------------
// Subkey derivation
// ---------------------------------------------------------------------------------------

fn key_from(byte: u8) -> DomainKey {
    DomainKey::from_bytes(&[byte; 32]).expect("32 bytes")
}

fn seal_once(codec: &BlockCodec, plaintext: &Block) -> (Block, Tag) {
    let mut block = *plaintext;
    let tag = codec.seal(PhysBlock(7), Generation(1), &mut block);
    (block, tag)
}

#[test]
fn volume_keys_are_deterministic() {
    let key = key_from(1);
    let vol = VolumeId([0x11; 16]);
    let a = VolumeKeys::derive(&key, &vol);
    let b = VolumeKeys::derive(&key, &vol);
    assert!(a.key_check.ct_eq(&b.key_check));
    let plaintext = [0x5a; BLOCK_SIZE];
    let (ct_a, tag_a) = seal_once(&BlockCodec::new(a, vol), &plaintext);
    let (ct_b, tag_b) = seal_once(&BlockCodec::new(b, vol), &plaintext);
    assert!(ct_a == ct_b && tag_a.ct_eq(&tag_b));
}

#[test]
fn volume_keys_differ_per_volume_and_per_key() {
    let plaintext = [0x5a; BLOCK_SIZE];
    let vol_a = VolumeId([0x11; 16]);
    let mut vol_b = vol_a;
    vol_b.0[15] ^= 1;
    let cases = [
        (
            "same key, volume ids one bit apart",
            key_from(1),
            vol_a,
            key_from(1),
            vol_b,
        ),
        (
            "same volume id, different keys",
            key_from(1),
            vol_a,
            key_from(2),
            vol_a,
        ),
    ];
    for (what, key1, vol1, key2, vol2) in cases {
        let k1 = VolumeKeys::derive(&key1, &vol1);
        let k2 = VolumeKeys::derive(&key2, &vol2);
        assert!(
            !k1.key_check.ct_eq(&k2.key_check),
            "{what}: same key check value"
        );
        // The MAC subkeys differ: one message, different tags.
        let msg: &[&[u8]] = &[b"domfs subkey test"];
        assert!(
            !k1.block_mac.tag(msg).ct_eq(&k2.block_mac.tag(msg)),
            "{what}: block MAC key"
        );
        assert!(
            !k1.superblock_mac
                .tag(msg)
                .ct_eq(&k2.superblock_mac.tag(msg)),
            "{what}: superblock MAC key"
        );
        // The XTS subkeys differ: one sector, one tweak, different ciphertexts.
        let mut s1 = plaintext;
        let mut s2 = plaintext;
        k1.xts.encrypt_sector(&mut s1, [3; 16]).expect("4096 bytes");
        k2.xts.encrypt_sector(&mut s2, [3; 16]).expect("4096 bytes");
        assert!(s1 != s2, "{what}: XTS key");
        // And so sealing the same block at the same place differs, ciphertext and tag.
        let (ct1, tag1) = seal_once(&BlockCodec::new(k1, vol1), &plaintext);
        let (ct2, tag2) = seal_once(&BlockCodec::new(k2, vol2), &plaintext);
        assert!(ct1 != ct2, "{what}: same sealed ciphertext");
        assert!(!tag1.ct_eq(&tag2), "{what}: same tag");
    }
}

/// Within one volume the subkeys are independent of each other (different HKDF labels).
#[test]
fn volume_subkeys_are_separated_by_label() {
    let keys = VolumeKeys::derive(&key_from(9), &VolumeId([0x42; 16]));
    let msg: &[&[u8]] = &[b"same message"];
    assert!(!keys.block_mac.tag(msg).ct_eq(&keys.superblock_mac.tag(msg)));
    assert!(!keys.block_mac.tag(msg).ct_eq(&keys.key_check));
    assert!(!keys.superblock_mac.tag(msg).ct_eq(&keys.key_check));
}

// ---------------------------------------------------------------------------------------
// Key files
// ---------------------------------------------------------------------------------------

const KEY_HEX: &str = "00112233445566778899aabbccddeeff0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn parse(contents: &[u8]) -> Result<[u8; 32], Error> {
    DomainKey::parse_key_file(contents).map(|k| *k.expose())
}

fn expected_key() -> [u8; 32] {
    unhex(KEY_HEX).try_into().expect("32 bytes")
}

#[test]
fn key_file_accepts_raw_bytes() {
    // Not valid UTF-8, and with bytes that look like whitespace at both ends.
    let mut raw = [0u8; 32];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0x80;
    }
    raw[0] = b' ';
    raw[31] = b'\n';
    assert_eq!(parse(&raw).expect("32 raw bytes"), raw);
    assert_eq!(parse(&[0u8; 32]).expect("32 zero bytes"), [0u8; 32]);
}

#[test]
fn key_file_accepts_hex_with_surrounding_whitespace() {
    let upper = KEY_HEX.to_uppercase();
    let variants = [
        KEY_HEX.to_string(),
        format!("{KEY_HEX}\n"),
        format!("{KEY_HEX}\r\n"),
        format!("  \t{KEY_HEX} \n\n"),
        format!("\n{upper}\n"),
    ];
    for text in &variants {
        assert_eq!(
            parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}")),
            expected_key(),
            "{text:?}"
        );
    }
}

#[test]
fn key_file_round_trips_through_to_hex() {
    let key = DomainKey::generate().expect("the OS generator works");
    let text = format!("{}\n", key.to_hex().as_str());
    assert_eq!(
        parse(text.as_bytes()).expect("to_hex output parses"),
        *key.expose()
    );
}

#[test]
fn key_file_rejects_malformed_contents() {
    let mut bad_digit = KEY_HEX.to_string();
    bad_digit.replace_range(10..11, "g");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("31 raw bytes", vec![0xa5; 31]),
        ("33 raw bytes", vec![0xa5; 33]),
        (
            "32 raw bytes and a newline",
            [&[0xa5u8; 32][..], b"\n"].concat(),
        ),
        ("63 hex digits", KEY_HEX.as_bytes()[..63].to_vec()),
        ("65 hex digits", format!("{KEY_HEX}0").into_bytes()),
        (
            "63 hex digits and a newline",
            format!("{}\n", &KEY_HEX[..63]).into_bytes(),
        ),
        (
            "65 hex digits and a newline",
            format!("{KEY_HEX}0\n").into_bytes(),
        ),
        ("a non-hex digit", bad_digit.into_bytes()),
        ("a 0x prefix", format!("0x{}", &KEY_HEX[..62]).into_bytes()),
        (
            "66 hex digits (33 bytes)",
            format!("{KEY_HEX}00").into_bytes(),
        ),
        ("whitespace only", b" \n\t \n".repeat(8)),
    ];
    for (what, contents) in cases {
        match DomainKey::parse_key_file(&contents) {
            Err(Error::BadKeyFile(_)) => {}
            Err(other) => panic!("{what}: wrong error {other:?}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sealed blocks
// ---------------------------------------------------------------------------------------

fn codec(vol: VolumeId) -> BlockCodec {
    BlockCodec::new(VolumeKeys::derive(&key_from(0x3c), &vol), vol)
}

fn random_block(rng: &mut StdRng) -> Block {
    let mut block = [0u8; BLOCK_SIZE];
    rng.fill_bytes(&mut block);
    block
}

#[test]
fn block_seal_open_round_trip() {
    let (mut rng, _) = test_rng("block_seal_open_round_trip");
    let codec = codec(VolumeId([0x77; 16]));
    for (phys, generation) in [(1, 1), (2, 9), (u64::MAX, u64::MAX), (123_456, 1 << 40)] {
        let plaintext = random_block(&mut rng);
        let mut block = plaintext;
        let tag = codec.seal(PhysBlock(phys), Generation(generation), &mut block);
        assert!(block != plaintext, "sealing must encrypt");
        codec
            .open(PhysBlock(phys), Generation(generation), &tag, &mut block)
            .expect("an untouched block opens");
        assert!(block == plaintext, "open gives back the plaintext");
    }
}

/// Asserts that opening `ciphertext` fails with `BadTag` and leaves the buffer as it was.
fn assert_rejected(
    codec: &BlockCodec,
    phys: PhysBlock,
    generation: Generation,
    tag: &Tag,
    ciphertext: &Block,
    what: &str,
) {
    let mut buf = *ciphertext;
    assert_eq!(
        codec.open(phys, generation, tag, &mut buf),
        Err(BadTag),
        "{what}: must fail"
    );
    assert!(
        buf == *ciphertext,
        "{what}: buffer must still be the ciphertext"
    );
}

#[test]
fn block_any_flipped_ciphertext_bit_fails() {
    let (mut rng, seed) = test_rng("block_any_flipped_ciphertext_bit_fails");
    let codec = codec(VolumeId([0x21; 16]));
    let (phys, generation) = (PhysBlock(42), Generation(17));
    let mut sealed = random_block(&mut rng);
    let tag = codec.seal(phys, generation, &mut sealed);

    let bits = BLOCK_SIZE * 8;
    let mut positions = vec![0, 7, 8, bits / 2, bits - 8, bits - 1];
    while positions.len() < 64 {
        positions.push(rng.random_range(0..bits));
    }
    for bit in positions {
        let mut tampered = sealed;
        tampered[bit / 8] ^= 1 << (bit % 8);
        assert_rejected(
            &codec,
            phys,
            generation,
            &tag,
            &tampered,
            &format!("seed {seed}: bit {bit} flipped"),
        );
    }
    // The untouched block still opens.
    let mut block = sealed;
    codec
        .open(phys, generation, &tag, &mut block)
        .expect("untouched block opens");
}

#[test]
fn block_wrong_context_or_tag_fails() {
    let (mut rng, _) = test_rng("block_wrong_context_or_tag_fails");
    let vol = VolumeId([0x99; 16]);
    let codec = codec(vol);
    let (phys, generation) = (PhysBlock(1000), Generation(5000));
    let mut sealed = random_block(&mut rng);
    let tag = codec.seal(phys, generation, &mut sealed);

    assert_rejected(
        &codec,
        PhysBlock(1001),
        generation,
        &tag,
        &sealed,
        "wrong phys",
    );
    assert_rejected(&codec, PhysBlock(0), generation, &tag, &sealed, "phys 0");
    assert_rejected(
        &codec,
        phys,
        Generation(4999),
        &tag,
        &sealed,
        "older generation",
    );
    assert_rejected(
        &codec,
        phys,
        Generation(5001),
        &tag,
        &sealed,
        "newer generation",
    );
    // Generation and phys swapped: the tag must bind which field is which.
    assert_rejected(
        &codec,
        PhysBlock(5000),
        Generation(1000),
        &tag,
        &sealed,
        "swapped",
    );

    for byte in [0, 15, 31] {
        let mut bad = tag;
        bad.0[byte] ^= 0x01;
        assert_rejected(&codec, phys, generation, &bad, &sealed, "tag bit flipped");
    }
    assert_rejected(&codec, phys, generation, &Tag([0; 32]), &sealed, "zero tag");

    // The same subkeys under another volume id: the id is bound into the tag itself.
    let mut other = vol;
    other.0[0] ^= 0x80;
    let same_keys_other_id = BlockCodec::new(VolumeKeys::derive(&key_from(0x3c), &vol), other);
    assert_rejected(
        &same_keys_other_id,
        phys,
        generation,
        &tag,
        &sealed,
        "volume id in tag",
    );
    // The subkeys of another volume (as a real volume would derive them).
    assert_rejected(
        &self::codec(other),
        phys,
        generation,
        &tag,
        &sealed,
        "other volume",
    );
    // Another domain key.
    let other_key = BlockCodec::new(VolumeKeys::derive(&key_from(0x3d), &vol), vol);
    assert_rejected(
        &other_key,
        phys,
        generation,
        &tag,
        &sealed,
        "other domain key",
    );
}

/// The generation is part of the XTS tweak, so rewriting a block leaks nothing about which
/// 16-byte pieces changed: every piece of the two ciphertexts differs.
#[test]
fn block_generation_changes_every_piece_of_ciphertext() {
    let (mut rng, _) = test_rng("block_generation_changes_every_piece_of_ciphertext");
    let codec = codec(VolumeId([0x05; 16]));
    let plaintext = random_block(&mut rng);
    let phys = PhysBlock(64);

    let mut first = plaintext;
    let tag1 = codec.seal(phys, Generation(1), &mut first);
    let mut second = plaintext;
    let tag2 = codec.seal(phys, Generation(2), &mut second);
    assert!(!tag1.ct_eq(&tag2));
    for (i, (a, b)) in first.chunks(16).zip(second.chunks(16)).enumerate() {
        assert_ne!(
            a, b,
            "16-byte piece {i} is the same under generations 1 and 2"
        );
    }

    // Control: the same generation gives the same ciphertext (XTS is deterministic), so it
    // is the generation that makes the difference.
    let mut again = plaintext;
    let tag3 = codec.seal(phys, Generation(1), &mut again);
    assert!(again == first && tag3.ct_eq(&tag1));
}
