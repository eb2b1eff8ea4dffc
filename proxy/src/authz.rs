//! The decision lives in `ferrule_control::intentions` (one meaning of intentions for
//! the proxy and the dev agent); these names are re-exported so the proxy's call sites
//! keep their paths while they move.

pub use ferrule_control::intentions::{Decision, Reason, Request, decide};
