//! `#[derive(Categorize)]` UI tests: every form compiles and classifies as
//! documented, and every misuse is a compile error whose caret sits on the
//! offending name.

#[test]
fn every_categorize_form_compiles_and_every_misuse_points_at_itself() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/categorize/pass/*.rs");
    t.compile_fail("tests/ui/categorize/fail/*.rs");
}
