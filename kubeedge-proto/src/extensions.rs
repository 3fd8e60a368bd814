//! kubeedge-rs extensions a cloud offers an edge, announced in the WebSocket upgrade.
//!
//! KubeEdge's protocol has no capability exchange: a KubeEdge cloudcore logs every message it
//! does not know (`resource type not found`) and drops it. So a kubeedge-rs edge sends its own
//! extensions (the [`Inventory`](crate::inventory::Inventory) after each connect) only to a
//! cloud that said it understands them: a kubeedge-rs CloudHub adds the response header
//! [`EXTENSIONS_HEADER`] to its `101 Switching Protocols`, a comma-separated list of tokens.
//! A KubeEdge cloud sends no such header, and a KubeEdge edge ignores it.
//!
//! ```
//! use kubeedge_proto::extensions::Extensions;
//!
//! let offered = Extensions::all();
//! assert_eq!(offered.to_header(), "inventory");
//! assert!(Extensions::parse("inventory, something-newer").inventory);
//! assert!(!Extensions::parse("").inventory);
//! ```

/// The upgrade-response header naming the extensions a cloud understands.
pub const EXTENSIONS_HEADER: &str = "x-kubeedge-rs-extensions";

/// The token of the inventory extension.
pub const INVENTORY: &str = "inventory";

/// Longest header value read; a longer one is ignored as a whole.
const MAX_HEADER_LEN: usize = 1024;

/// What a cloud understands beyond KubeEdge's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Extensions {
    /// The edge's inventory after each connect (the cloud then sends only the difference).
    pub inventory: bool,
}

impl Extensions {
    /// None: a KubeEdge cloud.
    pub const fn none() -> Self {
        Self { inventory: false }
    }

    /// Every extension this version knows.
    pub const fn all() -> Self {
        Self { inventory: true }
    }

    /// Reads a header value; unknown tokens are ignored (a newer cloud), as is a value longer
    /// than 1 KiB.
    pub fn parse(value: &str) -> Self {
        let mut out = Self::none();
        if value.len() > MAX_HEADER_LEN {
            return out;
        }
        for token in value.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case(INVENTORY) {
                out.inventory = true;
            }
        }
        out
    }

    /// The header value announcing these extensions.
    pub fn to_header(&self) -> String {
        let mut tokens = Vec::new();
        if self.inventory {
            tokens.push(INVENTORY);
        }
        tokens.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tokens_and_ignores_the_unknown_and_the_oversized() {
        assert_eq!(Extensions::parse(" Inventory ,x"), Extensions::all());
        assert_eq!(Extensions::parse("x,y"), Extensions::none());
        let long = format!("{},inventory", "x".repeat(2000));
        assert_eq!(Extensions::parse(&long), Extensions::none());
        assert_eq!(
            Extensions::parse(&Extensions::all().to_header()),
            Extensions::all()
        );
        assert_eq!(Extensions::none().to_header(), "");
    }
}
