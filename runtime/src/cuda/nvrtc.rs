//! NVRTC: loading the library (checked, never a panic), its version and targets, and
//! compiling one generated translation unit to PTX and, for the real architecture it targets,
//! to machine code (CUBIN) as well. Needs no GPU.

use std::ffi::{CString, c_char, c_int};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cudarc::nvrtc::result as nvrtc;
use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};
use sparsegen_codegen::cuda::SmVersion;

use super::error::CudaError;

/// The loaded NVRTC library: version and the architectures it can target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nvrtc {
    version: (u32, u32),
    archs: Vec<SmVersion>,
}

/// What NVRTC made of one translation unit, with how long it took.
#[derive(Debug, Clone)]
pub struct NvrtcOutput {
    /// The PTX text (no trailing NUL): loads on the target and every newer architecture (the
    /// driver compiles it to machine code at load time).
    pub ptx: String,
    /// Machine code for exactly the target architecture: loads with no driver compilation,
    /// which is what makes a warm start fast. `None` if NVRTC produced none.
    pub cubin: Option<Vec<u8>>,
    /// Wall time of the NVRTC calls (compile and both outputs).
    pub elapsed: Duration,
}

/// Destroys an NVRTC program when dropped (also on every error path).
struct Program(nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by `create_program` and is destroyed once, here.
        // A failure to destroy leaks host memory of NVRTC's and is not actionable.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

/// NVRTC's `c_char` buffers as text, without the trailing NULs.
fn text(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\0')
        .to_string()
}

impl Nvrtc {
    /// Loads libnvrtc (once per process) and queries it. [`CudaError::NoNvrtc`] when the
    /// library is not on the library path.
    pub fn load() -> Result<&'static Nvrtc, CudaError> {
        static NVRTC: OnceLock<Option<Nvrtc>> = OnceLock::new();
        NVRTC
            .get_or_init(|| {
                // SAFETY: `is_culib_present` only tries to dlopen the library by its sonames.
                if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                    return None;
                }
                Some(Self::query())
            })
            .as_ref()
            .ok_or(CudaError::NoNvrtc)
    }

    fn query() -> Nvrtc {
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: the library is present (checked by the caller); both out-pointers are valid.
        let version = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        let version = if version == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
            (major.max(0) as u32, minor.max(0) as u32)
        } else {
            (0, 0)
        };
        let mut count: c_int = 0;
        // SAFETY: the library is present; `count` is a valid out-pointer.
        let ok = unsafe { cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count) };
        let mut archs = Vec::new();
        if ok == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS && count > 0 {
            let mut raw = vec![0 as c_int; count as usize];
            // SAFETY: `raw` has room for the `count` values NVRTC reported.
            let ok = unsafe { cudarc::nvrtc::sys::nvrtcGetSupportedArchs(raw.as_mut_ptr()) };
            if ok == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
                archs = raw
                    .into_iter()
                    .map(|a| SmVersion(a.max(0) as u32))
                    .collect();
                archs.sort();
            }
        }
        Nvrtc { version, archs }
    }

    /// `(major, minor)`, e.g. `(13, 0)`.
    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    /// The version as text, e.g. `13.0`.
    pub fn version_string(&self) -> String {
        format!("{}.{}", self.version.0, self.version.1)
    }

    /// The architectures NVRTC can target, ascending.
    pub fn supported_archs(&self) -> &[SmVersion] {
        &self.archs
    }

    /// The target to compile for on a device of `device`'s architecture: the device's own if
    /// NVRTC knows it, else the newest NVRTC target below it (the driver JIT-compiles PTX
    /// forward to newer GPUs).
    pub fn target_for(&self, device: SmVersion) -> Result<SmVersion, CudaError> {
        if self.archs.is_empty() || self.archs.contains(&device) {
            return Ok(device);
        }
        self.archs
            .iter()
            .rev()
            .find(|&&a| a <= device)
            .copied()
            .ok_or_else(|| CudaError::UnsupportedArch {
                nvrtc: self.version_string(),
                device,
                oldest: self.archs[0],
            })
    }

    /// Compiles `source` for `arch` to PTX and CUBIN. A compiler failure is
    /// [`CudaError::Compile`] with the log and the source.
    pub fn compile(
        &self,
        source: &str,
        entry: &str,
        arch: SmVersion,
    ) -> Result<NvrtcOutput, CudaError> {
        let compile_error = |log: String| CudaError::Compile {
            entry: entry.to_string(),
            arch,
            log,
            source_code: source.to_string(),
        };
        let (Ok(src), Ok(name)) = (CString::new(source), CString::new(format!("{entry}.cu")))
        else {
            return Err(compile_error("the source contains a NUL byte".into()));
        };
        let options = [
            format!("--gpu-architecture={}", arch.arch_flag()),
            "--std=c++17".to_string(),
        ];
        let start = Instant::now();
        let program = Program(
            nvrtc::create_program(&src, Some(&name))
                .map_err(|e| CudaError::Nvrtc(format!("nvrtcCreateProgram: {e:?}")))?,
        );
        // SAFETY: `program` is live until dropped at the end of this function; `src` and
        // `name`, which it may point to, outlive it.
        if let Err(e) = unsafe { nvrtc::compile_program(program.0, &options) } {
            // SAFETY: as above.
            let log = unsafe { nvrtc::get_program_log(program.0) }
                .map(|raw| text(&raw))
                .unwrap_or_default();
            return Err(compile_error(if log.trim().is_empty() {
                format!("{e:?}")
            } else {
                log
            }));
        }
        // SAFETY: as above; the program compiled.
        let ptx = unsafe { nvrtc::get_ptx(program.0) }
            .map(|raw| text(&raw))
            .map_err(|e| CudaError::Nvrtc(format!("nvrtcGetPTX: {e:?}")))?;
        // SAFETY: as above.
        let cubin = unsafe { cubin(program.0) };
        Ok(NvrtcOutput {
            ptx,
            cubin,
            elapsed: start.elapsed(),
        })
    }
}

/// The CUBIN of a compiled program, if NVRTC made one (it does for a real `sm_XX` target).
///
/// # Safety
/// `program` must be a live, successfully compiled NVRTC program.
unsafe fn cubin(program: nvrtcProgram) -> Option<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: the caller's contract; `size` is a valid out-pointer.
    if unsafe { sys::nvrtcGetCUBINSize(program, &mut size) } != nvrtcResult::NVRTC_SUCCESS
        || size == 0
    {
        return None;
    }
    let mut bytes = vec![0u8; size];
    // SAFETY: `bytes` has the `size` bytes NVRTC asked for.
    let ok = unsafe { sys::nvrtcGetCUBIN(program, bytes.as_mut_ptr().cast::<c_char>()) };
    (ok == nvrtcResult::NVRTC_SUCCESS).then_some(bytes)
}

/// Parses an architecture such as `sm_90`, `sm_90a` (the suffix is dropped) or `90`.
pub fn parse_arch(text: &str) -> Result<SmVersion, CudaError> {
    let digits = text
        .trim()
        .trim_start_matches("sm_")
        .trim_start_matches("compute_")
        .trim_end_matches(['a', 'f']);
    digits
        .parse::<u32>()
        .ok()
        .filter(|v| (10..1000).contains(v))
        .map(SmVersion)
        .ok_or_else(|| CudaError::BadArch(text.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn arch_overrides_parse() {
        assert_eq!(parse_arch("sm_90").unwrap(), SmVersion(90));
        assert_eq!(parse_arch("sm_90a").unwrap(), SmVersion(90));
        assert_eq!(parse_arch("86").unwrap(), SmVersion(86));
        assert!(matches!(parse_arch("gpu"), Err(CudaError::BadArch(_))));
    }

    #[test]
    fn targets_fall_back_to_the_newest_known_below() {
        let nvrtc = Nvrtc {
            version: (13, 0),
            archs: vec![SmVersion(75), SmVersion(80), SmVersion(90)],
        };
        assert_eq!(nvrtc.target_for(SmVersion(90)).unwrap(), SmVersion(90));
        assert_eq!(nvrtc.target_for(SmVersion(89)).unwrap(), SmVersion(80));
        assert!(matches!(
            nvrtc.target_for(SmVersion(70)),
            Err(CudaError::UnsupportedArch { .. })
        ));
    }
}
