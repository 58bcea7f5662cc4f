//! Compile errors of the derives: each `tests/ui/<mistake>.rs` must fail with
//! exactly its `.stderr`.

#[test]
#[cfg_attr(miri, ignore)]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
