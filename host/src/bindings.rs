//! Host bindings for the module worlds (a policy exports one of two), generated from `wit/` (the only copy of the WIT).
//!
//! The scorer and policy bindings reuse the `types` generated for the features world, so one
//! Rust type stands for each WIT type whichever module it goes to.

/// The `features` world: feature extraction.
pub mod features {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "features",
    });
}

/// The `scorer` world: scoring through the host's `inference` import.
pub mod scorer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "scorer",
        with: {
            "fleet:edge/types": super::features::fleet::edge::types,
        },
    });
}

/// The `policy` world: actions from scores.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        with: {
            "fleet:edge/types": super::features::fleet::edge::types,
        },
    });
}

/// The `policy-keyed` world: actions from scores, with state per key (since 0.2.1).
pub mod policy_keyed {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy-keyed",
        with: {
            "fleet:edge/types": super::features::fleet::edge::types,
        },
    });
}

pub use features::fleet::edge::types;
pub use scorer::fleet::edge::inference;
