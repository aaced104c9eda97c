//! The SRTP master keys of a connection, seen as its DTLS handshake exports them.
//!
//! The engine keeps its SRTP contexts to itself. It derives their keys with the DTLS-SRTP
//! exporter (RFC 5764 §4.2), the TLS PRF over a seed that starts with the label
//! `EXTRACTOR-dtls_srtp`, and runs every PRF block through its crypto provider's HMAC. A
//! connection built with a [`KeyCapture`] provider hands those blocks, in order, to the
//! application: the exporter's output, from which [`crate::srtp`] keys SRTP contexts of
//! its own. Every other operation is passed to the wrapped provider untouched.

use std::sync::{Arc, Mutex, PoisonError};

use rtc::crypto::{
    ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher, CryptoAlgorithm, CryptoError,
    HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme,
    SigningKey, StreamCipher, StreamCipherAlgorithm,
};
use rtc::srtp::config::LABEL_EXTRACTOR_DTLS_SRTP;

/// A crypto provider for one connection that keeps the DTLS-SRTP exporter's output.
pub struct KeyCapture {
    inner: Arc<dyn RTCCryptoProvider>,
    crypto: CapturingCrypto,
}

impl KeyCapture {
    /// Wraps `inner`, which does every operation.
    pub fn new(inner: Arc<dyn RTCCryptoProvider>) -> Self {
        let crypto = CapturingCrypto { inner: inner.clone(), exported: Arc::default() };
        Self { inner, crypto }
    }

    /// The wrapped provider's operations, without the watch on the exporter.
    pub fn unwatched(&self) -> &dyn RTCCrypto {
        self.inner.crypto()
    }

    /// The exporter output so far (empty before the handshake completes): at least as many
    /// bytes as any SRTP profile needs, in PRF blocks.
    pub fn exported(&self) -> Vec<u8> {
        self.crypto.exported.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl RTCCryptoProvider for KeyCapture {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }

    fn random(&self) -> &dyn RTCRandom {
        self.inner.random()
    }
}

struct CapturingCrypto {
    inner: Arc<dyn RTCCryptoProvider>,
    exported: Arc<Mutex<Vec<u8>>>,
}

impl RTCCrypto for CapturingCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(&self, algorithm: BlockCipherAlgorithm, key: &[u8], block: &mut [u8]) -> Result<(), CryptoError> {
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        let inner = self.inner.crypto().new_hmac(algorithm, key)?;
        Ok(Box::new(WatchedMac { inner, exported: self.exported.clone() }))
    }

    fn new_stream_cipher(&self, algorithm: StreamCipherAlgorithm, key: &[u8]) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(&self, algorithm: AeadAlgorithm, key: &[u8]) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(&self, algorithm: CbcAlgorithm, key: &[u8]) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(&self, algorithm: KeyExchangeAlgorithm) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(&self, scheme: SignatureScheme) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(&self, scheme: SignatureScheme, pkcs8_der: &[u8]) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner.crypto().verify_signature(scheme, public_key, message, signature)
    }
}

/// An HMAC that keeps the output blocks of the DTLS-SRTP exporter's PRF: `HMAC(secret,
/// A(i) + seed)`, signed over exactly two inputs of which the second is the labelled seed.
/// The PRF's `A(i)` rounds sign one input and are not kept.
struct WatchedMac {
    inner: Box<dyn Mac>,
    exported: Arc<Mutex<Vec<u8>>>,
}

impl Mac for WatchedMac {
    fn output_len(&self) -> usize {
        self.inner.output_len()
    }

    fn sign(&mut self, input: &[&[u8]], output: &mut [u8]) -> Result<(), CryptoError> {
        self.inner.sign(input, output)?;
        if let [_, seed] = input {
            if seed.starts_with(LABEL_EXTRACTOR_DTLS_SRTP.as_bytes()) {
                self.exported.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(output);
            }
        }
        Ok(())
    }

    fn verify(&mut self, input: &[&[u8]], expected: &[u8]) -> Result<(), CryptoError> {
        self.inner.verify(input, expected)
    }
}
