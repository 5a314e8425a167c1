//! Conformance with spconv 2.3.8 on the dumps in `../shared/conformance` (every layer kind
//! on a LiDAR and an indoor workload): fp32 outputs within 1e-5 of spconv's, relative to
//! max |spconv|, rows matched by coordinate. Skips with a printed reason when the folder is
//! absent (a user who has only the project).

#![allow(clippy::unwrap_used)] // tests state their expectations with unwrap

use std::path::Path;

use sparsegen::runtime::Engine;
use sparsegen::runtime::conformance::{Workload, check_layer, find_workloads};

const TOLERANCE: f64 = 1e-5;

#[test]
fn reference_executor_matches_spconv_dumps() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance");
    if !root.is_dir() {
        eprintln!(
            "SKIP: {} is absent; conformance with spconv is not checked",
            root.display()
        );
        return;
    }
    let engine = Engine::reference();
    let mut checked = 0;
    for dir in find_workloads(&root).expect("dump folders") {
        let workload = Workload::load(&dir).expect("workload");
        let layers = workload.layers().expect("layers");
        engine.rulebooks().clear();
        for layer in &layers {
            for report in check_layer(&engine, &workload, layer, &layers).expect("layer runs") {
                assert!(report.passes(TOLERANCE), "{report:?}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 14,
        "expected every layer kind on both workloads, checked {checked}"
    );
}

#[test]
fn unreadable_dumps_are_errors() {
    let dir = std::env::temp_dir().join(format!("sparsegen-not-a-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = find_workloads(&dir).unwrap_err();
    assert!(err.to_string().contains("not a spconv dump"), "{err}");
    std::fs::write(dir.join("workload.json"), "{ not json").unwrap();
    assert!(Workload::load(&dir).is_err());
}
