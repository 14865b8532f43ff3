//! One test per guest component: `foreach_guest!` below does not compile when a guest in
//! `guest-modules/guests/` has no test here.

use fleet_host::module::ModuleKind;

use crate::util;

macro_rules! assert_test_exists {
    ($name:ident) => {
        const _: fn() = $name;
    };
}
fleet_guest_modules::foreach_guest!(assert_test_exists);

#[test]
fn features() {
    let m = util::load("features", ModuleKind::Features, "1", &[]).unwrap();
    assert_eq!(m.kind(), ModuleKind::Features);
    assert!(util::load("features", ModuleKind::Features, "1", &[("colour", "red")]).is_err());
}

#[test]
fn scorer() {
    util::load("scorer", ModuleKind::Scorer, "1", &[]).unwrap();
    let err = util::load(
        "scorer",
        ModuleKind::Scorer,
        "1",
        &[("model", "no_such_model")],
    )
    .unwrap_err();
    assert!(err.to_string().contains("no_such_model"), "{err}");
}

#[test]
fn policy() {
    util::load(
        "policy",
        ModuleKind::Policy,
        "1",
        &[("reassign_threshold", "0.9")],
    )
    .unwrap();
}

#[test]
fn hostile() {
    util::load("hostile", ModuleKind::Policy, "1", &[("mode", "none")]).unwrap();
}

#[test]
fn partial() {
    assert!(util::load("partial", ModuleKind::Policy, "1", &[]).is_err());
}
