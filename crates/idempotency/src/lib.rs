//! Idempotency keys for retried requests.
//!
//! A client marks a request with an `Idempotency-Key` header (IETF
//! `draft-ietf-httpapi-idempotency-key-header`) so that retrying it, after a
//! timeout or a dropped connection, can never run it twice.
//!
//! ```
//! use sofiia_idempotency::IdempotencyKey;
//!
//! let key = IdempotencyKey::parse_header(r#""8e03978e-40d5-43e8-bc93-6894a57f9324""#)?;
//! assert_eq!(key.as_str(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
//! # Ok::<(), sofiia_idempotency::KeyError>(())
//! ```

mod key;

pub use crate::key::{IdempotencyKey, KeyError};
