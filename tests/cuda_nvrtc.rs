//! NVRTC tests (no GPU needed): every generated kernel variant compiles for every checked
//! architecture, compiler failures carry the log and the source, and the disk cache makes a
//! warm start compile nothing. They skip, saying why, where libnvrtc is not on the library
//! path; with `SPARSEGEN_REQUIRE_NVRTC=1` (or `SPARSEGEN_REQUIRE_GPU=1`) they fail instead.
#![allow(clippy::unwrap_used, clippy::unwrap_in_result)] // a failed unwrap is a failed test

use std::time::Duration;

use sparsegen::codegen::cuda::{
    CHECKED_ARCHS, ConvTile, SmVersion, conv_candidates, conv_kernel, gather_kernels,
    representative_geometries, representative_layers, rulebook_kernels, tf32_candidates,
};
use sparsegen_runtime::cuda::{CacheOrigin, CudaError, KernelCache, Nvrtc};

fn nvrtc_or_skip(test: &str) -> Option<&'static Nvrtc> {
    match Nvrtc::load() {
        Ok(nvrtc) => Some(nvrtc),
        Err(e) => {
            let required = ["SPARSEGEN_REQUIRE_NVRTC", "SPARSEGEN_REQUIRE_GPU"]
                .iter()
                .any(|v| std::env::var(v).is_ok_and(|v| v == "1"));
            if required {
                panic!("{test}: NVRTC is required but unavailable: {e}");
            }
            eprintln!("skipping {test}: {e}");
            None
        }
    }
}

#[test]
fn nvrtc_compiles_every_variant() {
    let Some(nvrtc) = nvrtc_or_skip("nvrtc_compiles_every_variant") else {
        return;
    };
    eprintln!(
        "NVRTC {} (targets {:?})",
        nvrtc.version_string(),
        nvrtc.supported_archs()
    );
    let mut times: Vec<(String, SmVersion, Duration)> = Vec::new();
    let mut failures = Vec::new();
    for spec in representative_layers() {
        for sm in CHECKED_ARCHS {
            for tile in conv_candidates(&spec, sm)
                .into_iter()
                .chain(tf32_candidates(&spec, sm))
            {
                let kernel = conv_kernel(&spec, &tile, sm).expect("candidates are valid");
                match nvrtc.compile(&kernel.source, &kernel.entry, sm) {
                    Ok(ptx) => {
                        assert!(ptx.ptx.contains(&kernel.entry), "{}", kernel.entry);
                        if matches!(tile, ConvTile::MmaTf32 { .. }) {
                            assert!(
                                ptx.ptx.contains("mma.sync.aligned.m16n8k8"),
                                "{}",
                                kernel.entry
                            );
                        }
                        if matches!(tile, ConvTile::Mma { .. }) {
                            assert!(
                                ptx.ptx.contains("mma.sync.aligned.m16n8k16"),
                                "{}",
                                kernel.entry
                            );
                        }
                        times.push((kernel.entry.clone(), sm, ptx.elapsed));
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    times.sort_by_key(|t| t.2);
    let total: Duration = times.iter().map(|t| t.2).sum();
    let median = times[times.len() / 2].2;
    let (slow_entry, slow_sm, slowest) = &times[times.len() - 1];
    eprintln!(
        "compiled {} kernels: total {:.2?}, median {:.1?}, slowest {:.1?} ({slow_entry} for {slow_sm})",
        times.len(),
        total,
        median,
        slowest
    );
    for (entry, sm, t) in &times {
        eprintln!("  {:>8.1?}  {sm}  {entry}", t);
    }
}

#[test]
fn nvrtc_failure_carries_log_and_source() {
    let Some(nvrtc) = nvrtc_or_skip("nvrtc_failure_carries_log_and_source") else {
        return;
    };
    let source = "extern \"C\" __global__ void broken(float* y) { y[0] = undeclared_thing; }\n";
    let err = nvrtc
        .compile(source, "broken", SmVersion(90))
        .expect_err("must not compile");
    match &err {
        CudaError::Compile {
            entry,
            log,
            source_code,
            arch,
        } => {
            assert_eq!(entry, "broken");
            assert_eq!(*arch, SmVersion(90));
            assert!(log.contains("undeclared_thing"), "{log}");
            assert_eq!(source_code, source);
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("   1 | extern"), "{text}");
}

/// A disk folder that cannot be written (read-only, full) costs the later processes a
/// compile, never this one its kernel.
#[cfg(target_os = "linux")]
#[test]
fn nvrtc_unwritable_disk_cache_still_serves_the_kernel() {
    let Some(nvrtc) = nvrtc_or_skip("nvrtc_unwritable_disk_cache_still_serves_the_kernel") else {
        return;
    };
    let spec = representative_layers()[0];
    let sm = SmVersion(90);
    let kernel = conv_kernel(&spec, &conv_candidates(&spec, sm)[0], sm).unwrap();
    let cache = KernelCache::new(Some("/proc/sparsegen-kernels".into()));
    let (compiled, origin) = cache
        .get_or_compile(nvrtc, &kernel.entry, &kernel.source, sm)
        .unwrap();
    assert_eq!(origin, CacheOrigin::Compiled);
    assert!(!compiled.ptx.is_empty());
    assert_eq!(cache.stats().disk_write_failures, 1);
}

#[test]
fn nvrtc_warm_disk_cache_compiles_nothing() {
    let Some(nvrtc) = nvrtc_or_skip("nvrtc_warm_disk_cache_compiles_nothing") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("sparsegen-kcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spec = representative_layers()[0];
    let sm = SmVersion(90);
    let kernel = conv_kernel(&spec, &conv_candidates(&spec, sm)[0], sm).unwrap();

    let cold = KernelCache::new(Some(dir.clone()));
    let (a, origin) = cold
        .get_or_compile(nvrtc, &kernel.entry, &kernel.source, sm)
        .unwrap();
    assert_eq!(origin, CacheOrigin::Compiled);
    let (_, origin) = cold
        .get_or_compile(nvrtc, &kernel.entry, &kernel.source, sm)
        .unwrap();
    assert_eq!(origin, CacheOrigin::Memory);

    // A new process (a new cache over the same folder) compiles nothing.
    let warm = KernelCache::new(Some(dir.clone()));
    let (b, origin) = warm
        .get_or_compile(nvrtc, &kernel.entry, &kernel.source, sm)
        .unwrap();
    assert_eq!(origin, CacheOrigin::Disk);
    assert_eq!(a.ptx, b.ptx);
    assert_eq!(warm.stats().compiled, 0);
    // Machine code for the target comes back too: loading it needs no driver compilation.
    let cubin = a.cubin.as_ref().expect("NVRTC made a CUBIN for sm_90");
    assert!(cubin.starts_with(b"\x7fELF"), "a CUBIN is an ELF image");
    assert_eq!(a.cubin, b.cubin);

    // Another architecture is another kernel; a changed source is never served stale PTX.
    let (_, origin) = warm
        .get_or_compile(nvrtc, &kernel.entry, &kernel.source, SmVersion(80))
        .unwrap();
    assert_eq!(origin, CacheOrigin::Compiled);
    let changed = kernel
        .source
        .replace("constexpr int K = 27;", "constexpr int K = 27; // changed");
    let (_, origin) = warm
        .get_or_compile(nvrtc, &kernel.entry, &changed, sm)
        .unwrap();
    assert_eq!(origin, CacheOrigin::Compiled);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nvrtc_compiles_every_rulebook_kernel() {
    let Some(nvrtc) = nvrtc_or_skip("nvrtc_compiles_every_rulebook_kernel") else {
        return;
    };
    for geometry in representative_geometries() {
        let kernels = rulebook_kernels(&geometry);
        for sm in CHECKED_ARCHS {
            let ptx = nvrtc
                .compile(&kernels.source, &kernels.prefix, sm)
                .unwrap_or_else(|e| panic!("{e}"));
            // Every kernel of the unit is named, and every named one is compiled.
            let names = kernels.kernel_names();
            assert_eq!(
                ptx.ptx.matches(".entry ").count(),
                names.len(),
                "{}: entries",
                kernels.prefix
            );
            for name in names {
                assert!(
                    ptx.ptx.contains(&kernels.entry(name)),
                    "{} lacks {name}",
                    kernels.prefix
                );
            }
            eprintln!("{:>8.1?}  {sm}  {}", ptx.elapsed, kernels.prefix);
        }
    }
}

#[test]
fn nvrtc_compiles_every_gather_scatter_variant() {
    let Some(nvrtc) = nvrtc_or_skip("nvrtc_compiles_every_gather_scatter_variant") else {
        return;
    };
    let mut slowest = std::time::Duration::ZERO;
    let mut count = 0;
    for spec in representative_layers() {
        for sm in CHECKED_ARCHS {
            for tile in conv_candidates(&spec, sm) {
                if !matches!(tile, ConvTile::Simt { .. }) {
                    continue;
                }
                let kernels = gather_kernels(&spec, &tile, sm).expect("SIMT tiles are valid");
                let ptx = nvrtc
                    .compile(&kernels.source, &kernels.gemm_entry, sm)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(ptx.ptx.contains(&kernels.gemm_entry));
                assert!(ptx.ptx.contains(&kernels.epilogue_entry));
                slowest = slowest.max(ptx.elapsed);
                count += 1;
            }
        }
    }
    eprintln!("compiled {count} gather-GEMM-scatter modules, slowest {slowest:.1?}");
}

#[test]
fn nvrtc_parallel_compiles_match_serial_ones() {
    let Some(nvrtc) = nvrtc_or_skip("nvrtc_parallel_compiles_match_serial_ones") else {
        return;
    };
    let sm = SmVersion(90);
    let mut units: Vec<(String, String)> = representative_layers()
        .into_iter()
        .take(6)
        .flat_map(|spec| {
            conv_candidates(&spec, sm)
                .into_iter()
                .take(2)
                .map(move |t| (spec, t))
        })
        .map(|(spec, tile)| {
            let k = conv_kernel(&spec, &tile, sm).unwrap();
            (k.entry, k.source)
        })
        .collect();
    let distinct = units.len();
    units.push(units[0].clone()); // a repeat is looked up, not compiled again
    let dir = std::env::temp_dir().join(format!("sparsegen-kpar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let parallel = KernelCache::new(Some(dir.clone()));
    let t = std::time::Instant::now();
    let origins = parallel.get_or_compile_all(nvrtc, &units, sm).unwrap();
    let parallel_time = t.elapsed();
    assert_eq!(parallel.stats().compiled, distinct);
    assert!(
        origins[..distinct]
            .iter()
            .all(|&o| o == CacheOrigin::Compiled)
    );
    assert_eq!(origins[distinct], CacheOrigin::Memory);

    let serial = KernelCache::new(None);
    let t = std::time::Instant::now();
    for (entry, source) in &units[..distinct] {
        let (a, _) = serial.get_or_compile(nvrtc, entry, source, sm).unwrap();
        let (b, origin) = parallel.get_or_compile(nvrtc, entry, source, sm).unwrap();
        assert_eq!(origin, CacheOrigin::Memory);
        assert_eq!(a.ptx, b.ptx, "{entry}: parallel and serial PTX differ");
        assert_eq!(
            a.cubin, b.cubin,
            "{entry}: parallel and serial CUBIN differ"
        );
    }
    eprintln!(
        "{distinct} kernels: serial {:.0} ms, parallel {:.0} ms on {} threads",
        t.elapsed().as_secs_f64() * 1e3,
        parallel_time.as_secs_f64() * 1e3,
        rayon::current_num_threads()
    );

    // A new process over the same folder reads them all back.
    let warm = KernelCache::new(Some(dir.clone()));
    let origins = warm.get_or_compile_all(nvrtc, &units, sm).unwrap();
    assert!(origins[..distinct].iter().all(|&o| o == CacheOrigin::Disk));
    assert_eq!(warm.stats().compiled, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
