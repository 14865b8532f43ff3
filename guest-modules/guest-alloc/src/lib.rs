//! The memory allocator of our guest components.
//!
//! Every string and list the host passes in is one allocation in the guest (through the
//! canonical ABI's `cabi_realloc`) and one free when the guest drops it; a batch of 256 events
//! makes a few thousand of each. wasi-libc's dlmalloc, the default for `wasm32-wasip2`, spent a
//! fifth of the features and policy modules' time there; talc does the same work in less.
//!
//! wasi-libc also provides `cabi_realloc` (weakly, on `malloc`). Arguments allocated by it and
//! freed by Rust's allocator would corrupt both heaps, so this crate defines `cabi_realloc` on
//! the global allocator as well. A guest links it with `use guest_alloc as _;`.
//!
//! Natively (the host's benchmarks build some guests for the host) it is empty.

#![no_std]

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// The canonical ABI's allocation function: `realloc` semantics, with a zero-sized request
/// answered by a dangling, aligned pointer (as wit-bindgen's own does).
///
/// # Safety
///
/// Called by the component model runtime with a pointer it got from this function (or null
/// with `old_len` 0), the layout it asked for then, and a power-of-two `align`.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    extern crate alloc;
    use alloc::alloc::{Layout, alloc, realloc};
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        // Out of memory inside the instance's cap: trap; the host fails only this batch.
        core::arch::wasm32::unreachable();
    }
    ptr
}
