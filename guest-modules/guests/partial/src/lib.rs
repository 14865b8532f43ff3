//! A component that exports the module lifecycle but neither `decide` nor `decide-keyed`:
//! loading it as a policy must fail with a clear "missing export" error.

wit_bindgen::generate!({
    path: "../../../wit",
    inline: "
        package fleet:partial;
        world partial {
            export fleet:edge/module@0.2.1;
        }
    ",
    world: "fleet:partial/partial",
    generate_all,
});

use exports::fleet::edge::module::Guest;
use fleet::edge::types::Config;

struct Partial;

impl Guest for Partial {
    fn init(_config: Config) -> Result<(), String> {
        Ok(())
    }
}

export!(Partial);
