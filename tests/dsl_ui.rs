//! Compile-time behaviour of `sparse_layer!`: what compiles (`tests/ui/pass_*.rs`, which also
//! run) and, for every mistake, the exact message the user sees (`tests/ui/fail_*.rs` with
//! their `.stderr`). Bless changed messages with `TRYBUILD=overwrite` and review each one: it
//! must say what is wrong and how to fix it.

#[test]
fn dsl_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
