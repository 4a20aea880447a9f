//! What this binary is: its version and the git revision it was built from.

/// The build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision the binary was built from, or `unknown`.
pub const GIT_SHA: &str = env!("SOFIIA_GIT_SHA");
