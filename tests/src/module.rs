//! Loading a PKCS#11 module by path and calling it: the one loader behind the test client
//! (`p11client`) and the benchmark client (`p11trace-bench client`).
//!
//! Calls go through [`p11!`](crate::p11): `p11!(module, C_GetSessionInfo(session, &mut info))`
//! calls the entry of the module's function list (a missing entry is
//! `CKR_FUNCTION_NOT_SUPPORTED`) and, for a module loaded with [`Module::load_counted`], counts
//! the call.

use std::ffi::{CStr, c_void};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
pub use pkcs11_sys;
use pkcs11_sys::*;

/// A loaded PKCS#11 module and its 2.x function list.
pub struct Module {
    list: *const CK_FUNCTION_LIST,
    counter: Option<&'static AtomicU64>,
    // Keeps the module mapped while `list` is in use.
    library: libloading::Library,
}

// SAFETY: a PKCS#11 function list is immutable, and its functions are thread-safe once the module
// is initialised with CKF_OS_LOCKING_OK.
unsafe impl Sync for Module {}
// SAFETY: as above.
unsafe impl Send for Module {}

/// Calls one function of a [`Module`]'s list, counting it if the module counts calls.
///
/// The call itself is the unsafe part, so the macro holds the `unsafe` block: callers pass
/// pointers to their own locals, as the function's contract asks.
#[macro_export]
macro_rules! p11 {
    ($module:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let module: &$crate::module::Module = &$module;
        module.tally(match module.list().$name {
            // SAFETY: the entry comes from the module's own list, valid while it is loaded; the
            // arguments satisfy the function's contract at each call site.
            #[allow(clippy::macro_metavars_in_unsafe)]
            Some(function) => unsafe { function($($arg),*) },
            None => $crate::module::pkcs11_sys::CKR_FUNCTION_NOT_SUPPORTED
                as $crate::module::pkcs11_sys::CK_RV,
        })
    }};
}

/// Fails with the return value's name unless `rv` is CKR_OK.
pub fn check(rv: CK_RV, what: &str) -> Result<()> {
    if rv != CKR_OK as CK_RV {
        bail!("{what} failed: {}", p11trace_record::names::RV.render(rv));
    }
    Ok(())
}

impl Module {
    /// Loads the module at `path` and asks it for its function list.
    pub fn load(path: &Path) -> Result<Module> {
        Self::open(path, None)
    }

    /// [`Module::load`], counting every call made through it (`C_GetFunctionList` included) in
    /// `counter`.
    pub fn load_counted(path: &Path, counter: &'static AtomicU64) -> Result<Module> {
        Self::open(path, Some(counter))
    }

    fn open(path: &Path, counter: Option<&'static AtomicU64>) -> Result<Module> {
        // SAFETY: loading a PKCS#11 module runs its initialisers; loading it is the point.
        let library = unsafe { libloading::Library::new(path) }
            .with_context(|| format!("cannot load {}", path.display()))?;
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let get: libloading::Symbol<unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV> =
            unsafe { library.get(b"C_GetFunctionList\0") }
                .with_context(|| format!("{} has no C_GetFunctionList", path.display()))?;
        let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer.
        let rv = unsafe { get(&mut list) };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        check(rv, "C_GetFunctionList")?;
        if list.is_null() {
            bail!("{}: C_GetFunctionList returned no list", path.display());
        }
        Ok(Module {
            list,
            counter,
            library,
        })
    }

    /// The module's 2.x function list.
    pub fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: checked non-null at load; the list lives as long as the library is mapped.
        unsafe { &*self.list }
    }

    /// Counts one call (if this module counts) and returns its result.
    pub fn tally(&self, rv: CK_RV) -> CK_RV {
        if let Some(counter) = self.counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        rv
    }

    /// A symbol the module exports (`C_GetInterface`, `C_GetInterfaceList`), if it does.
    ///
    /// # Safety
    /// `T` must be the symbol's real type (a function pointer of the PKCS#11 prototype).
    pub unsafe fn symbol<T: Copy>(&self, name: &CStr) -> Option<T> {
        // SAFETY: the caller vouches for `T`.
        unsafe { self.library.get::<T>(name.to_bytes_with_nul()) }
            .ok()
            .map(|symbol| *symbol)
    }

    /// `C_Initialize` with `flags` and no mutex callbacks.
    pub fn initialize(&self, flags: CK_FLAGS) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags,
            pReserved: ptr::null_mut(),
        };
        crate::p11!(self, C_Initialize((&raw mut args).cast::<c_void>()))
    }

    pub fn finalize(&self) -> CK_RV {
        crate::p11!(self, C_Finalize(ptr::null_mut()))
    }

    /// The slots holding a token (`C_GetSlotList` twice: the count, then the list).
    pub fn slots(&self) -> Result<Vec<CK_SLOT_ID>> {
        let mut count: CK_ULONG = 0;
        check(
            crate::p11!(
                self,
                C_GetSlotList(CK_TRUE as CK_BBOOL, ptr::null_mut(), &mut count)
            ),
            "C_GetSlotList",
        )?;
        let mut slots = vec![0 as CK_SLOT_ID; count as usize];
        check(
            crate::p11!(
                self,
                C_GetSlotList(CK_TRUE as CK_BBOOL, slots.as_mut_ptr(), &mut count)
            ),
            "C_GetSlotList",
        )?;
        slots.truncate(count as usize);
        Ok(slots)
    }

    /// A read-write session on `slot`.
    pub fn open_session(&self, slot: CK_SLOT_ID) -> Result<CK_SESSION_HANDLE> {
        let mut session: CK_SESSION_HANDLE = 0;
        check(
            crate::p11!(
                self,
                C_OpenSession(
                    slot,
                    (CKF_SERIAL_SESSION | CKF_RW_SESSION) as CK_FLAGS,
                    ptr::null_mut(),
                    None,
                    &mut session,
                )
            ),
            "C_OpenSession",
        )?;
        Ok(session)
    }

    /// `C_GenerateKeyPair` with two templates: its return value and the two handles.
    pub fn generate_key_pair(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: &mut CK_MECHANISM,
        public: &mut [CK_ATTRIBUTE],
        private: &mut [CK_ATTRIBUTE],
    ) -> (CK_RV, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
        let (mut public_key, mut private_key) = (0, 0);
        let rv = crate::p11!(
            self,
            C_GenerateKeyPair(
                session,
                mechanism,
                public.as_mut_ptr(),
                public.len() as CK_ULONG,
                private.as_mut_ptr(),
                private.len() as CK_ULONG,
                &mut public_key,
                &mut private_key,
            )
        );
        (rv, public_key, private_key)
    }

    /// Logs the user in on `session`.
    pub fn login(&self, session: CK_SESSION_HANDLE, pin: &str) -> Result<()> {
        let mut pin = pin.as_bytes().to_vec();
        check(
            crate::p11!(
                self,
                C_Login(
                    session,
                    CKU_USER as CK_USER_TYPE,
                    pin.as_mut_ptr(),
                    pin.len() as CK_ULONG
                )
            ),
            "C_Login",
        )
    }
}
