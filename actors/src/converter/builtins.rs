//! Replacements for the few functions of Rhai's standard library that a script's arguments
//! can make misbehave, registered over them (functions registered on the engine are found
//! before the packages'):
//!
//! - `string.pad(n, "")` loops forever (the padding adds no characters); `pad` with a string
//!   is TBEL's `padEnd` here, checked before it allocates.
//! - `array.pad(n, item)` multiplies unchecked: a length near 2^48 with an item of 65 536
//!   elements wraps the size check to zero and asks for petabytes, which aborts a release
//!   build.
//! - `string.replace(from, to)` builds its result unchecked: a megabyte of one letter with
//!   that letter replaced by a megabyte asks for a terabyte.
//! - `map.to_json()` recurses once per level of nesting, unbounded.

use rhai::{Array, Dynamic, Engine, INT, ImmutableString, Map, NativeCallContext};

use super::guard::{Result, Sizes, array_fits, check_deadline, map_fits, string_fits};
use super::helpers::{pad, replace};

pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "pad",
        |ctx: NativeCallContext,
         s: &mut ImmutableString,
         len: INT,
         fill: ImmutableString|
         -> Result<()> {
            *s = pad(&ctx, s, len, &fill, false, "pad")?.into();
            Ok(())
        },
    );
    engine.register_fn(
        "pad",
        |ctx: NativeCallContext, s: &mut ImmutableString, len: INT, fill: char| -> Result<()> {
            *s = pad(&ctx, s, len, &fill.to_string(), false, "pad")?.into();
            Ok(())
        },
    );
    engine.register_fn("pad", pad_array);

    engine.register_fn(
        "replace",
        |ctx: NativeCallContext,
         s: &mut ImmutableString,
         from: ImmutableString,
         to: ImmutableString|
         -> Result<()> { replace_in(&ctx, s, &from, &to) },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext,
         s: &mut ImmutableString,
         from: char,
         to: ImmutableString|
         -> Result<()> { replace_in(&ctx, s, &from.to_string(), &to) },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext,
         s: &mut ImmutableString,
         from: ImmutableString,
         to: char|
         -> Result<()> { replace_in(&ctx, s, &from, &to.to_string()) },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, s: &mut ImmutableString, from: char, to: char| -> Result<()> {
            replace_in(&ctx, s, &from.to_string(), &to.to_string())
        },
    );

    engine.register_fn(
        "to_json",
        |ctx: NativeCallContext, m: &mut Map| -> Result<String> {
            let entries: std::collections::BTreeMap<&str, &Dynamic> =
                m.iter().map(|(k, v)| (k.as_str(), v)).collect();
            super::helpers::stringify(&ctx, &entries, m.values(), "to_json")
        },
    );
}

fn replace_in(
    ctx: &NativeCallContext,
    s: &mut ImmutableString,
    from: &str,
    to: &str,
) -> Result<()> {
    // Rhai's own leaves an empty string alone.
    if !s.is_empty() {
        *s = replace(ctx, s, from, to, "replace")?.into();
    }
    Ok(())
}

/// Rhai's `array.pad(len, item)`: copies of `item` up to `len` elements, with the sizes Rhai
/// would count computed without overflow before the array grows.
fn pad_array(ctx: NativeCallContext, array: &mut Array, len: INT, item: Dynamic) -> Result<()> {
    check_deadline()?;
    let Ok(len) = usize::try_from(len) else {
        return Ok(());
    };
    if len <= array.len() {
        return Ok(());
    }
    let copies = len - array.len();
    let have = Sizes::of_array(array);
    let each = Sizes::of(&item);
    let total = |have: usize, per_copy: usize| {
        per_copy
            .checked_mul(copies)
            .and_then(|n| n.checked_add(have))
    };
    // Each copy is one item of the array, plus what it holds.
    array_fits(&ctx, "pad", total(have.items, each.items.saturating_add(1)))?;
    map_fits(&ctx, "pad", total(have.entries, each.entries))?;
    string_fits(&ctx, "pad", total(have.bytes, each.bytes))?;
    array.resize(len, item);
    Ok(())
}
