//! `#[monitored]` UI tests: every argument compiles where it should, and every
//! misuse is a compile error whose caret sits on the offending argument. The same
//! run holds the setup API's misuses (`fail/telemetry-dropped-unused.rs`).

#[test]
fn every_argument_compiles_and_every_misuse_points_at_itself() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
