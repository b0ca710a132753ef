//! Loading a PKCS#11 library the way the shim would: the real module (does it load and answer
//! `C_GetInfo`?) and the shim the user points at (is it ours, and which version?).

use std::ffi::{CStr, c_char};
use std::path::Path;

use p11trace_ffi::*;
use p11trace_record::names;

/// A failed check: what is wrong, and what to do.
#[derive(Debug)]
pub struct Failure {
    pub summary: String,
    pub fix: String,
}

fn failure(summary: String, fix: impl Into<String>) -> Failure {
    Failure {
        summary,
        fix: fix.into(),
    }
}

/// What the real module said of itself.
#[derive(Debug)]
pub struct ModuleInfo {
    pub manufacturer: String,
    pub description: String,
    pub library_version: String,
    pub cryptoki_version: String,
}

/// A libloading error with its cause (libloading's own text is only "dlopen failed").
fn describe(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn open(path: &Path, what: &str) -> Result<libloading::os::unix::Library, Failure> {
    // A bare name (`libsofthsm2.so`) is looked up on the library search path, as the shim's
    // and the application's dlopen do; only a path can be missing.
    let is_path = path.as_os_str().as_encoded_bytes().contains(&b'/');
    if is_path && !path.exists() {
        return Err(failure(
            format!("{what} {} does not exist", path.display()),
            format!(
                "give the {what}'s full path (check for typos; `ls {}`)",
                path.display()
            ),
        ));
    }
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: loading a library runs its initialisers; the user named it as the library their
    // application loads, which runs them too.
    unsafe { libloading::os::unix::Library::open(Some(path), flags) }.map_err(|e| {
        failure(
            format!("{what} {} does not load: {}", path.display(), describe(&e)),
            "check that it is a shared library for this machine (`file`, `ldd` on it)",
        )
    })
}

/// The string of a `p11trace_shim_version` export, if the library has one.
fn shim_version(library: &libloading::os::unix::Library) -> Option<String> {
    type VersionFn = extern "C" fn() -> *const c_char;
    // SAFETY: `p11trace_shim_version` is exported by our shim with exactly this prototype.
    let version = unsafe { library.get::<VersionFn>(b"p11trace_shim_version\0") }.ok()?;
    let pointer = version();
    if pointer.is_null() {
        return None;
    }
    // SAFETY: the shim returns a static NUL-terminated string.
    Some(
        unsafe { CStr::from_ptr(pointer) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn has_entry_point(library: &libloading::os::unix::Library) -> bool {
    // SAFETY: only looked up, never called.
    unsafe { library.get::<GetFunctionListFn>(b"C_GetFunctionList\0") }.is_ok()
}

/// The shim at `path`: its version if it is p11trace's.
pub fn probe_shim(path: &Path) -> Result<String, Failure> {
    let library = open(path, "shim")?;
    let found = shim_version(&library);
    let pkcs11 = has_entry_point(&library);
    // The shim is linked `-z nodelete`, and a real module may start threads: never unload.
    std::mem::forget(library);
    match (found, pkcs11) {
        (Some(version), _) => Ok(version),
        (None, true) => Err(failure(
            format!(
                "{} is a PKCS#11 module but not the p11trace shim (it exports no \
                 p11trace_shim_version)",
                path.display()
            ),
            "point the application at libp11trace_shim.so and set P11TRACE_MODULE to this module",
        )),
        (None, false) => Err(failure(
            format!(
                "{} is not a PKCS#11 module (no C_GetFunctionList)",
                path.display()
            ),
            "point the application at libp11trace_shim.so",
        )),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

fn version(version: CK_VERSION) -> String {
    format!("{}.{}", version.major, version.minor)
}

fn rv_name(rv: CK_RV) -> String {
    names::RV.render(rv).into_owned()
}

/// Loads the real module at `path` and asks it `C_GetInfo` (between `C_Initialize` and
/// `C_Finalize`, as the standard requires).
pub fn probe_module(path: &Path) -> Result<ModuleInfo, Failure> {
    let library = open(path, "module")?;
    if shim_version(&library).is_some() {
        return Err(failure(
            format!(
                "{} is the p11trace shim itself, not the real module",
                path.display()
            ),
            "set P11TRACE_MODULE to the real module (e.g. /usr/lib/softhsm/libsofthsm2.so) and \
             load the shim in the application",
        ));
    }
    // SAFETY: the symbol type is the PKCS#11 prototype of C_GetFunctionList.
    let get_function_list = unsafe { library.get::<GetFunctionListFn>(b"C_GetFunctionList\0") }
        .map(|symbol| *symbol)
        .map_err(|e| {
            failure(
                format!(
                    "{} is not a PKCS#11 module: {}",
                    path.display(),
                    describe(&e)
                ),
                "set P11TRACE_MODULE to a PKCS#11 module (the .so your application used before)",
            )
        })?;
    // Module code may still run in threads it started: never unload.
    std::mem::forget(library);
    let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: C_GetFunctionList writes one pointer into our local.
    let rv = unsafe { get_function_list(&mut list) };
    // SAFETY: a module that answered CKR_OK handed out a valid, static function list.
    let functions = match unsafe { list.as_ref() } {
        Some(functions) if rv == CKR_OK => functions,
        _ => {
            return Err(failure(
                format!(
                    "{}: C_GetFunctionList returned {} and no function list",
                    path.display(),
                    rv_name(rv)
                ),
                "the module is broken or not a PKCS#11 module; ask its vendor",
            ));
        }
    };
    let (Some(initialize), Some(get_info), Some(finalize)) = (
        functions.C_Initialize,
        functions.C_GetInfo,
        functions.C_Finalize,
    ) else {
        return Err(failure(
            format!(
                "{}: its function list lacks C_Initialize, C_GetInfo or C_Finalize",
                path.display()
            ),
            "the module is broken; ask its vendor",
        ));
    };
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: std::ptr::null_mut(),
    };
    // SAFETY: C_Initialize with arguments we own, valid for the call.
    let rv = unsafe { initialize((&raw mut args).cast()) };
    if rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
        return Err(failure(
            format!("{}: C_Initialize returned {}", path.display(), rv_name(rv)),
            "the module loads but does not start: check its own configuration (SoftHSM2: \
             SOFTHSM2_CONF and its token directory) in the application's environment",
        ));
    }
    // SAFETY: a zeroed CK_INFO is valid; C_GetInfo fills it.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: C_GetInfo writes one CK_INFO into our local.
    let rv = unsafe { get_info(&mut info) };
    // SAFETY: ends the C_Initialize above, whatever C_GetInfo answered.
    unsafe { finalize(std::ptr::null_mut()) };
    if rv != CKR_OK {
        return Err(failure(
            format!("{}: C_GetInfo returned {}", path.display(), rv_name(rv)),
            "the module is broken; ask its vendor",
        ));
    }
    Ok(ModuleInfo {
        manufacturer: text(&info.manufacturerID),
        description: text(&info.libraryDescription),
        library_version: version(info.libraryVersion),
        cryptoki_version: version(info.cryptokiVersion),
    })
}
