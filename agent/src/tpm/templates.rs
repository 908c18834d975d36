//! The key templates: the storage primary key, the attestation key and the decryption key.
//!
//! Public so tests (and the TTP's tests) can build variants of them, e.g. a decryption key
//! the TTP must refuse.

use tss_esapi::{
    attributes::ObjectAttributesBuilder,
    interface_types::{
        algorithm::{HashingAlgorithm, PublicAlgorithm, RsaSchemeAlgorithm},
        ecc::EccCurve,
        key_bits::RsaKeyBits,
    },
    structures::{
        Digest, EccPoint, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa,
        PublicRsaParametersBuilder, RsaExponent, RsaScheme, SymmetricDefinitionObject,
    },
};

/// The storage primary key in the owner hierarchy: ECC P-256, restricted decrypt, AES-128-CFB
/// (the TCG SRK template, ECC flavour). A primary key is derived from the owner seed and
/// its template, so every start re-creates the same key; ECC because deriving it takes
/// milliseconds where an RSA primary needs a prime search.
pub fn storage_primary() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The attestation key: a restricted RSA-2048 signing key (RSASSA-SHA256), fixedTPM,
/// fixedParent, sensitiveDataOrigin, usable with its (empty) auth value. Restricted means
/// the TPM signs with it only digests it computed itself over TPM-generated structures
/// (quotes, certifications), never an outside digest that starts like one.
pub fn attestation_key() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .build()?;
    attestation_key_with_attributes(attributes)
}

/// [`attestation_key`] with other object attributes (tests build keys the TTP must refuse).
pub fn attestation_key_with_attributes(
    attributes: tss_esapi::attributes::ObjectAttributes,
) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_rsa_parameters(
            PublicRsaParametersBuilder::new()
                .with_scheme(RsaScheme::create(
                    RsaSchemeAlgorithm::RsaSsa,
                    Some(HashingAlgorithm::Sha256),
                )?)
                .with_key_bits(RsaKeyBits::Rsa2048)
                .with_exponent(RsaExponent::default())
                .with_is_signing_key(attributes.sign_encrypt())
                .with_is_decryption_key(attributes.decrypt())
                .with_restricted(attributes.restricted())
                .build()?,
        )
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}

/// The decryption key: RSA-2048, decrypt only, OAEP-SHA256, fixedTPM, fixedParent,
/// sensitiveDataOrigin, userWithAuth = 0 and authPolicy = `policy` (the PolicyPCR digest),
/// so the only way to use it for a decryption is a policy session whose PCRs match.
///
/// adminWithPolicy is left clear: TPM2_Certify needs the ADMIN role on the certified
/// object, and with adminWithPolicy set that role needs a policy session whose policy
/// includes TPM2_PolicyCommandCode(Certify), which a PolicyPCR-only policy cannot satisfy
/// (the TPM answers TPM_RC_AUTH_TYPE to the auth value and TPM_RC_POLICY_FAIL to a
/// PolicyPCR session; the TTP's tests show both). The ADMIN role with the empty auth
/// value allows only
/// Certify, ObjectChangeAuth (a new blob whose use still needs the policy, since
/// userWithAuth is clear) and being the activated object of ActivateCredential; none
/// decrypts. Duplication is ruled out by fixedTPM/fixedParent.
pub fn decryption_key(policy: Digest) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(false)
        .with_admin_with_policy(false)
        .with_decrypt(true)
        .build()?;
    decryption_key_with_attributes(attributes, policy)
}

/// [`decryption_key`] with other object attributes (tests build keys the TTP must refuse).
pub fn decryption_key_with_attributes(
    attributes: tss_esapi::attributes::ObjectAttributes,
    policy: Digest,
) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(policy)
        .with_rsa_parameters(
            PublicRsaParametersBuilder::new()
                .with_scheme(RsaScheme::create(
                    RsaSchemeAlgorithm::Oaep,
                    Some(HashingAlgorithm::Sha256),
                )?)
                .with_key_bits(RsaKeyBits::Rsa2048)
                .with_exponent(RsaExponent::default())
                .with_is_decryption_key(attributes.decrypt())
                .with_is_signing_key(attributes.sign_encrypt())
                .with_restricted(attributes.restricted())
                .build()?,
        )
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()
}
