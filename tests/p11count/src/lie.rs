//! `P11COUNT_LIE`: a module that breaks the contract on the sizes it reports (see the crate
//! documentation). The real call is made and logged as usual; only the lengths it returns lie.

use p11trace_ffi::*;

/// How much longer than the caller's buffers the lies are.
const EXCESS: CK_ULONG = 100;

fn lies_about(function: &str) -> bool {
    std::env::var("P11COUNT_LIE").is_ok_and(|v| v.split(',').any(|f| f.trim() == function))
}

/// `table` with the lying entries in place of the forwarding ones, for the functions
/// `P11COUNT_LIE` names.
pub(crate) fn install(mut table: CK_FUNCTION_LIST_3_2) -> CK_FUNCTION_LIST_3_2 {
    if lies_about("C_GetAttributeValue") {
        table.C_GetAttributeValue = Some(get_attribute_value);
    }
    if lies_about("C_FindObjects") {
        table.C_FindObjects = Some(find_objects);
    }
    table
}

/// Most attributes whose lengths are remembered (the rest are left honest).
const MAX_ATTRS: usize = 64;

unsafe extern "C" fn get_attribute_value(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    template: CK_ATTRIBUTE_PTR,
    ul_count: CK_ULONG,
) -> CK_RV {
    let count = usize::try_from(ul_count).unwrap_or(0).min(MAX_ATTRS);
    let mut sizes = [0 as CK_ULONG; MAX_ATTRS];
    if !template.is_null() {
        for (index, size) in sizes.iter_mut().enumerate().take(count) {
            // SAFETY: the caller passed `count` attributes.
            *size = unsafe { (*template.add(index)).ulValueLen };
        }
    }
    // SAFETY: the caller's arguments, forwarded (logged there).
    let rv = unsafe { crate::forward::C_GetAttributeValue(session, object, template, ul_count) };
    if !template.is_null() {
        for (index, size) in sizes.iter().enumerate().take(count) {
            // SAFETY: as above; only the length field is changed.
            let attribute = unsafe { &mut *template.add(index) };
            if !attribute.pValue.is_null() && attribute.ulValueLen != CK_UNAVAILABLE_INFORMATION {
                attribute.ulValueLen = size.saturating_add(EXCESS);
            }
        }
    }
    rv
}

unsafe extern "C" fn find_objects(
    session: CK_SESSION_HANDLE,
    objects: CK_OBJECT_HANDLE_PTR,
    max: CK_ULONG,
    found: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's arguments, forwarded (logged there).
    let rv = unsafe { crate::forward::C_FindObjects(session, objects, max, found) };
    if rv == CKR_OK && !found.is_null() {
        // SAFETY: the caller's out-pointer.
        unsafe { *found = max.saturating_add(EXCESS) };
    }
    rv
}
