//! The calls every request makes (get, set, touch, destroy, and the end-of-turn flush), bound
//! with raw Node-API.
//!
//! napi-rs 3's generated glue allocates a borrow-tracking scope and takes a process-wide lock
//! on every call; for a call whose real work is a few hundred nanoseconds that doubled its
//! cost under HTTP load (and each freed scope made glibc consolidate its heap on the next
//! 1 KB allocation). These skip it: they take the engine as an external handle (made by
//! `NativeEngine.handle()`), read their strings straight into Rust, and catch every panic.
//! Everything else goes through napi-rs (lib.rs).

// Registered by napi-derive, which compiles its registration out of test builds.
#![cfg_attr(test, allow(dead_code))]

use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

use napi::sys;

use crate::engine::{Engine, WriteError};
use crate::table::Lookup;

type Value = sys::napi_value;
type Env = sys::napi_env;

/// What a write call returns for a session over `maxSessionBytes`, mirrored in index.js; any
/// other result is the write's ticket (`Engine::set`), a count that a double holds exactly.
const SESSION_TOO_LARGE: f64 = -1.0;

/// Why a call was refused: thrown to JS as a TypeError.
type Refusal = &'static str;

/// An external holding a clone of the engine; the clone is dropped when JS collects it.
pub fn create_handle(env: Env, engine: Arc<Engine>) -> napi::Result<Value> {
    let data = Arc::into_raw(engine) as *mut c_void;
    let mut handle = ptr::null_mut();
    let status = unsafe { sys::napi_create_external(env, data, Some(drop_handle), ptr::null_mut(), &mut handle) };
    if status != sys::Status::napi_ok {
        drop(unsafe { Arc::from_raw(data as *const Engine) });
        return Err(napi::Error::from_reason("express-session-multicast: cannot create the engine handle"));
    }
    Ok(handle)
}

unsafe extern "C" fn drop_handle(_env: Env, data: *mut c_void, _hint: *mut c_void) {
    // Dropping the last reference closes the engine; a panic must not unwind into Node.
    let _ = catch_unwind(|| drop(unsafe { Arc::from_raw(data as *const Engine) }));
}

/// Adds `get`, `set`, `touch`, `destroy` and `flush` to the addon's exports.
pub fn register(env: Env, exports: Value) -> napi::Result<()> {
    let calls: [(&str, unsafe extern "C" fn(Env, sys::napi_callback_info) -> Value); 5] =
        [("get", get), ("set", set), ("touch", touch), ("destroy", destroy), ("flush", flush)];
    for (name, call) in calls {
        let mut function = ptr::null_mut();
        let name_c = CString::new(name).expect("no NUL in a call name");
        let mut status = unsafe {
            sys::napi_create_function(
                env,
                name_c.as_ptr(),
                name.len() as isize,
                Some(call),
                ptr::null_mut(),
                &mut function,
            )
        };
        if status == sys::Status::napi_ok {
            status = unsafe { sys::napi_set_named_property(env, exports, name_c.as_ptr(), function) };
        }
        if status != sys::Status::napi_ok {
            return Err(napi::Error::from_reason(format!("express-session-multicast: cannot export {name}")));
        }
    }
    Ok(())
}

/// `get(handle, sid)`: the session's JSON, null, or undefined when this node holds nothing for
/// the sid, not even a tombstone, and the live members are worth asking (`ask` in lib.rs).
unsafe extern "C" fn get(env: Env, info: sys::napi_callback_info) -> Value {
    guard(env, || {
        let (engine, [_, sid, ..]) = arguments(env, info, 2)?;
        match with_str(env, sid, |sid| engine.lookup(sid))? {
            // Most sessions are ASCII: V8 copies Latin-1 without decoding it.
            Lookup::Live(doc) if doc.is_ascii() => string(env, &doc, sys::napi_create_string_latin1),
            Lookup::Live(doc) => string(env, &doc, sys::napi_create_string_utf8),
            Lookup::Gone => null(env),
            Lookup::Unknown => undefined(env),
        }
    })
}

/// `set(handle, sid, json, expiresMs)`: the write's ticket, or SESSION_TOO_LARGE.
unsafe extern "C" fn set(env: Env, info: sys::napi_callback_info) -> Value {
    guard(env, || {
        let (engine, [_, sid, json, expires]) = arguments(env, info, 2)?;
        let (json, expires) = (owned_string(env, json)?, expiry(env, expires)?);
        let status = with_str(env, sid, |sid| engine.set(sid, json, expires))?;
        write_status(env, status)
    })
}

/// `touch(handle, sid, cookieJson | null, expiresMs)`: the write's ticket, or SESSION_TOO_LARGE.
unsafe extern "C" fn touch(env: Env, info: sys::napi_callback_info) -> Value {
    guard(env, || {
        let (engine, [_, sid, cookie, expires]) = arguments(env, info, 2)?;
        let cookie = if is_nullish(env, cookie)? { None } else { Some(owned_string(env, cookie)?) };
        let expires = expiry(env, expires)?;
        let status = with_str(env, sid, |sid| engine.touch(sid, cookie, expires))?;
        write_status(env, status)
    })
}

/// `destroy(handle, sid)`: the write's ticket.
unsafe extern "C" fn destroy(env: Env, info: sys::napi_callback_info) -> Value {
    guard(env, || {
        let (engine, [_, sid, ..]) = arguments(env, info, 2)?;
        let ticket = with_str(env, sid, |sid| engine.destroy(sid))?;
        write_status(env, Ok(ticket))
    })
}

/// `flush(handle, direct)`: hands this turn's writes to the network thread, or with `direct`
/// true sends a few from this thread (see outbox.rs and `Engine::flush`).
unsafe extern "C" fn flush(env: Env, info: sys::napi_callback_info) -> Value {
    guard(env, || {
        let (engine, [_, direct_value, ..]) = arguments(env, info, 1)?;
        // Left false for anything but a boolean (undefined included).
        let mut direct = false;
        unsafe { sys::napi_get_value_bool(env, direct_value, &mut direct) };
        engine.flush(direct);
        null(env)
    })
}

/// Runs a call: a refusal becomes a thrown TypeError, a panic a thrown Error (never an abort).
fn guard(env: Env, call: impl FnOnce() -> Result<Value, Refusal>) -> Value {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(Ok(value)) => return value,
        Ok(Err(refusal)) => {
            let message = CString::new(format!("express-session-multicast: {refusal}")).unwrap_or_default();
            unsafe { sys::napi_throw_type_error(env, ptr::null(), message.as_ptr()) };
        }
        Err(_) => {
            let message = c"express-session-multicast: internal error in the engine (a bug: please report it)";
            unsafe { sys::napi_throw_error(env, ptr::null(), message.as_ptr()) };
        }
    }
    ptr::null_mut()
}

/// The engine behind the first argument, and the first four arguments (undefined if missing);
/// refused with fewer than `required`.
fn arguments<'a>(
    env: Env,
    info: sys::napi_callback_info,
    required: usize,
) -> Result<(&'a Engine, [Value; 4]), Refusal> {
    let mut argv = [ptr::null_mut(); 4];
    let mut argc = argv.len();
    let status =
        unsafe { sys::napi_get_cb_info(env, info, &mut argc, argv.as_mut_ptr(), ptr::null_mut(), ptr::null_mut()) };
    if status != sys::Status::napi_ok || argc < required {
        return Err(if required > 1 {
            "expected an engine handle and a session id"
        } else {
            "expected an engine handle"
        });
    }
    let mut data = ptr::null_mut();
    if unsafe { sys::napi_get_value_external(env, argv[0], &mut data) } != sys::Status::napi_ok || data.is_null() {
        return Err("expected an engine handle");
    }
    // The handle is an argument of this call, so it (and the engine clone it owns) lives
    // until the call returns.
    Ok((unsafe { &*(data as *const Engine) }, argv))
}

/// Calls `f` with a JS string as `&str`; session ids fit the stack buffer.
fn with_str<R>(env: Env, value: Value, f: impl FnOnce(&str) -> R) -> Result<R, Refusal> {
    let mut buf = [0u8; 128];
    let mut written = 0;
    if unsafe { sys::napi_get_value_string_utf8(env, value, buf.as_mut_ptr() as *mut c_char, buf.len(), &mut written) }
        != sys::Status::napi_ok
    {
        return Err("expected a string");
    }
    // V8 writes whole characters only (at most 4 bytes each) and keeps one byte for the NUL:
    // with more than 4 bytes to spare, nothing was cut.
    if written + 5 <= buf.len() {
        let s = std::str::from_utf8(&buf[..written]).map_err(|_| "a string that is not UTF-8")?;
        return Ok(f(s));
    }
    Ok(f(&owned_string(env, value)?))
}

/// A JS string as UTF-8 (lone surrogates become U+FFFD, as in every Node-API string).
fn owned_string(env: Env, value: Value) -> Result<String, Refusal> {
    let mut len = 0;
    if unsafe { sys::napi_get_value_string_utf8(env, value, ptr::null_mut(), 0, &mut len) } != sys::Status::napi_ok {
        return Err("expected a string");
    }
    let mut bytes = Vec::<u8>::with_capacity(len + 1);
    let mut written = 0;
    let status = unsafe {
        sys::napi_get_value_string_utf8(env, value, bytes.as_mut_ptr() as *mut c_char, len + 1, &mut written)
    };
    if status != sys::Status::napi_ok || written > len {
        return Err("expected a string");
    }
    // SAFETY: V8 initialized `written` bytes, and Node-API writes valid UTF-8 (lone surrogates
    // become U+FFFD): no need to pay a pass over the session to check it.
    unsafe { bytes.set_len(written) };
    debug_assert!(std::str::from_utf8(&bytes).is_ok());
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

fn is_nullish(env: Env, value: Value) -> Result<bool, Refusal> {
    let mut kind = 0;
    if unsafe { sys::napi_typeof(env, value, &mut kind) } != sys::Status::napi_ok {
        return Err("expected a value");
    }
    Ok(kind == sys::ValueType::napi_null || kind == sys::ValueType::napi_undefined)
}

/// Absolute expiry in epoch ms from JS; NaN when the cookie has none.
fn expiry(env: Env, value: Value) -> Result<Option<u64>, Refusal> {
    let mut ms = f64::NAN;
    if unsafe { sys::napi_get_value_double(env, value, &mut ms) } != sys::Status::napi_ok {
        return Err("expected the expiry as a number");
    }
    Ok(ms.is_finite().then(|| ms.max(0.0) as u64))
}

type CreateString = unsafe extern "C" fn(Env, *const c_char, isize, *mut Value) -> sys::napi_status;

fn string(env: Env, s: &str, create: CreateString) -> Result<Value, Refusal> {
    let mut value = ptr::null_mut();
    match unsafe { create(env, s.as_ptr() as *const c_char, s.len() as isize, &mut value) } {
        sys::Status::napi_ok => Ok(value),
        _ => Err("cannot create the session's string"),
    }
}

fn null(env: Env) -> Result<Value, Refusal> {
    let mut value = ptr::null_mut();
    unsafe { sys::napi_get_null(env, &mut value) };
    Ok(value)
}

fn undefined(env: Env) -> Result<Value, Refusal> {
    let mut value = ptr::null_mut();
    unsafe { sys::napi_get_undefined(env, &mut value) };
    Ok(value)
}

fn write_status(env: Env, result: Result<u64, WriteError>) -> Result<Value, Refusal> {
    let code = match result {
        Ok(ticket) => ticket as f64,
        Err(WriteError::TooLarge) => SESSION_TOO_LARGE,
    };
    let mut value = ptr::null_mut();
    unsafe { sys::napi_create_double(env, code, &mut value) };
    Ok(value)
}
